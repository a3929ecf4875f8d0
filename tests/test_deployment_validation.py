"""The KD student's final validation equals stock ``nnUNetv2_predict`` of its files (deployment_validation.py).

The session's KD smoke model is validated again (``nnUNetv2_train --val``) in a copy of the nnU-Net tree whose raw
cases are padded and whose T1/T2 carry a thin low-signal rim outside the brain, re-preprocessed: there nnU-Net's 4-channel preprocessed arrays
give the student other inputs than its two files do (checked), so validating from them (the old code) cannot
match stock prediction; the new validation must, to the last bit of the exported probabilities.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import BIN, NnunetEnv, nnunet_subprocess_env
from nnunet_kd.synthetic import add_low_signal_rim

KD = "nnUNetTrainerBarlowKD_smoke"
STUDENT_SUFFIXES = ("_0001", "_0003")


@pytest.fixture(scope="module")
def rim_env(nnunet_env: NnunetEnv, tmp_path_factory: pytest.TempPathFactory) -> NnunetEnv:
    """A copy of the session tree with the rim in raw T1/T2, preprocessed again, holding the trained KD model."""
    model = nnunet_env.ensure_trained(KD)
    root = tmp_path_factory.mktemp("rim")
    raw, pre, res = root / "raw", root / "preprocessed", root / "results"
    name = nnunet_env.dataset_name
    shutil.copytree(nnunet_env.dataset_raw, raw / name)
    n_images = len(list((raw / name).glob("images*/*_0000.nii.gz")))
    assert add_low_signal_rim(raw / name) == 2 * n_images  # T1 and T2 of every case
    (pre / name).mkdir(parents=True)
    for f in ("nnUNetPlans.json", "dataset.json", "dataset_fingerprint.json", "splits_final.json"):
        shutil.copy(nnunet_env.preprocessed / name / f, pre / name / f)
    shutil.copytree(model, res / name / model.name)
    env = NnunetEnv(root, raw, pre, res, nnunet_env.brats_source, env=nnunet_subprocess_env(raw, pre, res))
    env.run(str(BIN / "nnUNetv2_preprocess"), "-d", str(env.dataset_id), "-c", "3d_fullres", "-np", "1")
    return env


def validate(env: NnunetEnv, *extra: str, check: bool = True):
    return env.run(str(BIN / "nnUNetv2_train"), str(env.dataset_id), "3d_fullres", "0", "-tr", KD, "-device", "cpu",
                   "--val", *extra, check=check)


def student_inputs_differ(env: NnunetEnv, case: str) -> bool:
    """Whether nnU-Net's 4-channel preprocessed student channels differ from preprocessing the 2 files alone."""
    from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    model = env.model_folder(KD)
    plans = PlansManager(json.loads((model / "plans.json").read_text()))
    files = [str(env.dataset_raw / "imagesTr" / f"{case}{s}.nii.gz") for s in STUDENT_SUFFIXES]
    alone, _, _ = DefaultPreprocessor(verbose=False).run_case(files, None, plans, plans.get_configuration("3d_fullres"),
                                                              json.loads((model / "dataset.json").read_text()))
    folder = env.preprocessed / env.dataset_name / "nnUNetPlans_3d_fullres"
    four, _, _, _ = infer_dataset_class(str(folder))(str(folder), [case]).load_case(case)
    four = np.asarray(four[:])[[1, 3]]
    return four.shape != alone.shape or not np.array_equal(four, alone)


@pytest.mark.slow
def test_final_validation_is_voxel_identical_to_stock_predict(rim_env: NnunetEnv, tmp_path: Path):
    validate(rim_env, "--npz")
    validation = rim_env.model_folder(KD) / "fold_0" / "validation"
    case = sorted(p.name[: -len(".nii.gz")] for p in validation.glob("*.nii.gz"))[0]
    assert student_inputs_differ(rim_env, case)  # the old validation (preprocessed arrays) saw other inputs

    images = tmp_path / "student_files"
    images.mkdir()
    for s in STUDENT_SUFFIXES:
        shutil.copy(rim_env.dataset_raw / "imagesTr" / f"{case}{s}.nii.gz", images)
    out = tmp_path / "pred"
    rim_env.run(str(BIN / "nnUNetv2_predict"), "-i", str(images), "-o", str(out), "-d", str(rim_env.dataset_id),
                "-c", "3d_fullres", "-f", "0", "-tr", KD, "-device", "cpu", "-npp", "1", "-nps", "1",
                "--save_probabilities")
    ours = sitk.GetArrayFromImage(sitk.ReadImage(str(validation / f"{case}.nii.gz")))
    stock = sitk.GetArrayFromImage(sitk.ReadImage(str(out / f"{case}.nii.gz")))
    assert np.array_equal(ours, stock)
    p_ours = np.load(validation / f"{case}.npz")["probabilities"]
    p_stock = np.load(out / f"{case}.npz")["probabilities"]
    assert p_ours.shape == p_stock.shape and np.array_equal(p_ours, p_stock)
    summary = json.loads((validation / "summary.json").read_text())
    assert str(validation / f"{case}.nii.gz") in {c["prediction_file"] for c in summary["metric_per_case"]}


@pytest.mark.slow
def test_missing_raw_student_file_is_refused_and_leaves_validation(rim_env: NnunetEnv):
    validation = rim_env.model_folder(KD) / "fold_0" / "validation"
    before = sorted(p.name for p in validation.iterdir()) if validation.is_dir() else None
    splits = json.loads((rim_env.preprocessed / rim_env.dataset_name / "splits_final.json").read_text())
    case = sorted(splits[0]["val"])[0]
    missing = rim_env.dataset_raw / "imagesTr" / f"{case}_0003.nii.gz"
    aside = missing.with_name("aside.nii.gz.bak")
    missing.rename(aside)
    try:
        proc = validate(rim_env, check=False)
    finally:
        aside.rename(missing)
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.startswith("nnunet_kd.errors.InputDataError: ")]
    assert len(lines) == 1 and case in lines[0] and str(missing) in lines[0] and "--val" in lines[0]
    after = sorted(p.name for p in validation.iterdir()) if validation.is_dir() else None
    assert after == before
    assert not [p for p in validation.parent.iterdir() if "nnunet-kd-tmp" in p.name]


def test_cascade_configuration_is_refused():
    from nnunet_kd.errors import ConfigurationError
    from nnunet_kd.trainers.deployment_validation import refuse_cascade_validation

    trainer = SimpleNamespace(configuration_manager=SimpleNamespace(previous_stage_name="3d_lowres"),
                              configuration_name="3d_cascade_fullres")
    with pytest.raises(ConfigurationError, match="cascade stage .* 3d_lowres"):
        refuse_cascade_validation(trainer)
    refuse_cascade_validation(SimpleNamespace(configuration_manager=SimpleNamespace(previous_stage_name=None),
                                   configuration_name="3d_fullres"))
