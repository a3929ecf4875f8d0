"""Recognise a BraTS release layout and list its cases (pure: reads folder listings, writes nothing).

Public API: :class:`BratsCase`, :data:`LAYOUTS`, :func:`detect_layout`, :func:`list_cases`.

Recognised layouts (file names are matched case-sensitively; ``.nii`` is accepted wherever ``.nii.gz`` is):

``2018`` / ``2019``
    ``HGG/`` and/or ``LGG/`` sub-folders holding case folders ``<case>/<case>_{t1,t1ce,t2,flair,seg}.nii.gz``,
    or case folders ``Brats18_*`` / ``BraTS19_*`` directly (validation data). Labels NCR/NET 1, ED 2, ET 4.
    Rule telling the two apart (they share a label convention, so only the recorded name differs): case folders
    named ``Brats18_*`` mean 2018, ``BraTS19_*`` mean 2019 (case-insensitive); otherwise the release folder's
    name containing ``2018`` means 2018, anything else 2019.
``2020``
    Case folders ``BraTS20_{Training,Validation,Testing}_XXX`` (usually inside ``MICCAI_BraTS2020_TrainingData``)
    with ``<case>_{t1,t1ce,t2,flair,seg}.nii[.gz]``; ``name_mapping.csv`` / ``survival_info.csv`` are ignored.
    Case 355's segmentation is misnamed ``W39_1998.09.19_Segm.nii``; the rule below finds it.
``2021``
    Case folders ``BraTS2021_XXXXX`` with ``<case>_{t1,t1ce,t2,flair,seg}.nii.gz``. Labels NCR 1, ED 2, ET 4.
``2023``
    BraTS 2023 glioma (GLI): case folders ``BraTS-GLI-XXXXX-XXX`` with ``<case>-{t1n,t1c,t2w,t2f,seg}.nii.gz``.
    Labels NETC 1, SNFH 2, ET 3.
``2023-ssa``, ``2023-men``, ``2023-met``, ``2023-ped``
    The other BraTS 2023 challenges, named like GLI with their own prefix: ``BraTS-SSA-XXXXX-XXX``,
    ``BraTS-MEN-…``, ``BraTS-MET-…``, ``BraTS-PED-…`` (same file suffixes and labels NETC 1, SNFH 2, ET 3).
``2024-gli``
    BraTS 2024 post-treatment glioma: named exactly like GLI 2023, labels NETC 1, SNFH 2, ET 3 and resection
    cavity RC 4. Rule telling it from GLI 2023 (names cannot): going up from each release folder to ``SRC``'s
    parent, the first folder name containing ``2024`` or ``2023`` decides (the official archive is
    ``BraTS2024-BraTS-GLI-TrainingData/training_data1_v2``); no year found means 2023. A GLI 2023 conversion
    meeting label 4 stops with a hint to pass ``--layout 2024-gli``.
``2024-ped``
    BraTS 2024 paediatric tumours: named exactly like PED 2023 (``BraTS-PED-XXXXX-XXX``), labels ET 1,
    non-enhancing tumour NET 2, cystic component CC 3, edema ED 4 (the 2023 values mean other tissues). The
    same folder-name rule tells it from PED 2023 (the official archives are
    ``BraTS-PEDs2024_Training/BraTS2024-PED-Challenge-TrainingData`` and
    ``ASNR-MICCAI-BraTS2023-PED-Challenge-TrainingData``), but with no year in any folder name a PED release is
    refused (pass ``--layout 2023-ped`` or ``2024-ped``): read with the wrong year, labels 1-3 would silently
    mean other tissues.
``msd``
    Medical Segmentation Decathlon Task01_BrainTumour: ``imagesTr/BRATS_XXX.nii.gz`` (one 4D file per case),
    ``labelsTr/BRATS_XXX.nii.gz`` (edema 1, non-enhancing 2, enhancing 3) and ``imagesTs/`` without labels.
    The 4D channel order is taken from the release's ``dataset.json`` ``modality`` entry when present, else
    FLAIR, T1w, t1gd, T2w. macOS ``._*`` files are ignored.

``SRC`` may be the release folder itself or its parent: when ``SRC`` holds no cases directly, every immediate
sub-folder that is a release is used and their cases are merged (e.g. a folder holding
``MICCAI_BraTS2020_TrainingData`` and ``MICCAI_BraTS2020_ValidationData``). All releases found that way must
have the same layout; case identifiers must be unique. Hidden entries (names starting with ``.``) are ignored
everywhere. In case-folder layouts, when ``<case>_seg`` is missing, the one other NIfTI file of the case folder
whose name contains ``seg`` (case-insensitive) is the segmentation (several such files are an error). A case
without a segmentation is a test case (written to ``imagesTs``). The case id written is the case folder's name
(MSD: the file name without ending).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from nnunet_kd.brats import MODALITIES, UnknownModalityError, canonical_modality
from nnunet_kd.errors import InputDataError, NnunetKDError
from nnunet_kd.safe_io import read_json_object

#: Layout names accepted by :func:`list_cases` (besides ``"auto"``), each also a key of ``brats.CONVENTIONS``.
LAYOUTS: tuple[str, ...] = ("2018", "2019", "2020", "2021", "2023", "2023-ssa", "2023-men", "2023-met", "2023-ped",
                             "2024-gli", "2024-ped", "msd")

_NIFTI_ENDINGS = (".nii.gz", ".nii")

_SUFFIXES_2023 = {"T1": "t1n", "T1ce": "t1c", "T2": "t2w", "FLAIR": "t2f", "seg": "seg"}
#: Per case-folder layout: regex of a case folder name, separator and file suffix of each modality and seg.
_FOLDER_LAYOUTS: dict[str, tuple[re.Pattern[str], str, dict[str, str]]] = {
    "legacy": (re.compile(r"(?i)brats(18|19)_.+"), "_",
               {"T1": "t1", "T1ce": "t1ce", "T2": "t2", "FLAIR": "flair", "seg": "seg"}),
    "2020": (re.compile(r"BraTS20_(Training|Validation|Testing)_\d+"), "_",
             {"T1": "t1", "T1ce": "t1ce", "T2": "t2", "FLAIR": "flair", "seg": "seg"}),
    "2021": (re.compile(r"BraTS2021_\d+"), "_",
             {"T1": "t1", "T1ce": "t1ce", "T2": "t2", "FLAIR": "flair", "seg": "seg"}),
    "2023": (re.compile(r"BraTS-GLI-\d+-\d+"), "-", _SUFFIXES_2023),
    **{f"2023-{c.lower()}": (re.compile(rf"BraTS-{c}-\d+-\d+"), "-", _SUFFIXES_2023)
       for c in ("SSA", "MEN", "MET", "PED")},
}
_GRADE_FOLDERS = ("HGG", "LGG")
#: BraTS 2024 MEN-RT case folders (``BraTS-MEN-RT-0002-1/BraTS-MEN-RT-0002-1_{t1c,gtv}.nii.gz``): refused.
_MEN_RT_CASE = re.compile(r"BraTS-MEN-RT-\d+-\d+")
_MSD_CASE = re.compile(r"BRATS_\d+")
#: MSD Task01 channel order of the 4D images when its dataset.json does not say otherwise.
MSD_DEFAULT_CHANNELS: tuple[str, ...] = ("FLAIR", "T1", "T1ce", "T2")


@dataclass(frozen=True)
class BratsCase:
    """One case of a BraTS release, ready to be written in the Dataset137 convention.

    ``images`` maps each canonical modality to its file; for MSD all four map to the same 4D file and
    ``channel_index`` gives each modality's index along the 4th dimension (empty for 3D files).
    """

    case_id: str
    images: dict[str, Path]
    seg: Path | None
    convention: str
    channel_index: Mapping[str, int] = field(default_factory=dict)

    @property
    def is_4d(self) -> bool:
        """True when all modalities live in one 4D file (MSD)."""
        return bool(self.channel_index)


# --------------------------------------------------------------------------------------------------- helpers
def _visible(folder: Path) -> list[Path]:
    try:
        return sorted(p for p in folder.iterdir() if not p.name.startswith("."))
    except OSError as e:
        raise InputDataError(f"cannot list folder {folder}: {e.strerror or e}") from None


def _subdirs(folder: Path) -> list[Path]:
    return [p for p in _visible(folder) if p.is_dir()]


def _is_nifti(path: Path) -> bool:
    return path.name.endswith(_NIFTI_ENDINGS) and not path.name.startswith(".")


def _strip_nifti(name: str) -> str:
    for ending in _NIFTI_ENDINGS:
        if name.endswith(ending):
            return name[: -len(ending)]
    return name


def _msd_images(folder: Path) -> list[Path]:
    return [p for p in _visible(folder) if p.is_file() and _is_nifti(p) and _MSD_CASE.fullmatch(_strip_nifti(p.name))]


def _kinds_in(folder: Path) -> set[str]:
    """Layout kinds (``legacy``, ``2020``, ``2021``, ``2023``, ``msd``) whose cases sit directly in ``folder``."""
    kinds: set[str] = set()
    subdirs = _subdirs(folder)
    names = {p.name for p in subdirs}
    if any(g in names for g in _GRADE_FOLDERS):
        kinds.add("legacy")
    for p in subdirs:
        for kind, (pattern, _, _) in _FOLDER_LAYOUTS.items():
            if pattern.fullmatch(p.name):
                kinds.add(kind)
    if any(n in names and _msd_images(folder / n) for n in ("imagesTr", "imagesTs")):
        kinds.add("msd")
    return kinds


#: Layouts named like a 2023 one (case-folder kind -> (2023 layout, 2024 layout)); the folder-name year decides.
_SAME_NAMING_2024 = {"2023": ("2023", "2024-gli"), "2023-ped": ("2023-ped", "2024-ped")}


def _kind(layout: str) -> str:
    for kind, (_, layout_2024) in _SAME_NAMING_2024.items():
        if layout == layout_2024:
            return kind  # same naming as the 2023 release
    return "legacy" if layout in ("2018", "2019") else layout


def _release_year(src: Path, releases: list[Path], kind: str) -> str:
    """The 2023 or 2024 layout of GLI- or PED-named releases, by the documented folder-name rule."""
    layout_2023, layout_2024 = _SAME_NAMING_2024[kind]
    years: set[str | None] = set()
    stop = src.resolve().parent
    for release in releases:
        year = None
        release = release.resolve()
        for folder in [release, *release.parents]:
            if "2024" in folder.name or "2023" in folder.name:
                year = layout_2024 if "2024" in folder.name else layout_2023
                break
            if folder == stop:
                break
        years.add(year)
    if None in years and kind == "2023-ped":
        raise NnunetKDError(f"{src}: cannot tell BraTS 2023 PED (labels NETC 1, SNFH 2, ET 3) from BraTS 2024 PED "
                            f"(ET 1, NET 2, CC 3, ED 4): no folder name from the release up to {src.name} has a "
                            f"year; pass --layout 2023-ped or --layout 2024-ped")
    years = {layout_2023 if y is None else y for y in years}  # GLI: no year means 2023 (label 4 is refused)
    if len(years) > 1:
        raise NnunetKDError(f"{src} holds both {layout_2023} and {layout_2024} releases (by their folder "
                            f"names); convert them separately or pass --layout")
    return years.pop()


def _single_kind(folder: Path, wanted: str | None) -> str | None:
    """The one layout kind of the cases directly in ``folder`` (restricted to ``wanted``), None if it has none."""
    kinds = _kinds_in(folder)
    if wanted is not None:
        kinds &= {wanted}
    if len(kinds) > 1:
        raise NnunetKDError(f"{folder} mixes cases of several layouts ({', '.join(sorted(kinds))}); "
                            f"pass --layout or separate them")
    return kinds.pop() if kinds else None


def _releases(src: Path, layout: str) -> tuple[str, list[Path]]:
    """The layout kind and the release folders to read for ``src`` (itself, or release sub-folders)."""
    if not src.exists():
        raise NnunetKDError(f"source folder {src} does not exist")
    if not src.is_dir():
        raise NnunetKDError(f"source {src} is not a folder; pass a BraTS release folder or its parent")
    wanted = None if layout == "auto" else _kind(layout)
    own = _single_kind(src, wanted)
    if own is not None:
        return own, [src]
    found: dict[Path, str] = {}
    for sub in _subdirs(src):
        kind = _single_kind(sub, wanted)
        if kind is not None:
            found[sub] = kind
    if not found:
        for folder in [src, *_subdirs(src)]:
            if any(_MEN_RT_CASE.fullmatch(p.name) for p in _subdirs(folder)):
                raise NnunetKDError(f"{folder} holds BraTS 2024 MEN-RT cases (radiotherapy meningioma: one T1c image "
                                    f"and one GTV label per case), which nnunet-kd does not support: it needs T1, "
                                    f"T1ce, T2 and FLAIR")
        what = f"BraTS {layout} cases" if wanted else "BraTS release"
        raise NnunetKDError(
            f"no {what} found in {src} (nor in its sub-folders); expected case folders such as "
            f"BraTS2021_00000/, BraTS-GLI-00000-000/ (or -SSA-, -MEN-, -MET-, -PED-), BraTS20_Training_001/, HGG/ and LGG/ folders, or an MSD "
            f"Task01_BrainTumour folder with imagesTr/")
    kinds = sorted(set(found.values()))
    if len(kinds) > 1:
        listing = ", ".join(f"{p.name} ({k})" for p, k in found.items())
        raise NnunetKDError(f"{src} holds releases of different layouts: {listing}; pass one of them as SRC")
    return kinds[0], sorted(found)


def _legacy_year(releases: list[Path]) -> str:
    """2018 or 2019, by the documented rule (case-folder prefix, else release folder name)."""
    years: set[str] = set()
    for release in releases:
        for folder in _legacy_case_folders(release):
            m = _FOLDER_LAYOUTS["legacy"][0].fullmatch(folder.name)
            if m:
                years.add("20" + m.group(1))
    if len(years) == 1:
        return years.pop()
    if not years and any("2018" in r.name for r in releases):
        return "2018"
    return "2019"


def _legacy_case_folders(release: Path) -> list[Path]:
    folders = []
    for grade in _GRADE_FOLDERS:
        if (release / grade).is_dir():
            folders.extend(_subdirs(release / grade))
    pattern = _FOLDER_LAYOUTS["legacy"][0]
    folders.extend(p for p in _subdirs(release) if pattern.fullmatch(p.name))
    return folders


def _case_folders(kind: str, release: Path) -> list[Path]:
    if kind == "legacy":
        return _legacy_case_folders(release)
    pattern = _FOLDER_LAYOUTS[kind][0]
    return [p for p in _subdirs(release) if pattern.fullmatch(p.name)]


def _find_file(folder: Path, stem: str) -> Path | None:
    for ending in _NIFTI_ENDINGS:
        candidate = folder / f"{stem}{ending}"
        if candidate.is_file():
            return candidate
    return None


def _folder_case(kind: str, folder: Path, convention: str) -> BratsCase:
    _, sep, suffixes = _FOLDER_LAYOUTS[kind]
    case_id = folder.name
    images: dict[str, Path] = {}
    for modality in MODALITIES:
        stem = f"{case_id}{sep}{suffixes[modality]}"
        found = _find_file(folder, stem)
        if found is None:
            raise InputDataError(f"case {case_id}: missing {modality} file {folder / stem}.nii.gz (or .nii)")
        images[modality] = found
    seg = _find_file(folder, f"{case_id}{sep}{suffixes['seg']}")
    if seg is None:
        used = set(images.values())
        candidates = [p for p in _visible(folder)
                      if p.is_file() and _is_nifti(p) and p not in used and "seg" in p.name.lower()]
        if len(candidates) > 1:
            raise InputDataError(f"case {case_id}: several possible segmentation files in {folder}: "
                                 f"{', '.join(p.name for p in candidates)}")
        seg = candidates[0] if candidates else None
    return BratsCase(case_id, images, seg, convention)


def _msd_channel_order(release: Path) -> dict[str, int]:
    path = release / "dataset.json"
    if not path.is_file():
        return {m: i for i, m in enumerate(MSD_DEFAULT_CHANNELS)}
    meta = read_json_object(path, "MSD dataset.json")
    modality = meta.get("modality") or meta.get("channel_names") if isinstance(meta, dict) else None
    if not modality:
        return {m: i for i, m in enumerate(MSD_DEFAULT_CHANNELS)}
    try:
        order = {canonical_modality(str(name)): int(index) for index, name in modality.items()}
    except (UnknownModalityError, ValueError, AttributeError) as e:
        raise InputDataError(f"MSD dataset.json {path}: cannot read its 'modality' entry: {e}") from None
    if sorted(order) != sorted(MODALITIES) or sorted(order.values()) != list(range(len(MODALITIES))):
        raise InputDataError(f"MSD dataset.json {path}: 'modality' must name T1, T1ce, T2 and FLAIR once each "
                             f"as channels 0-3, got {modality}")
    return order


def _msd_cases(release: Path) -> list[BratsCase]:
    channels = _msd_channel_order(release)
    cases: list[BratsCase] = []
    labels_dir = release / "labelsTr"
    train = _msd_images(release / "imagesTr") if (release / "imagesTr").is_dir() else []
    train_ids = {_strip_nifti(p.name) for p in train}
    for image in train:
        case_id = _strip_nifti(image.name)
        seg = _find_file(labels_dir, case_id) if labels_dir.is_dir() else None
        if seg is None:
            raise InputDataError(f"case {case_id}: missing label file {labels_dir / image.name} for {image}")
        cases.append(BratsCase(case_id, {m: image for m in MODALITIES}, seg, "msd", dict(channels)))
    if labels_dir.is_dir():
        for label in _msd_images(labels_dir):
            if _strip_nifti(label.name) not in train_ids:
                raise InputDataError(f"case {_strip_nifti(label.name)}: label file {label} has no image in "
                                     f"{release / 'imagesTr'}")
    if (release / "imagesTs").is_dir():
        for image in _msd_images(release / "imagesTs"):
            cases.append(BratsCase(_strip_nifti(image.name), {m: image for m in MODALITIES}, None, "msd",
                                   dict(channels)))
    return cases


# ---------------------------------------------------------------------------------------------------- public
def detect_layout(src: str | Path) -> str:
    """The layout (one of :data:`LAYOUTS`) of the BraTS release in ``src`` or in its sub-folders.

    Raises :class:`NnunetKDError` when no known layout is found or several different ones are.
    """
    src = Path(src)
    kind, releases = _releases(src, "auto")
    if kind in _SAME_NAMING_2024:
        return _release_year(src, releases, kind)
    return _legacy_year(releases) if kind == "legacy" else kind


def list_cases(src: str | Path, layout: str = "auto") -> list[BratsCase]:
    """All cases of the release in ``src`` (see the module docstring), sorted by case id.

    ``layout`` ``"auto"`` detects it; naming one only looks for that layout (``2018`` and ``2019`` also fix the
    recorded release year). Checks that every modality file exists (:class:`InputDataError` naming the case and
    the missing file), that case ids are unique, and that there is at least one case. File contents are not
    read here.
    """
    src = Path(src)
    if layout != "auto" and layout not in LAYOUTS:
        raise NnunetKDError(f"unknown layout '{layout}'; expected auto or one of {', '.join(LAYOUTS)}")
    kind, releases = _releases(src, layout)
    if kind == "legacy":
        convention = layout if layout in ("2018", "2019") else _legacy_year(releases)
    elif kind in _SAME_NAMING_2024:
        convention = layout if layout in _SAME_NAMING_2024[kind] else _release_year(src, releases, kind)
    else:
        convention = kind
    cases: list[BratsCase] = []
    for release in releases:
        if kind == "msd":
            cases.extend(_msd_cases(release))
        else:
            cases.extend(_folder_case(kind, folder, convention) for folder in _case_folders(kind, release))
    if not cases:
        raise NnunetKDError(f"no cases found in {src} (layout {convention})")
    seen: dict[str, BratsCase] = {}
    for case in cases:
        if case.case_id in seen:
            first, second = seen[case.case_id].images["T1"], case.images["T1"]
            raise InputDataError(f"case {case.case_id}: found twice ({first} and {second}); case ids must be unique")
        seen[case.case_id] = case
    return sorted(cases, key=lambda c: c.case_id)
