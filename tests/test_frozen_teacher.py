"""Two-stage KD (frozen pre-trained teacher) and the warm-started teacher, through nnU-Net's own commands (CPU)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from conftest import BIN, IN_PROCESS_ENV_KEYS, NnunetEnv, random_batch

pytestmark = pytest.mark.slow

TEACHER = "nnUNetTrainer_smoke"
FROZEN = "nnUNetTrainerBarlowKD_FrozenTeacher_smoke"
WARM = "nnUNetTrainerBarlowKD_WarmTeacher"
FIRST_CONV = "encoder.stages.0.0.convs.0.conv.weight"


def train(env: NnunetEnv, trainer: str, fold: str = "0", check: bool = True):
    return env.run(str(BIN / "nnUNetv2_train"), str(env.dataset_id), "3d_fullres", fold, "-tr", trainer,
                   "-device", "cpu", check=check)


def config_file(env: NnunetEnv) -> Path:
    return env.preprocessed / env.dataset_name / "nnunet_kd_teacher__nnUNetPlans__3d_fullres.json"


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


@pytest.fixture(scope="module")
def teacher(nnunet_env: NnunetEnv) -> Path:
    """A stock 4-channel nnUNetTrainer_smoke model (fold 0), named as teacher with the installed console script."""
    folder = nnunet_env.ensure_trained(TEACHER)  # shared with test_registration.py
    proc = nnunet_env.run(str(BIN / "nnunet-kd"), "set-teacher", "-d", str(nnunet_env.dataset_id), "-c",
                          "3d_fullres", "--teacher-trainer", TEACHER)
    assert str(config_file(nnunet_env)) in proc.stdout
    return folder


@pytest.fixture(scope="module")
def frozen_run(nnunet_env: NnunetEnv, teacher: Path) -> Path:
    train(nnunet_env, FROZEN)
    return nnunet_env.model_folder(FROZEN)


@contextmanager
def teacher_config(env: NnunetEnv, trainer: str | None, fold=None) -> Iterator[None]:
    """Temporarily name another teacher (written without checks, as a hand-edited JSON would be); None: no JSON."""
    from nnunet_kd.trainers.teacher_config import TeacherConfig, write_teacher_config

    path = config_file(env)
    before = path.read_text() if path.is_file() else None
    if trainer is None:
        path.unlink(missing_ok=True)
    else:
        write_teacher_config(env.dataset_name, TeacherConfig(trainer, "nnUNetPlans", "3d_fullres", fold),
                             preprocessed=env.preprocessed)
    try:
        yield
    finally:
        if before is None:
            path.unlink(missing_ok=True)
        else:
            path.write_text(before)


def fake_teacher(env: NnunetEnv, teacher: Path, name: str, change) -> str:
    """A copy of the smoke teacher whose checkpoint metadata ``change`` edits (e.g. a model of another dataset)."""
    trainer = f"nnUNetTrainer{name}"
    folder = env.model_folder(trainer) / "fold_0"
    folder.mkdir(parents=True, exist_ok=True)
    checkpoint = load(teacher / "fold_0" / "checkpoint_final.pth")
    change(checkpoint)
    torch.save(checkpoint, folder / "checkpoint_final.pth")
    return trainer


@pytest.fixture
def env_vars(nnunet_env: NnunetEnv, monkeypatch) -> None:
    for key in IN_PROCESS_ENV_KEYS:
        monkeypatch.setenv(key, nnunet_env.env[key])


def make_trainer(env: NnunetEnv, name: str, fold: int = 0):
    from nnunetv2.run.run_training import get_trainer_from_args

    return get_trainer_from_args(str(env.dataset_id), "3d_fullres", fold, name, device=torch.device("cpu"))


# ---------------------------------------------------------------------------------------------- through nnUNetv2_train

def test_frozen_teacher_weights_are_bit_identical_to_the_stock_model(teacher: Path, frozen_run: Path):
    stock = load(teacher / "fold_0" / "checkpoint_final.pth")["network_weights"]
    kd = load(frozen_run / "fold_0" / "checkpoint_final.pth")
    teacher_weights = {k[len("teacher."):]: v for k, v in kd["nnunet_kd"]["kd_modules"].items()
                       if k.startswith("teacher.")}
    assert teacher_weights.keys() == stock.keys()
    for key, value in stock.items():
        assert torch.equal(teacher_weights[key], value), key
    # ... while the student did train, on 2 channels
    assert kd["network_weights"][FIRST_CONV].shape[1] == 2
    assert teacher_weights[FIRST_CONV].shape[1] == 4


def test_frozen_run_optimises_only_student_and_projectors(teacher: Path, frozen_run: Path):
    kd = load(frozen_run / "fold_0" / "checkpoint_final.pth")
    stock_groups = load(teacher / "fold_0" / "checkpoint_final.pth")["optimizer_state"]["param_groups"]
    projector_tensors = [k for k in kd["nnunet_kd"]["kd_modules"] if "projector." in k]
    groups = kd["optimizer_state"]["param_groups"]
    # the student (same network as the stock model) and the projectors; no teacher tensor
    assert len(groups) == 2 and len(groups[0]["params"]) == len(stock_groups[0]["params"])
    assert len(groups[1]["params"]) == len(projector_tensors) == 8
    logging = kd["logging"]
    assert "teacher_seg_loss" not in logging
    assert len(logging["barlow_loss"]) == len(logging["student_seg_loss"]) == 2
    assert len(logging["teacher_mean_fg_dice"]) == 2  # the frozen teacher is still validated
    assert json.loads((frozen_run / "dataset.json").read_text())["channel_names"] == {"0": "T1ce", "1": "FLAIR"}
    log = next((frozen_run / "fold_0").glob("training_log_*.txt")).read_text()
    assert f"teacher frozen from {TEACHER} fold 0" in log
    assert (frozen_run / "fold_0" / "validation" / "summary.json").is_file()


def test_teacher_of_another_dataset_stops_nnunetv2_train(nnunet_env: NnunetEnv, teacher: Path):
    other = fake_teacher(nnunet_env, teacher, "OtherDataset",
                         lambda c: c["init_args"]["plans"].update(dataset_name="Dataset999_Other"))
    with teacher_config(nnunet_env, other, fold=0):
        proc = train(nnunet_env, FROZEN, fold="1", check=False)
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("nnunet_kd.errors.ConfigurationError: teacher ")
    assert "it was trained on dataset Dataset999_Other" in last
    assert not (nnunet_env.model_folder(FROZEN) / "fold_1").exists()


# ---------------------------------------------------------------------------------------------- in process

def two_input_channels(checkpoint: dict) -> None:
    """What a 2-channel student-only model looks like: full dataset.json recorded, first convolution on 2 channels."""
    weights = checkpoint["network_weights"]
    weights[FIRST_CONV] = weights[FIRST_CONV][:, :2].clone()


def test_set_teacher_refuses_a_network_with_other_input_channels(nnunet_env: NnunetEnv, teacher: Path):
    student = fake_teacher(nnunet_env, teacher, "TwoChannels", two_input_channels)
    before = config_file(nnunet_env).read_text()
    proc = nnunet_env.run(str(BIN / "nnunet-kd"), "set-teacher", "-d", str(nnunet_env.dataset_id), "-c",
                          "3d_fullres", "--teacher-trainer", student, check=False)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "its network takes 2 input channel(s), the dataset has 4" in proc.stderr
    assert config_file(nnunet_env).read_text() == before  # nothing written


@pytest.mark.parametrize("case", ["channels", "input channels", "patch", "no config", "missing fold"])
def test_wrong_teacher_is_refused_when_the_trainer_is_built(nnunet_env: NnunetEnv, teacher: Path, env_vars,
                                                            case: str):
    from nnunet_kd.errors import ConfigurationError

    fold = 0  # teacher fold pinned: the fake teachers have only fold 0
    if case == "channels":
        def change(c):
            c["init_args"]["dataset_json"]["channel_names"] = {"0": "FLAIR", "1": "T1ce", "2": "T2", "3": "T1"}
        trainer, message = fake_teacher(nnunet_env, teacher, "OtherChannels", change), "its channels are"
    elif case == "input channels":
        trainer = fake_teacher(nnunet_env, teacher, "TwoChannels", two_input_channels)
        message = "its network takes 2 input channel(s), the dataset has 4"
    elif case == "patch":
        def change(c):
            c["init_args"]["plans"]["configurations"]["3d_fullres"]["patch_size"] = [32, 32, 32]
        trainer, message = fake_teacher(nnunet_env, teacher, "OtherPatch", change), "another patch size [32, 32, 32]"
    elif case == "no config":
        trainer, message = None, "no teacher set for Dataset517_SynthBraTS"
    else:  # KD fold 3 -> teacher fold 3, which was not trained
        trainer, fold = TEACHER, None
        message = "fold_3/checkpoint_final.pth does not exist (folds with checkpoint_final.pth: 0"
    with teacher_config(nnunet_env, trainer, fold=fold), pytest.raises(ConfigurationError) as info:
        make_trainer(nnunet_env, "nnUNetTrainerBarlowKD_FrozenTeacher", fold=3)
    assert message in str(info.value)
    assert not (nnunet_env.model_folder("nnUNetTrainerBarlowKD_FrozenTeacher") / "fold_3").exists()


@pytest.mark.parametrize("name, terms", [
    ("nnUNetTrainerBarlowKD_FrozenTeacher", {"student_seg_loss", "barlow_loss"}),
    ("nnUNetTrainerBarlowKD_FrozenTeacher_PixelKD", {"student_seg_loss", "barlow_loss", "pixel_kd_loss"}),
])
def test_frozen_train_step_leaves_the_teacher_untouched(nnunet_env: NnunetEnv, teacher: Path, env_vars, name: str,
                                                        terms: set[str]):
    trainer = make_trainer(nnunet_env, name)
    trainer.initialize()
    model = trainer.kd_modules["teacher"]
    stock = load(teacher / "fold_0" / "checkpoint_final.pth")["network_weights"]
    assert all(torch.equal(v, stock[k]) for k, v in model.state_dict().items())
    assert not any(p.requires_grad for p in model.parameters())
    optimised = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    assert not optimised & {id(p) for p in model.parameters()}

    trainer.on_train_epoch_start()  # puts the KD modules in train mode, but not the frozen teacher
    assert not model.training and trainer.kd_modules["student_projector"].training
    seen = {}
    model.register_forward_hook(lambda m, a, o: seen.update(grad=torch.is_grad_enabled(), training=m.training))
    watched = {"student": trainer.network.encoder.stages[0][0].convs[0].conv.weight,
               "student_projector": trainer.kd_modules["student_projector"][0].weight,
               "teacher_projector": trainer.kd_modules["teacher_projector"][0].weight}
    before = {k: v.detach().clone() for k, v in watched.items()}

    out = trainer.train_step(random_batch(trainer))

    assert seen == {"grad": False, "training": False}
    assert set(out) == {"loss", "kd_total_loss", *terms}
    weights = trainer.loss_weights()
    assert out["kd_total_loss"] == pytest.approx(sum(weights[t] * out[t] for t in terms), rel=1e-5)
    assert float(out["loss"]) == out["student_seg_loss"]  # nnU-Net's train_losses: the student's DS loss
    for name, param in watched.items():
        assert not torch.equal(param.detach(), before[name]), f"{name} was not updated"
    assert all(torch.equal(v, stock[k]) for k, v in model.state_dict().items())


def test_warm_teacher_starts_from_the_stock_model_and_keeps_training(nnunet_env: NnunetEnv, teacher: Path,
                                                                     env_vars):
    trainer = make_trainer(nnunet_env, WARM)
    trainer.initialize()
    model = trainer.kd_modules["teacher"]
    stock = load(teacher / "fold_0" / "checkpoint_final.pth")["network_weights"]
    assert all(torch.equal(v, stock[k]) for k, v in model.state_dict().items())
    optimised = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    assert {id(p) for p in model.parameters()} <= optimised
    trainer.on_train_epoch_start()
    assert model.training

    out = trainer.train_step(random_batch(trainer))

    assert set(out) == {"loss", "kd_total_loss", "student_seg_loss", "teacher_seg_loss", "barlow_loss"}
    assert not torch.equal(model.state_dict()[FIRST_CONV], stock[FIRST_CONV])


def test_pinned_teacher_fold_is_used_for_every_kd_fold(nnunet_env: NnunetEnv, teacher: Path, env_vars):
    with teacher_config(nnunet_env, TEACHER, fold=0):
        trainer = make_trainer(nnunet_env, "nnUNetTrainerBarlowKD_FrozenTeacher", fold=2)
    assert trainer.teacher_source.fold == 0
    assert trainer.teacher_source.checkpoint_file == teacher / "fold_0" / "checkpoint_final.pth"
    log = Path(trainer.log_file).read_text()
    assert "WARNING: teacher fold 0 differs from this run's fold 2" in log
    shutil.rmtree(nnunet_env.model_folder("nnUNetTrainerBarlowKD_FrozenTeacher") / "fold_2")
