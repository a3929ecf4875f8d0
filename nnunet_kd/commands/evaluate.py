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
    "and ET: Dice, HD95 (legacy BraTS: max of the directed 95th percentiles of surface distances, mm;\n"
    "373.13 mm if exactly one of the two is empty, 0 if both are), sensitivity, specificity, volumes (mm^3)\n"
    "and the BraTS 2023 lesion-wise Dice/HD95. Writes OUT/per_case.csv, OUT/summary.csv and\n"
    "OUT/summary.json (mean, median, std, quartiles) and prints a summary table."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from nnunet_kd.brats import CONVENTIONS

    parser.add_argument("pred_dir", type=Path, metavar="PRED_DIR", help="folder of predicted label maps CASE.nii.gz")
    parser.add_argument("gt_dir", type=Path, metavar="GT_DIR",
                        help="folder of reference label maps CASE.nii.gz (e.g. labelsTr)")
    parser.add_argument("-o", "--output", type=Path, default=None,
                        help="output folder (default: PRED_DIR/evaluation)")
    parser.add_argument("--convention", default="dataset137", choices=sorted(CONVENTIONS),
                        help="label convention of both folders (default: dataset137, nnU-Net's ED 1, NCR 2, ET 3)")
    parser.add_argument("--num-processes", "-np", type=int, default=min(8, os.cpu_count() or 1),
                        help="worker processes, one case each (default: number of CPUs, at most 8)")
    parser.add_argument("--allow-missing", action="store_true",
                        help="count reference cases without prediction as empty predictions (with a warning)")
    parser.add_argument("--file-ending", default=".nii.gz", help="file ending of the label maps (default .nii.gz)")
    parser.add_argument("--lesion-dilation", type=int, default=None,
                        help="lesion-wise GT dilation iterations (default 3, BraTS-GLI)")
    parser.add_argument("--lesion-min-volume", type=float, default=None,
                        help="lesion-wise: GT lesions of at most this volume (mm^3) are ignored (default 50)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from nnunet_kd.errors import ConfigurationError
    from nnunet_kd.evaluation import evaluate

    if args.num_processes < 1:
        raise ConfigurationError(f"--num-processes must be at least 1, got {args.num_processes}")
    defaults = evaluate.EvaluationSettings()
    settings = evaluate.EvaluationSettings(
        convention=args.convention,
        lesion_dilation_iterations=defaults.lesion_dilation_iterations if args.lesion_dilation is None
        else args.lesion_dilation,
        lesion_volume_threshold_mm3=defaults.lesion_volume_threshold_mm3 if args.lesion_min_volume is None
        else args.lesion_min_volume,
    )
    out = args.output if args.output is not None else args.pred_dir / "evaluation"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)
        _, summary = evaluate.evaluate_folders(
            args.pred_dir, args.gt_dir, out, convention=args.convention, num_processes=args.num_processes,
            allow_missing=args.allow_missing, progress=not args.no_progress, file_ending=args.file_ending,
            settings=settings)
    for w in caught:
        print(f"nnunet-kd {NAME}: warning: {w.message}", file=sys.stderr)
    print(evaluate.format_summary_table(summary))
    print(f"wrote {out / evaluate.PER_CASE_CSV}, {out / evaluate.SUMMARY_CSV}, {out / evaluate.SUMMARY_JSON}")
    return 0
