"""The teacher JSON of two-stage KD and the checks that a stock checkpoint fits the dataset (no training here)."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest
import torch

from nnunet_kd.cli import main
from nnunet_kd.errors import ConfigurationError
from nnunet_kd.trainers.teacher_config import (
    TeacherConfig,
    available_teacher_folds,
    check_teacher_checkpoint,
    check_weights_fit,
    parse_fold,
    read_teacher_config,
    resolve_teacher,
    teacher_checkpoint_file,
    teacher_config_path,
    write_teacher_config,
)

DATASET = "Dataset901_Fake"
CHANNELS = {"0": "T1", "1": "T1ce", "2": "T2", "3": "FLAIR"}


def make_plans(patch=(32, 32, 32)) -> dict:
    arch = {"network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
            "arch_kwargs": {"n_stages": 2, "features_per_stage": [8, 16], "conv_op": "torch.nn.modules.conv.Conv3d",
                            "kernel_sizes": [[3, 3, 3], [3, 3, 3]], "strides": [[1, 1, 1], [2, 2, 2]],
                            "n_conv_per_stage": [1, 1], "n_conv_per_stage_decoder": [1], "conv_bias": True,
                            "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
                            "norm_op_kwargs": {"eps": 1e-05, "affine": True}, "dropout_op": None,
                            "dropout_op_kwargs": None, "nonlin": "torch.nn.LeakyReLU",
                            "nonlin_kwargs": {"inplace": True}},
            "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"]}
    return {"dataset_name": DATASET, "plans_name": "nnUNetPlans",
            "configurations": {
                "3d_fullres": {"data_identifier": "nnUNetPlans_3d_fullres", "batch_size": 2, "patch_size": list(patch),
                               "spacing": [1.0, 1.0, 1.0], "normalization_schemes": ["ZScoreNormalization"] * 4,
                               "use_mask_for_norm": [False] * 4, "architecture": arch},
                "3d_big": {"inherits_from": "3d_fullres", "batch_size": 4},
            }}


def make_dataset_json() -> dict:
    return {"channel_names": dict(CHANNELS), "labels": {"background": 0, "whole tumor": [1, 2, 3],
                                                        "tumor core": [2, 3], "enhancing tumor": [3]},
            "regions_class_order": [1, 2, 3], "numTraining": 4, "file_ending": ".nii.gz"}


def make_checkpoint(plans: dict | None = None, dataset_json: dict | None = None, configuration: str = "3d_fullres",
                    **extra) -> dict:
    plans = plans if plans is not None else make_plans()
    dataset_json = dataset_json if dataset_json is not None else make_dataset_json()
    return {"network_weights": {"w": torch.zeros(2, 4)}, "trainer_name": "nnUNetTrainer",
            "init_args": {"plans": plans, "configuration": configuration, "fold": 0, "dataset_json": dataset_json,
                          "device": torch.device("cpu")}, **extra}


@pytest.fixture
def tree(tmp_path: Path, monkeypatch) -> tuple[Path, Path]:
    """A fake nnU-Net tree: preprocessed DatasetXXX (plans, dataset.json) and a stock teacher with folds 0 and 2."""
    pre, res = tmp_path / "preprocessed", tmp_path / "results"
    (pre / DATASET).mkdir(parents=True)
    (pre / DATASET / "nnUNetPlans.json").write_text(json.dumps(make_plans()))
    (pre / DATASET / "dataset.json").write_text(json.dumps(make_dataset_json()))
    for fold in (0, 2):
        folder = res / DATASET / "nnUNetTrainer__nnUNetPlans__3d_fullres" / f"fold_{fold}"
        folder.mkdir(parents=True)
        torch.save(make_checkpoint(), folder / "checkpoint_final.pth")
    monkeypatch.setenv("nnUNet_preprocessed", str(pre))
    monkeypatch.setenv("nnUNet_results", str(res))
    monkeypatch.setenv("nnUNet_raw", str(tmp_path / "raw"))
    return pre, res


def test_config_round_trip_next_to_the_preprocessed_plans(tree):
    pre, _ = tree
    config = TeacherConfig("nnUNetTrainer", "nnUNetPlans", "3d_fullres", fold=None)
    path = write_teacher_config(DATASET, config)
    assert path == pre / DATASET / "nnunet_kd_teacher__nnUNetPlans__3d_fullres.json"
    assert path == teacher_config_path(DATASET, "nnUNetPlans", "3d_fullres")
    assert [p.name for p in path.parent.iterdir() if p.name.startswith(".")] == []  # no temp file left
    assert read_teacher_config(DATASET, "nnUNetPlans", "3d_fullres") == config
    pinned = TeacherConfig("nnUNetTrainer", "nnUNetPlans", "3d_fullres", fold="all", checkpoint="checkpoint_best.pth")
    write_teacher_config(DATASET, pinned)
    assert read_teacher_config(DATASET, "nnUNetPlans", "3d_fullres") == pinned


def test_missing_config_says_how_to_set_it(tree):
    with pytest.raises(ConfigurationError, match=r"no teacher set for Dataset901_Fake .*nnunet-kd set-teacher -d 901 "
                                                 r"-c 3d_big --teacher-trainer nnUNetTrainer --teacher-plans nnUNetPlans"):
        read_teacher_config(DATASET, "nnUNetPlans", "3d_big")


@pytest.mark.parametrize("content, message", [
    ("{not json", "not readable JSON"),
    ("[1, 2]", "not a JSON object"),
    (json.dumps({"plans": "nnUNetPlans", "configuration": "3d_fullres"}), "lacks teacher_trainer"),
    (json.dumps({"teacher_trainer": "T", "plans": "nnUNetPlans", "configuration": "3d_fullres", "teacher_fold": "x"}),
     "teacher fold must be a fold number"),
    (json.dumps({"teacher_trainer": "T", "plans": "Other", "configuration": "3d_fullres"}), "names plans Other"),
])
def test_malformed_config_is_a_clear_error(tree, content: str, message: str):
    pre, _ = tree
    (pre / DATASET / "nnunet_kd_teacher__nnUNetPlans__3d_fullres.json").write_text(content)
    with pytest.raises(ConfigurationError, match=message):
        read_teacher_config(DATASET, "nnUNetPlans", "3d_fullres")


def test_parse_fold():
    assert parse_fold("3") == 3 and parse_fold(0) == 0 and parse_fold("all") == "all"
    for bad in ("-1", "one", None, True, 1.5):
        with pytest.raises(ConfigurationError):
            parse_fold(bad)


def test_checkpoint_lookup_names_missing_fold_and_available_ones(tree):
    _, res = tree
    config = TeacherConfig("nnUNetTrainer", "nnUNetPlans", "3d_fullres")
    assert available_teacher_folds(res / DATASET / config.folder_name) == [0, 2]
    assert teacher_checkpoint_file(DATASET, config, 2).parent.name == "fold_2"
    with pytest.raises(ConfigurationError, match=r"fold_1/checkpoint_final.pth does not exist \(folds with "
                                                 r"checkpoint_final.pth: 0, 2\); train that fold of the teacher "
                                                 r"\(nnUNetv2_train 901 3d_fullres 1 -tr nnUNetTrainer"):
        teacher_checkpoint_file(DATASET, config, 1)
    with pytest.raises(ConfigurationError, match=r"teacher model folder .*nnUNetTrainerX__nnUNetPlans__3d_fullres "
                                                 r"does not exist"):
        teacher_checkpoint_file(DATASET, TeacherConfig("nnUNetTrainerX", "nnUNetPlans", "3d_fullres"), 0)


def test_matching_checkpoint_passes_including_inherited_configuration():
    check_teacher_checkpoint(make_checkpoint(), make_plans(), "3d_fullres", make_dataset_json(), "t.pth")
    check_teacher_checkpoint(make_checkpoint(configuration="3d_big"), make_plans(), "3d_big", make_dataset_json(),
                             "t.pth")
    # a plans file read from JSON (lists) against a checkpoint holding tuples: still equal
    plans = make_plans()
    plans["configurations"]["3d_fullres"]["patch_size"] = (32, 32, 32)
    check_teacher_checkpoint(make_checkpoint(plans), make_plans(), "3d_fullres", make_dataset_json(), "t.pth")


def _mutated(change) -> dict:
    checkpoint = make_checkpoint()
    change(checkpoint)
    return checkpoint


MISFITS = {
    "other dataset": (lambda c: c["init_args"]["plans"].update(dataset_name="Dataset902_Other"),
                      "it was trained on dataset Dataset902_Other"),
    "other plans": (lambda c: c["init_args"]["plans"].update(plans_name="nnUNetResEncUNetMPlans"),
                    "it was trained with plans nnUNetResEncUNetMPlans"),
    "other configuration": (lambda c: c["init_args"].update(configuration="2d"),
                            "it was trained with configuration 2d"),
    "reordered channels": (lambda c: c["init_args"]["dataset_json"].update(
        channel_names={"0": "FLAIR", "1": "T1ce", "2": "T2", "3": "T1"}), "its channels are"),
    "two channels": (lambda c: c["init_args"]["dataset_json"].update(channel_names={"0": "T1ce", "1": "FLAIR"}),
                     "the teacher must take the same channels"),
    "other labels": (lambda c: c["init_args"]["dataset_json"].update(labels={"background": 0, "tumor": 1}),
                     "its dataset.json labels"),
    "other patch size": (lambda c: c["init_args"]["plans"]["configurations"]["3d_fullres"].update(
        patch_size=[48, 48, 48]), r"another patch size \[48, 48, 48\], the plans now have \[32, 32, 32\]"),
    "other network": (lambda c: c["init_args"]["plans"]["configurations"]["3d_fullres"]["architecture"][
        "arch_kwargs"].update(features_per_stage=[16, 32]), "another network, the plans now differ"),
    "student network": (lambda c: c.update(network_weights={"encoder.stages.0.0.convs.0.conv.weight":
                                                            torch.zeros(8, 2, 3, 3, 3)}),
                        r"its network takes 2 input channel\(s\), the dataset has 4"),
    "kd checkpoint": (lambda c: c.update(nnunet_kd={"student": {"channel_indices": [1, 3]}}),
                      "KD run whose network is the student; export its teacher"),
    "not a checkpoint": (lambda c: c.pop("init_args"), "is not an nnU-Net training checkpoint"),
}


@pytest.mark.parametrize("name", list(MISFITS))
def test_misfitting_checkpoint_is_refused_with_one_line(name: str):
    change, message = MISFITS[name]
    with pytest.raises(ConfigurationError, match=message) as info:
        check_teacher_checkpoint(_mutated(change), make_plans(), "3d_fullres", make_dataset_json(), "/m/t.pth")
    text = str(info.value)
    assert "\n" not in text
    assert text.startswith("teacher /m/t.pth") or text.startswith("teacher checkpoint /m/t.pth")


def test_weights_must_fit_the_network_exactly():
    reference = {"a": torch.zeros(3, 4), "b": torch.zeros(2)}
    check_weights_fit({"a": torch.ones(3, 4), "b": torch.ones(2)}, reference, "t.pth")
    with pytest.raises(ConfigurationError, match=r"a has shape \[3, 2\], the network \[3, 4\]"):
        check_weights_fit({"a": torch.ones(3, 2), "b": torch.ones(2)}, reference, "t.pth")
    with pytest.raises(ConfigurationError, match="1 missing, 1 unexpected keys, e.g. missing b"):
        check_weights_fit({"a": torch.ones(3, 4), "c": torch.ones(2)}, reference, "t.pth")


def test_resolve_teacher_uses_the_kd_fold_unless_pinned(tree):
    plans, dataset_json = make_plans(), make_dataset_json()
    write_teacher_config(DATASET, TeacherConfig("nnUNetTrainer", "nnUNetPlans", "3d_fullres"))
    source = resolve_teacher(plans, "3d_fullres", 2, dataset_json)
    assert source.fold == 2 and source.checkpoint_file.parent.name == "fold_2"
    assert torch.equal(source.network_weights["w"], torch.zeros(2, 4))
    with pytest.raises(ConfigurationError, match="fold_1/checkpoint_final.pth does not exist"):
        resolve_teacher(plans, "3d_fullres", 1, dataset_json)
    write_teacher_config(DATASET, TeacherConfig("nnUNetTrainer", "nnUNetPlans", "3d_fullres", fold=0))
    assert resolve_teacher(plans, "3d_fullres", 1, dataset_json).fold == 0


def test_cli_set_teacher_checks_and_writes(tree, capsys):
    pre, res = tree
    assert main(["set-teacher", "-d", "901", "-c", "3d_fullres", "--teacher-trainer", "nnUNetTrainer"]) == 0
    out = capsys.readouterr().out
    path = pre / DATASET / "nnunet_kd_teacher__nnUNetPlans__3d_fullres.json"
    assert str(path) in out and "trained folds: 0, 2" in out
    assert json.loads(path.read_text())["teacher_trainer"] == "nnUNetTrainer"
    assert json.loads(path.read_text())["teacher_fold"] is None

    assert main(["set-teacher", "-d", DATASET, "--teacher-trainer", "nnUNetTrainer", "--teacher-fold", "2"]) == 0
    assert json.loads(path.read_text())["teacher_fold"] == 2
    capsys.readouterr()


def test_cli_set_teacher_refuses_wrong_teachers_and_keeps_the_old_config(tree, capsys):
    pre, res = tree
    assert main(["set-teacher", "-d", "901", "--teacher-trainer", "nnUNetTrainer"]) == 0
    path = pre / DATASET / "nnunet_kd_teacher__nnUNetPlans__3d_fullres.json"
    before = path.read_text()
    capsys.readouterr()

    other = res / DATASET / "nnUNetTrainerOther__nnUNetPlans__3d_fullres" / "fold_0"
    other.mkdir(parents=True)
    dataset_json = make_dataset_json()
    dataset_json["channel_names"] = {"0": "T1ce", "1": "FLAIR"}
    torch.save(make_checkpoint(dataset_json=dataset_json), other / "checkpoint_final.pth")
    # a student-only model records the full 4-channel dataset.json, but its first convolution takes 2 channels
    student = res / DATASET / "nnUNetTrainerStudentOnly__nnUNetPlans__3d_fullres" / "fold_0"
    student.mkdir(parents=True)
    torch.save(make_checkpoint(network_weights={"encoder.stages.0.0.convs.0.conv.weight": torch.zeros(8, 2, 3, 3, 3)}),
               student / "checkpoint_final.pth")
    cases = [
        (["--teacher-trainer", "nnUNetTrainerOther"], "its channels are"),
        (["--teacher-trainer", "nnUNetTrainerStudentOnly"], r"its network takes 2 input channel\(s\), the dataset has 4"),
        (["--teacher-trainer", "nnUNetTrainer", "--teacher-fold", "1"], "fold_1/checkpoint_final.pth does not exist"),
        (["--teacher-trainer", "nnUNetTrainerMissing"], "does not exist; train the teacher first"),
        (["--teacher-trainer", "nnUNetTrainer", "-c", "2d"], "configuration 2d is not in"),
        (["--teacher-trainer", "nnUNetTrainer", "--teacher-plans", "nnUNetResEncUNetMPlans"], "plans .* do not exist"),
    ]
    for extra, message in cases:
        assert main(["set-teacher", "-d", "901", *extra]) == 2, extra
        err = capsys.readouterr().err
        assert err.startswith("nnunet-kd set-teacher: error: ") and err.count("\n") == 1, err
        assert re.search(message, err), (message, err)
    assert path.read_text() == before


def test_cli_set_teacher_unknown_dataset(tree, capsys):
    assert main(["set-teacher", "-d", "902"]) == 2
    err = capsys.readouterr().err
    assert "Could not find a dataset with the ID 902" in err and err.count("\n") == 1


def test_config_needs_an_existing_preprocessed_dataset(tree):
    with pytest.raises(ConfigurationError, match="run nnUNetv2_plan_and_preprocess -d 903 first"):
        write_teacher_config("Dataset903_Nope", TeacherConfig("nnUNetTrainer", "nnUNetPlans", "3d_fullres"))


def test_check_does_not_mutate_inputs():
    checkpoint, plans, dataset_json = make_checkpoint(), make_plans(), make_dataset_json()
    snapshot = copy.deepcopy((plans, dataset_json, checkpoint["init_args"]["plans"]))
    check_teacher_checkpoint(checkpoint, plans, "3d_fullres", dataset_json, "t.pth")
    assert (plans, dataset_json, checkpoint["init_args"]["plans"]) == snapshot
