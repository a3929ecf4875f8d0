"""Check: nnunet-kd's BraTS 2024 post-treatment lesion-wise scores against the original ``metrics_GLI.py``.

Run ``python -m benchmarks.check_brats2024_reference --reference PATH/metrics_GLI.py [--random N] [--full N]``
with a copy of github.com/rachitsaluja/BraTS-2024-Metrics ``metrics_GLI.py`` (commit 9e8879a9 or 9a0ab9c7 with
pandas < 2). The file is not part of nnunet-kd and is not copied into it: this script imports it from the given
path, writes each case as release-label NIfTI files (NETC 1, SNFH 2, ET 3, RC 4) into a temporary folder (the
reference writes its ``tmp_gt``/``tmp_pred`` folders into the working directory, so it runs there), calls
``get_LesionWiseResults`` and compares its lesion-wise Dice, HD95 and TP/FP/FN counts per region with
:func:`nnunet_kd.evaluation.lesionwise_2024.lesion_wise_region_scores_2024`.

To run the 2024 code with the packages of this project three things are adapted, none of which touches the
lesion-wise numbers: ``numpy.Inf`` (removed in numpy 2, used by ``surface_distance``) is set to ``numpy.inf``;
``surface_distance.compute_surface_distances`` gets boolean masks (the reference ships its own copy of that
package that accepts 0/1 integers; PyPI's refuses them); ``medpy`` (only used for the surface Dice added in 2025)
is replaced by a stub when missing.

Cases: the crafted cases of ``tests/test_lesionwise_2024.py``, ``--random N`` random multi-lesion volumes (odd
ones with 1.5 × 0.9 × 0.9 mm voxels) and ``--full N`` synthetic 240×240×155 post-treatment cases
(:func:`nnunet_kd.synthetic.make_case`, perturbed prediction; slow: minutes per case for the reference).
Prints one line per case and exits non-zero on any difference above 1e-9 (Dice) or 0.01 mm (HD95).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import tempfile
import time
import types
import warnings
from pathlib import Path

import numpy as np

_RELEASE = np.array([0, 2, 1, 3, 4], dtype=np.uint8)  # canonical (ED 1, NCR 2, ET 3, RC 4) -> release labels


def _load_reference(path: Path):
    np.Inf = np.inf  # surface_distance still uses the alias numpy 2 removed
    import surface_distance

    if not getattr(surface_distance, "_nnunet_kd_bool_masks", False):
        original = surface_distance.compute_surface_distances
        surface_distance.compute_surface_distances = (
            lambda a, b, spacing: original(np.asarray(a) != 0, np.asarray(b) != 0, spacing))
        surface_distance._nnunet_kd_bool_masks = True
    if importlib.util.find_spec("medpy") is None:
        medpy, metric, binary = (types.ModuleType(n) for n in ("medpy", "medpy.metric", "medpy.metric.binary"))
        setattr(binary, "__surface_distances", lambda a, b, spacing, connectivity: np.zeros(1))
        medpy.metric, metric.binary = metric, binary
        sys.modules.update({"medpy": medpy, "medpy.metric": metric, "medpy.metric.binary": binary})
    spec = importlib.util.spec_from_file_location("brats2024_metrics_gli", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _write(seg_canonical: np.ndarray, path: Path, spacing_zyx) -> None:
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(_RELEASE[seg_canonical])
    img.SetSpacing(tuple(float(s) for s in spacing_zyx[::-1]))
    sitk.WriteImage(img, str(path))


def compare(reference, name: str, pred: np.ndarray, gt: np.ndarray, spacing) -> tuple[float, float, bool, float]:
    """(max |Dice difference|, max |HD95 difference| mm, counts equal, reference seconds) over the six regions."""
    from nnunet_kd.evaluation import lesionwise_2024

    gt_file, pred_file = Path(f"BraTS-GLI-{name}-gt.nii.gz"), Path(f"BraTS-GLI-{name}-pred.nii.gz")
    _write(gt, gt_file, spacing)
    _write(pred, pred_file, spacing)
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        table, _ = reference.get_LesionWiseResults(str(pred_file), str(gt_file), "BraTS-GLI")
    seconds = time.perf_counter() - start
    ours = lesionwise_2024.lesion_wise_region_scores_2024(pred, gt, spacing)
    d_dice = d_hd = 0.0
    counts = True
    for _, row in table.iterrows():
        o = ours[row["Labels"]]
        d_dice = max(d_dice, abs(o.dice - float(row["LesionWise_Score_Dice"])))
        d_hd = max(d_hd, abs(o.hd95 - float(row["LesionWise_Score_HD95"])))
        counts &= (o.num_tp, o.num_fp, o.num_fn) == (int(row["Num_TP"]), int(row["Num_FP"]), int(row["Num_FN"]))
    return d_dice, d_hd, counts, seconds


def _cases(n_random: int, n_full: int):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    import test_lesionwise_2024 as t

    one = (1.0, 1.0, 1.0)
    pred, gt = t.touching_tissues_case()
    yield "touching", pred, gt, one
    gt = t.non_transitive_case()
    pred = gt.copy()
    pred[:, :, 24:] = 0
    yield "non_transitive", pred, gt, one
    gt, pred = np.zeros((30, 30, 30), np.uint8), np.zeros((30, 30, 30), np.uint8)  # small lesions and thresholds
    for seg, label, lo, hi in ((gt, 3, (2, 2, 2), (4, 4, 4)), (gt, 3, (2, 20, 2), (4, 22, 5)),
                               (pred, 3, (2, 2, 2), (4, 4, 5)), (pred, 3, (20, 20, 20), (22, 22, 24)),
                               (pred, 3, (20, 2, 20), (22, 4, 22)), (pred, 2, (12, 12, 12), (14, 15, 15)),
                               (gt, 2, (25, 25, 25), (27, 27, 29))):
        t.box(seg, label, lo, hi)
    yield "small", pred, gt, one
    yield "small_aniso", pred, gt, (1.5, 1.0, 1.0)  # no dot: the reference cuts names at the first "."
    gt, pred = np.zeros((30, 30, 40), np.uint8), np.zeros((30, 30, 40), np.uint8)  # cavity 4 voxels off, FP cavity
    t.box(gt, 4, (10, 10, 5), (16, 16, 11))
    t.box(pred, 4, (10, 10, 15), (16, 16, 21))
    t.box(pred, 4, (2, 2, 32), (6, 6, 36))
    yield "cavity", pred, gt, one
    gt = np.zeros((20, 20, 20), np.uint8)
    t.box(gt, 3, (5, 5, 5), (9, 9, 9))
    yield "missed_only", np.zeros_like(gt), gt, one
    yield "fp_only", gt, np.zeros_like(gt), one
    for seed in range(n_random):
        pred, gt = t.random_post_treatment_pair(seed)
        yield f"random{seed}", pred, gt, (one if seed % 2 == 0 else (1.5, 0.9, 0.9))
    for seed in range(1, n_full + 1):
        from scipy import ndimage

        from nnunet_kd.synthetic import make_case

        gt = np.ascontiguousarray(make_case(seed, shape=(240, 240, 155), resection_cavity=True).seg.T)
        rng = np.random.default_rng(seed)
        pred = gt.copy()
        pred[(gt == 3) & ~ndimage.binary_erosion(gt == 3)] = 2  # ET rim predicted as NETC
        pred[ndimage.binary_dilation(gt == 4, iterations=2) & (gt == 0)] = 4  # cavity grown by 2 voxels
        for _ in range(8):  # small blobs of every label, some below the thresholds
            c, s = rng.integers(20, 130, 3), int(rng.integers(2, 5))
            pred[c[0]:c[0] + s, c[1]:c[1] + s, c[2]:c[2] + s] = int(rng.integers(1, 5))
        yield f"full{seed}", pred, gt, one


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", type=Path, required=True, help="path of BraTS-2024-Metrics metrics_GLI.py")
    parser.add_argument("--random", type=int, default=6, help="random small volumes (default 6)")
    parser.add_argument("--full", type=int, default=0, help="synthetic 240x240x155 cases (default 0; slow)")
    args = parser.parse_args(argv)
    reference = _load_reference(args.reference.resolve())
    bad = 0
    cwd = os.getcwd()
    with tempfile.TemporaryDirectory(prefix="brats2024_ref_") as tmp:
        os.chdir(tmp)
        try:
            for name, pred, gt, spacing in _cases(args.random, args.full):
                d_dice, d_hd, counts, seconds = compare(reference, name, pred, gt, spacing)
                ok = d_dice <= 1e-9 and d_hd <= 0.01 and counts
                bad += not ok
                print(f"{name:15s} spacing {spacing}: max |dDice| {d_dice:.1e}, max |dHD95| {d_hd:.1e} mm, "
                      f"TP/FP/FN {'equal' if counts else 'DIFFER'}; reference {seconds:.1f} s"
                      f"{'' if ok else '  <-- MISMATCH'}", flush=True)
        finally:
            os.chdir(cwd)
    print("all equal" if not bad else f"{bad} case(s) differ")
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
