"""nnUNetTrainerBarlowKD through nnU-Net's own commands on a tiny synthetic dataset (CPU)."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from conftest import BIN, NnunetEnv, random_batch

pytestmark = pytest.mark.slow

KD = "nnUNetTrainerBarlowKD_smoke"
STUDENT_FIRST_CONV = "encoder.stages.0.0.convs.0.conv.weight"


def train(env: NnunetEnv, trainer: str, *extra: str, check: bool = True, fold: str = "0") -> subprocess.CompletedProcess:
    return env.run(str(BIN / "nnUNetv2_train"), str(env.dataset_id), "3d_fullres", fold, "-tr", trainer,
                   "-device", "cpu", *extra, check=check)


def predict(env: NnunetEnv, images: Path, out: Path, trainer: str, check: bool = True) -> subprocess.CompletedProcess:
    return env.run(str(BIN / "nnUNetv2_predict"), "-i", str(images), "-o", str(out), "-d", str(env.dataset_id),
                   "-c", "3d_fullres", "-f", "0", "-tr", trainer, "-device", "cpu", "-npp", "1", "-nps", "1",
                   check=check)


def copy_channels(env: NnunetEnv, dest: Path, suffixes: tuple[str, ...]) -> list[str]:
    dest.mkdir(parents=True, exist_ok=True)
    cases = sorted({p.name[: -len("_0000.nii.gz")] for p in (env.dataset_raw / "imagesTs").glob("*_0000.nii.gz")})
    for case in cases:
        for s in suffixes:
            shutil.copy(env.dataset_raw / "imagesTs" / f"{case}{s}.nii.gz", dest)
    return cases


@pytest.fixture(scope="module")
def kd_run(nnunet_env: NnunetEnv) -> Path:
    return nnunet_env.ensure_trained(KD)  # shared with test_deployment_validation.py


def test_kd_training_writes_student_model_folder(kd_run: Path):
    dataset_json = json.loads((kd_run / "dataset.json").read_text())
    assert dataset_json["channel_names"] == {"0": "T1ce", "1": "FLAIR"}
    assert dataset_json["nnunet_kd"]["student"]["file_suffixes"] == ["_0001", "_0003"]
    plans = json.loads((kd_run / "plans.json").read_text())
    assert plans["nnunet_kd"]["student"]["channel_indices"] == [1, 3]
    fold = kd_run / "fold_0"
    for name in ("checkpoint_final.pth", "progress.png", "progress_kd.png", "validation/summary.json"):
        assert (fold / name).is_file(), name
    assert not (fold / "checkpoint_latest.pth").exists()


def barlow_upper_bound() -> float:
    """Largest Barlow Twins term of the KD trainer: |C_ij| <= 1 for standardised features, so the loss divided by D
    is at most 4 + lambda_off * (D - 1) (a loss not divided by D, or a correlation not normalised, exceeds it)."""
    from nnunet_kd.trainers.barlow_kd import nnUNetTrainerBarlowKD

    return 4 + nnUNetTrainerBarlowKD.barlow_off_diagonal_weight * (nnUNetTrainerBarlowKD.projector_dim - 1)


def test_checkpoint_holds_two_channel_student_and_four_channel_teacher(kd_run: Path):
    ckpt = torch.load(kd_run / "fold_0" / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert ckpt["trainer_name"] == KD
    assert ckpt["network_weights"][STUDENT_FIRST_CONV].shape[1] == 2
    kd = ckpt["nnunet_kd"]
    assert kd["kd_modules"][f"teacher.{STUDENT_FIRST_CONV}"].shape[1] == 4
    assert any(k.startswith("student_projector.") for k in kd["kd_modules"])
    assert len(kd["teacher_dataset_json"]["channel_names"]) == 4
    logging = ckpt["logging"]
    assert len(logging["teacher_mean_fg_dice"]) == len(logging["mean_fg_dice"]) == 2
    assert all(0 < v <= barlow_upper_bound() for v in logging["barlow_loss"])
    # nnU-Net's train_losses ("loss" in progress.png) is the student's DS loss; the KD total has its own key
    assert logging["train_losses"] == pytest.approx(logging["student_seg_loss"])
    assert len(logging["kd_total_loss"]) == 2
    assert all(t > s for t, s in zip(logging["kd_total_loss"], logging["student_seg_loss"]))
    # the optimizer steps teacher and projectors too: a second parameter group with momentum state
    assert len(ckpt["optimizer_state"]["param_groups"]) == 2


def test_final_validation_is_the_students_limited_modality_dice(nnunet_env: NnunetEnv, kd_run: Path):
    log = next((kd_run / "fold_0").glob("training_log_*.txt")).read_text()
    assert "final validation of the student from its raw files (T1ce (_0001), FLAIR (_0003))" in log
    assert "_0001.nii.gz, " in log and "_0000.nii.gz" not in log  # the student's 2 files per validation case
    assert "Teacher pseudo dice" in log
    validation = kd_run / "fold_0" / "validation"
    summary = json.loads((validation / "summary.json").read_text())
    # the reported Dice is that of the written validation predictions: recomputed with numpy against nnU-Net's
    # ground truth (per region Dice, NaN when both are empty; mean over cases ignoring NaN, then over regions)
    regions = [v if isinstance(v, list) else [v] for k, v in json.loads((kd_run / "dataset.json").read_text())
               ["labels"].items() if k != "background"]
    gt_dir = nnunet_env.preprocessed / nnunet_env.dataset_name / "gt_segmentations"
    preds = sorted(validation.glob("*.nii.gz"))
    assert len(preds) == len(summary["metric_per_case"]) > 0
    dice: list[list[float]] = [[] for _ in regions]
    for pred_file in preds:
        pred = sitk.GetArrayFromImage(sitk.ReadImage(str(pred_file)))
        gt = sitk.GetArrayFromImage(sitk.ReadImage(str(gt_dir / pred_file.name)))
        for i, region in enumerate(regions):
            p, g = np.isin(pred, region), np.isin(gt, region)
            total = int(p.sum()) + int(g.sum())
            dice[i].append(2 * int((p & g).sum()) / total if total else np.nan)
    expected = float(np.mean([np.nanmean(d) for d in dice]))
    assert summary["foreground_mean"]["Dice"] == pytest.approx(expected, abs=1e-6)


def test_stock_predict_with_flair_and_t1ce_only(nnunet_env: NnunetEnv, kd_run: Path, tmp_path: Path):
    images = tmp_path / "flair_t1ce"
    cases = copy_channels(nnunet_env, images, ("_0001", "_0003"))
    out = tmp_path / "pred"
    predict(nnunet_env, images, out, KD)
    for case in cases:
        pred = sitk.ReadImage(str(out / f"{case}.nii.gz"))
        ref = sitk.ReadImage(str(images / f"{case}_0001.nii.gz"))
        assert set(np.unique(sitk.GetArrayFromImage(pred))) <= {0, 1, 2, 3}
        assert pred.GetSize() == ref.GetSize()
        assert np.allclose(pred.GetSpacing(), ref.GetSpacing())
        assert np.allclose(pred.GetOrigin(), ref.GetOrigin())
        assert np.allclose(pred.GetDirection(), ref.GetDirection())


def test_predict_with_four_files_gives_a_clear_error(nnunet_env: NnunetEnv, kd_run: Path, tmp_path: Path):
    images = tmp_path / "all_four"
    copy_channels(nnunet_env, images, ("_0000", "_0001", "_0002", "_0003"))
    proc = predict(nnunet_env, images, tmp_path / "pred", KD, check=False)
    assert proc.returncode != 0
    assert "expects 2 input file(s) per case: T1ce (_0001), FLAIR (_0003); the case had 4" in proc.stderr
    assert "IndexError" not in proc.stderr


def test_validation_only_rerun_with_best_checkpoint(nnunet_env: NnunetEnv, kd_run: Path):
    summary = kd_run / "fold_0" / "validation" / "summary.json"
    summary.unlink()
    proc = train(nnunet_env, KD, "--val", "--val_best")
    assert summary.is_file()
    assert "WARNING: checkpoint has no teacher" not in proc.stdout  # teacher state restored with the student


def test_export_teacher_predicts_with_four_files(nnunet_env: NnunetEnv, kd_run: Path, tmp_path: Path):
    proc = nnunet_env.run(str(BIN / "nnunet-kd"), "export-teacher", "-d", str(nnunet_env.dataset_id), "-tr", KD)
    teacher_folder = nnunet_env.model_folder(f"{KD}_teacher")
    assert str(teacher_folder) in proc.stdout
    assert len(json.loads((teacher_folder / "dataset.json").read_text())["channel_names"]) == 4
    images = tmp_path / "all_four"
    cases = copy_channels(nnunet_env, images, ("_0000", "_0001", "_0002", "_0003"))
    out = tmp_path / "pred"
    predict(nnunet_env, images, out, f"{KD}_teacher")
    assert all((out / f"{c}.nii.gz").is_file() for c in cases)
    again = nnunet_env.run(str(BIN / "nnunet-kd"), "export-teacher", "-d", str(nnunet_env.dataset_id), "-tr", KD,
                           check=False)
    assert again.returncode == 2 and "--overwrite" in again.stderr


def test_export_teacher_refuses_student_only_run(nnunet_env: NnunetEnv):
    trainer = "nnUNetTrainerStudentOnly_smoke"
    train(nnunet_env, trainer)
    folder = nnunet_env.model_folder(trainer)
    ckpt = torch.load(folder / "fold_0" / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert "nnunet_kd" not in ckpt
    assert ckpt["network_weights"][STUDENT_FIRST_CONV].shape[1] == 2
    assert json.loads((folder / "dataset.json").read_text())["channel_names"] == {"0": "T1ce", "1": "FLAIR"}
    proc = nnunet_env.run(str(BIN / "nnunet-kd"), "export-teacher", str(folder), check=False)
    assert proc.returncode == 2 and "holds no teacher" in proc.stderr


def assert_same_state(restored, saved, what: str) -> None:
    """Nested state dicts / lists of tensors and numbers are equal."""
    if isinstance(saved, dict):
        assert restored.keys() == saved.keys(), what
        for key in saved:
            assert_same_state(restored[key], saved[key], f"{what}.{key}")
    elif isinstance(saved, (list, tuple)):
        assert len(restored) == len(saved), what
        for i, (a, b) in enumerate(zip(restored, saved)):
            assert_same_state(a, b, f"{what}[{i}]")
    elif isinstance(saved, torch.Tensor):
        assert torch.equal(restored.cpu(), saved), what
    else:
        assert restored == saved, what


def test_killed_run_resumes_with_continue_restoring_every_part(nnunet_env: NnunetEnv, tmp_path: Path, monkeypatch):
    from nnunetv2.run.run_training import maybe_load_checkpoint

    trainer = "nnUNetTrainerBarlowKD_T1Flair_smoke"
    log = tmp_path / "train.log"
    with log.open("w") as fh:
        proc = subprocess.Popen([str(BIN / "nnUNetv2_train"), str(nnunet_env.dataset_id), "3d_fullres", "0", "-tr",
                                 trainer, "-device", "cpu"], env=nnunet_env.env, stdout=fh, stderr=subprocess.STDOUT,
                                start_new_session=True)
        deadline = time.time() + 600
        # "Epoch 1" is printed after epoch 0's checkpoints were saved: the kill lands mid-epoch 1
        while "Epoch 1" not in log.read_text() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.2)
        assert proc.poll() is None, "training ended before it could be interrupted:\n" + log.read_text()[-3000:]
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    fold = nnunet_env.model_folder(trainer) / "fold_0"
    latest = torch.load(fold / "checkpoint_latest.pth", map_location="cpu", weights_only=False)
    assert latest["current_epoch"] == 1 and "nnunet_kd" in latest
    assert not (fold / "checkpoint_final.pth").exists()
    assert not list(fold.glob("*.tmp-*"))  # each checkpoint was written once, atomically

    # --c's own loading path (nnU-Net's maybe_load_checkpoint), in this process: everything equals the saved state
    restored = nnunet_env.make_trainer(trainer, monkeypatch)
    maybe_load_checkpoint(restored, continue_training=True, validation_only=False)
    assert_same_state(restored.network.state_dict(), latest["network_weights"], "student")
    assert_same_state(restored.kd_modules.state_dict(), latest["nnunet_kd"]["kd_modules"], "teacher+projectors")
    assert any(k.startswith("teacher.") for k in latest["nnunet_kd"]["kd_modules"])
    assert any(k.startswith("teacher_projector.") for k in latest["nnunet_kd"]["kd_modules"])
    assert_same_state(restored.optimizer.state_dict(), latest["optimizer_state"], "optimizer")
    assert len(latest["optimizer_state"]["param_groups"]) == 2  # student, teacher + projectors

    # a KD checkpoint without the KD state (as an interrupted old-style save left it): --c stops with one line
    broken = nnunet_env.model_folder(trainer) / "fold_1"
    broken.mkdir()
    stripped = {k: v for k, v in latest.items() if k != "nnunet_kd"}
    torch.save(stripped, broken / "checkpoint_latest.pth")
    refused = train(nnunet_env, trainer, "--c", check=False, fold="1")
    assert refused.returncode != 0
    assert refused.stderr.strip().splitlines()[-1].startswith(
        f"nnunet_kd.errors.ConfigurationError: {broken / 'checkpoint_latest.pth'} has no teacher/projector state")
    assert sorted(p.name for p in broken.iterdir() if p.suffix == ".pth") == ["checkpoint_latest.pth"]
    shutil.rmtree(broken)

    resumed = train(nnunet_env, trainer, "--c")
    assert "WARNING" not in resumed.stdout + resumed.stderr
    assert "Epoch 1" in resumed.stdout and "Epoch 0\n" not in resumed.stdout
    final = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert final["current_epoch"] == 2
    assert len(final["logging"]["teacher_mean_fg_dice"]) == 2
    assert json.loads((fold.parent / "dataset.json").read_text())["channel_names"] == {"0": "T1", "1": "FLAIR"}
    assert json.loads((fold.parent / "plans.json").read_text())["nnunet_kd"]["student"]["channel_indices"] == [0, 3]


def test_train_step_feeds_subset_to_student_and_updates_all_parts(nnunet_env: NnunetEnv, monkeypatch):
    trainer = nnunet_env.make_trainer("nnUNetTrainerBarlowKD_T1ceFlair", monkeypatch)
    trainer.initialize()
    batch = random_batch(trainer)
    data = batch["data"]
    seen = {}
    trainer.network.register_forward_pre_hook(lambda m, a: seen.__setitem__("student", a[0].clone()))
    teacher = trainer.kd_modules["teacher"]
    teacher.register_forward_pre_hook(lambda m, a: seen.__setitem__("teacher", a[0].clone()))
    watched = {"student": trainer.network.encoder.stages[0][0].convs[0].conv.weight,
               "teacher": teacher.encoder.stages[0][0].convs[0].conv.weight,
               "student_projector": trainer.kd_modules["student_projector"][0].weight,
               "teacher_projector": trainer.kd_modules["teacher_projector"][0].weight}
    before = {k: v.detach().clone() for k, v in watched.items()}

    out = trainer.train_step(batch)

    assert torch.equal(seen["student"], data[:, [1, 3]])
    assert torch.equal(seen["teacher"], data)
    assert set(out) == {"loss", "kd_total_loss", "student_seg_loss", "teacher_seg_loss", "barlow_loss"}
    expected = out["student_seg_loss"] + out["teacher_seg_loss"] + trainer.barlow_weight * out["barlow_loss"]
    assert out["kd_total_loss"] == pytest.approx(expected, rel=1e-5)
    assert float(out["loss"]) == out["student_seg_loss"]
    for name, param in watched.items():
        assert not torch.equal(param.detach(), before[name]), f"{name} was not updated"
    # under CUDA autocast the bottlenecks arrive in half precision; the fp32 projectors must accept them
    latent = torch.randn(2, trainer.kd_modules["student_projector"][0].in_channels, 3, 3, 3)
    terms = trainer.distillation_terms(None, None, latent.half(), latent.bfloat16())
    reference = trainer.distillation_terms(None, None, latent.half().float(), latent.bfloat16().float())
    assert terms["barlow_loss"].dtype == torch.float32
    assert float(terms["barlow_loss"]) == pytest.approx(float(reference["barlow_loss"]), rel=1e-5)  # same values


def test_find_best_configuration_works_on_the_student(nnunet_env: NnunetEnv, kd_run: Path):
    proc = nnunet_env.run(str(BIN / "nnUNetv2_find_best_configuration"), str(nnunet_env.dataset_id), "-c",
                          "3d_fullres", "-tr", KD, "-f", "0", "-np", "1")
    assert f"-tr {KD} -c 3d_fullres" in proc.stdout
    crossval = kd_run / "crossval_results_folds_0"
    assert (crossval / "postprocessing.pkl").is_file()
    # the plans it hands to postprocessing are the student's reduced plans
    assert json.loads((crossval / "plans.json").read_text())["nnunet_kd"]["student"]["channel_indices"] == [1, 3]
