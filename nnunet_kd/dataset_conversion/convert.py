"""Write a BraTS release as an nnU-Net raw dataset in the Dataset137 convention, atomically.

Public API: :func:`convert_brats`, :func:`dataset_folder_name`, :func:`existing_datasets`.

Output ``$nnUNet_raw/DatasetXXX_NAME``:

* ``imagesTr/CASE_0000..0003.nii.gz`` = T1, T1ce, T2, FLAIR of each case with a segmentation,
  ``imagesTs/`` the same for cases without one;
* ``labelsTr/CASE.nii.gz``: uint8 labels background 0, edema 1, necrosis 2, enhancing 3;
* ``labelsTr/CASE.nii.gz`` of post-treatment data (``2024-gli``) also hold the resection cavity 4, those of
  BraTS 2024 paediatric data (``2024-ped``) the cystic component 4;
* ``dataset.json`` from :func:`nnunet_kd.brats.make_dataset_json` (the regions of the release's dataset kind:
  WT/TC/ET, plus RC for ``2024-gli``, CC for ``2024-ped``; ``brats_kind``), plus ``source_layout``, ``source_label_convention`` and
  ``numTest`` (nnU-Net ignores extra keys).

Every case is read fully and checked: readable and complete files, 3D volumes of equal shape, spacing, origin
and direction across modalities and segmentation, only the release's label values. Every ``.nii.gz`` file is
read and decompressed once (:mod:`nnunet_kd.nifti`). Images keep their voxel values, type and geometry
(``.nii.gz`` sources are copied byte for byte, checked from the same bytes: SimpleITK reads the header, the
stream is decompressed in memory to check it is complete; ``.nii`` and MSD 4D files are read fully and
re-written through SimpleITK). Segmentations are mapped to canonical labels and compressed again, unless the
release's labels are already canonical and uint8 (MSD), whose files are copied as they are. The dataset is
built in ``.DatasetXXX_NAME.nnunet-kd-tmp-<pid>`` next to the target and renamed into place at the end; any
error removes it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from nnunet_kd.brats import MODALITIES, RESECTION_CAVITY, channel_suffix, get_convention, make_dataset_json
from nnunet_kd.dataset_conversion._io import run_jobs, write_image
from nnunet_kd.dataset_conversion.layouts import BratsCase, list_cases
from nnunet_kd.errors import ConfigurationError, InputDataError, NnunetKDError
from nnunet_kd.nifti import ImageInfo, copy_checked_nifti_gz, geometry_mismatch, one_line, read_image, read_voxels_once
from nnunet_kd.safe_io import staged_folder

FILE_ENDING = ".nii.gz"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def dataset_folder_name(dataset_id: int, name: str) -> str:
    """``DatasetXXX_NAME`` for a dataset id in 1..999 and a name of letters, digits, ``_``, ``.`` and ``-``."""
    if isinstance(dataset_id, bool) or not isinstance(dataset_id, (int, np.integer)) or not 1 <= dataset_id <= 999:
        raise ConfigurationError(f"dataset id must be an integer from 1 to 999, got {dataset_id!r}")
    if not _NAME.fullmatch(name or ""):
        raise ConfigurationError(f"dataset name '{name}' is not allowed: use letters, digits, '_', '.' or '-' "
                                 f"(starting with a letter or digit)")
    return f"Dataset{int(dataset_id):03d}_{name}"


def existing_datasets(raw_root: Path, dataset_id: int) -> list[Path]:
    """Folders ``DatasetXXX_*`` in ``raw_root`` that already use ``dataset_id``."""
    if not raw_root.is_dir():
        return []
    prefix = f"Dataset{int(dataset_id):03d}_"
    return sorted(p for p in raw_root.iterdir() if p.name.startswith(prefix))


def convert_brats(src: str | Path, dataset_id: int, name: str = "BraTS", layout: str = "auto",
                  num_processes: int = 1, overwrite: bool = False, raw_root: str | Path | None = None,
                  progress: bool = True) -> Path:
    """Convert the BraTS release in ``src`` into ``raw_root/DatasetXXX_NAME`` and return that folder.

    ``raw_root`` defaults to ``$nnUNet_raw``. ``layout`` is ``auto`` or one of ``layouts.LAYOUTS``. An existing
    dataset with the same id (any name) is an error unless ``overwrite``, which replaces it once the new one is
    complete. Without ``raw_root``, an id that ``$nnUNet_preprocessed`` or ``$nnUNet_results`` use under another
    name is refused (:func:`nnunet_kd.paths.check_dataset_id_free`). Bad input raises :class:`InputDataError` / :class:`NnunetKDError` with one line naming the case
    and file; nothing is left behind in that case. With ``num_processes > 1`` cases are converted in a spawn
    pool, so a calling script needs the usual ``if __name__ == "__main__":`` guard.
    """
    from nnunet_kd.paths import check_dataset_id_free, nnunet_raw

    folder_name = dataset_folder_name(dataset_id, name)
    root = Path(raw_root) if raw_root is not None else nnunet_raw()
    if raw_root is None:  # the nnU-Net folders of this environment: one name per id across all three
        check_dataset_id_free(folder_name)
    if root.exists() and not root.is_dir():
        raise ConfigurationError(f"nnUNet_raw {root} is not a folder")
    target = root / folder_name
    existing = existing_datasets(root, dataset_id)
    if existing and not overwrite:
        raise NnunetKDError(f"dataset id {dataset_id:03d} already exists: {', '.join(str(p) for p in existing)}; "
                            f"pass --overwrite to replace it or choose another id")
    if num_processes < 1:
        raise NnunetKDError(f"--num-processes must be at least 1, got {num_processes}")

    cases = list_cases(src, layout)
    source_layout = cases[0].convention
    with staged_folder(target, replace=existing) as tmp:
        for sub in ("imagesTr", "labelsTr", "imagesTs"):
            (tmp / sub).mkdir()
        run_jobs(convert_case, [(case, tmp) for case in cases], num_processes, progress,
                 desc=f"converting BraTS {source_layout}")
        n_train = sum(case.seg is not None for case in cases)
        if n_train == len(cases):
            (tmp / "imagesTs").rmdir()
        meta = make_dataset_json(n_train, name, FILE_ENDING,
                                 description=f"BraTS {source_layout} converted by nnunet-kd (Dataset137 convention)",
                                 kind=get_convention(source_layout).kind)
        meta["numTest"] = len(cases) - n_train
        meta["source_layout"] = source_layout
        meta["source_label_convention"] = get_convention(source_layout).description
        (tmp / "dataset.json").write_text(json.dumps(meta, indent=4) + "\n")
    return target


def convert_case(case: BratsCase, out: Path) -> bool:
    """Check one case and write it under ``out`` (imagesTr/labelsTr or imagesTs); True if it has labels.

    Runs in worker processes; every failure becomes one :class:`InputDataError` line naming case and file.
    """
    try:
        return _convert_case(case, out)
    except NnunetKDError:
        raise
    except Exception as e:
        raise InputDataError(f"case {case.case_id}: {type(e).__name__}: {one_line(e)}") from None


def _convert_case(case: BratsCase, out: Path) -> bool:
    images_dir = out / ("imagesTr" if case.seg is not None else "imagesTs")
    dst = {m: images_dir / f"{case.case_id}{channel_suffix(i)}{FILE_ENDING}" for i, m in enumerate(MODALITIES)}
    # .nii.gz images are checked and copied in one read (header geometry + complete stream); the others are
    # read fully and re-written compressed. Files written before a later check fails go with the staged folder.
    copied = set()
    if case.is_4d:
        volumes = _split_4d(case)
    else:
        volumes = {}
        for m in MODALITIES:
            src = case.images[m]
            if src.name.endswith(".nii.gz"):
                volumes[m] = copy_checked_nifti_gz(src, dst[m], case.case_id, m)
                copied.add(m)
            else:
                volumes[m] = read_image(src, case.case_id, m)
    reference_name = MODALITIES[0]
    reference = volumes[reference_name]
    for modality in MODALITIES:
        image = volumes[modality]
        path = case.images[modality]
        if image.GetDimension() != 3:
            raise InputDataError(f"case {case.case_id}: {modality} file {path} is {image.GetDimension()}D, "
                                 f"expected a 3D volume")
        problem = geometry_mismatch(reference, image)
        if problem:
            raise InputDataError(f"case {case.case_id}: {modality} file {path}: {problem} of "
                                 f"{reference_name} file {case.images[reference_name]}")
        if image.GetNumberOfComponentsPerPixel() != 1:
            raise InputDataError(f"case {case.case_id}: {modality} file {path} has vector voxels, expected scalars")

    if case.seg is not None:
        _write_seg(case, case.seg, reference, out / "labelsTr" / f"{case.case_id}{FILE_ENDING}")
    for modality in MODALITIES:
        if modality not in copied:
            write_image(volumes[modality], dst[modality])
    return case.seg is not None


def _split_4d(case: BratsCase) -> dict[str, sitk.Image]:
    """The 3D channels of an MSD 4D file, each with the file's 3D spacing, origin and direction."""
    path = case.images[MODALITIES[0]]
    image = read_image(path, case.case_id, "4D image")
    if image.GetDimension() != 4 or image.GetSize()[3] != len(MODALITIES):
        size = "x".join(str(s) for s in image.GetSize())
        raise InputDataError(f"case {case.case_id}: image file {path} has size {size}, expected a 4D volume "
                             f"with {len(MODALITIES)} channels")
    array = sitk.GetArrayFromImage(image)  # (channel, z, y, x)
    direction = np.asarray(image.GetDirection()).reshape(4, 4)[:3, :3]
    volumes = {}
    for modality in MODALITIES:
        channel = sitk.GetImageFromArray(array[case.channel_index[modality]])
        channel.SetSpacing(image.GetSpacing()[:3])
        channel.SetOrigin(image.GetOrigin()[:3])
        channel.SetDirection(tuple(direction.ravel()))
        volumes[modality] = channel
    return volumes


def _write_seg(case: BratsCase, seg_path: Path, reference: sitk.Image | ImageInfo, dst: Path) -> None:
    """Check the segmentation and write its labels in the canonical convention, uint8, compressed.

    A ``.nii.gz`` file is read and decompressed once (:func:`read_voxels_once`); when the release's labels are
    already canonical (:attr:`~nnunet_kd.brats.LabelConvention.is_identity`, MSD) and stored as uint8 its bytes
    are copied as they are, otherwise the mapped labels are compressed again.
    """
    if seg_path.name.endswith(".nii.gz"):
        seg, array, data = read_voxels_once(seg_path, case.case_id, "segmentation")
    else:
        seg = read_image(seg_path, case.case_id, "segmentation")
        array, data = sitk.GetArrayFromImage(seg), None
    if seg.GetDimension() != 3 or seg.GetNumberOfComponentsPerPixel() != 1:
        raise InputDataError(f"case {case.case_id}: segmentation file {seg_path} is not a 3D scalar volume")
    problem = geometry_mismatch(reference, seg)
    if problem:
        raise InputDataError(f"case {case.case_id}: segmentation file {seg_path}: {problem} of the images "
                             f"({case.images[MODALITIES[0]]})")
    convention = get_convention(case.convention)
    try:
        labels = convention.to_canonical_array(array)
    except ValueError as e:
        hint = ""
        if case.convention == "2023" and (array == RESECTION_CAVITY).any():
            hint = "; label 4 is the resection cavity of BraTS 2024 post-treatment data: pass --layout 2024-gli"
        elif case.convention == "2023-ped" and (array == 4).any():
            hint = "; label 4 is the edema of BraTS 2024 PED data (ET 1, NET 2, CC 3, ED 4): pass --layout 2024-ped"
        raise InputDataError(f"case {case.case_id}: segmentation file {seg_path}: {e}{hint}") from None
    if data is not None and convention.is_identity and array.dtype == np.uint8:
        dst.write_bytes(data)
        return
    out = sitk.GetImageFromArray(labels)
    out.SetSpacing(seg.GetSpacing())
    out.SetOrigin(seg.GetOrigin())
    out.SetDirection(seg.GetDirection())
    write_image(out, dst)
