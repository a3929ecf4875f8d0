"""Reference tests of the Barlow Twins loss module."""

from __future__ import annotations

import pytest
import torch

from nnunet_kd.losses.barlow_twins import BarlowTwinsLoss


def reference_barlow(z_a: torch.Tensor, z_b: torch.Tensor, lambd: float, eps: float = 1e-5) -> torch.Tensor:
    """Straightforward per-element implementation, samples = batch x positions, normalised by D."""
    b, d = z_a.shape[:2]
    a = z_a.permute(0, *range(2, z_a.ndim), 1).reshape(-1, d).double()
    c_ = z_b.permute(0, *range(2, z_b.ndim), 1).reshape(-1, d).double()
    n = a.shape[0]
    a = (a - a.mean(0)) / torch.sqrt(a.var(0, unbiased=False) + eps)
    c_ = (c_ - c_.mean(0)) / torch.sqrt(c_.var(0, unbiased=False) + eps)
    total = torch.zeros((), dtype=torch.float64)
    for i in range(d):
        for j in range(d):
            cij = (a[:, i] * c_[:, j]).sum() / n
            total = total + ((1 - cij) ** 2 if i == j else lambd * cij ** 2)
    return total / d


def test_matches_reference_on_random_inputs():
    torch.manual_seed(0)
    za, zb = torch.randn(2, 6, 3, 4, 5), torch.randn(2, 6, 3, 4, 5)
    loss = BarlowTwinsLoss(off_diagonal_weight=0.01)(za, zb)
    assert torch.allclose(loss.double(), reference_barlow(za, zb, 0.01), rtol=1e-4, atol=1e-6)


def test_flat_samples_equal_spatial_layout():
    torch.manual_seed(1)
    za, zb = torch.randn(2, 4, 3, 3, 3), torch.randn(2, 4, 3, 3, 3)
    flat_a = za.permute(0, 2, 3, 4, 1).reshape(-1, 4)
    flat_b = zb.permute(0, 2, 3, 4, 1).reshape(-1, 4)
    loss = BarlowTwinsLoss()
    assert torch.allclose(loss(za, zb), loss(flat_a, flat_b), atol=1e-6)


def test_zero_for_identical_decorrelated_features():
    # +-1 patterns of orthogonal Hadamard columns: zero mean, unit variance, exactly uncorrelated
    h = torch.tensor([[1.0]])
    for _ in range(3):
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    z = h[:, 1:]  # 8 samples x 7 features, each column zero-mean and orthogonal to the others
    assert BarlowTwinsLoss(eps=0.0)(z, z.clone()).item() == pytest.approx(0.0, abs=1e-10)


def test_bounds_of_the_normalised_loss():
    """Known answers at the extremes: C = -I gives exactly 4 (the on-diagonal maximum); all features identical
    gives C = all ones, i.e. (off-diagonal weight) x (D - 1). The trainers' logged terms are checked against
    4 + lambda_off * (D - 1) (tests/test_kd_trainer.py: barlow_upper_bound)."""
    h = torch.tensor([[1.0]])
    for _ in range(3):
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    z = h[:, 1:]  # 8 x 7, uncorrelated unit-variance features
    assert BarlowTwinsLoss(eps=0.0)(z, -z).item() == pytest.approx(4.0, abs=1e-10)
    same = z[:, :1].repeat(1, 7)
    assert BarlowTwinsLoss(off_diagonal_weight=0.5, eps=0.0)(same, same).item() == pytest.approx(0.5 * 6, abs=1e-10)


def test_identical_correlated_features_cost_only_off_diagonal():
    torch.manual_seed(2)
    base = torch.randn(64, 1)
    z = torch.cat([base, base + 0.01 * torch.randn(64, 1)], 1)  # two nearly identical features
    loss = BarlowTwinsLoss(off_diagonal_weight=1.0, normalize_by_dim=False, eps=0.0)(z, z)
    assert loss.item() == pytest.approx(2.0, rel=1e-2)  # off-diagonal c_01 = c_10 ~ 1


def test_invariant_to_per_feature_scaling():
    torch.manual_seed(3)
    za, zb = torch.randn(2, 5, 4, 4, 4), torch.randn(2, 5, 4, 4, 4)
    scale = torch.tensor([0.1, 1.0, 7.0, 30.0, 2.5]).view(1, 5, 1, 1, 1)
    loss = BarlowTwinsLoss(eps=0.0)
    assert torch.allclose(loss(za, zb), loss(za * scale, zb * scale + 3.0), rtol=1e-5)


def test_gradients_flow_to_both_branches():
    torch.manual_seed(4)
    za = torch.randn(2, 4, 3, 3, 3, requires_grad=True)
    zb = torch.randn(2, 4, 3, 3, 3, requires_grad=True)
    BarlowTwinsLoss()(za, zb).backward()
    assert za.grad is not None and za.grad.abs().sum() > 0
    assert zb.grad is not None and zb.grad.abs().sum() > 0


def test_stop_gradient_into_teacher():
    torch.manual_seed(5)
    teacher = torch.randn(2, 4, 3, 3, 3, requires_grad=True)
    student = torch.randn(2, 4, 3, 3, 3, requires_grad=True)
    BarlowTwinsLoss(detach_teacher=True)(teacher, student).backward()
    assert teacher.grad is None
    assert student.grad is not None and student.grad.abs().sum() > 0


def test_minimising_aligns_student_with_teacher():
    torch.manual_seed(6)
    teacher = torch.randn(128, 4)
    student = torch.randn(128, 4, requires_grad=True)
    loss_fn = BarlowTwinsLoss(detach_teacher=True)
    opt = torch.optim.Adam([student], lr=0.05)
    start = loss_fn(teacher, student).item()
    for _ in range(200):
        opt.zero_grad()
        loss_fn(teacher, student).backward()
        opt.step()
    assert loss_fn(teacher, student).item() < 0.1 * start
    corr = torch.corrcoef(torch.cat([teacher, student.detach()], 1).T)[:4, 4:]
    assert torch.diagonal(corr).min() > 0.9


@pytest.mark.parametrize("shape_a,shape_b", [((2, 4, 3, 3, 3), (2, 5, 3, 3, 3)), ((2, 4, 3, 3, 3), (1, 4, 3, 3, 3))])
def test_rejects_mismatched_shapes(shape_a, shape_b):
    with pytest.raises(ValueError, match="same shape"):
        BarlowTwinsLoss()(torch.randn(*shape_a), torch.randn(*shape_b))


def test_rejects_single_sample():
    with pytest.raises(ValueError, match="at least 2 samples"):
        BarlowTwinsLoss()(torch.randn(1, 4), torch.randn(1, 4))
