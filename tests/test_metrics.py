"""Region-wise metrics against independent references: hand counts, set formulas, and for HD95 the BraTS 2023
reference definition computed with DeepMind's ``surface_distance`` package on the full volumes."""

from __future__ import annotations

import numpy as np
import pytest

from nnunet_kd.evaluation import metrics

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # surface_distance uses ndimage.filters

REFERENCE_PENALTY = 374.0


def reference_hd95(pred: np.ndarray, gt: np.ndarray, spacing) -> float:
    """HD95 as BraTS-2023-Metrics ``metrics.py`` computes its legacy HD95, on the full volumes.

    Both empty: 0. Otherwise ``surface_distance.compute_robust_hausdorff(compute_surface_distances(gt, pred,
    spacing), 95)``; when exactly one mask is empty that returns ``inf`` (written ``np.Inf``, which numpy 2 no
    longer has, so that branch is taken here without calling it) and ``metrics.py`` replaces ``inf`` by 374."""
    import surface_distance

    pred, gt = np.asarray(pred, bool), np.asarray(gt, bool)
    if not pred.any() and not gt.any():
        return 0.0
    if not pred.any() or not gt.any():
        return REFERENCE_PENALTY
    sd = surface_distance.compute_surface_distances(gt, pred, tuple(float(s) for s in spacing))
    return float(surface_distance.compute_robust_hausdorff(sd, 95))


def voxel_percentile_hd95(pred: np.ndarray, gt: np.ndarray, spacing) -> float:
    """The definition nnunet-kd used before (6-connected erosion surfaces, interpolated voxel-count percentile)."""
    from scipy import ndimage

    def surf(m):
        return m & ~ndimage.binary_erosion(m, ndimage.generate_binary_structure(3, 1), border_value=0)

    sp, sg = surf(pred), surf(gt)
    d_pg = ndimage.distance_transform_edt(~sg, sampling=spacing)[sp]
    d_gp = ndimage.distance_transform_edt(~sp, sampling=spacing)[sg]
    return float(max(np.percentile(d_pg, 95), np.percentile(d_gp, 95)))


def random_blobs(rng: np.random.Generator, shape, fill: float) -> np.ndarray:
    from scipy import ndimage

    noise = ndimage.gaussian_filter(rng.random(shape), 1.2)
    return noise > np.quantile(noise, 1 - fill)


def ball(shape, centre, radius_mm, spacing) -> np.ndarray:
    grids = np.indices(shape).astype(float)
    d2 = sum(((g - c) * s) ** 2 for g, c, s in zip(grids, centre, spacing))
    return d2 <= radius_mm ** 2


def test_dice_sensitivity_specificity_by_hand():
    pred = np.zeros((4, 4, 4), bool)
    gt = np.zeros((4, 4, 4), bool)
    pred[0, 0, :] = True          # 4 voxels
    pred[1, 0, :2] = True         # 2 more -> |P| = 6
    gt[0, 0, 1:] = True           # 3 voxels, all predicted
    gt[3, 3, 3] = True            # 1 missed -> |G| = 4, TP 3, FP 3, FN 1, TN 57
    assert metrics.confusion_counts(pred, gt) == (3, 3, 1, 57)
    assert metrics.dice(pred, gt) == pytest.approx(2 * 3 / (6 + 4))
    assert metrics.sensitivity(pred, gt) == pytest.approx(3 / 4)
    assert metrics.specificity(pred, gt) == pytest.approx(57 / 60)


def test_dice_matches_set_formula_on_random_volumes():
    rng = np.random.default_rng(3)
    for _ in range(5):
        pred, gt = rng.random((9, 8, 7)) > 0.6, rng.random((9, 8, 7)) > 0.5
        p, g = set(map(tuple, np.argwhere(pred))), set(map(tuple, np.argwhere(gt)))
        assert metrics.dice(pred, gt) == pytest.approx(2 * len(p & g) / (len(p) + len(g)))
        assert metrics.sensitivity(pred, gt) == pytest.approx(len(p & g) / len(g))
        assert metrics.specificity(pred, gt) == pytest.approx((pred.size - len(p | g)) / (pred.size - len(g)))


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (2.5, 1.0, 0.7), (1.0, 3.0, 1.5)])
def test_hd95_equals_reference_on_random_blobs(spacing):
    rng = np.random.default_rng(int(sum(spacing) * 10))
    for _ in range(4):
        pred = random_blobs(rng, (14, 12, 11), 0.25)       # blobs touch the array border on every side
        gt = random_blobs(rng, (14, 12, 11), 0.3)
        assert metrics.hd95(pred, gt, spacing) == pytest.approx(reference_hd95(pred, gt, spacing), abs=0.01)
        assert metrics.hd95(gt, pred, spacing) == pytest.approx(metrics.hd95(pred, gt, spacing), abs=1e-12)


CRAFTED_SPACINGS = [(1.0, 1.0, 1.0), (3.0, 0.9, 0.9), (1.0, 1.0, 5.0)]


@pytest.mark.parametrize("spacing", CRAFTED_SPACINGS)
def test_hd95_distant_false_positive_blob(spacing):
    """A good prediction plus a small far blob: the case where voxel-count and area-weighted percentiles split."""
    shape = (48, 64, 64) if spacing[0] == 1.0 else (24, 80, 80)
    centre = tuple(n // 3 for n in shape)
    gt = ball(shape, centre, 12.0, spacing)
    pred = ball(shape, tuple(c + 1 for c in centre), 12.0, spacing)
    far = tuple(n - 5 for n in shape)
    pred |= ball(shape, far, 3.5, spacing)
    ours = metrics.hd95(pred, gt, spacing)
    assert ours == pytest.approx(reference_hd95(pred, gt, spacing), abs=0.01)
    assert metrics.hausdorff_distance(pred, gt, spacing, percentile=100) > ours


@pytest.mark.parametrize("spacing", CRAFTED_SPACINGS)
def test_hd95_touching_masks_and_volume_border(spacing):
    shape = (10, 12, 9)
    gt = np.zeros(shape, bool)
    pred = np.zeros(shape, bool)
    gt[0:6, 0:5, 0:9] = True          # touches five faces of the array
    pred[6:10, 0:5, 2:9] = True       # face-touching the reference, also on the far border
    pred[9, 11, 8] = True             # a single voxel in the far corner
    assert metrics.hd95(pred, gt, spacing) == pytest.approx(reference_hd95(pred, gt, spacing), abs=0.01)
    full = np.ones(shape, bool)       # a mask filling the whole array
    assert metrics.hd95(full, gt, spacing) == pytest.approx(reference_hd95(full, gt, spacing), abs=0.01)
    assert metrics.hd95(gt, gt, spacing) == 0.0


def test_hd95_differs_from_the_voxel_count_definition():
    """The reason for the change: on a distant-blob case the old definition is off by millimetres."""
    spacing = (3.0, 0.9, 0.9)
    shape = (24, 80, 80)
    gt = ball(shape, (8, 26, 26), 12.0, spacing)
    pred = ball(shape, (9, 27, 27), 12.0, spacing) | ball(shape, (19, 75, 75), 3.5, spacing)
    ref = reference_hd95(pred, gt, spacing)
    assert metrics.hd95(pred, gt, spacing) == pytest.approx(ref, abs=0.01)
    assert abs(voxel_percentile_hd95(pred, gt, spacing) - ref) > 0.5


def test_surfel_area_table_is_geometric():
    """A flat face through a 2x2x2 corner neighbourhood has the area of one voxel face (independent check)."""
    spacing = (2.0, 1.0, 1.5)
    mask = np.zeros((6, 6, 6), bool)
    mask[:3] = True                                     # a slab: its face normal is along axis 0
    sd = metrics.surface_distances(mask, np.roll(mask, 1, axis=0), spacing)
    interior_face = np.isclose(sd["areas_pred"], 1.0 * 1.5)
    assert interior_face.sum() >= 16
    assert metrics.hd95(mask, np.roll(mask, 1, axis=0), spacing) == pytest.approx(2.0)


def test_empty_region_rules():
    empty = np.zeros((6, 6, 6), bool)
    full = empty.copy()
    full[2:4, 2:4, 2:4] = True
    assert metrics.dice(empty, empty) == 1.0
    assert metrics.hd95(empty, empty, (1, 1, 1)) == 0.0
    assert metrics.sensitivity(empty, empty) == 1.0
    assert metrics.dice(full, empty) == 0.0 and metrics.dice(empty, full) == 0.0
    assert metrics.hd95(full, empty) == REFERENCE_PENALTY == reference_hd95(full, empty, (1, 1, 1))
    assert metrics.hd95(empty, full) == REFERENCE_PENALTY == metrics.HD95_PENALTY_MM
    assert metrics.hd95(empty, full, empty_penalty=metrics.LEGACY_HD95_PENALTY_MM) == 373.13
    assert metrics.sensitivity(full, empty) == 0.0      # false positives with an empty reference
    assert metrics.sensitivity(empty, full) == 0.0
    assert metrics.specificity(full, full) == 1.0
    assert metrics.specificity(np.ones((2, 2, 2), bool), np.ones((2, 2, 2), bool)) == 1.0  # no negatives at all


def test_region_metrics_on_label_maps():
    gt = np.zeros((10, 10, 10), np.uint8)
    pred = np.zeros_like(gt)
    gt[2:8, 2:8, 2:8] = 1      # edema
    gt[3:7, 3:7, 3:7] = 2      # necrosis
    gt[4:6, 4:6, 4:6] = 3      # enhancing
    pred[2:8, 2:8, 2:7] = 1
    pred[3:7, 3:7, 3:7] = 3    # necrosis predicted as enhancing: TC right, ET too large
    spacing = (1.0, 2.0, 0.5)
    out = metrics.region_metrics(pred, gt, spacing)
    assert set(out) == {"WT", "TC", "ET"}
    for region, labels in {"WT": (1, 2, 3), "TC": (2, 3), "ET": (3,)}.items():
        p, g = np.isin(pred, labels), np.isin(gt, labels)
        assert out[region]["dice"] == pytest.approx(metrics.dice(p, g))
        assert out[region]["hd95"] == pytest.approx(reference_hd95(p, g, spacing), abs=0.01)
        assert out[region]["sensitivity"] == pytest.approx(metrics.sensitivity(p, g))
        assert out[region]["specificity"] == pytest.approx(metrics.specificity(p, g))
        assert out[region]["vol_pred_mm3"] == pytest.approx(p.sum() * 1.0)   # voxel = 1 * 2 * 0.5 mm^3
        assert out[region]["vol_gt_mm3"] == pytest.approx(g.sum() * 1.0)
    assert out["TC"]["dice"] == 1.0
    assert out["ET"]["dice"] == pytest.approx(2 * 8 / (8 + 64))
    empty = metrics.region_metrics(np.zeros_like(gt), np.zeros_like(gt), spacing)
    assert all(v["dice"] == 1.0 and v["hd95"] == 0.0 for v in empty.values())
    only_gt = metrics.region_metrics(np.zeros_like(gt), gt, spacing)
    assert all(v["hd95"] == REFERENCE_PENALTY for v in only_gt.values())


def test_bad_arguments():
    with pytest.raises(ValueError, match="shape"):
        metrics.dice(np.zeros((2, 2, 2)), np.zeros((2, 2, 3)))
    with pytest.raises(ValueError, match="spacing"):
        metrics.hd95(np.ones((2, 2, 2)), np.ones((2, 2, 2)), (1.0, 1.0))
