"""Evaluate a folder of predicted BraTS label maps against a folder of reference label maps.

Public: :func:`evaluate_folders`, :func:`evaluate_case`, :func:`pair_cases`, :func:`read_label_map`,
:func:`summarize`, :func:`write_evaluation`, :func:`load_evaluation`, :func:`format_summary_table`,
:func:`metric_column`, plus the small atomic-output helpers :func:`atomic_write_text` and
:func:`publish_folder` (used by the reporting stage too).

Folders are nnU-Net style: one ``CASE<file_ending>`` label map per case (the GT folder is e.g. ``labelsTr``).
Both are read with SimpleITK and checked to be complete (a truncated ``.nii.gz``/``.nii`` is read by SimpleITK
without complaint and would be scored as if its missing voxels were background); the voxel spacing comes from
the image header. Labels are mapped to the canonical labels with :func:`nnunet_kd.brats.get_convention`, each
folder with its own convention (raw BraTS 2023 labels and nnU-Net predictions both use the values 0-3 with
different meanings, so one shared convention would silently swap edema and necrosis for one side), then the
evaluation regions of the dataset kind (:class:`nnunet_kd.brats.DatasetKind`; WT, TC, ET by default, plus NETC,
SNFH and RC for post-treatment data, ``EvaluationSettings.kind``) are scored with :mod:`.metrics` and the
lesion-wise procedure of the kind (:mod:`.lesionwise`, BraTS 2023; :mod:`.lesionwise_2024` for GLI-POST, the
BraTS 2024 post-treatment reference's; ``EvaluationSettings.lesion_procedure``). Any bad file
(unreadable, truncated, wrong geometry, label values outside its convention or not integers) stops the run with
one line naming the case and the file, before anything is written.

Output folder (written atomically: built in a temporary folder next to it, then moved into place; an existing
non-empty folder is refused unless ``overwrite``, and then replaced as a whole):

* ``per_case.csv`` — one row per case: ``case``, ``pred_file``, ``gt_file`` (absolute paths; ``pred_file`` is
  empty for a missing prediction), ``missing_prediction`` (0/1), then ``<REGION>_<metric>`` for regions
  WT, TC, ET (GLI-POST: WT, TC, ET, NETC, SNFH, RC) and metrics :data:`METRICS` (HD95 in mm, volumes in mm³);
* ``summary.csv`` — ``region, metric, mean, median, std, q25, q75, n`` (std is the population std, ddof=0);
* ``summary.json`` — the same statistics under ``metrics[region][metric]`` plus the settings and folders used,
  the dataset kind (``dataset_kind``) and its scored ``regions``, which ``evaluate-subsets``, ``--group-by-routing``
  and ``report`` take their columns from; ``lesion_wise.procedure`` names the lesion-wise procedure
  (``brats2023`` or ``brats2024-gli-post``);
* with ``evaluate --group-by-routing`` (:mod:`nnunet_kd.subsets.routing`) also ``summary_by_group.csv`` and, in
  ``summary.json``, ``availability_groups`` (each case's group), written in the same atomic step.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
import tempfile
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from nnunet_kd import brats
from nnunet_kd.errors import ConfigurationError, InputDataError, NnunetKDError
from nnunet_kd.evaluation import lesionwise, lesionwise_2024, metrics

#: Region abbreviations in the order of :data:`nnunet_kd.brats.REGIONS` (WT, TC, ET): the regions of the GLI kind,
#: the default where no dataset kind is known. Other kinds' regions: ``brats.get_kind(name).eval_regions``.
REGION_KEYS: tuple[str, ...] = tuple(brats.REGION_ABBREVIATIONS[r] for r in brats.REGIONS)
#: Every region any dataset kind scores (WT, TC, ET, NETC, SNFH, RC), in kind order.
ALL_REGIONS: tuple[str, ...] = tuple(dict.fromkeys(r for kind in brats.KINDS.values() for r in kind.eval_regions))
#: Per-region metrics in the per-case table (HD95 in mm, volumes in mm³, lesion counts as numbers).
METRICS: tuple[str, ...] = metrics.REGION_METRIC_NAMES + (
    "lesion_dice", "lesion_hd95", "lesion_tp", "lesion_fp", "lesion_fn")
#: Leading columns of ``per_case.csv``.
CASE_COLUMNS: tuple[str, ...] = ("case", "pred_file", "gt_file", "missing_prediction")
PER_CASE_CSV = "per_case.csv"
SUMMARY_CSV = "summary.csv"
SUMMARY_JSON = "summary.json"
STATISTICS: tuple[str, ...] = ("mean", "median", "std", "q25", "q75", "n")
#: Lesion-wise procedures: the BraTS 2023 one (every kind but GLI-POST) and the BraTS 2024 post-treatment one.
LESION_PROCEDURE_2023 = "brats2023"
LESION_PROCEDURES: tuple[str, ...] = (LESION_PROCEDURE_2023, lesionwise_2024.PROCEDURE)
HD95_DEFINITION = ("BraTS 2023 reference HD95 (BraTS-2023-Metrics via DeepMind surface_distance): max of the two "
                   "directed area-weighted 95th percentiles of distances between surface elements on the voxel-corner "
                   "grid, in mm")


def metric_column(region: str, metric: str) -> str:
    """Column name of ``metric`` for region ``region`` (``WT``, ``TC``, ``ET``, ``RC`` ...) in ``per_case.csv``."""
    return f"{region}_{metric}"


def display_order(regions: Iterable[str]) -> list[str]:
    """``regions`` in the order of the seed papers' tables: the three nested BraTS regions innermost first
    (ET, TC, WT), then any others (NETC, SNFH, RC) in their kind's order."""
    regions = list(dict.fromkeys(regions))
    nested = [r for r in reversed(REGION_KEYS) if r in regions]
    return nested + [r for r in regions if r not in nested]


def regions_of_rows(rows: Sequence[Mapping]) -> list[str]:
    """The evaluated regions of per-case rows: every region of :data:`nnunet_kd.brats.KINDS` with a Dice column
    in the first row, in kind order (WT, TC, ET, NETC, SNFH, RC)."""
    return [r for r in ALL_REGIONS if rows and metric_column(r, "dice") in rows[0]]


def resolve_kind(kind: str | None, dataset_jsons: Iterable[str | os.PathLike],
                 conventions: Iterable[str | None] = ()) -> brats.DatasetKind:
    """The dataset kind to score: ``kind`` if given; else the ``brats_kind`` recorded in the existing files among
    ``dataset_jsons`` (they must agree); else the kind of the first explicit label convention that belongs to
    another kind than GLI (``2024-gli`` means GLI-POST); else GLI. Used by ``evaluate`` (GT_DIR, its parent,
    PRED_DIR) and ``evaluate-subsets`` (GT, its parent, the model folder) alike."""
    from nnunet_kd.safe_io import read_json_object

    if kind is not None:
        return brats.get_kind(kind)
    found: dict[str, Path] = {}
    for path in map(Path, dataset_jsons):
        if path.is_file():
            recorded = brats.kind_of_dataset_json(read_json_object(path, "dataset.json"))
            if recorded is not None:
                found.setdefault(recorded.name, path)
    if len(found) > 1:
        listing = ", ".join(f"{k} ({p})" for k, p in found.items())
        raise ConfigurationError(f"the dataset.json files name different dataset kinds: {listing}; pass --kind")
    if found:
        return brats.get_kind(next(iter(found)))
    for name in conventions:
        if name is not None and brats.get_convention(name).kind != "GLI":
            return brats.get_kind(brats.get_convention(name).kind)
    return brats.get_kind("GLI")


@dataclass(frozen=True)
class CasePair:
    """One case to evaluate: the reference file and the prediction file (``None`` when missing)."""

    case: str
    gt_file: Path
    pred_file: Path | None


@dataclass(frozen=True)
class EvaluationSettings:
    """Everything :func:`evaluate_case` needs besides the files (picklable for worker processes)."""

    pred_convention: str = "dataset137"
    gt_convention: str = "dataset137"
    hd95_penalty: float = metrics.HD95_PENALTY_MM
    lesion_dilation_iterations: int = lesionwise.GLI_DILATION_ITERATIONS
    lesion_volume_threshold_mm3: float = lesionwise.GLI_VOLUME_THRESHOLD_MM3
    #: lesion-wise HD95 of misses and false positives; ``None``: the procedure's (374 mm 2023, 337 mm 2024)
    lesion_hd95_penalty: float | None = None
    kind: str = "GLI"  #: dataset kind (``brats.KINDS``) whose evaluation regions are scored
    #: :data:`LESION_PROCEDURES` entry; ``None``: the kind's (BraTS 2024 for GLI-POST, else BraTS 2023). The 2024
    #: procedure has its own per-region dilation and thresholds: the two ``lesion_*`` parameters above only
    #: apply to the 2023 one.
    lesion_procedure: str | None = None

    def __post_init__(self) -> None:
        if str(self.kind).upper() not in brats.KINDS:
            raise ConfigurationError(f"unknown BraTS dataset kind '{self.kind}'; expected one of "
                                     f"{', '.join(brats.KINDS)}")
        procedure = self.lesion_procedure
        if procedure is None:
            procedure = (lesionwise_2024.PROCEDURE if brats.get_kind(self.kind).task == lesionwise_2024.TASK
                         else LESION_PROCEDURE_2023)
            object.__setattr__(self, "lesion_procedure", procedure)
        if procedure not in LESION_PROCEDURES:
            raise ConfigurationError(f"unknown lesion-wise procedure '{procedure}'; expected one of "
                                     f"{', '.join(LESION_PROCEDURES)}")
        if procedure == lesionwise_2024.PROCEDURE:
            post = brats.get_kind(lesionwise_2024.TASK).eval_regions
            own = brats.get_kind(self.kind).eval_regions
            if any(post.get(region) != labels for region, labels in own.items()):
                raise ConfigurationError(
                    f"the BraTS 2024 post-treatment lesion-wise procedure (task {lesionwise_2024.TASK}) is defined "
                    f"for the regions {', '.join(post)} of post-treatment glioma labels; dataset kind "
                    f"{brats.get_kind(self.kind).name} scores {', '.join(own)} with other labels: use its own "
                    f"task (--task {brats.get_kind(self.kind).task})")
        if self.lesion_hd95_penalty is None:
            object.__setattr__(self, "lesion_hd95_penalty", lesionwise_2024.HD95_PENALTY_MM
                               if procedure == lesionwise_2024.PROCEDURE else lesionwise.LESION_HD95_PENALTY_MM)
        for what, name in (("prediction", self.pred_convention), ("reference", self.gt_convention)):
            if str(name).lower() not in brats.CONVENTIONS:
                raise ConfigurationError(f"unknown {what} label convention '{name}'; expected one of "
                                         f"{', '.join(brats.CONVENTIONS)}")
        k = self.lesion_dilation_iterations
        if isinstance(k, bool) or int(k) != k or k < 0:
            raise ConfigurationError(f"lesion-wise dilation must be a non-negative whole number, got {k}")
        if not (math.isfinite(self.lesion_volume_threshold_mm3) and self.lesion_volume_threshold_mm3 >= 0):
            raise ConfigurationError(f"lesion-wise minimum volume must be a non-negative number of mm^3, got "
                                     f"{self.lesion_volume_threshold_mm3}")
        for what, v in (("HD95 penalty", self.hd95_penalty), ("lesion-wise HD95 penalty", self.lesion_hd95_penalty)):
            if not (math.isfinite(v) and v >= 0):
                raise ConfigurationError(f"{what} must be a non-negative number of mm, got {v}")


@dataclass(frozen=True)
class LabelMap:
    """A label map as a numpy array (SimpleITK order z, y, x) and its geometry in the same axis order."""

    array: np.ndarray
    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    direction: tuple[float, ...]


def _case_files(folder: Path, file_ending: str) -> dict[str, Path]:
    return {p.name[: -len(file_ending)]: p for p in sorted(folder.iterdir())
            if p.is_file() and p.name.endswith(file_ending) and not p.name.startswith(".")}


def pair_cases(pred_dir: str | os.PathLike, gt_dir: str | os.PathLike, file_ending: str = ".nii.gz",
               allow_missing: bool = False) -> list[CasePair]:
    """Match every reference case in ``gt_dir`` with ``pred_dir/CASE<file_ending>``.

    Raises :class:`InputDataError` for a missing folder, an empty reference folder, or (unless
    ``allow_missing``) reference cases without prediction. Predictions without reference are ignored."""
    pred_dir, gt_dir = Path(pred_dir), Path(gt_dir)
    for what, folder in (("prediction", pred_dir), ("reference", gt_dir)):
        if not folder.is_dir():
            raise InputDataError(f"{what} folder {folder} does not exist")
    gts = _case_files(gt_dir, file_ending)
    if not gts:
        raise InputDataError(f"reference folder {gt_dir} holds no *{file_ending} label maps")
    preds = _case_files(pred_dir, file_ending)
    missing = [c for c in gts if c not in preds]
    if missing and not allow_missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise InputDataError(f"no prediction for case(s) {shown}: expected {pred_dir / (missing[0] + file_ending)} "
                             f"(use --allow-missing to count missing predictions as empty)")
    return [CasePair(c, gts[c].resolve(), preds[c].resolve() if c in preds else None) for c in gts]


def read_label_map(path: str | os.PathLike, case: str = "", role: str = "label map") -> LabelMap:
    """Read a label map with SimpleITK; spacing/origin/direction reordered to the numpy axis order (z, y, x).

    NIfTI files (``.nii``, ``.nii.gz``) are also checked to hold all the voxels their header promises. Any
    problem is one :class:`InputDataError` line naming ``case``, ``role`` and the file."""
    import SimpleITK as sitk

    from nnunet_kd.nifti import check_complete, one_line

    path = Path(path)
    try:
        img = sitk.ReadImage(str(path))
        if path.name.endswith((".nii.gz", ".nii")):
            check_complete(path)
        array = sitk.GetArrayFromImage(img)
    except Exception as e:  # SimpleITK, nibabel, zlib and OS errors alike
        raise InputDataError(f"case {case}: cannot read {role} file {path}: {one_line(e)}") from None
    if img.GetNumberOfComponentsPerPixel() != 1 or img.GetDimension() != 3:
        raise InputDataError(f"case {case}: {role} file {path} is not a 3D single-channel label map")
    dim = img.GetDimension()
    direction = np.asarray(img.GetDirection(), dtype=float).reshape(dim, dim)[::-1, ::-1]
    return LabelMap(array, tuple(img.GetSpacing()[::-1]), tuple(img.GetOrigin()[::-1]),
                    tuple(direction.ravel()))


def _check_geometry(case: str, pred: LabelMap, pred_file: Path, gt: LabelMap, gt_file: Path) -> None:
    checks = (("shape", pred.array.shape, gt.array.shape, 0.0),
              ("spacing", pred.spacing, gt.spacing, 1e-3),
              ("origin", pred.origin, gt.origin, 1e-3),
              ("direction", pred.direction, gt.direction, 1e-3))
    for what, a, b, tol in checks:
        if len(a) != len(b) or not np.allclose(a, b, rtol=0, atol=tol):
            raise InputDataError(f"case {case}: prediction {pred_file} has {what} {_rounded(a)} but reference "
                                 f"{gt_file} has {what} {_rounded(b)}")


def _rounded(values: Sequence) -> tuple[float, ...]:
    return tuple(round(float(x), 4) for x in values)


def _canonical(case: str, lm: LabelMap, path: Path, role: str, convention: brats.LabelConvention) -> np.ndarray:
    """Canonical labels of a label map; non-integer or unexpected values are one line naming case and file."""
    arr = lm.array
    if arr.dtype.kind == "f":
        bad = ~np.isfinite(arr) | (arr != np.round(arr))
        if bad.any():
            values = np.unique(arr[bad])
            shown = ", ".join(f"{v:g}" for v in values[:5]) + (f" and {values.size - 5} more"
                                                               if values.size > 5 else "")
            raise InputDataError(f"case {case}: {role} file {path} has non-integer label values {shown}")
        arr = arr.astype(np.int64)
    elif arr.dtype.kind == "b":
        arr = arr.astype(np.uint8)
    elif arr.dtype.kind not in "iu":
        raise InputDataError(f"case {case}: {role} file {path} has voxel type {arr.dtype}, not a label map")
    top = max(convention.to_canonical)
    lut = np.full(top + 1, 255, dtype=np.uint8)
    for src, dst in convention.to_canonical.items():
        lut[src] = dst
    outside = (arr < 0) | (arr > top)
    out = lut[np.where(outside, 0, arr)] if outside.any() else lut[arr]
    wrong = outside | (out == 255)
    if wrong.any():
        unexpected = [int(v) for v in np.unique(arr[wrong])]
        raise InputDataError(f"case {case}: {role} file {path} has label value(s) {unexpected}, not allowed in the "
                             f"{convention.name} convention ({convention.description}; allowed: "
                             f"{list(convention.allowed_values)})")
    return out


def evaluate_case(pair: CasePair, settings: EvaluationSettings | None = None) -> dict:
    """All metrics of one case as one ``per_case.csv`` row (see the module docstring for the columns)."""
    settings = settings or EvaluationSettings()
    gt_map = read_label_map(pair.gt_file, pair.case, "reference")
    gt = _canonical(pair.case, gt_map, pair.gt_file, "reference", brats.get_convention(settings.gt_convention))
    if pair.pred_file is None:
        pred = np.zeros_like(gt)
    else:
        pred_map = read_label_map(pair.pred_file, pair.case, "prediction")
        _check_geometry(pair.case, pred_map, pair.pred_file, gt_map, pair.gt_file)
        pred = _canonical(pair.case, pred_map, pair.pred_file, "prediction",
                          brats.get_convention(settings.pred_convention))
    spacing = gt_map.spacing
    regions = brats.get_kind(settings.kind).eval_regions
    row: dict = {"case": pair.case, "pred_file": str(pair.pred_file) if pair.pred_file else "",
                 "gt_file": str(pair.gt_file), "missing_prediction": int(pair.pred_file is None)}
    region_scores = metrics.region_metrics(pred, gt, spacing, regions=regions, hd95_penalty=settings.hd95_penalty)
    if settings.lesion_procedure == lesionwise_2024.PROCEDURE:
        lesion_scores = lesionwise_2024.lesion_wise_region_scores_2024(
            pred, gt, spacing, regions=list(regions), hd95_penalty=settings.lesion_hd95_penalty)
    else:
        lesion_scores = lesionwise.lesion_wise_region_scores(
            pred, gt, spacing, regions=regions, dilation_iterations=settings.lesion_dilation_iterations,
            volume_threshold_mm3=settings.lesion_volume_threshold_mm3, hd95_penalty=settings.lesion_hd95_penalty)
    for region in regions:
        values = dict(region_scores[region])
        values.update(lesion_scores[region].as_dict())
        for metric in METRICS:
            row[metric_column(region, metric)] = values[metric]
    return row


def summarize(rows: Sequence[dict], regions: Sequence[str] = REGION_KEYS) -> dict[str, dict[str, dict[str, float]]]:
    """``{region: {metric: {mean, median, std, q25, q75, n}}}`` over the per-case rows (std with ddof=0)."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for region in regions:
        out[region] = {}
        for metric in METRICS:
            v = np.asarray([float(r[metric_column(region, metric)]) for r in rows], dtype=float)
            v = v[np.isfinite(v)]
            if v.size == 0:
                stats = {s: math.nan for s in STATISTICS[:-1]}
            else:
                q25, med, q75 = np.percentile(v, [25, 50, 75])
                stats = {"mean": float(v.mean()), "median": float(med), "std": float(v.std()),
                         "q25": float(q25), "q75": float(q75)}
            stats["n"] = int(v.size)
            out[region][metric] = stats
    return out


def _run_cases(pairs: Sequence[CasePair], settings: EvaluationSettings, num_processes: int,
               progress: bool) -> list[dict]:
    from tqdm import tqdm

    rows: list[dict] = []
    with tqdm(total=len(pairs), desc="evaluate", unit="case", disable=not progress) as bar:
        if num_processes <= 1 or len(pairs) <= 1:
            for pair in pairs:
                rows.append(evaluate_case(pair, settings))
                bar.update()
        else:
            workers = min(num_processes, len(pairs))
            with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
                futures = [pool.submit(evaluate_case, pair, settings) for pair in pairs]
                try:
                    for fut in as_completed(futures):
                        rows.append(fut.result())
                        bar.update()
                except BaseException:
                    for fut in futures:
                        fut.cancel()
                    raise
    order = {p.case: i for i, p in enumerate(pairs)}
    return sorted(rows, key=lambda r: order[r["case"]])


def evaluate_folders(pred_dir: str | os.PathLike, gt_dir: str | os.PathLike,
                     out_dir: str | os.PathLike | None = None, convention: str | None = None,
                     num_processes: int = 1, allow_missing: bool = False, progress: bool = True,
                     file_ending: str = ".nii.gz", settings: EvaluationSettings | None = None,
                     overwrite: bool = True) -> tuple[list[dict], dict]:
    """Evaluate every reference case of ``gt_dir`` against ``pred_dir``; returns ``(per-case rows, summary)``.

    ``summary`` is the content of ``summary.json``. With ``out_dir`` the three output files are written there
    atomically (a non-empty ``out_dir`` is an error unless ``overwrite``; then it is replaced). Missing
    predictions are an :class:`InputDataError` unless ``allow_missing``; then they count as empty predictions
    and a :class:`UserWarning` names them. ``settings`` sets the label conventions of both folders, penalties and
    lesion-wise parameters; ``convention``, if given, is the shorthand for one convention of both folders."""
    settings = settings or EvaluationSettings()
    if convention is not None:
        settings = dataclasses.replace(settings, pred_convention=convention, gt_convention=convention)
    if out_dir is not None:
        check_output_apart(out_dir, (("prediction folder", pred_dir), ("reference folder", gt_dir)))
        if not overwrite:
            check_output_folder(out_dir)
    pairs = pair_cases(pred_dir, gt_dir, file_ending, allow_missing)
    missing = [p.case for p in pairs if p.pred_file is None]
    if missing:
        warnings.warn(f"{len(missing)} case(s) without prediction counted as empty predictions: "
                      f"{', '.join(missing)}", UserWarning, stacklevel=2)
    rows = _run_cases(pairs, settings, num_processes, progress)
    kind = brats.get_kind(settings.kind)
    summary = {
        "tool": "nnunet-kd evaluate",
        "pred_dir": str(Path(pred_dir).resolve()),
        "gt_dir": str(Path(gt_dir).resolve()),
        "file_ending": file_ending,
        "pred_convention": settings.pred_convention,
        "gt_convention": settings.gt_convention,
        "convention": (settings.pred_convention if settings.pred_convention == settings.gt_convention
                       else f"prediction {settings.pred_convention}, reference {settings.gt_convention}"),
        "dataset_kind": kind.name,
        "num_cases": len(rows),
        "missing_predictions": missing,
        "regions": list(kind.eval_regions),
        "region_labels": {r: list(v) for r, v in kind.eval_regions.items()},
        "units": {"hd95": "mm", "lesion_hd95": "mm", "vol_pred_mm3": "mm^3", "vol_gt_mm3": "mm^3"},
        "hd95_definition": HD95_DEFINITION,
        "hd95_empty_penalty_mm": settings.hd95_penalty,
        "lesion_wise": lesion_wise_parameters(settings),
        "per_case_csv": PER_CASE_CSV,
        "metrics": summarize(rows, tuple(kind.eval_regions)),
    }
    if out_dir is not None:
        write_evaluation(rows, summary, out_dir, overwrite=overwrite)
    return rows, summary


def lesion_wise_parameters(settings: EvaluationSettings) -> dict:
    """The ``lesion_wise`` entry of ``summary.json``: which procedure scored the lesions, and its parameters."""
    if settings.lesion_procedure == lesionwise_2024.PROCEDURE:
        return {**lesionwise_2024.parameters(), "hd95_penalty_mm": settings.lesion_hd95_penalty}
    return {"procedure": LESION_PROCEDURE_2023, "source": "github.com/rachitsaluja/BraTS-2023-Metrics metrics.py",
            "connectivity": 26, "dilation_iterations": settings.lesion_dilation_iterations,
            "dilation_structure": "18-connected", "volume_threshold_mm3": settings.lesion_volume_threshold_mm3,
            "hd95_penalty_mm": settings.lesion_hd95_penalty}


# --------------------------------------------------------------------------------------------- output files

def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same folder and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def check_output_folder(out_dir: str | os.PathLike, overwrite: bool = False) -> None:
    """Refuse an output that is a file, or (unless ``overwrite``) a folder that is not empty."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise NnunetKDError(f"output {out} exists and is not a folder")
    if not overwrite and out.is_dir() and any(out.iterdir()):
        raise NnunetKDError(f"output folder {out} already exists and is not empty; choose another folder, "
                            f"remove it or pass --overwrite")


def check_output_apart(out_dir: str | os.PathLike, inputs: Iterable[tuple[str, str | os.PathLike]]) -> None:
    """Refuse an output folder that is one of the input folders or holds one (replacing it would delete them)."""
    out = Path(out_dir).resolve()
    for what, folder in inputs:
        inp = Path(folder).resolve()
        if out == inp or out in inp.parents:
            raise ConfigurationError(f"output folder {out_dir} would replace the {what} {folder}; choose another "
                                     f"output folder")


def publish_folder(out_dir: str | os.PathLike, build: Callable[[Path], None], overwrite: bool = True) -> Path:
    """Let ``build(tmp)`` fill a temporary folder next to ``out_dir``, then put it in place of ``out_dir``.

    A non-empty ``out_dir`` is refused unless ``overwrite``; the folder is built and replaced by
    :func:`nnunet_kd.safe_io.staged_folder` (the old folder is removed only once the new one is in place), so
    ``out_dir`` never holds a mix of old and new files. If ``build`` fails nothing in ``out_dir`` changes."""
    from nnunet_kd.safe_io import staged_folder

    out = Path(out_dir).absolute()
    check_output_folder(out, overwrite)
    with staged_folder(out, replace=[out] if out.exists() else []) as tmp:
        build(tmp)
    return out


def _csv_text(header: Sequence[str], rows: Iterable[Sequence]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue()


def records_csv(rows: Sequence[Mapping], columns: Sequence[str] | None = None) -> str:
    """CSV text of dict rows (columns: ``columns``, else the first row's keys); floats at full precision
    (``repr``), NaN as ``nan``. The one writer of ``summary_by_group.csv`` and the report's tables."""
    columns = list(columns if columns is not None else (rows[0] if rows else ()))
    if not columns:
        return ""
    return _csv_text(columns, ([_fmt(row[c]) for c in columns] for row in rows))


def _fmt(v) -> str:
    if isinstance(v, float):
        return repr(v) if math.isfinite(v) else str(v)
    return str(v)


def write_evaluation(rows: Sequence[dict], summary: dict, out_dir: str | os.PathLike, overwrite: bool = True,
                     extra_files: Mapping[str, str] | None = None) -> Path:
    """Write ``per_case.csv``, ``summary.csv`` and ``summary.json`` (and ``extra_files``, ``{name: text}``, e.g.
    ``summary_by_group.csv``) as the folder ``out_dir`` (atomically; a non-empty ``out_dir`` is refused unless
    ``overwrite``)."""
    regions = summary.get("regions", REGION_KEYS)
    header = list(CASE_COLUMNS) + [metric_column(r, m) for r in regions for m in METRICS]
    per_case = _csv_text(header, ([_fmt(row[h]) for h in header] for row in rows))
    stats = summary["metrics"]
    summary_csv = _csv_text(("region", "metric") + STATISTICS,
                            ([r, m] + [_fmt(stats[r][m][s]) for s in STATISTICS] for r in stats for m in stats[r]))

    def build(tmp: Path) -> None:
        (tmp / PER_CASE_CSV).write_text(per_case, encoding="utf-8")
        (tmp / SUMMARY_CSV).write_text(summary_csv, encoding="utf-8")
        (tmp / SUMMARY_JSON).write_text(json.dumps(summary, indent=2, allow_nan=True) + "\n", encoding="utf-8")
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text, encoding="utf-8")

    return publish_folder(out_dir, build, overwrite)


def load_evaluation(out_dir: str | os.PathLike) -> tuple[list[dict], dict]:
    """Read an output folder of :func:`evaluate_folders`: ``(per-case rows with floats, summary dict)``."""
    from nnunet_kd.safe_io import read_json_object

    out = Path(out_dir)
    csv_path, json_path = out / PER_CASE_CSV, out / SUMMARY_JSON
    for p in (csv_path, json_path):
        if not p.is_file():
            raise InputDataError(f"{out} is not an output folder of `nnunet-kd evaluate`: {p.name} is missing")
    try:
        summary = read_json_object(json_path, "evaluation summary")
        with open(csv_path, newline="", encoding="utf-8") as f:
            raw_rows = list(csv.DictReader(f))
    except (OSError, ValueError) as e:
        raise InputDataError(f"cannot read evaluation output {out}: {e}") from None
    if not isinstance(summary, dict) or summary.get("hd95_definition") != HD95_DEFINITION:
        raise InputDataError(f"{json_path} was written with another HD95 definition (an older nnunet-kd); re-run "
                             f"`nnunet-kd evaluate ... --overwrite` so its numbers are comparable")
    rows = []
    for raw in raw_rows:
        row: dict = {"case": raw["case"], "pred_file": raw.get("pred_file", ""), "gt_file": raw.get("gt_file", ""),
                     "missing_prediction": int(raw.get("missing_prediction") or 0)}
        for key, value in raw.items():
            if key not in row:
                try:
                    row[key] = float(value)
                except (TypeError, ValueError):
                    raise InputDataError(f"{csv_path}: case {raw['case']}: column {key} is not a number: "
                                         f"{value!r}") from None
        rows.append(row)
    return rows, summary


_LW_NAMES = {LESION_PROCEDURE_2023: "BraTS 2023", lesionwise_2024.PROCEDURE: "BraTS 2024 post-treatment"}


def lesion_procedure_name(summary: Mapping) -> str:
    """The readable name of the lesion-wise procedure recorded in a ``summary.json`` (older ones: BraTS 2023)."""
    return _LW_NAMES.get(summary.get("lesion_wise", {}).get("procedure"), "BraTS 2023")


def format_summary_table(summary: dict, metric_names: Sequence[str] = (
        "dice", "hd95", "lesion_dice", "lesion_hd95", "sensitivity", "specificity")) -> str:
    """A plain-text table of mean ± std (and median) per region for a summary from :func:`evaluate_folders`."""
    labels = {"dice": "Dice", "hd95": "HD95 mm", "lesion_dice": "LW Dice", "lesion_hd95": "LW HD95 mm",
              "sensitivity": "Sens", "specificity": "Spec"}
    stats = summary["metrics"]
    header = ["region"] + [labels.get(m, m) for m in metric_names]
    lines = []
    for region in display_order(stats):
        cells = [region]
        for m in metric_names:
            s = stats[region][m]
            digits = 2 if "hd95" in m else 4
            cells.append(f"{s['mean']:.{digits}f} ± {s['std']:.{digits}f}")
        lines.append(cells)
    widths = [max(len(str(r[i])) for r in [header] + lines) for i in range(len(header))]
    table = [header, ["-" * w for w in widths]] + lines
    out = ["  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip() for cells in table]
    out.append(f"{summary['num_cases']} case(s); HD95 in mm (empty-vs-non-empty penalty "
               f"{summary['hd95_empty_penalty_mm']} mm); LW = "
               f"{lesion_procedure_name(summary)} lesion-wise")
    return "\n".join(out)
