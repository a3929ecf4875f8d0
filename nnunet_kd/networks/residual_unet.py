"""Residual U-Net after Myronenko 2018 ("3D MRI brain tumor segmentation using autoencoder regularization",
arXiv:1810.11654, Table 1), with widths, kernels, strides and depth from the nnU-Net plans.

* Encoder (:class:`MyronenkoEncoder`): an initial 3x3x3 convolution to ``features_per_stage[0]`` (32 in nnU-Net's
  plans, as in the paper) followed by spatial dropout (``Dropout3d``, rate 0.2); every stage is a stack of
  *pre-activation* residual blocks (:class:`PreActResidualBlock`: GroupNorm(8)-ReLU-conv, twice, plus the
  identity), 1, 2, ..., 2, 4 blocks per stage (:func:`myronenko_blocks`); between stages a separate strided 3x3x3
  convolution halves the resolution and doubles the filters (the plans' stride and width).
* Decoder (:class:`MyronenkoDecoder`): per stage a 1x1x1 convolution to the skip's width, (tri)linear upsampling,
  *addition* of the encoder skip and one pre-activation block; a 1x1x1 convolution gives the logits. Every decoder
  stage has such a head so that nnU-Net's deep supervision gets one output per stage (highest resolution first);
  ``decoder.deep_supervision`` (what ``nnUNetTrainer.set_deep_supervision_enabled`` toggles) decides whether
  ``forward`` returns the list or only the full-resolution logits. The paper has no deep supervision; nnU-Net's
  trainer uses it for every network, and the extra heads are 1x1 convolutions.
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
from torch import nn
from torch.nn import functional as F

from nnunet_kd.networks.common import GroupNorm, RefusesEarlierLayout, UNetSpec, init_weights_he, interpolation_mode

#: Myronenko's latent size (128 means + 128 log-variances) and the channels of the VAE's reduced bottleneck.
VAE_LATENT_DIM = 128
VAE_REDUCED_CHANNELS = 16
#: Myronenko's spatial dropout rate after the initial convolution.
INITIAL_DROPOUT = 0.2


def _padding(kernel_size: Sequence[int]) -> tuple[int, ...]:
    return tuple(int(k) // 2 for k in kernel_size)


def _dropout_op(dim: int) -> type[nn.Module]:
    return {1: nn.Dropout1d, 2: nn.Dropout2d, 3: nn.Dropout3d}[dim]


class PreActResidualBlock(nn.Module):
    """Myronenko's ResNet block: ``x + conv(relu(norm(conv(relu(norm(x))))))`` with GroupNorm(8), same width.

    Pre-activation order (He et al. 2016): normalisation and ReLU come *before* each convolution, and the sum is
    not followed by any activation.
    """

    def __init__(self, conv_op: type[nn.Module], channels: int, kernel_size: Sequence[int]) -> None:
        super().__init__()
        pad = _padding(kernel_size)
        self.norm1 = GroupNorm(channels)
        self.nonlin1 = nn.ReLU(inplace=False)
        self.conv1 = conv_op(channels, channels, tuple(kernel_size), 1, pad, bias=False)
        self.norm2 = GroupNorm(channels)
        self.nonlin2 = nn.ReLU(inplace=True)
        self.conv2 = conv_op(channels, channels, tuple(kernel_size), 1, pad, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(self.nonlin1(self.norm1(x)))
        h = self.conv2(self.nonlin2(self.norm2(h)))
        return x + h


class MyronenkoEncoder(nn.Module):
    """Initial conv + spatial dropout, then per stage (strided conv if not the first) and pre-activation blocks.

    ``forward`` returns every stage's output (the skips, bottleneck last). ``stem`` applies ``strides[0]``
    (all ones in nnU-Net's plans); ``downsamples[s - 1]`` is the separate strided convolution into stage ``s``.
    """

    def __init__(self, spec: UNetSpec, input_channels: int, blocks_per_stage: Sequence[int],
                 dropout: float = INITIAL_DROPOUT) -> None:
        super().__init__()
        conv_op = spec.conv_op
        feats = spec.features_per_stage
        self.stem = conv_op(input_channels, feats[0], spec.kernel_sizes[0], spec.strides[0],
                            _padding(spec.kernel_sizes[0]), bias=False)
        self.dropout = _dropout_op(spec.dim)(dropout)
        self.downsamples = nn.ModuleList([
            conv_op(feats[s - 1], feats[s], spec.kernel_sizes[s], spec.strides[s], _padding(spec.kernel_sizes[s]),
                    bias=False)
            for s in range(1, spec.n_stages)
        ])
        self.stages = nn.ModuleList([
            nn.Sequential(*[PreActResidualBlock(conv_op, feats[s], spec.kernel_sizes[s]) for _ in range(n)])
            for s, n in enumerate(blocks_per_stage)
        ])

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stages[0](self.dropout(self.stem(x)))
        skips = [x]
        for down, stage in zip(self.downsamples, self.stages[1:]):
            x = stage(down(x))
            skips.append(x)
        return skips


class MyronenkoDecoder(nn.Module):
    """Per stage: 1x1 conv to the skip's width, linear upsampling, add the skip, one pre-activation block.

    ``seg_layers[s]`` is the 1x1 conv to the logits after decoder stage ``s`` (``s = 0`` next to the bottleneck);
    the last one is the network's output, the others serve deep supervision.
    """

    def __init__(self, spec: UNetSpec, num_classes: int, deep_supervision: bool) -> None:
        super().__init__()
        conv_op = spec.conv_op
        feats = spec.features_per_stage
        self.deep_supervision = deep_supervision
        self.mode = interpolation_mode(spec.dim)
        self.reduce = nn.ModuleList()
        self.stages = nn.ModuleList()
        self.seg_layers = nn.ModuleList()
        for s in range(1, spec.n_stages):
            below, skip = feats[-s], feats[-(s + 1)]
            self.reduce.append(conv_op(below, skip, 1, 1, 0, bias=False))
            self.stages.append(PreActResidualBlock(conv_op, skip, spec.kernel_sizes[-(s + 1)]))
            self.seg_layers.append(conv_op(skip, num_classes, 1, 1, 0, bias=True))

    def forward(self, skips: Sequence[torch.Tensor]) -> torch.Tensor | list[torch.Tensor]:
        x = skips[-1]
        outputs = []
        last = len(self.stages) - 1
        for s, (reduce, stage) in enumerate(zip(self.reduce, self.stages)):
            skip = skips[-(s + 2)]
            x = F.interpolate(reduce(x), size=tuple(skip.shape[2:]), mode=self.mode, align_corners=False)
            x = stage(x + skip)
            if self.deep_supervision or s == last:
                outputs.append(self.seg_layers[s](x))
        outputs = outputs[::-1]
        return outputs if self.deep_supervision else outputs[0]


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
    pre-activation residual block (no skips), ending in a 1x1 conv to the input channels. The latent grid is fixed
    by the planned patch size; other input sizes are pooled to it, and the reconstruction matches the input size.
    """

    def __init__(self, spec: UNetSpec, input_channels: int, latent_dim: int = VAE_LATENT_DIM,
                 reduced_channels: int = VAE_REDUCED_CHANNELS) -> None:
        super().__init__()
        conv_op = spec.conv_op
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
            self.up_blocks.append(PreActResidualBlock(conv_op, above, spec.kernel_sizes[-(s + 1)]))
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


class ResidualUNet(RefusesEarlierLayout):
    """Myronenko's residual U-Net (GroupNorm, ReLU, pre-activation blocks, encoder-heavy), optionally with the VAE.

    ``forward`` returns the segmentation logits like nnU-Net's networks (a list highest resolution first with
    deep supervision, else a tensor). In training mode with ``vae=True`` it also computes the VAE loss of this batch;
    :meth:`pop_auxiliary_loss` returns it (and forgets it), :attr:`last_vae_terms` keeps the unweighted L2 and KL.
    Checkpoints of the residual U-Net before Myronenko's layout (nnU-Net's ``ResidualEncoder``) are refused.
    """

    earlier_layout_prefix = "encoder.stem.convs."
    earlier_layout = "nnU-Net's ResidualEncoder and an additive residual decoder, before Myronenko's layout of 2026-12-03"

    def __init__(self, spec: UNetSpec, input_channels: int, num_classes: int, deep_supervision: bool = True,
                 vae: bool = False, vae_l2_weight: float = 0.1, vae_kl_weight: float = 0.1,
                 encoder_blocks: Sequence[int] | None = None, dropout: float = INITIAL_DROPOUT) -> None:
        super().__init__()
        self.spec = spec
        blocks = tuple(encoder_blocks) if encoder_blocks is not None else myronenko_blocks(spec.n_stages)
        if len(blocks) != spec.n_stages:
            raise ValueError(f"encoder_blocks needs {spec.n_stages} entries, got {len(blocks)}")
        self.encoder = MyronenkoEncoder(spec, input_channels, blocks, dropout)
        self.decoder = MyronenkoDecoder(spec, num_classes, deep_supervision)
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
