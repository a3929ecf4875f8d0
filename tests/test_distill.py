"""Distillation dataset and nnUNetTrainerDistill: pseudo-labelled cases train, never validate."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from conftest import BIN, NnunetEnv
from nnunet_kd.brats import make_dataset_json
from nnunet_kd.cli import main
from nnunet_kd.distillation.distill_dataset import (
    PROVENANCE_KEY,
    PSEUDO_LABELLED_KEY,
    build_distill_dataset,
    pseudo_labelled_cases,
)
from nnunet_kd.errors import InputDataError, NnunetKDError


def _write(path: Path, value: int = 0) -> None:
    sitk.WriteImage(sitk.GetImageFromArray(np.full((3, 3, 3), value, dtype=np.uint8)), str(path))


def make_raw(root: Path, labelled: list[str], unlabelled: list[str]) -> Path:
    raw = root / "raw" / "Dataset601_Src"
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        (raw / sub).mkdir(parents=True)
    for case in labelled:
        for ch in range(4):
            _write(raw / "imagesTr" / f"{case}_{ch:04d}.nii.gz", ch)
        _write(raw / "labelsTr" / f"{case}.nii.gz", 1)
    for case in unlabelled:
        for ch in range(4):
            _write(raw / "imagesTs" / f"{case}_{ch:04d}.nii.gz", ch)
    (raw / "dataset.json").write_text(json.dumps(make_dataset_json(len(labelled), "Src")))
    return raw


def make_pseudo(root: Path, images: Path, statuses: dict[str, str]) -> Path:
    out = root / "pseudo"
    (out / "labels").mkdir(parents=True)
    for case, status in statuses.items():
        if status != "unusable":
            _write(out / "labels" / f"{case}.nii.gz", 3 if status == "ok" else 0)
    report = {"images": str(images), "file_ending": ".nii.gz", "members": [{"model_folder": "/m", "fold": "0"}],
              "num_parts": 1, "save_probabilities": False, "min_foreground_voxels": 1,
              "cases": {c: {"status": s, "foreground_voxels": 27 if s == "ok" else 0, "region_voxels": {},
                            "message": "", "part": 0} for c, s in statuses.items()}}
    (out / "pseudolabels.json").write_text(json.dumps(report))
    return out


def test_distill_dataset_layout_and_record(tmp_path: Path):
    raw = make_raw(tmp_path, ["L1", "L2"], ["U1", "U2", "U3"])
    pseudo = make_pseudo(tmp_path, raw / "imagesTs", {"U1": "ok", "U2": "empty", "U3": "unusable"})
    target = build_distill_dataset(raw, pseudo, 602, raw_root=tmp_path / "raw")
    assert target.name == "Dataset602_SrcDistill"
    meta = json.loads((target / "dataset.json").read_text())
    assert pseudo_labelled_cases(meta) == ["U1"] and meta[PSEUDO_LABELLED_KEY] == ["U1"]
    assert meta["numTraining"] == 3 and meta["labels"] == make_dataset_json(1, "x")["labels"]
    assert meta[PROVENANCE_KEY]["left_out"] == {"U2": "empty", "U3": "unusable"}
    assert meta[PROVENANCE_KEY]["source_dataset"] == "Dataset601_Src"
    names = sorted(p.name for p in (target / "imagesTr").iterdir())
    assert names == sorted(f"{c}_{ch:04d}.nii.gz" for c in ("L1", "L2", "U1") for ch in range(4))
    assert sorted(p.name for p in (target / "labelsTr").iterdir()) == ["L1.nii.gz", "L2.nii.gz", "U1.nii.gz"]
    link = target / "labelsTr" / "U1.nii.gz"
    assert link.is_symlink() and link.resolve() == (pseudo / "labels" / "U1.nii.gz").resolve()
    assert sitk.GetArrayFromImage(sitk.ReadImage(str(target / "imagesTr" / "U1_0002.nii.gz"))).max() == 2
    assert not [p for p in (tmp_path / "raw").iterdir() if p.name.startswith(".")]  # no temp folder left

    with pytest.raises(NnunetKDError, match="already exists"):
        build_distill_dataset(raw, pseudo, 602, raw_root=tmp_path / "raw")
    copied = build_distill_dataset(raw, pseudo, 602, name="Copy", copy=True, include_empty=True, overwrite=True,
                                   raw_root=tmp_path / "raw")
    assert not target.exists() and copied.name == "Dataset602_Copy"
    assert not (copied / "labelsTr" / "U2.nii.gz").is_symlink()
    assert pseudo_labelled_cases(json.loads((copied / "dataset.json").read_text())) == ["U1", "U2"]


def test_distill_dataset_errors(tmp_path: Path, capsys, monkeypatch):
    raw = make_raw(tmp_path, ["L1"], ["L1x"])
    clash = make_pseudo(tmp_path, raw / "imagesTr", {"L1": "ok"})
    with pytest.raises(InputDataError, match="same identifier"):
        build_distill_dataset(raw, clash, 603, raw_root=tmp_path / "raw")
    assert not list((tmp_path / "raw").glob("Dataset603*")) and not list((tmp_path / "raw").glob(".Dataset603*"))
    monkeypatch.setenv("nnUNet_raw", str(tmp_path / "raw"))
    code = main(["make-distill-dataset", "-s", "601", "-p", str(tmp_path / "missing"), "-d", "604"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "pseudolabels.json" in err[0]


def test_distill_split_keeps_pseudo_cases_out_of_validation():
    from nnunetv2.utilities.crossval_split import generate_crossval_split

    from nnunet_kd.trainers.distill import distill_split

    real = [f"real_{i:02d}" for i in range(12)]
    pseudo = {f"pseudo_{i}" for i in range(4)}
    everything = sorted(real + list(pseudo))
    teacher_splits = generate_crossval_split(real, seed=12345, n_splits=5)  # nnU-Net's split of the teachers
    seen_val = []
    for fold in range(5):
        train, val = distill_split(everything, pseudo, fold, None)
        assert not set(val) & pseudo and pseudo <= set(train)
        assert sorted(val) == sorted(teacher_splits[fold]["val"])  # same validation cases as the teachers
        assert not set(train) & set(val)
        seen_val += val
    assert sorted(seen_val) == real
    train, val = distill_split(everything, pseudo, "all", None)
    assert val == real and sorted(train) == everything
    hand_made = [{"train": real[2:] + ["pseudo_1"], "val": real[:2] + ["pseudo_0"]}]
    train, val = distill_split(everything, pseudo, 0, hand_made)
    assert val == real[:2] and "pseudo_0" in train and "pseudo_1" in train


def test_per_sample_weighted_loss_hand_computation():
    from nnunet_kd.trainers.distill import PerSampleWeightedLoss

    def base(output, target):
        return sum(((o - t) ** 2).mean() for o, t in zip(output, target))

    output = [torch.arange(8.0).view(2, 1, 2, 2), torch.ones(2, 1, 1, 1)]
    target = [torch.zeros(2, 1, 2, 2), torch.zeros(2, 1, 1, 1)]
    weights = {"w": torch.tensor([1.0, 0.5])}
    loss = PerSampleWeightedLoss(base, lambda: weights["w"])
    per_sample = [(torch.arange(4.0) ** 2).mean() + 1, (torch.arange(4.0, 8.0) ** 2).mean() + 1]
    expected = (per_sample[0] * 1.0 + per_sample[1] * 0.5) / 1.5
    assert torch.isclose(loss(output, target), expected)
    weights["w"] = None
    assert torch.isclose(loss(output, target), base(output, target))


@pytest.mark.slow
def test_distill_end_to_end_with_nnunetv2_train(nnunet_env: NnunetEnv, tmp_path: Path):
    teacher = nnunet_env.model_folder("nnUNetTrainerUNet_smoke")
    if not (teacher / "fold_0" / "checkpoint_final.pth").is_file():
        nnunet_env.run(str(BIN / "nnUNetv2_train"), str(nnunet_env.dataset_id), "3d_fullres", "0", "-tr",
                       "nnUNetTrainerUNet_smoke", "-device", "cpu")
    images = nnunet_env.dataset_raw / "imagesTs"
    pseudo = tmp_path / "pseudo"
    # smoke teachers barely segment anything, so accept empty pseudo-labels here
    nnunet_env.run(str(BIN / "nnunet-kd"), "pseudolabel", "-i", str(images), "-o", str(pseudo), "--models",
                   f"{teacher}:0", "-device", "cpu", "--min-foreground-voxels", "0", "--no-progress")
    new_id = nnunet_env.dataset_id + 1
    proc = nnunet_env.run(str(BIN / "nnunet-kd"), "make-distill-dataset", "-s", str(nnunet_env.dataset_id), "-p",
                          str(pseudo), "-d", str(new_id))
    assert "pseudo-labelled" in proc.stdout
    name = f"Dataset{new_id:03d}_{nnunet_env.dataset_name.split('_', 1)[1]}Distill"
    raw_json = json.loads((nnunet_env.raw / name / "dataset.json").read_text())
    pseudo_cases = set(pseudo_labelled_cases(raw_json))
    assert pseudo_cases == {p.name[: -len("_0000.nii.gz")] for p in images.glob("*_0000.nii.gz")}

    nnunet_env.run(str(BIN / "nnUNetv2_plan_and_preprocess"), "-d", str(new_id), "-c", "3d_fullres", "-np", "1",
                   "-npfp", "1", extra_env={"nnUNet_n_proc_DA": "1"})
    student = "nnUNetTrainerResidualUNetDistill_PseudoWeight05_smoke"  # the seed's student, pseudo cases weighted 0.5
    nnunet_env.run(str(BIN / "nnUNetv2_train"), str(new_id), "3d_fullres", "0", "-tr", student, "-device", "cpu")

    splits = json.loads((nnunet_env.preprocessed / name / "splits_final.json").read_text())
    assert len(splits) == 5
    teacher_splits = json.loads((nnunet_env.preprocessed / nnunet_env.dataset_name / "splits_final.json").read_text())
    for fold, teacher_fold in zip(splits, teacher_splits):
        assert not set(fold["val"]) & pseudo_cases and not set(fold["train"]) & pseudo_cases
        assert sorted(fold["val"]) == sorted(teacher_fold["val"])  # fold Dice comparable with the teacher's
    fold0 = nnunet_env.results / name / f"{student}__nnUNetPlans__3d_fullres" / "fold_0"
    validated = {p.name[: -len(".nii.gz")] for p in (fold0 / "validation").glob("*.nii.gz")}
    assert validated == set(splits[0]["val"])
    log = "".join(p.read_text() for p in fold0.glob("training_log_*.txt"))
    assert f"({len(pseudo_cases)} pseudo-labelled)" in log
