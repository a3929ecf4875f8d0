"""``nnunet-kd pseudolabel``: ensemble pseudo-labels of unlabelled cases from trained nnU-Net models."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

NAME = "pseudolabel"
HELP = "pseudo-label unlabelled cases with the averaged probabilities of several nnU-Net models/folds"
DESCRIPTION = (
    "Predicts every case of UNLABELED_IMAGES (CASE_0000.nii.gz ...) with each model folder and fold given\n"
    "to --models (nnU-Net's nnUNetPredictor, probabilities saved), averages the region probabilities\n"
    "(WT/TC/ET) over all of them and writes OUT/labels/CASE.nii.gz with labels 1 ED, 2 NCR, 3 ET.\n"
    "Cases with an empty or unusable ensemble prediction are listed in OUT/pseudolabels.json and here.\n\n"
    "Several machines can share the work: run with -num_parts N -part_id K (K = 0..N-1) into the same\n"
    "OUT, then `nnunet-kd pseudolabel --merge -o OUT`.\n\n"
    "example:\n"
    "  nnunet-kd pseudolabel -i $nnUNet_raw/Dataset517_X/imagesTs -o pseudo \\\n"
    "      --models $nnUNet_results/Dataset517_X/nnUNetTrainerUNet__nnUNetPlans__3d_fullres:0,1 \\\n"
    "               $nnUNet_results/Dataset517_X/nnUNetTrainerResidualUNet__nnUNetPlans__3d_fullres"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-i", dest="images", type=Path, metavar="UNLABELED_IMAGES",
                        help="folder of unlabelled images CASE_XXXX<file_ending>")
    parser.add_argument("-o", dest="output", type=Path, required=True, metavar="OUT", help="output folder")
    parser.add_argument("--models", nargs="+", default=[], metavar="RESULTS_DIR[:FOLDS]",
                        help="model folders (<trainer>__<plans>__<configuration>, absolute or relative to "
                             "$nnUNet_results), each optionally with :FOLDS such as :0,1 or :all "
                             "(default: every fold with a final checkpoint)")
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


def _model_path(text: str) -> tuple[Path, list[str] | None]:
    from nnunet_kd.distillation.pseudolabel import parse_model_spec
    from nnunet_kd.paths import nnunet_results_if_set

    folder, folds = parse_model_spec(text)
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
    device = args.device
    if device is None:
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    report = pseudolabel.run_pseudolabel(
        args.images, args.output, [_model_path(m) for m in args.models], num_parts=args.num_parts,
        part_id=args.part_id, device=device, save_probabilities=args.save_probabilities,
        keep_member_predictions=args.keep_member_predictions, use_mirroring=not args.disable_tta,
        tile_step_size=args.step_size, num_processes=args.processes,
        min_foreground_voxels=args.min_foreground_voxels, resume=args.resume, checkpoint_name=args.checkpoint,
        progress=not args.no_progress)
    print(f"part {args.part_id} of {args.num_parts}: labels in {args.output / 'labels'}")
    if args.num_parts > 1:
        print(f"when all parts are done: nnunet-kd pseudolabel --merge -o {args.output}")
    return _summarise(report)
