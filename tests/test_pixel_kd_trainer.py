"""Pixel-KD trainers: nnUNetTrainerBarlowKD_PixelKD (BT + pixel KD) and nnUNetTrainerPixelKD (pixel KD only), CPU."""

from __future__ import annotations

import json

import pytest
import torch
from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
from test_kd_trainer import barlow_upper_bound

from conftest import BIN, NnunetEnv, random_batch
from nnunet_kd.losses.pixel_kd import PixelKDLoss

pytestmark = pytest.mark.slow


def test_nnunetv2_train_barlow_and_pixel_kd_smoke(nnunet_env: NnunetEnv):
    trainer = "nnUNetTrainerBarlowKD_PixelKD_smoke"
    nnunet_env.run(str(BIN / "nnUNetv2_train"), str(nnunet_env.dataset_id), "3d_fullres", "0", "-tr", trainer,
                   "-device", "cpu")
    folder = nnunet_env.model_folder(trainer)
    ckpt = torch.load(folder / "fold_0" / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    logging = ckpt["logging"]
    assert len(logging["pixel_kd_loss"]) == len(logging["barlow_loss"]) == 2
    assert all(v > 0 for v in logging["pixel_kd_loss"])  # a KL divergence of different outputs
    assert all(0 < v <= barlow_upper_bound() for v in logging["barlow_loss"])
    assert any(k.startswith("student_projector.") for k in ckpt["nnunet_kd"]["kd_modules"])
    assert json.loads((folder / "dataset.json").read_text())["channel_names"] == {"0": "T1ce", "1": "FLAIR"}
    assert (folder / "fold_0" / "validation" / "summary.json").is_file()


def test_pixel_kd_only_train_step(nnunet_env: NnunetEnv, monkeypatch):
    trainer = nnunet_env.make_trainer("nnUNetTrainerPixelKD", monkeypatch)
    trainer.initialize()
    assert set(trainer.kd_modules) == {"teacher"}  # no Barlow Twins projectors
    assert trainer.loss_weights() == {"student_seg_loss": 1.0, "teacher_seg_loss": 1.0,
                                      "pixel_kd_loss": trainer.pixel_kd_weight}
    batch = random_batch(trainer)
    outputs = {}

    def keep(name):
        return lambda module, args, out: outputs.__setitem__(name, [o.detach().clone() for o in out])

    trainer.network.register_forward_hook(keep("student"))
    trainer.kd_modules["teacher"].register_forward_hook(keep("teacher"))

    out = trainer.train_step(batch)

    assert set(out) == {"loss", "kd_total_loss", "student_seg_loss", "teacher_seg_loss", "pixel_kd_loss"}
    assert out["kd_total_loss"] == pytest.approx(out["student_seg_loss"] + out["teacher_seg_loss"] +
                                               trainer.pixel_kd_weight * out["pixel_kd_loss"], rel=1e-5)
    # every deep-supervision scale, weighted like nnU-Net's segmentation loss, sigmoid outputs at temperature T
    weights = trainer.loss.weight_factors
    assert len(outputs["student"]) == len(weights) > 1
    expected = DeepSupervisionWrapper(PixelKDLoss("sigmoid", trainer.pixel_kd_temperature), weights)(
        outputs["student"], outputs["teacher"])
    assert out["pixel_kd_loss"] == pytest.approx(expected.item(), rel=1e-5)
