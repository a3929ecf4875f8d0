"""What one KD training step does to gradients, logs and checkpoints, on an in-process trainer (CPU, tiny patches).

Detached teacher (Barlow Twins reaches the teacher projector, not the teacher network), one gradient clip per
network, the student's loss as nnU-Net's ``train_losses``, the teacher compiled like the student, the checkpoint
entries equal to nnU-Net's own, and cascade configurations refused before anything is written.
"""

from __future__ import annotations

import json

import pytest
import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from conftest import BIN, NnunetEnv, random_batch

pytestmark = pytest.mark.slow  # needs the preprocessed session dataset


def kd_trainer(env: NnunetEnv, name: str, monkeypatch, **attributes):
    trainer = env.make_trainer(name, monkeypatch)
    for key, value in attributes.items():
        setattr(trainer, key, value)
    trainer.initialize()
    return trainer


def freeze_weights(trainer) -> None:
    """Learning rate 0: optimizer steps leave the weights unchanged, so repeated steps see the same network."""
    for group in trainer.optimizer.param_groups:
        group["lr"] = 0.0


def grad_norm(params) -> float:
    grads = [p.grad for p in params if p.grad is not None]
    return float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))) if grads else 0.0


@pytest.mark.parametrize("name, barlow_reaches_teacher", [
    ("nnUNetTrainerBarlowKD", True),
    ("nnUNetTrainerBarlowKD_DetachTeacher", False),
])
def test_barlow_twins_trains_the_teacher_projector_and_reaches_the_teacher_only_without_detach(
        nnunet_env: NnunetEnv, monkeypatch, name: str, barlow_reaches_teacher: bool):
    # teacher DS loss weighted 0: every gradient the teacher network gets comes from Barlow Twins
    trainer = kd_trainer(nnunet_env, name, monkeypatch, teacher_loss_weight=0.0)
    out = trainer.train_step(random_batch(trainer))
    assert out["barlow_loss"] > 0
    for projector in ("teacher_projector", "student_projector"):
        grad = trainer.kd_modules[projector][0].weight.grad
        assert grad is not None and grad.abs().sum() > 0, f"{projector} got no gradient"
    teacher_grad = grad_norm(trainer.kd_modules["teacher"].encoder.parameters())
    assert (teacher_grad > 0) == barlow_reaches_teacher, teacher_grad
    assert grad_norm(trainer.network.encoder.parameters()) > 0  # the student is pulled either way


def test_each_network_is_clipped_on_its_own(nnunet_env: NnunetEnv, monkeypatch):
    trainer = kd_trainer(nnunet_env, "nnUNetTrainerBarlowKD", monkeypatch, teacher_loss_weight=1e6)
    freeze_weights(trainer)
    batch = random_batch(trainer)
    student, teacher = list(trainer.network.parameters()), list(trainer.kd_modules["teacher"].parameters())
    zero = [torch.zeros_like(p) for p in student]  # nnU-Net's lowest deep-supervision head gets no gradient

    trainer.grad_clip_norm = float("inf")
    trainer.train_step(batch)
    raw_student = [z if p.grad is None else p.grad.clone() for p, z in zip(student, zero)]
    assert grad_norm(teacher) > 1e3 * grad_norm(student)  # the huge teacher gradient

    clip = grad_norm(student) / 2  # so that the student's own clip is active too
    trainer.grad_clip_norm = clip
    trainer.train_step(batch)

    # reference: torch's clip of the student's raw gradient alone
    alone = [torch.nn.Parameter(torch.zeros_like(g)) for g in raw_student]
    for p, g in zip(alone, raw_student):
        p.grad = g.clone()
    torch.nn.utils.clip_grad_norm_(alone, clip)
    for p, ref, z in zip(student, alone, zero):
        torch.testing.assert_close(z if p.grad is None else p.grad, ref.grad, rtol=1e-4, atol=1e-7)
    assert grad_norm(teacher) == pytest.approx(clip, rel=1e-3)
    assert set(trainer.gradient_clip_groups()) == {"student", "teacher", "teacher_projector", "student_projector"}


def test_train_losses_is_the_students_ds_loss_and_each_term_is_logged(nnunet_env: NnunetEnv, monkeypatch):
    trainer = kd_trainer(nnunet_env, "nnUNetTrainerBarlowKD", monkeypatch)
    batch = random_batch(trainer)
    with torch.no_grad():  # independent reference: nnU-Net's DS loss of the student on its two channels
        expected = float(trainer.loss(trainer.network(batch["data"][:, [1, 3]]), batch["target"]))
    outputs = [trainer.train_step(batch), trainer.train_step(random_batch(trainer, seed=1))]  # logs: epoch means
    assert float(outputs[0]["loss"]) == pytest.approx(expected, rel=1e-5)
    assert float(outputs[0]["loss"]) != pytest.approx(float(outputs[1]["loss"]), rel=1e-5)  # a mean, not a copy
    for out in outputs:
        assert out["kd_total_loss"] == pytest.approx(out["student_seg_loss"] + out["teacher_seg_loss"]
                                                     + trainer.barlow_weight * out["barlow_loss"], rel=1e-5)
        assert out["kd_total_loss"] > float(out["loss"])

    trainer.on_train_epoch_end(outputs)
    logged = trainer.logger.get_checkpoint()
    mean = lambda key: sum(float(o[key]) for o in outputs) / len(outputs)  # noqa: E731
    assert logged["train_losses"][-1] == pytest.approx(mean("student_seg_loss"), rel=1e-5)
    for key in ("kd_total_loss", "student_seg_loss", "teacher_seg_loss", "barlow_loss"):
        assert logged[key][-1] == pytest.approx(mean(key), rel=1e-5), key


def test_checkpoint_entries_are_nnunets_plus_the_kd_state(nnunet_env: NnunetEnv, monkeypatch, tmp_path):
    trainer = kd_trainer(nnunet_env, "nnUNetTrainerBarlowKD", monkeypatch)
    trainer.save_checkpoint(str(tmp_path / "kd.pth"))
    nnUNetTrainer.save_checkpoint(trainer, str(tmp_path / "stock.pth"))  # nnU-Net's own writer, for its keys
    ours = torch.load(tmp_path / "kd.pth", map_location="cpu", weights_only=False)
    stock = torch.load(tmp_path / "stock.pth", map_location="cpu", weights_only=False)
    assert set(ours) == set(stock) | {"nnunet_kd"}
    assert ours["network_weights"].keys() == stock["network_weights"].keys()
    assert all(torch.equal(v, stock["network_weights"][k]) for k, v in ours["network_weights"].items())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kd.pth", "stock.pth"]  # no temporary file left


def test_teacher_is_compiled_when_the_student_is(nnunet_env: NnunetEnv, monkeypatch):
    from torch._dynamo import OptimizedModule

    from nnunet_kd.trainers.barlow_kd import unwrap

    if not hasattr(torch, "compile"):
        pytest.skip("this torch has no torch.compile")
    compile_ = torch.compile  # nnU-Net compiles with inductor; aot_eager needs no C++ compiler and is quick on a CPU
    monkeypatch.setattr(torch, "compile", lambda module, **kw: compile_(module, backend="aot_eager"))
    trainer = nnunet_env.make_trainer("nnUNetTrainerBarlowKD", monkeypatch)
    monkeypatch.setattr(trainer, "_do_i_compile", lambda: True)  # nnU-Net never compiles on the CPU
    trainer.initialize()
    assert isinstance(trainer.network, OptimizedModule)
    assert isinstance(trainer.teacher_network, OptimizedModule)
    assert unwrap(trainer.teacher_network) is trainer.kd_modules["teacher"]

    out = trainer.train_step(random_batch(trainer))  # the bottleneck hooks feed Barlow Twins through compiled code

    assert out["barlow_loss"] > 0 and torch.isfinite(torch.tensor(out["barlow_loss"]))
    assert grad_norm(trainer.kd_modules["teacher"].encoder.parameters()) > 0
    assert not any("_orig_mod" in k for k in trainer.kd_checkpoint_state()["kd_modules"])


def test_cascade_configuration_is_refused_before_anything_is_written(nnunet_env: NnunetEnv):
    trainer, plans_name = "nnUNetTrainerBarlowKD", "nnunetkdCascadeTestPlans"
    folder = nnunet_env.preprocessed / nnunet_env.dataset_name
    plans = json.loads((folder / "nnUNetPlans.json").read_text())
    plans["plans_name"] = plans_name
    plans["configurations"]["3d_lowres"] = {"inherits_from": "3d_fullres", "next_stage": "3d_cascade_fullres"}
    plans["configurations"]["3d_cascade_fullres"] = {"inherits_from": "3d_fullres", "previous_stage": "3d_lowres"}
    plans_file = folder / f"{plans_name}.json"
    plans_file.write_text(json.dumps(plans))
    try:
        proc = nnunet_env.run(str(BIN / "nnUNetv2_train"), str(nnunet_env.dataset_id), "3d_cascade_fullres", "0",
                              "-tr", trainer, "-p", plans_name, "-device", "cpu", check=False)
    finally:
        plans_file.unlink()
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"nnunet_kd.errors.ConfigurationError: {trainer} does not support the cascade "
                           f"configuration 3d_cascade_fullres (previous stage 3d_lowres)")
    assert "channels" not in proc.stderr.replace(last, "")  # not the old misleading channel error
    assert not nnunet_env.model_folder(trainer, plans_name, "3d_cascade_fullres").exists()
