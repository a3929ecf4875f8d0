"""nnU-Net finds nnunet-kd's trainers through nnUNet_extTrainer, using the real nnUNetv2_train entry point."""

from __future__ import annotations

import ast
import os
import subprocess

import pytest

from conftest import BIN, NnunetEnv
from nnunet_kd.cli import main
from nnunet_kd.paths import EXT_TRAINER, environment_with_trainers, trainer_registry_folder


def test_ext_path_prints_the_registry_folder(capsys):
    assert main(["ext-path"]) == 0
    assert capsys.readouterr().out.strip() == str(trainer_registry_folder())
    assert main(["ext-path", "--export"]) == 0
    assert capsys.readouterr().out.strip() == f"export {EXT_TRAINER}={trainer_registry_folder()}"


def test_registry_folder_holds_only_reexport_modules():
    folder = trainer_registry_folder()
    modules = sorted(p.name for p in folder.glob("*.py"))
    assert modules == ["__init__.py", "nnunet_kd_trainers.py"]
    tree = ast.parse((folder / "nnunet_kd_trainers.py").read_text())
    body = [n for n in tree.body if not (isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant))]
    assert body and all(isinstance(n, ast.ImportFrom) and n.module.startswith("nnunet_kd.trainers.") for n in body)


def test_environment_with_trainers_appends_once():
    env = environment_with_trainers({EXT_TRAINER: "/elsewhere"})
    assert env[EXT_TRAINER].split(":") == ["/elsewhere", str(trainer_registry_folder())]
    assert environment_with_trainers(env)[EXT_TRAINER] == env[EXT_TRAINER]


@pytest.mark.slow
def test_console_script_ext_path():
    out = subprocess.run([str(BIN / "nnunet-kd"), "ext-path"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == str(trainer_registry_folder())


@pytest.mark.slow
def test_nnunetv2_train_finds_and_runs_smoke_trainer(nnunet_env: NnunetEnv):
    proc = nnunet_env.run(str(BIN / "nnUNetv2_train"), str(nnunet_env.dataset_id), "3d_fullres", "1", "-tr",
                          "nnUNetTrainer_smoke", "-device", "cpu")
    assert f"Using trainer 'nnUNetTrainer_smoke' from: {trainer_registry_folder()}" in proc.stdout
    fold = nnunet_env.model_folder("nnUNetTrainer_smoke") / "fold_1"
    assert (fold / "checkpoint_final.pth").is_file()
    assert (fold / "validation" / "summary.json").is_file()


@pytest.mark.slow
def test_unknown_trainer_still_gets_nnunets_error(nnunet_env: NnunetEnv):
    proc = nnunet_env.run(str(BIN / "nnUNetv2_train"), str(nnunet_env.dataset_id), "3d_fullres", "0", "-tr",
                          "nnUNetTrainerDoesNotExist", "-device", "cpu", check=False)
    assert proc.returncode != 0
    assert "Could not find requested nnunet trainer nnUNetTrainerDoesNotExist" in proc.stderr


@pytest.mark.slow
def test_without_ext_variable_our_trainer_is_not_found(nnunet_env: NnunetEnv):
    proc = nnunet_env.run(str(BIN / "nnUNetv2_train"), str(nnunet_env.dataset_id), "3d_fullres", "0", "-tr",
                          "nnUNetTrainer_smoke", "-device", "cpu", check=False, extra_env={EXT_TRAINER: ""})
    assert proc.returncode != 0 and "Could not find requested nnunet trainer" in proc.stderr


def test_trainers_findable_sets_and_restores_the_variable(monkeypatch):
    from nnunet_kd.paths import trainers_findable

    monkeypatch.setenv(EXT_TRAINER, "/elsewhere")
    with trainers_findable():
        assert os.environ[EXT_TRAINER].split(":") == ["/elsewhere", str(trainer_registry_folder())]
    assert os.environ[EXT_TRAINER] == "/elsewhere"
    monkeypatch.delenv(EXT_TRAINER)
    with trainers_findable():
        assert os.environ[EXT_TRAINER] == str(trainer_registry_folder())
    assert EXT_TRAINER not in os.environ
