"""nnU-Net finds nnunet-kd's trainers through nnUNet_extTrainer, using the real nnUNetv2_train entry point."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from conftest import BIN, NnunetEnv
from nnunet_kd.cli import main
from nnunet_kd.paths import EXT_TRAINER, environment_with_trainers, trainer_registry_folder


def test_ext_path_prints_the_registry_folder(capsys):
    assert main(["ext-path"]) == 0
    assert capsys.readouterr().out.strip() == str(trainer_registry_folder())
    assert main(["ext-path", "--export"]) == 0
    assert capsys.readouterr().out.strip() == f"export {EXT_TRAINER}={trainer_registry_folder()}"


def test_registry_folder_holds_only_the_lazy_registry_module():
    folder = trainer_registry_folder()
    assert sorted(p.name for p in folder.glob("*.py")) == ["__init__.py", "nnunet_kd_trainers.py"]
    assert not [p for p in folder.iterdir() if p.is_dir() and p.name != "__pycache__"]


def test_registry_lists_every_trainer_class_and_each_name_resolves():
    import importlib
    import inspect
    import pkgutil

    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    import nnunet_kd.trainers
    from nnunet_kd.trainer_registry import nnunet_kd_trainers as registry

    defined = {}
    for info in pkgutil.iter_modules(nnunet_kd.trainers.__path__):
        module = importlib.import_module(f"nnunet_kd.trainers.{info.name}")
        defined.update({name: info.name for name, obj in vars(module).items()
                        if inspect.isclass(obj) and issubclass(obj, nnUNetTrainer) and obj.__module__ == module.__name__
                        and name.startswith("nnUNetTrainer")})
    listed = {name: module for module, names in registry.TRAINERS.items() for name in names}
    assert listed == defined
    for name, module in listed.items():
        cls = getattr(registry, name)
        assert cls is getattr(importlib.import_module(f"nnunet_kd.trainers.{module}"), name)
    assert set(registry.__all__) == set(listed) and set(listed) <= set(dir(registry))
    assert getattr(registry, "nnUNetTrainerDoesNotExist", None) is None
    with pytest.raises(AttributeError, match="nnUNetTrainerDoesNotExist"):
        registry.nnUNetTrainerDoesNotExist  # noqa: B018


_LOOKUP_SCRIPT = """
import contextlib, io, json, sys
sys.path.insert(0, sys.argv[1])
import nnunet_kd_trainers  # as nnU-Net imports it: by file, from the nnUNet_extTrainer folder
sys.path.pop(0)
cheap = sorted(m for m in sys.modules if m.startswith(("nnunet_kd.trainers", "nnunetv2")) or m == "torch")
from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name as find
with contextlib.redirect_stdout(io.StringIO()):
    smoke = find("nnUNetTrainer_smoke")
after_smoke = sorted(m for m in sys.modules if m.startswith("nnunet_kd.trainers."))
found = {}
with contextlib.redirect_stdout(io.StringIO()):
    for name in [names[-1] for names in nnunet_kd_trainers.TRAINERS.values()]:  # one per module: each walk is slow
        cls = find(name)
        found[name] = f"{cls.__module__}.{cls.__qualname__}"
print(json.dumps({"cheap": cheap, "after_smoke": after_smoke, "smoke": smoke.__module__, "found": found}))
"""


def test_nnunet_finds_every_trainer_and_imports_only_what_it_asks_for():
    """nnU-Net's own look-up (recursive_find_trainer_class_by_name, as nnUNetv2_train/_predict call it) in a fresh
    process: the registry module imports nothing heavy, one name imports only its module, a name of each trainer
    module is found (test_registry_lists_every_trainer_class_and_each_name_resolves checks the other names)."""
    import json
    import sys

    from nnunet_kd.trainer_registry.nnunet_kd_trainers import TRAINERS

    env = environment_with_trainers({k: v for k, v in os.environ.items() if k != EXT_TRAINER})
    proc = subprocess.run([sys.executable, "-W", "ignore", "-c", _LOOKUP_SCRIPT, str(trainer_registry_folder())],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["cheap"] == []
    assert out["smoke"] == "nnunet_kd.trainers.smoke"
    assert "nnunet_kd.trainers.smoke" in out["after_smoke"]
    assert not {"nnunet_kd.trainers.distill", "nnunet_kd.trainers.any_subset", "nnunet_kd.trainers.architectures",
                "nnunet_kd.trainers.pixel_kd"} & set(out["after_smoke"])
    expected = {names[-1]: f"nnunet_kd.trainers.{module}.{names[-1]}" for module, names in TRAINERS.items()}
    assert out["found"] == expected


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
    # the session's nnUNetv2_train run of this model (the teacher of test_frozen_teacher.py), not a second training
    proc = nnunet_env.training_run("nnUNetTrainer_smoke")
    assert proc.args[1:] == [str(nnunet_env.dataset_id), "3d_fullres", "0", "-tr", "nnUNetTrainer_smoke", "-device",
                             "cpu"] and Path(proc.args[0]).name == "nnUNetv2_train"
    assert f"Using trainer 'nnUNetTrainer_smoke' from: {trainer_registry_folder()}" in proc.stdout
    fold = nnunet_env.model_folder("nnUNetTrainer_smoke") / "fold_0"
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
