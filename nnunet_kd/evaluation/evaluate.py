"""Evaluate a folder of predicted BraTS label maps against a folder of reference label maps.

Public: :func:`evaluate_folders`, :func:`evaluate_case`, :func:`pair_cases`, :func:`read_label_map`,
:func:`summarize`, :func:`write_evaluation`, :func:`load_evaluation`, :func:`format_summary_table`,
:func:`metric_column`, plus the small atomic-output helpers :func:`atomic_write_text` and
:func:`publish_folder` (used by the reporting stage too).

Folders are nnU-Net style: one ``CASE<file_ending>`` label map per case (the GT folder is e.g. ``labelsTr``).
Both are read with SimpleITK; the voxel spacing comes from the image header. Labels are mapped to the canonical
labels with :func:`nnunet_kd.brats.get_convention` (the same convention for prediction and reference), then the
regions of :data:`nnunet_kd.brats.REGIONS` are scored with :mod:`.metrics` and :mod:`.lesionwise`.

Output folder (written atomically: built in a temporary folder next to it, then moved into place):

* ``per_case.csv`` — one row per case: ``case``, ``pred_file``, ``gt_file`` (absolute paths; ``pred_file`` is
  empty for a missing prediction), ``missing_prediction`` (0/1), then ``<REGION>_<metric>`` for regions
  WT, TC, ET and metrics :data:`METRICS` (HD95 in mm, volumes in mm³);
* ``summary.csv`` — ``region, metric, mean, median, std, q25, q75, n`` (std is the population std, ddof=0);
* ``summary.json`` — the same statistics under ``metrics[region][metric]`` plus the settings and folders used.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from nnunet_kd import brats
from nnunet_kd.errors import InputDataError, NnunetKDError
from nnunet_kd.evaluation import lesionwise, metrics

#: Region abbreviations in the order of :data:`nnunet_kd.brats.REGIONS` (WT, TC, ET).
REGION_KEYS: tuple[str, ...] = tuple(brats.REGION_ABBREVIATIONS[r] for r in brats.REGIONS)
#: Per-region metrics in the per-case table (HD95 in mm, volumes in mm³, lesion counts as numbers).
METRICS: tuple[str, ...] = metrics.REGION_METRIC_NAMES + (
    "lesion_dice", "lesion_hd95", "lesion_tp", "lesion_fp", "lesion_fn")
#: Leading columns of ``per_case.csv``.
CASE_COLUMNS: tuple[str, ...] = ("case", "pred_file", "gt_file", "missing_prediction")
PER_CASE_CSV = "per_case.csv"
SUMMARY_CSV = "summary.csv"
SUMMARY_JSON = "summary.json"
STATISTICS: tuple[str, ...] = ("mean", "median", "std", "q25", "q75", "n")
HD95_DEFINITION = ("legacy BraTS HD95: max of the two directed 95th percentiles (numpy linear interpolation) of "
                   "distances between 6-connected-erosion surface voxels, in mm (Bakas et al. 2018, "
                   "arXiv:1811.02629)")


def metric_column(region: str, metric: str) -> str:
    """Column name of ``metric`` for region ``region`` (``WT``/``TC``/``ET``) in ``per_case.csv``."""
    return f"{region}_{metric}"


@dataclass(frozen=True)
class CasePair:
    """One case to evaluate: the reference file and the prediction file (``None`` when missing)."""

    case: str
    gt_file: Path
    pred_file: Path | None


@dataclass(frozen=True)
class EvaluationSettings:
    """Everything :func:`evaluate_case` needs besides the files (picklable for worker processes)."""

    convention: str = "dataset137"
    hd95_penalty: float = metrics.HD95_PENALTY_MM
    lesion_dilation_iterations: int = lesionwise.GLI_DILATION_ITERATIONS
    lesion_volume_threshold_mm3: float = lesionwise.GLI_VOLUME_THRESHOLD_MM3
    lesion_hd95_penalty: float = lesionwise.LESION_HD95_PENALTY_MM


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


def read_label_map(path: str | os.PathLike, case: str = "") -> LabelMap:
    """Read a label map with SimpleITK; spacing/origin/direction reordered to the numpy axis order (z, y, x)."""
    import SimpleITK as sitk

    try:
        img = sitk.ReadImage(str(path))
    except RuntimeError as e:
        first = str(e).strip().splitlines()[-1] if str(e).strip() else "unreadable"
        raise InputDataError(f"case {case}: cannot read {path}: {first}") from None
    if img.GetNumberOfComponentsPerPixel() != 1 or img.GetDimension() != 3:
        raise InputDataError(f"case {case}: {path} is not a 3D single-channel label map")
    dim = img.GetDimension()
    direction = np.asarray(img.GetDirection(), dtype=float).reshape(dim, dim)[::-1, ::-1]
    return LabelMap(sitk.GetArrayFromImage(img), tuple(img.GetSpacing()[::-1]), tuple(img.GetOrigin()[::-1]),
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


def _canonical(case: str, lm: LabelMap, path: Path, convention: brats.LabelConvention) -> np.ndarray:
    try:
        return convention.to_canonical_array(lm.array)
    except ValueError as e:
        raise InputDataError(f"case {case}: {path}: {e}") from None


def evaluate_case(pair: CasePair, settings: EvaluationSettings | None = None) -> dict:
    """All metrics of one case as one ``per_case.csv`` row (see the module docstring for the columns)."""
    settings = settings or EvaluationSettings()
    conv = brats.get_convention(settings.convention)
    gt_map = read_label_map(pair.gt_file, pair.case)
    gt = _canonical(pair.case, gt_map, pair.gt_file, conv)
    if pair.pred_file is None:
        pred = np.zeros_like(gt)
    else:
        pred_map = read_label_map(pair.pred_file, pair.case)
        _check_geometry(pair.case, pred_map, pair.pred_file, gt_map, pair.gt_file)
        pred = _canonical(pair.case, pred_map, pair.pred_file, conv)
    spacing = gt_map.spacing
    row: dict = {"case": pair.case, "pred_file": str(pair.pred_file) if pair.pred_file else "",
                 "gt_file": str(pair.gt_file), "missing_prediction": int(pair.pred_file is None)}
    region_scores = metrics.region_metrics(pred, gt, spacing, hd95_penalty=settings.hd95_penalty)
    lesion_scores = lesionwise.lesion_wise_region_scores(
        pred, gt, spacing, dilation_iterations=settings.lesion_dilation_iterations,
        volume_threshold_mm3=settings.lesion_volume_threshold_mm3, hd95_penalty=settings.lesion_hd95_penalty)
    for region in REGION_KEYS:
        values = dict(region_scores[region])
        values.update(lesion_scores[region].as_dict())
        for metric in METRICS:
            row[metric_column(region, metric)] = values[metric]
    return row


def summarize(rows: Sequence[dict]) -> dict[str, dict[str, dict[str, float]]]:
    """``{region: {metric: {mean, median, std, q25, q75, n}}}`` over the per-case rows (std with ddof=0)."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for region in REGION_KEYS:
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
                     out_dir: str | os.PathLike | None = None, convention: str = "dataset137",
                     num_processes: int = 1, allow_missing: bool = False, progress: bool = True,
                     file_ending: str = ".nii.gz", settings: EvaluationSettings | None = None
                     ) -> tuple[list[dict], dict]:
    """Evaluate every reference case of ``gt_dir`` against ``pred_dir``; returns ``(per-case rows, summary)``.

    ``summary`` is the content of ``summary.json``. With ``out_dir`` the three output files are written there
    atomically. Missing predictions are an :class:`InputDataError` unless ``allow_missing``; then they count as
    empty predictions and a :class:`UserWarning` names them. ``settings`` overrides penalties and lesion-wise
    parameters (its ``convention`` is replaced by ``convention``)."""
    brats.get_convention(convention)  # fail early on an unknown name
    base = settings or EvaluationSettings()
    settings = EvaluationSettings(convention, base.hd95_penalty, base.lesion_dilation_iterations,
                                  base.lesion_volume_threshold_mm3, base.lesion_hd95_penalty)
    pairs = pair_cases(pred_dir, gt_dir, file_ending, allow_missing)
    missing = [p.case for p in pairs if p.pred_file is None]
    if missing:
        warnings.warn(f"{len(missing)} case(s) without prediction counted as empty predictions: "
                      f"{', '.join(missing)}", UserWarning, stacklevel=2)
    rows = _run_cases(pairs, settings, num_processes, progress)
    summary = {
        "tool": "nnunet-kd evaluate",
        "pred_dir": str(Path(pred_dir).resolve()),
        "gt_dir": str(Path(gt_dir).resolve()),
        "file_ending": file_ending,
        "convention": convention,
        "num_cases": len(rows),
        "missing_predictions": missing,
        "regions": list(REGION_KEYS),
        "region_labels": {brats.REGION_ABBREVIATIONS[r]: list(v) for r, v in brats.REGIONS.items()},
        "units": {"hd95": "mm", "lesion_hd95": "mm", "vol_pred_mm3": "mm^3", "vol_gt_mm3": "mm^3"},
        "hd95_definition": HD95_DEFINITION,
        "hd95_empty_penalty_mm": settings.hd95_penalty,
        "lesion_wise": {"connectivity": 26, "dilation_iterations": settings.lesion_dilation_iterations,
                        "dilation_structure": "18-connected", "volume_threshold_mm3":
                            settings.lesion_volume_threshold_mm3, "hd95_penalty_mm": settings.lesion_hd95_penalty},
        "per_case_csv": PER_CASE_CSV,
        "metrics": summarize(rows),
    }
    if out_dir is not None:
        write_evaluation(rows, summary, out_dir)
    return rows, summary


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


def publish_folder(out_dir: str | os.PathLike, build: Callable[[Path], None]) -> Path:
    """Let ``build(tmp)`` fill a temporary folder next to ``out_dir``, then move its content into ``out_dir``.

    A new ``out_dir`` appears in one rename; into an existing folder each top-level entry is moved with an
    atomic replace. If ``build`` fails nothing in ``out_dir`` changes."""
    out = Path(out_dir).absolute()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        build(tmp)
        if not out.exists():
            os.replace(tmp, out)
            return out
        if not out.is_dir():
            raise NnunetKDError(f"output {out} exists and is not a folder")
        for entry in sorted(tmp.iterdir()):
            target = out / entry.name
            if entry.is_dir() and target.is_dir():
                shutil.rmtree(target)
            os.replace(entry, target)
        return out
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _csv_text(header: Sequence[str], rows: Iterable[Sequence]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue()


def _fmt(v) -> str:
    if isinstance(v, float):
        return repr(v) if math.isfinite(v) else str(v)
    return str(v)


def write_evaluation(rows: Sequence[dict], summary: dict, out_dir: str | os.PathLike) -> Path:
    """Write ``per_case.csv``, ``summary.csv`` and ``summary.json`` into ``out_dir`` (atomically)."""
    header = list(CASE_COLUMNS) + [metric_column(r, m) for r in REGION_KEYS for m in METRICS]
    per_case = _csv_text(header, ([_fmt(row[h]) for h in header] for row in rows))
    stats = summary["metrics"]
    summary_csv = _csv_text(("region", "metric") + STATISTICS,
                            ([r, m] + [_fmt(stats[r][m][s]) for s in STATISTICS] for r in stats for m in stats[r]))

    def build(tmp: Path) -> None:
        (tmp / PER_CASE_CSV).write_text(per_case, encoding="utf-8")
        (tmp / SUMMARY_CSV).write_text(summary_csv, encoding="utf-8")
        (tmp / SUMMARY_JSON).write_text(json.dumps(summary, indent=2, allow_nan=True) + "\n", encoding="utf-8")

    return publish_folder(out_dir, build)


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


def format_summary_table(summary: dict, metric_names: Sequence[str] = (
        "dice", "hd95", "lesion_dice", "lesion_hd95", "sensitivity", "specificity")) -> str:
    """A plain-text table of mean ± std (and median) per region for a summary from :func:`evaluate_folders`."""
    labels = {"dice": "Dice", "hd95": "HD95 mm", "lesion_dice": "LW Dice", "lesion_hd95": "LW HD95 mm",
              "sensitivity": "Sens", "specificity": "Spec"}
    stats = summary["metrics"]
    header = ["region"] + [labels.get(m, m) for m in metric_names]
    lines = []
    for region in ("ET", "TC", "WT"):
        if region not in stats:
            continue
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
               f"{summary['hd95_empty_penalty_mm']} mm); LW = BraTS 2023 lesion-wise")
    return "\n".join(out)
