"""Comparison table of several evaluated runs (the seed papers' table: rows = models, Dice and HD95 per region).

Public: :class:`Run`, :func:`parse_run_spec`, :func:`load_runs`, :func:`report_regions`, :func:`group_runs`,
:func:`compare_runs`, :func:`compare_groups`, :func:`table_markdown`, :func:`table_csv`.

A run is an output folder of ``nnunet-kd evaluate`` (``per_case.csv`` + ``summary.json``), named by
``NAME=PATH`` or by the folder name. Its regions are those its summary lists (the dataset kind's: WT, TC, ET,
and NETC, SNFH, RC for post-treatment data); the table shows them in the seed papers' order, ET, TC, WT first
(:func:`nnunet_kd.evaluation.evaluate.display_order`). Means and standard deviations (population std, ddof=0, as
in the evaluation summary) are computed over the cases of each run -- or of each availability group, for a run
evaluated with ``--group-by-routing`` (:func:`group_runs`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nnunet_kd.errors import InputDataError
from nnunet_kd.evaluation.evaluate import (
    ALL_REGIONS,
    REGION_KEYS,
    display_order,
    load_evaluation,
    metric_column,
    records_csv,
)

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

    @property
    def regions(self) -> tuple[str, ...]:
        """The evaluated regions (summary ``regions``; WT, TC, ET for a summary without that entry)."""
        return tuple(self.summary.get("regions") or REGION_KEYS)

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


def report_regions(runs: Sequence[Run]) -> list[str]:
    """Every region any run evaluated, in table order (ET, TC, WT, then NETC, SNFH, RC)."""
    return display_order(r for run in runs for r in run.regions)


def group_runs(run: Run) -> list[Run] | None:
    """One :class:`Run` per availability group (named by the group, in routing.json's order) of a run evaluated
    with ``nnunet-kd evaluate --group-by-routing``; None for a run evaluated without it."""
    from nnunet_kd.subsets.routing import GROUPS_KEY

    grouping = run.summary.get(GROUPS_KEY)
    if not isinstance(grouping, dict):
        return None
    cases = grouping.get("cases", {})
    out = []
    for group in grouping.get("groups", []):
        rows = [row for row in run.rows if cases.get(row["case"]) == group]
        if rows:
            out.append(Run(group, run.path, rows, run.summary))
    return out


def compare_runs(runs: Sequence[Run], metrics: Sequence[str] = TABLE_METRICS,
                 regions: Sequence[str] | None = None) -> list[dict]:
    """One row per run: ``model``, ``n_cases``, and ``<REGION>_<metric>_mean`` / ``_std`` for every region
    (default: :func:`report_regions`) and metric, in table order; NaN for a region a run did not evaluate."""
    regions = report_regions(runs) if regions is None else regions
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


def compare_groups(run: Run, metrics: Sequence[str] = TABLE_METRICS, regions: Sequence[str] | None = None
                   ) -> list[dict]:
    """:func:`compare_runs` over the availability groups of ``run`` (rows ``model``, ``group``, ``n_cases``, ...);
    empty for a run evaluated without ``--group-by-routing``."""
    groups = group_runs(run) or []
    return [{"model": run.name, "group": row.pop("model"), **row}
            for row in compare_runs(groups, metrics, regions if regions is not None else list(run.regions))]


def _digits(metric: str) -> int:
    return 2 if "hd95" in metric else 3


def table_markdown(rows: Sequence[dict], metrics: Sequence[str] = TABLE_METRICS,
                   regions: Sequence[str] | None = None, name_column: str = "model", label: str = "Model") -> str:
    """Markdown table ``| Model | n | ET Dice | TC Dice | ... |`` with ``mean ± std`` cells; best mean in bold.

    ``regions`` default: those with columns in ``rows``, in table order; the first column shows the rows'
    ``name_column`` under the heading ``label`` (``group`` / ``Group`` for :func:`compare_groups` rows)."""
    if regions is None:
        regions = [r for r in display_order(ALL_REGIONS) if rows and f"{r}_{metrics[0]}_mean" in rows[0]]
    cols = [(r, m) for m in metrics for r in regions]
    best = {}
    for region, metric in cols:
        means = [row[f"{region}_{metric}_mean"] for row in rows]
        finite = [x for x in means if math.isfinite(x)]
        if len(finite) > 1:
            best[(region, metric)] = (min if "hd95" in metric else max)(finite)
    header = [label, "n"] + [f"{r} {METRIC_LABELS.get(m, m)}" for r, m in cols]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    for row in rows:
        cells = [str(row[name_column]), str(row["n_cases"])]
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
    """CSV text of :func:`compare_runs` / :func:`compare_groups` rows (numbers at full precision)."""
    return records_csv(rows)
