"""PixelKDLoss: per-voxel KL of student from teacher outputs at temperature T (sigmoid regions and softmax)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper

from nnunet_kd.losses.pixel_kd import PixelKDLoss
from nnunet_kd.trainers.pixel_kd import deep_supervision_weights


def logits(*shape: int, seed: int, scale: float = 3.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g) * scale


def reference_sigmoid(s: torch.Tensor, t: torch.Tensor, temperature: float) -> float:
    """Binary KL summed over channels, mean over voxels, x T^2, from probabilities in float64."""
    p = torch.sigmoid(t.double() / temperature)
    q = torch.sigmoid(s.double() / temperature)
    kl = p * torch.log(p / q) + (1 - p) * torch.log((1 - p) / (1 - q))
    return float(kl.sum(1).mean() * temperature ** 2)


def reference_softmax(s: torch.Tensor, t: torch.Tensor, temperature: float) -> float:
    """torch's KL divergence, summed over classes and averaged over voxels, x T^2."""
    b, c = s.shape[:2]
    log_q = F.log_softmax(s.double() / temperature, 1).movedim(1, -1).reshape(-1, c)
    p = F.softmax(t.double() / temperature, 1).movedim(1, -1).reshape(-1, c)
    return float(F.kl_div(log_q, p, reduction="batchmean") * temperature ** 2)


@pytest.mark.parametrize("temperature", [1.0, 2.0, 4.0])
def test_sigmoid_matches_reference(temperature: float):
    s, t = logits(2, 3, 5, 6, 4, seed=0), logits(2, 3, 5, 6, 4, seed=1)
    value = PixelKDLoss("sigmoid", temperature)(s, t)
    assert value.item() == pytest.approx(reference_sigmoid(s, t, temperature), rel=1e-5)
    assert value.item() > 0


@pytest.mark.parametrize("temperature", [1.0, 3.0])
def test_softmax_matches_reference(temperature: float):
    s, t = logits(2, 4, 6, 5, 3, seed=2), logits(2, 4, 6, 5, 3, seed=3)
    value = PixelKDLoss("softmax", temperature)(s, t)
    assert value.item() == pytest.approx(reference_softmax(s, t, temperature), rel=1e-5)
    assert value.item() > 0


def test_sigmoid_term_is_bce_minus_teacher_entropy():
    """The definition of 'zero': BCE against the teacher's soft targets minus their entropy (the BCE minimum)."""
    s, t = logits(3, 3, 8, 8, seed=4), logits(3, 3, 8, 8, seed=5)
    temperature = 2.0
    p = torch.sigmoid(t / temperature)
    bce = F.binary_cross_entropy_with_logits(s / temperature, p, reduction="none")
    entropy = F.binary_cross_entropy_with_logits(t / temperature, p, reduction="none")
    expected = (bce - entropy).sum(1).mean() * temperature ** 2
    assert PixelKDLoss("sigmoid", temperature)(s, t).item() == pytest.approx(expected.item(), rel=1e-5)
    assert (bce - entropy).min() > -1e-6  # BCE >= H(p) everywhere: a proper divergence


@pytest.mark.parametrize("mode", ["sigmoid", "softmax"])
@pytest.mark.parametrize("temperature", [1.0, 2.5])
def test_zero_when_student_equals_teacher(mode: str, temperature: float):
    t = logits(2, 3, 4, 4, 4, seed=6, scale=10.0)  # saturated probabilities too
    assert PixelKDLoss(mode, temperature)(t.clone(), t).item() == 0.0
    assert PixelKDLoss(mode, temperature)(t + logits(*t.shape, seed=11, scale=0.5), t).item() > 1e-4


@pytest.mark.parametrize("mode", ["sigmoid", "softmax"])
def test_detached_teacher_gets_no_gradient(mode: str):
    s = logits(2, 3, 4, 4, seed=7).requires_grad_()
    t = logits(2, 3, 4, 4, seed=8).requires_grad_()
    PixelKDLoss(mode, 2.0, detach_teacher=True)(s, t).backward()
    assert s.grad is not None and s.grad.abs().sum() > 0
    assert t.grad is None

    s.grad = None
    PixelKDLoss(mode, 2.0, detach_teacher=False)(s, t).backward()
    assert s.grad.abs().sum() > 0
    assert t.grad is not None and t.grad.abs().sum() > 0


def test_half_precision_inputs_are_computed_in_float32():
    s, t = logits(1, 3, 4, 4, seed=9), logits(1, 3, 4, 4, seed=10)
    value = PixelKDLoss("sigmoid", 2.0)(s.half(), t.half())
    assert value.dtype == torch.float32
    assert value.item() == pytest.approx(reference_sigmoid(s.half().float(), t.half().float(), 2.0), rel=1e-4)


def test_deep_supervision_weights_like_nnunet():
    assert deep_supervision_weights(1) == (1.0,)
    w = deep_supervision_weights(4)
    assert w == pytest.approx((1 / 1.75, 0.5 / 1.75, 0.25 / 1.75, 0.0))
    student = [logits(2, 3, 8 // 2 ** i, 8 // 2 ** i, seed=20 + i) for i in range(4)]
    teacher = [logits(2, 3, 8 // 2 ** i, 8 // 2 ** i, seed=30 + i) for i in range(4)]
    loss = PixelKDLoss("sigmoid", 2.0)
    total = DeepSupervisionWrapper(loss, w)(student, teacher)
    assert total.item() == pytest.approx(sum(wi * loss(s, t).item() for wi, s, t in zip(w, student, teacher)))


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="mode"):
        PixelKDLoss("tanh")
    with pytest.raises(ValueError, match="temperature"):
        PixelKDLoss("sigmoid", 0.0)
    with pytest.raises(ValueError, match="same shape"):
        PixelKDLoss()(torch.zeros(1, 3, 4), torch.zeros(1, 2, 4))
