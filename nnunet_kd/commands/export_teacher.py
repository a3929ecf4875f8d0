"""``nnunet-kd export-teacher``: the teacher of a KD run as an ordinary 4-channel nnU-Net model folder."""

from __future__ import annotations

import argparse

NAME = "export-teacher"
HELP = "write the teacher of a KD run as a stock 4-channel nnU-Net model folder"
DESCRIPTION = (
    "Writes the teacher network stored in a KD run's checkpoints as its own nnU-Net model folder, next to the run\n"
    "(TRAINER_teacher__PLANS__CONFIG). Predict with it like any model, with all 4 files per case:\n"
    "    nnunet-kd export-teacher -d 137 -tr nnUNetTrainerBarlowKD\n"
    "    nnUNetv2_predict -i all_four/ -o pred/ -d 137 -c 3d_fullres -tr nnUNetTrainerBarlowKD_teacher -f 0"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model_folder", nargs="?", help="the KD run's model folder (or give -d/-tr/-p/-c)")
    parser.add_argument("-d", dest="dataset", help="dataset id or name, to find the run in $nnUNet_results")
    parser.add_argument("-tr", dest="trainer", default="nnUNetTrainerBarlowKD", help="KD trainer of the run")
    parser.add_argument("-p", dest="plans", default="nnUNetPlans", help="plans identifier")
    parser.add_argument("-c", dest="configuration", default="3d_fullres", help="configuration")
    parser.add_argument("-f", dest="folds", nargs="+", help="folds to export (default: all with a checkpoint)")
    parser.add_argument("--checkpoint", default="checkpoint_final.pth", help="checkpoint file name in each fold")
    parser.add_argument("-o", dest="out", help="output model folder (default: TRAINER_teacher__PLANS__CONFIG)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from nnunet_kd.errors import ConfigurationError
    from nnunet_kd.paths import nnunet_results
    from nnunet_kd.trainers.export_teacher import export_teacher

    if args.model_folder:
        folder = Path(args.model_folder)
    elif args.dataset:
        from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

        try:
            name = maybe_convert_to_dataset_name(args.dataset)
        except RuntimeError as e:
            raise ConfigurationError(str(e).splitlines()[0]) from None
        folder = nnunet_results() / name / f"{args.trainer}__{args.plans}__{args.configuration}"
    else:
        raise ConfigurationError("give the KD run's model folder or -d DATASET")
    out = export_teacher(folder, args.out, args.folds, args.checkpoint, args.overwrite)
    print(f"teacher written to {out}")
    return 0
