"""Shared fixtures: one tiny synthetic BraTS dataset, converted and preprocessed once per test session.

``nnunet_env`` runs the real pipeline (``synth`` -> ``convert-brats`` -> ``nnUNetv2_plan_and_preprocess``) in a
temporary nnU-Net folder tree and hands tests an :class:`NnunetEnv` to run ``nnUNetv2_*`` commands in it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent
DATASET_ID = 517
DATASET_NAME = "Dataset517_SynthBraTS"
N_LABELED = 8
N_UNLABELED = 2
SHAPE = (40, 40, 40)
#: Variables an in-process trainer needs (nnU-Net reads them when used, not at import).
IN_PROCESS_ENV_KEYS = ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results", "nnUNet_extTrainer", "nnUNet_n_proc_DA")


def nnunet_subprocess_env(raw: Path, preprocessed: Path, results: Path) -> dict[str, str]:
    """Environment for running nnU-Net commands fast and deterministically on this CPU."""
    from nnunet_kd.paths import environment_with_trainers

    env = environment_with_trainers()
    env.update({
        "nnUNet_raw": str(raw),
        "nnUNet_preprocessed": str(preprocessed),
        "nnUNet_results": str(results),
        "nnUNet_n_proc_DA": "0",
        "nnUNet_def_n_proc": "1",
        "nnUNet_compile": "false",
        "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}",
    })
    return env


@dataclass
class NnunetEnv:
    """A temporary nnU-Net folder tree holding one preprocessed synthetic dataset."""

    root: Path
    raw: Path
    preprocessed: Path
    results: Path
    brats_source: Path
    dataset_id: int = DATASET_ID
    dataset_name: str = DATASET_NAME
    env: dict[str, str] = field(default_factory=dict)
    #: The ``nnUNetv2_train`` runs :meth:`ensure_trained` made in this session, by (trainer, fold): tests that check
    #: what a training printed read it here instead of training the same model again.
    training_runs: dict[tuple[str, str], subprocess.CompletedProcess] = field(default_factory=dict)

    @property
    def dataset_raw(self) -> Path:
        return self.raw / self.dataset_name

    def run(self, *cmd: str, check: bool = True, timeout: float = 900,
            extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        """Run a command (e.g. ``nnUNetv2_train``) with this tree's environment; output captured as text."""
        env = dict(self.env)
        env.update(extra_env or {})
        proc = subprocess.run(list(cmd), env=env, capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n"
                                 f"{proc.stderr[-4000:]}")
        return proc

    def model_folder(self, trainer: str, plans: str = "nnUNetPlans", configuration: str = "3d_fullres") -> Path:
        return self.results / self.dataset_name / f"{trainer}__{plans}__{configuration}"

    def ensure_trained(self, trainer: str, fold: str = "0") -> Path:
        """Train ``trainer`` with nnUNetv2_train unless this session already did (shared between modules)."""
        folder = self.model_folder(trainer)
        if not (folder / f"fold_{fold}" / "checkpoint_final.pth").is_file():
            self.training_runs[(trainer, fold)] = self.run(str(BIN / "nnUNetv2_train"), str(self.dataset_id),
                                                           "3d_fullres", fold, "-tr", trainer, "-device", "cpu")
        return folder

    def training_run(self, trainer: str, fold: str = "0") -> subprocess.CompletedProcess:
        """The session's ``nnUNetv2_train`` run of ``trainer`` (output captured), made now if none was made yet."""
        if (trainer, fold) not in self.training_runs:
            (self.model_folder(trainer) / f"fold_{fold}" / "checkpoint_final.pth").unlink(missing_ok=True)
            self.ensure_trained(trainer, fold)
        return self.training_runs[(trainer, fold)]

    def make_trainer(self, name: str, monkeypatch: pytest.MonkeyPatch, fold: int = 0):
        """An (uninitialised) trainer built in this process the way nnUNetv2_train builds it, on the CPU."""
        import torch
        from nnunetv2.run.run_training import get_trainer_from_args

        for key in IN_PROCESS_ENV_KEYS:
            monkeypatch.setenv(key, self.env[key])
        return get_trainer_from_args(str(self.dataset_id), "3d_fullres", fold, name, device=torch.device("cpu"))


def random_batch(trainer, seed: int = 0) -> dict:
    """A random (data, deep-supervision region targets) batch of ``trainer``'s plans, with all 4 channels."""
    import torch

    patch = list(trainer.configuration_manager.patch_size)
    torch.manual_seed(seed)
    data = torch.randn(2, 4, *patch)
    targets = [(torch.rand(2, 3, *[int(round(p * s)) for p, s in zip(patch, scale)]) > 0.7).float()
               for scale in trainer._get_deep_supervision_scales()]
    return {"data": data, "target": targets}


@pytest.fixture(scope="session")
def nnunet_env(tmp_path_factory: pytest.TempPathFactory) -> NnunetEnv:
    from nnunet_kd.dataset_conversion.convert import convert_brats
    from nnunet_kd.synthetic import write_brats_folder

    root = tmp_path_factory.mktemp("nnunet")
    raw, pre, res = root / "raw", root / "preprocessed", root / "results"
    for p in (raw, pre, res):
        p.mkdir()
    source = root / "BraTS2021_synthetic"
    write_brats_folder(source, N_LABELED, layout="2021", seed=1, shape=SHAPE, unlabeled=N_UNLABELED,
                       progress=False)
    convert_brats(source, DATASET_ID, name="SynthBraTS", raw_root=raw, progress=False)
    tree = NnunetEnv(root, raw, pre, res, source, env=nnunet_subprocess_env(raw, pre, res))
    tree.run(str(BIN / "nnUNetv2_plan_and_preprocess"), "-d", str(DATASET_ID), "-c", "3d_fullres",
             "-np", "1", "-npfp", "1", "--verify_dataset_integrity",
             extra_env={"nnUNet_n_proc_DA": "1"})  # the planner calls torch.set_num_threads(n_proc_DA)
    return tree
