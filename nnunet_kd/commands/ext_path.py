"""``nnunet-kd ext-path``: print the folder that nnU-Net's ``nnUNet_extTrainer`` must list."""

from __future__ import annotations

import argparse

NAME = "ext-path"
HELP = "print the trainer folder for nnU-Net's nnUNet_extTrainer variable"
DESCRIPTION = (
    "Prints the folder holding nnunet-kd's trainer modules. Make nnU-Net find the trainers with\n"
    "    export nnUNet_extTrainer=$(nnunet-kd ext-path)\n"
    "(append it with ':' if you already use other external trainer folders)."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--export", action="store_true",
                        help="print a complete `export nnUNet_extTrainer=...` line instead of the bare folder")


def run(args: argparse.Namespace) -> int:
    from nnunet_kd.paths import EXT_TRAINER, trainer_registry_folder

    folder = trainer_registry_folder()
    print(f"export {EXT_TRAINER}={folder}" if args.export else folder)
    return 0
