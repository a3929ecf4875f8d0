"""Multi-GPU (DDP) KD training, checked on 2 CPU processes with the gloo backend.

One KD ``train_step`` on each half of a batch in 2 DDP processes must give the loss and the updated weights (student,
teacher, both projectors) of one process on the whole batch. That holds only if teacher and projectors are
synchronised and Barlow Twins sees the embeddings of both ranks (a per-rank Barlow Twins is a different loss: with
it, barlow_loss was 0.7 % off and weights up to 8.7e-6 apart, against a tolerance of 1e-6). The final validation
from raw files splits the cases over the ranks and gives the single-process predictions. Variants that DDP cannot
train correctly stop with one line.
"""

from __future__ import annotations

import json
import os
import socket
import traceback
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from torch import distributed as dist
from torch import multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from conftest import IN_PROCESS_ENV_KEYS, NnunetEnv, random_batch

pytestmark = pytest.mark.slow  # spawned processes building trainers on the preprocessed session dataset

WORLD = 2
#: What the steps log (nnU-Net's train_losses is the student's DS loss) and compare against one process.
LOGGED = ("train_losses", "kd_total_loss", "student_seg_loss", "teacher_seg_loss", "barlow_loss")


class CpuDDP:
    """Test-only: nnU-Net's DDP set-up on the CPU (gloo), nothing of nnU-Net patched.

    nnU-Net 2.8 hard-codes CUDA for DDP: ``__init__`` sets the device to ``cuda:<rank>`` (and makes a CUDA
    GradScaler), and ``initialize`` wraps the student as ``DDP(network, device_ids=[rank])``, which DDP refuses for a
    CPU module. This subclass sets the CPU device again after ``__init__`` and skips that one wrap: ``is_ddp`` is
    False only between ``configure_optimizers`` (nnU-Net calls it right before the wrap) and ``_build_loss`` (right
    after it), which wraps the student the CPU way (SyncBatchNorm + DDP without device ids). Everything else is the
    production code: nnU-Net's per-rank batch size, its DDP Dice loss and deep-supervision weights, and the KD
    trainer's DDP wrapping of teacher and projectors and its gathers.
    """

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cpu")):
        super().__init__(plans, configuration, fold, dataset_json, device)  # type: ignore[call-arg]
        self.device = torch.device("cpu")
        self.grad_scaler = None

    def configure_optimizers(self):
        result = super().configure_optimizers()  # type: ignore[misc]
        self.is_ddp = False  # nnU-Net's DDP(network, device_ids=[rank]) comes next
        return result

    def _build_loss(self):
        if not self.is_ddp and dist.is_initialized():
            self.is_ddp = True
            self.network = DDP(nn.SyncBatchNorm.convert_sync_batchnorm(self.network))
        return super()._build_loss()  # type: ignore[misc]


def cpu_trainer(name: str):
    """Trainer ``name`` as nnU-Net's get_trainer_from_args builds it, with :class:`CpuDDP` in front."""
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from nnunetv2.run.run_training import recursive_find_trainer_class_by_name

    folder = Path(os.environ["nnUNet_preprocessed"]) / NnunetEnv.dataset_name
    plans = load_json(str(folder / "nnUNetPlans.json"))
    plans["continue_training"] = False
    trainer_class = type(name, (CpuDDP, recursive_find_trainer_class_by_name(name)), {})  # same output folder
    return trainer_class(plans, "3d_fullres", 0, load_json(str(folder / "dataset.json")), torch.device("cpu"))


def snapshot(trainer) -> dict[str, torch.Tensor]:
    """Copies of the weights of student (``student.``), teacher and projectors (``kd.``)."""
    from nnunet_kd.trainers.barlow_kd import unwrap

    weights = {f"student.{k}": v.detach().clone() for k, v in unwrap(trainer.network).state_dict().items()}
    weights.update({f"kd.{k}": v.detach().clone() for k, v in trainer.kd_modules.state_dict().items()})
    return weights


def one_step(rank: int, world: int, name: str, env: dict, port: int, result_file: str) -> None:
    """One KD step of ``rank`` on its share of the batch; rank 0 saves losses, logs and weights to ``result_file``."""
    os.environ.update(env)
    torch.set_num_threads(1)
    if world > 1:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        trainer = cpu_trainer(name)
        torch.manual_seed(0)  # the same initial weights in every process (DDP also broadcasts rank 0's)
        trainer.initialize()
        initial = snapshot(trainer)
        batch = random_batch(trainer, seed=1)  # the global batch: the plans' batch size, all channels
        # nnU-Net's per-rank batch: samples [start, start + batch_size) of the global batch
        sizes: list = [trainer.batch_size] * world
        if world > 1:
            dist.all_gather_object(sizes, trainer.batch_size)
        start, stop = sum(sizes[:rank]), sum(sizes[:rank + 1])
        share = {"data": batch["data"][start:stop], "target": [t[start:stop] for t in batch["target"]]}
        out = trainer.train_step(share)
        trainer.on_train_epoch_end([out])
        if rank == 0:
            torch.save({
                "sizes": sizes,
                "wrapped": sorted(k for k, m in trainer.kd_runners.items() if isinstance(m, DDP)),
                "logged": {key: float(trainer.logger.get_value(key, step=-1)) for key in LOGGED},
                "initial": initial,
                "updated": snapshot(trainer),
            }, result_file)
    except BaseException:
        Path(f"{result_file}.error-{rank}").write_text(traceback.format_exc())
        raise
    finally:
        if world > 1:
            dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker_env(nnunet_env: NnunetEnv, results: Path) -> dict[str, str]:
    env = {key: nnunet_env.env[key] for key in IN_PROCESS_ENV_KEYS}
    env.update(nnUNet_results=str(results), OMP_NUM_THREADS="1")
    return env


def run_processes(world: int, name: str, env: dict, result_file: Path) -> dict:
    try:
        mp.spawn(one_step, args=(world, name, env, free_port(), str(result_file)), nprocs=world, join=True)
    except Exception:
        errors = "\n".join(p.read_text() for p in sorted(result_file.parent.glob(f"{result_file.name}.error-*")))
        raise AssertionError(f"DDP worker failed:\n{errors}") from None
    return torch.load(result_file, weights_only=False)


def test_ddp_step_on_half_batches_equals_one_process_on_the_whole_batch(nnunet_env: NnunetEnv, tmp_path: Path,
                                                                         monkeypatch):
    name = "nnUNetTrainerBarlowKD"
    env = worker_env(nnunet_env, tmp_path / "results")
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    one_step(0, 1, name, {}, 0, str(tmp_path / "single.pt"))  # the reference: this process, no DDP
    single = torch.load(tmp_path / "single.pt", weights_only=False)
    ddp = run_processes(WORLD, name, env, tmp_path / "ddp.pt")

    assert single["sizes"] == [2] and ddp["sizes"] == [1, 1]  # nnU-Net split the plans' batch of 2
    assert ddp["wrapped"] == ["student_projector", "teacher", "teacher_projector"]
    for key in LOGGED:  # rank 0's log: the mean over ranks, as nnU-Net logs train_losses
        assert ddp["logged"][key] == pytest.approx(single["logged"][key], rel=1e-5), key
    assert ddp["updated"].keys() == single["updated"].keys()
    for key, value in single["updated"].items():
        torch.testing.assert_close(ddp["initial"][key], single["initial"][key], rtol=0, atol=0)
        torch.testing.assert_close(ddp["updated"][key], value, rtol=1e-5, atol=1e-6, msg=f"{key} after the step")


def test_a_variant_ddp_cannot_train_is_refused_in_one_line_before_anything_is_written(nnunet_env: NnunetEnv,
                                                                                         tmp_path: Path, monkeypatch):
    from nnunetv2.run.run_training import get_trainer_from_args

    from nnunet_kd.errors import ConfigurationError

    name = "nnUNetTrainerDistill_PseudoWeight05"
    results = tmp_path / "results"
    for key, value in worker_env(nnunet_env, results).items():
        monkeypatch.setenv(key, value)
    # a one-process gloo group: nnU-Net's is_ddp is True, as in each process of nnUNetv2_train -num_gpus N
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    try:
        with pytest.raises(ConfigurationError) as refused:
            get_trainer_from_args(str(nnunet_env.dataset_id), "3d_fullres", 0, name, device=torch.device("cpu"))
    finally:
        dist.destroy_process_group()
    message = str(refused.value)
    assert message.startswith(f"{name} does not support multi-GPU (DDP) training: pseudo_label_weight weights the "
                              f"samples of a batch"), message
    assert "\n" not in message
    assert not results.exists()  # refused before nnU-Net created the output folder


def validation_worker(rank: int, world: int, env: dict, port: int, folder: str) -> None:
    """Rank ``rank`` of a DDP final validation of the session's KD smoke model (from its final checkpoint)."""
    os.environ.update(env, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        trainer = cpu_trainer(KD_SMOKE)
        trainer.load_checkpoint(str(Path(folder) / "checkpoint_final.pth"))
        trainer.perform_actual_validation(False)
    except BaseException:
        Path(folder, f"error-{rank}").write_text(traceback.format_exc())
        raise
    finally:
        dist.destroy_process_group()


KD_SMOKE = "nnUNetTrainerBarlowKD_smoke"


def test_ddp_final_validation_splits_cases_and_equals_the_single_process_one(nnunet_env: NnunetEnv, tmp_path: Path):
    import shutil

    model = nnunet_env.ensure_trained(KD_SMOKE)  # its validation/ was written by one process (nnUNetv2_train)
    results = tmp_path / "results"
    shutil.copytree(model, results / nnunet_env.dataset_name / model.name)
    fold = results / nnunet_env.dataset_name / model.name / "fold_0"
    shutil.rmtree(fold / "validation")
    for log in fold.glob("training_log_*.txt"):
        log.unlink()
    env = worker_env(nnunet_env, results)
    env["nnUNet_def_n_proc"] = nnunet_env.env["nnUNet_def_n_proc"]
    try:
        mp.spawn(validation_worker, args=(WORLD, env, free_port(), str(fold)), nprocs=WORLD)
    except Exception:
        raise AssertionError("\n".join(p.read_text() for p in fold.glob("error-*"))) from None

    single, ddp = model / "fold_0" / "validation", fold / "validation"
    cases = sorted(p.name for p in single.glob("*.nii.gz"))
    assert len(cases) >= WORLD and sorted(p.name for p in ddp.glob("*.nii.gz")) == cases  # every rank's share
    rank0_log = "".join(p.read_text() for p in fold.glob("training_log_*.txt"))  # only rank 0 writes the log
    predicted = [c.removesuffix(".nii.gz") for c in cases if f"predicting {c.removesuffix('.nii.gz')} " in rank0_log]
    assert predicted == [c.removesuffix(".nii.gz") for c in cases[0::WORLD]]  # nnU-Net's split: rank 0's share
    for case in cases:
        a, b = (sitk.GetArrayFromImage(sitk.ReadImage(str(f / case))) for f in (ddp, single))
        assert np.array_equal(a, b), case
    metrics = json.loads((ddp / "summary.json").read_text())
    expected = json.loads((single / "summary.json").read_text())
    assert metrics["foreground_mean"] == expected["foreground_mean"]
    assert str(tmp_path) in metrics["metric_per_case"][0]["prediction_file"]  # the final folder, not the staging one
    assert not [p.name for p in fold.iterdir() if p.name.startswith("validation") and p.name != "validation"]
