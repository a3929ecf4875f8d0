"""Comparison table of several evaluated runs (the seed papers' table: rows = models, ET/TC/WT Dice and HD95).

Public: :class:`Run`, :func:`parse_run_spec`, :func:`load_runs`, :func:`compare_runs`, :func:`table_markdown`,
:func:`table_csv`.

A run is an output folder of ``nnunet-kd evaluate`` (``per_case.csv`` + ``summary.json``), named by
``NAME=PATH`` or by the folder name. Means and standard deviations (population std, ddof=0, as in the
evaluation summary) are computed over the cases of each run.
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nnunet_kd.errors import InputDataError
from nnunet_kd.evaluation.evaluate import load_evaluation, metric_column

#: Region order of the seed papers' tables.
TABLE_REGIONS: tuple[str, ...] = ("ET", "TC", "WT")
#: Metrics of the main table.
TABLE_METRICS: tuple[str, ...] = ("dice", "hd95")
METRIC_LABELS: dict[str, str] = {"dice": "Dice", "hd95": "HD95 (mm)", "lesion_dice": "LW Dice",
                                 "lesion_hd95": "LW HD95 (mm)", "sensitivity": "Sensitivity",
                                 "specificity": "Specificity"}


@dataclass
class Run:
    """One evaluated model: its row name, evaluation folder, per-case rows and summary."""

    name: str
    path: Path
    rows: list[dict]
    summary: dict

    def values(self, region: str, metric: str) -> np.ndarray:
        """Per-case values of ``metric`` for ``region`` (finite values only)."""
        col = metric_column(region, metric)
        v = np.asarray([float(r[col]) for r in self.rows if col in r], dtype=float)
        return v[np.isfinite(v)]


def parse_run_spec(spec: str) -> tuple[str, Path]:
    """``NAME=PATH`` -> ``(NAME, PATH)``; a bare ``PATH`` is named after its folder."""
    if "=" in spec:
        name, path = spec.split("=", 1)
        name = name.strip()
        if not name or not path:
            raise InputDataError(f"run '{spec}': expected NAME=PATH or PATH")
        return name, Path(path)
    path = Path(spec)
    return path.resolve().name, path


def load_runs(specs: Sequence[str | tuple[str, str | os.PathLike]]) -> list[Run]:
    """Load evaluation folders given as ``NAME=PATH`` strings, bare paths or ``(name, path)`` pairs."""
    runs: list[Run] = []
    for spec in specs:
        name, path = parse_run_spec(spec) if isinstance(spec, str) else (spec[0], Path(spec[1]))
        if any(r.name == name for r in runs):
            raise InputDataError(f"run name '{name}' is used twice; name the runs with NAME=PATH")
        try:
            rows, summary = load_evaluation(path)
        except InputDataError as e:
            raise InputDataError(f"run '{name}': {e}") from None
        if not rows:
            raise InputDataError(f"run '{name}': {path} holds no evaluated case")
        runs.append(Run(name, path, rows, summary))
    if not runs:
        raise InputDataError("no run given")
    return runs


def compare_runs(runs: Sequence[Run], metrics: Sequence[str] = TABLE_METRICS,
                 regions: Sequence[str] = TABLE_REGIONS) -> list[dict]:
    """One row per run: ``model``, ``n_cases``, and ``<REGION>_<metric>_mean`` / ``_std`` for every region and
    metric, in table order."""
    table = []
    for run in runs:
        row: dict = {"model": run.name, "n_cases": len(run.rows)}
        for region in regions:
            for metric in metrics:
                v = run.values(region, metric)
                row[f"{region}_{metric}_mean"] = float(v.mean()) if v.size else math.nan
                row[f"{region}_{metric}_std"] = float(v.std()) if v.size else math.nan
        table.append(row)
    return table


def _digits(metric: str) -> int:
    return 2 if "hd95" in metric else 3


def table_markdown(rows: Sequence[dict], metrics: Sequence[str] = TABLE_METRICS,
                   regions: Sequence[str] = TABLE_REGIONS) -> str:
    """Markdown table ``| Model | ET Dice | TC Dice | ... |`` with ``mean ± std`` cells; best mean in bold."""
    cols = [(r, m) for m in metrics for r in regions]
    best = {}
    for region, metric in cols:
        means = [row[f"{region}_{metric}_mean"] for row in rows]
        finite = [x for x in means if math.isfinite(x)]
        if len(finite) > 1:
            best[(region, metric)] = (min if "hd95" in metric else max)(finite)
    header = ["Model", "n"] + [f"{r} {METRIC_LABELS.get(m, m)}" for r, m in cols]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    for row in rows:
        cells = [str(row["model"]), str(row["n_cases"])]
        for region, metric in cols:
            mean, std = row[f"{region}_{metric}_mean"], row[f"{region}_{metric}_std"]
            d = _digits(metric)
            cell = f"{mean:.{d}f} ± {std:.{d}f}" if math.isfinite(mean) else "n/a"
            if best.get((region, metric)) == mean:
                cell = f"**{cell}**"
            cells.append(cell)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def table_csv(rows: Sequence[dict]) -> str:
    """CSV text of :func:`compare_runs` rows (numbers at full precision)."""
    if not rows:
        return ""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (repr(v) if isinstance(v, float) else v) for k, v in row.items()})
    return buf.getvalue()
