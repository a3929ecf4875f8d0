"""Pixel-level distillation as an option of the KD trainer: the student's outputs pulled toward the teacher's.

:class:`PixelKDMixin` adds the loss term ``pixel_kd_loss`` (:class:`nnunet_kd.losses.pixel_kd.PixelKDLoss`: binary KL
for nnU-Net's sigmoid region outputs, KL for softmax outputs, at temperature ``pixel_kd_temperature``, times T^2) at
every deep-supervision scale, weighted across scales exactly like nnU-Net's segmentation loss (its
``DeepSupervisionWrapper`` weights 1/2^i, the lowest scale 0, normalised). It only extends the KD trainer's hooks
``loss_weights`` and ``distillation_terms``. The ablation "which term helps?" is one ``-tr`` flag each:

* ``nnUNetTrainerBarlowKD``          -- Barlow Twins only (seed 000's latent term);
* ``nnUNetTrainerBarlowKD_PixelKD``  -- Barlow Twins + pixel KD;
* ``nnUNetTrainerPixelKD``           -- pixel KD only (``barlow_weight = 0``: no projectors);
* ``nnUNetTrainerStudentOnly``       -- neither (no teacher).
"""

from __future__ import annotations

import torch
from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
from torch import nn

from nnunet_kd.losses.pixel_kd import PixelKDLoss
from nnunet_kd.trainers.barlow_kd import nnUNetTrainerBarlowKD
from nnunet_kd.trainers.smoke import SmokeSchedule

PIXEL_KD_TERM = "pixel_kd_loss"


def deep_supervision_weights(n_scales: int) -> tuple[float, ...]:
    """nnU-Net's deep-supervision weights for ``n_scales`` outputs: 1/2^i, the lowest resolution 0, summing to 1."""
    if n_scales == 1:
        return (1.0,)
    raw = [1 / 2 ** i for i in range(n_scales)]
    raw[-1] = 0.0
    total = sum(raw)
    return tuple(w / total for w in raw)


class PixelKDMixin:
    """Adds ``pixel_kd_loss`` to a KD trainer (put it before the trainer in the bases)."""

    #: Weight of the pixel KD term in the total loss (0 switches it off).
    pixel_kd_weight: float = 1.0
    #: Softening temperature T of both outputs; the term is scaled by T^2 so gradients keep their size.
    pixel_kd_temperature: float = 2.0
    #: Stop pixel-KD gradients into the teacher (classic KD: only the student is pulled).
    pixel_kd_detach_teacher: bool = True

    _pixel_kd_module: nn.Module | None = None

    @property
    def use_pixel_kd(self) -> bool:
        return bool(self.use_teacher and self.pixel_kd_weight > 0)  # type: ignore[attr-defined]

    def loss_weights(self) -> dict[str, float]:
        weights = super().loss_weights()  # type: ignore[misc]
        if self.use_pixel_kd:
            weights[PIXEL_KD_TERM] = self.pixel_kd_weight
        return weights

    def pixel_kd_loss(self) -> nn.Module:
        """The pixel KD loss, wrapped for deep supervision with the segmentation loss's scale weights."""
        if self._pixel_kd_module is None:
            mode = "sigmoid" if self.label_manager.has_regions else "softmax"  # type: ignore[attr-defined]
            loss: nn.Module = PixelKDLoss(mode, self.pixel_kd_temperature, self.pixel_kd_detach_teacher)
            if self.enable_deep_supervision:  # type: ignore[attr-defined]
                seg_loss = self.loss  # type: ignore[attr-defined]
                weights = getattr(seg_loss, "weight_factors", None) or deep_supervision_weights(
                    len(self._get_deep_supervision_scales()))  # type: ignore[attr-defined]
                loss = DeepSupervisionWrapper(loss, weights)
            self._pixel_kd_module = loss
        return self._pixel_kd_module

    def distillation_terms(self, student_out, teacher_out, student_latent: torch.Tensor,
                           teacher_latent: torch.Tensor) -> dict[str, torch.Tensor]:
        terms = super().distillation_terms(student_out, teacher_out, student_latent,  # type: ignore[misc]
                                           teacher_latent)
        if self.use_pixel_kd:
            if isinstance(student_out, (list, tuple)) != isinstance(self.pixel_kd_loss(), DeepSupervisionWrapper):
                raise RuntimeError("pixel KD: deep supervision of the outputs does not match the trainer's setting")
            terms[PIXEL_KD_TERM] = self.pixel_kd_loss()(student_out, teacher_out)
        return terms


class nnUNetTrainerBarlowKD_PixelKD(PixelKDMixin, nnUNetTrainerBarlowKD):
    """Seed 000's KD (T1ce + FLAIR student, Barlow Twins) plus pixel-level distillation of the outputs."""


class nnUNetTrainerPixelKD(PixelKDMixin, nnUNetTrainerBarlowKD):
    """Pixel-level distillation only: teacher and student trained together, no Barlow Twins, no projectors."""

    barlow_weight = 0.0


class nnUNetTrainerBarlowKD_PixelKD_smoke(SmokeSchedule, nnUNetTrainerBarlowKD_PixelKD):
    pass


class nnUNetTrainerPixelKD_smoke(SmokeSchedule, nnUNetTrainerPixelKD):
    pass
