"""The RFNet-style missing-modality table: one row per modality subset, Dice and HD95 per region, and their mean.

Rows come from one evaluation summary per subset (``summary.json`` of ``nnunet-kd evaluate``, see
:mod:`nnunet_kd.evaluation.evaluate`); a row holds the mean over cases of each evaluated region's Dice and HD95 --
the regions the summary lists (its dataset kind's: WT, TC, ET, and NETC, SNFH, RC for post-treatment data), in
that order. The mean row averages the subset rows (each subset counts once, as in RFNet, mmFormer and DeMoSeg).

Outputs (:func:`write_subset_table`): ``subset_table.md`` (Dice in %, HD95 in mm; optionally the published BraTS
2020 means of RFNet, mmFormer and DeMoSeg below ours), ``subset_table.csv`` (Dice as a fraction, HD95 in mm) and
``subset_heatmap.png`` (Dice and HD95 heat maps, subsets x regions).

Public: :data:`PUBLISHED_BRATS2020_MEANS`, :func:`subset_row`, :func:`table_regions`, :func:`mean_row`,
:func:`table_markdown`, :func:`table_csv`, :func:`heatmap_plot`, :func:`write_subset_table`.
"""

from __future__ import annotations

import csv
import io
import math
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

from nnunet_kd.brats import MODALITIES
from nnunet_kd.evaluation.evaluate import REGION_KEYS, atomic_write_text
from nnunet_kd.subsets.catalog import subset_name

TABLE_METRICS: tuple[str, ...] = ("dice", "hd95")
TABLE_MD = "subset_table.md"
TABLE_CSV = "subset_table.csv"
HEATMAP_PNG = "subset_heatmap.png"
MEAN_NAME = "Mean"

#: Published Dice (%) on BraTS 2020, mean over the 15 subsets (RFNet split: 219 train / 50 val / 100 test cases),
#: as reported in the DeMoSeg repository's README (Yang et al. 2024, arXiv:2408.08708).
PUBLISHED_BRATS2020_MEANS: dict[str, dict[str, float]] = {
    "RFNet (Ding et al., ICCV 2021)": {"WT": 86.98, "TC": 78.23, "ET": 61.47},
    "mmFormer (Zhang et al., MICCAI 2022)": {"WT": 87.08, "TC": 78.69, "ET": 64.08},
    "DeMoSeg (Yang et al., 2024)": {"WT": 88.90, "TC": 81.58, "ET": 69.71},
}


def _column(region: str, metric: str) -> str:
    return f"{region}_{metric}"


def subset_row(subset: Sequence[str], summary: Mapping) -> dict:
    """One table row: ``subset``, ``n_cases``, ``regions`` (the summary's evaluated regions) and
    ``<region>_<metric>`` means from an evaluation summary."""
    regions = tuple(summary.get("regions") or summary["metrics"])
    row: dict = {"subset": subset_name(subset), "modalities": tuple(subset), "n_cases": int(summary["num_cases"]),
                 "regions": regions}
    for region in regions:
        for metric in TABLE_METRICS:
            row[_column(region, metric)] = float(summary["metrics"][region][metric]["mean"])
    return row


def table_regions(rows: Sequence[dict]) -> tuple[str, ...]:
    """The region columns of a table: every row's regions in their order (WT, TC, ET by default)."""
    regions = tuple(dict.fromkeys(r for row in rows for r in row.get("regions", REGION_KEYS)))
    return regions or REGION_KEYS


def _value(row: dict, region: str, metric: str) -> float:
    return row.get(_column(region, metric), math.nan)


def mean_row(rows: Sequence[dict]) -> dict:
    """The mean of the subset rows, each subset weighted equally (NaN where no row has a finite value)."""
    regions = table_regions(rows)
    out: dict = {"subset": MEAN_NAME, "modalities": (), "n_cases": max((r["n_cases"] for r in rows), default=0),
                 "regions": regions}
    for region in regions:
        for metric in TABLE_METRICS:
            values = [_value(r, region, metric) for r in rows if math.isfinite(_value(r, region, metric))]
            out[_column(region, metric)] = sum(values) / len(values) if values else math.nan
    return out


def _cell(value: float, scale: float = 1.0) -> str:
    return f"{value * scale:.2f}" if math.isfinite(value) else "–"


def table_markdown(rows: Sequence[dict], published: bool = False, title: str | None = None) -> str:
    """Markdown table: a ●/○ column per modality, the subset name, Dice (%) and HD95 (mm) per region, the mean row.

    With ``published`` the published BraTS 2020 means (:data:`PUBLISHED_BRATS2020_MEANS`, Dice only, WT/TC/ET)
    follow."""
    regions = table_regions(rows)
    header = list(MODALITIES) + ["Subset"] + [f"{r} Dice (%)" for r in regions] + \
        [f"{r} HD95 (mm)" for r in regions]
    lines = []
    if title:
        lines += [f"## {title}", ""]
    lines += ["| " + " | ".join(header) + " |", "|" + "|".join([":-:"] * len(MODALITIES) + ["---"] +
                                                               ["--:"] * 2 * len(regions)) + "|"]

    def line(row: dict, name: str, flags: Sequence[str]) -> str:
        cells = list(flags) + [name] + [_cell(_value(row, r, "dice"), 100) for r in regions] + \
            [_cell(_value(row, r, "hd95")) for r in regions]
        return "| " + " | ".join(cells) + " |"

    for row in rows:
        lines.append(line(row, row["subset"], ["●" if m in row["modalities"] else "○" for m in MODALITIES]))
    mean = mean_row(rows)
    lines.append(line(mean, f"**{MEAN_NAME} ({len(rows)} subset{'s' if len(rows) != 1 else ''})**",
                      [""] * len(MODALITIES)))
    if published:
        for method, dice in PUBLISHED_BRATS2020_MEANS.items():
            ref = {_column(r, "dice"): dice[r] / 100 for r in regions if r in dice}
            lines.append(line(ref, f"{method}: published mean, BraTS 2020", [""] * len(MODALITIES)))
    n_cases = sorted({r["n_cases"] for r in rows})
    lines += ["", f"Dice in %, HD95 in mm; mean over {'/'.join(map(str, n_cases))} case(s) per subset; ● modality "
                  f"given, ○ missing (zero-filled after normalisation)."]
    if published:
        lines.append("Published rows: mean over the 15 subsets on the BraTS 2020 RFNet test split (100 cases), as "
                     "reported by DeMoSeg (arXiv:2408.08708); compare only results on that split.")
    return "\n".join(lines) + "\n"


def table_csv(rows: Sequence[dict]) -> str:
    """CSV: ``subset, n_modalities, T1, T1ce, T2, FLAIR (0/1), n_cases, WT_dice, ... ET_hd95`` (every region of
    the table, Dice columns first) + the mean row."""
    columns = [_column(r, m) for m in TABLE_METRICS for r in table_regions(rows)]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["subset", "n_modalities", *MODALITIES, "n_cases", *columns])
    for row in [*rows, mean_row(rows)]:
        flags = [int(m in row["modalities"]) for m in MODALITIES] if row["modalities"] else [""] * len(MODALITIES)
        writer.writerow([row["subset"], len(row["modalities"]) or "", *flags, row["n_cases"],
                         *[repr(v) if math.isfinite(v := row.get(c, math.nan)) else "nan" for c in columns]])
    return buf.getvalue()


def heatmap_plot(rows: Sequence[dict], out_path: str | os.PathLike, title: str | None = None) -> Path:
    """Two heat maps (Dice in %, HD95 in mm), subsets (and the mean) x regions, values written in the cells."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    all_rows = [*rows, mean_row(rows)]
    regions = table_regions(rows)
    names = [r["subset"] for r in all_rows]
    fig, axes = plt.subplots(1, 2, figsize=(3.5 + 2.0 * len(regions), 1.2 + 0.38 * len(all_rows)), squeeze=False)
    panels = (("dice", "Dice (%)", 100.0, "viridis", (0.0, 100.0)), ("hd95", "HD95 (mm)", 1.0, "magma_r", None))
    for ax, (metric, label, scale, cmap, limits) in zip(axes[0], panels):
        values = np.array([[_value(r, reg, metric) * scale for reg in regions] for r in all_rows], dtype=float)
        finite = values[np.isfinite(values)]
        vmin, vmax = limits if limits else ((float(finite.min()), float(finite.max())) if finite.size else (0, 1))
        image = ax.imshow(np.ma.masked_invalid(values), cmap=cmap, vmin=vmin, vmax=vmax if vmax > vmin else vmin + 1,
                          aspect="auto")
        for i in range(values.shape[0]):
            for j in range(values.shape[1]):
                finite = bool(np.isfinite(values[i, j]))
                r, g, b, _ = image.cmap(image.norm(values[i, j])) if finite else (1, 1, 1, 1)
                dark = 0.299 * r + 0.587 * g + 0.114 * b < 0.5
                ax.text(j, i, f"{values[i, j]:.1f}" if finite else "–", ha="center", va="center", fontsize=8,
                        color="w" if dark else "k")
        ax.set_xticks(range(len(regions)))
        ax.set_xticklabels(regions)
        ax.set_yticks(range(len(names)))
        ax.set_yticklabels(names, fontsize=8)
        ax.axhline(len(rows) - 0.5, color="w", linewidth=2)
        ax.set_title(label)
        fig.colorbar(image, ax=ax, fraction=0.05)
    fig.suptitle(title or "Segmentation per available modality subset")
    fig.tight_layout()
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out_path.stem}.", suffix=".png", dir=out_path.parent)
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=110, format="png")
        os.replace(tmp, out_path)
    finally:
        plt.close(fig)
        Path(tmp).unlink(missing_ok=True)
    return out_path


def write_subset_table(rows: Sequence[dict], out_dir: str | os.PathLike, published: bool = False,
                       title: str | None = None) -> dict[str, Path]:
    """Write the Markdown table, the CSV and the heat map into ``out_dir``; returns their paths by kind."""
    out = Path(out_dir)
    paths = {"markdown": out / TABLE_MD, "csv": out / TABLE_CSV, "heatmap": out / HEATMAP_PNG}
    atomic_write_text(paths["markdown"], table_markdown(rows, published, title))
    atomic_write_text(paths["csv"], table_csv(rows))
    heatmap_plot(rows, paths["heatmap"], title)
    return paths
