"""A model trained with an earlier layout of our networks (before the 2026-12-03 architecture change) stops
nnU-Net's own prediction with one line saying so, instead of PyTorch's list of missing and unexpected keys."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from conftest import BIN, NnunetEnv
from nnunet_kd.networks.common import UNetSpec
from nnunet_kd.networks.modality_encoder_unet import ModalityEncoderUNet


def test_nnunetv2_predict_refuses_a_cascaded_unet_checkpoint_of_the_earlier_layout(nnunet_env: NnunetEnv,
                                                                                  tmp_path: Path):
    pre = nnunet_env.preprocessed / nnunet_env.dataset_name
    plans = json.loads((pre / "nnUNetPlans.json").read_text())
    model = tmp_path / "nnUNetTrainerCascadedUNet__nnUNetPlans__3d_fullres"
    (model / "fold_0").mkdir(parents=True)
    shutil.copy(pre / "nnUNetPlans.json", model / "plans.json")
    shutil.copy(pre / "dataset.json", model / "dataset.json")
    # the earlier CascadedUNet was the per-modality-encoder network, today's ModalityEncoderUNet: a real state dict
    spec = UNetSpec.from_arch_kwargs(plans["configurations"]["3d_fullres"]["patch_size"],
                                     plans["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"])
    torch.save({"network_weights": ModalityEncoderUNet(spec, 4, 3, False).state_dict(),
                "trainer_name": "nnUNetTrainerCascadedUNet", "init_args": {"configuration": "3d_fullres"},
                "inference_allowed_mirroring_axes": (0, 1, 2)}, model / "fold_0" / "checkpoint_final.pth")
    cases = tmp_path / "in"
    cases.mkdir()
    for f in sorted((nnunet_env.dataset_raw / "imagesTr").glob("*_000?.nii.gz"))[:4]:
        shutil.copy(f, cases / f.name)
    out = tmp_path / "out"
    proc = nnunet_env.run(str(BIN / "nnUNetv2_predict_from_modelfolder"), "-i", str(cases), "-o", str(out),
                          "-m", str(model), "-f", "0", "-device", "cpu", check=False)
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert "earlier architecture" in last and "nnUNetTrainerModalityEncoderUNet" in last and "retrain" in last, last
    assert "Missing key" not in proc.stderr and "Unexpected key" not in proc.stderr
    assert not out.exists() or not list(out.glob("*.nii.gz"))  # nothing predicted
