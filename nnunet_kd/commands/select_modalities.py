"""``nnunet-kd select-modalities``: copy only some channels of an nnU-Net images folder."""

from __future__ import annotations

import argparse

NAME = "select-modalities"
HELP = "copy only the chosen modalities (e.g. FLAIR,T1ce) of each case of an nnU-Net images folder"
DESCRIPTION = (
    "Copies CASE_000X files of the kept modalities from SRC_IMAGES to OUT, keeping their names, so that\n"
    "nnUNetv2_predict feeds them to a reduced-channel (student) model in ascending channel order.\n"
    "Modalities are given by name (T1, T1ce, T2, FLAIR or aliases such as t1c, t2f). Channel numbers come\n"
    "from --dataset-json (the dataset.json describing SRC_IMAGES) or else the canonical order\n"
    "T1 _0000, T1ce _0001, T2 _0002, FLAIR _0003."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("src_images", metavar="SRC_IMAGES", help="nnU-Net images folder (e.g. imagesTs)")
    parser.add_argument("out", metavar="OUT", help="output folder (created)")
    parser.add_argument("--keep", required=True, metavar="MODALITIES",
                        help="comma-separated modality names to keep, e.g. FLAIR,T1ce")
    parser.add_argument("--dataset-json", metavar="PATH", default=None,
                        help="dataset.json whose channel_names describe SRC_IMAGES")


def run(args: argparse.Namespace) -> int:
    import sys

    from nnunet_kd.dataset_conversion.select import channel_indices, select_modalities

    files = select_modalities(args.src_images, args.out, args.keep, dataset_json=args.dataset_json,
                              progress=sys.stderr.isatty())
    kept = ", ".join(f"{m} _{i:04d}" for m, i in channel_indices(args.keep, args.dataset_json).items())
    print(f"wrote {len(files)} file(s) ({kept}) to {args.out}")
    return 0
