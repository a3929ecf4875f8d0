"""Map predicted canonical labels (ED 1, NCR 2, ET 3) back to a BraTS release's convention for submission.

Public API: :func:`export_brats`.

Every NIfTI file (``.nii.gz`` or ``.nii``) in the prediction folder (as written by ``nnUNetv2_predict``; other
files such as ``plans.json`` are ignored) is written under the same name into the output folder with the
release's label values (2018-2021: NCR 1, ED 2, ET 4; 2023: NETC 1, SNFH 2, ET 3; msd: edema 1,
non-enhancing 2, enhancing 3), as uint8 with the prediction's geometry. The output folder is built next to its
final place and renamed at the end; it must not exist yet or be empty. When the prediction folder has a
dataset.json naming its dataset kind (``nnUNetv2_predict`` copies it), a convention of another canonical label
table is refused: label 4 is the resection cavity of GLI-POST but the cystic component of PED-2024.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from nnunet_kd.brats import get_convention, get_kind, kind_of_dataset_json
from nnunet_kd.dataset_conversion._io import require_new_folder, run_jobs, write_image
from nnunet_kd.errors import InputDataError, NnunetKDError
from nnunet_kd.nifti import one_line, read_image
from nnunet_kd.safe_io import staged_folder

_ENDINGS = (".nii.gz", ".nii")


def prediction_files(pred_dir: Path) -> list[Path]:
    """The NIfTI files of a prediction folder, sorted by name (hidden files ignored)."""
    if not pred_dir.is_dir():
        raise NnunetKDError(f"prediction folder {pred_dir} does not exist or is not a folder")
    files = sorted(p for p in pred_dir.iterdir()
                   if p.is_file() and not p.name.startswith(".") and p.name.endswith(_ENDINGS))
    if not files:
        raise NnunetKDError(f"no prediction files (*.nii.gz) in {pred_dir}")
    return files


def export_brats(pred_dir: str | Path, out_dir: str | Path, convention: str, num_processes: int = 1,
                 progress: bool = True) -> list[Path]:
    """Write every prediction of ``pred_dir`` into ``out_dir`` in the label convention ``convention``.

    ``convention`` is a key of :data:`nnunet_kd.brats.CONVENTIONS` (``2021``, ``2023``, ``msd`` …). Returns the
    written files (in their final place). A label other than 0-3 raises :class:`InputDataError` naming the file;
    nothing is written then.
    """
    pred_dir, out_dir = Path(pred_dir), Path(out_dir)
    conv = get_convention(convention)
    files = prediction_files(pred_dir)
    if (pred_dir / "dataset.json").is_file():
        from nnunet_kd.safe_io import read_json_object

        kind = kind_of_dataset_json(read_json_object(pred_dir / "dataset.json", "dataset.json"))
        if kind is not None and kind.canonical_convention != get_kind(conv.kind).canonical_convention:
            raise NnunetKDError(f"{pred_dir / 'dataset.json'} says these are {kind.name} predictions "
                                f"({get_convention(kind.canonical_convention).description}); the {conv.name} "
                                f"convention is for {conv.kind} data")

    if out_dir.resolve() == pred_dir.resolve():
        raise NnunetKDError(f"output folder {out_dir} must differ from the prediction folder")
    require_new_folder(out_dir, "output folder")
    replace = [out_dir] if out_dir.exists() else []
    with staged_folder(out_dir, replace=replace) as tmp:
        run_jobs(export_file, [(f, tmp / f.name, conv.name) for f in files], num_processes, progress,
                 desc=f"exporting to BraTS {conv.name}")
    return [out_dir / f.name for f in files]


def export_file(src: Path, dst: Path, convention: str) -> None:
    """Relabel one canonical prediction file into ``convention``; errors are one line naming the file."""
    case_id = src.name[: -len(".nii.gz")] if src.name.endswith(".nii.gz") else src.stem
    try:
        image = read_image(src, case_id, "prediction")
        if image.GetNumberOfComponentsPerPixel() != 1:
            raise InputDataError(f"case {case_id}: prediction file {src} has vector voxels, expected labels")
        array = sitk.GetArrayFromImage(image)
        try:
            labels = get_convention(convention).from_canonical_array(array)
        except ValueError as e:
            raise InputDataError(f"case {case_id}: prediction file {src}: {e}") from None
        out = sitk.GetImageFromArray(labels.astype(np.uint8, copy=False))
        out.CopyInformation(image)
        write_image(out, dst)
    except NnunetKDError:
        raise
    except Exception as e:
        raise InputDataError(f"case {case_id}: prediction file {src}: {type(e).__name__}: {one_line(e)}") from None

