"""Pixel-level (output) distillation: a per-voxel divergence of the student's predictions from the teacher's.

Seed 000 distils "on the pixel level" as well as on the latent space. This module measures, at temperature ``T``,
how far the student's output distribution at every voxel is from the teacher's:

* **softmax outputs** (one categorical distribution over the classes per voxel):
  ``T^2 * KL(softmax(t / T) || softmax(s / T))`` (Hinton et al. 2015);
* **sigmoid (region) outputs** -- nnU-Net's BraTS training with WT/TC/ET regions, one independent Bernoulli per
  region channel: the BCE of the student logits against the teacher's probabilities ``p = sigmoid(t / T)`` *minus the
  teacher's entropy* ``H(p)``, i.e. the binary KL divergence ``KL(p || q) = p log(p/q) + (1-p) log((1-p)/(1-q))``
  with ``q = sigmoid(s / T)``, also scaled by ``T^2``. Plain BCE against soft targets is minimal but not zero when
  the student equals the teacher (its minimum is ``H(p)``); subtracting ``H(p)``, which does not depend on the
  student, gives the same student gradients and a proper divergence: >= 0, and exactly 0 when ``s == t``.

Reduction: the divergence of one voxel is summed over the channels (over the classes for softmax, the sum of the
regions' binary KLs -- the KL of the joint of independent Bernoullis -- for sigmoid) and averaged over batch
elements and voxels. It is computed in float32 whatever the input dtype. With ``detach_teacher`` (default) no
gradient flows into the teacher's logits.

For deep-supervision outputs (lists, highest resolution first) wrap it in nnU-Net's
``nnunetv2.training.loss.deep_supervision.DeepSupervisionWrapper`` with nnU-Net's scale weights, as the pixel-KD
trainers do.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

#: Output types: ``sigmoid`` for nnU-Net region training (BraTS WT/TC/ET), ``softmax`` for label training.
MODES: tuple[str, ...] = ("sigmoid", "softmax")


def binary_kl_with_logits(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Element-wise ``KL(sigmoid(t) || sigmoid(s))`` from logits (numerically stable, exactly 0 where ``s == t``).

    Equals ``BCE(s, p) - H(p)`` with ``p = sigmoid(t)``: ``p (log p - log q) + (1 - p) (log(1 - p) - log(1 - q))``.
    """
    p = torch.sigmoid(teacher_logits)
    log_p, log_not_p = F.logsigmoid(teacher_logits), F.logsigmoid(-teacher_logits)
    log_q, log_not_q = F.logsigmoid(student_logits), F.logsigmoid(-student_logits)
    return p * (log_p - log_q) + (1 - p) * (log_not_p - log_not_q)


def categorical_kl_with_logits(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                               dim: int = 1) -> torch.Tensor:
    """``KL(softmax(t) || softmax(s))`` along ``dim`` (the class axis), keeping the other axes."""
    log_p = F.log_softmax(teacher_logits, dim=dim)
    log_q = F.log_softmax(student_logits, dim=dim)
    return (log_p.exp() * (log_p - log_q)).sum(dim)


class PixelKDLoss(nn.Module):
    """``T^2`` x per-voxel KL divergence of student from teacher outputs (see the module docstring).

    ``forward(student_logits, teacher_logits)`` takes two tensors of the same shape (B, C, *spatial) and returns a
    scalar: the divergence summed over channels and averaged over batch and voxels.
    """

    def __init__(self, mode: str = "sigmoid", temperature: float = 1.0, detach_teacher: bool = True):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"pixel KD mode must be one of {MODES}, got {mode!r}")
        if not temperature > 0:
            raise ValueError(f"pixel KD temperature must be > 0, got {temperature}")
        self.mode = mode
        self.temperature = float(temperature)
        self.detach_teacher = bool(detach_teacher)

    def extra_repr(self) -> str:
        return f"mode={self.mode}, temperature={self.temperature}, detach_teacher={self.detach_teacher}"

    def forward(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        if student_logits.shape != teacher_logits.shape:
            raise ValueError(f"pixel KD needs student and teacher outputs of the same shape, got "
                             f"{tuple(student_logits.shape)} (student) and {tuple(teacher_logits.shape)} (teacher)")
        if student_logits.ndim < 2:
            raise ValueError(f"outputs must be (B, C, *spatial), got shape {tuple(student_logits.shape)}")
        if self.detach_teacher:
            teacher_logits = teacher_logits.detach()
        t = self.temperature
        s = student_logits.float() / t
        q = teacher_logits.float() / t
        if self.mode == "sigmoid":
            per_voxel = binary_kl_with_logits(s, q).sum(1)
        else:
            per_voxel = categorical_kl_with_logits(s, q, dim=1)
        return per_voxel.mean() * (t * t)
