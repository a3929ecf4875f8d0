"""Distillation dataset and nnUNetTrainerDistill: pseudo-labelled cases train, never validate."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from conftest import BIN, NnunetEnv, random_batch
from nnunet_kd.brats import make_dataset_json
from nnunet_kd.cli import main
from nnunet_kd.distillation.distill_dataset import (
    PROVENANCE_KEY,
    PSEUDO_LABEL_SETS_KEY,
    PSEUDO_LABELLED_KEY,
    build_distill_dataset,
    pseudo_cases_for_fold,
    pseudo_labelled_cases,
)
from nnunet_kd.errors import ConfigurationError, InputDataError, NnunetKDError


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


def make_pseudo(root: Path, images: Path, statuses: dict[str, str], folds=("0",), name: str = "pseudo") -> Path:
    """A pseudolabel output folder as `nnunet-kd pseudolabel` leaves it (labels + merged report with checksums)."""
    from nnunet_kd.distillation.pseudolabel import REPORT_FORMAT, file_sha256

    out = root / name
    (out / "labels").mkdir(parents=True)
    cases = {}
    for case, status in statuses.items():
        sha = ""
        if status != "unusable":
            _write(out / "labels" / f"{case}.nii.gz", 3 if status == "ok" else 0)
            sha = file_sha256(out / "labels" / f"{case}.nii.gz")
        cases[case] = {"status": status, "foreground_voxels": 27 if status == "ok" else 0, "region_voxels": {},
                       "message": "", "part": 0, "label_sha256": sha}
    members = [{"model_folder": f"/m{i}", "fold": f} for i in range(2) for f in folds]
    report = {"format": REPORT_FORMAT, "images": str(images), "file_ending": ".nii.gz", "members": members,
              "models": [{"model_folder": f"/m{i}", "folds": list(folds)} for i in range(2)], "folds": sorted(folds),
              "num_parts": 1, "save_probabilities": False, "min_foreground_voxels": 1,
              "checkpoint": "checkpoint_final.pth", "cases": cases,
              "ok": sorted(c for c, s in statuses.items() if s == "ok"),
              "rejected": {c: s for c, s in statuses.items() if s != "ok"}}
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
    label = target / "labelsTr" / "U1.nii.gz"  # labels are copies: a later pseudolabel run cannot change them
    assert not label.is_symlink() and label.read_bytes() == (pseudo / "labels" / "U1.nii.gz").read_bytes()
    assert (target / "imagesTr" / "U1_0000.nii.gz").is_symlink()
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


def _rewrite_label(pseudo: Path, case: str, array: np.ndarray | None = None, data: bytes | None = None,
                   update_report: bool = True) -> Path:
    from nnunet_kd.distillation.pseudolabel import file_sha256

    label = pseudo / "labels" / f"{case}.nii.gz"
    if array is not None:
        sitk.WriteImage(sitk.GetImageFromArray(array), str(label))
    if data is not None:
        label.write_bytes(data)
    if update_report:  # the report describes the bad file: the label check itself must catch it
        report = json.loads((pseudo / "pseudolabels.json").read_text())
        report["cases"][case]["label_sha256"] = file_sha256(label)
        (pseudo / "pseudolabels.json").write_text(json.dumps(report))
    return label


BAD_LABELS = {
    "truncated": (lambda p: _rewrite_label(p, "U1", data=gzip.compress(gzip.decompress(
        (p / "labels" / "U1.nii.gz").read_bytes())[:-10])), "truncated"),  # voxel data cut short, header intact
    "non-integer": (lambda p: _rewrite_label(p, "U1", np.full((3, 3, 3), 1.5, dtype=np.float32)),
                    "non-integer label values 1.5"),
    "out-of-range": (lambda p: _rewrite_label(p, "U1", np.full((3, 3, 3), 7, dtype=np.uint8)), "[7]"),
    "wrong-shape": (lambda p: _rewrite_label(p, "U1", np.full((4, 3, 3), 1, dtype=np.uint8)), "shape"),
    "changed-after-report": (lambda p: _rewrite_label(p, "U1", np.full((3, 3, 3), 2, dtype=np.uint8),
                                                      update_report=False), "not the file"),
}


@pytest.mark.parametrize("kind", sorted(BAD_LABELS))
def test_bad_pseudo_labels_are_refused_by_the_cli(tmp_path: Path, kind: str):
    import os
    import subprocess

    raw = make_raw(tmp_path, ["L1"], ["U1", "U2"])
    pseudo = make_pseudo(tmp_path, raw / "imagesTs", {"U1": "ok", "U2": "ok"})
    corrupt, words = BAD_LABELS[kind]
    label = corrupt(pseudo)
    env = dict(os.environ, nnUNet_raw=str(tmp_path / "raw"), nnUNet_preprocessed=str(tmp_path / "pre"),
               nnUNet_results=str(tmp_path / "res"))
    proc = subprocess.run([str(BIN / "nnunet-kd"), "make-distill-dataset", "-s", "601", "-p", str(pseudo), "-d",
                           "602"], capture_output=True, text=True, env=env, timeout=120)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert "case U1" in lines[0] and str(label) in lines[0] and words in lines[0], lines[0]
    assert sorted(p.name for p in (tmp_path / "raw").iterdir()) == ["Dataset601_Src"]  # nothing left behind


def test_stale_report_of_an_older_version_is_refused(tmp_path: Path):
    raw = make_raw(tmp_path, ["L1"], ["U1"])
    pseudo = make_pseudo(tmp_path, raw / "imagesTs", {"U1": "ok"})
    report = json.loads((pseudo / "pseudolabels.json").read_text())
    del report["format"]
    (pseudo / "pseudolabels.json").write_text(json.dumps(report))
    with pytest.raises(InputDataError, match="older nnunet-kd"):
        build_distill_dataset(raw, pseudo, 602, raw_root=tmp_path / "raw")
    assert sorted(p.name for p in (tmp_path / "raw").iterdir()) == ["Dataset601_Src"]


def test_per_fold_pseudo_labels_train_only_their_fold(tmp_path: Path):
    raw = make_raw(tmp_path, ["L1", "L2"], ["U1", "U2"])
    p0 = make_pseudo(tmp_path, raw / "imagesTs", {"U1": "ok", "U2": "ok"}, folds=("0",), name="p0")
    p1 = make_pseudo(tmp_path, raw / "imagesTs", {"U1": "ok", "U2": "empty"}, folds=("1",), name="p1")
    target = build_distill_dataset(raw, [p0, p1], 602, raw_root=tmp_path / "raw")
    meta = json.loads((target / "dataset.json").read_text())
    assert pseudo_labelled_cases(meta) == ["U1__plfold0", "U1__plfold1", "U2__plfold0"]
    assert [(s["fold"], s["cases"]) for s in meta[PSEUDO_LABEL_SETS_KEY]] == [
        ("0", ["U1__plfold0", "U2__plfold0"]), ("1", ["U1__plfold1"])]
    assert (target / "imagesTr" / "U1__plfold1_0003.nii.gz").is_file()
    assert pseudo_cases_for_fold(meta, 0) == (["U1__plfold0", "U2__plfold0"], None)
    assert pseudo_cases_for_fold(meta, "1") == (["U1__plfold1"], None)
    assert pseudo_cases_for_fold(meta, "all")[0] == pseudo_labelled_cases(meta)
    with pytest.raises(ConfigurationError, match="not for fold 2.*--fold 2"):
        pseudo_cases_for_fold(meta, 2)

    shared = make_pseudo(tmp_path, raw / "imagesTs", {"U1": "ok"}, folds=("0", "1", "2", "3", "4"), name="all")
    with pytest.raises(ConfigurationError, match="one fold"):
        build_distill_dataset(raw, [p0, shared], 603, raw_root=tmp_path / "raw")
    with pytest.raises(ConfigurationError, match="both pseudo-labels of fold 0"):
        build_distill_dataset(raw, [p0, p0], 603, raw_root=tmp_path / "raw")
    leaky = json.loads((build_distill_dataset(raw, shared, 603, raw_root=tmp_path / "raw") / "dataset.json")
                       .read_text())
    cases, warning = pseudo_cases_for_fold(leaky, 0)
    assert cases == ["U1"] and "\n" not in warning
    assert "fold 0 trains on pseudo-labels from ensemble members of fold(s) 1, 2, 3, 4" in warning
    one_fold = json.loads((build_distill_dataset(raw, p0, 604, raw_root=tmp_path / "raw") / "dataset.json")
                          .read_text())
    assert pseudo_cases_for_fold(one_fold, 0) == (["U1", "U2"], None)
    assert "members of fold(s) 0" in pseudo_cases_for_fold(one_fold, 3)[1]


def test_train_step_weights_pseudo_labelled_samples_and_split_follows_the_fold(nnunet_env: NnunetEnv, monkeypatch,
                                                                               tmp_path: Path):
    """Inside the real trainer: the loss train_step returns is the per-sample loss weighted 0.5 for the sample whose
    key is pseudo-labelled (reference: nnU-Net's stock region loss per sample, weighted by hand); do_split trains
    fold 0 on fold 0's pseudo-labels only and warns once, in one line, for a shared set of other folds' members."""
    import copy

    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    trainer = nnunet_env.make_trainer("nnUNetTrainerDistill_PseudoWeight05_smoke", monkeypatch)
    trainer.log_file = str(tmp_path / "log.txt")
    trainer.initialize()
    real = sorted(trainer.dataset_class.get_identifiers(trainer.preprocessed_dataset_folder))
    trainer.dataset_json[PSEUDO_LABELLED_KEY] = real[:2]
    batch = random_batch(trainer)
    batch["target"] = [torch.cat([t[:1] * 0, t[1:]]) for t in batch["target"]]  # sample 0 without tumour
    reference = nnUNetTrainer._build_loss(trainer)  # stock DC + BCE with deep supervision, no weighting
    trainer.network.train()
    with torch.no_grad():
        output = trainer.network(batch["data"])
        per_sample = [float(reference([o[i:i + 1] for o in output], [t[i:i + 1] for t in batch["target"]]))
                      for i in range(2)]
    assert abs(per_sample[0] - per_sample[1]) > 1e-3  # the weighting is visible
    network, optimizer = copy.deepcopy(trainer.network.state_dict()), copy.deepcopy(trainer.optimizer.state_dict())
    for keys, weights in (([real[0], real[5]], (0.5, 1.0)), ([real[5], real[1]], (1.0, 0.5)),
                          ([real[5], real[6]], (1.0, 1.0))):
        trainer.network.load_state_dict(network)
        trainer.optimizer.load_state_dict(optimizer)
        loss = float(trainer.train_step(dict(batch, keys=keys))["loss"])
        expected = (weights[0] * per_sample[0] + weights[1] * per_sample[1]) / sum(weights)
        assert loss == pytest.approx(expected, rel=1e-4), (keys, loss, expected, per_sample)

    trainer.preprocessed_dataset_folder_base = str(tmp_path)  # its splits_final.json, not the shared dataset's
    trainer.dataset_json[PSEUDO_LABEL_SETS_KEY] = [{"fold": None, "member_folds": ["0", "1", "2", "3", "4"],
                                                    "cases": real[:2]}]
    train, val = trainer.do_split()
    assert set(real[:2]) <= set(train) and not set(real[:2]) & set(val)
    trainer.do_split()
    warnings = [ln for ln in Path(trainer.log_file).read_text().splitlines() if "WARNING" in ln]
    assert len(warnings) == 1 and "ensemble members of fold(s) 1, 2, 3, 4" in warnings[0]
    trainer.dataset_json[PSEUDO_LABEL_SETS_KEY] = [{"fold": "0", "member_folds": ["0"], "cases": [real[0]]},
                                                   {"fold": "1", "member_folds": ["1"], "cases": [real[1]]}]
    train, val = trainer.do_split()
    assert real[0] in train and real[1] not in train and not set(real[:2]) & set(val)


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
    train, val = distill_split(everything, pseudo, 0, None, use={"pseudo_2"})  # fold 0's pseudo-labels only
    assert set(train) & pseudo == {"pseudo_2"} and not set(val) & pseudo


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
    assert "WARNING: fold 0" not in log  # fold-0 members only: the clean protocol, no leak warning
