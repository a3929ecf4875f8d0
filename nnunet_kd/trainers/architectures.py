"""The seed-001 architectures as nnU-Net trainers: ``nnUNetTrainerUNet``, ``nnUNetTrainerResidualUNet``
(``_VAE`` adds Myronenko's VAE regulariser) and ``nnUNetTrainerCascadedUNet`` (Lachinov's multi-scale cascade),
plus ``nnUNetTrainerModalityEncoderUNet`` (per-modality encoders, shared decoder; not a seed model).

Each trainer is stock ``nnUNetTrainer`` (data loading, augmentation, region-based Dice + BCE on WT/TC/ET from
dataset.json, deep supervision, poly-LR SGD) with only the network class set (:class:`ArchitectureTrainer`); the network
geometry comes from the plans (:meth:`~nnunet_kd.networks.common.UNetSpec.from_configuration`), so patch size,
spacing and number of stages follow ``nnUNetv2_plan_and_preprocess``. ``nnUNetv2_predict`` rebuilds the network
through the same method (with ``enable_deep_supervision=False``).

The VAE variant also wraps the loss (:class:`AuxiliaryLoss`) so that the VAE loss the network leaves after each
training forward pass is added to the segmentation loss; validation and inference never compute it.
``*_smoke`` variants add :class:`~nnunet_kd.trainers.smoke.SmokeSchedule` for tests and CPU demos.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager
from torch import nn
from torch._dynamo import OptimizedModule

from nnunet_kd.networks.cascaded_unet import CascadedUNet
from nnunet_kd.networks.common import UNetSpec
from nnunet_kd.networks.modality_encoder_unet import ModalityEncoderUNet
from nnunet_kd.networks.residual_unet import ResidualUNet
from nnunet_kd.networks.unet import IsenseeUNet
from nnunet_kd.trainers.smoke import SmokeSchedule


def unwrap_network(network: nn.Module) -> nn.Module:
    """The plain module inside nnU-Net's DDP / ``torch.compile`` wrappers."""
    if isinstance(network, nn.parallel.DistributedDataParallel):
        network = network.module
    if isinstance(network, OptimizedModule):
        network = network._orig_mod
    return network


class AuxiliaryLoss(nn.Module):
    """``loss(output, target) + aux()``: adds a loss the network computed during its forward pass.

    ``aux`` returns a scalar tensor or None (nothing to add, e.g. in eval mode). The network is reached through
    a callable, not stored as a submodule, so the loss holds no parameters.
    """

    def __init__(self, loss: nn.Module, aux: Callable[[], torch.Tensor | None]) -> None:
        super().__init__()
        self.loss = loss
        self._aux = aux
        self.aux_sum = 0.0
        self.aux_count = 0

    def forward(self, *args, **kwargs) -> torch.Tensor:
        value = self.loss(*args, **kwargs)
        extra = self._aux()
        if extra is None:
            return value
        self.aux_sum += float(extra.detach())
        self.aux_count += 1
        return value + extra

    def pop_mean(self) -> float | None:
        """Mean auxiliary loss since the last call (None if none was added)."""
        mean = self.aux_sum / self.aux_count if self.aux_count else None
        self.aux_sum, self.aux_count = 0.0, 0
        return mean


class ArchitectureTrainer(nnUNetTrainer):
    """Stock nnU-Net training of :attr:`network_class` built from the plans; a variant sets that attribute (and,
    for extra constructor arguments, overrides :meth:`network_kwargs`).

    ``build_network_architecture`` is a classmethod so that ``nnUNetv2_predict`` (which calls it on the class)
    rebuilds the same network.
    """

    network_class: type[nn.Module]

    @classmethod
    def network_kwargs(cls) -> dict:
        return {}

    @classmethod
    def build_network_architecture(cls, plans_manager: PlansManager, configuration_manager: ConfigurationManager,
                                   num_input_channels: int, num_output_channels: int,
                                   enable_deep_supervision: bool = True) -> nn.Module:
        spec = UNetSpec.from_configuration(configuration_manager)
        return cls.network_class(spec, num_input_channels, num_output_channels, enable_deep_supervision,
                                 **cls.network_kwargs())


class nnUNetTrainerUNet(ArchitectureTrainer):
    """3D U-Net after Isensee et al. 2018: InstanceNorm, LeakyReLU, trilinear upsampling in the decoder."""

    network_class = IsenseeUNet


class nnUNetTrainerResidualUNet(ArchitectureTrainer):
    """Residual U-Net after Myronenko 2018: initial conv + spatial dropout 0.2, pre-activation residual blocks
    (GroupNorm(8), ReLU) 1, 2, ..., 2, 4 per encoder stage, strided-conv downsampling, one block per decoder stage.

    ``use_vae`` (class attribute; True in :class:`nnUNetTrainerResidualUNet_VAE`) adds the VAE branch that
    reconstructs the input from the bottleneck, weighted ``vae_l2_weight`` and ``vae_kl_weight`` (0.1 each, as
    in the paper); the branch is part of the network class's arguments so that ``nnUNetv2_predict`` rebuilds the
    branch whose weights are in the checkpoint; prediction never runs it.
    """

    network_class = ResidualUNet
    use_vae: bool = False
    vae_l2_weight: float = 0.1
    vae_kl_weight: float = 0.1

    @classmethod
    def network_kwargs(cls) -> dict:
        return {"vae": cls.use_vae, "vae_l2_weight": cls.vae_l2_weight, "vae_kl_weight": cls.vae_kl_weight}

    def _build_loss(self):
        loss = super()._build_loss()
        if not self.use_vae:
            return loss
        network = unwrap_network(self.network)
        return AuxiliaryLoss(loss, network.pop_auxiliary_loss)

    def on_train_epoch_end(self, train_outputs: list[dict]) -> None:
        super().on_train_epoch_end(train_outputs)
        if isinstance(self.loss, AuxiliaryLoss):
            mean = self.loss.pop_mean()
            if mean is not None:
                terms = unwrap_network(self.network).last_vae_terms
                last = ", ".join(f"{k} {float(v):.4f}" for k, v in terms.items())
                self.print_to_log_file(f"VAE loss (weighted, epoch mean): {np.round(mean, 4)}; last batch {last}")


class nnUNetTrainerResidualUNet_VAE(nnUNetTrainerResidualUNet):
    """Residual U-Net with Myronenko's VAE regulariser (L2 reconstruction + KL, 0.1 each)."""

    use_vae = True


class nnUNetTrainerCascadedUNet(ArchitectureTrainer):
    """Cascaded U-Net after Lachinov et al. 2018: U-Nets on the patch downscaled to stage-1 and stage-2
    resolution feed their outputs into the full-resolution U-Net; each member fills one deep-supervision slot."""

    network_class = CascadedUNet


class nnUNetTrainerModalityEncoderUNet(ArchitectureTrainer):
    """One residual encoder per modality, fused per stage into one shared residual decoder (InstanceNorm, ReLU)."""

    network_class = ModalityEncoderUNet


class nnUNetTrainerUNet_smoke(SmokeSchedule, nnUNetTrainerUNet):
    """nnUNetTrainerUNet with the smoke schedule (tests, CPU demos)."""


class nnUNetTrainerResidualUNet_smoke(SmokeSchedule, nnUNetTrainerResidualUNet):
    """nnUNetTrainerResidualUNet with the smoke schedule (tests, CPU demos)."""


class nnUNetTrainerResidualUNet_VAE_smoke(SmokeSchedule, nnUNetTrainerResidualUNet_VAE):
    """nnUNetTrainerResidualUNet_VAE with the smoke schedule (tests, CPU demos)."""


class nnUNetTrainerCascadedUNet_smoke(SmokeSchedule, nnUNetTrainerCascadedUNet):
    """nnUNetTrainerCascadedUNet with the smoke schedule (tests, CPU demos)."""


class nnUNetTrainerModalityEncoderUNet_smoke(SmokeSchedule, nnUNetTrainerModalityEncoderUNet):
    """nnUNetTrainerModalityEncoderUNet with the smoke schedule (tests, CPU demos)."""
