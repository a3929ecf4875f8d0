"""Cascaded U-Net after Lachinov, Vasiliev & Turlapov 2018 ("Glioma segmentation with cascaded UNet",
arXiv:1810.04008, BraTS 2018), inside nnU-Net's patch-based training.

The defining idea of the paper is the multi-scale cascade: U-Nets of the same topology run on downscaled copies of
the input, and their outputs give the full-resolution U-Net context it cannot see in its own receptive field. The
authors' code (mxnet, ``lachinov/brats2018-graphlabunn``) averages the 128^3 input down by 2 and 4, runs a U-Net on
each, and concatenates the coarser networks' outputs into the decoders of the finer ones at the decoder stage of
the same resolution; every network's output is supervised (weights 0.4, 0.3, 0.2 from fine to coarse). Here:

* :class:`CascadedUNet` downsamples the nnU-Net patch internally (average pooling) to the resolution of encoder
  stages 1 and 2 of the plans (by 2 and 4 for BraTS' isotropic plans; :func:`pool_factor`) and runs one
  :class:`CascadeMember` on each. The member at level ``k`` is the plans' U-Net from stage ``k`` down
  (:func:`member_spec`: widths, kernels and strides of stages ``k..``), so it is wider than the full-resolution
  net at the same depth (as the authors' coarse nets were) and its bottleneck sits at the same resolution.
* Coarsest first: each member's logits are concatenated, with the upsampled features and the skip, into every
  finer network's decoder at the stage of matching resolution; the full-resolution network
  (``encoder``/``decoder``) receives all of them. Nothing is detached, so the full-resolution loss trains the
  coarse members too. The paper feeds softmax probabilities; logits are fed here because the network does not
  know whether nnU-Net trains regions (sigmoid) or labels (softmax); the 1x1 merge convolution takes them as
  features.
* Deep supervision as nnU-Net expects it (one output per decoder stage, highest resolution first, at the
  resolutions of ``_get_deep_supervision_scales``): output 0 is the full-resolution network, outputs 1..levels
  are the cascade members' own outputs (exactly at those resolutions, so each member is supervised, as in the
  paper, with nnU-Net's weights 1, 1/2, 1/4, ... instead of 0.4, 0.3, 0.2), deeper outputs come from 1x1 heads
  on the full-resolution decoder. With ``decoder.deep_supervision`` False (``nnUNetv2_predict``) ``forward``
  returns only the full-resolution logits; the members still run, as their outputs are its input.
* Every member has Lachinov's topology: one encoder per modality as grouped convolutions (``groups`` = input
  channels when every width divides by it, else 1), pre-activation residual blocks (InstanceNorm-ReLU-conv,
  twice, identity; the seed's "two ReLU, two instance normalization and two convolutional layers"), strided-conv
  downsampling followed by dropout 0.1, skips fused across modalities by a channel-wise maximum; decoder:
  transposed convolution, concatenation of skip and context, 1x1 convolution, one residual block; 1x1 head.
  One residual block per stage (the paper's), whatever ``n_conv_per_stage`` the plans say.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from nnunet_kd.networks.common import RefusesEarlierLayout, UNetSpec, init_weights_he, interpolation_mode

#: Number of downscaled U-Nets in front of the full-resolution one (the paper: 1/2 and 1/4 of the 128^3 crop).
CASCADE_LEVELS = 2
#: Dropout after every strided convolution of the encoders (the authors' code).
ENCODER_DROPOUT = 0.1


def modality_groups(input_channels: int, features_per_stage: Sequence[int]) -> int:
    """Encoders per modality as conv groups: the number of input channels if it divides every width, else 1."""
    if input_channels > 1 and all(int(f) % input_channels == 0 for f in features_per_stage):
        return int(input_channels)
    return 1


def pool_factor(spec: UNetSpec, level: int) -> tuple[int, ...]:
    """Average-pooling factor that brings the input to encoder stage ``level``'s resolution (before its stem)."""
    return tuple(math.prod(spec.strides[s][d] for s in range(1, level + 1)) for d in range(spec.dim))


def member_spec(spec: UNetSpec, level: int) -> UNetSpec:
    """Geometry of the cascade member at stage ``level``: the plans' stages ``level..`` (same bottleneck)."""
    factor = pool_factor(spec, level)
    return UNetSpec(
        patch_size=tuple(p // f for p, f in zip(spec.patch_size, factor)),
        features_per_stage=spec.features_per_stage[level:],
        kernel_sizes=spec.kernel_sizes[level:],
        strides=(spec.strides[0],) + spec.strides[level + 1:],
        n_conv_per_stage=spec.n_conv_per_stage[level:],
        n_conv_per_stage_decoder=spec.n_conv_per_stage_decoder[level:],
    )


def _padding(kernel_size: Sequence[int]) -> tuple[int, ...]:
    return tuple(int(k) // 2 for k in kernel_size)


def _instance_norm(dim: int, channels: int) -> nn.Module:
    return {2: nn.InstanceNorm2d, 3: nn.InstanceNorm3d}[dim](channels, eps=1e-5, affine=True)


def _resize(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """``x`` at spatial ``size`` (identity when it already is; inputs that are not multiples of the strides)."""
    if tuple(x.shape[2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode=interpolation_mode(x.ndim - 2), align_corners=False)


class PreActBlock(nn.Module):
    """``x + conv(relu(IN(conv(relu(IN(x))))))``, optionally as ``groups`` independent (per-modality) blocks."""

    def __init__(self, spec: UNetSpec, channels: int, kernel_size: Sequence[int], groups: int = 1) -> None:
        super().__init__()
        conv_op, pad = spec.conv_op, _padding(kernel_size)
        self.norm1 = _instance_norm(spec.dim, channels)
        self.conv1 = conv_op(channels, channels, tuple(kernel_size), 1, pad, groups=groups, bias=False)
        self.norm2 = _instance_norm(spec.dim, channels)
        self.conv2 = conv_op(channels, channels, tuple(kernel_size), 1, pad, groups=groups, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.relu(self.norm1(x)))
        return x + self.conv2(F.relu(self.norm2(h)))


class ModalityGroupedEncoder(nn.Module):
    """One residual encoder per modality (grouped convs): stem, then per stage strided conv + dropout + block.

    ``forward`` returns the per-stage features, still grouped (``groups`` blocks of channels, bottleneck last).
    """

    def __init__(self, spec: UNetSpec, input_channels: int, groups: int, dropout: float = ENCODER_DROPOUT) -> None:
        super().__init__()
        conv_op, feats = spec.conv_op, spec.features_per_stage
        self.groups = groups
        self.stem = conv_op(input_channels, feats[0], spec.kernel_sizes[0], spec.strides[0],
                            _padding(spec.kernel_sizes[0]), groups=groups, bias=False)
        self.downsamples = nn.ModuleList([
            nn.Sequential(conv_op(feats[s - 1], feats[s], spec.kernel_sizes[s], spec.strides[s],
                                  _padding(spec.kernel_sizes[s]), groups=groups, bias=False),
                          nn.Dropout(dropout))
            for s in range(1, spec.n_stages)
        ])
        self.blocks = nn.ModuleList([PreActBlock(spec, feats[s], spec.kernel_sizes[s], groups)
                                     for s in range(spec.n_stages)])

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.blocks[0](self.stem(x))
        skips = [x]
        for down, block in zip(self.downsamples, self.blocks[1:]):
            x = block(down(x))
            skips.append(x)
        return skips

    def fuse(self, x: torch.Tensor) -> torch.Tensor:
        """Channel-wise maximum over the modality encoders (``C`` channels -> ``C / groups``)."""
        if self.groups == 1:
            return x
        return x.unflatten(1, (self.groups, x.shape[1] // self.groups)).amax(1)


class CascadeDecoder(nn.Module):
    """Transposed conv, concat (upsampled, fused skip, context logits), 1x1 conv, pre-activation block, per stage.

    Stages are named by the encoder stage whose resolution they produce (``r = n_stages - 2 .. 0``);
    ``context_channels[r]`` extra channels (coarser networks' logits) join at stage ``r``; ``heads`` lists the
    stages with a 1x1 segmentation head (stage 0 always). ``deep_supervision`` is read by the owner.
    """

    def __init__(self, spec: UNetSpec, num_classes: int, groups: int, context_channels: Mapping[int, int],
                 heads: Sequence[int], deep_supervision: bool = False) -> None:
        super().__init__()
        conv_op, feats, n = spec.conv_op, spec.features_per_stage, spec.n_stages
        transpconv_op = {2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}[spec.dim]
        self.deep_supervision = deep_supervision
        self.context_channels = {int(r): int(c) for r, c in context_channels.items()}
        self.resolutions = list(range(n - 2, -1, -1))
        self.up = nn.ModuleList()
        self.merge = nn.ModuleList()
        self.blocks = nn.ModuleList()
        for r in self.resolutions:
            below = feats[r + 1] // groups if r == n - 2 else feats[r + 1]
            self.up.append(transpconv_op(below, feats[r], spec.strides[r + 1], spec.strides[r + 1], bias=False))
            merged = feats[r] + feats[r] // groups + self.context_channels.get(r, 0)
            self.merge.append(conv_op(merged, feats[r], 1, 1, 0, bias=False))
            self.blocks.append(PreActBlock(spec, feats[r], spec.kernel_sizes[r]))
        self.heads = nn.ModuleDict({str(r): conv_op(feats[r], num_classes, 1, 1, 0, bias=True)
                                    for r in sorted(set(heads) | {0})})

    def forward(self, encoder: ModalityGroupedEncoder, skips: Sequence[torch.Tensor],
                context: Mapping[int, torch.Tensor], heads: Sequence[int] = (0,)) -> dict[int, torch.Tensor]:
        """Logits of the stages in ``heads``; ``context[r]`` is concatenated at stage ``r``."""
        x = encoder.fuse(skips[-1])
        outputs = {}
        for r, up, merge, block in zip(self.resolutions, self.up, self.merge, self.blocks):
            skip = encoder.fuse(skips[r])
            parts = [_resize(up(x), skip.shape[2:]), skip]
            if r in self.context_channels:
                parts.append(_resize(context[r], skip.shape[2:]))
            x = block(merge(torch.cat(parts, 1)))
            if r in heads:
                outputs[r] = self.heads[str(r)](x)
        return outputs


class CascadeMember(nn.Module):
    """One downscaled U-Net of the cascade (Lachinov's topology); returns logits at its input resolution."""

    def __init__(self, spec: UNetSpec, input_channels: int, num_classes: int, groups: int,
                 context_channels: Mapping[int, int], dropout: float = ENCODER_DROPOUT) -> None:
        super().__init__()
        self.spec = spec
        self.encoder = ModalityGroupedEncoder(spec, input_channels, groups, dropout)
        self.decoder = CascadeDecoder(spec, num_classes, groups, context_channels, heads=(0,))

    def forward(self, x: torch.Tensor, context: Mapping[int, torch.Tensor]) -> torch.Tensor:
        return self.decoder(self.encoder, self.encoder(x), context)[0]


class CascadedUNet(RefusesEarlierLayout):
    """Lachinov et al.'s multi-scale cascade: U-Nets at stage-1 and stage-2 resolution feed the full-resolution one.

    ``encoder``/``decoder`` are the full-resolution network, ``coarse[k - 1]`` the member at level ``k`` (input
    average-pooled by ``pool_factors[k - 1]``). ``forward`` returns ``n_stages - 1`` outputs highest resolution
    first when ``decoder.deep_supervision`` is True (what ``nnUNetTrainer.set_deep_supervision_enabled``
    toggles), otherwise the full-resolution logits. ``levels`` is reduced to ``n_stages - 2`` for shallow plans.
    Checkpoints of the network this name had before (per-modality encoders, now
    :class:`~nnunet_kd.networks.modality_encoder_unet.ModalityEncoderUNet`) are refused.
    """

    earlier_layout_prefix = "encoder.encoders."
    earlier_layout = ("per-modality encoders and a shared decoder, before Lachinov's cascade of 2026-12-03; that "
                      "network is now nnUNetTrainerModalityEncoderUNet")

    def __init__(self, spec: UNetSpec, input_channels: int, num_classes: int, deep_supervision: bool = True,
                 levels: int = CASCADE_LEVELS, dropout: float = ENCODER_DROPOUT) -> None:
        super().__init__()
        n = spec.n_stages
        self.spec = spec
        self.levels = min(int(levels), n - 2)
        if self.levels < 1:
            raise ValueError(f"the cascaded U-Net needs at least 3 stages in the plans (got {n}): the coarse U-Net "
                             "runs at stage-1 resolution and needs two stages of its own")
        groups = modality_groups(input_channels, spec.features_per_stage)
        self.groups = groups
        self.encoder = ModalityGroupedEncoder(spec, input_channels, groups, dropout)
        self.deep_heads = tuple(range(self.levels + 1, n - 1))
        self.decoder = CascadeDecoder(spec, num_classes, groups, {k: num_classes for k in range(1, self.levels + 1)},
                                      heads=(0,) + self.deep_heads, deep_supervision=deep_supervision)
        self.pool_factors = [pool_factor(spec, k) for k in range(1, self.levels + 1)]
        self.coarse = nn.ModuleList([
            CascadeMember(member_spec(spec, k), input_channels, num_classes, groups,
                          {b - k: num_classes for b in range(k + 1, self.levels + 1)}, dropout)
            for k in range(1, self.levels + 1)
        ])
        init_weights_he(self)

    def downscale(self, x: torch.Tensor, level: int) -> torch.Tensor:
        """The input of the member at ``level``: ``x`` average-pooled by ``pool_factors[level - 1]``."""
        factor = self.pool_factors[level - 1]
        if all(f == 1 for f in factor):
            return x
        pool = F.avg_pool3d if x.ndim == 5 else F.avg_pool2d
        return pool(x, kernel_size=factor, stride=factor)

    def coarse_outputs(self, x: torch.Tensor) -> dict[int, torch.Tensor]:
        """Logits of every cascade member by level, coarsest computed first and fed to the finer ones."""
        outputs: dict[int, torch.Tensor] = {}
        for k in range(self.levels, 0, -1):
            context = {b - k: outputs[b] for b in range(k + 1, self.levels + 1)}
            outputs[k] = self.coarse[k - 1](self.downscale(x, k), context)
        return outputs

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        coarse = self.coarse_outputs(x)
        ds = self.decoder.deep_supervision
        heads = self.decoder(self.encoder, self.encoder(x), coarse, heads=(0,) + (self.deep_heads if ds else ()))
        if not ds:
            return heads[0]
        return [heads[0]] + [coarse[k] for k in range(1, self.levels + 1)] + [heads[r] for r in self.deep_heads]
