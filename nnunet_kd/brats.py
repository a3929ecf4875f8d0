"""The one definition of BraTS conventions used everywhere in nnunet-kd.

Canonical convention (nnU-Net's Dataset137):

* channels ``_0000`` T1, ``_0001`` T1ce, ``_0002`` T2, ``_0003`` FLAIR;
* labels background 0, edema (ED) 1, non-enhancing tumour core / necrosis (NCR) 2, enhancing tumour (ET) 3;
* regions whole tumour WT = {1, 2, 3}, tumour core TC = {2, 3}, enhancing tumour ET = {3}, trained with
  sigmoid outputs in the order of ``REGIONS_CLASS_ORDER``;
* post-treatment data (BraTS 2024 GLI) add the resection cavity RC = label 4, in neither WT nor TC;
* BraTS 2024 paediatric data (PED-2024) instead add the cystic component CC = label 4, part of WT and TC
  (nnU-Net needs consecutive labels, so label 4 means RC or CC depending on the dataset kind; the
  ``canonical_convention`` of the kind, ``dataset137-rc`` or ``dataset137-cc``, says which).

Every BraTS release stores labels differently; :data:`CONVENTIONS` maps each to the canonical labels. A
:class:`DatasetKind` (:data:`KINDS`: GLI, SSA, MEN, MET, PED, GLI-POST, PED-2024) says which canonical labels a dataset
has, which regions nnU-Net trains, which regions ``evaluate`` scores and which lesion-wise parameters apply;
the converter records it as ``brats_kind`` in dataset.json (:func:`kind_of_dataset_json` reads it back). Why one
module: the label values 1-3 mean different tissues in different releases, so every reader and writer of labels
must agree on one table. See docs/datasets.md for the sources.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

from nnunet_kd.errors import NnunetKDError

#: Canonical modalities in channel order: index i is written as ``_000i``.
MODALITIES: tuple[str, ...] = ("T1", "T1ce", "T2", "FLAIR")

#: Accepted spellings (lower case) of each modality, from all BraTS releases and common usage.
MODALITY_ALIASES: dict[str, str] = {
    "t1": "T1", "t1n": "T1", "t1w": "T1", "native": "T1", "t1native": "T1",
    "t1ce": "T1ce", "t1c": "T1ce", "t1gd": "T1ce", "t1-gd": "T1ce", "t1_gd": "T1ce", "t1post": "T1ce",
    "t1contrast": "T1ce",
    "t2": "T2", "t2w": "T2",
    "flair": "FLAIR", "t2f": "FLAIR", "t2flair": "FLAIR", "t2-flair": "FLAIR", "t2_flair": "FLAIR",
}

#: Canonical label values (RESECTION_CAVITY only in post-treatment datasets).
BACKGROUND, EDEMA, NECROSIS, ENHANCING, RESECTION_CAVITY = 0, 1, 2, 3, 4
#: Canonical label of the cystic component in BraTS 2024 paediatric (PED-2024) datasets, which have no cavity.
CYSTIC_COMPONENT = 4
LABEL_NAMES: dict[int, str] = {BACKGROUND: "background", EDEMA: "edema", NECROSIS: "necrosis", ENHANCING: "enhancing",
                               RESECTION_CAVITY: "resection_cavity"}

#: The three BraTS evaluation regions as sets of canonical labels, in the order nnU-Net trains them.
REGIONS: dict[str, tuple[int, ...]] = {
    "whole_tumor": (EDEMA, NECROSIS, ENHANCING),
    "tumor_core": (NECROSIS, ENHANCING),
    "enhancing_tumor": (ENHANCING,),
}
#: Short names used in tables (WT, TC, ET, RC) for the keys of :data:`REGIONS` and :data:`POST_TREATMENT_REGIONS`.
REGION_ABBREVIATIONS: dict[str, str] = {"whole_tumor": "WT", "tumor_core": "TC", "enhancing_tumor": "ET",
                                        "resection_cavity": "RC", "cystic_component": "CC"}
#: The regions nnU-Net trains on post-treatment data: WT, TC, ET and the resection cavity, painted in this order.
POST_TREATMENT_REGIONS: dict[str, tuple[int, ...]] = {**REGIONS, "resection_cavity": (RESECTION_CAVITY,)}
#: The regions nnU-Net trains on BraTS 2024 paediatric data: WT and TC include the cystic component (label 4),
#: painted WT (edema 1), TC (non-enhancing tumour 2), ET (3), CC (4); CC and ET are disjoint, so the painted map
#: gives back all four tissue labels.
PAEDIATRIC_2024_REGIONS: dict[str, tuple[int, ...]] = {
    "whole_tumor": (EDEMA, NECROSIS, ENHANCING, CYSTIC_COMPONENT),
    "tumor_core": (NECROSIS, ENHANCING, CYSTIC_COMPONENT),
    "enhancing_tumor": (ENHANCING,),
    "cystic_component": (CYSTIC_COMPONENT,),
}
#: nnU-Net's ``regions_class_order``: the label painted by each region output, later ones on top.
REGIONS_CLASS_ORDER: tuple[int, ...] = (EDEMA, NECROSIS, ENHANCING)


class UnknownModalityError(NnunetKDError):
    """A modality name that is none of T1, T1ce, T2, FLAIR (or their aliases)."""


def canonical_modality(name: str) -> str:
    """Canonical name (``T1``, ``T1ce``, ``T2``, ``FLAIR``) of a modality spelled any known way."""
    key = name.strip().lower().replace(" ", "")
    if key in MODALITY_ALIASES:
        return MODALITY_ALIASES[key]
    valid = ", ".join(MODALITIES)
    raise UnknownModalityError(f"unknown modality '{name}'; expected one of {valid} (or aliases such as t1c, t2f)")


def parse_modality_list(text: str | Iterable[str]) -> tuple[str, ...]:
    """Parse ``"FLAIR,T1ce"`` (or an iterable of names) into canonical names in ascending channel order."""
    items = [t for t in (text.split(",") if isinstance(text, str) else text) if t.strip()]
    if not items:
        raise UnknownModalityError("no modality given; expected a comma-separated list such as FLAIR,T1ce")
    names = {canonical_modality(t) for t in items}
    return tuple(m for m in MODALITIES if m in names)


def channel_suffix(index: int) -> str:
    """nnU-Net's file suffix of channel ``index`` (``_0001`` for 1)."""
    return f"_{index:04d}"


def region_masks(seg: np.ndarray, kind: str = "GLI") -> dict[str, np.ndarray]:
    """Boolean masks of the trained regions of ``kind`` (keys of :data:`REGIONS`, plus RC for GLI-POST)."""
    return {name: np.isin(seg, labels) for name, labels in get_kind(kind).train_regions.items()}


def dataset_json_labels(kind: str = "GLI") -> dict[str, int | list[int]]:
    """The ``labels`` entry of dataset.json for region-based training on the regions of ``kind`` (WT/TC/ET)."""
    labels: dict[str, int | list[int]] = {"background": BACKGROUND}
    for name, values in get_kind(kind).train_regions.items():
        labels[name] = list(values) if len(values) > 1 else values[0]
    return labels


def make_dataset_json(num_training: int, name: str, file_ending: str = ".nii.gz",
                      description: str = "", kind: str = "GLI") -> dict:
    """A complete Dataset137-style dataset.json (region labels of ``kind``, 4 channels, ``brats_kind``)."""
    spec = get_kind(kind)
    return {
        "channel_names": {str(i): m for i, m in enumerate(MODALITIES)},
        "labels": dataset_json_labels(spec.name),
        "regions_class_order": list(spec.regions_class_order),
        "numTraining": int(num_training),
        "file_ending": file_ending,
        "name": name,
        "description": description or "BraTS converted by nnunet-kd (Dataset137 convention)",
        "reference": "https://www.synapse.org/brats",
        "licence": "see the BraTS data use agreement",
        "brats_kind": spec.name,
    }


@dataclass(frozen=True)
class LabelConvention:
    """How one BraTS release encodes labels, and its mapping to canonical labels."""

    name: str
    to_canonical: Mapping[int, int]
    description: str
    kind: str = "GLI"  #: the :class:`DatasetKind` of datasets converted from this convention

    @property
    def from_canonical(self) -> dict[int, int]:
        return {c: r for r, c in self.to_canonical.items()}

    @property
    def is_identity(self) -> bool:
        """True when release labels are already canonical (the converter may copy such a file as it is)."""
        return all(src == dst for src, dst in self.to_canonical.items())

    @property
    def allowed_values(self) -> tuple[int, ...]:
        return tuple(sorted(self.to_canonical))

    def to_canonical_array(self, seg: np.ndarray) -> np.ndarray:
        """Map release labels to canonical labels; raises ValueError for values outside the convention."""
        return _remap(seg, self.to_canonical, self.name)

    def from_canonical_array(self, seg: np.ndarray) -> np.ndarray:
        """Map canonical labels back to this release's values."""
        return _remap(seg, self.from_canonical, "dataset137")


def _remap(seg: np.ndarray, mapping: Mapping[int, int], convention: str) -> np.ndarray:
    """``seg`` with every value mapped (uint8); ValueError naming the values outside ``mapping``.

    One comparison per allowed value (a handful), each a fast vectorised pass, instead of a sort or a
    histogram: the voxels matched by some allowed value must be all of them.
    """
    out = np.zeros(seg.shape, dtype=np.uint8)
    matched = 0
    for src, dst in mapping.items():
        hit = seg == src
        matched += int(np.count_nonzero(hit))
        if dst:
            out[hit] = dst
    if matched == seg.size:
        return out
    unexpected = [int(v) if v == int(v) else float(v) for v in np.unique(seg[~np.isin(seg, list(mapping))])
                  if np.isfinite(v)]
    if np.issubdtype(seg.dtype, np.floating) and not np.isfinite(seg).all():
        unexpected.append(float("nan"))
    raise ValueError(f"label value(s) {unexpected} not allowed in the {convention} convention "
                     f"(allowed: {sorted(mapping)})")


_LEGACY = {0: 0, 1: NECROSIS, 2: EDEMA, 4: ENHANCING}
_BRATS_2023 = {0: 0, 1: NECROSIS, 2: EDEMA, 3: ENHANCING}
CONVENTIONS: dict[str, LabelConvention] = {
    "dataset137": LabelConvention("dataset137", {0: 0, 1: 1, 2: 2, 3: 3}, "nnU-Net: ED 1, NCR 2, ET 3"),
    "dataset137-rc": LabelConvention("dataset137-rc", {0: 0, 1: 1, 2: 2, 3: 3, 4: 4},
                                     "nnU-Net post-treatment: ED 1, NCR 2, ET 3, RC 4", "GLI-POST"),
    "2018": LabelConvention("2018", _LEGACY, "BraTS 2018: NCR/NET 1, ED 2, ET 4"),
    "2019": LabelConvention("2019", _LEGACY, "BraTS 2019: NCR/NET 1, ED 2, ET 4"),
    "2020": LabelConvention("2020", _LEGACY, "BraTS 2020: NCR/NET 1, ED 2, ET 4"),
    "2021": LabelConvention("2021", _LEGACY, "BraTS 2021: NCR 1, ED 2, ET 4"),
    "2023": LabelConvention("2023", _BRATS_2023, "BraTS 2023 GLI: NETC 1, SNFH 2, ET 3"),
    "2023-ssa": LabelConvention("2023-ssa", _BRATS_2023, "BraTS 2023 SSA: NETC 1, SNFH 2, ET 3", "SSA"),
    "2023-men": LabelConvention("2023-men", _BRATS_2023, "BraTS 2023 MEN: NETC 1, SNFH 2, ET 3", "MEN"),
    "2023-met": LabelConvention("2023-met", _BRATS_2023, "BraTS 2023 MET: NETC 1, SNFH 2, ET 3", "MET"),
    "2023-ped": LabelConvention("2023-ped", _BRATS_2023, "BraTS 2023 PED: NETC 1, SNFH 2, ET 3", "PED"),
    "2024-gli": LabelConvention("2024-gli", {**_BRATS_2023, 4: RESECTION_CAVITY},
                                "BraTS 2024 GLI post-treatment: NETC 1, SNFH 2, ET 3, RC 4", "GLI-POST"),
    "dataset137-cc": LabelConvention("dataset137-cc", {0: 0, 1: 1, 2: 2, 3: 3, 4: 4},
                                     "nnU-Net paediatric 2024: ED 1, NET 2, ET 3, CC 4", "PED-2024"),
    "2024-ped": LabelConvention("2024-ped", {0: 0, 1: ENHANCING, 2: NECROSIS, 3: CYSTIC_COMPONENT, 4: EDEMA},
                                "BraTS 2024 PED: ET 1, NET 2, CC 3, ED 4", "PED-2024"),
    "msd": LabelConvention("msd", {0: 0, 1: EDEMA, 2: NECROSIS, 3: ENHANCING},
                           "MSD Task01: edema 1, non-enhancing tumour 2, enhancing tumour 3"),
}


def get_convention(name: str) -> LabelConvention:
    """The label convention called ``name`` (``dataset137``, ``2018`` … ``2023``, ``2023-men``, ``2024-gli``,
    ``2024-ped``, ``msd`` …)."""
    key = str(name).lower()
    if key not in CONVENTIONS:
        raise NnunetKDError(f"unknown label convention '{name}'; expected one of {', '.join(CONVENTIONS)}")
    return CONVENTIONS[key]


@dataclass(frozen=True)
class DatasetKind:
    """What a BraTS dataset holds and how it is trained and scored (see docs/datasets.md for the sources).

    ``train_regions`` are nnU-Net's regions (dataset.json ``labels``), painted in ``regions_class_order``;
    ``eval_regions`` maps each scored region's abbreviation to its canonical labels, in column order;
    ``canonical_convention`` is the :data:`CONVENTIONS` key of converted labels and nnU-Net predictions;
    ``task`` names the lesion-wise parameters (``nnunet_kd.evaluation.lesionwise.TASK_PARAMETERS``).
    """

    name: str
    description: str
    canonical_convention: str
    task: str
    train_regions: Mapping[str, tuple[int, ...]]
    regions_class_order: tuple[int, ...]
    eval_regions: Mapping[str, tuple[int, ...]]

    @property
    def has_resection_cavity(self) -> bool:
        return self.canonical_convention == "dataset137-rc"


_EVAL_3 = {REGION_ABBREVIATIONS[r]: v for r, v in REGIONS.items()}
#: The BraTS 2024 post-treatment regions (BraTS-2024-Metrics ``metrics_GLI.py``) in canonical labels: RC is in
#: neither WT nor TC; NETC is the release's label 1 (canonical 2), SNFH its label 2 (canonical 1).
POST_TREATMENT_EVAL_REGIONS: dict[str, tuple[int, ...]] = {
    **_EVAL_3, "NETC": (NECROSIS,), "SNFH": (EDEMA,), "RC": (RESECTION_CAVITY,)}
#: The BraTS 2024 paediatric regions (BraTS-2024-Metrics ``metrics_PED.py``: WT 1-4, TC 1-3, ET 1, NETC 2, CC 3,
#: ED 4 in release labels) in canonical labels, in the reference's order.
PAEDIATRIC_2024_EVAL_REGIONS: dict[str, tuple[int, ...]] = {
    "WT": PAEDIATRIC_2024_REGIONS["whole_tumor"], "TC": PAEDIATRIC_2024_REGIONS["tumor_core"], "ET": (ENHANCING,),
    "NETC": (NECROSIS,), "CC": (CYSTIC_COMPONENT,), "ED": (EDEMA,)}


def _three_region_kind(name: str, description: str) -> DatasetKind:
    return DatasetKind(name, description, "dataset137", name, REGIONS, REGIONS_CLASS_ORDER, _EVAL_3)


#: Every dataset kind, keyed by name (the BraTS 2023 challenge abbreviations, and GLI-POST for BraTS 2024 GLI).
KINDS: dict[str, DatasetKind] = {
    "GLI": _three_region_kind("GLI", "adult glioma (BraTS 2018-2023, MSD)"),
    "SSA": _three_region_kind("SSA", "sub-Saharan Africa glioma (BraTS 2023)"),
    "MEN": _three_region_kind("MEN", "meningioma (BraTS 2023)"),
    "MET": _three_region_kind("MET", "brain metastases (BraTS 2023)"),
    "PED": _three_region_kind("PED", "paediatric tumours (BraTS 2023)"),
    "GLI-POST": DatasetKind("GLI-POST", "post-treatment adult glioma with resection cavity (BraTS 2024)",
                            "dataset137-rc", "GLI-POST", POST_TREATMENT_REGIONS,
                            REGIONS_CLASS_ORDER + (RESECTION_CAVITY,), POST_TREATMENT_EVAL_REGIONS),
    "PED-2024": DatasetKind("PED-2024", "paediatric tumours with cystic component (BraTS 2024)", "dataset137-cc",
                            "PED-2024", PAEDIATRIC_2024_REGIONS, REGIONS_CLASS_ORDER + (CYSTIC_COMPONENT,),
                            PAEDIATRIC_2024_EVAL_REGIONS),
}


def get_kind(name: str) -> DatasetKind:
    """The dataset kind called ``name`` (``GLI``, ``SSA``, ``MEN``, ``MET``, ``PED``, ``GLI-POST``, ``PED-2024``;
    any case)."""
    key = str(name).upper()
    if key not in KINDS:
        raise NnunetKDError(f"unknown BraTS dataset kind '{name}'; expected one of {', '.join(KINDS)}")
    return KINDS[key]


def kind_of_dataset_json(meta: Mapping) -> DatasetKind | None:
    """The kind recorded in a dataset.json (``brats_kind``), else GLI-POST when its labels have a resection
    cavity (PED-2024 a cystic component), else None (not known: callers keep their GLI defaults)."""
    recorded = meta.get("brats_kind")
    if recorded is not None:
        return get_kind(str(recorded))
    labels = meta.get("labels")
    if isinstance(labels, Mapping) and "resection_cavity" in labels:
        return KINDS["GLI-POST"]
    if isinstance(labels, Mapping) and "cystic_component" in labels:
        return KINDS["PED-2024"]
    return None
