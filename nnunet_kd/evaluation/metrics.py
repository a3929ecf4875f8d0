"""Region-wise BraTS segmentation metrics: Dice, HD95, sensitivity, specificity and volumes.

Public functions: :func:`dice`, :func:`sensitivity`, :func:`specificity`, :func:`surface_voxels`,
:func:`directed_surface_distances`, :func:`hausdorff_distance`, :func:`hd95`, :func:`region_metrics`.

Definitions
-----------
* Masks are boolean arrays; ``spacing`` is the voxel size in mm per array axis (same order as the array axes).
* **Dice** ``2|P∩G| / (|P| + |G|)``; **sensitivity** ``TP / (TP + FN)``; **specificity** ``TN / (TN + FP)``.
* **HD95** follows the legacy BraTS definition (Bakas et al. 2018, "Identifying the best machine learning
  algorithms for brain tumor segmentation ...", arXiv:1811.02629, as implemented in CaPTk and kept for the
  "legacy" metrics of BraTS 2023): the *maximum of the two directed 95th percentiles* of surface distances,
  ``max(P95{d(s, ∂G) : s ∈ ∂P}, P95{d(s, ∂P) : s ∈ ∂G})``, in mm. This differs from medpy's ``hd95``, which
  takes the 95th percentile of the *pooled* distances of both directions.
* The surface ``∂M`` of a mask is the set of its voxels removed by one binary erosion with the 6-connected
  (face-neighbour) structuring element; voxels outside the array count as background. Distances are between
  voxel centres, Euclidean, in mm (``scipy.ndimage.distance_transform_edt`` with ``sampling=spacing``);
  percentiles use numpy's default linear interpolation.
* Efficiency: both masks are cropped to the bounding box of their union (padded by one voxel), so the two
  distance transforms run on the tumour's box, not the whole scan. The result is identical to the full-volume
  computation because every surface voxel of both masks lies inside that box.

Empty-region rules (the legacy BraTS rules)
-------------------------------------------
* both prediction and reference empty: Dice 1, HD95 0, sensitivity 1;
* exactly one empty: Dice 0 and HD95 = :data:`HD95_PENALTY_MM` (373.13 mm, the diagonal of the
  240×240×155 mm BraTS volume); sensitivity 0 when the reference is empty but the prediction is not
  (as in the BraTS 2023 evaluation code);
* specificity is 1 when there is no negative voxel at all (``TN + FP = 0``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from scipy import ndimage

from nnunet_kd import brats

#: HD95 (mm) given when exactly one of prediction and reference is empty: the diagonal of the 240×240×155 mm
#: BraTS volume, sqrt(240² + 240² + 155²) = 373.13 mm, as in the legacy BraTS evaluation.
HD95_PENALTY_MM = 373.13

#: Metric names returned per region by :func:`region_metrics` (volumes in mm³).
REGION_METRIC_NAMES: tuple[str, ...] = ("dice", "hd95", "sensitivity", "specificity", "vol_pred_mm3", "vol_gt_mm3")

_FACE_STRUCTURE = ndimage.generate_binary_structure(3, 1)


def _as_bool(mask: np.ndarray) -> np.ndarray:
    return np.asarray(mask).astype(bool, copy=False)


def _check_pair(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p, g = _as_bool(pred), _as_bool(gt)
    if p.shape != g.shape:
        raise ValueError(f"prediction shape {p.shape} differs from reference shape {g.shape}")
    return p, g


def _spacing(spacing: Sequence[float] | None, ndim: int) -> tuple[float, ...]:
    if spacing is None:
        return (1.0,) * ndim
    s = tuple(float(v) for v in spacing)
    if len(s) != ndim:
        raise ValueError(f"spacing {s} has {len(s)} values but the masks have {ndim} dimensions")
    if any(v <= 0 for v in s):
        raise ValueError(f"spacing {s} must be positive")
    return s


def bounding_box(mask: np.ndarray, margin: int = 0) -> tuple[slice, ...] | None:
    """Slices of the smallest box holding all True voxels of ``mask``, grown by ``margin`` (clipped to the
    array); ``None`` for an empty mask."""
    slices = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        hits = np.flatnonzero(np.any(mask, axis=other))
        if hits.size == 0:
            return None
        slices.append(slice(max(int(hits[0]) - margin, 0), min(int(hits[-1]) + 1 + margin, mask.shape[axis])))
    return tuple(slices)


def confusion_counts(pred: np.ndarray, gt: np.ndarray) -> tuple[int, int, int, int]:
    """Voxel counts ``(TP, FP, FN, TN)`` of a binary prediction against a binary reference."""
    p, g = _check_pair(pred, gt)
    tp = int(np.count_nonzero(p & g))
    n_p, n_g = int(np.count_nonzero(p)), int(np.count_nonzero(g))
    fp, fn = n_p - tp, n_g - tp
    return tp, fp, fn, int(p.size) - tp - fp - fn


def _dice_from_counts(tp: int, fp: int, fn: int) -> float:
    denom = 2 * tp + fp + fn
    return 1.0 if denom == 0 else 2.0 * tp / denom


def _sensitivity_from_counts(tp: int, fn: int, fp: int) -> float:
    if tp + fn == 0:
        return 1.0 if fp == 0 else 0.0
    return tp / (tp + fn)


def _specificity_from_counts(tn: int, fp: int) -> float:
    return 1.0 if tn + fp == 0 else tn / (tn + fp)


def dice(pred: np.ndarray, gt: np.ndarray) -> float:
    """Dice coefficient of two binary masks; 1.0 when both are empty."""
    tp, fp, fn, _ = confusion_counts(pred, gt)
    return _dice_from_counts(tp, fp, fn)


def sensitivity(pred: np.ndarray, gt: np.ndarray) -> float:
    """True-positive rate ``TP / (TP + FN)``; for an empty reference 1.0 if the prediction is empty too, else 0.0."""
    tp, fp, fn, _ = confusion_counts(pred, gt)
    return _sensitivity_from_counts(tp, fn, fp)


def specificity(pred: np.ndarray, gt: np.ndarray) -> float:
    """True-negative rate ``TN / (TN + FP)``; 1.0 when there is no negative voxel."""
    _, fp, _, tn = confusion_counts(pred, gt)
    return _specificity_from_counts(tn, fp)


def surface_voxels(mask: np.ndarray) -> np.ndarray:
    """Boolean surface of a 3D mask: its voxels that one 6-connected erosion removes (outside counts as empty)."""
    m = _as_bool(mask)
    if m.ndim != 3:
        raise ValueError(f"surface_voxels expects a 3D mask, got {m.ndim} dimensions")
    return m & ~ndimage.binary_erosion(m, structure=_FACE_STRUCTURE, border_value=0)


def directed_surface_distances(pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float] | None = None
                               ) -> tuple[np.ndarray, np.ndarray]:
    """Distances (mm) from each surface voxel of ``pred`` to the nearest surface voxel of ``gt``, and from each
    surface voxel of ``gt`` to the nearest surface voxel of ``pred``. Both masks must be non-empty.

    Computed with two Euclidean distance transforms on the bounding box of the union of both masks."""
    p, g = _check_pair(pred, gt)
    sp = _spacing(spacing, p.ndim)
    box = bounding_box(p | g)
    if box is None or not p.any() or not g.any():
        raise ValueError("directed_surface_distances needs two non-empty masks")
    # One voxel of background padding keeps the erosion at the box's faces identical to the full volume's.
    p = np.pad(p[box], 1)
    g = np.pad(g[box], 1)
    surf_p, surf_g = surface_voxels(p), surface_voxels(g)
    return _distances_to(surf_p, surf_g, sp), _distances_to(surf_g, surf_p, sp)


def _distances_to(src: np.ndarray, dst: np.ndarray, spacing: tuple[float, ...]) -> np.ndarray:
    """Distance (mm) from every True voxel of ``src`` to the nearest True voxel of ``dst``.

    Uses the feature transform of ``distance_transform_edt`` (nearest ``dst`` voxel of every voxel, computed with
    ``sampling=spacing``) and evaluates distances only at the ``src`` voxels instead of the whole box."""
    nearest = ndimage.distance_transform_edt(~dst, sampling=spacing, return_distances=False, return_indices=True)
    where = np.nonzero(src)
    sq = np.zeros(where[0].shape, dtype=np.float64)
    for axis, idx in enumerate(where):
        diff = (idx - nearest[axis][where]) * spacing[axis]
        sq += diff * diff
    return np.sqrt(sq)


def hausdorff_distance(pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float] | None = None,
                       percentile: float = 95.0, empty_penalty: float = HD95_PENALTY_MM) -> float:
    """Percentile Hausdorff distance (mm): max of the two directed ``percentile``-th surface distances.

    ``percentile=100`` gives the classic Hausdorff distance between the two surfaces. Both masks empty -> 0.0;
    exactly one empty -> ``empty_penalty``."""
    p, g = _check_pair(pred, gt)
    has_p, has_g = bool(p.any()), bool(g.any())
    if not has_p and not has_g:
        return 0.0
    if has_p != has_g:
        return float(empty_penalty)
    d_pg, d_gp = directed_surface_distances(p, g, spacing)
    return float(max(np.percentile(d_pg, percentile), np.percentile(d_gp, percentile)))


def hd95(pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float] | None = None,
         empty_penalty: float = HD95_PENALTY_MM) -> float:
    """95th-percentile Hausdorff distance (mm), legacy BraTS definition (see the module docstring)."""
    return hausdorff_distance(pred, gt, spacing, 95.0, empty_penalty)


def region_metrics(pred_labels: np.ndarray, gt_labels: np.ndarray, spacing: Sequence[float] | None = None,
                   regions: Mapping[str, Sequence[int]] | None = None,
                   hd95_penalty: float = HD95_PENALTY_MM) -> dict[str, dict[str, float]]:
    """Metrics of every region of two canonical label maps (ED 1, NCR 2, ET 3).

    Returns ``{region: {metric: value}}`` with regions named by their abbreviation (``WT``, ``TC``, ``ET`` for
    :data:`nnunet_kd.brats.REGIONS`, the default) and metrics :data:`REGION_METRIC_NAMES`: Dice, HD95 (mm),
    sensitivity, specificity and the predicted and reference volumes in mm³. Work is done on the bounding box
    of all tumour voxels of both maps; voxels outside it only add true negatives."""
    pred_labels, gt_labels = np.asarray(pred_labels), np.asarray(gt_labels)
    if pred_labels.shape != gt_labels.shape:
        raise ValueError(f"prediction shape {pred_labels.shape} differs from reference shape {gt_labels.shape}")
    sp = _spacing(spacing, pred_labels.ndim)
    voxel_mm3 = float(np.prod(sp))
    regions = brats.REGIONS if regions is None else regions
    total = int(pred_labels.size)
    box = bounding_box((pred_labels != 0) | (gt_labels != 0))
    if box is not None:
        pred_labels, gt_labels = pred_labels[box], gt_labels[box]
    out: dict[str, dict[str, float]] = {}
    for name, labels in regions.items():
        key = brats.REGION_ABBREVIATIONS.get(name, name)
        if box is None:
            p = g = np.zeros((1,) * len(sp), dtype=bool)
        else:
            p, g = np.isin(pred_labels, labels), np.isin(gt_labels, labels)
        tp, fp, fn, _ = confusion_counts(p, g)
        tn = total - tp - fp - fn
        out[key] = {
            "dice": _dice_from_counts(tp, fp, fn),
            "hd95": hd95(p, g, sp, hd95_penalty),
            "sensitivity": _sensitivity_from_counts(tp, fn, fp),
            "specificity": _specificity_from_counts(tn, fp),
            "vol_pred_mm3": (tp + fp) * voxel_mm3,
            "vol_gt_mm3": (tp + fn) * voxel_mm3,
        }
    return out
