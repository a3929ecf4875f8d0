"""Ensemble pseudo-labels for unlabelled cases (seed 001: average the models' outputs, threshold, label).

For every ensemble member (a trained model folder and one fold) nnU-Net's own ``nnUNetPredictor`` predicts the
unlabelled cases with ``save_probabilities``; the region probabilities (sigmoid WT/TC/ET) of all members are
averaged per case (``nnunetv2.ensembling.ensemble.average_probabilities``) and turned into labels 1/2/3 by the
model's ``LabelManager`` (threshold 0.5, painted in ``regions_class_order``), written with the plans' image writer
in the geometry of the input image.

Output folder layout::

    OUT/labels/<case><file_ending>         hard pseudo-labels, dataset convention (0 bg, 1 ED, 2 NCR, 3 ET)
    OUT/probabilities/<case>.npz|.pkl      averaged probabilities (float16), with --save-probabilities
    OUT/members/<model>__fold_<k>/         per-member nnU-Net predictions (deleted unless kept)
    OUT/parts/part_<K>_of_<N>.json         report of one part (cases, members, status per case)
    OUT/pseudolabels.json                  merged report (:func:`merge_parts`); read by make-distill-dataset

Cases are shared between parts as nnU-Net does (``cases[part_id::num_parts]``), so several machines can work
on one output folder. A case whose averaged label has fewer than ``min_foreground_voxels`` tumour voxels is
reported as ``empty``; a case whose member outputs are missing, disagree in shape or are not finite is
``unusable`` and gets no label. Only ``ok`` cases go into a distillation dataset by default.

Public functions: :func:`parse_model_spec`, :func:`resolve_members`, :func:`list_cases`, :func:`split_cases`,
:func:`ensemble_probabilities`, :func:`run_pseudolabel`, :func:`merge_parts`, :func:`load_report`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
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
STATUS_OK, STATUS_EMPTY, STATUS_UNUSABLE = "ok", "empty", "unusable"
_FOLDS_RE = re.compile(r"^(all|\d+)(,(all|\d+))*$")


@dataclass(frozen=True)
class EnsembleMember:
    """One trained model folder and one of its folds."""

    model_folder: Path
    fold: str

    @property
    def tag(self) -> str:
        """Folder name for this member's predictions, e.g. ``nnUNetTrainerUNet__nnUNetPlans__3d_fullres__fold_0``."""
        return f"{self.model_folder.name}__fold_{self.fold}"

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
    """Ensemble members of model folders and folds; raises :class:`ConfigurationError` for anything missing."""
    if not specs:
        raise ConfigurationError("no model given; pass --models RESULTS_DIR[:folds] ...")
    members: list[EnsembleMember] = []
    for folder, folds in specs:
        folder = Path(folder).resolve()
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


def list_cases(images_dir: Path, file_ending: str, num_channels: int) -> dict[str, list[Path]]:
    """Case id -> its channel files (``<case>_0000<ending>`` ...), checked to have exactly ``num_channels`` files."""
    images_dir = Path(images_dir)
    if not images_dir.is_dir():
        raise InputDataError(f"input folder {images_dir} does not exist")
    pattern = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})" + re.escape(file_ending) + "$")
    cases: dict[str, dict[int, Path]] = {}
    for path in sorted(images_dir.iterdir()):
        match = pattern.match(path.name)
        if match:
            cases.setdefault(match["case"], {})[int(match["channel"])] = path
    if not cases:
        raise InputDataError(f"no images named <case>_0000{file_ending} in {images_dir}")
    result = {}
    for case, channels in sorted(cases.items()):
        if sorted(channels) != list(range(num_channels)):
            found = ", ".join(f"_{c:04d}" for c in sorted(channels))
            raise InputDataError(f"case {case} in {images_dir} has channels {found}; the models expect "
                                 f"_0000 to _{num_channels - 1:04d}")
        result[case] = [channels[c] for c in range(num_channels)]
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


def ensemble_probabilities(probability_files: Sequence[Path]) -> np.ndarray:
    """Mean of the ``probabilities`` arrays in nnU-Net ``.npz`` files (float32).

    Raises :class:`InputDataError` naming the file when a file is missing or its shape differs from the first.
    """
    from nnunetv2.ensembling.ensemble import average_probabilities

    if not probability_files:
        raise InputDataError("no probability files to average")
    shape = None
    for path in probability_files:
        if not Path(path).is_file():
            raise InputDataError(f"missing member prediction {path}")
        with np.load(path) as npz:
            if "probabilities" not in npz:
                raise InputDataError(f"{path} has no 'probabilities' array (not an nnU-Net probability file)")
            this = npz["probabilities"].shape
        if shape is None:
            shape = this
        elif this != shape:
            raise InputDataError(f"{path} has probabilities of shape {this}, {probability_files[0]} has {shape}")
    return average_probabilities([str(p) for p in probability_files])


def _write_atomic_seg(writer: Any, seg: np.ndarray, path: Path, properties: dict) -> None:
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    writer.write_seg(seg, str(tmp), properties)
    os.replace(tmp, path)


def ensemble_case(case: str, member_dirs: Sequence[Path], out_dir: Path, label_manager: Any, writer: Any,
                  file_ending: str, save_probabilities: bool = False, min_foreground_voxels: int = 1) -> CaseResult:
    """Average one case's member probabilities, write its label (and probabilities); report its status."""
    from batchgenerators.utilities.file_and_folder_operations import load_pickle

    files = [Path(d) / f"{case}.npz" for d in member_dirs]
    try:
        probabilities = ensemble_probabilities(files)
    except InputDataError as e:
        return CaseResult(case, STATUS_UNUSABLE, message=str(e))
    if not np.all(np.isfinite(probabilities)):
        return CaseResult(case, STATUS_UNUSABLE, message="averaged probabilities are not finite")
    properties = load_pickle(str(files[0].with_suffix(".pkl")))
    seg = np.asarray(label_manager.convert_probabilities_to_segmentation(probabilities))
    labels_dir = out_dir / "labels"
    labels_dir.mkdir(parents=True, exist_ok=True)
    _write_atomic_seg(writer, seg, labels_dir / f"{case}{file_ending}", properties)
    if save_probabilities:
        prob_dir = out_dir / "probabilities"
        prob_dir.mkdir(parents=True, exist_ok=True)
        tmp = prob_dir / f".tmp-{os.getpid()}-{case}.npz"
        np.savez_compressed(tmp, probabilities=probabilities.astype(np.float16))
        os.replace(tmp, prob_dir / f"{case}.npz")
        shutil.copyfile(files[0].with_suffix(".pkl"), prob_dir / f"{case}.pkl")
    from nnunet_kd.brats import REGION_ABBREVIATIONS, region_masks

    regions = {REGION_ABBREVIATIONS[k]: int(v.sum()) for k, v in region_masks(seg).items()}
    foreground = int((seg > 0).sum())
    status = STATUS_OK if foreground >= min_foreground_voxels else STATUS_EMPTY
    message = "" if status == STATUS_OK else f"{foreground} tumour voxels (< {min_foreground_voxels})"
    return CaseResult(case, status, foreground, regions, message)


def part_report_path(output_dir: Path, num_parts: int, part_id: int) -> Path:
    return Path(output_dir) / "parts" / f"part_{part_id}_of_{num_parts}.json"


def _write_json_atomic(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)


def run_pseudolabel(images_dir: str | Path, output_dir: str | Path,
                    models: Sequence[tuple[Path, Sequence[str] | None]], num_parts: int = 1, part_id: int = 0,
                    device: str = "cuda", save_probabilities: bool = False, keep_member_predictions: bool = False,
                    use_mirroring: bool = True, tile_step_size: float = 0.5, num_processes: int = 0,
                    min_foreground_voxels: int = 1, resume: bool = False, checkpoint_name: str = CHECKPOINT,
                    progress: bool = True) -> dict:
    """Predict, average and label this part's cases; write the part report; merge if there is only one part.

    Returns the part report (``cases``: case -> status/voxel counts). See the module docstring for the layout.
    """
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    from tqdm import tqdm

    images_dir, output_dir = Path(images_dir).resolve(), Path(output_dir).resolve()
    members = resolve_members(models, checkpoint_name)
    dataset_json = check_members_compatible(members)
    file_ending = dataset_json["file_ending"]
    all_cases = list_cases(images_dir, file_ending, len(dataset_json["channel_names"]))
    mine = split_cases(list(all_cases), num_parts, part_id)
    plans = PlansManager(_load_json(members[0].model_folder / "plans.json"))
    label_manager = plans.get_label_manager(dataset_json)
    writer = plans.image_reader_writer_class()

    cases = {c: all_cases[c] for c in mine}
    member_dirs = [output_dir / "members" / m.tag for m in members]
    for member, member_dir in zip(members, member_dirs):
        if cases:
            predict_member(member, cases, member_dir, device, use_mirroring, tile_step_size, num_processes,
                           resume, checkpoint_name)
    results = [ensemble_case(c, member_dirs, output_dir, label_manager, writer, file_ending, save_probabilities,
                             min_foreground_voxels)
               for c in tqdm(mine, desc="ensembling", disable=not progress)]
    if not keep_member_predictions:
        for member_dir in member_dirs:
            for case in mine:
                for suffix in (".npz", ".pkl", file_ending):
                    (member_dir / f"{case}{suffix}").unlink(missing_ok=True)
    report = {
        "images": str(images_dir),
        "file_ending": file_ending,
        "members": [m.as_dict() for m in members],
        "all_cases": sorted(all_cases),
        "num_parts": num_parts,
        "part_id": part_id,
        "save_probabilities": save_probabilities,
        "min_foreground_voxels": min_foreground_voxels,
        "cases": {r.case: {k: v for k, v in asdict(r).items() if k != "case"} for r in results},
    }
    _write_json_atomic(part_report_path(output_dir, num_parts, part_id), report)
    if num_parts == 1:
        merge_parts(output_dir)
    return report


def merge_parts(output_dir: str | Path) -> dict:
    """Combine the part reports of ``output_dir`` into ``pseudolabels.json`` and return it.

    Checks that all parts of one run are there, agree on input and models, and cover every case exactly once.
    """
    output_dir = Path(output_dir)
    files = sorted((output_dir / "parts").glob("part_*_of_*.json"))
    if not files:
        raise InputDataError(f"no part reports in {output_dir / 'parts'}; run `nnunet-kd pseudolabel` first")
    reports = [_load_json(f) for f in files]
    first = reports[0]
    for f, r in zip(files, reports):
        for key in ("images", "members", "all_cases", "num_parts", "file_ending"):
            if r[key] != first[key]:
                raise InputDataError(f"{f} was made with a different '{key}' than {files[0]}; parts of one run must "
                                     f"use the same input folder, models and -num_parts")
    num_parts = first["num_parts"]
    present = sorted(r["part_id"] for r in reports)
    missing = sorted(set(range(num_parts)) - set(present))
    if missing:
        raise InputDataError(f"parts {missing} of {num_parts} have not been run (no report in {output_dir / 'parts'})")
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
    merged = {k: first[k] for k in ("images", "file_ending", "members", "num_parts", "save_probabilities",
                                    "min_foreground_voxels")}
    merged["cases"] = dict(sorted(cases.items()))
    merged["ok"] = sorted(c for c, i in cases.items() if i["status"] == STATUS_OK)
    merged["rejected"] = {c: i["status"] for c, i in sorted(cases.items()) if i["status"] != STATUS_OK}
    _write_json_atomic(output_dir / REPORT_NAME, merged)
    return merged


def load_report(output_dir: str | Path) -> dict:
    """The merged report ``pseudolabels.json`` of a pseudo-label folder."""
    path = Path(output_dir) / REPORT_NAME
    if not path.is_file():
        raise InputDataError(f"{path} not found; run `nnunet-kd pseudolabel` (and `--merge` after a multi-part run)")
    return _load_json(path)
