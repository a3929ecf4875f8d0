"""``nnunet-kd convert-brats``: a BraTS release -> ``$nnUNet_raw/DatasetXXX_NAME`` (Dataset137 convention)."""

from __future__ import annotations

import argparse

NAME = "convert-brats"
HELP = ("convert a BraTS release (2018-2021, 2023 GLI/SSA/MEN/MET/PED, 2024 post-treatment GLI and PED, MSD) into an "
        "nnU-Net raw dataset")
DESCRIPTION = (
    "Writes $nnUNet_raw/DatasetXXX_NAME with imagesTr/CASE_0000..0003.nii.gz (T1, T1ce, T2, FLAIR),\n"
    "labelsTr/CASE.nii.gz (background 0, edema 1, necrosis 2, enhancing 3; resection cavity 4 for 2024-gli,\n"
    "cystic component 4 for 2024-ped) and a region-based dataset.json (WT/TC/ET, plus RC for 2024-gli, CC for\n"
    "2024-ped; its kind in brats_kind).\n"
    "Cases without a segmentation go to imagesTs/.\n\n"
    "SRC is a release folder (e.g. MICCAI_BraTS2020_TrainingData, a folder of BraTS2021_XXXXX cases,\n"
    "Task01_BrainTumour) or a folder holding such releases, whose cases are then merged.\n"
    "Layouts: 2018/2019 (HGG/ and LGG/), 2020 (BraTS20_Training_XXX, .nii files), 2021 (BraTS2021_XXXXX),\n"
    "2023 (BraTS-GLI-XXXXX-XXX), 2023-ssa/-men/-met/-ped (BraTS-SSA-/MEN-/MET-/PED-XXXXX-XXX),\n"
    "2024-gli (post-treatment glioma, named like 2023 GLI; auto-detected when a folder name says 2024),\n"
    "2024-ped (paediatric, named like 2023 PED: a folder name must say 2023 or 2024, else pass --layout),\n"
    "msd (imagesTr/BRATS_XXX.nii.gz 4D). Sources and label tables: docs/datasets.md.\n\n"
    "Every file is checked (readable, complete, same grid, known labels); on any error nothing is written.\n"
    "A progress bar is shown when stderr is a terminal."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("src", metavar="SRC", help="BraTS release folder, or a folder holding release folders")
    parser.add_argument("-d", "--dataset-id", type=int, required=True, metavar="ID",
                        help="nnU-Net dataset id (1-999), written as DatasetXXX")
    parser.add_argument("-n", "--name", default="BraTS", help="dataset name after the id (default: BraTS)")
    from nnunet_kd.dataset_conversion.layouts import LAYOUTS

    parser.add_argument("--layout", default="auto", choices=["auto", *LAYOUTS],
                        help="release layout (default: auto-detect)")
    parser.add_argument("--num-processes", type=int, default=1, metavar="N",
                        help="worker processes converting cases in parallel (default: 1)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing dataset with the same id once the new one is complete")


def run(args: argparse.Namespace) -> int:
    import sys

    from nnunet_kd.dataset_conversion.convert import convert_brats
    from nnunet_kd.safe_io import read_json_object

    folder = convert_brats(args.src, args.dataset_id, name=args.name, layout=args.layout,
                           num_processes=args.num_processes, overwrite=args.overwrite,
                           progress=sys.stderr.isatty())
    meta = read_json_object(folder / "dataset.json", "dataset.json")
    print(f"wrote {folder}: {meta['numTraining']} training case(s) in imagesTr/labelsTr, "
          f"{meta['numTest']} test case(s) in imagesTs (source layout {meta['source_layout']})")
    return 0
