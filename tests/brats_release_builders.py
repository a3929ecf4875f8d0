"""Tiny synthetic BraTS releases in every supported layout, for the dataset_conversion tests.

Every modality is filled with a constant code (T1 1, T1ce 2, T2 3, FLAIR 4, plus 10 x case index) so channel
order is checkable after conversion; every file has the same non-trivial spacing, origin and direction.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from nnunet_kd.brats import MODALITIES, get_convention

SHAPE = (10, 9, 8)  # numpy order (z, y, x); SimpleITK size (8, 9, 10)
SPACING = (0.9, 1.1, 1.3)
ORIGIN = (-12.5, 30.25, 7.0)
DIRECTION = (0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0)  # a 90 degree rotation about z
CODES = {"T1": 1, "T1ce": 2, "T2": 3, "FLAIR": 4}

LEGACY_FILES = {"T1": "t1", "T1ce": "t1ce", "T2": "t2", "FLAIR": "flair"}
GLI_FILES = {"T1": "t1n", "T1ce": "t1c", "T2": "t2w", "FLAIR": "t2f"}
MSD_ORDER = ("FLAIR", "T1", "T1ce", "T2")  # Task01_BrainTumour: FLAIR, T1w, t1gd, T2w


def code(modality: str, case_index: int) -> float:
    """The constant voxel value of ``modality`` in case number ``case_index``."""
    return CODES[modality] + 10 * case_index


def canonical_seg(shape: tuple[int, int, int] = SHAPE) -> np.ndarray:
    """A label map holding background and all three canonical labels (ED 1, NCR 2, ET 3)."""
    seg = np.zeros(shape, dtype=np.uint8)
    seg[2:8, 2:7, 1:7] = 1
    seg[3:7, 3:6, 2:6] = 2
    seg[4:6, 4:5, 3:5] = 3
    return seg


def release_seg(convention: str, shape: tuple[int, int, int] = SHAPE) -> np.ndarray:
    """:func:`canonical_seg` in the label values of ``convention``."""
    return get_convention(convention).from_canonical_array(canonical_seg(shape))


def to_image(array: np.ndarray, spacing=SPACING, origin=ORIGIN, direction=DIRECTION) -> sitk.Image:
    image = sitk.GetImageFromArray(array, isVector=False)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    image.SetDirection(direction)
    return image


def write(path: Path, array: np.ndarray, **geometry) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(to_image(array, **geometry), str(path), path.name.endswith(".gz"))
    return path


def modality_volume(modality: str, case_index: int, dtype=np.float32, shape=SHAPE) -> np.ndarray:
    return np.full(shape, code(modality, case_index), dtype=dtype)


def write_folder_case(folder: Path, case_id: str, sep: str, names: dict[str, str], convention: str,
                      case_index: int, ending: str = ".nii.gz", labeled: bool = True, seg_name: str | None = None,
                      dtype=np.float32) -> Path:
    """One case folder ``folder/case_id`` with ``<case><sep><name><ending>`` files."""
    case_dir = folder / case_id
    for modality in MODALITIES:
        write(case_dir / f"{case_id}{sep}{names[modality]}{ending}", modality_volume(modality, case_index, dtype))
    if labeled:
        write(case_dir / (seg_name or f"{case_id}{sep}seg{ending}"), release_seg(convention))
    return case_dir


def make_2021(root: Path, n: int = 2, unlabeled: int = 0) -> list[str]:
    ids = [f"BraTS2021_{i:05d}" for i in range(n + unlabeled)]
    for i, cid in enumerate(ids):
        write_folder_case(root, cid, "_", LEGACY_FILES, "2021", i, labeled=i < n)
    return ids


def make_2023(root: Path, n: int = 2, unlabeled: int = 0) -> list[str]:
    ids = [f"BraTS-GLI-{i:05d}-000" for i in range(n + unlabeled)]
    for i, cid in enumerate(ids):
        write_folder_case(root, cid, "-", GLI_FILES, "2023", i, labeled=i < n)
    return ids


def make_2023_challenge(root: Path, challenge: str, n: int = 2) -> list[str]:
    """``root/ASNR-MICCAI-BraTS2023-<C>-Challenge-TrainingData`` with ``BraTS-<C>-XXXXX-000`` cases (SSA, MEN, …)."""
    release = root / f"ASNR-MICCAI-BraTS2023-{challenge}-Challenge-TrainingData"
    ids = [f"BraTS-{challenge}-{i:05d}-000" for i in range(n)]
    for i, cid in enumerate(ids):
        write_folder_case(release, cid, "-", GLI_FILES, f"2023-{challenge.lower()}", i)
    return ids


def post_treatment_seg(shape: tuple[int, int, int] = SHAPE) -> np.ndarray:
    """:func:`canonical_seg` plus a resection cavity (canonical label 4) that touches no tumour voxel."""
    seg = canonical_seg(shape)
    seg[8:10, 7:9, 0:2] = 4
    return seg


def make_2024_gli(root: Path, n: int = 2, release_name: str = "BraTS2024-BraTS-GLI-TrainingData") -> list[str]:
    """``root/<release_name>`` with post-treatment ``BraTS-GLI-XXXXX-100`` cases (labels NETC 1, SNFH 2, ET 3, RC 4)."""
    release = root / release_name
    ids = [f"BraTS-GLI-{i:05d}-100" for i in range(n)]
    for i, cid in enumerate(ids):
        write_folder_case(release, cid, "-", GLI_FILES, "2024-gli", i, labeled=False)
        write(release / cid / f"{cid}-seg.nii.gz", get_convention("2024-gli").from_canonical_array(post_treatment_seg()))
    return ids


def make_2020(root: Path) -> list[str]:
    """``root/MICCAI_BraTS2020_TrainingData`` with .nii files (int16), name_mapping.csv and the misnamed case 355."""
    release = root / "MICCAI_BraTS2020_TrainingData"
    ids = ["BraTS20_Training_001", "BraTS20_Training_355"]
    write_folder_case(release, ids[0], "_", LEGACY_FILES, "2020", 0, ending=".nii", dtype=np.int16)
    write_folder_case(release, ids[1], "_", LEGACY_FILES, "2020", 1, ending=".nii", dtype=np.int16,
                      seg_name="W39_1998.09.19_Segm.nii")
    (release / "name_mapping.csv").write_text("Grade,BraTS_2020_subject_ID\nHGG,BraTS20_Training_001\n")
    return ids


def make_legacy(root: Path, year: str, release_name: str | None = None) -> list[str]:
    """A 2018/2019 training release with ``HGG/`` and ``LGG/`` (case prefix Brats18_ or BraTS19_)."""
    prefix = {"2018": "Brats18", "2019": "BraTS19", "other": "Case"}[year]
    release = root / (release_name or f"MICCAI_BraTS_{year}_Data_Training")
    ids = [f"{prefix}_2013_10_1", f"{prefix}_TCIA10_103_1"]
    write_folder_case(release / "HGG", ids[0], "_", LEGACY_FILES, "2019", 0)
    write_folder_case(release / "LGG", ids[1], "_", LEGACY_FILES, "2019", 1)
    return ids


def make_msd(root: Path, n_train: int = 2, n_test: int = 1, with_json: bool = True,
             order: tuple[str, ...] = MSD_ORDER) -> list[str]:
    """``root/Task01_BrainTumour`` with 4D images, labels, imagesTs, macOS ``._*`` junk and dataset.json."""
    task = root / "Task01_BrainTumour"
    ids = [f"BRATS_{i + 1:03d}" for i in range(n_train + n_test)]
    geometry = {"spacing": SPACING + (1.0,), "origin": ORIGIN + (0.0,), "direction": _direction_4d()}
    for i, cid in enumerate(ids):
        volume = np.stack([modality_volume(m, i) for m in order])  # (c, z, y, x) -> 4D image, 4th dim = channel
        folder = "imagesTr" if i < n_train else "imagesTs"
        write(task / folder / f"{cid}.nii.gz", volume, **geometry)
        (task / folder / f"._{cid}.nii.gz").write_bytes(b"\x00\x05\x16\x07 mac resource fork")
        if i < n_train:
            write(task / "labelsTr" / f"{cid}.nii.gz", release_seg("msd"))
            (task / "labelsTr" / f"._{cid}.nii.gz").write_bytes(b"junk")
    if with_json:
        names = {"FLAIR": "FLAIR", "T1": "T1w", "T1ce": "t1gd", "T2": "T2w"}
        meta = {"name": "BRATS", "modality": {str(i): names[m] for i, m in enumerate(order)},
                "labels": {"0": "background", "1": "edema", "2": "non-enhancing tumor", "3": "enhancing tumour"},
                "numTraining": n_train, "numTest": n_test}
        (task / "dataset.json").write_text(json.dumps(meta))
    return ids


def _direction_4d() -> tuple[float, ...]:
    d = np.eye(4)
    d[:3, :3] = np.asarray(DIRECTION).reshape(3, 3)
    return tuple(d.ravel())


#: layout -> (builder writing into a parent folder, the release folder it creates or None for the parent itself)
BUILDERS = {
    "2018": lambda root: make_legacy(root, "2018"),
    "2019": lambda root: make_legacy(root, "2019"),
    "2020": make_2020,
    "2021": lambda root: make_2021(root),
    "2023": lambda root: make_2023(root),
    "msd": lambda root: make_msd(root),
    **{f"2023-{c.lower()}": (lambda root, c=c: make_2023_challenge(root, c)) for c in ("SSA", "MEN", "MET", "PED")},
}
