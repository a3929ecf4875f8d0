"""Modality-encoder U-Net: one residual encoder per MRI modality, fused per stage into one shared decoder.

Each input channel has its own residual encoder, so that modality-specific representations are learnt
separately; at every resolution the per-modality features are concatenated and fused by a 1x1
conv-InstanceNorm-ReLU (:class:`ModalityFusionEncoder`), and the fused skips feed one shared residual decoder
(``dynamic_network_architectures``' ``UNetResDecoder``: transposed conv, skip concatenation, residual blocks).
All residual blocks are basic blocks with two convs, two InstanceNorms and two ReLUs.

This was this project's first reading of the seed's "Cascaded UNet" (the seed describes blocks that learn each
modality separately). It is not Lachinov et al.'s model, whose defining idea is the multi-scale cascade of U-Nets
(:mod:`nnunet_kd.networks.cascaded_unet`); it is kept under its own name (``nnUNetTrainerModalityEncoderUNet``)
as a further architecture.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from dynamic_network_architectures.building_blocks.residual_encoders import ResidualEncoder
from dynamic_network_architectures.building_blocks.simple_conv_blocks import ConvDropoutNormReLU
from dynamic_network_architectures.building_blocks.unet_residual_decoder import UNetResDecoder
from torch import nn

from nnunet_kd.networks.common import UNetSpec, init_weights_he, network_config

#: Narrowest per-modality encoder stage.
MIN_MODALITY_FEATURES = 8


def per_modality_features(features_per_stage: Sequence[int], n_modalities: int) -> tuple[int, ...]:
    """Width of each modality's encoder per stage: the fused width shared out, at least 8 channels."""
    return tuple(max(MIN_MODALITY_FEATURES, int(f) // max(1, n_modalities)) for f in features_per_stage)


class ModalityFusionEncoder(nn.Module):
    """One residual encoder per input channel, fused per stage by concatenation and a 1x1 conv.

    Exposes the attributes ``UNetResDecoder`` reads from an encoder (``output_channels``, ``strides``,
    ``kernel_sizes``, ``conv_op``, norm/nonlin/dropout settings) and returns the fused skips (bottleneck last).
    """

    def __init__(self, spec: UNetSpec, input_channels: int, blocks_per_stage: int = 1) -> None:
        super().__init__()
        cfg = network_config("instance", "relu", spec.dim)
        widths = per_modality_features(spec.features_per_stage, input_channels)
        self.encoders = nn.ModuleList([
            ResidualEncoder(1, spec.n_stages, list(widths), spec.conv_op, [list(k) for k in spec.kernel_sizes],
                            [list(s) for s in spec.strides], blocks_per_stage, conv_bias=False, dropout_op=None,
                            dropout_op_kwargs=None, return_skips=True, stem_channels=widths[0], **cfg)
            for _ in range(input_channels)
        ])
        self.fusion = nn.ModuleList([
            ConvDropoutNormReLU(spec.conv_op, input_channels * w, f, 1, 1, False, cfg["norm_op"],
                                cfg["norm_op_kwargs"], None, None, cfg["nonlin"], cfg["nonlin_kwargs"])
            for w, f in zip(widths, spec.features_per_stage)
        ])
        # what a dynamic_network_architectures decoder needs to know about its encoder
        self.output_channels = list(spec.features_per_stage)
        self.strides = [list(s) for s in spec.strides]
        self.kernel_sizes = [list(k) for k in spec.kernel_sizes]
        self.conv_op = spec.conv_op
        self.conv_bias = False
        self.norm_op, self.norm_op_kwargs = cfg["norm_op"], cfg["norm_op_kwargs"]
        self.nonlin, self.nonlin_kwargs = cfg["nonlin"], cfg["nonlin_kwargs"]
        self.dropout_op, self.dropout_op_kwargs = None, None
        self.return_skips = True

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        per_modality = [encoder(x[:, i:i + 1]) for i, encoder in enumerate(self.encoders)]
        return [fuse(torch.cat([skips[s] for skips in per_modality], 1)) for s, fuse in enumerate(self.fusion)]


class ModalityEncoderUNet(nn.Module):
    """Per-modality residual encoders fused into a shared residual decoder (ReLU, InstanceNorm).

    ``forward`` returns a list of outputs (highest resolution first) when ``decoder.deep_supervision`` is True,
    otherwise one tensor of logits at input resolution.
    """

    def __init__(self, spec: UNetSpec, input_channels: int, num_classes: int, deep_supervision: bool = True,
                 encoder_blocks_per_stage: int = 1, decoder_blocks_per_stage: int = 1) -> None:
        super().__init__()
        self.spec = spec
        self.encoder = ModalityFusionEncoder(spec, input_channels, encoder_blocks_per_stage)
        self.decoder = UNetResDecoder(self.encoder, num_classes, decoder_blocks_per_stage, deep_supervision)
        init_weights_he(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        return self.decoder(self.encoder(x))
