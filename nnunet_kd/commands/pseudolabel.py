"""``nnunet-kd pseudolabel``: ensemble pseudo-labels of unlabelled cases from trained nnU-Net models."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

NAME = "pseudolabel"
HELP = "pseudo-label unlabelled cases with the averaged probabilities of several nnU-Net models/folds"
DESCRIPTION = (
    "Predicts every case of UNLABELED_IMAGES (CASE_0000.nii.gz ...) with each model folder and fold given\n"
    "to --models (nnU-Net's nnUNetPredictor, probabilities saved) and writes OUT/labels/CASE.nii.gz with\n"
    "labels 1 ED, 2 NCR, 3 ET from the averaged region probabilities (WT/TC/ET, threshold 0.5).\n"
    "Averaging is per model first (over its folds), then across models: a model with 5 folds (or fold_all)\n"
    "weighs the same as a model with 1. Every case's files must be exactly the _000X files each model takes\n"
    "(checked against every model before predicting). Cases with an empty or unusable ensemble prediction\n"
    "are listed in OUT/pseudolabels.json and here.\n\n"
    "Cross-validation: members of other folds than k were trained on fold k's validation cases. For the\n"
    "distilled model's fold k use pseudo-labels of fold-k members only (--fold k, or --models A:k B:k),\n"
    "one output folder per fold, and give all of them to make-distill-dataset.\n\n"
    "Each run owns OUT's reports: an earlier pseudolabels.json (and, for a single-part run, every part\n"
    "report) is removed at start. Several machines can share the work: run with -num_parts N -part_id K\n"
    "(K = 0..N-1, same settings) into the same OUT, then `nnunet-kd pseudolabel --merge -o OUT`.\n\n"
    "examples:\n"
    "  M=$nnUNet_results/Dataset517_X\n"
    "  for K in 0 1 2 3 4; do    # clean per-fold pseudo-labels for the distilled model's folds\n"
    "    nnunet-kd pseudolabel -i $nnUNet_raw/Dataset517_X/imagesTs -o pseudo_fold$K --fold $K \\\n"
    "        --models $M/nnUNetTrainerUNet__nnUNetPlans__3d_fullres \\\n"
    "                 $M/nnUNetTrainerResidualUNet__nnUNetPlans__3d_fullres\n"
    "  done\n"
    "  nnunet-kd pseudolabel -i TEST_IMAGES -o test_ensemble --models $M/nnUNetTrainerUNet__nnUNetPlans__3d_fullres:0,1"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-i", dest="images", type=Path, metavar="UNLABELED_IMAGES",
                        help="folder of unlabelled images CASE_XXXX<file_ending>")
    parser.add_argument("-o", dest="output", type=Path, required=True, metavar="OUT", help="output folder")
    parser.add_argument("--models", nargs="+", default=[], metavar="RESULTS_DIR[:FOLDS]",
                        help="model folders (<trainer>__<plans>__<configuration>, absolute or relative to "
                             "$nnUNet_results), each optionally with :FOLDS such as :0,1 or :all "
                             "(default: every fold with a final checkpoint); each model folder at most once. "
                             "Probabilities are averaged per model (over its folds), then across models")
    parser.add_argument("--fold", default=None, metavar="K",
                        help="use fold K (0..4 or all) of every model given without :FOLDS: the clean per-fold "
                             "pseudo-labels for the distilled model's fold K")
    parser.add_argument("-num_parts", type=int, default=1, help="split the cases into this many parts (default 1)")
    parser.add_argument("-part_id", type=int, default=0, help="which part this run predicts (0 .. num_parts-1)")
    parser.add_argument("--merge", action="store_true",
                        help="only merge the part reports in OUT into OUT/pseudolabels.json (after all parts ran)")
    parser.add_argument("-device", default=None, choices=["cuda", "cpu", "mps"],
                        help="device for prediction (default: cuda if available, else cpu)")
    parser.add_argument("--save-probabilities", action="store_true",
                        help="also keep the averaged probabilities as OUT/probabilities/CASE.npz (soft labels)")
    parser.add_argument("--keep-member-predictions", action="store_true",
                        help="keep every member's nnU-Net prediction in OUT/members/")
    parser.add_argument("--disable-tta", action="store_true", help="no test-time mirroring (faster)")
    parser.add_argument("-step_size", type=float, default=0.5, help="sliding-window step size (default 0.5)")
    parser.add_argument("-npp", dest="processes", type=int, default=0,
                        help="nnU-Net worker processes for preprocessing/export (default 0: all in this process)")
    parser.add_argument("--min-foreground-voxels", type=int, default=1,
                        help="a case whose pseudo-label has fewer tumour voxels is reported as empty (default 1)")
    parser.add_argument("--checkpoint", default="checkpoint_final.pth", help="checkpoint file name")
    parser.add_argument("--continue", dest="resume", action="store_true",
                        help="skip member predictions that already exist in OUT/members/")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _model_path(text: str, fold: str | None = None) -> tuple[Path, list[str] | None]:
    from nnunet_kd.distillation.pseudolabel import parse_model_spec
    from nnunet_kd.errors import ConfigurationError
    from nnunet_kd.paths import nnunet_results_if_set

    folder, folds = parse_model_spec(text)
    if fold is not None:
        if folds is not None and folds != [fold]:
            raise ConfigurationError(f"--fold {fold} conflicts with {text}; give folds either with --fold or "
                                     f"after the model folder")
        folds = [fold]
    results = nnunet_results_if_set()
    if not folder.is_absolute() and not folder.exists() and results is not None:
        candidate = results / folder
        if candidate.exists():
            folder = candidate
    return folder, folds


def _summarise(report: dict) -> int:
    cases = report["cases"]
    bad = {c: i for c, i in cases.items() if i["status"] != "ok"}
    print(f"{len(cases) - len(bad)} of {len(cases)} cases pseudo-labelled")
    for case, info in bad.items():
        detail = f": {info['message']}" if info.get("message") else ""
        print(f"  {info['status']}: {case}{detail}", file=sys.stderr)
    if bad:
        print(f"{len(bad)} case(s) are empty or unusable and will not be used for distillation unless "
              f"included explicitly (make-distill-dataset --include-empty)", file=sys.stderr)
    return 0


def run(args: argparse.Namespace) -> int:
    from nnunet_kd.distillation import pseudolabel
    from nnunet_kd.errors import ConfigurationError

    if args.merge:
        merged = pseudolabel.merge_parts(args.output)
        print(f"merged {merged['num_parts']} part(s) into {args.output / pseudolabel.REPORT_NAME}")
        return _summarise(merged)
    if args.images is None:
        raise ConfigurationError("-i UNLABELED_IMAGES is required (unless --merge)")
    if not args.models:
        raise ConfigurationError("--models RESULTS_DIR[:folds] ... is required (unless --merge)")
    if args.fold is not None and not (args.fold == "all" or args.fold.isdigit()):
        raise ConfigurationError(f"--fold must be a fold number or 'all', got {args.fold!r}")
    device = args.device
    if device is None:
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    report = pseudolabel.run_pseudolabel(
        args.images, args.output, [_model_path(m, args.fold) for m in args.models], num_parts=args.num_parts,
        part_id=args.part_id, device=device, save_probabilities=args.save_probabilities,
        keep_member_predictions=args.keep_member_predictions, use_mirroring=not args.disable_tta,
        tile_step_size=args.step_size, num_processes=args.processes,
        min_foreground_voxels=args.min_foreground_voxels, resume=args.resume, checkpoint_name=args.checkpoint,
        progress=not args.no_progress)
    print(f"part {args.part_id} of {args.num_parts}: labels in {args.output / 'labels'}")
    if args.num_parts > 1:
        print(f"when all parts are done: nnunet-kd pseudolabel --merge -o {args.output}")
    return _summarise(report)
