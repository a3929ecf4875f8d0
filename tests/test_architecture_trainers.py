"""The seed-001 architecture trainers through nnU-Net's own entry points (CPU, tiny synthetic dataset)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from conftest import BIN, NnunetEnv, random_batch

pytestmark = pytest.mark.slow

SMOKE_TRAINERS = ("nnUNetTrainerUNet_smoke", "nnUNetTrainerResidualUNet_VAE_smoke", "nnUNetTrainerCascadedUNet_smoke")




def managers(env: NnunetEnv):
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    pre = env.preprocessed / env.dataset_name
    plans = PlansManager(json.loads((pre / "nnUNetPlans.json").read_text()))
    dataset_json = json.loads((pre / "dataset.json").read_text())
    return plans, plans.get_configuration("3d_fullres"), dataset_json


@pytest.fixture(autouse=True)
def _one_thread():
    """In-process forward passes: single-threaded is fastest on a shared CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module", params=SMOKE_TRAINERS)
def trained(request, nnunet_env: NnunetEnv) -> tuple[str, Path]:
    return request.param, nnunet_env.ensure_trained(request.param)


@pytest.mark.parametrize("name", ["nnUNetTrainerUNet", "nnUNetTrainerResidualUNet", "nnUNetTrainerResidualUNet_VAE",
                                  "nnUNetTrainerCascadedUNet", "nnUNetTrainerModalityEncoderUNet"])
def test_networks_follow_the_plans_and_nnunet_deep_supervision_scales(nnunet_env: NnunetEnv, name: str):
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    from nnunet_kd.trainers import architectures

    plans, config, dataset_json = managers(nnunet_env)
    trainer_cls = getattr(architectures, name)
    n_out = plans.get_label_manager(dataset_json).num_segmentation_heads
    assert n_out == 3  # WT, TC, ET regions from dataset.json
    net = trainer_cls.build_network_architecture(plans, config, 4, n_out, enable_deep_supervision=True)
    # the scales nnU-Net's loss wrapper and data loader use, computed by nnU-Net itself
    scales = nnUNetTrainer._get_deep_supervision_scales(
        SimpleNamespace(enable_deep_supervision=True, configuration_manager=config))
    patch = config.patch_size
    net.train()
    outputs = net(torch.randn(1, 4, *patch))
    assert len(outputs) == len(scales)
    for out, scale in zip(outputs, scales):
        assert tuple(out.shape[2:]) == tuple(int(round(p * s)) for p, s in zip(patch, scale))
    inference = trainer_cls.build_network_architecture(plans, config, 4, n_out, enable_deep_supervision=False)
    inference.load_state_dict(net.state_dict())  # strict: what nnUNetv2_predict does with a checkpoint
    inference.eval()
    with torch.no_grad():
        assert tuple(inference(torch.randn(1, 4, *patch)).shape) == (1, 3, *patch)


def test_cascaded_smoke_trainer_steps_train_every_cascade_member(nnunet_env: NnunetEnv, monkeypatch):
    """Two nnU-Net train steps (deep-supervision loss over the cascade's outputs) update all three U-Nets."""
    from nnunet_kd.networks.cascaded_unet import CascadedUNet

    trainer = nnunet_env.make_trainer("nnUNetTrainerCascadedUNet_smoke", monkeypatch)
    trainer.initialize()
    net = trainer.network
    assert isinstance(net, CascadedUNet) and net.levels == 2
    assert len(trainer._get_deep_supervision_scales()) == net.spec.n_stages - 1
    watched = {"full": net.encoder.stem.weight, "level 1": net.coarse[0].encoder.stem.weight,
               "level 2": net.coarse[1].encoder.stem.weight}
    before = {k: v.detach().clone() for k, v in watched.items()}
    losses = [float(trainer.train_step(random_batch(trainer, seed))["loss"]) for seed in (0, 1)]
    assert all(np.isfinite(loss) for loss in losses)
    for name, weight in watched.items():
        assert not torch.equal(before[name], weight.detach()), f"{name} U-Net was not trained"


def test_training_runs_through_nnunetv2_train(trained: tuple[str, Path]):
    trainer, folder = trained
    fold = folder / "fold_0"
    assert (fold / "checkpoint_final.pth").is_file()
    summary = json.loads((fold / "validation" / "summary.json").read_text())
    assert len(summary["mean"]) == 3 and "(1, 2, 3)" in summary["mean"]  # validated on the WT/TC/ET regions
    checkpoint = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert checkpoint["trainer_name"] == trainer
    logs = "".join(p.read_text() for p in fold.glob("training_log_*.txt"))
    assert ("VAE loss" in logs) == ("VAE" in trainer)
    if "VAE" in trainer:
        assert any(k.startswith("vae.") for k in checkpoint["network_weights"])


def test_nnunetv2_predict_from_checkpoint(trained: tuple[str, Path], nnunet_env: NnunetEnv, tmp_path: Path):
    trainer, _ = trained
    images = nnunet_env.dataset_raw / "imagesTs"
    out = tmp_path / "pred"
    nnunet_env.run(str(BIN / "nnUNetv2_predict"), "-i", str(images), "-o", str(out), "-d",
                   str(nnunet_env.dataset_id), "-c", "3d_fullres", "-f", "0", "-tr", trainer, "-device", "cpu",
                   "-npp", "1", "-nps", "1")
    cases = sorted(p.name[: -len("_0000.nii.gz")] for p in images.glob("*_0000.nii.gz"))
    assert cases
    for case in cases:
        seg = sitk.ReadImage(str(out / f"{case}.nii.gz"))
        image = sitk.ReadImage(str(images / f"{case}_0000.nii.gz"))
        assert seg.GetSize() == image.GetSize()
        assert set(np.unique(sitk.GetArrayFromImage(seg)).tolist()) <= {0, 1, 2, 3}
