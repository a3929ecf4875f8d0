"""Residual U-Net after Myronenko 2018 ("3D MRI brain tumor segmentation using autoencoder regularization").

* Encoder-heavy: residual blocks (``dynamic_network_architectures`` ``ResidualEncoder``/``BasicBlockD``) with
  GroupNorm (8 groups) and ReLU; 1, 2, ..., 2, 4 blocks per stage (:func:`myronenko_blocks`), strided-conv
  downsampling, widths/kernels/strides from the nnU-Net plans.
* Light decoder: one residual block per stage; 1x1 conv, trilinear upsampling and *addition* of the encoder skip
  (:class:`~nnunet_kd.networks.common.InterpolatingDecoder` with ``merge="add"``); deep-supervision heads on every
  stage as nnU-Net expects.
* Optional VAE branch (:class:`VAEBranch`) on the bottleneck that reconstructs the input image as a regulariser.
  It runs only in training mode; its weighted loss ``l2_weight * L2 + kl_weight * KL`` is left on the module
  and taken (once) with :meth:`ResidualUNet.pop_auxiliary_loss`. Inference (``model.eval()``, nnU-Net's predictor)
  never runs it; its weights are part of the state dict, so the inference network must be built with the same
  ``vae`` flag (the trainer's ``build_network_architecture`` does that).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from dynamic_network_architectures.building_blocks.residual import StackedResidualBlocks
from dynamic_network_architectures.building_blocks.residual_encoders import ResidualEncoder
from torch import nn
from torch.nn import functional as F

from nnunet_kd.networks.common import (
    GroupNorm,
    InterpolatingDecoder,
    UNetSpec,
    init_weights_he,
    interpolation_mode,
    network_config,
)

#: Myronenko's latent size (128 means + 128 log-variances) and the channels of the VAE's reduced bottleneck.
VAE_LATENT_DIM = 128
VAE_REDUCED_CHANNELS = 16


def myronenko_blocks(n_stages: int) -> tuple[int, ...]:
    """Residual blocks per encoder stage: 1 at full resolution, 4 at the bottleneck, 2 in between.

    For Myronenko's 4 stages this is his 1, 2, 2, 4; deeper nnU-Net plans (6 stages for BraTS) get 2 blocks in
    the extra middle stages, which keeps the encoder heavy without quadrupling the widest (320-channel) stages.
    """
    if n_stages < 2:
        return (4,) * n_stages
    return (1,) + (2,) * (n_stages - 2) + (4,)


def vae_loss(image: torch.Tensor, reconstruction: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor,
             l2_weight: float = 0.1, kl_weight: float = 0.1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Myronenko's VAE loss: ``(l2_weight * L2 + kl_weight * KL, L2, KL)``.

    ``L2`` is the mean squared reconstruction error; ``KL = sum(mu^2 + sigma^2 - log sigma^2 - 1) / N`` with ``N``
    the number of image voxels in the batch (per channel), as in the paper. Computed in float32.
    """
    image, reconstruction = image.float(), reconstruction.float()
    mu, logvar = mu.float(), logvar.float()
    l2 = F.mse_loss(reconstruction, image)
    n_voxels = image.shape[0] * math.prod(image.shape[2:])
    kl = (mu.pow(2) + logvar.exp() - logvar - 1).sum() / n_voxels
    return l2_weight * l2 + kl_weight * kl, l2.detach(), kl.detach()


class VAEBranch(nn.Module):
    """Myronenko's variational auto-encoder branch: bottleneck -> latent (mu, log sigma^2) -> input image.

    The bottleneck is reduced to 16 channels by a strided conv, flattened to a 256-vector (128 means, 128
    log-variances); a sample is decoded by a dense layer, 1x1 conv and, per stage, 1x1 conv + upsampling + one
    residual block (no skips), ending in a 1x1 conv to the input channels. The latent grid is fixed by the planned
    patch size; other input sizes are pooled to it, and the reconstruction always matches the input size.
    """

    def __init__(self, spec: UNetSpec, input_channels: int, latent_dim: int = VAE_LATENT_DIM,
                 reduced_channels: int = VAE_REDUCED_CHANNELS) -> None:
        super().__init__()
        conv_op = spec.conv_op
        cfg = network_config("group", "relu", spec.dim)
        feats = spec.features_per_stage
        bottleneck_size = spec.stage_sizes()[-1]
        down = tuple(2 if s >= 2 else 1 for s in bottleneck_size)
        self.grid = tuple((s - 1) // d + 1 for s, d in zip(bottleneck_size, down))
        self.latent_dim = latent_dim
        self.reduced_channels = reduced_channels
        self.mode = interpolation_mode(spec.dim)
        self.reduce = nn.Sequential(GroupNorm(feats[-1]), nn.ReLU(inplace=True),
                                    conv_op(feats[-1], reduced_channels, 3, down, 1))
        flat = reduced_channels * math.prod(self.grid)
        self.to_latent = nn.Linear(flat, 2 * latent_dim)
        self.from_latent = nn.Linear(latent_dim, flat)
        self.expand = conv_op(reduced_channels, feats[-1], 1)
        self.up_convs = nn.ModuleList()
        self.up_blocks = nn.ModuleList()
        for s in range(1, spec.n_stages):
            below, above = feats[-s], feats[-(s + 1)]
            self.up_convs.append(conv_op(below, above, 1))
            self.up_blocks.append(StackedResidualBlocks(1, conv_op, above, above, spec.kernel_sizes[-(s + 1)], 1,
                                                        **cfg))
        self.out = conv_op(feats[0], input_channels, 1)

    def forward(self, bottleneck: torch.Tensor, stage_sizes: Sequence[Sequence[int]]
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Reconstruction and latent statistics; ``stage_sizes`` are the encoder's spatial sizes (input first)."""
        h = self.reduce(bottleneck)
        if tuple(h.shape[2:]) != self.grid:
            h = F.adaptive_avg_pool3d(h, self.grid) if h.ndim == 5 else F.adaptive_avg_pool2d(h, self.grid)
        stats = self.to_latent(h.flatten(1))
        mu, logvar = stats[:, :self.latent_dim], stats[:, self.latent_dim:].clamp(-10.0, 10.0)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        h = F.relu(self.from_latent(z)).view(z.shape[0], self.reduced_channels, *self.grid)
        h = F.interpolate(self.expand(h), size=tuple(stage_sizes[-1]), mode=self.mode, align_corners=False)
        for s, (conv, block) in enumerate(zip(self.up_convs, self.up_blocks)):
            size = tuple(stage_sizes[-(s + 2)])
            h = block(F.interpolate(conv(h), size=size, mode=self.mode, align_corners=False))
        return self.out(h), mu, logvar


class ResidualUNet(nn.Module):
    """Myronenko-style residual U-Net (GroupNorm, ReLU, encoder-heavy), optionally with the VAE regulariser.

    ``forward`` returns the segmentation logits like nnU-Net's networks (a list highest resolution first with
    deep supervision, else a tensor). In training mode with ``vae=True`` it also computes the VAE loss of this batch;
    :meth:`pop_auxiliary_loss` returns it (and forgets it), :attr:`last_vae_terms` keeps the unweighted L2 and KL.
    """

    def __init__(self, spec: UNetSpec, input_channels: int, num_classes: int, deep_supervision: bool = True,
                 vae: bool = False, vae_l2_weight: float = 0.1, vae_kl_weight: float = 0.1,
                 encoder_blocks: Sequence[int] | None = None) -> None:
        super().__init__()
        self.spec = spec
        cfg = network_config("group", "relu", spec.dim)
        blocks = tuple(encoder_blocks) if encoder_blocks is not None else myronenko_blocks(spec.n_stages)
        if len(blocks) != spec.n_stages:
            raise ValueError(f"encoder_blocks needs {spec.n_stages} entries, got {len(blocks)}")
        self.encoder = ResidualEncoder(
            input_channels, spec.n_stages, list(spec.features_per_stage), spec.conv_op,
            [list(k) for k in spec.kernel_sizes], [list(s) for s in spec.strides], list(blocks), conv_bias=False,
            dropout_op=None, dropout_op_kwargs=None, return_skips=True, stem_channels=spec.features_per_stage[0],
            **cfg)
        self.decoder = InterpolatingDecoder(
            spec, spec.features_per_stage, num_classes, (1,) * (spec.n_stages - 1), merge="add", residual=True,
            deep_supervision=deep_supervision, conv_bias=False, **cfg)
        self.vae = VAEBranch(spec, input_channels) if vae else None
        self.vae_l2_weight = float(vae_l2_weight)
        self.vae_kl_weight = float(vae_kl_weight)
        self._auxiliary_loss: torch.Tensor | None = None
        self.last_vae_terms: dict[str, torch.Tensor] = {}
        init_weights_he(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        skips = self.encoder(x)
        out = self.decoder(skips)
        if self.vae is not None and self.training:
            recon, mu, logvar = self.vae(skips[-1], [s.shape[2:] for s in skips])
            if recon.shape[2:] != x.shape[2:]:  # first stage strided: bring the reconstruction to input size
                recon = F.interpolate(recon, size=tuple(x.shape[2:]), mode=self.vae.mode, align_corners=False)
            loss, l2, kl = vae_loss(x, recon, mu, logvar, self.vae_l2_weight, self.vae_kl_weight)
            self._auxiliary_loss = loss
            self.last_vae_terms = {"l2": l2, "kl": kl}
        return out

    def pop_auxiliary_loss(self) -> torch.Tensor | None:
        """The weighted VAE loss of the last training forward pass (None without VAE or in eval); then forgets it."""
        loss, self._auxiliary_loss = self._auxiliary_loss, None
        return loss

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """The VAE's reconstruction of ``x`` (sampled latent); for inspection, not used in inference."""
        if self.vae is None:
            raise RuntimeError("this ResidualUNet was built without the VAE branch")
        skips = self.encoder(x)
        return self.vae(skips[-1], [s.shape[2:] for s in skips])[0]
