"""``nnunet-kd evaluate``: BraTS metrics of a prediction folder against a reference folder."""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path

NAME = "evaluate"
HELP = "BraTS metrics (Dice, HD95, lesion-wise) of predicted label maps against reference label maps"
DESCRIPTION = (
    "Scores every CASE.nii.gz of GT_DIR (e.g. labelsTr) against PRED_DIR/CASE.nii.gz for the regions WT, TC\n"
    "and ET with the definitions of the BraTS 2023 reference evaluation (BraTS-2023-Metrics): Dice, HD95\n"
    "(area-weighted surface elements, mm; 374 mm if exactly one of the two is empty, 0 if both are),\n"
    "sensitivity, specificity, volumes (mm^3) and the lesion-wise Dice/HD95. Every file is checked to be\n"
    "complete and to hold integer labels of its folder's convention. Writes OUT/per_case.csv,\n"
    "OUT/summary.csv and OUT/summary.json (mean, median, std, quartiles) and prints a summary table.\n"
    "Label conventions: nnU-Net predictions use dataset137 (ED 1, NCR 2, ET 3); raw BraTS 2023 GLI labels\n"
    "use the same values with other meanings (NETC 1, SNFH 2, ET 3): pass --gt-convention 2023 for them.\n"
    "Dataset kind (--kind): read from the brats_kind of a dataset.json in GT_DIR, its parent or PRED_DIR (as\n"
    "convert-brats and nnUNetv2_predict write them); it sets the default --task, the default conventions\n"
    "and the regions: GLI-POST (BraTS 2024 post-treatment) scores WT, TC, ET, NETC, SNFH and RC (label 4)\n"
    "with the BraTS 2024 reference's lesion-wise procedure (BraTS-2024-Metrics metrics_GLI.py: lesions of\n"
    "touching tissues merged, per-region dilation and thresholds, 337 mm penalty; summary.json names it);\n"
    "PED-2024 (BraTS 2024 paediatric) scores WT, TC, ET, NETC, CC (label 4) and ED.\n"
    "See docs/evaluation.md for how these numbers relate to other BraTS evaluation tools."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from nnunet_kd.brats import CONVENTIONS, KINDS
    from nnunet_kd.evaluation.lesionwise import TASK_PARAMETERS
    from nnunet_kd.evaluation.lesionwise_2024 import TASK as POST_TASK

    parser.add_argument("pred_dir", type=Path, metavar="PRED_DIR", help="folder of predicted label maps CASE.nii.gz")
    parser.add_argument("gt_dir", type=Path, metavar="GT_DIR",
                        help="folder of reference label maps CASE.nii.gz (e.g. labelsTr)")
    parser.add_argument("-o", "--output", type=Path, default=None,
                        help="output folder (default: PRED_DIR/evaluation); must be new or empty unless --overwrite")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
    names = sorted(CONVENTIONS)
    parser.add_argument("--pred-convention", default=None, choices=names,
                        help="label convention of PRED_DIR (default: dataset137, nnU-Net's ED 1, NCR 2, ET 3)")
    parser.add_argument("--gt-convention", default=None, choices=names,
                        help="label convention of GT_DIR (default: dataset137; raw BraTS 2023 labels: 2023)")
    parser.add_argument("--convention", default=None, choices=names,
                        help="shorthand: the same convention for both folders (not with --pred/--gt-convention)")
    parser.add_argument("--num-processes", "-np", type=int, default=min(8, os.cpu_count() or 1),
                        help="worker processes, one case each (default: number of CPUs, at most 8)")
    parser.add_argument("--allow-missing", action="store_true",
                        help="count reference cases without prediction as empty predictions (with a warning)")
    parser.add_argument("--file-ending", default=".nii.gz", help="file ending of the label maps (default .nii.gz)")
    parser.add_argument("--kind", default=None, type=str.upper, choices=sorted(KINDS),
                        help="dataset kind: its regions, default conventions and --task (default: the brats_kind "
                             "of a dataset.json in GT_DIR, its parent or PRED_DIR; else GLI)")
    parser.add_argument("--task", default=None, choices=sorted([*TASK_PARAMETERS, POST_TASK]),
                        help="BraTS challenge whose lesion-wise procedure to use (default: the kind's). BraTS 2023 "
                             "procedure with dilation iterations / volume threshold GLI 3/50 mm^3, MEN 1/50, "
                             "MET 1/2, PED 3/50, SSA 3/50, PED-2024 5/10; GLI-POST: the BraTS 2024 post-treatment "
                             "procedure (cross-tissue lesion merging, per-region parameters; docs/evaluation.md)")
    parser.add_argument("--lesion-dilation", type=int, default=None,
                        help="lesion-wise GT dilation iterations, >= 0 (default: the --task's value; BraTS 2023 "
                             "procedure only)")
    parser.add_argument("--lesion-min-volume", type=float, default=None,
                        help="lesion-wise: GT lesions of at most this volume (mm^3, >= 0) are ignored "
                             "(default: the --task's value; BraTS 2023 procedure only)")
    parser.add_argument("--hd95-penalty", type=float, default=None,
                        help="HD95 (mm) when exactly one of prediction and reference is empty (default 374, as the "
                             "BraTS 2023 reference; 373.13 was the BraTS 2018-2021 value)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--group-by-routing", type=Path, default=None, metavar="ROUTING_JSON",
                        help="also score per availability group of `nnunet-kd predict`'s routing.json: prints the "
                             "table (mean Dice/HD95 of every scored region of the kind), writes "
                             "OUT/summary_by_group.csv and the case-to-group map into OUT/summary.json, from which "
                             "`nnunet-kd report` draws per-group tables and plots")


def run(args: argparse.Namespace) -> int:
    from nnunet_kd.errors import ConfigurationError
    from nnunet_kd.evaluation import evaluate, lesionwise, lesionwise_2024

    if args.num_processes < 1:
        raise ConfigurationError(f"--num-processes must be at least 1, got {args.num_processes}")
    if args.convention is not None and (args.pred_convention or args.gt_convention):
        raise ConfigurationError("give either --convention (both folders) or --pred-convention/--gt-convention")
    if args.lesion_dilation is not None and args.lesion_dilation < 0:
        raise ConfigurationError(f"--lesion-dilation must be 0 or more, got {args.lesion_dilation}")
    if args.lesion_min_volume is not None and not args.lesion_min_volume >= 0:
        raise ConfigurationError(f"--lesion-min-volume must be 0 or more (mm^3), got {args.lesion_min_volume}")
    if args.hd95_penalty is not None and not args.hd95_penalty >= 0:
        raise ConfigurationError(f"--hd95-penalty must be 0 or more (mm), got {args.hd95_penalty}")
    kind = resolve_kind(args)
    task = args.task or kind.task
    if task == lesionwise_2024.TASK:
        if args.lesion_dilation is not None or args.lesion_min_volume is not None:
            raise ConfigurationError(
                f"--lesion-dilation and --lesion-min-volume set the BraTS 2023 procedure; task {task} uses the "
                f"BraTS 2024 post-treatment procedure with its own values per region (pass e.g. --task GLI to "
                f"score with the 2023 procedure and your values)")
        procedure = lesionwise_2024.PROCEDURE
        dilation, min_volume = lesionwise.GLI_DILATION_ITERATIONS, lesionwise.GLI_VOLUME_THRESHOLD_MM3  # unused
    else:
        procedure = evaluate.LESION_PROCEDURE_2023
        dilation, min_volume = lesionwise.TASK_PARAMETERS[task]
    default = args.convention or kind.canonical_convention
    settings = evaluate.EvaluationSettings(
        kind=kind.name, lesion_procedure=procedure,
        pred_convention=args.pred_convention or default,
        gt_convention=args.gt_convention or default,
        hd95_penalty=evaluate.EvaluationSettings.hd95_penalty if args.hd95_penalty is None else args.hd95_penalty,
        lesion_dilation_iterations=dilation if args.lesion_dilation is None else args.lesion_dilation,
        lesion_volume_threshold_mm3=min_volume if args.lesion_min_volume is None else args.lesion_min_volume,
    )
    out = args.output if args.output is not None else args.pred_dir / "evaluation"
    routing = None
    if args.group_by_routing is not None:
        from nnunet_kd.subsets.routing import read_routing

        routing = read_routing(args.group_by_routing)  # a bad file stops before minutes of evaluation
    evaluate.check_output_apart(out, (("prediction folder", args.pred_dir), ("reference folder", args.gt_dir)))
    evaluate.check_output_folder(out, args.overwrite)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)
        rows, summary = evaluate.evaluate_folders(
            args.pred_dir, args.gt_dir, None, num_processes=args.num_processes, allow_missing=args.allow_missing,
            progress=not args.no_progress, file_ending=args.file_ending, settings=settings)
    for w in caught:
        print(f"nnunet-kd {NAME}: warning: {w.message}", file=sys.stderr)
    extra_files: dict[str, str] = {}
    if routing is not None:  # written with the evaluation, in the same atomic folder
        from nnunet_kd.subsets import routing as routing_module

        summary[routing_module.GROUPS_KEY] = routing_module.availability_groups(rows, routing, args.group_by_routing)
        scores = routing_module.scores_by_group(rows, routing, summary["regions"])
        extra_files[routing_module.GROUP_SUMMARY_CSV] = evaluate.records_csv(
            scores, routing_module.group_score_columns(summary["regions"]))
    evaluate.write_evaluation(rows, summary, out, overwrite=args.overwrite, extra_files=extra_files)
    print(evaluate.format_summary_table(summary))
    print(f"wrote {out / evaluate.PER_CASE_CSV}, {out / evaluate.SUMMARY_CSV}, {out / evaluate.SUMMARY_JSON}")
    if routing is not None:
        print(f"mean per availability group ({args.group_by_routing}):")
        print(routing_module.format_scores_by_group(scores))
        print(f"wrote {out / routing_module.GROUP_SUMMARY_CSV}")
    return 0


def resolve_kind(args: argparse.Namespace):
    """The dataset kind to score: ``--kind``; else the ``brats_kind`` of the dataset.json files in GT_DIR, its
    parent and PRED_DIR (they must agree); else the kind of an explicit label convention (``2024-gli`` means
    GLI-POST); else GLI (:func:`nnunet_kd.evaluation.evaluate.resolve_kind`)."""
    from nnunet_kd.evaluation.evaluate import resolve_kind as resolve

    return resolve(args.kind, (args.gt_dir / "dataset.json", args.gt_dir.parent / "dataset.json",
                               args.pred_dir / "dataset.json"),
                   (args.convention, args.gt_convention, args.pred_convention))
