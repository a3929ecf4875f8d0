"""The seed's plain 3D U-Net, after Isensee et al. 2018 ("No New-Net", 2nd place BraTS 2018).

Encoder: nnU-Net's ``PlainConvEncoder`` (two conv-InstanceNorm-LeakyReLU per stage, strided-conv downsampling);
decoder: :class:`~nnunet_kd.networks.common.InterpolatingDecoder` with trilinear upsampling and skip
concatenation, which is what distinguishes No New-Net from stock nnU-Net (transposed convolutions). Geometry
(stages, widths, kernels, strides) follows the nnU-Net plans through :class:`~nnunet_kd.networks.common.UNetSpec`.
"""

from __future__ import annotations

import torch
from dynamic_network_architectures.building_blocks.plain_conv_encoder import PlainConvEncoder
from torch import nn

from nnunet_kd.networks.common import InterpolatingDecoder, UNetSpec, init_weights_he, network_config


class IsenseeUNet(nn.Module):
    """3D U-Net with InstanceNorm, LeakyReLU and trilinear upsampling in the decoder (Isensee et al. 2018).

    ``forward`` returns a list of outputs (highest resolution first, one per decoder stage) when
    ``decoder.deep_supervision`` is True, otherwise one tensor of logits at input resolution.
    """

    def __init__(self, spec: UNetSpec, input_channels: int, num_classes: int, deep_supervision: bool = True) -> None:
        super().__init__()
        self.spec = spec
        cfg = network_config("instance", "leakyrelu", spec.dim)
        self.encoder = PlainConvEncoder(
            input_channels, spec.n_stages, list(spec.features_per_stage), spec.conv_op,
            [list(k) for k in spec.kernel_sizes], [list(s) for s in spec.strides], list(spec.n_conv_per_stage),
            conv_bias=True, dropout_op=None, dropout_op_kwargs=None, return_skips=True, **cfg)
        self.decoder = InterpolatingDecoder(
            spec, spec.features_per_stage, num_classes, spec.n_conv_per_stage_decoder,
            deep_supervision=deep_supervision, conv_bias=True, **cfg)
        init_weights_he(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        return self.decoder(self.encoder(x))
