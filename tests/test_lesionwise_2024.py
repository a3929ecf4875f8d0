"""BraTS 2024 post-treatment (GLI-POST) lesion-wise scores against an independent full-volume reference.

The reference below is written from the definition in BraTS-2024-Metrics ``metrics_GLI.py`` (commit 9a0ab9c7),
step by step on whole volumes in the reference's array orientation (the NIfTI order i, j, k, labelled in C
order as ``cc3d`` does on scipy's C-ordered dilation), with DeepMind's ``surface_distance`` for the HD95 of each
lesion; it uses none of nnunet-kd's evaluation functions. Volumes are in canonical labels (ED/SNFH 1,
NCR/NETC 2, ET 3, RC 4) in SimpleITK order (k, j, i).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from nnunet_kd.evaluation import lesionwise, lesionwise_2024

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # surface_distance uses ndimage.filters

S18 = ndimage.generate_binary_structure(3, 2)
S26 = np.ones((3, 3, 3), bool)
REF_REGIONS = {"WT": (1, 2, 3), "TC": (2, 3), "ET": (3,), "NETC": (2,), "SNFH": (1,), "RC": (4,)}
REF_DILATION = {"WT": 3, "TC": 3, "ET": 3, "NETC": 5, "SNFH": 3, "RC": 5}  # "SFNH" typo: SNFH keeps 3
REF_THRESHOLD = {"WT": 20, "TC": 20, "ET": 10, "NETC": 20, "SNFH": 20, "RC": 20}
REF_OTHERS = {"NETC": ("ET", "RC"), "ET": ("NETC", "RC"), "RC": ("ET", "NETC"), "SNFH": ("ET", "RC", "NETC")}
REF_PENALTY = 337.0


def _ref_combined(mask: np.ndarray, k: int) -> np.ndarray:
    """GT/pred components merged by dilation; numbered as the dilated mask's components in C order."""
    dilated = ndimage.binary_dilation(mask, S18, iterations=k)
    dcc, n = ndimage.label(dilated, S26)
    out = np.zeros(mask.shape, np.int64)
    for comp in range(1, n + 1):
        out[(dcc == comp) & mask] = comp
    return out


def _ref_touching(a_map: np.ndarray, b_map: np.ndarray) -> set[tuple[int, int]]:
    pairs = set()
    for a in np.unique(a_map)[1:]:
        near = ndimage.binary_dilation(a_map == a, S18)
        for b in np.unique(b_map)[1:]:
            if (near & (b_map == b)).any():
                pairs.add((int(a), int(b)))
    return pairs


def _ref_relabel(a_map: np.ndarray, pairs: set[tuple[int, int]]) -> np.ndarray:
    if len(pairs) <= 1:
        return a_map
    top = int(a_map.max())
    new_of_b: dict[int, int] = {}
    for _, b in sorted(pairs):
        new_of_b.setdefault(b, top + 1 + len(new_of_b))
    new_of_a: dict[int, int] = {}
    for a, b in sorted(pairs):
        new_of_a.setdefault(a, new_of_b[b])
    out = a_map.copy()
    for a, new in new_of_a.items():
        out[a_map == a] = new
    return out


def _ref_side(labels: np.ndarray, prediction: bool) -> dict[str, np.ndarray]:
    base = {}
    for t, values in REF_REGIONS.items():
        cc = _ref_combined(np.isin(labels, values), REF_DILATION[t])
        if prediction:
            ids, counts = np.unique(cc, return_counts=True)
            cc[np.isin(cc, ids[(counts <= REF_THRESHOLD[t]) & (ids != 0)])] = 0
        base[t] = cc
    merged = dict(base)
    for t, others in REF_OTHERS.items():
        cur = base[t]
        for o in others:
            cur = _ref_relabel(cur, _ref_touching(cur, base[o]))
        merged[t] = cur
    return merged


def _ref_hd95(gt_lesion: np.ndarray, pred_lesions: np.ndarray, spacing) -> float:
    import surface_distance

    if not pred_lesions.any():  # the package returns inf (and fails on numpy 2); the reference writes 337
        return REF_PENALTY
    sd = surface_distance.compute_surface_distances(gt_lesion, pred_lesions, tuple(float(s) for s in spacing))
    hd = float(surface_distance.compute_robust_hausdorff(sd, 95))
    return REF_PENALTY if np.isinf(hd) else hd


def reference_2024(pred_zyx: np.ndarray, gt_zyx: np.ndarray, spacing_zyx) -> dict[str, dict]:
    """The 2024 GLI procedure on full volumes: {region: {dice, hd95, tp, fn, fp, n_gt}}."""
    pred, gt = np.ascontiguousarray(pred_zyx.T), np.ascontiguousarray(gt_zyx.T)  # NIfTI order (i, j, k)
    sp = tuple(float(s) for s in spacing_zyx)[::-1]
    voxel = float(np.prod(sp))
    gts, preds = _ref_side(gt, False), _ref_side(pred, True)
    out = {}
    for t in REF_REGIONS:
        g, p = gts[t], preds[t]
        tp, rows = [], []
        for comp in np.unique(g)[1:]:
            lesion = g == comp
            hits = [int(c) for c in np.unique(p[ndimage.binary_dilation(lesion, S18, iterations=REF_DILATION[t])])
                    if c != 0]
            tp += hits
            matched = np.isin(p, hits)
            dice = 2.0 * (lesion & matched).sum() / (lesion.sum() + matched.sum())
            rows.append((lesion.sum() * voxel, dice, _ref_hd95(lesion, matched, sp), bool(hits)))
        fp = len(set(int(c) for c in np.unique(p)[1:]) - set(tp))
        kept = [r for r in rows if r[0] > REF_THRESHOLD[t]]
        denom = len(kept) + fp
        dice = sum(r[1] for r in kept) / denom if denom else 1.0
        hd = (sum(r[2] for r in kept) + fp * REF_PENALTY) / denom if denom else 0.0
        out[t] = {"dice": dice, "hd95": hd, "tp": sum(r[3] for r in kept), "fn": sum(not r[3] for r in kept),
                  "fp": fp, "n_gt": len(rows)}
    return out


def assert_matches_reference(pred, gt, spacing) -> dict:
    ours = lesionwise_2024.lesion_wise_region_scores_2024(pred, gt, spacing)
    ref = reference_2024(pred, gt, spacing)
    for region, r in ref.items():
        o = ours[region]
        assert o.dice == pytest.approx(r["dice"], abs=1e-9), region
        assert abs(o.hd95 - r["hd95"]) <= 0.01, (region, o.hd95, r["hd95"])
        assert (o.num_tp, o.num_fn, o.num_fp, o.num_gt_lesions) == (r["tp"], r["fn"], r["fp"], r["n_gt"]), region
    return ours


def box(seg: np.ndarray, label: int, lo, hi) -> None:
    seg[tuple(slice(a, b) for a, b in zip(lo, hi))] = label


def touching_tissues_case() -> tuple[np.ndarray, np.ndarray]:
    """Two ET blobs 8 voxels apart (not merged by ET's own dilation) joined by the NETC between them, a cavity
    touching the first ET blob, oedema around; the prediction finds only the first ET blob."""
    gt = np.zeros((24, 24, 36), np.uint8)
    box(gt, 1, (4, 4, 2), (20, 20, 34))       # SNFH (canonical ED 1)
    box(gt, 3, (8, 8, 6), (12, 12, 10))       # ET blob 1 (64 voxels)
    box(gt, 2, (8, 8, 10), (12, 12, 18))      # NETC between the blobs
    box(gt, 3, (8, 8, 18), (12, 12, 22))      # ET blob 2
    box(gt, 4, (12, 8, 6), (16, 12, 10))      # RC touching ET blob 1
    pred = gt.copy()
    pred[gt == 3] = 1
    box(pred, 3, (8, 8, 6), (12, 12, 10))     # only ET blob 1 predicted
    pred[(gt == 4) & (np.arange(36)[None, None, :] >= 8)] = 1  # half the cavity missed
    return pred, gt


def test_touching_tissues_are_merged_into_one_lesion():
    pred, gt = touching_tissues_case()
    ours = assert_matches_reference(pred, gt, (1.0, 1.0, 1.0))
    et = ours["ET"]
    # the two ET blobs are one lesion (both touch the same NETC lesion): Dice 2*64 / (128 + 64), no miss
    assert (et.num_gt_lesions, et.num_tp, et.num_fn) == (1, 1, 0)
    assert et.dice == pytest.approx(2 * 64 / (128 + 64))
    # the BraTS 2023 procedure sees two ET lesions, one missed (Dice (1 + 0) / 2)
    old = lesionwise.lesion_wise_scores(pred == 3, gt == 3, (1, 1, 1), 3, 20.0)
    assert (old.num_gt_lesions, old.num_fn) == (2, 1) and old.dice == pytest.approx(0.5)


def test_small_lesions_gt_threshold_in_mm3_prediction_threshold_in_voxels():
    gt = np.zeros((30, 30, 30), np.uint8)
    pred = np.zeros_like(gt)
    box(gt, 3, (2, 2, 2), (4, 4, 4))          # ET of 8 voxels
    box(gt, 3, (2, 20, 2), (4, 22, 5))        # ET of 12 voxels
    box(pred, 3, (2, 2, 2), (4, 4, 5))        # matches the 8-voxel lesion (12 voxels, kept)
    box(pred, 3, (20, 20, 20), (22, 22, 24))  # 16-voxel ET far from everything: false positive
    box(pred, 3, (20, 2, 20), (22, 4, 22))    # 8-voxel ET: deleted (<= 10 voxels), not a false positive
    box(pred, 2, (12, 12, 12), (14, 15, 15))  # 18-voxel NETC: deleted (<= 20 voxels)
    box(gt, 2, (25, 25, 25), (27, 27, 29))    # 16-voxel NETC: ignored (<= 20 mm3)
    iso = assert_matches_reference(pred, gt, (1.0, 1.0, 1.0))
    # 8 mm3 lesion ignored, 12 mm3 lesion missed, one FP (the matched 8-voxel prediction is no FP)
    assert (iso["ET"].num_tp, iso["ET"].num_fn, iso["ET"].num_fp) == (0, 1, 1)
    assert iso["ET"].dice == 0.0 and iso["ET"].hd95 == pytest.approx(337.0)
    assert (iso["NETC"].num_fp, iso["NETC"].num_fn, iso["NETC"].dice) == (0, 0, 1.0)
    # 1.5 mm slices: the 8-voxel GT lesion is 12 mm3 (kept, matched); the prediction threshold stays 10 voxels
    aniso = assert_matches_reference(pred, gt, (1.5, 1.0, 1.0))
    assert (aniso["ET"].num_tp, aniso["ET"].num_fn, aniso["ET"].num_fp) == (1, 1, 1)
    assert (aniso["NETC"].num_fn, aniso["NETC"].num_fp) == (1, 0)  # 16 voxels = 24 mm3: kept, missed


def test_resection_cavity_matched_through_five_dilations_and_false_positive():
    gt = np.zeros((30, 30, 40), np.uint8)
    pred = np.zeros_like(gt)
    box(gt, 4, (10, 10, 5), (16, 16, 11))      # cavity
    box(pred, 4, (10, 10, 15), (16, 16, 21))   # 4 voxels away: matched by dilation 5, not by 3
    box(pred, 4, (2, 2, 32), (6, 6, 36))       # false positive cavity
    ours = assert_matches_reference(pred, gt, (1.0, 1.0, 1.0))
    rc = ours["RC"]
    assert (rc.num_tp, rc.num_fn, rc.num_fp) == (1, 0, 1) and rc.dice == 0.0
    assert 337.0 > rc.hd95 > 337.0 / 2
    assert ours["WT"].dice == 1.0 and ours["WT"].hd95 == 0.0  # RC is in neither WT nor TC


def test_empty_regions_and_penalties():
    gt = np.zeros((20, 20, 20), np.uint8)
    pred = np.zeros_like(gt)
    empty = lesionwise_2024.lesion_wise_region_scores_2024(pred, gt, (1, 1, 1))
    assert all((r.dice, r.hd95, r.num_fp) == (1.0, 0.0, 0) for r in empty.values())
    box(gt, 3, (5, 5, 5), (9, 9, 9))
    ours = assert_matches_reference(pred, gt, (1.0, 1.0, 1.0))
    assert (ours["ET"].dice, ours["ET"].hd95, ours["ET"].num_fn) == (0.0, 337.0, 1)
    assert (ours["RC"].dice, ours["RC"].hd95) == (1.0, 0.0) and (ours["SNFH"].dice, ours["SNFH"].hd95) == (1.0, 0.0)
    ours = assert_matches_reference(gt, np.zeros_like(gt), (1.0, 1.0, 1.0))  # prediction only: FP
    assert (ours["TC"].dice, ours["TC"].hd95, ours["TC"].num_fp) == (0.0, 337.0, 1)


def non_transitive_case() -> np.ndarray:
    """ET lesion A touches NETC lesions X and Y, ET lesion B touches only Y. X comes first in the reference's
    numbering (smaller i, the last numpy axis) but would come second in SimpleITK-order numbering (larger k)."""
    gt = np.zeros((16, 12, 30), np.uint8)
    box(gt, 2, (6, 4, 2), (10, 8, 5))      # NETC X
    box(gt, 3, (0, 4, 5), (10, 8, 16))     # ET A
    box(gt, 2, (0, 4, 16), (4, 8, 24))     # NETC Y (11 voxels from X along i: not merged by NETC's 5 dilations)
    box(gt, 3, (0, 4, 24), (4, 8, 27))     # ET B (8 voxels from A)
    return gt


def test_grouping_by_lowest_touched_lesion_is_not_transitive():
    gt = non_transitive_case()
    pred = gt.copy()
    pred[:, :, 24:] = 0  # B not predicted
    ours = assert_matches_reference(pred, gt, (1.0, 1.0, 1.0))
    # ET: A joins X's group, B joins Y's group -> two lesions; NETC: X and Y both touch A -> one lesion
    assert ours["ET"].num_gt_lesions == 2 and ours["ET"].num_fn == 1
    assert ours["NETC"].num_gt_lesions == 1 and ours["NETC"].num_fn == 0


def test_lesion_numbering_is_cc3d_s_on_the_nifti_array():
    cc3d = pytest.importorskip("cc3d")  # the reference's labeller; installed with nnU-Net's dependencies
    rng = np.random.default_rng(3)
    mask = np.zeros((40, 44, 48), bool)
    for lo in rng.integers(0, 38, size=(14, 3)):
        mask[lo[0]:lo[0] + 2, lo[1]:lo[1] + 3, lo[2]:lo[2] + 2] = True
    for k in (3, 5):
        ours, n = lesionwise_2024.region_lesions(mask, k)
        nifti = np.ascontiguousarray(mask.T).astype(float)  # (i, j, k) as nibabel reads the SimpleITK array
        dilated = ndimage.binary_dilation(nifti, S18, iterations=k)
        theirs = np.where(nifti > 0, cc3d.connected_components(dilated, connectivity=26), 0).T
        assert n > 3 and np.array_equal(ours, theirs)


def random_post_treatment_pair(seed: int, shape: tuple[int, int, int] = (28, 30, 32)) -> tuple[np.ndarray, np.ndarray]:
    """(prediction, reference) in release labels: 14 random boxes of labels 1-4, the prediction with 8 % of its
    voxels cleared and 6 more random boxes painted over (also used by benchmarks/check_brats2024_reference.py)."""
    rng = np.random.default_rng(seed)

    def blobs(n_blobs: int) -> np.ndarray:
        seg = np.zeros(shape, np.uint8)
        for _ in range(n_blobs):
            label = int(rng.integers(1, 5))
            lo = rng.integers(0, np.array(shape) - 3)
            hi = np.minimum(lo + rng.integers(2, 7, size=3), shape)
            box(seg, label, lo, hi)
        return seg

    gt = blobs(14)
    pred = gt.copy()
    pred[rng.random(shape) < 0.08] = 0
    noise = blobs(6)
    pred[noise > 0] = noise[noise > 0]
    return pred, gt


@pytest.mark.parametrize("seed,spacing", [(0, (1.0, 1.0, 1.0)), (1, (1.5, 0.9, 0.9)), (2, (1.0, 1.0, 1.0))])
def test_random_post_treatment_volumes_match_reference(seed, spacing):
    pred, gt = random_post_treatment_pair(seed)
    assert_matches_reference(pred, gt, spacing)


def _write(path, array, spacing_xyz=(1.0, 1.0, 1.0)) -> None:
    img = sitk.GetImageFromArray(array.astype(np.uint8))
    img.SetSpacing(spacing_xyz)
    sitk.WriteImage(img, str(path))


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nnunet_kd.cli", *args], capture_output=True, text=True,
                          env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=300)


def _write_folder_pair(tmp_path: Path, pred: np.ndarray, gt: np.ndarray, kind: str) -> tuple[Path, Path]:
    """One case as ``tmp_path/pred`` and ``tmp_path/labelsTr``, with a dataset.json of ``kind`` above them."""
    from nnunet_kd import brats

    gt_dir, pred_dir = tmp_path / "labelsTr", tmp_path / "pred"
    gt_dir.mkdir()
    pred_dir.mkdir()
    _write(gt_dir / "case_0.nii.gz", gt)
    _write(pred_dir / "case_0.nii.gz", pred)
    (tmp_path / "dataset.json").write_text(json.dumps(brats.make_dataset_json(1, kind.title(), kind=kind)))
    return pred_dir, gt_dir


def test_cli_evaluate_uses_the_2024_procedure_for_gli_post(tmp_path):
    pred, gt = touching_tissues_case()
    pred_dir, gt_dir = _write_folder_pair(tmp_path, pred, gt, "GLI-POST")

    result = _cli("evaluate", str(pred_dir), str(gt_dir), "-o", str(tmp_path / "eval"), "-np", "1", "--no-progress")
    assert result.returncode == 0, result.stderr
    assert "BraTS 2024 post-treatment lesion-wise" in result.stdout
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert summary["lesion_wise"]["procedure"] == "brats2024-gli-post"
    assert "9a0ab9c7" in summary["lesion_wise"]["source"] and summary["lesion_wise"]["hd95_penalty_mm"] == 337.0
    with open(tmp_path / "eval" / "per_case.csv") as f:
        header, row = [line.rstrip("\n").split(",") for line in f]
    row = dict(zip(header, row))
    ref = reference_2024(pred, gt, (1.0, 1.0, 1.0))
    for region in ("WT", "TC", "ET", "NETC", "SNFH", "RC"):
        assert float(row[f"{region}_lesion_dice"]) == pytest.approx(ref[region]["dice"], abs=1e-9), region
        assert abs(float(row[f"{region}_lesion_hd95"]) - ref[region]["hd95"]) <= 0.01, region

    # --task GLI scores the same folders with the 2023 procedure; 2023-only overrides are refused for GLI-POST
    old = _cli("evaluate", str(pred_dir), str(gt_dir), "-o", str(tmp_path / "eval23"), "-np", "1", "--no-progress",
               "--task", "GLI")
    assert old.returncode == 0, old.stderr
    assert json.loads((tmp_path / "eval23" / "summary.json").read_text())["lesion_wise"]["procedure"] == "brats2023"
    refused = _cli("evaluate", str(pred_dir), str(gt_dir), "-o", str(tmp_path / "bad"), "--lesion-dilation", "2")
    assert refused.returncode != 0 and len(refused.stderr.strip().splitlines()) == 1
    assert "--lesion-dilation" in refused.stderr and not (tmp_path / "bad").exists()


def test_cli_refuses_the_2024_procedure_for_a_kind_with_other_region_labels(tmp_path):
    """PED-2024's WT/TC include label 4 (the cyst): the post-treatment procedure would score other regions than the
    kind's, so ``--task GLI-POST`` on it stops in one line before anything is written."""
    gt = np.zeros((12, 12, 12), np.uint8)
    box(gt, 4, (2, 2, 2), (6, 6, 6))
    pred_dir, gt_dir = _write_folder_pair(tmp_path, gt, gt, "PED-2024")

    refused = _cli("evaluate", str(pred_dir), str(gt_dir), "-o", str(tmp_path / "eval"), "--task", "GLI-POST")
    assert refused.returncode == 2, refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    assert "PED-2024" in refused.stderr and "--task PED-2024" in refused.stderr
    assert not (tmp_path / "eval").exists()
    # the kind's own task scores it
    ok = _cli("evaluate", str(pred_dir), str(gt_dir), "-o", str(tmp_path / "eval"), "-np", "1", "--no-progress")
    assert ok.returncode == 0, ok.stderr
    assert json.loads((tmp_path / "eval" / "summary.json").read_text())["dataset_kind"] == "PED-2024"
