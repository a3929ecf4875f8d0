"""PNG figures of a report: metric distributions, prediction overlays and nnU-Net training progress.

Public: :func:`distribution_plot`, :func:`select_cases`, :func:`contour_regions`, :func:`overlay_figure`,
:func:`load_training_log`, :func:`training_progress_plot`. All figures use matplotlib's Agg backend and are written atomically.
"""

from __future__ import annotations

import math
import os
import re
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from nnunet_kd import brats
from nnunet_kd.errors import InputDataError
from nnunet_kd.evaluation.evaluate import read_label_map
from nnunet_kd.reporting.table import METRIC_LABELS, Run, report_regions

#: Colours of the regions (overlay contours, violins), keyed by the abbreviations of the kinds' regions.
REGION_COLORS: dict[str, str] = {"WT": "#2ca02c", "TC": "#1f77b4", "ET": "#d62728", "RC": "#ff7f0e",
                                 "NETC": "#8c564b", "SNFH": "#17becf"}
#: Contour widths: TC is drawn wider so that it stays visible where it coincides with the ET border.
_LINE_WIDTHS: dict[str, float] = {"TC": 2.4, "ET": 1.0}
#: Keys of nnU-Net's LocalLogger; anything else in a checkpoint's ``logging`` is an extra key of a trainer.
NNUNET_LOG_KEYS: tuple[str, ...] = ("mean_fg_dice", "ema_fg_dice", "dice_per_class_or_region", "train_losses",
                                    "val_losses", "lrs", "epoch_start_timestamps", "epoch_end_timestamps")
FLAIR_CHANNEL = brats.channel_suffix(brats.MODALITIES.index("FLAIR"))


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | os.PathLike, dpi: int = 110) -> Path:
    """Save a figure through a temporary file and an atomic rename; closes the figure."""
    plt = _pyplot()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".png", dir=path.parent)
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=dpi, format="png")
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        Path(tmp).unlink(missing_ok=True)
    return path


# ------------------------------------------------------------------------------------------ distributions

def distribution_plot(runs: Sequence[Run], out_path: str | os.PathLike, metric: str = "dice",
                      regions: Sequence[str] | None = None, title: str | None = None) -> Path:
    """One panel per region (default: every region any run evaluated, :func:`report_regions`): a violin (where the
    values vary) and a box plot of ``metric`` across cases for every run, with the individual cases as dots.
    ``runs`` may also be the availability groups of one run (:func:`nnunet_kd.reporting.table.group_runs`)."""
    plt = _pyplot()
    regions = report_regions(runs) if regions is None else list(regions)
    fig, axes = plt.subplots(1, len(regions), figsize=(4.2 * len(regions), 4.2), squeeze=False)
    rng = np.random.default_rng(0)
    for ax, region in zip(axes[0], regions):
        data = [run.values(region, metric) for run in runs]
        positions = np.arange(1, len(runs) + 1)
        varying = [i for i, d in enumerate(data) if d.size > 1 and np.ptp(d) > 0]
        if varying:
            parts = ax.violinplot([data[i] for i in varying], positions=positions[varying], widths=0.8,
                                  showextrema=False)
            for body in parts["bodies"]:
                body.set_facecolor(REGION_COLORS.get(region, "#7f7f7f"))
                body.set_alpha(0.3)
        nonempty = [i for i, d in enumerate(data) if d.size]
        if nonempty:
            ax.boxplot([data[i] for i in nonempty], positions=positions[nonempty], widths=0.25, showfliers=False)
        for pos, d in zip(positions, data):
            ax.scatter(pos + rng.uniform(-0.08, 0.08, d.size), d, s=9, color="k", alpha=0.6, zorder=3)
        ax.set_xticks(positions)
        ax.set_xticklabels([run.name for run in runs], rotation=30, ha="right")
        ax.set_title(f"{region} {METRIC_LABELS.get(metric, metric)}")
        if metric in ("dice", "lesion_dice", "sensitivity", "specificity"):
            ax.set_ylim(-0.02, 1.02)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(title or f"{METRIC_LABELS.get(metric, metric)} across cases")
    fig.tight_layout()
    return _save(fig, out_path)


# ------------------------------------------------------------------------------------------------ overlays

def select_cases(run: Run, regions: Sequence[str] | None = None) -> dict[str, dict]:
    """The ``best``, ``median`` and ``worst`` case rows of a run by their mean Dice over ``regions`` (default: the
    run's evaluated regions).

    Labels of one case are joined (``"best/median"``) when a run has fewer than three cases."""
    regions = run.regions if regions is None else regions
    scored = []
    for row in run.rows:
        vals = [float(row.get(f"{r}_dice", math.nan)) for r in regions]
        scored.append((float(np.nanmean(vals)) if any(math.isfinite(v) for v in vals) else -1.0, row["case"], row))
    scored.sort(key=lambda t: (-t[0], t[1]))
    picks: dict[str, tuple[list[str], dict]] = {}
    for label, index in (("best", 0), ("median", len(scored) // 2), ("worst", len(scored) - 1)):
        row = scored[index][2]
        picks.setdefault(row["case"], ([], row))[0].append(label)
    return {"/".join(labels): row for labels, row in picks.values()}


def _read_float_image(path: Path) -> np.ndarray:
    import SimpleITK as sitk

    try:
        return sitk.GetArrayFromImage(sitk.ReadImage(str(path))).astype(np.float32)
    except RuntimeError:
        raise InputDataError(f"cannot read image {path}") from None


def contour_regions(run: Run) -> dict[str, tuple[int, ...]]:
    """The regions an overlay draws, ``{abbreviation: canonical labels}``: the regions nnU-Net trains for the run's
    dataset kind (WT, TC, ET; and RC for post-treatment data). The other scored regions' borders are among
    these (NETC = TC without ET, SNFH = WT without TC), so they are named in the Dice line, not drawn again."""
    kind = brats.get_kind(run.summary.get("dataset_kind", "GLI"))
    return {brats.REGION_ABBREVIATIONS[name]: labels for name, labels in kind.train_regions.items()}


def _overlay_panel(ax, flair: np.ndarray | None, gt: np.ndarray, pred: np.ndarray, spacing: Sequence[float],
                   title: str, regions: dict[str, tuple[int, ...]]) -> None:
    labels = sorted({v for values in regions.values() for v in values})
    lesion_gt, lesion_pred = np.isin(gt, labels), np.isin(pred, labels)
    area = lesion_gt.sum(axis=(1, 2)) if lesion_gt.any() else lesion_pred.sum(axis=(1, 2))
    z = int(np.argmax(area)) if area.any() else gt.shape[0] // 2
    aspect = float(spacing[1]) / float(spacing[2])
    if flair is not None:
        sl = flair[z]
        lo, hi = np.percentile(sl, [1, 99]) if sl.size else (0.0, 1.0)
        ax.imshow(sl, cmap="gray", vmin=lo, vmax=hi if hi > lo else lo + 1, aspect=aspect, interpolation="nearest")
    else:
        ax.imshow(np.zeros(gt.shape[1:]), cmap="gray", vmin=0, vmax=1, aspect=aspect)
    for abbr, values in regions.items():
        for seg, style in ((gt, "solid"), (pred, "dashed")):
            mask = np.isin(seg[z], values)
            if mask.any() and not mask.all():
                ax.contour(mask.astype(float), levels=[0.5], colors=[REGION_COLORS.get(abbr, "#7f7f7f")],
                           linestyles=style, linewidths=_LINE_WIDTHS.get(abbr, 1.2))
    ax.set_title(f"{title}\nslice {z}", fontsize=9)
    ax.set_axis_off()


def overlay_figure(run: Run, images_dir: str | os.PathLike, out_path: str | os.PathLike,
                   file_ending: str | None = None) -> tuple[Path | None, list[str]]:
    """FLAIR slice (``images_dir/CASE_0003<ending>``) with reference (solid) and predicted (dashed) contours of
    the regions of :func:`contour_regions` (WT, TC, ET, and RC for post-treatment data; a legend names them) for
    the best, median and worst case of a run, titled with the Dice of every evaluated region. The slice is the one
    with the largest reference lesion area (all drawn labels). Returns ``(png path or None, notes)``: cases whose
    files are gone are skipped with a note, a missing FLAIR image gives a black background and a note."""
    from matplotlib.lines import Line2D

    plt = _pyplot()
    images_dir = Path(images_dir)
    ending = file_ending or run.summary.get("file_ending", ".nii.gz")
    fallback = run.summary.get("convention", "dataset137")
    gt_convention = brats.get_convention(run.summary.get("gt_convention", fallback))
    pred_convention = brats.get_convention(run.summary.get("pred_convention", fallback))
    regions = contour_regions(run)
    scored = report_regions([run])
    notes: list[str] = []
    panels = []
    for label, row in select_cases(run).items():
        gt_file = Path(row["gt_file"]) if row.get("gt_file") else None
        pred_file = Path(row["pred_file"]) if row.get("pred_file") else None
        if gt_file is None or not gt_file.is_file() or (pred_file is not None and not pred_file.is_file()):
            notes.append(f"{run.name}: {label} case {row['case']} skipped: its label files are no longer there")
            continue
        gt_map = read_label_map(gt_file, row["case"])
        gt = gt_convention.to_canonical_array(gt_map.array)
        pred = (pred_convention.to_canonical_array(read_label_map(pred_file, row["case"]).array)
                if pred_file is not None else np.zeros_like(gt))
        flair_file = images_dir / f"{row['case']}{FLAIR_CHANNEL}{ending}"
        flair = _read_float_image(flair_file) if flair_file.is_file() else None
        if flair is None:
            notes.append(f"{run.name}: no FLAIR image {flair_file}; {label} case drawn without background")
        elif flair.shape != gt.shape:
            notes.append(f"{run.name}: FLAIR image {flair_file} has shape {flair.shape}, labels {gt.shape}; "
                         f"drawn without background")
            flair = None
        dices = [f"{r} {float(row.get(f'{r}_dice', math.nan)):.2f}" for r in scored]
        dice_lines = "\n".join("Dice " * (i == 0) + " ".join(dices[i:i + 3]) for i in range(0, len(dices), 3))
        panels.append((flair, gt, pred, gt_map.spacing, f"{run.name} {label}: {row['case']}\n{dice_lines}"))
    if not panels:
        return None, notes
    title_lines = max(panel[-1].count("\n") for panel in panels) + 2  # and the slice line
    fig, axes = plt.subplots(1, len(panels), figsize=(4.0 * len(panels), 4.2 + 0.2 * title_lines), squeeze=False,
                             layout="constrained")
    for ax, panel in zip(axes[0], panels):
        _overlay_panel(ax, *panel, regions)
    handles = [Line2D([], [], color=REGION_COLORS.get(r, "#7f7f7f"), label=r) for r in regions]
    handles += [Line2D([], [], color="k", ls="solid", label="reference"),
                Line2D([], [], color="k", ls="dashed", label="prediction")]
    fig.legend(handles=handles, loc="outside lower center", ncol=len(handles), fontsize=8, frameon=False)
    return _save(fig, out_path), notes


# --------------------------------------------------------------------------------------- training progress

def _numeric_series(values) -> list | None:
    """``values`` as a list of floats or of float lists (per class); None if it is not a per-epoch series."""
    if not isinstance(values, (list, tuple)) or not values:
        return None
    out = []
    for v in values:
        try:
            if isinstance(v, (list, tuple, np.ndarray)) or (hasattr(v, "ndim") and getattr(v, "ndim", 0) > 0):
                out.append([float(x) for x in np.asarray(v, dtype=float).ravel()])
            else:
                out.append(float(v))
        except (TypeError, ValueError):
            return None
    return out


def _log_from_checkpoint(path: Path) -> dict[str, list]:
    import torch

    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # any unpickling problem means a bad input file
        raise InputDataError(f"cannot read checkpoint {path}: {type(e).__name__}: {e}") from None
    logging = ckpt.get("logging") if isinstance(ckpt, dict) else None
    if not isinstance(logging, dict):
        raise InputDataError(f"checkpoint {path} has no nnU-Net 'logging' entry")
    out = {}
    for key, values in logging.items():
        series = _numeric_series(values)
        if series is not None:
            out[str(key)] = series
    return out


_NUMBER = re.compile(r"[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?|nan")


def _numbers(text: str) -> list[float]:
    return [float(x) for x in _NUMBER.findall(re.sub(r"np\.\w+\(", "(", text))]


def _log_from_text(path: Path) -> dict[str, list]:
    """Per-epoch values from nnU-Net's ``training_log_*.txt`` (``Epoch N``, ``train_loss``, ``val_loss``,
    ``Pseudo dice [...]``, ``Current learning rate``); the EMA Dice is recomputed as nnU-Net does."""
    log: dict[str, list] = {"train_losses": [], "val_losses": [], "dice_per_class_or_region": [],
                            "mean_fg_dice": [], "ema_fg_dice": [], "lrs": []}
    patterns = {"train_losses": "train_loss", "val_losses": "val_loss", "lrs": "Current learning rate:"}
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        msg = line.split(": ", 1)[1] if ": " in line else line
        for key, prefix in patterns.items():
            if msg.startswith(prefix):
                nums = _numbers(msg[len(prefix):])
                if nums:
                    log[key].append(nums[0])
        if msg.startswith("Pseudo dice"):
            per_class = _numbers(msg[len("Pseudo dice"):])
            if per_class:
                mean = float(np.nanmean(per_class))
                log["dice_per_class_or_region"].append(per_class)
                log["mean_fg_dice"].append(mean)
                ema = log["ema_fg_dice"]
                ema.append(mean if not ema else 0.9 * ema[-1] + 0.1 * mean)
    return {k: v for k, v in log.items() if v}


def load_training_log(fold_dir: str | os.PathLike) -> tuple[dict[str, list], Path]:
    """The per-epoch logging of an nnU-Net fold folder and the file it came from.

    Reads the ``logging`` dict that nnU-Net 2.8 stores in ``checkpoint_final.pth`` (else ``checkpoint_latest.pth``,
    else ``checkpoint_best.pth``), loaded with ``torch.load(weights_only=False)``; without checkpoint, parses the
    newest ``training_log_*.txt``. Keys are nnU-Net's (:data:`NNUNET_LOG_KEYS`) plus any numeric series a trainer
    added (e.g. ``teacher_mean_fg_dice``)."""
    fold = Path(fold_dir)
    if not fold.is_dir():
        raise InputDataError(f"training folder {fold} does not exist")
    for name in ("checkpoint_final.pth", "checkpoint_latest.pth", "checkpoint_best.pth"):
        if (fold / name).is_file():
            return _log_from_checkpoint(fold / name), fold / name
    texts = sorted(fold.glob("training_log_*.txt"))
    if texts:
        log = _log_from_text(texts[-1])
        if log:
            return log, texts[-1]
    raise InputDataError(f"{fold} holds neither checkpoint_*.pth nor a readable training_log_*.txt")


def _plot_series(ax, name: str, series: list, **kwargs) -> bool:
    if not series:
        return False
    if isinstance(series[0], list):
        arr = np.full((len(series), max(len(s) for s in series)), np.nan)
        for i, s in enumerate(series):
            arr[i, : len(s)] = s
        for c in range(arr.shape[1]):
            ax.plot(np.arange(len(series)), arr[:, c], label=f"{name}[{c}]", lw=1, alpha=0.7)
    else:
        ax.plot(np.arange(len(series)), series, label=name, **kwargs)
    return True


def training_progress_plot(fold_dir: str | os.PathLike, out_path: str | os.PathLike, title: str | None = None
                           ) -> Path:
    """Training curves of an nnU-Net fold folder: losses, pseudo Dice (mean, EMA, per region), learning rate,
    and every extra series a trainer logged (keys with 'loss' join the loss panel, with 'dice' the Dice panel)."""
    plt = _pyplot()
    log, source = load_training_log(fold_dir)
    extra = [k for k in log if k not in NNUNET_LOG_KEYS]
    loss_extra = [k for k in extra if "loss" in k.lower()]
    dice_extra = [k for k in extra if "dice" in k.lower() and k not in loss_extra]
    other_extra = [k for k in extra if k not in loss_extra and k not in dice_extra]
    n_panels = 3 + (1 if other_extra else 0)
    fig, axes = plt.subplots(n_panels, 1, figsize=(8, 3.0 * n_panels), sharex=True)
    ax = axes[0]
    _plot_series(ax, "train loss", log.get("train_losses", []), color="b", lw=2)
    _plot_series(ax, "val loss", log.get("val_losses", []), color="r", lw=2)
    for k in loss_extra:
        _plot_series(ax, k, log[k], ls="--")
    ax.set_ylabel("loss")
    ax = axes[1]
    _plot_series(ax, "pseudo Dice", log.get("mean_fg_dice", []), color="g", ls=":", lw=2)
    _plot_series(ax, "pseudo Dice (EMA)", log.get("ema_fg_dice", []), color="g", lw=2)
    _plot_series(ax, "per region", log.get("dice_per_class_or_region", []))
    for k in dice_extra:
        _plot_series(ax, k, log[k], ls="--", lw=2)
    ax.set_ylabel("pseudo Dice")
    ax = axes[2]
    _plot_series(ax, "learning rate", log.get("lrs", []), color="k")
    ax.set_ylabel("learning rate")
    if other_extra:
        ax = axes[3]
        for k in other_extra:
            _plot_series(ax, k, log[k])
        ax.set_ylabel("other logged values")
    for ax in axes:
        if ax.get_lines():
            ax.legend(fontsize=7, loc="best")
        ax.grid(alpha=0.3)
    axes[-1].set_xlabel("epoch")
    fig.suptitle(title or f"training progress: {Path(fold_dir).name} ({source.name})", fontsize=10)
    fig.tight_layout()
    return _save(fig, out_path)
