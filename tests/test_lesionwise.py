"""BraTS 2023 lesion-wise scores on crafted multi-lesion volumes and against a literal full-volume reference
(BraTS-2023-Metrics' procedure with DeepMind's ``surface_distance`` for the per-lesion HD95)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from nnunet_kd.evaluation import lesionwise

PENALTY = lesionwise.LESION_HD95_PENALTY_MM
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # surface_distance uses ndimage.filters


def reference_lesion_hd95(pred_lesions: np.ndarray, gt_lesion: np.ndarray, spacing) -> float:
    """The reference's per-lesion HD95: surface_distance on the full volumes; inf (no matched prediction) -> 374."""
    import surface_distance

    if not pred_lesions.any():
        return 374.0
    sd = surface_distance.compute_surface_distances(gt_lesion, pred_lesions, tuple(float(s) for s in spacing))
    return float(surface_distance.compute_robust_hausdorff(sd, 95))


def cube(mask: np.ndarray, corner, size) -> None:
    mask[tuple(slice(c, c + s) for c, s in zip(corner, (size,) * 3 if np.isscalar(size) else size))] = True


def naive_lesion_wise(pred, gt, spacing, k=3, thresh=50.0, penalty=PENALTY):
    """The BraTS 2023 procedure step by step on full volumes (no cropping), as an independent reference."""
    s26, s18 = np.ones((3, 3, 3)), ndimage.generate_binary_structure(3, 2)
    vox = float(np.prod(spacing))
    gt_cc, _ = ndimage.label(gt, s26)
    pred_cc, n_pred = ndimage.label(pred, s26)
    dil_cc, n_dil = ndimage.label(ndimage.binary_dilation(gt, s18, iterations=k) if k else gt, s26)
    combined = np.zeros_like(gt_cc)
    for comp in range(1, n_dil + 1):
        combined[(dil_cc == comp) & (gt_cc > 0)] = comp
    tp_components, scores = [], []
    for comp in range(1, n_dil + 1):
        lesion = combined == comp
        if not lesion.any():
            continue
        region = ndimage.binary_dilation(lesion, s18, iterations=k) if k else lesion
        hits = [c for c in np.unique(pred_cc[region]) if c]
        tp_components += hits
        matched = np.isin(pred_cc, hits)
        d = 2 * (lesion & matched).sum() / (lesion.sum() + matched.sum())
        hd = reference_lesion_hd95(matched, lesion, spacing) if hits else penalty
        scores.append((lesion.sum() * vox, d, hd))
    n_fp = len(set(range(1, n_pred + 1)) - set(tp_components))
    kept = [s for s in scores if s[0] > thresh]
    denom = len(kept) + n_fp
    if denom == 0:
        return 1.0, 0.0, n_fp
    return sum(s[1] for s in kept) / denom, (sum(s[2] for s in kept) + n_fp * penalty) / denom, n_fp


def test_one_matched_one_missed_one_false_positive():
    gt = np.zeros((40, 40, 40), bool)
    pred = np.zeros_like(gt)
    cube(gt, (5, 5, 5), 5)        # lesion A, 125 voxels
    cube(gt, (25, 25, 25), 5)     # lesion B, 125 voxels, missed
    cube(pred, (6, 5, 5), 5)      # matches A, shifted by one voxel: overlap 4*5*5 = 100
    cube(pred, (5, 30, 30), 4)    # false positive, far from every GT lesion
    res = lesionwise.lesion_wise_scores(pred, gt, (1, 1, 1))
    assert (res.num_tp, res.num_fn, res.num_fp) == (1, 1, 1)
    assert res.num_gt_lesions == 2 and res.num_pred_lesions == 2
    dice_a = 2 * 100 / (125 + 125)
    hd_a = reference_lesion_hd95(pred & (np.arange(40)[None, :, None] < 20), gt & (np.arange(40)[:, None, None] < 20),
                                 (1, 1, 1))
    assert res.dice == pytest.approx((dice_a + 0.0) / 3)
    assert res.hd95 == pytest.approx((hd_a + PENALTY + PENALTY) / 3)
    assert res.as_dict()["lesion_fp"] == 1


def test_small_lesions_ignored_but_not_false_positives():
    gt = np.zeros((30, 30, 30), bool)
    pred = np.zeros_like(gt)
    cube(gt, (3, 3, 3), 5)                   # 125 voxels, perfectly predicted
    cube(pred, (3, 3, 3), 5)
    cube(gt, (20, 20, 20), 2)                # 8 voxels <= 50 mm^3: ignored when missed ...
    res = lesionwise.lesion_wise_scores(pred, gt, (1, 1, 1))
    assert (res.num_tp, res.num_fn, res.num_fp) == (1, 0, 0)
    assert res.dice == 1.0 and res.hd95 == 0.0
    cube(pred, (20, 20, 21), 2)              # ... and its detection is neither TP (counted) nor FP
    res = lesionwise.lesion_wise_scores(pred, gt, (1, 1, 1))
    assert (res.num_tp, res.num_fn, res.num_fp) == (1, 0, 0)
    # the threshold is a volume in mm^3: with 2 x 2 x 2 mm voxels the small lesion has 64 mm^3 and counts
    res = lesionwise.lesion_wise_scores(pred, gt, (2, 2, 2))
    assert (res.num_tp, res.num_fn) == (2, 0)


def test_nearby_lesions_are_merged_by_dilation_and_matched_through_it():
    gt = np.zeros((30, 30, 30), bool)
    pred = np.zeros_like(gt)
    cube(gt, (5, 5, 5), 4)
    cube(gt, (5, 5, 11), 4)      # gap of 2 voxels: dilations (3 iterations) touch -> one lesion
    res = lesionwise.lesion_wise_scores(pred, gt, (1, 1, 1))
    assert res.num_gt_lesions == 1 and res.num_fn == 1
    assert lesionwise.lesion_wise_scores(pred, gt, (1, 1, 1), dilation_iterations=0).num_gt_lesions == 2
    # a prediction 2 voxels beside the lesion (no overlap) is matched through the dilation: TP with Dice 0
    cube(pred, (5, 11, 5), 3)
    res = lesionwise.lesion_wise_scores(pred, gt, (1, 1, 1))
    assert (res.num_tp, res.num_fp) == (1, 0) and res.dice == 0.0


def test_26_connectivity_of_predicted_lesions():
    gt = np.zeros((20, 20, 20), bool)
    pred = np.zeros_like(gt)
    pred[2, 2, 2] = pred[3, 3, 3] = True     # corner-touching voxels: one component
    res = lesionwise.lesion_wise_scores(pred, gt, (1, 1, 1))
    assert res.num_pred_lesions == 1 and res.num_fp == 1
    assert lesionwise.label_lesions(pred)[1] == 1


def test_empty_rules():
    empty = np.zeros((12, 12, 12), bool)
    res = lesionwise.lesion_wise_scores(empty, empty, (1, 1, 1))
    assert (res.dice, res.hd95) == (1.0, 0.0)
    pred = empty.copy()
    pred[1, 1, 1] = pred[8, 8, 8] = True
    res = lesionwise.lesion_wise_scores(pred, empty, (1, 1, 1))
    assert (res.dice, res.hd95, res.num_fp) == (0.0, PENALTY, 2)
    res = lesionwise.lesion_wise_scores(empty, pred, (1, 1, 1))   # only small GT lesions, nothing predicted
    assert (res.dice, res.hd95, res.num_fn) == (1.0, 0.0, 0)


@pytest.mark.parametrize("seed,spacing", [(0, (1.0, 1.0, 1.0)), (1, (1.0, 1.0, 2.0)), (2, (2.0, 0.9, 1.1))])
def test_matches_full_volume_reference_on_random_multi_lesion_volumes(seed, spacing):
    rng = np.random.default_rng(seed)
    shape = (60, 56, 52)
    gt = np.zeros(shape, bool)
    pred = np.zeros(shape, bool)
    for _ in range(6):
        c = rng.integers(2, 46, 3)
        s = rng.integers(2, 7, 3)
        cube(gt, c, s)
        if rng.random() < 0.7:
            cube(pred, c + rng.integers(-2, 3, 3), s + rng.integers(-1, 2, 3))
    for _ in range(3):
        cube(pred, rng.integers(0, 50, 3), rng.integers(1, 4, 3))
    res = lesionwise.lesion_wise_scores(pred, gt, spacing)
    ref_dice, ref_hd, ref_fp = naive_lesion_wise(pred, gt, spacing)
    assert res.dice == pytest.approx(ref_dice, abs=1e-9)
    assert res.hd95 == pytest.approx(ref_hd, abs=1e-6)
    assert res.num_fp == ref_fp


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (3.0, 0.9, 0.9)])
def test_crafted_touching_lesions_distant_blob_and_border(spacing):
    """Touching GT lesions, a prediction spanning both, a distant false-positive blob, lesions on the border."""
    shape = (24, 40, 40)
    gt = np.zeros(shape, bool)
    pred = np.zeros(shape, bool)
    cube(gt, (4, 4, 4), (6, 8, 8))
    cube(gt, (4, 12, 4), (6, 6, 6))            # face-touching the first: one 26-component
    cube(pred, (5, 5, 5), (6, 13, 8))          # one prediction over both
    cube(gt, (0, 30, 30), (4, 10, 10))         # on the array border, matched by a shifted prediction
    cube(pred, (0, 31, 29), (5, 9, 11))
    cube(gt, (18, 2, 30), (5, 5, 5))           # missed
    cube(pred, (20, 34, 2), (3, 3, 3))         # distant false positive
    res = lesionwise.lesion_wise_scores(pred, gt, spacing)
    ref_dice, ref_hd, ref_fp = naive_lesion_wise(pred, gt, spacing)
    assert res.num_fp == ref_fp == 1
    assert res.dice == pytest.approx(ref_dice, abs=1e-9)
    assert res.hd95 == pytest.approx(ref_hd, abs=0.01)
    empty = np.zeros(shape, bool)
    assert lesionwise.lesion_wise_scores(empty, gt, spacing).hd95 == pytest.approx(naive_lesion_wise(empty, gt,
                                                                                                     spacing)[1])


def test_region_scores_use_brats_regions():
    gt = np.zeros((20, 20, 20), np.uint8)
    gt[4:14, 4:14, 4:14] = 1
    gt[6:12, 6:12, 6:12] = 3
    pred = gt.copy()
    pred[6:12, 6:12, 6:12] = 2            # ET predicted as necrosis
    out = lesionwise.lesion_wise_region_scores(pred, gt, (1, 1, 1))
    assert out["WT"].dice == 1.0 and out["TC"].dice == 1.0
    assert out["ET"].num_fn == 1 and out["ET"].dice == 0.0 and out["ET"].hd95 == PENALTY
