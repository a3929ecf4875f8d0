"""``nnunet-kd evaluate-subsets``: the 15-subset missing-modality table of an any-subset model."""

from __future__ import annotations

import argparse

NAME = "evaluate-subsets"
HELP = "predict and evaluate an any-subset model on every modality subset; RFNet-style table + heat map"
DESCRIPTION = (
    "Predicts every modality subset (default: all 15) of a model trained by nnUNetTrainerBarlowKD_AnySubset or a\n"
    "variant -- each subset with only its files per case, exactly as `nnunet-kd export-subset` + nnUNetv2_predict\n"
    "would -- evaluates against GT (label maps, one per case) and writes to OUT:\n"
    "    subset_table.md / subset_table.csv   rows = subsets, Dice and HD95 per region, plus the mean row\n"
    "    subset_heatmap.png                   the same as heat maps\n"
    "    subsets/<subset>/predictions, evaluation   per subset; finished subsets are reused on a re-run\n"
    "IMAGES holds all four files per case (_0000.._0003); a labelled case with a missing, extra or misnamed file\n"
    "stops the run before any prediction (the check of `nnunet-kd check-inputs`). The regions are those of the\n"
    "dataset kind, found as `nnunet-kd evaluate` finds it (--kind, else the brats_kind of the dataset.json in GT,\n"
    "its parent or RESULTS_FOLDER): WT, TC, ET; for GLI-POST (BraTS 2024 post-treatment) also NETC, SNFH, RC;\n"
    "for PED-2024 (BraTS 2024 paediatric) also NETC, CC, ED.\n"
    "Example:\n"
    "    nnunet-kd evaluate-subsets $nnUNet_results/Dataset137_BraTS2021/nnUNetTrainerBarlowKD_AnySubset__nnUNetPlans__3d_fullres \\\n"
    "        imagesTs/ labelsTs/ -o subsets_eval/ -f 0 1 2 3 4 --published"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from nnunet_kd.brats import CONVENTIONS, KINDS

    parser.add_argument("model_folder", metavar="RESULTS_FOLDER", help="model folder of the any-subset run")
    parser.add_argument("images", metavar="IMAGES", help="folder with all four image files per case")
    parser.add_argument("gt", metavar="GT", help="folder with the reference label maps (CASE.nii.gz)")
    parser.add_argument("-o", dest="out", required=True, help="output folder (created; re-used as a cache)")
    parser.add_argument("--subsets", nargs="+", metavar="SUBSET",
                        help="subsets to evaluate, each like T2,FLAIR or T2+FLAIR (default: all 15)")
    parser.add_argument("-f", dest="folds", nargs="+", help="folds to ensemble (default: all with a checkpoint)")
    parser.add_argument("-chk", dest="checkpoint", default="checkpoint_final.pth", help="checkpoint file name")
    parser.add_argument("-device", default=None, choices=("cuda", "cpu", "mps"),
                        help="device for prediction (default: cuda if available, else cpu)")
    parser.add_argument("-npp", type=int, default=3, help="preprocessing processes (0: predict in this process)")
    parser.add_argument("-nps", type=int, default=3, help="segmentation export processes (0: in this process)")
    parser.add_argument("--disable_tta", action="store_true", help="no test-time mirroring")
    parser.add_argument("--convention", default=None, choices=sorted(CONVENTIONS),
                        help="label convention of predictions and GT (default: the dataset kind's, dataset137 or "
                             "dataset137-rc; see `nnunet-kd evaluate --help`)")
    parser.add_argument("--kind", default=None, type=str.upper, choices=sorted(KINDS),
                        help="dataset kind: its regions, convention and lesion-wise parameters (default: the "
                             "brats_kind of a dataset.json in GT, its parent or RESULTS_FOLDER; else GLI)")
    parser.add_argument("-np", dest="num_processes", type=int, default=1, help="processes for the evaluation")
    parser.add_argument("--published", action="store_true",
                        help="add the published BraTS 2020 means of RFNet, mmFormer and DeMoSeg to the Markdown table")
    parser.add_argument("--title", default=None, help="title of the table and the heat map")


def run(args: argparse.Namespace) -> int:
    import sys

    import torch

    from nnunet_kd.subsets.catalog import parse_subsets
    from nnunet_kd.subsets.evaluation import evaluate_subsets
    from nnunet_kd.subsets.table import subset_row, write_subset_table

    subsets = parse_subsets(args.subsets)
    device_name = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    results = evaluate_subsets(
        args.model_folder, args.images, args.gt, args.out, subsets, folds=args.folds, checkpoint_name=args.checkpoint,
        device=torch.device(device_name), use_mirroring=not args.disable_tta, convention=args.convention,
        num_processes_preprocessing=args.npp, num_processes_export=args.nps,
        num_processes_evaluation=args.num_processes, progress=sys.stderr.isatty(), kind=args.kind)
    rows = [subset_row(r.subset, r.summary) for r in results]
    paths = write_subset_table(rows, args.out, published=args.published, title=args.title)
    reused = sum(not r.predicted for r in results)
    print(paths["markdown"].read_text(), end="")
    print(f"{len(results)} subset(s) ({reused} reused from {args.out}); table: {paths['markdown']}, "
          f"{paths['csv']}; heat map: {paths['heatmap']}")
    return 0
