"""Shape and behaviour tests of the seed-001 networks (Isensee U-Net, Myronenko residual U-Net, Lachinov cascaded
U-Net) and of the modality-encoder U-Net."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from nnunet_kd.networks.cascaded_unet import CascadedUNet, member_spec
from nnunet_kd.networks.common import GroupNorm, UNetSpec, count_parameters, spec_for_patch
from nnunet_kd.networks.modality_encoder_unet import ModalityEncoderUNet, per_modality_features
from nnunet_kd.networks.residual_unet import PreActResidualBlock, ResidualUNet, myronenko_blocks, vae_loss
from nnunet_kd.networks.unet import IsenseeUNet

ARCHITECTURES = {
    "unet": lambda spec, c, k, ds: IsenseeUNet(spec, c, k, ds),
    "residual": lambda spec, c, k, ds: ResidualUNet(spec, c, k, ds),
    "residual_vae": lambda spec, c, k, ds: ResidualUNet(spec, c, k, ds, vae=True),
    "cascaded": lambda spec, c, k, ds: CascadedUNet(spec, c, k, ds),
    "modality_encoder": lambda spec, c, k, ds: ModalityEncoderUNet(spec, c, k, ds),
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
    assert myronenko_blocks(4) == (1, 2, 2, 4) and myronenko_blocks(6) == (1, 2, 2, 2, 2, 4)


def test_residual_unet_has_myronenkos_block_counts_and_separate_strided_convs():
    spec = tiny_spec((32, 32, 32))  # 4 stages, as in Myronenko's Table 1
    net = ResidualUNet(spec, 4, 3)
    blocks = [[type(b) for b in stage] for stage in net.encoder.stages]
    assert [len(b) for b in blocks] == [1, 2, 2, 4]
    assert all(t is PreActResidualBlock for stage in blocks for t in stage)
    # every block keeps its width and resolution: identity skip, no stride inside a block
    for stage, width in zip(net.encoder.stages, spec.features_per_stage):
        for block in stage:
            assert block.conv1.in_channels == block.conv2.out_channels == width
            assert block.conv1.stride == block.conv2.stride == (1, 1, 1)
    # downsampling by a separate strided 3x3x3 conv that doubles the filters
    assert len(net.encoder.downsamples) == spec.n_stages - 1
    for s, down in enumerate(net.encoder.downsamples, start=1):
        assert isinstance(down, torch.nn.Conv3d) and down.stride == (2, 2, 2) and down.kernel_size == (3, 3, 3)
        assert (down.in_channels, down.out_channels) == (spec.features_per_stage[s - 1], spec.features_per_stage[s])
    # one block per decoder stage; decoder path: 1x1 conv to the skip's width (halving 16 -> 8, 32 -> 16), block
    assert len(net.decoder.stages) == spec.n_stages - 1
    assert all(isinstance(b, PreActResidualBlock) for b in net.decoder.stages)
    feats = spec.features_per_stage
    assert [(r.in_channels, r.out_channels) for r in net.decoder.reduce] == [(feats[-s], feats[-s - 1])
                                                                            for s in range(1, spec.n_stages)]
    assert all(r.kernel_size == (1, 1, 1) for r in net.decoder.reduce)
    assert net.encoder.stem.out_channels == spec.features_per_stage[0] and net.encoder.stem.kernel_size == (3, 3, 3)


def test_residual_block_is_pre_activation():
    """Norm -> ReLU -> conv, twice, then identity addition and no activation after the sum (order of calls)."""
    block = PreActResidualBlock(torch.nn.Conv3d, 16, (3, 3, 3))
    order = []
    for name in ("norm1", "nonlin1", "conv1", "norm2", "nonlin2", "conv2"):
        getattr(block, name).register_forward_hook(lambda m, i, o, name=name: order.append(name))
    x = torch.randn(1, 16, 6, 6, 6)
    out = block(x)
    assert order == ["norm1", "nonlin1", "conv1", "norm2", "nonlin2", "conv2"]
    assert isinstance(block.norm1, GroupNorm) and block.norm1.num_groups == 8
    assert (out < 0).any()  # no ReLU after the sum (post-activation blocks end in ReLU)
    torch.nn.init.zeros_(block.conv2.weight)
    assert torch.equal(block(x), x)  # identity skip


def test_residual_unet_spatial_dropout_follows_the_first_conv_in_training_only():
    spec = tiny_spec((32, 32, 32))
    net = ResidualUNet(spec, 4, 3, deep_supervision=False)
    assert isinstance(net.encoder.dropout, torch.nn.Dropout3d) and net.encoder.dropout.p == 0.2
    seen = {}
    net.encoder.stem.register_forward_hook(lambda m, i, o: seen.__setitem__("stem", o.detach().clone()))
    net.encoder.dropout.register_forward_hook(lambda m, i, o: seen.__setitem__("dropout", (i[0].detach(), o)))
    net.train()
    net(torch.randn(2, 4, 32, 32, 32))
    dropped_in, dropped_out = seen["dropout"]
    assert torch.equal(dropped_in, seen["stem"])  # the dropout's input is the first conv's output
    per_channel = dropped_out.flatten(2).abs().amax(2)
    zeroed = per_channel == 0
    assert zeroed.any() and not zeroed.all()  # whole channels dropped: spatial dropout
    kept = ~zeroed
    ratio = dropped_out.flatten(2)[kept] / dropped_in.flatten(2)[kept]
    assert torch.allclose(ratio[ratio == ratio], torch.tensor(1 / 0.8), atol=1e-4)  # survivors scaled 1 / 0.8
    net.eval()
    with torch.no_grad():
        x = torch.randn(1, 4, 32, 32, 32)
        assert torch.equal(net(x), net(x))  # deterministic at inference


def test_residual_unet_uses_groupnorm_and_cascaded_uses_instancenorm():
    spec = tiny_spec((32, 32, 32))
    res = ResidualUNet(spec, 4, 3)
    assert any(isinstance(m, GroupNorm) for m in res.modules())
    assert not any(isinstance(m, torch.nn.InstanceNorm3d) for m in res.modules())
    assert any(isinstance(m, torch.nn.ReLU) for m in res.modules())
    for cas in (CascadedUNet(spec, 4, 3), ModalityEncoderUNet(spec, 4, 3)):
        assert any(isinstance(m, torch.nn.InstanceNorm3d) for m in cas.modules())
        assert not any(isinstance(m, (torch.nn.LeakyReLU, GroupNorm)) for m in cas.modules())
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


def test_modality_encoder_unet_encodes_each_modality_separately():
    spec = tiny_spec((32, 32, 32))
    net = ModalityEncoderUNet(spec, 4, 3).eval()
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
    two_channel = ModalityEncoderUNet(spec, 2, 3, deep_supervision=False).eval()
    with torch.no_grad():
        assert two_channel(torch.randn(1, 2, 32, 32, 32)).shape == (1, 3, 32, 32, 32)


def test_cascaded_unet_members_see_downscaled_inputs_and_feed_the_full_resolution_net():
    spec = tiny_spec((32, 32, 32))
    net = CascadedUNet(spec, 4, 3, deep_supervision=True)
    net.train()
    assert net.levels == 2 and net.pool_factors == [(2, 2, 2), (4, 4, 4)]
    assert member_spec(spec, 1).features_per_stage == spec.features_per_stage[1:]  # wider at the same depth
    seen = {}
    for k, member in enumerate(net.coarse, start=1):
        member.register_forward_hook(lambda m, i, o, k=k: seen.__setitem__(k, (i[0], o)))
    x = torch.randn(1, 4, 32, 32, 32)
    outputs = net(x)
    # member k sees the patch average-pooled by 2**k (an independent reference: reshape-and-mean)
    for k, size in ((1, 16), (2, 8)):
        f = 32 // size
        reference = x.reshape(1, 4, size, f, size, f, size, f).mean((3, 5, 7))
        assert torch.allclose(seen[k][0], reference, atol=1e-6)
        assert outputs[k] is seen[k][1]  # each member fills the deep-supervision slot at its resolution
    assert [tuple(o.shape[2:]) for o in outputs] == [(32, 32, 32), (16, 16, 16), (8, 8, 8)]
    # the full-resolution output alone trains every member: the coarse outputs reach it
    net.zero_grad()
    outputs[0].pow(2).mean().backward()
    for name, module in [("full", net.encoder), ("level 1", net.coarse[0]), ("level 2", net.coarse[1])]:
        grads = [p.grad for p in module.parameters() if p.grad is not None]
        assert grads and sum(float(g.abs().sum()) for g in grads) > 0, name
    # and the level-2 member feeds the level-1 member (gradient from the level-1 output alone)
    net.zero_grad()
    net(x)[1].pow(2).mean().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in net.coarse[1].parameters())
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in net.encoder.parameters())


def test_cascaded_unet_inference_output_depends_on_the_coarse_members():
    spec = tiny_spec((32, 32, 32))
    net = CascadedUNet(spec, 4, 3, deep_supervision=False).eval()
    x = torch.randn(1, 4, 32, 32, 32)
    with torch.no_grad():
        before = net(x)
        net.coarse[1].decoder.heads["0"].bias.add_(5.0)  # change only the coarsest member's output
        after = net(x)
    assert before.shape == (1, 3, 32, 32, 32) and not torch.allclose(before, after)
    # one encoder per modality (grouped convs) in every member, fused by a maximum
    assert net.groups == 4 and net.encoder.stem.groups == 4 and net.coarse[0].encoder.stem.groups == 4
    assert CascadedUNet(spec, 3, 3).groups == 1  # widths 8, 16, ... do not divide into 3 encoders
    with pytest.raises(ValueError, match="at least 3 stages"):
        CascadedUNet(tiny_spec((8, 8, 8)), 4, 3)


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


def earlier_residual_unet_weights(spec: UNetSpec, input_channels: int) -> dict[str, torch.Tensor]:
    """Weights of the residual U-Net's layout before Myronenko's: built on nnU-Net's ``ResidualEncoder``."""
    from dynamic_network_architectures.building_blocks.residual_encoders import ResidualEncoder

    from nnunet_kd.networks.common import network_config

    holder = torch.nn.Module()
    holder.encoder = ResidualEncoder(
        input_channels, spec.n_stages, list(spec.features_per_stage), spec.conv_op, [list(k) for k in spec.kernel_sizes],
        [list(s) for s in spec.strides], [1] * spec.n_stages, conv_bias=False, dropout_op=None, dropout_op_kwargs=None,
        return_skips=True, stem_channels=spec.features_per_stage[0], **network_config("group", "relu", spec.dim))
    return holder.state_dict()


@pytest.mark.parametrize("arch", ["residual", "residual_vae", "cascaded"])
def test_checkpoint_of_the_earlier_layout_is_refused_in_one_line(tmp_path, arch):
    """A saved state dict of the layout the class had before the 2026-12-03 change stops with one line naming it;
    the current layout still loads and other mismatches keep PyTorch's error."""
    from nnunet_kd.errors import ConfigurationError

    spec = tiny_spec((32, 32, 32))
    earlier = (ModalityEncoderUNet(spec, 4, 3).state_dict() if arch == "cascaded"  # the earlier CascadedUNet
               else earlier_residual_unet_weights(spec, 4))
    torch.save(earlier, tmp_path / "earlier.pth")
    net = ARCHITECTURES[arch](spec, 4, 3, False)
    with pytest.raises(ConfigurationError) as info:
        net.load_state_dict(torch.load(tmp_path / "earlier.pth", weights_only=True))
    message = str(info.value)
    assert "\n" not in message and "earlier architecture" in message and "retrain" in message, message
    net.load_state_dict(ARCHITECTURES[arch](spec, 4, 3, True).state_dict())
    with pytest.raises(RuntimeError, match="Missing key"):
        net.load_state_dict(IsenseeUNet(spec, 4, 3).state_dict())
