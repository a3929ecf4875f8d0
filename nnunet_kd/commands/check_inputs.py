"""``nnunet-kd check-inputs``: do the files of every case match what a model takes, before ``nnUNetv2_predict``?

Stock nnU-Net only counts the files of a case, so T1 + T2 handed to a T1ce + FLAIR student (two files, the right
count) is predicted without a word from the wrong modalities. This command compares each case's ``_000X``
suffixes with the model's (:mod:`nnunet_kd.subsets.input_files`) and names every case that differs.
"""

from __future__ import annotations

import argparse

NAME = "check-inputs"
HELP = "check that every case of a prediction input folder has exactly the files (modalities) a model takes"
DESCRIPTION = (
    "Compares the _000X files of every case in INPUT_DIR with the files the model in MODEL_FOLDER takes (a\n"
    "student's reduced dataset.json lists them, e.g. T1ce (_0001), FLAIR (_0003)). nnUNetv2_predict only counts\n"
    "files, so run this first. Exit 0 with one line when every case fits; exit 2 with one line naming every case\n"
    "with missing, extra or wrong files (and every file not named CASE_XXXX<file_ending>). Example:\n"
    "    nnunet-kd check-inputs $nnUNet_results/Dataset137_BraTS2021/nnUNetTrainerBarlowKD__nnUNetPlans__3d_fullres \\\n"
    "        imagesTs_flair_t1ce/"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model_folder", metavar="MODEL_FOLDER",
                        help="trained model folder (TRAINER__PLANS__CONFIGURATION, holds dataset.json)")
    parser.add_argument("input_dir", metavar="INPUT_DIR", help="folder you will give nnUNetv2_predict -i")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from nnunet_kd.subsets.input_files import case_suffixes, check_input_folder

    expected = check_input_folder(Path(args.model_folder), Path(args.input_dir), shown=None)
    cases, _ = case_suffixes(Path(args.input_dir), expected.file_ending)
    print(f"OK: all {len(cases)} case(s) in {args.input_dir} have exactly the files the model takes: "
          f"{expected.describe()}")
    return 0
