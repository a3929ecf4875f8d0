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
from dataclasses import dataclass
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


# ---------------------------------------------------------------------------------------------------- PED 2024
#: A PED 2024 segmentation in release labels (ET 1, NET 2, CC 3, ED 4) and the same tissues canonically
#: (dataset137-cc: ED 1, NET 2, ET 3, CC 4), written out by hand from the label tables.
def _ped_2024_release_and_canonical() -> tuple[np.ndarray, np.ndarray]:
    release = np.zeros((10, 9, 8), dtype=np.uint8)
    release[2:8, 2:7, 1:7] = 4  # edema
    release[3:7, 3:6, 2:6] = 2  # non-enhancing tumour
    release[3:4, 3:5, 2:4] = 3  # cyst
    release[5:7, 4:5, 3:5] = 1  # enhancing
    canonical = np.zeros_like(release)
    canonical[release == 4], canonical[release == 2] = 1, 2
    canonical[release == 3], canonical[release == 1] = 4, 3
    return release, canonical


def _make_ped_2024(root: Path, release_name: str, n: int = 2) -> list[str]:
    from brats_release_builders import GLI_FILES, write, write_folder_case

    release, _ = _ped_2024_release_and_canonical()
    ids = [f"BraTS-PED-{i:05d}-000" for i in range(n)]
    for i, cid in enumerate(ids):
        write_folder_case(root / release_name, cid, "-", GLI_FILES, "2024-ped", i, labeled=False)
        write(root / release_name / cid / f"{cid}-seg.nii.gz", release)
    return ids


def test_ped_2024_regions_follow_the_reference_definitions():
    # metrics_PED.py (BraTS-2024-Metrics) in release labels: WT 1-4, TC 1-3, ET 1, NETC 2, CC 3, ED 4
    release = np.arange(5)
    canonical = brats.get_convention("2024-ped").to_canonical_array(release)
    official = {"WT": {1, 2, 3, 4}, "TC": {1, 2, 3}, "ET": {1}, "NETC": {2}, "CC": {3}, "ED": {4}}
    kind = brats.get_kind("PED-2024")
    assert list(kind.eval_regions) == ["WT", "TC", "ET", "NETC", "CC", "ED"]
    for region, labels in kind.eval_regions.items():
        assert set(release[np.isin(canonical, labels)].tolist()) == official[region], region
    assert not kind.has_resection_cavity and brats.get_kind("GLI-POST").has_resection_cavity
    meta = brats.make_dataset_json(1, "x", kind="PED-2024")
    assert brats.kind_of_dataset_json({"labels": meta["labels"]}).name == "PED-2024"

    from nnunetv2.utilities.label_handling.label_handling import LabelManager

    _, seg = _ped_2024_release_and_canonical()
    manager = LabelManager(meta["labels"], meta["regions_class_order"])
    target = np.stack([np.isin(seg, r) for r in manager.foreground_regions]).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(manager.convert_probabilities_to_segmentation(target)), seg)


def test_ped_2024_release_is_detected_by_its_folder_year_and_converted(tmp_path):
    ids = _make_ped_2024(tmp_path / "BraTS-PEDs2024_Training", "BraTS2024-PED-Challenge-TrainingData")
    assert detect_layout(tmp_path / "BraTS-PEDs2024_Training") == "2024-ped"
    out = convert_brats(tmp_path / "BraTS-PEDs2024_Training", 515, name="Ped24", raw_root=tmp_path / "raw",
                        progress=False)
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["brats_kind"] == "PED-2024" and meta["source_layout"] == "2024-ped"
    assert meta["labels"]["cystic_component"] == 4 and meta["regions_class_order"] == [1, 2, 3, 4]
    _, canonical = _ped_2024_release_and_canonical()
    for case_id in ids:
        np.testing.assert_array_equal(read(out / "labelsTr" / f"{case_id}.nii.gz"), canonical)
    # back to release labels for submission
    exported = cli("export-brats", str(out / "labelsTr"), str(tmp_path / "export"), "--convention", "2024-ped")
    assert exported.returncode == 0, exported.stderr
    np.testing.assert_array_equal(read(tmp_path / "export" / f"{ids[0]}.nii.gz"),
                                  _ped_2024_release_and_canonical()[0])
    # a PED-2024 prediction folder (dataset.json copied by nnUNetv2_predict) is not exported as post-treatment GLI
    import shutil

    shutil.copytree(out / "labelsTr", tmp_path / "pred")
    shutil.copy(out / "dataset.json", tmp_path / "pred" / "dataset.json")
    refused = cli("export-brats", str(tmp_path / "pred"), str(tmp_path / "export_gli"), "--convention", "2024-gli")
    lines = [ln for ln in refused.stderr.splitlines() if ln.strip()]
    assert refused.returncode != 0 and len(lines) == 1 and "PED-2024" in lines[0], refused.stderr
    assert not (tmp_path / "export_gli").exists()


def _convert_cli(src: Path, tmp_path: Path, *extra: str) -> subprocess.CompletedProcess:
    raw = tmp_path / "raw_cli"
    raw.mkdir(exist_ok=True)
    return subprocess.run([sys.executable, "-m", "nnunet_kd.cli", "convert-brats", str(src), "-d", "516", *extra],
                          capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, nnUNet_raw=str(raw), nnUNet_preprocessed=str(tmp_path / "pre"),
                                   nnUNet_results=str(tmp_path / "res"), OMP_NUM_THREADS="1"))


def _one_line_error(result: subprocess.CompletedProcess) -> str:
    assert result.returncode != 0
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_ped_without_a_year_is_refused_and_2023_ped_meeting_label_4_points_at_2024_ped(tmp_path):
    _make_ped_2024(tmp_path / "src", "ped_release")  # no year anywhere: 2023 or 2024 labels?
    line = _one_line_error(_convert_cli(tmp_path / "src", tmp_path))
    assert "--layout 2023-ped or --layout 2024-ped" in line
    assert list((tmp_path / "raw_cli").iterdir()) == []
    line = _one_line_error(_convert_cli(tmp_path / "src", tmp_path, "--layout", "2023-ped"))
    assert "label value(s) [4]" in line and "--layout 2024-ped" in line
    assert list((tmp_path / "raw_cli").iterdir()) == []
    assert _convert_cli(tmp_path / "src", tmp_path, "--layout", "2024-ped").returncode == 0
    # the 2023 PED release keeps converting as before
    make_2023_challenge(tmp_path / "src23", "PED")
    assert detect_layout(tmp_path / "src23") == "2023-ped"


def test_men_rt_release_is_refused_in_one_line(tmp_path):
    from brats_release_builders import write

    case = tmp_path / "BraTS2024-MEN-RT-TrainingData" / "BraTS-MEN-RT-0002-1"
    write(case / "BraTS-MEN-RT-0002-1_t1c.nii.gz", np.ones((4, 4, 4), dtype=np.float32))
    write(case / "BraTS-MEN-RT-0002-1_gtv.nii.gz", np.ones((4, 4, 4), dtype=np.uint8))
    line = _one_line_error(_convert_cli(tmp_path / "BraTS2024-MEN-RT-TrainingData", tmp_path))
    assert "MEN-RT" in line and "not support" in line
    assert list((tmp_path / "raw_cli").iterdir()) == []


def test_synthetic_ped_2024_cases_have_every_tissue(tmp_path):
    from nnunet_kd.synthetic import case_id, write_brats_folder

    assert case_id("2024-ped", 1) == "BraTS-PED-00001-000"
    (cid,) = write_brats_folder(tmp_path / "BraTS2024_ped", 1, layout="2024-ped", seed=3, shape=(24, 24, 24),
                                progress=False)
    assert set(np.unique(read(tmp_path / "BraTS2024_ped" / cid / f"{cid}-seg.nii.gz")).tolist()) == {0, 1, 2, 3, 4}


# ---------------------------------------------------------------------------------------------------- end to end
#: Every dataset kind: (synth/convert layout, brats_kind, nnU-Net dataset id). Each is its own converted dataset.
E2E_KINDS: tuple[tuple[str, str, int], ...] = (
    ("2023", "GLI", 601), ("2023-ssa", "SSA", 602), ("2023-men", "MEN", 603), ("2023-met", "MET", 604),
    ("2023-ped", "PED", 605), ("2024-gli", "GLI-POST", 606), ("2024-ped", "PED-2024", 607),
)
#: The kinds `make test` trains: each label table (2023 three tissues, 2024 with the cavity, PED 2024 with the
#: cyst) once, MET for the 2023 family (its own lesion-wise parameters). GLI, SSA, MEN and PED 2023 convert to the
#: same labels and regions as MET (their conversion is tested above, GLI's training everywhere else); their own
#: end-to-end runs cost ~3 min more on 2 cores and are `expensive` (``make test PYTEST_ARGS="-m expensive"``).
E2E_CI_KINDS = tuple(k for k in E2E_KINDS if k[1] in ("MET", "GLI-POST", "PED-2024"))
E2E_MORE_KINDS = tuple(k for k in E2E_KINDS if k not in E2E_CI_KINDS)
E2E_TRAINER = "nnUNetTrainerBarlowKD_tinysmoke"  # the KD trainer, 1 step, no final validation
E2E_CASES, E2E_SHAPE = 2, 24
#: Written out here from the reference definitions (docs/datasets.md), not taken from nnunet_kd.brats:
#: each kind's dataset.json labels, regions_class_order and scored regions as sets of canonical labels.
_THREE_LABELS = {"background": 0, "whole_tumor": [1, 2, 3], "tumor_core": [2, 3], "enhancing_tumor": 3}
_THREE_REGIONS = {"WT": {1, 2, 3}, "TC": {2, 3}, "ET": {3}}
E2E_EXPECTED = {
    **{k: (_THREE_LABELS, [1, 2, 3], _THREE_REGIONS) for k in ("GLI", "SSA", "MEN", "MET", "PED")},
    "GLI-POST": ({**_THREE_LABELS, "resection_cavity": 4}, [1, 2, 3, 4],
                 {**_THREE_REGIONS, "NETC": {2}, "SNFH": {1}, "RC": {4}}),
    "PED-2024": ({"background": 0, "whole_tumor": [1, 2, 3, 4], "tumor_core": [2, 3, 4], "enhancing_tumor": 3,
                  "cystic_component": 4}, [1, 2, 3, 4],
                 {"WT": {1, 2, 3, 4}, "TC": {2, 3, 4}, "ET": {3}, "NETC": {2}, "CC": {4}, "ED": {1}}),
}
#: Release labels -> canonical labels, per layout, from the label tables (PED 2024: ET 1, NET 2, CC 3, ED 4).
_RELEASE_TO_CANONICAL = {
    **{layout: {0: 0, 1: 2, 2: 1, 3: 3} for layout in ("2023", "2023-ssa", "2023-men", "2023-met", "2023-ped")},
    "2024-gli": {0: 0, 1: 2, 2: 1, 3: 3, 4: 4}, "2024-ped": {0: 0, 1: 3, 2: 2, 3: 4, 4: 1},
}


@dataclass
class KindRun:
    layout: str
    kind: str
    dataset: Path  # nnUNet_raw/DatasetXXX_KIND
    source: Path  # the synthetic release folder
    pred: Path
    evaluation: Path
    model: Path


def _e2e_lane(kinds, tmp: Path, env: dict[str, str], runs: dict[str, KindRun], seconds: dict[str, float]) -> None:
    """synth -> convert-brats for each kind of this lane, one nnUNetv2_plan_and_preprocess for all of them, then
    nnUNetv2_train (KD, tiny) -> select-modalities -> nnUNetv2_predict (student files) -> evaluate per kind."""
    from conftest import BIN

    def run(*cmd: str, **extra_env: str) -> subprocess.CompletedProcess:
        proc = subprocess.run(list(cmd), env={**env, **extra_env}, capture_output=True, text=True, timeout=1800)
        assert proc.returncode == 0, f"{' '.join(cmd)}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        return proc

    cli = (sys.executable, "-m", "nnunet_kd.cli")
    raw, results = Path(env["nnUNet_raw"]), Path(env["nnUNet_results"])
    for layout, kind, dataset_id in kinds:
        start = time.perf_counter()
        # a year in the release folder's name, as in the official archives: PED 2023/2024 need it
        source = tmp / f"BraTS{layout[:4]}-{kind}-synthetic"
        run(*cli, "synth", str(source), "--cases", str(E2E_CASES), "--layout", layout, "--shape", str(E2E_SHAPE),
            "--seed", str(dataset_id), "--no-progress")
        run(*cli, "convert-brats", str(source), "-d", str(dataset_id), "-n", kind)  # layout auto-detected
        name = f"Dataset{dataset_id}_{kind}"
        runs[kind] = KindRun(layout, kind, raw / name, source, tmp / f"pred_{kind}", tmp / f"eval_{kind}",
                             results / name / f"{E2E_TRAINER}__nnUNetPlans__3d_fullres")
        seconds[kind] = time.perf_counter() - start
    start = time.perf_counter()
    run(str(BIN / "nnUNetv2_plan_and_preprocess"), "-d", *[str(k[2]) for k in kinds], "-c", "3d_fullres",
        "-np", "1", "-npfp", "1", nnUNet_n_proc_DA="1")  # the planner calls torch.set_num_threads(n_proc_DA)
    for _, kind, _ in kinds:
        seconds[kind] += (time.perf_counter() - start) / len(kinds)
    for _, kind, dataset_id in kinds:
        start = time.perf_counter()
        r = runs[kind]
        run(str(BIN / "nnUNetv2_train"), str(dataset_id), "3d_fullres", "all", "-tr", E2E_TRAINER, "-device", "cpu")
        student_inputs = tmp / f"student_{kind}"
        run(*cli, "select-modalities", str(r.dataset / "imagesTr"), str(student_inputs), "--keep", "T1ce,FLAIR")
        run(str(BIN / "nnUNetv2_predict"), "-i", str(student_inputs), "-o", str(r.pred), "-d", str(dataset_id),
            "-c", "3d_fullres", "-tr", E2E_TRAINER, "-f", "all", "-device", "cpu", "-npp", "0", "-nps", "0",
            "--disable_tta")
        run(*cli, "evaluate", str(r.pred), str(r.dataset / "labelsTr"), "-o", str(r.evaluation), "-np", "1",
            "--no-progress")
        seconds[kind] += time.perf_counter() - start


@pytest.fixture(scope="module")
def kind_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, KindRun]:
    return _run_kinds(E2E_CI_KINDS, tmp_path_factory)


@pytest.fixture(scope="module")
def more_kind_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, KindRun]:
    return _run_kinds(E2E_MORE_KINDS, tmp_path_factory)


def _run_kinds(kinds: tuple[tuple[str, str, int], ...],
               tmp_path_factory: pytest.TempPathFactory) -> dict[str, KindRun]:
    """These dataset kinds through the real CLIs, in two lanes (one per core: every step is single-threaded)."""
    import resource
    from concurrent.futures import ThreadPoolExecutor

    from conftest import nnunet_subprocess_env

    tmp = tmp_path_factory.mktemp("kinds")
    raw, pre, res = tmp / "raw", tmp / "pre", tmp / "res"
    for p in (raw, pre, res):
        p.mkdir()
    env = {**nnunet_subprocess_env(raw, pre, res), "OMP_NUM_THREADS": "1"}
    runs: dict[str, KindRun] = {}
    seconds: dict[str, float] = {}
    lanes = (kinds[0::2], kinds[1::2])
    start = time.perf_counter()
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_before = usage.ru_utime + usage.ru_stime
    with ThreadPoolExecutor(len(lanes)) as pool:
        for future in [pool.submit(_e2e_lane, lane, tmp, env, runs, seconds) for lane in lanes]:
            future.result()
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    print(f"\n{len(kinds)} dataset kinds end to end: {time.perf_counter() - start:.0f} s wall, "
          f"{usage.ru_utime + usage.ru_stime - cpu_before:.0f} s CPU in subprocesses "
          f"(per kind, lane time: {', '.join(f'{k} {v:.0f} s' for k, v in seconds.items())})")
    return runs


def _labels_of(path: Path) -> set[int]:
    return set(np.unique(read(path)).tolist())


@pytest.mark.slow
@pytest.mark.parametrize("kind", [k for _, k, _ in E2E_CI_KINDS])
def test_every_label_table_converts_trains_a_kd_student_predicts_and_evaluates(kind_runs, kind):
    """synth --layout -> convert-brats -> plan_and_preprocess -> KD training -> nnUNetv2_predict -> evaluate."""
    _check_kind_run(kind_runs[kind], kind)


@pytest.mark.slow
@pytest.mark.expensive
@pytest.mark.parametrize("kind", [k for _, k, _ in E2E_MORE_KINDS])
def test_every_other_kind_converts_trains_a_kd_student_predicts_and_evaluates(more_kind_runs, kind):
    """The same pipeline for the 2023 kinds that share MET's labels and regions (opt-in: ~3 min on 2 cores)."""
    _check_kind_run(more_kind_runs[kind], kind)


def _check_kind_run(r: KindRun, kind: str) -> None:
    labels, class_order, regions = E2E_EXPECTED[kind]
    meta = json.loads((r.dataset / "dataset.json").read_text())
    assert meta["brats_kind"] == kind and meta["source_layout"] == r.layout
    assert meta["labels"] == labels and meta["regions_class_order"] == class_order
    # the converted labels are the release's, mapped by the label table
    mapping = _RELEASE_TO_CANONICAL[r.layout]
    case_ids = sorted(p.name for p in r.source.iterdir())
    assert len(case_ids) == E2E_CASES
    release_values = set()
    for cid in case_ids:
        release = read(r.source / cid / f"{cid}-seg.nii.gz")
        release_values |= set(np.unique(release).tolist())
        expected = np.vectorize(mapping.__getitem__)(release)
        np.testing.assert_array_equal(read(r.dataset / "labelsTr" / f"{cid}.nii.gz"), expected)
    assert release_values == set(mapping), (kind, release_values)  # every tissue label occurs

    assert (r.model / "fold_all" / "checkpoint_final.pth").is_file()
    pred_meta = json.loads((r.pred / "dataset.json").read_text())
    assert pred_meta["brats_kind"] == kind and pred_meta["labels"] == labels
    summary = json.loads((r.evaluation / "summary.json").read_text())
    assert summary["dataset_kind"] == kind and summary["regions"] == list(regions)
    assert set(summary["metrics"]) >= set(regions)
    with open(r.evaluation / "per_case.csv") as f:
        header, *rows = [line.rstrip("\n").split(",") for line in f]
    by_case = {row[header.index("case")]: dict(zip(header, row)) for row in rows}
    assert sorted(by_case) == case_ids
    for cid in case_ids:
        gt_image = sitk.ReadImage(str(r.dataset / "labelsTr" / f"{cid}.nii.gz"))
        pred_image = sitk.ReadImage(str(r.pred / f"{cid}.nii.gz"))
        assert pred_image.GetSize() == gt_image.GetSize()
        assert np.allclose(pred_image.GetSpacing(), gt_image.GetSpacing())
        assert np.allclose(pred_image.GetOrigin(), gt_image.GetOrigin())
        assert np.allclose(pred_image.GetDirection(), gt_image.GetDirection())
        pred, gt = sitk.GetArrayFromImage(pred_image), sitk.GetArrayFromImage(gt_image)
        assert set(np.unique(pred).tolist()) <= {0, *range(1, max(class_order) + 1)}, (kind, cid)
        for region, values in regions.items():
            p, g = np.isin(pred, list(values)), np.isin(gt, list(values))
            expected = 1.0 if not p.any() and not g.any() else 2.0 * (p & g).sum() / (p.sum() + g.sum())
            assert float(by_case[cid][f"{region}_dice"]) == pytest.approx(expected, abs=1e-6), (kind, cid, region)
