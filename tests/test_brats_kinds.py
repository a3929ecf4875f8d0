"""BraTS 2023-2024 dataset kinds: SSA/MEN/MET/PED and 2024 post-treatment GLI with the resection cavity (RC, 4).

Conversion (layout detection, labels, dataset.json regions), nnU-Net's painting of the RC region, RC through
export-brats and evaluate, and the synthetic release namings. See docs/datasets.md for the label tables.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from brats_release_builders import canonical_seg, make_2023, make_2023_challenge, make_2024_gli, post_treatment_seg

from nnunet_kd import brats
from nnunet_kd.dataset_conversion.convert import convert_brats
from nnunet_kd.dataset_conversion.layouts import detect_layout, list_cases


def read(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "nnunet_kd.cli", *args], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=300)


def test_dataset_json_regions_per_kind():
    # the 3-region default is unchanged for every existing user
    assert brats.make_dataset_json(1, "x")["labels"] == {
        "background": 0, "whole_tumor": [1, 2, 3], "tumor_core": [2, 3], "enhancing_tumor": 3}
    for kind in ("GLI", "SSA", "MEN", "MET", "PED"):
        meta = brats.make_dataset_json(1, "x", kind=kind)
        assert meta["labels"] == brats.make_dataset_json(1, "x")["labels"] and meta["brats_kind"] == kind
        assert meta["regions_class_order"] == [1, 2, 3]
    post = brats.make_dataset_json(1, "x", kind="GLI-POST")
    assert post["labels"] == {"background": 0, "whole_tumor": [1, 2, 3], "tumor_core": [2, 3],
                              "enhancing_tumor": 3, "resection_cavity": 4}
    assert post["regions_class_order"] == [1, 2, 3, 4]
    assert brats.kind_of_dataset_json(post).name == "GLI-POST"
    assert brats.kind_of_dataset_json({"labels": post["labels"]}).name == "GLI-POST"  # older file, no brats_kind
    assert brats.kind_of_dataset_json(brats.make_dataset_json(1, "x")).name == "GLI"
    assert brats.kind_of_dataset_json({"labels": {"background": 0}}) is None
    # 2024 official regions (BraTS-2024-Metrics metrics_GLI.py) in release labels: WT 1-3, TC {1, 3}, NETC 1,
    # SNFH 2, ET 3, RC 4 -- checked through the release convention, not our own region table
    release = np.arange(5)
    canonical = brats.get_convention("2024-gli").to_canonical_array(release)
    official = {"WT": {1, 2, 3}, "TC": {1, 3}, "ET": {3}, "NETC": {1}, "SNFH": {2}, "RC": {4}}
    for region, labels in brats.get_kind("GLI-POST").eval_regions.items():
        assert set(release[np.isin(canonical, labels)].tolist()) == official[region], region


def test_nnunet_paints_the_post_treatment_regions_back_to_all_four_labels():
    from nnunetv2.utilities.label_handling.label_handling import LabelManager

    meta = brats.make_dataset_json(1, "x", kind="GLI-POST")
    manager = LabelManager(meta["labels"], meta["regions_class_order"])
    assert manager.has_regions and manager.num_segmentation_heads == 4
    seg = post_treatment_seg()
    regions = manager.foreground_regions  # what nnU-Net's region transform turns the label map into
    target = np.stack([np.isin(seg, r) for r in regions])
    assert len(regions) == 4 and np.array_equal(target[3], seg == 4)
    painted = manager.convert_probabilities_to_segmentation(target.astype(np.float32))
    np.testing.assert_array_equal(np.asarray(painted), seg)


@pytest.mark.parametrize("challenge", ["SSA", "MEN", "MET", "PED"])
def test_2023_challenges_convert_and_record_their_kind(tmp_path, challenge):
    ids = make_2023_challenge(tmp_path / "src", challenge)
    out = convert_brats(tmp_path / "src", 510, name=challenge, raw_root=tmp_path / "raw", progress=False)
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["brats_kind"] == challenge and meta["source_layout"] == f"2023-{challenge.lower()}"
    assert meta["regions_class_order"] == [1, 2, 3]
    for case_id in ids:
        np.testing.assert_array_equal(read(out / "labelsTr" / f"{case_id}.nii.gz"), canonical_seg())


def test_post_treatment_release_is_detected_and_keeps_the_cavity(tmp_path):
    ids = make_2024_gli(tmp_path / "src")
    assert detect_layout(tmp_path / "src") == "2024-gli"
    assert detect_layout(tmp_path / "src" / "BraTS2024-BraTS-GLI-TrainingData") == "2024-gli"
    out = convert_brats(tmp_path / "src", 511, name="Post", raw_root=tmp_path / "raw", progress=False)
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["brats_kind"] == "GLI-POST" and meta["source_layout"] == "2024-gli"
    assert meta["labels"]["resection_cavity"] == 4 and meta["regions_class_order"] == [1, 2, 3, 4]
    for case_id in ids:
        np.testing.assert_array_equal(read(out / "labelsTr" / f"{case_id}.nii.gz"), post_treatment_seg())
    # a release folder named for 2023 is GLI 2023 even inside a folder named 2024
    make_2023(tmp_path / "BraTS2024_runs" / "ASNR-MICCAI-BraTS2023-GLI-Challenge-TrainingData", n=1)
    assert detect_layout(tmp_path / "BraTS2024_runs") == "2023"


def test_cavity_in_a_release_taken_for_2023_is_refused_with_a_hint(tmp_path):
    make_2024_gli(tmp_path / "src", release_name="gli_post")  # no year in any name: read as GLI 2023
    assert {c.convention for c in list_cases(tmp_path / "src")} == {"2023"}
    raw = tmp_path / "raw"
    raw.mkdir()
    env_src = str(tmp_path / "src")
    result = subprocess.run([sys.executable, "-m", "nnunet_kd.cli", "convert-brats", env_src, "-d", "512"],
                            capture_output=True, text=True, timeout=300,
                            env=dict(os.environ, nnUNet_raw=str(raw), nnUNet_preprocessed=str(tmp_path / "pre"),
                                     nnUNet_results=str(tmp_path / "res"), OMP_NUM_THREADS="1"))
    assert result.returncode != 0
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "label value(s) [4]" in lines[0] and "--layout 2024-gli" in lines[0], result.stderr
    assert list(raw.iterdir()) == []
    out = convert_brats(tmp_path / "src", 512, layout="2024-gli", raw_root=raw, progress=False)
    assert json.loads((out / "dataset.json").read_text())["brats_kind"] == "GLI-POST"


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


def test_cavity_round_trips_through_export_brats_and_evaluate(tmp_path):
    ids = make_2024_gli(tmp_path / "src")
    out = convert_brats(tmp_path / "src", 513, name="Post", raw_root=tmp_path / "raw", progress=False)
    pred_dir = tmp_path / "pred"
    pred_dir.mkdir()
    for i, case_id in enumerate(ids):
        image = sitk.ReadImage(str(out / "labelsTr" / f"{case_id}.nii.gz"))
        seg = sitk.GetArrayFromImage(image)
        if i == 1:
            seg[9, 7:9, 0:2] = 0  # half the cavity missed
            seg[4:6, 4:5, 3:5] = 2  # ET predicted as NETC
        pred = sitk.GetImageFromArray(seg)
        pred.CopyInformation(image)
        sitk.WriteImage(pred, str(pred_dir / f"{case_id}.nii.gz"))

    exported = cli("export-brats", str(pred_dir), str(tmp_path / "export"), "--convention", "2024-gli")
    assert exported.returncode == 0, exported.stderr
    release = tmp_path / "src" / "BraTS2024-BraTS-GLI-TrainingData"
    np.testing.assert_array_equal(read(tmp_path / "export" / f"{ids[0]}.nii.gz"),
                                  read(release / ids[0] / f"{ids[0]}-seg.nii.gz"))
    assert 4 in read(tmp_path / "export" / f"{ids[1]}.nii.gz")
    refused = cli("export-brats", str(pred_dir), str(tmp_path / "export23"), "--convention", "2023")
    assert refused.returncode != 0 and "[4]" in refused.stderr and not (tmp_path / "export23").exists()

    # no --kind / --task: the kind comes from the dataset.json next to labelsTr
    result = cli("evaluate", str(pred_dir), str(out / "labelsTr"), "-o", str(tmp_path / "eval"), "-np", "1",
                 "--no-progress")
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert summary["dataset_kind"] == "GLI-POST" and summary["regions"] == ["WT", "TC", "ET", "NETC", "SNFH", "RC"]
    lw = summary["lesion_wise"]  # GLI-POST: the BraTS 2024 post-treatment procedure, per-region parameters
    assert lw["procedure"] == "brats2024-gli-post" and lw["volume_threshold_mm3"]["ET"] == 10.0
    assert lw["dilation_iterations"] == {"WT": 3, "TC": 3, "ET": 3, "NETC": 5, "SNFH": 3, "RC": 5}
    with open(tmp_path / "eval" / "per_case.csv") as f:
        header, *rows = [line.rstrip("\n").split(",") for line in f]
    row = dict(zip(header, rows[1]))
    gt_release = read(release / ids[1] / f"{ids[1]}-seg.nii.gz")  # release labels: NETC 1, SNFH 2, ET 3, RC 4
    pred_release = read(tmp_path / "export" / f"{ids[1]}.nii.gz")
    for region, labels in {"RC": [4], "NETC": [1], "ET": [3], "TC": [1, 3], "WT": [1, 2, 3]}.items():
        expected = _dice(np.isin(pred_release, labels), np.isin(gt_release, labels))
        assert float(row[f"{region}_dice"]) == pytest.approx(expected), region
    assert float(row["RC_dice"]) < 1 and float(dict(zip(header, rows[0]))["RC_dice"]) == 1.0


def test_synthetic_release_namings_and_cavity(tmp_path):
    from nnunet_kd.commands.synth import LAYOUTS
    from nnunet_kd.synthetic import RELEASE_LAYOUTS, case_id, write_brats_folder

    assert set(LAYOUTS) == set(RELEASE_LAYOUTS)
    assert case_id("2023-men", 3) == "BraTS-MEN-00003-000" and case_id("2023-ped", 0) == "BraTS-PED-00000-000"
    assert case_id("2023-ssa", 1) == "BraTS-SSA-00001-000" and case_id("2023-met", 2) == "BraTS-MET-00002-000"
    source = tmp_path / "BraTS2024_synthetic"
    (cid,) = write_brats_folder(source, 1, layout="2024-gli", seed=3, shape=(24, 24, 24), progress=False)
    assert cid == "BraTS-GLI-00000-100"
    seg = read(source / cid / f"{cid}-seg.nii.gz")
    assert set(np.unique(seg).tolist()) == {0, 1, 2, 3, 4}
    out = convert_brats(source, 514, name="SynthPost", raw_root=tmp_path / "raw", progress=False)
    assert json.loads((out / "dataset.json").read_text())["brats_kind"] == "GLI-POST"
    labels = read(out / "labelsTr" / f"{cid}.nii.gz")
    np.testing.assert_array_equal(labels == 4, seg == 4)
    assert all((labels == v).any() for v in (1, 2, 3, 4))  # the tumour is intact next to the cavity


@pytest.mark.slow
def test_post_treatment_dataset_trains_a_kd_student_predicts_and_evaluates(tmp_path):
    """synth 2024-gli -> convert-brats -> nnUNetv2_plan_and_preprocess -> KD _smoke training -> predict -> evaluate."""
    from conftest import BIN, nnunet_subprocess_env
    from nnunet_kd.synthetic import write_brats_folder

    raw, pre, res = tmp_path / "raw", tmp_path / "pre", tmp_path / "res"
    for p in (raw, pre, res):
        p.mkdir()
    env = nnunet_subprocess_env(raw, pre, res)
    source = tmp_path / "BraTS2024_synthetic"
    start = time.perf_counter()
    write_brats_folder(source, 5, layout="2024-gli", seed=4, shape=(32, 32, 32), progress=False)

    def run(*cmd: str, **extra_env: str) -> subprocess.CompletedProcess:
        proc = subprocess.run(list(cmd), env={**env, **extra_env}, capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, f"{' '.join(cmd)}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        return proc

    run(sys.executable, "-m", "nnunet_kd.cli", "convert-brats", str(source), "-d", "524", "-n", "Post")
    dataset = raw / "Dataset524_Post"
    assert json.loads((dataset / "dataset.json").read_text())["brats_kind"] == "GLI-POST"
    run(str(BIN / "nnUNetv2_plan_and_preprocess"), "-d", "524", "-c", "3d_fullres", "-np", "1", "-npfp", "1",
        "--verify_dataset_integrity", nnUNet_n_proc_DA="1")  # the planner calls torch.set_num_threads(n_proc_DA)
    trainer = "nnUNetTrainerBarlowKD_smoke"
    run(str(BIN / "nnUNetv2_train"), "524", "3d_fullres", "0", "-tr", trainer, "-device", "cpu")
    model = res / "Dataset524_Post" / f"{trainer}__nnUNetPlans__3d_fullres"
    pred, student_inputs = tmp_path / "pred", tmp_path / "student_inputs"
    run(sys.executable, "-m", "nnunet_kd.cli", "select-modalities", str(dataset / "imagesTr"), str(student_inputs),
        "--keep", "T1ce,FLAIR")  # the KD student's own channels
    run(str(BIN / "nnUNetv2_predict"), "-i", str(student_inputs), "-o", str(pred), "-d", "524",
        "-c", "3d_fullres", "-tr", trainer, "-f", "0", "-device", "cpu", "-npp", "1", "-nps", "1",
        "--disable_tta")
    out = run(sys.executable, "-m", "nnunet_kd.cli", "evaluate", str(pred), str(dataset / "labelsTr"),
              "-o", str(tmp_path / "eval"), "-np", "1", "--no-progress")
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert summary["dataset_kind"] == "GLI-POST" and "RC" in summary["metrics"], out.stdout
    assert (model / "fold_0" / "checkpoint_final.pth").is_file()
    assert json.loads((pred / "dataset.json").read_text())["labels"]["resection_cavity"] == 4
    print(f"post-treatment end-to-end: {time.perf_counter() - start:.0f} s")
