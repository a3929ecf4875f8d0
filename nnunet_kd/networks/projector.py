"""The small 1x1x1-convolution projector that maps bottleneck features into the Barlow Twins space."""

from __future__ import annotations

from torch import nn


def make_projector(in_channels: int, dim: int, spatial_dims: int = 3) -> nn.Sequential:
    """conv1x1 (in -> dim) -> LeakyReLU -> conv1x1 (dim -> dim), applied per position (spatial shape kept).

    No normalisation layer: the Barlow Twins loss standardises every feature over all samples itself.
    """
    conv = nn.Conv3d if spatial_dims == 3 else nn.Conv2d
    return nn.Sequential(
        conv(in_channels, dim, kernel_size=1),
        nn.LeakyReLU(0.01),
        conv(dim, dim, kernel_size=1),
    )
