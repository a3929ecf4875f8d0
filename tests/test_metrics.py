"""Region-wise metrics against independent references: hand counts, brute-force surface distances, SimpleITK, scipy."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.distance import cdist, directed_hausdorff

from nnunet_kd.evaluation import metrics


def brute_surface(mask: np.ndarray) -> np.ndarray:
    """Surface voxels by explicit 6-neighbour checks (outside the array is background)."""
    padded = np.pad(mask, 1)
    interior = mask.copy()
    core = (slice(1, -1),) * 3
    for axis in range(3):
        for step in (1, -1):
            interior &= np.roll(padded, step, axis=axis)[core]
    return mask & ~interior


def brute_hd(pred: np.ndarray, gt: np.ndarray, spacing, q: float = 95.0) -> float:
    """All-pairs surface distances in mm with numpy/scipy cdist; max of the two directed percentiles."""
    sp = np.asarray(spacing, dtype=float)
    a = np.argwhere(brute_surface(pred)) * sp
    b = np.argwhere(brute_surface(gt)) * sp
    d = cdist(a, b)
    return float(max(np.percentile(d.min(axis=1), q), np.percentile(d.min(axis=0), q)))


def random_blobs(rng: np.random.Generator, shape, fill: float) -> np.ndarray:
    from scipy import ndimage

    noise = ndimage.gaussian_filter(rng.random(shape), 1.2)
    return noise > np.quantile(noise, 1 - fill)


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
def test_hd95_matches_brute_force_random(spacing):
    rng = np.random.default_rng(int(sum(spacing) * 10))
    for _ in range(4):
        pred = random_blobs(rng, (14, 12, 11), 0.25)
        gt = random_blobs(rng, (14, 12, 11), 0.3)
        assert metrics.hd95(pred, gt, spacing) == pytest.approx(brute_hd(pred, gt, spacing), abs=1e-9)
        # the metric is symmetric by definition (max of both directions)
        assert metrics.hd95(gt, pred, spacing) == pytest.approx(metrics.hd95(pred, gt, spacing), abs=1e-12)


def test_hd95_crafted_cubes_and_border():
    # Two cubes: the second shifted by 3 voxels along axis 0 with 2 mm spacing there; touching the array border.
    pred = np.zeros((12, 8, 8), bool)
    gt = np.zeros((12, 8, 8), bool)
    pred[0:5, 0:4, 0:4] = True
    gt[3:8, 0:4, 0:4] = True
    spacing = (2.0, 1.0, 1.0)
    expected = brute_hd(pred, gt, spacing)
    assert metrics.hd95(pred, gt, spacing) == pytest.approx(expected)
    # full Hausdorff of the surfaces: the faces at axis-0 index 0 and 7 are 3 voxels * 2 mm from the other surface
    assert metrics.hausdorff_distance(pred, gt, spacing, percentile=100) == pytest.approx(6.0)
    # identical masks: 0; a one-voxel shift along the 2 mm axis gives at most 2 mm
    assert metrics.hd95(pred, pred, spacing) == 0.0
    shifted = np.roll(pred, 1, axis=0)
    assert 0 < metrics.hd95(pred, shifted, spacing) <= 2.0 + 1e-9


def test_hausdorff_100_matches_simpleitk_and_scipy():
    sitk = pytest.importorskip("SimpleITK")
    rng = np.random.default_rng(11)
    spacing = (2.0, 0.8, 1.2)   # numpy axis order (z, y, x)
    pred = random_blobs(rng, (12, 14, 13), 0.2)
    gt = random_blobs(rng, (12, 14, 13), 0.25)
    ours = metrics.hausdorff_distance(pred, gt, spacing, percentile=100)

    def surface_image(mask):
        img = sitk.GetImageFromArray(brute_surface(mask).astype(np.uint8))
        img.SetSpacing(tuple(float(s) for s in spacing[::-1]))
        return img

    f = sitk.HausdorffDistanceImageFilter()
    f.Execute(surface_image(pred), surface_image(gt))
    assert ours == pytest.approx(f.GetHausdorffDistance(), abs=1e-6)

    a = np.argwhere(brute_surface(pred)) * spacing
    b = np.argwhere(brute_surface(gt)) * spacing
    assert ours == pytest.approx(max(directed_hausdorff(a, b)[0], directed_hausdorff(b, a)[0]), abs=1e-9)


def test_directed_distances_are_per_surface_voxel():
    rng = np.random.default_rng(5)
    pred, gt = random_blobs(rng, (10, 10, 10), 0.2), random_blobs(rng, (10, 10, 10), 0.2)
    d_pg, d_gp = metrics.directed_surface_distances(pred, gt, (1.0, 1.0, 2.0))
    assert d_pg.size == brute_surface(pred).sum() and d_gp.size == brute_surface(gt).sum()
    a = np.argwhere(brute_surface(pred)) * (1.0, 1.0, 2.0)
    b = np.argwhere(brute_surface(gt)) * (1.0, 1.0, 2.0)
    np.testing.assert_allclose(np.sort(d_pg), np.sort(cdist(a, b).min(axis=1)), atol=1e-9)


def test_empty_region_rules():
    empty = np.zeros((6, 6, 6), bool)
    full = empty.copy()
    full[2:4, 2:4, 2:4] = True
    assert metrics.dice(empty, empty) == 1.0
    assert metrics.hd95(empty, empty, (1, 1, 1)) == 0.0
    assert metrics.sensitivity(empty, empty) == 1.0
    assert metrics.dice(full, empty) == 0.0 and metrics.dice(empty, full) == 0.0
    assert metrics.hd95(full, empty) == pytest.approx(373.13)
    assert metrics.hd95(empty, full) == pytest.approx(metrics.HD95_PENALTY_MM)
    assert metrics.hd95(empty, full, empty_penalty=374.0) == 374.0
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
        assert out[region]["hd95"] == pytest.approx(brute_hd(p, g, spacing))
        assert out[region]["sensitivity"] == pytest.approx(metrics.sensitivity(p, g))
        assert out[region]["specificity"] == pytest.approx(metrics.specificity(p, g))
        assert out[region]["vol_pred_mm3"] == pytest.approx(p.sum() * 1.0)   # voxel = 1 * 2 * 0.5 mm^3
        assert out[region]["vol_gt_mm3"] == pytest.approx(g.sum() * 1.0)
    assert out["TC"]["dice"] == 1.0
    assert out["ET"]["dice"] == pytest.approx(2 * 8 / (8 + 64))
    empty = metrics.region_metrics(np.zeros_like(gt), np.zeros_like(gt), spacing)
    assert all(v["dice"] == 1.0 and v["hd95"] == 0.0 for v in empty.values())


def test_bad_arguments():
    with pytest.raises(ValueError, match="shape"):
        metrics.dice(np.zeros((2, 2, 2)), np.zeros((2, 2, 3)))
    with pytest.raises(ValueError, match="spacing"):
        metrics.hd95(np.ones((2, 2, 2)), np.ones((2, 2, 2)), (1.0, 1.0))
