"""Barlow Twins redundancy-reduction loss between teacher and student latent features.

Zbontar et al. (2021) compute, over a batch of N samples, the cross-correlation matrix ``C`` (D x D) of two
embeddings that were each standardised per feature over the batch, and minimise

    L = sum_i (1 - C_ii)^2 + lambda_off * sum_{i != j} C_ij^2.

Seed 000 (Choi et al. 2023) uses it to pull a limited-modality student's bottleneck towards the full-modality
teacher's. nnU-Net trains 3D patches with a batch size of 2, far too few samples for a D x D correlation, so
here **every spatial position of the (projected) bottleneck of every batch element is a sample**:
features of shape (B, D, *spatial) become N = B * prod(spatial) samples of dimension D. (nnU-Net's BraTS
plans give a 4x4x4 bottleneck for 128^3 patches: N = 128 samples at batch size 2, so keep D <= ~N.)

Choices, all constructor arguments:

* ``off_diagonal_weight`` (lambda_off): 5e-3 as in the Barlow Twins paper;
* ``normalize_by_dim``: divide the loss by D, so its scale (about 1 for unrelated features, 0 at the optimum) does
  not depend on the projector width and a single trainer weight works for any D;
* ``detach_teacher``: stop gradients into the teacher branch (only the student is pulled); the KD trainer's
  ``_DetachTeacher`` variant does not use it but detaches the teacher's bottleneck *before* the teacher
  projector, so that projector still learns;
* ``eps``: added to the per-feature variance before standardising.
"""

from __future__ import annotations

import torch
from torch import nn


def _as_samples(z: torch.Tensor) -> torch.Tensor:
    """(B, D, *spatial) -> (B * prod(spatial), D); (N, D) stays as is."""
    if z.ndim == 2:
        return z
    return z.movedim(1, -1).reshape(-1, z.shape[1])


class BarlowTwinsLoss(nn.Module):
    """Barlow Twins loss treating batch elements *and* spatial positions as samples. See module docstring."""

    def __init__(self, off_diagonal_weight: float = 5e-3, normalize_by_dim: bool = True,
                 detach_teacher: bool = False, eps: float = 1e-5):
        super().__init__()
        self.off_diagonal_weight = float(off_diagonal_weight)
        self.normalize_by_dim = bool(normalize_by_dim)
        self.detach_teacher = bool(detach_teacher)
        self.eps = float(eps)

    def cross_correlation(self, teacher: torch.Tensor, student: torch.Tensor) -> torch.Tensor:
        """The D x D cross-correlation matrix of the standardised features."""
        if teacher.shape != student.shape:
            raise ValueError(f"Barlow Twins needs teacher and student features of the same shape, got "
                             f"{tuple(teacher.shape)} (teacher) and {tuple(student.shape)} (student)")
        if teacher.ndim < 2:
            raise ValueError(f"features must be (N, D) or (B, D, *spatial), got shape {tuple(teacher.shape)}")
        if self.detach_teacher:
            teacher = teacher.detach()
        a = _as_samples(teacher).float()
        b = _as_samples(student).float()
        n = a.shape[0]
        if n < 2:
            raise ValueError(f"Barlow Twins needs at least 2 samples (batch x positions), got {n}")
        a = (a - a.mean(0)) / torch.sqrt(a.var(0, unbiased=False) + self.eps)
        b = (b - b.mean(0)) / torch.sqrt(b.var(0, unbiased=False) + self.eps)
        return a.T @ b / n

    def forward(self, teacher: torch.Tensor, student: torch.Tensor) -> torch.Tensor:
        c = self.cross_correlation(teacher, student)
        diagonal = torch.diagonal(c)
        on = (1 - diagonal).pow(2).sum()
        off = c.pow(2).sum() - diagonal.pow(2).sum()
        loss = on + self.off_diagonal_weight * off
        if self.normalize_by_dim:
            loss = loss / c.shape[0]
        return loss
