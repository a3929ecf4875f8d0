"""BraTS 2023 lesion-wise Dice and HD95.

Public: :func:`lesion_wise_scores` (one binary region), :func:`lesion_wise_region_scores` (WT/TC/ET of two
canonical label maps), :func:`score_labelled_lesions` (steps 3-6 on lesions found elsewhere, shared with the
BraTS 2024 procedure of :mod:`.lesionwise_2024`), :class:`LesionWiseResult`, :func:`label_lesions`,
:func:`combine_by_dilation`, constants of the BraTS-GLI setting.

The algorithm is the one of the BraTS 2023 lesion-wise evaluation (Saluja et al., "BraTS 2023 lesion-wise
performance metrics", github.com/rachitsaluja/BraTS-2023-Metrics), for one region at a time:

1. Lesions are the 26-connected components of the reference (GT) and of the prediction.
2. The GT mask is dilated ``dilation_iterations`` times with the 18-connected structuring element
   (``generate_binary_structure(3, 2)``); GT lesions that fall into the same connected component of the dilated
   mask are merged into one lesion ("combined by dilation").
3. For each (merged) GT lesion, its own dilation (same element and iterations) selects the predicted components
   that touch it: these are its matched components (true positives; one predicted component may match several
   GT lesions). The lesion's Dice and HD95 compare the lesion with the union of its matched components; a GT
   lesion without match (false negative) gets Dice 0 and HD95 = ``hd95_penalty``.
4. Predicted components that match no GT lesion are false positives.
5. GT lesions of volume <= ``volume_threshold_mm3`` are left out of the scores (and of the TP/FN counts); their
   matched predictions are still not false positives.
6. Lesion-wise Dice = sum(lesion Dice) / (number of kept GT lesions + number of false positives); lesion-wise
   HD95 = (sum(lesion HD95) + FP × penalty) / (same denominator). With a zero denominator (no GT lesion above
   the threshold and no false positive) Dice is 1 and HD95 is 0.

Equal to the official code: HD95 of a lesion pair is :func:`nnunet_kd.evaluation.metrics.hd95`, the reference's
area-weighted surfel definition; a missed lesion's HD95 (``inf`` in the reference, replaced there by 374) and each
false positive count ``hd95_penalty``. Differences that do not change the numbers: components are found with
``scipy.ndimage.label`` instead of ``cc3d`` (identical labelling up to numbering), and every step runs on
bounding boxes grown by the dilation, which gives the full-volume result because dilation, labelling and the
surfel crop never reach beyond them (at the volume border both treat outside voxels as background).

:data:`TASK_PARAMETERS` holds the reference's per-challenge dilation and volume threshold (``metrics.py``,
``get_LesionWiseResults``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from nnunet_kd import brats
from nnunet_kd.evaluation.metrics import bounding_box, hd95

#: BraTS 2023 glioma (BraTS-GLI) parameters: 3 dilation iterations, lesions of <= 50 mm³ ignored.
GLI_DILATION_ITERATIONS = 3
GLI_VOLUME_THRESHOLD_MM3 = 50.0
#: HD95 (mm) given to false-positive and missed lesions in the BraTS 2023 lesion-wise evaluation.
LESION_HD95_PENALTY_MM = 374.0
#: Lesion-wise parameters of the BraTS 2023 reference per challenge: (dilation iterations, volume threshold mm³).
#: ``GLI-POST`` (BraTS 2024 post-treatment glioma) is not here: its reference uses another procedure with
#: parameters per region (:mod:`nnunet_kd.evaluation.lesionwise_2024`).
TASK_PARAMETERS: dict[str, tuple[int, float]] = {
    "GLI": (3, 50.0), "SSA": (3, 50.0), "MEN": (1, 50.0), "PED": (3, 50.0), "MET": (1, 2.0),
    # BraTS-2024-Metrics metrics_PED.py (dilation 5, 10 mm^3), scored with this 2023 procedure; its removal of
    # predicted components of at most 10 voxels is not reproduced (docs/evaluation.md)
    "PED-2024": (5, 10.0),
}

_CONNECTIVITY_26 = np.ones((3, 3, 3), dtype=bool)
_DILATION_18 = ndimage.generate_binary_structure(3, 2)


@dataclass
class LesionWiseResult:
    """Lesion-wise scores of one region, with the per-lesion details behind them."""

    dice: float
    hd95: float
    num_tp: int  #: GT lesions above the threshold with at least one matched predicted component
    num_fn: int  #: GT lesions above the threshold without any matched component
    num_fp: int  #: predicted components matching no GT lesion
    num_gt_lesions: int  #: all (merged) GT lesions, including those below the threshold
    num_pred_lesions: int  #: all predicted components
    lesions: list[dict] = field(default_factory=list)  #: per GT lesion: volume_mm3, dice, hd95, matched, kept

    def as_dict(self) -> dict[str, float]:
        """The scalar scores, keyed ``lesion_dice``, ``lesion_hd95``, ``lesion_tp``, ``lesion_fp``, ``lesion_fn``."""
        return {"lesion_dice": self.dice, "lesion_hd95": self.hd95, "lesion_tp": self.num_tp,
                "lesion_fp": self.num_fp, "lesion_fn": self.num_fn}


def label_lesions(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """26-connected components of a binary 3D mask: ``(labels, count)`` with labels 1..count."""
    labels, count = ndimage.label(np.asarray(mask, dtype=bool), structure=_CONNECTIVITY_26)
    return labels, int(count)


def grow_box(box: tuple[slice, ...], margin: int, shape: tuple[int, ...]) -> tuple[slice, ...]:
    """``box`` grown by ``margin`` voxels on every side, clipped to ``shape``."""
    return tuple(slice(max(s.start - margin, 0), min(s.stop + margin, n)) for s, n in zip(box, shape))


def _union(a: tuple[slice, ...], b: tuple[slice, ...]) -> tuple[slice, ...]:
    return tuple(slice(min(x.start, y.start), max(x.stop, y.stop)) for x, y in zip(a, b))


def dilate_18(mask: np.ndarray, iterations: int) -> np.ndarray:
    """``iterations`` binary dilations with the 18-connected element (outside the array counts as background)."""
    if iterations <= 0:
        return mask
    return ndimage.binary_dilation(mask, structure=_DILATION_18, iterations=iterations)


def combine_by_dilation(gt: np.ndarray, iterations: int) -> tuple[np.ndarray, int]:
    """GT lesions merged when their dilations touch: labels of the dilated mask's 26-components, restricted to
    the GT voxels. Returns ``(labels, count)`` with consecutive labels 1..count."""
    gt = np.asarray(gt, dtype=bool)
    dilated_labels, _ = label_lesions(dilate_18(gt, iterations))
    merged = np.where(gt, dilated_labels, 0)
    present = np.unique(merged)
    present = present[present != 0]
    lut = np.zeros(int(merged.max()) + 1, dtype=np.int32)
    lut[present] = np.arange(1, present.size + 1, dtype=np.int32)
    return lut[merged], int(present.size)


def lesion_wise_scores(pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float] | None = None,
                       dilation_iterations: int = GLI_DILATION_ITERATIONS,
                       volume_threshold_mm3: float = GLI_VOLUME_THRESHOLD_MM3,
                       hd95_penalty: float = LESION_HD95_PENALTY_MM) -> LesionWiseResult:
    """BraTS 2023 lesion-wise Dice and HD95 of one binary region (see the module docstring for the rules)."""
    pred = np.asarray(pred, dtype=bool)
    gt = np.asarray(gt, dtype=bool)
    if pred.shape != gt.shape or pred.ndim != 3:
        raise ValueError(f"lesion_wise_scores expects two 3D masks of one shape, got {pred.shape} and {gt.shape}")
    sp = tuple(float(v) for v in spacing) if spacing is not None else (1.0, 1.0, 1.0)
    if int(dilation_iterations) != dilation_iterations or dilation_iterations < 0:
        raise ValueError(f"dilation_iterations must be a non-negative integer, got {dilation_iterations}")
    if not volume_threshold_mm3 >= 0:
        raise ValueError(f"volume_threshold_mm3 must be non-negative, got {volume_threshold_mm3}")
    k = int(dilation_iterations)

    box = bounding_box(pred | gt, margin=k)
    if box is None:
        return LesionWiseResult(1.0, 0.0, 0, 0, 0, 0, 0)
    pred, gt = pred[box], gt[box]

    gt_cc, n_gt = combine_by_dilation(gt, k)
    pred_cc, n_pred = label_lesions(pred)
    return score_labelled_lesions(pred_cc, n_pred, gt_cc, n_gt, sp, k, volume_threshold_mm3, hd95_penalty)


def score_labelled_lesions(pred_cc: np.ndarray, n_pred: int, gt_cc: np.ndarray, n_gt: int,
                           spacing: Sequence[float], dilation_iterations: int, volume_threshold_mm3: float,
                           hd95_penalty: float) -> LesionWiseResult:
    """Steps 3-6 of the module docstring on lesions already found: ``gt_cc`` and ``pred_cc`` hold the GT and
    predicted lesions as labels 1..n_gt and 1..n_pred. Shared by the BraTS 2023 procedure and the BraTS 2024
    one (:mod:`.lesionwise_2024`), which find their lesions differently but match and score them alike."""
    sp = tuple(float(v) for v in spacing)
    voxel_mm3 = float(np.prod(sp))
    k = int(dilation_iterations)
    pred_sizes = np.bincount(pred_cc.ravel(), minlength=n_pred + 1)
    pred_boxes = ndimage.find_objects(pred_cc)
    gt_boxes = ndimage.find_objects(gt_cc)

    matched_any: set[int] = set()
    lesions: list[dict] = []
    for j in range(1, n_gt + 1):
        lesion_box = gt_boxes[j - 1]
        roi = grow_box(lesion_box, k, gt_cc.shape)
        lesion = gt_cc[roi] == j
        touched = pred_cc[roi][dilate_18(lesion, k)]
        matched = [int(c) for c in np.unique(touched) if c != 0]
        matched_any.update(matched)
        n_lesion = int(np.count_nonzero(lesion))
        volume = n_lesion * voxel_mm3
        if matched:
            pair_box = lesion_box
            for c in matched:
                pair_box = _union(pair_box, pred_boxes[c - 1])
            a = gt_cc[pair_box] == j
            b = np.isin(pred_cc[pair_box], matched)
            inter = int(np.count_nonzero(a & b))
            lesion_dice = 2.0 * inter / (n_lesion + int(pred_sizes[matched].sum()))
            lesion_hd = hd95(b, a, sp, empty_penalty=hd95_penalty)
        else:
            lesion_dice, lesion_hd = 0.0, float(hd95_penalty)
        lesions.append({"lesion": j, "volume_mm3": volume, "dice": lesion_dice, "hd95": lesion_hd,
                        "matched": matched, "kept": volume > volume_threshold_mm3})

    kept = [les for les in lesions if les["kept"]]
    num_fp = n_pred - len(matched_any)
    denom = len(kept) + num_fp
    if denom == 0:
        dice_score, hd_score = 1.0, 0.0
    else:
        dice_score = sum(les["dice"] for les in kept) / denom
        hd_score = (sum(les["hd95"] for les in kept) + num_fp * hd95_penalty) / denom
    return LesionWiseResult(
        dice=float(dice_score), hd95=float(hd_score),
        num_tp=sum(1 for les in kept if les["matched"]), num_fn=sum(1 for les in kept if not les["matched"]),
        num_fp=int(num_fp), num_gt_lesions=n_gt, num_pred_lesions=n_pred, lesions=lesions,
    )


def lesion_wise_region_scores(pred_labels: np.ndarray, gt_labels: np.ndarray,
                              spacing: Sequence[float] | None = None,
                              regions: Mapping[str, Sequence[int]] | None = None,
                              dilation_iterations: int = GLI_DILATION_ITERATIONS,
                              volume_threshold_mm3: float = GLI_VOLUME_THRESHOLD_MM3,
                              hd95_penalty: float = LESION_HD95_PENALTY_MM) -> dict[str, LesionWiseResult]:
    """:func:`lesion_wise_scores` of every region (WT/TC/ET by default) of two canonical label maps."""
    regions = brats.REGIONS if regions is None else regions
    pred_labels, gt_labels = np.asarray(pred_labels), np.asarray(gt_labels)
    box = bounding_box((pred_labels != 0) | (gt_labels != 0), margin=max(int(dilation_iterations), 0))
    if box is not None:
        pred_labels, gt_labels = pred_labels[box], gt_labels[box]
    out = {}
    for name, labels in regions.items():
        key = brats.REGION_ABBREVIATIONS.get(name, name)
        out[key] = lesion_wise_scores(np.isin(pred_labels, labels), np.isin(gt_labels, labels), spacing,
                                      dilation_iterations, volume_threshold_mm3, hd95_penalty)
    return out
