"""Copy only some modalities of an nnU-Net images folder, e.g. to feed a student trained on FLAIR and T1ce.

Public API: :func:`select_modalities`, :func:`channel_indices`.

Modalities are chosen by name (any spelling :func:`nnunet_kd.brats.canonical_modality` knows). Channel numbers
come from the ``channel_names`` of a dataset.json describing the *source* folder when one is given (e.g.
``$nnUNet_raw/DatasetXXX/dataset.json``), else from the canonical order T1 ``_0000``, T1ce ``_0001``, T2
``_0002``, FLAIR ``_0003``. Kept files keep their names, so their ``_000X`` suffixes sort in ascending channel
order, which is the order nnU-Net feeds them to a reduced-channel model. The output folder is built next to its
final place and renamed at the end; it must not exist yet or be empty.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Sequence
from pathlib import Path

from nnunet_kd.brats import MODALITIES, UnknownModalityError, canonical_modality, channel_suffix, parse_modality_list
from nnunet_kd.dataset_conversion._io import require_new_folder
from nnunet_kd.errors import InputDataError, NnunetKDError
from nnunet_kd.nifti import check_complete, one_line
from nnunet_kd.safe_io import read_json_object, staged_folder


def channel_indices(keep: str | Sequence[str], dataset_json: str | Path | None = None) -> dict[str, int]:
    """Canonical modality -> channel index of each kept modality, in ascending channel order."""
    names = parse_modality_list(keep)
    if dataset_json is None:
        available = {m: i for i, m in enumerate(MODALITIES)}
        where = "the canonical channels (T1, T1ce, T2, FLAIR)"
    else:
        available = _channels_of(Path(dataset_json))
        where = f"channel_names of {dataset_json}"
    missing = [m for m in names if m not in available]
    if missing:
        listing = ", ".join(f"{i}: {m}" for m, i in sorted(available.items(), key=lambda kv: kv[1]))
        raise NnunetKDError(f"modality {', '.join(missing)} not among the {where} ({listing})")
    return dict(sorted(((m, available[m]) for m in names), key=lambda kv: kv[1]))


def _read_json(path: Path) -> dict:
    return read_json_object(path, "dataset.json")


def _channels_of(path: Path) -> dict[str, int]:
    meta = _read_json(path)
    names = meta.get("channel_names") or meta.get("modality")
    if not isinstance(names, dict) or not names:
        raise InputDataError(f"dataset.json {path} has no channel_names entry")
    channels: dict[str, int] = {}
    for index, name in names.items():
        try:
            modality, idx = canonical_modality(str(name)), int(index)
        except UnknownModalityError:
            continue  # a channel that is no BraTS modality cannot be asked for by name
        except ValueError:
            raise InputDataError(f"dataset.json {path}: channel index '{index}' is not a number") from None
        if modality in channels:
            raise InputDataError(f"dataset.json {path}: {modality} is named twice in channel_names")
        channels[modality] = idx
    return channels


def _check_complete(path: Path) -> None:
    """Refuse a NIfTI file that is shorter than its header says (nnU-Net would read it silently as garbage)."""
    if not path.name.endswith((".nii.gz", ".nii")):
        return
    try:
        check_complete(path)
    except Exception as e:  # nibabel, zlib and OS errors of a damaged file alike
        case = re.sub(r"_\d{4}\.nii(\.gz)?$", "", path.name)
        raise InputDataError(f"case {case}: cannot copy {path}: {one_line(e)}") from None


def select_modalities(src_images: str | Path, out_dir: str | Path, keep: str | Sequence[str],
                      dataset_json: str | Path | None = None, progress: bool = True) -> list[Path]:
    """Copy the ``keep`` channels of every case in ``src_images`` into ``out_dir``; return the written files.

    Raises :class:`NnunetKDError` for an unknown modality name or one the dataset.json does not list, and
    :class:`InputDataError` naming the case and file when a case lacks one of the kept channels or a NIfTI file is
    truncated (shorter than its header says); nothing is written then.
    """
    from tqdm import tqdm

    src, out = Path(src_images), Path(out_dir)
    kept = channel_indices(keep, dataset_json)
    ending = ".nii.gz"
    if dataset_json is not None:
        ending = str(_read_json(Path(dataset_json)).get("file_ending", ending))
    if not src.is_dir():
        raise NnunetKDError(f"images folder {src} does not exist or is not a folder")
    pattern = re.compile(r"(?P<case>.+)_(?P<channel>\d{4})" + re.escape(ending))
    cases: dict[str, set[int]] = {}
    for path in src.iterdir():
        m = pattern.fullmatch(path.name)
        if m and path.is_file() and not path.name.startswith("."):
            cases.setdefault(m["case"], set()).add(int(m["channel"]))
    if not cases:
        raise NnunetKDError(f"no nnU-Net image files (CASE_XXXX{ending}) in {src}")
    for case, channels in sorted(cases.items()):
        for modality, index in kept.items():
            if index not in channels:
                name = f"{case}{channel_suffix(index)}{ending}"
                raise InputDataError(f"case {case}: missing {modality} file {src / name}")
    if out.resolve() == src.resolve():
        raise NnunetKDError(f"output folder {out} must differ from the images folder")
    require_new_folder(out, "output folder")
    names = [f"{case}{channel_suffix(i)}{ending}" for case in sorted(cases) for i in kept.values()]
    with staged_folder(out, replace=[out] if out.exists() else []) as tmp:
        for name in tqdm(names, desc=f"copying {', '.join(kept)}", unit="file", disable=not progress):
            _check_complete(src / name)
            shutil.copyfile(src / name, tmp / name)
    return [out / name for name in names]
