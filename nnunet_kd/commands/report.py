"""``nnunet-kd report``: comparison table and figures over several ``nnunet-kd evaluate`` outputs."""

from __future__ import annotations

import argparse
from pathlib import Path

NAME = "report"
HELP = "compare evaluated runs: Markdown/CSV table (Dice and HD95 per region, mean ± std) and PNG figures"
DESCRIPTION = (
    "Each RUN is an output folder of `nnunet-kd evaluate`, optionally named NAME=PATH (default name: the\n"
    "folder name). The regions are those the runs were scored for (their dataset kind: ET, TC, WT; for GLI-POST\n"
    "also NETC, SNFH, RC; for PED-2024 also NETC, CC, ED). Writes into OUT: comparison.md / comparison.csv (rows = runs), dice_distribution.png\n"
    "and hd95_distribution.png (per-region violin/box plots across cases), overlays/<run>.png (FLAIR slice with\n"
    "reference and predicted contours of the best/median/worst case, needs --images), training_<name>.png\n"
    "for each --training-log fold folder, and report.md tying them together. A run evaluated with\n"
    "`--group-by-routing` is also shown per availability group: comparison_by_group.md / .csv and\n"
    "by_group/<run>_dice.png, <run>_hd95.png (one panel per region, one violin per group)."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("runs", nargs="+", metavar="RUN", help="evaluation folder, or NAME=PATH")
    parser.add_argument("-o", "--output", type=Path, required=True,
                        help="report folder; must be new or empty unless --overwrite")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty report folder")
    parser.add_argument("--images", type=Path, default=None,
                        help="folder of input images CASE_0003.nii.gz (FLAIR) for overlays (e.g. imagesTr)")
    parser.add_argument("--training-log", action="append", default=[], metavar="[NAME=]FOLD_DIR",
                        help="nnU-Net fold folder (checkpoint_*.pth or training_log_*.txt) to plot; repeatable")


def _build(tmp: Path, runs, images: Path | None, training_logs: list[tuple[str, Path]]) -> list[str]:
    from nnunet_kd.evaluation.evaluate import lesion_procedure_name
    from nnunet_kd.reporting import plots, table
    from nnunet_kd.subsets.routing import GROUP_SUMMARY_CSV, GROUPS_KEY

    notes: list[str] = []
    rows = table.compare_runs(runs)
    md = table.table_markdown(rows)
    lw_rows = table.compare_runs(runs, metrics=("lesion_dice", "lesion_hd95"))
    lw_md = table.table_markdown(lw_rows, metrics=("lesion_dice", "lesion_hd95"))
    (tmp / "comparison.md").write_text(md, encoding="utf-8")
    (tmp / "comparison.csv").write_text(table.table_csv(rows), encoding="utf-8")
    (tmp / "comparison_lesionwise.csv").write_text(table.table_csv(lw_rows), encoding="utf-8")
    figures = [plots.distribution_plot(runs, tmp / "dice_distribution.png", "dice"),
               plots.distribution_plot(runs, tmp / "hd95_distribution.png", "hd95")]
    if images is None:
        notes.append("overlays skipped: no --images folder given")
    elif not images.is_dir():
        notes.append(f"overlays skipped: --images folder {images} does not exist")
    else:
        for run in runs:
            png, run_notes = plots.overlay_figure(run, images, tmp / "overlays" / f"{_safe(run.name)}.png")
            notes.extend(run_notes)
            if png is not None:
                figures.append(png)
    group_lines, group_rows = [], []
    for run in runs:
        groups = table.group_runs(run)
        if groups is None:
            if (run.path / GROUP_SUMMARY_CSV).is_file():
                notes.append(f"{run.name}: {GROUP_SUMMARY_CSV} has no per-case groups (an older nnunet-kd); re-run "
                             f"`nnunet-kd evaluate ... --group-by-routing ROUTING_JSON --overwrite` for per-group plots")
            continue
        rows_g = table.compare_groups(run)
        group_rows += rows_g
        group_lines += [f"### {run.name}", "", f"Availability groups of {run.summary[GROUPS_KEY]['routing_json']}.",
                        "", table.table_markdown(rows_g, name_column="group", label="Group")]
        for metric in ("dice", "hd95"):
            figures.append(plots.distribution_plot(
                groups, tmp / "by_group" / f"{_safe(run.name)}_{metric}.png", metric, list(run.regions),
                title=f"{run.name}: {table.METRIC_LABELS.get(metric, metric)} per availability group"))
    if group_rows:
        (tmp / "comparison_by_group.md").write_text("\n".join(group_lines), encoding="utf-8")
        (tmp / "comparison_by_group.csv").write_text(table.table_csv(group_rows), encoding="utf-8")
    for name, fold in training_logs:
        figures.append(plots.training_progress_plot(fold, tmp / f"training_{_safe(name)}.png",
                                                    title=f"training progress: {name}"))
    lines = ["# Model comparison", "", "Mean ± std over cases (HD95 in mm; best mean in bold).", "", md,
             "## Lesion-wise", "", "Procedure: " + "; ".join(
                 f"{r.name}: {lesion_procedure_name(r.summary)}" for r in runs) + ".", "", lw_md]
    if group_lines:
        lines += ["## Per availability group", "", "Mean ± std over the cases of each group (`evaluate "
                  "--group-by-routing`).", "", *group_lines]
    lines += ["## Runs", ""]
    lines += [f"- **{r.name}**: {r.path.resolve()} ({len(r.rows)} cases, convention "
              f"{r.summary.get('convention', '?')}, predictions {r.summary.get('pred_dir', '?')})" for r in runs]
    lines += ["", "## Figures", ""]
    lines += [f"![{p.stem}]({p.relative_to(tmp).as_posix()})" for p in figures]
    if notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    (tmp / "report.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return notes


def _safe(name: str) -> str:
    import re

    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "run"


def run(args: argparse.Namespace) -> int:
    from nnunet_kd.errors import InputDataError
    from nnunet_kd.evaluation.evaluate import check_output_apart, check_output_folder, publish_folder
    from nnunet_kd.reporting import table

    check_output_folder(args.output, args.overwrite)
    runs = table.load_runs(args.runs)
    training_logs = [table.parse_run_spec(spec) for spec in args.training_log]
    inputs = [(f"evaluation folder of run {r.name}", r.path) for r in runs]
    inputs += [(f"training log folder {name}", fold) for name, fold in training_logs]
    if args.images is not None:
        inputs.append(("images folder", args.images))
    check_output_apart(args.output, inputs)
    names = [name for name, _ in training_logs]
    if len(set(names)) != len(names):
        raise InputDataError(f"--training-log names {names} repeat; name them with NAME=FOLD_DIR")
    notes: list[str] = []
    out = publish_folder(args.output, lambda tmp: notes.extend(_build(tmp, runs, args.images, training_logs)),
                         overwrite=args.overwrite)
    print(table.table_markdown(table.compare_runs(runs)), end="")
    for note in notes:
        print(f"note: {note}")
    print(f"wrote report to {out / 'report.md'}")
    return 0
