"""The wheel a user installs: built from the source tree, installed into a fresh venv, found by nnU-Net from there.

The test venv reuses the installed torch/nnU-Net (a ``.pth`` line naming the test interpreter's site-packages,
which adds that folder but runs none of its ``.pth`` files, so the editable nnunet-kd of the development venv is
not seen) and builds without build isolation, so it needs no network and installs nothing large.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _source_packages() -> set[str]:
    return {str(p.parent.relative_to(ROOT)).replace(os.sep, "/")
            for p in (ROOT / "nnunet_kd").rglob("__init__.py") if "__pycache__" not in p.parts}


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "nnUNet_extTrainer")}
    env.update(extra)
    return env


@pytest.mark.slow
def test_wheel_installs_and_nnunet_finds_its_trainers(tmp_path: Path):
    # build from a copy of the tracked tree, so that build/ and *.egg-info are not written into the checkout
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".git", "__pycache__", "*.pyc", ".venv", "build", "dist",
                                                             "*.egg-info", "bench_output*", "demo_output", ".*cache"))
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
                    "-w", str(wheels), str(src)], check=True, capture_output=True, text=True, cwd=tmp_path,
                   env=_clean_env(PIP_NO_INPUT="1"), timeout=300)
    [wheel] = wheels.glob("nnunet_kd-*.whl")

    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/", 1)[0] for n in names}
    assert {t for t in top if not t.endswith(".dist-info")} == {"nnunet_kd"}  # no top-level trainers or tests
    packages = {n.rsplit("/", 1)[0] for n in names if n.endswith("/__init__.py")}
    assert packages == _source_packages()
    assert {"nnunet_kd/subsets", "nnunet_kd/trainer_registry", "nnunet_kd/trainers"} <= packages
    assert "nnunet_kd/trainer_registry/nnunet_kd_trainers.py" in names
    licence = [n for n in names if n.endswith(".dist-info/licenses/LICENSE")]
    assert licence and "Apache License" in zipfile.ZipFile(wheel).read(licence[0]).decode()

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    venv_site = Path(subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                    check=True, capture_output=True, text=True).stdout.strip())
    (venv_site / "_reuse_installed.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "--no-index", "-q",
                    str(wheel)], check=True, capture_output=True, text=True, env=_clean_env(PIP_NO_INPUT="1"),
                   timeout=300)

    env = _clean_env(PATH=f"{venv / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}")
    run = {"cwd": tmp_path, "env": env, "capture_output": True, "text": True, "timeout": 300}
    helped = subprocess.run([str(venv / "bin" / "nnunet-kd"), "--help"], **run)
    assert helped.returncode == 0 and "ext-path" in helped.stdout
    ext = subprocess.run([str(venv / "bin" / "nnunet-kd"), "ext-path"], **run)
    assert ext.returncode == 0
    registry = Path(ext.stdout.strip())
    assert registry == venv_site / "nnunet_kd" / "trainer_registry" and registry.is_dir()

    lookup = ("import sys, nnunet_kd\n"
              "from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name\n"
              "cls = recursive_find_trainer_class_by_name('nnUNetTrainerBarlowKD_smoke')\n"
              "print('FOUND', cls.__module__, sys.modules[cls.__module__].__file__, nnunet_kd.__file__)\n")
    found = subprocess.run([str(py), "-W", "ignore", "-c", lookup], **{**run, "env": {**env, "nnUNet_extTrainer": str(registry)}})
    assert found.returncode == 0, found.stderr[-2000:]
    line = next(x for x in found.stdout.splitlines() if x.startswith("FOUND"))
    _, module, module_file, package_file = line.split(" ")
    assert module == "nnunet_kd.trainers.smoke_variants"
    assert Path(module_file).is_relative_to(venv_site) and Path(package_file).is_relative_to(venv_site)
    assert f"Using trainer 'nnUNetTrainerBarlowKD_smoke' from: {registry}" in found.stdout
