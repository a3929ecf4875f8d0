"""``nnunet-kd synth``: write a synthetic BraTS release folder (MNI152 anatomy with painted tumours)."""

from __future__ import annotations

import argparse

NAME = "synth"
HELP = "write synthetic BraTS cases (MNI152 anatomy, painted tumours) in a BraTS release layout"
DESCRIPTION = (
    "Writes N synthetic multi-modal cases (T1, T1ce, T2, FLAIR + seg) laid out like a BraTS release:\n"
    "  --layout 2021: OUT/BraTS2021_00000/BraTS2021_00000_{t1,t1ce,t2,flair,seg}.nii.gz (labels NCR 1, ED 2, ET 4)\n"
    "  --layout 2023: OUT/BraTS-GLI-00000-000/BraTS-GLI-00000-000-{t1n,t1c,t2w,t2f,seg}.nii.gz "
    "(NETC 1, SNFH 2, ET 3)\n"
    "  --layout 2023-ssa / 2023-men / 2023-met / 2023-ped: as 2023 with BraTS-SSA-/MEN-/MET-/PED- case ids\n"
    "  --layout 2024-gli: BraTS-GLI-00000-100 post-treatment cases with a resection cavity (NETC 1, SNFH 2,\n"
    "    ET 3, RC 4); convert-brats recognises them when a folder name contains 2024 (or --layout 2024-gli)\n"
    "  --layout 2024-ped: BraTS-PED-00000-000 paediatric 2024 cases with a cystic component (ET 1, NET 2, CC 3,\n"
    "    ED 4); convert-brats needs a folder name containing 2024 (or --layout 2024-ped)\n"
    "Anatomy is the MNI152 2009a template shipped with nilearn; each case adds a random deformation and a\n"
    "tumour (necrotic core, enhancing rim, edema along white matter). Deterministic for a given --seed.\n"
    "Example:  nnunet-kd synth /tmp/brats_synth --cases 8 --unlabeled 2 --shape 64"
)


#: ``nnunet_kd.synthetic.RELEASE_LAYOUTS`` (not imported here: building the parser stays light; a test checks they agree).
LAYOUTS: tuple[str, ...] = ("2021", "2023", "2023-ssa", "2023-men", "2023-met", "2023-ped", "2024-gli", "2024-ped")


def parse_shape(text: str) -> tuple[int, int, int]:
    """``"64"`` -> (64, 64, 64); ``"64,56,48"`` -> (64, 56, 48)."""
    parts = [p.strip() for p in text.replace("x", ",").split(",") if p.strip()]
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not an integer or three comma-separated integers") from None
    if len(values) == 1:
        values = values * 3
    if len(values) != 3:
        raise argparse.ArgumentTypeError(f"'{text}' must be one integer or three comma-separated integers")
    return values[0], values[1], values[2]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out", help="output folder (must not exist or be empty, unless --overwrite)")
    parser.add_argument("--cases", type=int, required=True, metavar="N", help="number of labelled cases")
    parser.add_argument("--layout", choices=LAYOUTS, default="2021",
                        help="BraTS release naming and label convention (default: 2021)")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the whole folder (default: 0)")
    parser.add_argument("--shape", type=parse_shape, default=(64, 64, 64), metavar="X[,Y,Z]",
                        help="grid size, e.g. 64 or 64,64,48 (default: 64)")
    parser.add_argument("--spacing", type=float, default=None, metavar="MM",
                        help="isotropic voxel size in mm, the grid centred on the brain (e.g. --shape 240,240,155 "
                             "--spacing 1 for BraTS geometry); default: the brain's bounding box fills the grid")
    parser.add_argument("--unlabeled", type=int, default=0, metavar="K",
                        help="extra cases without a seg file, numbered after the labelled ones (default: 0)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing non-empty output folder")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from nnunet_kd.synthetic import write_brats_folder

    ids = write_brats_folder(args.out, args.cases, layout=args.layout, seed=args.seed, shape=args.shape,
                             unlabeled=args.unlabeled, progress=not args.no_progress, overwrite=args.overwrite,
                             spacing=args.spacing)
    print(f"wrote {len(ids)} synthetic cases ({args.unlabeled} unlabelled, BraTS {args.layout} layout, "
          f"shape {'x'.join(map(str, args.shape))}"
          + (f", {args.spacing:g} mm" if args.spacing is not None else "") + f") to {args.out}")
    return 0
