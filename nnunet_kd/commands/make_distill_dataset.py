"""``nnunet-kd make-distill-dataset``: labelled dataset + pseudo-labelled cases -> new nnU-Net raw dataset."""

from __future__ import annotations

import argparse
from pathlib import Path

NAME = "make-distill-dataset"
HELP = "build a raw dataset of the labelled cases plus the pseudo-labelled cases of `nnunet-kd pseudolabel`"
DESCRIPTION = (
    "Writes $nnUNet_raw/DatasetYYY_NAME with every labelled case of SOURCE and every pseudo-labelled case\n"
    "of PSEUDO. Each pseudo-label is checked (the file pseudolabels.json describes, complete, integer values\n"
    "of the dataset's labels, its image's geometry) and copied; images are symlinked (copied with --copy).\n"
    "dataset.json lists the pseudo-labelled cases under 'nnunet_kd_pseudo_labelled'; nnUNetTrainerDistill\n"
    "(and its architecture variants) keeps them out of validation.\n\n"
    "Clean cross-validation: give one PSEUDO folder per fold, each made by members of that fold only\n"
    "(nnunet-kd pseudolabel --fold K -o pseudo_foldK ...). Their cases become CASE__plfoldK and the student\n"
    "of fold K trains on fold K's pseudo-labels only. With a single PSEUDO every fold trains on it, and the\n"
    "trainer warns when its members include folds other than the one it trains.\n\n"
    "Then plan and preprocess the new dataset as usual:\n"
    "    nnUNetv2_plan_and_preprocess -d YYY -c 3d_fullres\n"
    "or, to give the student exactly the teachers' plans (same patch size and network):\n"
    "    nnUNetv2_plan_and_preprocess -d YYY --no_pp\n"
    "    nnUNetv2_move_plans_between_datasets -s SOURCE_ID -t YYY -sp nnUNetPlans -tp nnUNetPlans\n"
    "    nnUNetv2_preprocess -d YYY -c 3d_fullres\n"
    "and train:  nnUNetv2_train YYY 3d_fullres 0 -tr nnUNetTrainerResidualUNetDistill"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-s", "--source", required=True,
                        help="labelled raw dataset: id (517), name (Dataset517_X) or folder")
    parser.add_argument("-p", "--pseudolabels", type=Path, required=True, nargs="+", metavar="PSEUDO",
                        help="output folder(s) of `nnunet-kd pseudolabel` (with pseudolabels.json); several: one "
                             "per fold, each from members of that fold only (pseudolabel --fold K)")
    parser.add_argument("-d", "--dataset-id", type=int, required=True, help="id of the new dataset (1..999)")
    parser.add_argument("-n", "--name", default=None, help="name of the new dataset (default: SOURCE name + Distill)")
    parser.add_argument("--images", type=Path, default=None,
                        help="folder of the unlabelled images (default: the one pseudolabel recorded)")
    parser.add_argument("--copy", action="store_true",
                        help="copy the images instead of symlinking them (labels are always copied)")
    parser.add_argument("--include-empty", action="store_true",
                        help="also use cases whose pseudo-label is empty (no tumour)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing dataset with this id")


def run(args: argparse.Namespace) -> int:
    import json

    from nnunet_kd.distillation.distill_dataset import PROVENANCE_KEY, PSEUDO_LABELLED_KEY, build_distill_dataset

    target = build_distill_dataset(args.source, args.pseudolabels, args.dataset_id, name=args.name,
                                   images=args.images, copy=args.copy, include_empty=args.include_empty,
                                   overwrite=args.overwrite)
    meta = json.loads((target / "dataset.json").read_text())
    info = meta[PROVENANCE_KEY]
    print(f"wrote {target}: {info['labelled_cases']} labelled + {len(meta[PSEUDO_LABELLED_KEY])} pseudo-labelled "
          f"cases ({info['files']})")
    sets = meta.get("nnunet_kd_pseudo_label_sets", [])
    if len(sets) > 1:
        print("per-fold pseudo-labels: " + ", ".join(f"fold {s['fold']}: {len(s['cases'])} cases" for s in sets))
    if info["left_out"]:
        left = ", ".join(f"{c} ({s})" for c, s in sorted(info["left_out"].items()))
        print(f"left out: {left}")
    return 0
