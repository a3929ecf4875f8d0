"""Careful NIfTI reading shared by conversion, evaluation and distillation: complete files, one-line errors, geometry.

SimpleITK reads a NIfTI file whose voxel data end early without an error, and its error messages span several
lines. Every command that reads user NIfTI files (``convert-brats``, ``select-modalities``, ``export-brats``,
``evaluate``, ``distill-dataset``) therefore reads them through this module, so that a truncated or damaged file
is refused the same way everywhere (one :class:`~nnunet_kd.errors.InputDataError` line naming case, role and
file) and two volumes are compared with the same geometry tolerances.

Public API: :func:`read_image`, :func:`check_complete`, :func:`copy_checked_nifti_gz`, :class:`ImageInfo`,
:func:`geometry_mismatch`, :func:`one_line`, :data:`ORIGIN_ATOL`, :data:`DIRECTION_ATOL`.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from nnunet_kd.errors import InputDataError

#: Geometry tolerances between the files of one case (mm for origin; direction cosines are unit-less).
ORIGIN_ATOL = 1e-2
DIRECTION_ATOL = 1e-4


def one_line(error: BaseException) -> str:
    """A one-line description of ``error`` (SimpleITK messages span several lines; keep the informative one)."""
    lines = [ln.strip() for ln in str(error).splitlines() if ln.strip()]
    text = lines[-1] if lines else type(error).__name__
    for prefix in ("sitk::ERROR:", "ERROR:"):
        if text.startswith(prefix):
            text = text[len(prefix):].strip()
    return text


def _nifti_data_end(path: Path) -> int:
    """Byte offset where the voxel data of a NIfTI file end (header offset + voxel bytes), from its header."""
    import nibabel as nib

    proxy = nib.load(str(path)).dataobj  # the image's header copy reports offset 0; its data proxy knows
    return int(proxy.offset) + int(np.prod(proxy.shape, dtype=np.int64)) * np.dtype(proxy.dtype).itemsize


def _gzip_length(path: Path) -> int:
    """Decompressed length of a gzip file; raises ValueError when the stream is truncated or corrupt."""
    total = 0
    with open(path, "rb") as f:
        while True:
            dec = zlib.decompressobj(31)
            while not dec.eof:
                chunk = dec.unconsumed_tail or f.read(1 << 16)
                if not chunk:
                    raise ValueError("compressed data end early (truncated file)")
                total += len(dec.decompress(chunk, 1 << 24))
            rest = dec.unused_data + f.read(1)
            if not rest.strip(b"\0"):
                return total
            f.seek(-len(rest), os.SEEK_CUR)  # another gzip member follows


def check_complete(path: Path) -> None:
    """Raise ValueError when a NIfTI file is shorter than its header says (SimpleITK reads such files silently)."""
    end = _nifti_data_end(path)
    size = _gzip_length(path) if path.name.endswith(".gz") else path.stat().st_size
    if size < end:
        raise ValueError(f"file holds {size} bytes of data, its header needs {end} (truncated file)")


def read_image(path: Path, case_id: str, role: str) -> sitk.Image:
    """Read a NIfTI file fully and check it is complete; any failure is one :class:`InputDataError` line."""
    if not path.is_file():
        raise InputDataError(f"case {case_id}: missing {role} file {path}")
    try:
        image = sitk.ReadImage(str(path))
        check_complete(path)
    except Exception as e:  # SimpleITK, nibabel, zlib and OS errors alike
        raise InputDataError(f"case {case_id}: cannot read {role} file {path}: {one_line(e)}") from None
    return image


class ImageInfo:
    """The header of a NIfTI file as SimpleITK reads it (size, spacing, origin, direction, components), no voxels.

    Offers the ``sitk.Image`` getters that :func:`geometry_mismatch` and the converter's checks use.
    """

    def __init__(self, reader: sitk.ImageFileReader):
        self._size = tuple(reader.GetSize())
        self._spacing = tuple(reader.GetSpacing())
        self._origin = tuple(reader.GetOrigin())
        self._direction = tuple(reader.GetDirection())
        self._components = int(reader.GetNumberOfComponents())

    def GetSize(self) -> tuple[int, ...]:  # noqa: N802 (the sitk.Image names)
        return self._size

    def GetSpacing(self) -> tuple[float, ...]:  # noqa: N802
        return self._spacing

    def GetOrigin(self) -> tuple[float, ...]:  # noqa: N802
        return self._origin

    def GetDirection(self) -> tuple[float, ...]:  # noqa: N802
        return self._direction

    def GetDimension(self) -> int:  # noqa: N802
        return len(self._size)

    def GetNumberOfComponentsPerPixel(self) -> int:  # noqa: N802
        return self._components


def _gunzip(data: bytes) -> bytes:
    """The decompressed content of gzip ``data`` (all members); ValueError when it is truncated or corrupt."""
    parts = []
    rest = data
    while True:
        dec = zlib.decompressobj(31)
        try:
            parts.append(dec.decompress(rest))
        except zlib.error as e:
            raise ValueError(f"corrupt compressed data ({e})") from None
        if not dec.eof:
            raise ValueError("compressed data end early (truncated file)")
        rest = dec.unused_data
        if not rest.strip(b"\0"):
            return parts[0] if len(parts) == 1 else b"".join(parts)


def _nifti_end_from_bytes(raw: bytes) -> int:
    """Byte offset where the voxel data end, from the NIfTI-1 or NIfTI-2 header at the start of ``raw``."""
    import io

    import nibabel as nib

    header = None
    for klass in (nib.Nifti1Header, nib.Nifti2Header):
        try:
            header = klass.from_fileobj(io.BytesIO(raw[:1024]))
            break
        except Exception:  # wrong sizeof_hdr for this version: try the next
            continue
    if header is None:
        raise ValueError("not a NIfTI-1 or NIfTI-2 file")
    n_voxels = int(np.prod(header.get_data_shape(), dtype=np.int64))
    return int(header.get_data_offset()) + n_voxels * header.get_data_dtype().itemsize


def copy_checked_nifti_gz(path: Path, dst: Path, case_id: str, role: str) -> ImageInfo:
    """Copy a ``.nii.gz`` file byte for byte to ``dst`` after checking it, reading the file once.

    The compressed bytes are read once: SimpleITK reads the header (geometry, as :func:`read_image` would give
    it), the bytes are decompressed in memory to check the stream is complete and holds all the voxels the
    header announces, and the same bytes are written to ``dst``. Costs one decompression, about a bare read
    (:func:`read_image` plus a copy decompressed twice). Any failure is one :class:`InputDataError` line.
    """
    if not path.is_file():
        raise InputDataError(f"case {case_id}: missing {role} file {path}")
    try:
        data = path.read_bytes()
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        reader.ReadImageInformation()
        info = ImageInfo(reader)
        raw = _gunzip(data)
        end = _nifti_end_from_bytes(raw)
        if len(raw) < end:
            raise ValueError(f"file holds {len(raw)} bytes of data, its header needs {end} (truncated file)")
        del raw
    except Exception as e:  # SimpleITK, nibabel, zlib and OS errors alike
        raise InputDataError(f"case {case_id}: cannot read {role} file {path}: {one_line(e)}") from None
    dst.write_bytes(data)
    return info


def geometry_mismatch(a: sitk.Image, b: sitk.Image) -> str | None:
    """How the voxel grids of ``a`` and ``b`` differ (shape, spacing, origin, direction), or None if they agree."""
    if a.GetSize() != b.GetSize():
        return f"shape {_shape(b)} differs from {_shape(a)}"
    if not np.allclose(a.GetSpacing(), b.GetSpacing()):  # nnU-Net's own tolerance
        return f"spacing {_fmt(b.GetSpacing())} differs from {_fmt(a.GetSpacing())}"
    if not np.allclose(a.GetOrigin(), b.GetOrigin(), rtol=0, atol=ORIGIN_ATOL):
        return f"origin {_fmt(b.GetOrigin())} differs from {_fmt(a.GetOrigin())}"
    if not np.allclose(a.GetDirection(), b.GetDirection(), rtol=0, atol=DIRECTION_ATOL):
        return f"direction {_fmt(b.GetDirection())} differs from {_fmt(a.GetDirection())}"
    return None


def _shape(image: sitk.Image) -> str:
    """Shape as nnU-Net and numpy show it (z, y, x)."""
    return "x".join(str(s) for s in reversed(image.GetSize()))


def _fmt(values: Sequence[float]) -> str:
    return "(" + ", ".join(f"{v:g}" for v in values) + ")"
