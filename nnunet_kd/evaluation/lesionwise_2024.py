"""BraTS 2024 post-treatment glioma (GLI-POST) lesion-wise Dice and HD95.

Public: :func:`lesion_wise_region_scores_2024`, :func:`region_lesions`, :func:`merge_touching`,
:func:`parameters`, :data:`PROCEDURE`, :data:`TASK`, :data:`SOURCE` and the per-region parameters below.

Why a second procedure: the BraTS 2024 challenge scored post-treatment glioma with its own reference code,
``metrics_GLI.py`` of github.com/rachitsaluja/BraTS-2024-Metrics (the Synapse scoring container of
Sage-Bionetworks-Challenges/brats-infra, ``evaluation/lesionwise``, copies ``BraTS-2024-Metrics/metrics_*.py`` and
calls ``metrics_GLI.get_LesionWiseResults`` for ``BraTS-GLI``). That code finds lesions differently from the
2023 one, so the 2023 procedure (:mod:`.lesionwise`) on the six post-treatment regions gives other numbers. The
steps below are read from commit 9a0ab9c7 (2024-07-17, "GLI changes + bug fixes"); the lesion-wise Dice and
HD95 are unchanged from there up to 9e8879a9 (2025-05-29; later commits only add a surface Dice). Regions in the
release labels NETC 1, SNFH 2, ET 3, RC 4: WT = {1, 2, 3}, TC = {1, 3}, NETC, SNFH, ET, RC (RC in neither WT
nor TC); here in canonical labels (:data:`nnunet_kd.brats.POST_TREATMENT_EVAL_REGIONS`).

1. Per region, lesions are the 26-connected components merged when their 18-connected dilations touch
   (:func:`nnunet_kd.evaluation.lesionwise.combine_by_dilation`), for reference *and prediction* (2023: the
   prediction's plain components). Dilation: 5 iterations for NETC and RC, 3 for WT, TC, ET and SNFH (the
   reference's test for the 5-iteration regions spells SNFH ``"SFNH"``, so SNFH keeps 3; we do the same).
2. Predicted lesions of at most :data:`PRED_MIN_VOXELS` voxels are deleted (ET 10, every other region 20; a
   voxel count, not mm³): they are neither matched nor false positives. Reference lesions are all kept here.
3. Cross-tissue merging of the tissues NETC, ET, RC and SNFH, separately for reference and prediction: a lesion
   *touches* a lesion of another tissue when one 18-connected dilation of it overlaps it. Against each other
   tissue in turn (NETC: ET then RC; ET: NETC then RC; RC: ET then NETC; SNFH: ET, RC, then NETC), each lesion
   that touches lesions of the other tissue is relabelled by the lowest-numbered of them (numbered as the
   reference numbers them, :func:`region_lesions`), so lesions touching the same lowest-numbered lesion become one lesion; this is
   done only when there are at least two touching pairs (with one pair the relabelling changes nothing). The
   other tissue's lesions are always those of steps 1-2, not already merged ones. (The reference runs the four
   mergers twice; the second pass starts from the same files and repeats the first, so it changes nothing.)
   The grouping is not transitive: two lesions that share a touched lesion but have different lowest-numbered
   touched lesions stay apart, exactly as in the reference. WT and TC are not merged across tissues.
4. Matching and scores as in 2023 (:func:`nnunet_kd.evaluation.lesionwise.score_labelled_lesions`): a
   reference lesion, dilated by its region's iterations, matches every predicted lesion it overlaps; Dice and
   HD95 (area-weighted surfels, :func:`nnunet_kd.evaluation.metrics.hd95`) against their union; reference
   lesions of at most :data:`GT_MIN_VOLUME_MM3` (ET 10 mm³, every other region 20 mm³) are left out of the
   score, their matches are not false positives; lesion-wise = sum of scores / (kept lesions + false
   positives), a missed lesion or a false positive counting Dice 0 and HD95 :data:`HD95_PENALTY_MM` (337 mm in
   the 2024 code, 374 in 2023); nothing to score gives Dice 1, HD95 0.

Not reproduced: the reference's "legacy" (whole-region) Dice, HD95, sensitivity and specificity of the 2024 code
are computed on its step-2 prediction (small predicted lesions deleted) and its sensitivity/specificity on label
numbers rather than masks; ``nnunet-kd evaluate`` keeps the 2023 whole-region definitions (docs/evaluation.md).
Everything runs on the bounding box of both label maps grown by 6 voxels: every dilation (at most 5) and the
one-voxel touching test stay inside it, so the result is the full-volume one (outside the scan counts as
background in both).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from scipy import ndimage

from nnunet_kd import brats
from nnunet_kd.evaluation.lesionwise import (
    LesionWiseResult,
    combine_by_dilation,
    dilate_18,
    grow_box,
    score_labelled_lesions,
)
from nnunet_kd.evaluation.metrics import bounding_box

#: Name of this procedure in ``summary.json`` (``lesion_wise.procedure``); the 2023 one is ``brats2023``.
PROCEDURE = "brats2024-gli-post"
#: The ``--task`` (and :attr:`nnunet_kd.brats.DatasetKind.task`) that selects this procedure.
TASK = "GLI-POST"
#: Where the definition comes from (recorded in ``summary.json``).
SOURCE = ("github.com/rachitsaluja/BraTS-2024-Metrics metrics_GLI.py, commit 9a0ab9c7d75f158a3ea685cd44ac059c3a6712a1 "
          "(lesion-wise Dice/HD95 unchanged up to 9e8879a9201b9b6f2e069eb07e2acb6d4dee34b6)")
#: HD95 (mm) of a missed lesion and of each false positive in the 2024 GLI code.
HD95_PENALTY_MM = 337.0
#: Dilation iterations (18-connected element) per region, for merging lesions and for matching.
DILATION: dict[str, int] = {"WT": 3, "TC": 3, "ET": 3, "NETC": 5, "SNFH": 3, "RC": 5}
#: Reference lesions of at most this volume (mm³) are left out of the score.
GT_MIN_VOLUME_MM3: dict[str, float] = {"WT": 20.0, "TC": 20.0, "ET": 10.0, "NETC": 20.0, "SNFH": 20.0, "RC": 20.0}
#: Predicted lesions (after step 1) of at most this many voxels are deleted before matching.
PRED_MIN_VOXELS: dict[str, int] = {"WT": 20, "TC": 20, "ET": 10, "NETC": 20, "SNFH": 20, "RC": 20}
#: Step 3: the other tissues each tissue's lesions are merged with, in this order.
MERGE_ORDER: dict[str, tuple[str, ...]] = {"NETC": ("ET", "RC"), "ET": ("NETC", "RC"), "RC": ("ET", "NETC"),
                                           "SNFH": ("ET", "RC", "NETC")}
_MARGIN = max(DILATION.values()) + 1


def _renumber(labels: np.ndarray) -> tuple[np.ndarray, int]:
    """Labels made consecutive 1..n in the order of their current values."""
    counts = np.bincount(labels.ravel(), minlength=1)
    present = np.flatnonzero(counts)
    present = present[present != 0]
    lut = np.zeros(counts.size, dtype=np.int32)
    lut[present] = np.arange(1, present.size + 1, dtype=np.int32)
    return lut[labels], int(present.size)


def region_lesions(mask: np.ndarray, dilation: int, min_voxels: int | None = None) -> tuple[np.ndarray, int]:
    """Steps 1-2 for one region: lesions merged by dilation, those of at most ``min_voxels`` voxels deleted
    (``None``: none deleted, as for the reference); ``(labels 1..n, n)``.

    Lesions are numbered as the reference numbers them, which step 3 depends on: ``cc3d`` numbers components
    in the order it first meets them in memory, and it labels the dilated mask that scipy returns C-ordered,
    so on the reference's NIfTI array (i, j, k) the last axis k runs fastest. ``mask`` is in SimpleITK order
    (k, j, i), so its transpose is labelled in C order."""
    mask = np.asarray(mask, dtype=bool)
    labels = np.zeros(mask.shape, dtype=np.int32)
    box = bounding_box(mask, margin=dilation)  # the dilation never leaves it: same labels, less work
    if box is None:
        return labels, 0
    boxed, n = combine_by_dilation(mask[box].T, dilation)
    labels[box] = boxed.T
    if min_voxels is None or n == 0:
        return labels, n
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    small = np.flatnonzero(sizes <= min_voxels)
    small = small[small != 0]
    if small.size == 0:
        return labels, n
    return _renumber(np.where(np.isin(labels, small), 0, labels))


def merge_touching(labels: np.ndarray, other: np.ndarray) -> tuple[np.ndarray, int]:
    """Step 3 against one other tissue: every lesion of ``labels`` that touches (one 18-connected dilation)
    lesions of ``other`` takes the lowest of their labels as its group; lesions of one group become one lesion.
    Nothing changes unless there are at least two touching (lesion, other lesion) pairs. Returns consecutive
    labels ``(labels 1..n, n)``, numbered in the order of the reference's relabelling (untouched lesions keep
    their numbers, merged groups come after them)."""
    n = int(labels.max(initial=0))
    groups: dict[int, int] = {}
    pairs = 0
    for a, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None:
            continue
        roi = grow_box(box, 1, labels.shape)
        near = dilate_18(labels[roi] == a, 1)
        touched = np.unique(other[roi][near])
        touched = touched[touched != 0]
        if touched.size:
            groups[a] = int(touched.min())
            pairs += int(touched.size)
    if pairs <= 1:
        return labels, n  # labels are consecutive already (region_lesions, or a previous merge)
    lut = np.arange(n + 1, dtype=np.int64)
    new_label: dict[int, int] = {}
    for a in sorted(groups):
        lut[a] = new_label.setdefault(groups[a], n + 1 + len(new_label))
    return _renumber(lut[labels])


def _side_lesions(label_map: np.ndarray, regions: Mapping[str, Sequence[int]], wanted: Sequence[str],
                  is_prediction: bool) -> dict[str, tuple[np.ndarray, int]]:
    """Steps 1-3 for one label map (reference or prediction): lesions of every region in ``wanted``."""
    needed = set(wanted)
    for tissue in wanted:
        needed.update(MERGE_ORDER.get(tissue, ()))
    base = {name: region_lesions(np.isin(label_map, regions[name]), DILATION[name],
                                 PRED_MIN_VOXELS[name] if is_prediction else None)
            for name in needed}
    out = {}
    for name in wanted:
        labels, n = base[name]
        for other in MERGE_ORDER.get(name, ()):
            labels, n = merge_touching(labels, base[other][0])
        out[name] = (labels, n)
    return out


def lesion_wise_region_scores_2024(pred_labels: np.ndarray, gt_labels: np.ndarray,
                                   spacing: Sequence[float] | None = None,
                                   regions: Sequence[str] | None = None,
                                   hd95_penalty: float = HD95_PENALTY_MM) -> dict[str, LesionWiseResult]:
    """BraTS 2024 post-treatment lesion-wise scores of two canonical label maps (``dataset137-rc``: ED 1,
    NCR 2, ET 3, RC 4) for ``regions`` (names among WT, TC, ET, NETC, SNFH, RC; default all six)."""
    region_labels = brats.POST_TREATMENT_EVAL_REGIONS
    wanted = list(region_labels) if regions is None else list(regions)
    unknown = [r for r in wanted if r not in region_labels]
    if unknown:
        raise ValueError(f"the BraTS 2024 post-treatment procedure scores {', '.join(region_labels)}, "
                         f"not {', '.join(unknown)}")
    pred_labels, gt_labels = np.asarray(pred_labels), np.asarray(gt_labels)
    if pred_labels.shape != gt_labels.shape or pred_labels.ndim != 3:
        raise ValueError(f"expected two 3D label maps of one shape, got {pred_labels.shape} and {gt_labels.shape}")
    sp = tuple(float(v) for v in spacing) if spacing is not None else (1.0, 1.0, 1.0)
    box = bounding_box((pred_labels != 0) | (gt_labels != 0), margin=_MARGIN)
    if box is None:
        return {r: LesionWiseResult(1.0, 0.0, 0, 0, 0, 0, 0) for r in wanted}
    pred_labels, gt_labels = pred_labels[box], gt_labels[box]
    gt_lesions = _side_lesions(gt_labels, region_labels, wanted, is_prediction=False)
    pred_lesions = _side_lesions(pred_labels, region_labels, wanted, is_prediction=True)
    return {r: score_labelled_lesions(pred_lesions[r][0], pred_lesions[r][1], gt_lesions[r][0], gt_lesions[r][1],
                                      sp, DILATION[r], GT_MIN_VOLUME_MM3[r], hd95_penalty)
            for r in wanted}


def parameters() -> dict:
    """The procedure's settings as recorded in ``summary.json`` (``lesion_wise``)."""
    return {"procedure": PROCEDURE, "source": SOURCE, "connectivity": 26, "dilation_structure": "18-connected",
            "dilation_iterations": dict(DILATION), "volume_threshold_mm3": dict(GT_MIN_VOLUME_MM3),
            "prediction_min_voxels": dict(PRED_MIN_VOXELS), "cross_tissue_merging": {
                k: list(v) for k, v in MERGE_ORDER.items()}, "hd95_penalty_mm": HD95_PENALTY_MM}
