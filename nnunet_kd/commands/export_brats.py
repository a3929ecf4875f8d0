"""``nnunet-kd export-brats``: predicted canonical labels -> a BraTS release's label convention."""

from __future__ import annotations

import argparse

NAME = "export-brats"
HELP = "map predicted labels (ED 1, NCR 2, ET 3) back to a BraTS release's convention for submission"
DESCRIPTION = (
    "Reads every .nii.gz in PRED_DIR (e.g. nnUNetv2_predict's output) and writes it under the same name into\n"
    "OUT with the labels of the chosen release: 2018-2021 NCR 1, ED 2, ET 4; 2023 (and 2023-ssa/-men/-met/-ped)\n"
    "NETC 1, SNFH 2, ET 3; 2024-gli NETC 1, SNFH 2, ET 3, RC 4 (predictions of a post-treatment dataset);\n"
    "2024-ped ET 1, NET 2, CC 3, ED 4 (predictions of a BraTS 2024 paediatric dataset, ED 1, NET 2, ET 3, CC 4);\n"
    "msd edema 1, non-enhancing 2, enhancing 3. Geometry is kept. OUT must not exist or be empty;\n"
    "it is written only if every file converts."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from nnunet_kd.brats import CONVENTIONS

    parser.add_argument("pred_dir", metavar="PRED_DIR", help="folder of predictions in the Dataset137 convention")
    parser.add_argument("out", metavar="OUT", help="output folder (created)")
    parser.add_argument("--convention", required=True, choices=[c for c in CONVENTIONS if not c.startswith("dataset137")],
                        help="target release convention (2021, 2023, 2024-gli, 2024-ped, msd …; 2018-2020 equal 2021)")
    parser.add_argument("--num-processes", type=int, default=1, metavar="N",
                        help="worker processes (default: 1)")


def run(args: argparse.Namespace) -> int:
    import sys

    from nnunet_kd.dataset_conversion.export import export_brats

    files = export_brats(args.pred_dir, args.out, args.convention, num_processes=args.num_processes,
                         progress=sys.stderr.isatty())
    print(f"wrote {len(files)} file(s) in the BraTS {args.convention} convention to {args.out}")
    return 0
