"""Ensemble pseudo-labels for unlabelled cases (seed 001: average the models' outputs, threshold, label).

For every ensemble member (a trained model folder and one fold) nnU-Net's own ``nnUNetPredictor`` predicts the
unlabelled cases with ``save_probabilities``. The region probabilities (sigmoid WT/TC/ET) are averaged per case
**per model first** (over that model's folds), then across models, so a model with five folds (or ``fold_all``)
weighs exactly as much as a model with one; the mean is turned into labels 1/2/3 by the model's ``LabelManager``
(threshold 0.5, painted in ``regions_class_order``), written with the plans' image writer in the geometry of the
input image.

Cross-validation: pseudo-labels made with members of fold *k* only (``--models A:k B:k C:k`` or ``--fold k``) are
the clean input for the distilled model's fold *k*; members of other folds were trained on fold *k*'s validation
cases, so a student of fold *k* trained on their labels reports an optimistic validation Dice (see
:mod:`nnunet_kd.trainers.distill`). The report records the members' folds.

Output folder layout::

    OUT/labels/<case><file_ending>         hard pseudo-labels, dataset convention (0 bg, 1 ED, 2 NCR, 3 ET)
    OUT/probabilities/<case>.npz|.pkl      averaged probabilities (float16), with --save-probabilities
    OUT/members/<model>-<hash>__fold_<k>/  per-member nnU-Net predictions (deleted unless kept); the hash of
                                           the model folder's path keeps two models of the same name apart
    OUT/parts/part_<K>_of_<N>.json         report of one part (run settings, cases, status and label checksum)
    OUT/pseudolabels.json                  merged report (:func:`merge_parts`); read by make-distill-dataset

Each run owns its reports: at start it removes ``pseudolabels.json`` and its own part report (a single-part run
removes every part report), and a multi-part run refuses to start next to part reports of a run with other
settings. :func:`merge_parts` refuses part reports of different runs and labels changed since their report was
written (sha256 per label), so ``make-distill-dataset`` never pairs a report with labels it does not describe.
Temporary files of a killed run (``.tmp-PID-NAME``) are removed by the next run.

Cases are shared between parts as nnU-Net does (``cases[part_id::num_parts]``), so several machines can work
on one output folder. A case whose averaged label has fewer than ``min_foreground_voxels`` tumour voxels is
reported as ``empty``; a case whose member outputs are missing, disagree in shape or are not finite is
``unusable`` and gets no label. Only ``ok`` cases go into a distillation dataset by default.

Public functions: :func:`parse_model_spec`, :func:`resolve_members`, :func:`list_cases`, :func:`split_cases`,
:func:`ensemble_probabilities`, :func:`run_pseudolabel`, :func:`merge_parts`, :func:`load_report`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nnunet_kd.errors import ConfigurationError, InputDataError
from nnunet_kd.paths import trainers_findable
from nnunet_kd.safe_io import read_json_object

CHECKPOINT = "checkpoint_final.pth"
REPORT_NAME = "pseudolabels.json"
#: Version of the part / merged report layout (run settings, per-model members, label checksums).
REPORT_FORMAT = 2
STATUS_OK, STATUS_EMPTY, STATUS_UNUSABLE = "ok", "empty", "unusable"
#: Part-report keys that must be equal for parts of one run.
RUN_KEYS = ("images", "file_ending", "members", "num_parts", "save_probabilities", "min_foreground_voxels",
            "checkpoint", "use_mirroring", "tile_step_size", "all_cases")
_FOLDS_RE = re.compile(r"^(all|\d+)(,(all|\d+))*$")
#: ``.tmp-PID-NAME``: a file being written by a pseudolabel run (labels, probabilities, reports).
_TEMP_FILE = re.compile(r"^\.tmp-(?P<pid>\d+)-.+$")


def model_tag(model_folder: Path) -> str:
    """Unique folder-name tag of a model: its folder name plus a hash of its resolved path."""
    digest = hashlib.sha1(str(Path(model_folder).resolve()).encode()).hexdigest()[:8]
    return f"{Path(model_folder).name}-{digest}"


@dataclass(frozen=True)
class EnsembleMember:
    """One trained model folder and one of its folds."""

    model_folder: Path
    fold: str

    @property
    def model_tag(self) -> str:
        return model_tag(self.model_folder)

    @property
    def tag(self) -> str:
        """Folder name for this member's predictions, e.g. ``nnUNetTrainerUNet__nnUNetPlans__3d_fullres-1a2b3c4d__fold_0``.

        The hash of the model folder's path keeps two models whose folders have the same name (same
        trainer/plans/configuration in two datasets or results roots) apart.
        """
        return f"{self.model_tag}__fold_{self.fold}"

    def as_dict(self) -> dict[str, str]:
        return {"model_folder": str(self.model_folder), "fold": self.fold}


@dataclass
class CaseResult:
    """What happened to one case."""

    case: str
    status: str
    foreground_voxels: int = 0
    region_voxels: dict[str, int] = field(default_factory=dict)
    message: str = ""
    label_sha256: str = ""


def parse_model_spec(text: str) -> tuple[Path, list[str] | None]:
    """``RESULTS_DIR[:folds]`` -> (folder, folds or None for all available). ``folds`` is e.g. ``0,1`` or ``all``."""
    head, sep, tail = text.rpartition(":")
    if sep and head and _FOLDS_RE.match(tail):
        return Path(head), tail.split(",")
    return Path(text), None


def available_folds(model_folder: Path, checkpoint_name: str = CHECKPOINT) -> list[str]:
    """Folds of ``model_folder`` (``fold_0`` ... and ``fold_all``) that have ``checkpoint_name``."""
    folds = []
    for sub in sorted(model_folder.glob("fold_*")):
        if (sub / checkpoint_name).is_file():
            folds.append(sub.name[len("fold_"):])
    return folds


def resolve_members(specs: Sequence[tuple[Path, Sequence[str] | None]],
                    checkpoint_name: str = CHECKPOINT) -> list[EnsembleMember]:
    """Ensemble members of model folders and folds; raises :class:`ConfigurationError` for anything missing.

    A model folder may be given once (with all its folds, ``A:0,1``); the same folder twice (also through a
    symbolic link) is refused, since the ensemble would silently count it twice.
    """
    if not specs:
        raise ConfigurationError("no model given; pass --models RESULTS_DIR[:folds] ...")
    members: list[EnsembleMember] = []
    seen: dict[Path, Path] = {}
    for given, folds in specs:
        folder = Path(given).resolve()
        if folder in seen:
            raise ConfigurationError(f"model folder {folder} is given twice ({seen[folder]} and {given}); give each "
                                     f"model once, with all its folds (e.g. {folder}:0,1)")
        seen[folder] = Path(given)
        for name in ("dataset.json", "plans.json"):
            if not (folder / name).is_file():
                raise ConfigurationError(f"{folder} is not an nnU-Net model folder (no {name}); expected "
                                         f"$nnUNet_results/DatasetXXX/<trainer>__<plans>__<configuration>")
        found = available_folds(folder, checkpoint_name)
        wanted = list(folds) if folds else found
        if not wanted:
            raise ConfigurationError(f"{folder} has no fold with {checkpoint_name}")
        for fold in wanted:
            if fold not in found:
                raise ConfigurationError(f"{folder}: fold {fold} has no {checkpoint_name} "
                                         f"(available: {', '.join(found) or 'none'})")
            member = EnsembleMember(folder, fold)
            if member in members:
                raise ConfigurationError(f"{folder} fold {fold} is listed twice")
            members.append(member)
    return members


def group_by_model(members: Sequence[EnsembleMember]) -> list[list[EnsembleMember]]:
    """Members grouped per model folder, in the order the models were given."""
    groups: dict[Path, list[EnsembleMember]] = {}
    for member in members:
        groups.setdefault(member.model_folder, []).append(member)
    return list(groups.values())


def _load_json(path: Path) -> dict:
    return read_json_object(path, path.name)


def check_members_compatible(members: Sequence[EnsembleMember]) -> dict:
    """The shared dataset.json of the members; all must predict the same labels/regions from the same channels."""
    reference = _load_json(members[0].model_folder / "dataset.json")
    keys = ("labels", "regions_class_order", "channel_names", "file_ending")
    for member in members[1:]:
        other = _load_json(member.model_folder / "dataset.json")
        for key in keys:
            if other.get(key) != reference.get(key):
                raise ConfigurationError(
                    f"models disagree on dataset.json '{key}': {members[0].model_folder} has "
                    f"{reference.get(key)!r}, {member.model_folder} has {other.get(key)!r}; an ensemble needs the "
                    f"same labels and input channels")
    return reference


def check_inputs_for_members(members: Sequence[EnsembleMember], images_dir: Path) -> tuple[str, ...]:
    """Run :func:`nnunet_kd.subsets.input_files.check_input_folder` for every model; return the file suffixes.

    Stock prediction only counts a case's files; this refuses (one line naming the cases) any case whose
    ``_000X`` suffixes are not exactly those a member model takes, before anything is predicted.
    """
    from nnunet_kd.subsets.input_files import check_input_folder

    expected = None
    for group in group_by_model(members):
        folder = group[0].model_folder
        this = check_input_folder(folder, images_dir)
        if expected is not None and this.suffixes != expected[1].suffixes:
            raise ConfigurationError(f"models take different input files: {expected[0]} takes "
                                     f"{expected[1].describe()}, {folder} takes {this.describe()}")
        expected = (folder, this)
    if expected is None:
        raise ConfigurationError("no model given; pass --models RESULTS_DIR[:folds] ...")
    return expected[1].suffixes


def list_cases(images_dir: Path, file_ending: str, num_channels: int | None = None,
               suffixes: Sequence[str] | None = None) -> dict[str, list[Path]]:
    """Case id -> its channel files, checked to be exactly ``suffixes`` (default ``_0000`` .. ``num_channels-1``)."""
    images_dir = Path(images_dir)
    if not images_dir.is_dir():
        raise InputDataError(f"input folder {images_dir} does not exist")
    if suffixes is None:
        suffixes = [f"_{c:04d}" for c in range(int(num_channels or 0))]
    pattern = re.compile(r"^(?P<case>.+)(?P<suffix>_\d{4})" + re.escape(file_ending) + "$")
    cases: dict[str, dict[str, Path]] = {}
    for path in sorted(images_dir.iterdir()):
        match = pattern.match(path.name)
        if match:
            cases.setdefault(match["case"], {})[match["suffix"]] = path
    if not cases:
        raise InputDataError(f"no images named <case>_0000{file_ending} in {images_dir}")
    result = {}
    for case, channels in sorted(cases.items()):
        if sorted(channels) != sorted(suffixes):
            raise InputDataError(f"case {case} in {images_dir} has files {', '.join(sorted(channels))}; the models "
                                 f"expect {', '.join(suffixes)}")
        result[case] = [channels[s] for s in suffixes]
    return result


def split_cases(cases: Sequence[str], num_parts: int = 1, part_id: int = 0) -> list[str]:
    """The cases of part ``part_id`` of ``num_parts``: ``sorted(cases)[part_id::num_parts]`` (as nnU-Net splits)."""
    if num_parts < 1:
        raise ConfigurationError(f"-num_parts must be at least 1, got {num_parts}")
    if not 0 <= part_id < num_parts:
        raise ConfigurationError(f"-part_id must be between 0 and {num_parts - 1} (we count from 0), got {part_id}")
    return sorted(cases)[part_id::num_parts]


def predict_member(member: EnsembleMember, cases: dict[str, list[Path]], out_dir: Path, device: str = "cuda",
                   use_mirroring: bool = True, tile_step_size: float = 0.5, num_processes: int = 0,
                   resume: bool = False, checkpoint_name: str = CHECKPOINT) -> None:
    """nnU-Net prediction of ``cases`` by one member into ``out_dir`` (``<case>.npz`` probabilities, ``.pkl``).

    ``num_processes=0`` predicts sequentially in this process (``predict_from_files_sequential``); more uses
    nnU-Net's worker processes for preprocessing and export. ``resume`` skips cases already predicted.
    """
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    torch_device = torch.device(device)
    out_dir.mkdir(parents=True, exist_ok=True)
    predictor = nnUNetPredictor(tile_step_size=tile_step_size, use_gaussian=True, use_mirroring=use_mirroring,
                                perform_everything_on_device=torch_device.type == "cuda", device=torch_device,
                                verbose=False, allow_tqdm=False)
    with trainers_findable():
        predictor.initialize_from_trained_model_folder(str(member.model_folder), use_folds=(member.fold,),
                                                       checkpoint_name=checkpoint_name)
    names = sorted(cases)
    inputs = [[str(p) for p in cases[c]] for c in names]
    outputs = [str(out_dir / c) for c in names]
    if num_processes <= 0:
        predictor.predict_from_files_sequential(inputs, outputs, save_probabilities=True, overwrite=not resume)
    else:
        predictor.predict_from_files(inputs, outputs, save_probabilities=True, overwrite=not resume,
                                     num_processes_preprocessing=num_processes,
                                     num_processes_segmentation_export=num_processes)


def _member_groups(member_dirs: Sequence) -> list[list[Path]]:
    """``[[dir, ...] per model]``; a flat list of folders counts each folder as its own model."""
    return [[Path(d) for d in g] if isinstance(g, (list, tuple)) else [Path(g)] for g in member_dirs]


def ensemble_probabilities(probability_files: Sequence) -> np.ndarray:
    """Mean over models of the mean over each model's folds of the ``probabilities`` in nnU-Net ``.npz`` files.

    ``probability_files`` is one list of files per model (a flat list: one file per model). Each model weighs the
    same however many folds it has. Raises :class:`InputDataError` naming the file when a file is missing or its
    shape differs from the first. Returns float32.
    """
    from nnunetv2.ensembling.ensemble import average_probabilities

    groups = _member_groups(probability_files)
    if not groups or not all(groups):
        raise InputDataError("no probability files to average")
    first = groups[0][0]
    shape = None
    for path in (p for g in groups for p in g):
        if not path.is_file():
            raise InputDataError(f"missing member prediction {path}")
        try:
            with np.load(path) as npz:
                if "probabilities" not in npz:
                    raise InputDataError(f"{path} has no 'probabilities' array (not an nnU-Net probability file)")
                this = npz["probabilities"].shape
        except InputDataError:
            raise
        except Exception as e:  # truncated or foreign file
            raise InputDataError(f"cannot read member prediction {path}: {e.__class__.__name__}: {e}") from None
        if shape is None:
            shape = this
        elif this != shape:
            raise InputDataError(f"{path} has probabilities of shape {this}, {first} has {shape}")
    per_model = [np.asarray(average_probabilities([str(p) for p in g]), dtype=np.float32) for g in groups]
    return np.mean(per_model, axis=0, dtype=np.float32)


def _temp_name(path: Path) -> Path:
    return path.with_name(f".tmp-{os.getpid()}-{path.name}")


def _write_atomic_seg(writer: Any, seg: np.ndarray, path: Path, properties: dict) -> None:
    tmp = _temp_name(path)
    try:
        writer.write_seg(seg, str(tmp), properties)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def ensemble_case(case: str, member_dirs: Sequence, out_dir: Path, label_manager: Any, writer: Any,
                  file_ending: str, save_probabilities: bool = False, min_foreground_voxels: int = 1) -> CaseResult:
    """Average one case's member probabilities, write its label (and probabilities); report its status.

    ``member_dirs``: one list of prediction folders per model (its folds), or a flat list (one folder per model).
    An unusable case has its label (and probabilities) from any earlier run removed.
    """
    from batchgenerators.utilities.file_and_folder_operations import load_pickle

    groups = [[d / f"{case}.npz" for d in g] for g in _member_groups(member_dirs)]
    label_path = out_dir / "labels" / f"{case}{file_ending}"
    try:
        probabilities = ensemble_probabilities(groups)
        if not np.all(np.isfinite(probabilities)):
            raise InputDataError("averaged probabilities are not finite")
    except InputDataError as e:
        for stale in (label_path, out_dir / "probabilities" / f"{case}.npz",
                      out_dir / "probabilities" / f"{case}.pkl"):
            stale.unlink(missing_ok=True)
        return CaseResult(case, STATUS_UNUSABLE, message=str(e))
    first = groups[0][0]
    properties = load_pickle(str(first.with_suffix(".pkl")))
    seg = np.asarray(label_manager.convert_probabilities_to_segmentation(probabilities))
    label_path.parent.mkdir(parents=True, exist_ok=True)
    _write_atomic_seg(writer, seg, label_path, properties)
    if save_probabilities:
        prob_dir = out_dir / "probabilities"
        prob_dir.mkdir(parents=True, exist_ok=True)
        tmp = _temp_name(prob_dir / f"{case}.npz")
        np.savez_compressed(tmp, probabilities=probabilities.astype(np.float16))
        os.replace(tmp, prob_dir / f"{case}.npz")
        tmp = _temp_name(prob_dir / f"{case}.pkl")
        shutil.copyfile(first.with_suffix(".pkl"), tmp)
        os.replace(tmp, prob_dir / f"{case}.pkl")
    from nnunet_kd.brats import REGION_ABBREVIATIONS, region_masks

    regions = {REGION_ABBREVIATIONS[k]: int(v.sum()) for k, v in region_masks(seg).items()}
    foreground = int((seg > 0).sum())
    status = STATUS_OK if foreground >= min_foreground_voxels else STATUS_EMPTY
    message = "" if status == STATUS_OK else f"{foreground} tumour voxels (< {min_foreground_voxels})"
    return CaseResult(case, status, foreground, regions, message, file_sha256(label_path))


def part_report_path(output_dir: Path, num_parts: int, part_id: int) -> Path:
    return Path(output_dir) / "parts" / f"part_{part_id}_of_{num_parts}.json"


def _write_json_atomic(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_name(path)
    try:
        tmp.write_text(json.dumps(data, indent=2))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _say(line: str) -> None:
    print(f"nnunet-kd: {line}", file=sys.stderr)


def remove_stale_temp_files(output_dir: Path) -> list[Path]:
    """Remove ``.tmp-PID-NAME`` files that a killed run (process gone) left in OUT and its report/label folders."""
    from nnunet_kd.safe_io import pid_alive

    removed = []
    for folder in (output_dir, output_dir / "labels", output_dir / "probabilities", output_dir / "parts"):
        if not folder.is_dir():
            continue
        for path in sorted(folder.iterdir()):
            m = _TEMP_FILE.match(path.name)
            if m and path.is_file() and not pid_alive(int(m["pid"])):
                path.unlink(missing_ok=True)
                removed.append(path)
    if removed:
        _say(f"removed {len(removed)} temporary file(s) left in {output_dir} by an interrupted run "
             f"(e.g. {removed[0].name})")
    return removed


def _run_differences(a: dict, b: dict) -> list[str]:
    return [k for k in RUN_KEYS if a.get(k) != b.get(k)]


def _describe_difference(keys: Sequence[str]) -> str:
    names = {"members": "models/folds", "all_cases": "cases", "images": "input folder"}
    return ", ".join(names.get(k, k) for k in keys)


def prepare_output(output_dir: Path, run: dict, part_id: int) -> None:
    """Make ``output_dir`` this run's: clean temp files of killed runs, remove the reports this run replaces.

    ``pseudolabels.json`` always goes (labels are about to change); a single-part run removes every part report,
    a multi-part run its own and refuses (before predicting) when part reports of a run with other settings are
    there, saying what to clear.
    """
    parts_dir = output_dir / "parts"
    own = part_report_path(output_dir, run["num_parts"], part_id)
    if parts_dir.is_dir() and run["num_parts"] > 1:
        for path in sorted(parts_dir.glob("part_*_of_*.json")):
            if path == own:
                continue
            other = _load_json(path)
            diff = _run_differences(run, other) if other.get("format") == REPORT_FORMAT else ["format"]
            if diff:
                raise ConfigurationError(
                    f"{path} is the report of another pseudolabel run (different {_describe_difference(diff)}); "
                    f"remove {parts_dir} (or use another -o) before starting a new multi-part run")
    output_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temp_files(output_dir)
    report = output_dir / REPORT_NAME
    if report.exists():
        report.unlink()
        _say(f"removed {report} of an earlier run (it no longer describes the labels); it is rewritten after "
             f"the merge")
    stale = [own] if run["num_parts"] > 1 else sorted(parts_dir.glob("part_*_of_*.json"))
    for path in stale:
        if path.exists():
            path.unlink()
            _say(f"removed {path} of an earlier run")


def run_pseudolabel(images_dir: str | Path, output_dir: str | Path,
                    models: Sequence[tuple[Path, Sequence[str] | None]], num_parts: int = 1, part_id: int = 0,
                    device: str = "cuda", save_probabilities: bool = False, keep_member_predictions: bool = False,
                    use_mirroring: bool = True, tile_step_size: float = 0.5, num_processes: int = 0,
                    min_foreground_voxels: int = 1, resume: bool = False, checkpoint_name: str = CHECKPOINT,
                    progress: bool = True) -> dict:
    """Predict, average and label this part's cases; write the part report; merge if there is only one part.

    Everything is checked (models, input files against every model, parts, earlier reports) before the output
    folder is touched. Returns the part report (``cases``: case -> status/voxel counts/label checksum). See the
    module docstring for the layout.
    """
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    from tqdm import tqdm

    images_dir, output_dir = Path(images_dir).resolve(), Path(output_dir).resolve()
    if min_foreground_voxels < 0:
        raise ConfigurationError(f"--min-foreground-voxels must be 0 or more, got {min_foreground_voxels}")
    members = resolve_members(models, checkpoint_name)
    dataset_json = check_members_compatible(members)
    file_ending = dataset_json["file_ending"]
    if not images_dir.is_dir():
        raise InputDataError(f"input folder {images_dir} does not exist")
    suffixes = check_inputs_for_members(members, images_dir)
    all_cases = list_cases(images_dir, file_ending, suffixes=suffixes)
    mine = split_cases(list(all_cases), num_parts, part_id)
    plans = PlansManager(_load_json(members[0].model_folder / "plans.json"))
    label_manager = plans.get_label_manager(dataset_json)
    writer = plans.image_reader_writer_class()
    groups = group_by_model(members)
    run = {
        "format": REPORT_FORMAT,
        "images": str(images_dir),
        "file_ending": file_ending,
        "members": [m.as_dict() for m in members],
        "models": [{"model_folder": str(g[0].model_folder), "folds": [m.fold for m in g]} for g in groups],
        "folds": sorted({m.fold for m in members}),
        "all_cases": sorted(all_cases),
        "num_parts": num_parts,
        "save_probabilities": save_probabilities,
        "min_foreground_voxels": min_foreground_voxels,
        "checkpoint": checkpoint_name,
        "use_mirroring": use_mirroring,
        "tile_step_size": tile_step_size,
    }
    if output_dir.exists() and not output_dir.is_dir():
        raise ConfigurationError(f"output {output_dir} is a file, not a folder")
    prepare_output(output_dir, run, part_id)

    cases = {c: all_cases[c] for c in mine}
    member_dirs = {m: output_dir / "members" / m.tag for m in members}
    for member, member_dir in member_dirs.items():
        if cases:
            predict_member(member, cases, member_dir, device, use_mirroring, tile_step_size, num_processes,
                           resume, checkpoint_name)
    dirs_per_model = [[member_dirs[m] for m in g] for g in groups]
    results = [ensemble_case(c, dirs_per_model, output_dir, label_manager, writer, file_ending, save_probabilities,
                             min_foreground_voxels)
               for c in tqdm(mine, desc="ensembling", disable=not progress)]
    if not keep_member_predictions:
        for member_dir in member_dirs.values():
            for case in mine:
                for suffix in (".npz", ".pkl", file_ending):
                    (member_dir / f"{case}{suffix}").unlink(missing_ok=True)
    report = dict(run, part_id=part_id,
                  cases={r.case: {k: v for k, v in asdict(r).items() if k != "case"} for r in results})
    _write_json_atomic(part_report_path(output_dir, num_parts, part_id), report)
    if num_parts == 1:
        merge_parts(output_dir)
    return report


def merge_parts(output_dir: str | Path) -> dict:
    """Combine the part reports of ``output_dir`` into ``pseudolabels.json`` and return it.

    Checks that all parts of one run are there, were made with the same settings (input, models and folds,
    ``num_parts``, thresholds), cover every case exactly once, and that every label is still the file its part
    report describes (sha256). Anything else is refused with a message saying what to clear.
    """
    output_dir = Path(output_dir)
    parts_dir = output_dir / "parts"
    remove_stale_temp_files(output_dir)
    files = sorted(parts_dir.glob("part_*_of_*.json"))
    if not files:
        raise InputDataError(f"no part reports in {parts_dir}; run `nnunet-kd pseudolabel` first")
    reports = [_load_json(f) for f in files]
    for f, r in zip(files, reports):
        if r.get("format") != REPORT_FORMAT:
            raise InputDataError(f"{f} was written by an older nnunet-kd (no run settings or label checksums); "
                                 f"remove {parts_dir} and {output_dir / 'labels'} and run pseudolabel again")
    first = reports[0]
    for f, r in zip(files[1:], reports[1:]):
        diff = _run_differences(first, r)
        if diff:
            raise InputDataError(
                f"{f.name} and {files[0].name} in {parts_dir} come from different pseudolabel runs (different "
                f"{_describe_difference(diff)}); remove the part reports of the run you do not want and rerun "
                f"its missing parts, or start again in an empty output folder")
    num_parts = first["num_parts"]
    present = sorted(r["part_id"] for r in reports)
    missing = sorted(set(range(num_parts)) - set(present))
    if missing:
        raise InputDataError(f"parts {missing} of {num_parts} have not been run (no report in {parts_dir})")
    seen: dict[str, int] = {}
    cases: dict[str, dict] = {}
    for r in reports:
        for case, info in r["cases"].items():
            if case in seen:
                raise InputDataError(f"case {case} appears in parts {seen[case]} and {r['part_id']}")
            seen[case] = r["part_id"]
            cases[case] = dict(info, part=r["part_id"])
    not_done = sorted(set(first["all_cases"]) - set(cases))
    if not_done:
        raise InputDataError(f"cases {not_done} are in no part report")
    for case, info in cases.items():
        if info["status"] == STATUS_UNUSABLE:
            continue
        label = output_dir / "labels" / f"{case}{first['file_ending']}"
        if not label.is_file():
            raise InputDataError(f"case {case}: label {label} of part {info['part']} is missing; rerun part "
                                 f"{info['part']} (-part_id {info['part']})")
        if file_sha256(label) != info.get("label_sha256"):
            raise InputDataError(f"case {case}: label {label} changed after part {info['part']}'s report was "
                                 f"written (another run wrote into {output_dir}?); rerun part {info['part']}")
    merged = {k: first[k] for k in ("format", "images", "file_ending", "members", "models", "folds", "num_parts",
                                    "save_probabilities", "min_foreground_voxels", "checkpoint")}
    merged["cases"] = dict(sorted(cases.items()))
    merged["ok"] = sorted(c for c, i in cases.items() if i["status"] == STATUS_OK)
    merged["rejected"] = {c: i["status"] for c, i in sorted(cases.items()) if i["status"] != STATUS_OK}
    _write_json_atomic(output_dir / REPORT_NAME, merged)
    return merged


def load_report(output_dir: str | Path) -> dict:
    """The merged report ``pseudolabels.json`` of a pseudo-label folder (current format only)."""
    path = Path(output_dir) / REPORT_NAME
    if not path.is_file():
        raise InputDataError(f"{path} not found; run `nnunet-kd pseudolabel` (and `--merge` after a multi-part run)")
    report = _load_json(path)
    if report.get("format") != REPORT_FORMAT:
        raise InputDataError(f"{path} was written by an older nnunet-kd (no label checksums); run "
                             f"`nnunet-kd pseudolabel` again into an empty folder")
    return report
