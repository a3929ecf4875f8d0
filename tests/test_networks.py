"""Shape and behaviour tests of the seed-001 networks (Isensee U-Net, Myronenko residual U-Net, cascaded U-Net)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from nnunet_kd.networks.cascaded_unet import CascadedUNet, per_modality_features
from nnunet_kd.networks.common import GroupNorm, UNetSpec, count_parameters, spec_for_patch
from nnunet_kd.networks.residual_unet import ResidualUNet, myronenko_blocks, vae_loss
from nnunet_kd.networks.unet import IsenseeUNet

ARCHITECTURES = {
    "unet": lambda spec, c, k, ds: IsenseeUNet(spec, c, k, ds),
    "residual": lambda spec, c, k, ds: ResidualUNet(spec, c, k, ds),
    "residual_vae": lambda spec, c, k, ds: ResidualUNet(spec, c, k, ds, vae=True),
    "cascaded": lambda spec, c, k, ds: CascadedUNet(spec, c, k, ds),
}


def tiny_spec(patch, spacing=None) -> UNetSpec:
    """nnU-Net's planned topology for ``patch`` with narrow stages (8, 16, 32, ...) to keep CPU tests fast."""
    spec = spec_for_patch(patch, spacing)
    return dataclasses.replace(spec, features_per_stage=tuple(min(8 * 2 ** i, 48) for i in range(spec.n_stages)))


def nnunet_ds_scales(spec: UNetSpec) -> list[list[float]]:
    """The deep-supervision scales nnUNetTrainer._get_deep_supervision_scales derives from the same strides."""
    return [list(i) for i in 1 / np.cumprod(np.vstack(spec.strides), axis=0)][:-1]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny 3D convs run fastest single-threaded on a shared CPU (no thread oversubscription)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
@pytest.mark.parametrize("patch,spacing", [((32, 32, 32), None), ((16, 32, 24), (2.5, 1.0, 1.0))])
def test_forward_backward_deep_supervision_shapes(arch, patch, spacing):
    spec = tiny_spec(patch, spacing)
    net = ARCHITECTURES[arch](spec, 4, 3, True)
    net.train()
    x = torch.randn(1, 4, *spec.patch_size)
    outputs = net(x)
    scales = nnunet_ds_scales(spec)
    assert isinstance(outputs, list) and len(outputs) == len(scales) == spec.n_stages - 1
    for out, scale in zip(outputs, scales):
        expected = tuple(int(round(p * s)) for p, s in zip(spec.patch_size, scale))
        assert tuple(out.shape) == (1, 3, *expected)
    loss = sum(o.float().pow(2).mean() for o in outputs)
    aux = net.pop_auxiliary_loss() if isinstance(net, ResidualUNet) else None
    if aux is not None:
        loss = loss + aux
    loss.backward()
    first_conv = next(m for m in net.modules() if isinstance(m, torch.nn.Conv3d))
    assert first_conv.weight.grad is not None and first_conv.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_without_deep_supervision_returns_one_full_resolution_tensor(arch):
    spec = tiny_spec((32, 32, 32))
    net = ARCHITECTURES[arch](spec, 4, 3, False).eval()
    with torch.no_grad():
        out = net(torch.randn(1, 4, 32, 32, 32))
        assert isinstance(out, torch.Tensor) and tuple(out.shape) == (1, 3, 32, 32, 32)
        net.decoder.deep_supervision = True  # what nnUNetTrainer.set_deep_supervision_enabled toggles
        assert isinstance(net(torch.randn(1, 4, 32, 32, 32)), list)


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_other_input_size_than_planned_patch(arch):
    """Sliding-window inference feeds patches of the planned size, but the networks are fully convolutional."""
    spec = tiny_spec((32, 32, 32))
    net = ARCHITECTURES[arch](spec, 4, 3, False)
    net.train()
    out = net(torch.randn(1, 4, 24, 32, 16))
    assert tuple(out.shape) == (1, 3, 24, 32, 16)


def test_parameter_counts_and_residual_unet_is_encoder_heavy(capsys):
    spec = tiny_spec((32, 32, 32))
    counts = {name: count_parameters(build(spec, 4, 3, True)) for name, build in ARCHITECTURES.items()}
    with capsys.disabled():
        print("\nparameters at patch 32^3, stages", spec.features_per_stage, counts)
    assert all(c > 0 for c in counts.values())
    assert counts["residual_vae"] > counts["residual"]
    net = ResidualUNet(spec, 4, 3)
    encoder = count_parameters(net.encoder)
    assert encoder > count_parameters(net.decoder)
    assert [len(stage) for stage in (s.blocks for s in net.encoder.stages)] == list(myronenko_blocks(spec.n_stages))
    assert myronenko_blocks(4) == (1, 2, 2, 4) and myronenko_blocks(6) == (1, 2, 2, 2, 2, 4)


def test_residual_unet_uses_groupnorm_and_cascaded_uses_instancenorm():
    spec = tiny_spec((32, 32, 32))
    res = ResidualUNet(spec, 4, 3)
    assert any(isinstance(m, GroupNorm) for m in res.modules())
    assert not any(isinstance(m, torch.nn.InstanceNorm3d) for m in res.modules())
    assert any(isinstance(m, torch.nn.ReLU) for m in res.modules())
    cas = CascadedUNet(spec, 4, 3)
    assert any(isinstance(m, torch.nn.InstanceNorm3d) for m in cas.modules())
    assert not any(isinstance(m, torch.nn.LeakyReLU) for m in cas.modules())
    unet = IsenseeUNet(spec, 4, 3)
    assert any(isinstance(m, torch.nn.LeakyReLU) for m in unet.modules())
    assert not any(isinstance(m, torch.nn.ConvTranspose3d) for m in unet.modules())  # trilinear upsampling


def test_groupnorm_reduces_groups_to_a_divisor():
    assert GroupNorm(4).num_groups == 4
    assert GroupNorm(48).num_groups == 8
    assert GroupNorm(12, num_groups=8).num_groups == 4


def test_vae_loss_hand_computation():
    image = torch.zeros(2, 4, 4, 4, 4)
    recon = torch.ones(2, 4, 4, 4, 4)
    mu, logvar = torch.zeros(2, 8), torch.zeros(2, 8)
    total, l2, kl = vae_loss(image, recon, mu, logvar, 0.1, 0.1)
    assert float(l2) == pytest.approx(1.0) and float(kl) == pytest.approx(0.0)
    assert float(total) == pytest.approx(0.1)
    mu = torch.ones(2, 8)  # KL = sum(mu^2) / (batch * voxels) = 16 / 128
    _, _, kl = vae_loss(image, image, mu, logvar)
    assert float(kl) == pytest.approx(16 / 128)


def test_vae_branch_only_in_training_and_inference_network_loads_checkpoint():
    spec = tiny_spec((32, 32, 32))
    train_net = ResidualUNet(spec, 4, 3, deep_supervision=True, vae=True)
    x = torch.randn(2, 4, 32, 32, 32)
    train_net.train()
    train_net(x)
    aux = train_net.pop_auxiliary_loss()
    assert aux is not None and aux.requires_grad and float(aux.detach()) > 0
    assert train_net.pop_auxiliary_loss() is None  # consumed once
    assert set(train_net.last_vae_terms) == {"l2", "kl"}
    assert train_net.reconstruct(x).shape == x.shape
    train_net.eval()
    with torch.no_grad():
        train_net(x)
    assert train_net.pop_auxiliary_loss() is None

    # what nnUNetv2_predict does: rebuild without deep supervision and load the training weights (strict)
    infer_net = ResidualUNet(spec, 4, 3, deep_supervision=False, vae=True)
    infer_net.load_state_dict(train_net.state_dict())
    infer_net.eval()
    train_net.decoder.deep_supervision = False
    with torch.no_grad():
        assert torch.allclose(infer_net(x), train_net(x), atol=1e-5)
    assert any(k.startswith("vae.") for k in train_net.state_dict())
    with pytest.raises(RuntimeError):
        ResidualUNet(spec, 4, 3, vae=False).load_state_dict(train_net.state_dict())


def test_cascaded_unet_encodes_each_modality_separately():
    spec = tiny_spec((32, 32, 32))
    net = CascadedUNet(spec, 4, 3).eval()
    assert len(net.encoder.encoders) == 4
    assert per_modality_features((32, 64, 320), 4) == (8, 16, 80)
    x = torch.randn(1, 4, 32, 32, 32)
    y = x.clone()
    y[:, 1] = torch.randn(32, 32, 32)
    with torch.no_grad():
        enc0_x, enc0_y = net.encoder.encoders[0](x[:, :1]), net.encoder.encoders[0](y[:, :1])
        enc1_x, enc1_y = net.encoder.encoders[1](x[:, 1:2]), net.encoder.encoders[1](y[:, 1:2])
    assert all(torch.equal(a, b) for a, b in zip(enc0_x, enc0_y))
    assert not torch.allclose(enc1_x[0], enc1_y[0])
    two_channel = CascadedUNet(spec, 2, 3, deep_supervision=False).eval()
    with torch.no_grad():
        assert two_channel(torch.randn(1, 2, 32, 32, 32)).shape == (1, 3, 32, 32, 32)


def test_spec_from_plans_arch_kwargs():
    arch_kwargs = {
        "n_stages": 4, "features_per_stage": [32, 64, 128, 256], "conv_op": "torch.nn.modules.conv.Conv3d",
        "kernel_sizes": [[1, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3]],
        "strides": [[1, 1, 1], [1, 2, 2], [2, 2, 2], [2, 2, 2]], "n_conv_per_stage": [2, 2, 2, 2],
        "n_conv_per_stage_decoder": [2, 2, 2], "conv_bias": True,
        "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d", "nonlin": "torch.nn.LeakyReLU",
    }
    spec = UNetSpec.from_arch_kwargs([20, 40, 40], arch_kwargs)
    assert spec.n_stages == 4 and spec.dim == 3 and spec.divisor == (4, 8, 8)
    assert spec.stage_sizes()[-1] == (5, 5, 5)
    assert spec.kernel_sizes[0] == (1, 3, 3)
    resenc = dict(arch_kwargs, n_blocks_per_stage=[1, 3, 4, 6])
    del resenc["n_conv_per_stage"]
    assert UNetSpec.from_arch_kwargs([20, 40, 40], resenc).n_conv_per_stage == (1, 3, 4, 6)
    with pytest.raises(ValueError):
        UNetSpec.from_arch_kwargs([20, 40], arch_kwargs)
