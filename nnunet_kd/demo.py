"""The README's demo: the whole missing-modality workflow on synthetic data, on a CPU, in minutes.

synthetic BraTS 2021 release -> ``convert-brats`` -> ``nnUNetv2_plan_and_preprocess`` -> ``nnUNetv2_train ... -tr
nnUNetTrainerBarlowKD_demo`` (teacher on 4 modalities + student on FLAIR/T1ce) -> ``select-modalities --keep
FLAIR,T1ce`` on held-out cases -> the ``check-inputs`` test of those files -> stock ``nnUNetv2_predict`` with 2 files
per case -> BraTS metrics per region.

Every nnU-Net step is the real command line, run in a subprocess with ``nnUNet_raw`` / ``nnUNet_preprocessed`` /
``nnUNet_results`` pointing into the demo folder. The numbers come from a tiny CPU run and mean nothing about the
method's accuracy on real BraTS data.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from nnunet_kd.errors import ConfigurationError
from nnunet_kd.paths import environment_with_trainers

MARKER = ".nnunet_kd_demo"
TRAIN_ID, TEST_ID = 990, 991
#: nnU-Net output lines worth showing while training (the rest goes to the log file).
TRAINING_HIGHLIGHTS = ("Demo schedule", "Epoch ", "Pseudo dice", "Teacher pseudo dice", "Mean Validation Dice", "Epoch time")


@dataclass
class DemoConfig:
    workdir: Path
    n_train: int = 10
    n_test: int = 3
    shape: tuple[int, int, int] = (48, 48, 48)
    seed: int = 0
    trainer: str = "nnUNetTrainerBarlowKD_demo"
    baseline: str | None = None  # e.g. "nnUNetTrainerStudentOnly_demo" to compare against the student alone
    keep: tuple[str, ...] = ("FLAIR", "T1ce")
    device: str = "cpu"
    verbose: bool = False


@dataclass
class DemoResult:
    workdir: Path
    summaries: dict[str, dict] = field(default_factory=dict)  # trainer -> evaluation summary
    seconds: dict[str, float] = field(default_factory=dict)


DEVICES = ("cpu", "cuda", "mps")


def validate_config(config: DemoConfig) -> None:
    """Refuse a bad setting before anything is written (the demo takes minutes; fail in the first second)."""
    from nnunet_kd.synthetic import check_shape

    if config.n_train < 5:
        raise ConfigurationError(f"--cases must be at least 5 (nnU-Net's 5-fold split), got {config.n_train}")
    if config.n_test < 1:
        raise ConfigurationError(f"--test-cases must be at least 1, got {config.n_test}")
    check_shape(config.shape)
    if config.device not in DEVICES:
        raise ConfigurationError(f"--device must be one of {', '.join(DEVICES)}, got {config.device!r}")
    _check_device(config.device)
    workdir = config.workdir
    if workdir.exists() or workdir.is_symlink():
        if not workdir.is_dir():
            raise ConfigurationError(f"--workdir {workdir} exists and is not a folder; choose another --workdir")
        if any(workdir.iterdir()) and not (workdir / MARKER).exists():
            raise ConfigurationError(f"--workdir {workdir} exists and is not a previous demo folder; choose another")
    else:
        parent = next((p for p in workdir.parents if p.exists()), None)
        if parent is not None and not parent.is_dir():
            raise ConfigurationError(f"--workdir {workdir} cannot be created: {parent} is a file")
        if parent is not None and not os.access(parent, os.W_OK):
            raise ConfigurationError(f"--workdir {workdir} cannot be created: {parent} is not writable")
    for trainer in [config.trainer] + ([config.baseline] if config.baseline else []):  # slowest check last
        _check_trainer(trainer)


def _check_device(device: str) -> None:
    """A device this machine has, else nnUNetv2_train would fail only after synthesis and preprocessing."""
    if device == "cpu":
        return
    import torch

    available = torch.cuda.is_available() if device == "cuda" else torch.backends.mps.is_available()
    if not available:
        raise ConfigurationError(f"--device {device}: PyTorch finds no {device.upper()} device on this machine "
                                 f"(torch.{'cuda' if device == 'cuda' else 'backends.mps'}.is_available() is False); "
                                 f"use --device cpu")


def _check_trainer(name: str) -> None:
    """The trainer must be one nnU-Net finds (stock or ours), else nnUNetv2_train would fail minutes in."""
    # nnU-Net prints where it searches and imported modules warn about deprecations: keep the demo's output clean
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        from nnunet_kd.trainer_registry import nnunet_kd_trainers

        if isinstance(getattr(nnunet_kd_trainers, name, None), type):
            return
        from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

        try:
            recursive_find_trainer_class_by_name(name)
        except (RuntimeError, AssertionError):
            raise ConfigurationError(f"--trainer {name} is neither an nnunet-kd trainer nor one nnU-Net finds "
                                     f"(e.g. nnUNetTrainerBarlowKD_demo, nnUNetTrainerStudentOnly_demo)") from None


def _prepare_workdir(workdir: Path) -> None:
    if workdir.exists() and any(workdir.iterdir()):
        if not (workdir / MARKER).exists():
            raise ConfigurationError(f"{workdir} exists and is not a previous demo folder; choose another --workdir")
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / MARKER).write_text("created by `nnunet-kd demo`; safe to delete\n")


def demo_environment(workdir: Path) -> dict[str, str]:
    """Environment of the demo's nnU-Net commands: its own folders, our trainers, CPU-friendly settings."""
    env = environment_with_trainers()
    env.update({
        "nnUNet_raw": str(workdir / "nnUNet_raw"),
        "nnUNet_preprocessed": str(workdir / "nnUNet_preprocessed"),
        "nnUNet_results": str(workdir / "nnUNet_results"),
        "nnUNet_n_proc_DA": env.get("nnUNet_n_proc_DA", "1"),
        "nnUNet_def_n_proc": env.get("nnUNet_def_n_proc", "1"),
        "nnUNet_compile": env.get("nnUNet_compile", "false"),
        "PYTHONUNBUFFERED": "1",  # stream nnU-Net's progress lines as they happen
    })
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def run_logged(cmd: Sequence[str], env: dict[str, str], log_file: Path, show: Callable[[str], bool],
               echo: Callable[[str], None] = print) -> None:
    """Run ``cmd``, write all output to ``log_file``, echo the lines ``show`` selects; raise on failure."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with log_file.open("w") as log, subprocess.Popen(list(cmd), env=env, stdout=subprocess.PIPE,
                                                     stderr=subprocess.STDOUT, text=True, bufsize=1) as proc:
        assert proc.stdout is not None
        try:
            for line in proc.stdout:
                log.write(line)
                if show(line):
                    echo("    " + line.rstrip())
        except BaseException:  # Ctrl-C / SIGTERM of the demo: stop the nnU-Net command too, do not wait for it
            proc.terminate()
            raise
        returncode = proc.wait()
    if returncode != 0:
        tail = "".join(log_file.read_text().splitlines(keepends=True)[-15:])
        raise ConfigurationError(f"`{' '.join(cmd)}` failed (exit {returncode}); see {log_file}. Last lines:\n{tail}")


def run_demo(config: DemoConfig, echo: Callable[[str], None] = print) -> DemoResult:
    """Run the demo end to end; returns the evaluation summary of each trained model."""
    from nnunet_kd.dataset_conversion.convert import convert_brats
    from nnunet_kd.dataset_conversion.select import select_modalities
    from nnunet_kd.evaluation.evaluate import evaluate_folders
    from nnunet_kd.subsets.input_files import check_input_folder
    from nnunet_kd.synthetic import write_brats_folder

    validate_config(config)
    work = config.workdir.resolve()
    _prepare_workdir(work)
    env = demo_environment(work)
    logs = work / "logs"
    result = DemoResult(work)
    bin_dir = Path(sys.executable).parent

    def show_all(line: str) -> bool:
        return config.verbose

    def highlight(line: str) -> bool:
        return config.verbose or any(h in line for h in TRAINING_HIGHLIGHTS)

    def stage(title: str) -> float:
        echo(f"\n== {title}")
        return time.time()

    t = stage(f"1/6 synthesising {config.n_train} training + {config.n_test} held-out BraTS 2021-style cases "
              f"({'x'.join(map(str, config.shape))} voxels, MNI152 anatomy)")
    write_brats_folder(work / "brats_train", config.n_train, seed=config.seed, shape=config.shape)
    write_brats_folder(work / "brats_test", config.n_test, seed=config.seed + 10_000, shape=config.shape)
    result.seconds["synth"] = time.time() - t

    t = stage("2/6 converting to nnU-Net datasets (Dataset137 convention)")
    raw = Path(env["nnUNet_raw"])
    train_ds = convert_brats(work / "brats_train", TRAIN_ID, "DemoBraTS", raw_root=raw)
    test_ds = convert_brats(work / "brats_test", TEST_ID, "DemoBraTSTest", raw_root=raw)
    echo(f"    {train_ds}\n    {test_ds}")
    result.seconds["convert"] = time.time() - t

    t = stage("3/6 nnUNetv2_plan_and_preprocess")
    run_logged([str(bin_dir / "nnUNetv2_plan_and_preprocess"), "-d", str(TRAIN_ID), "-c", "3d_fullres", "-np", "2",
                "--verify_dataset_integrity"], env, logs / "plan_and_preprocess.log", show_all, echo)
    result.seconds["plan_and_preprocess"] = time.time() - t

    t = stage(f"4/6 selecting {'+'.join(config.keep)} of the held-out cases (2 files per case)")
    limited = work / f"test_{'_'.join(m.lower() for m in config.keep)}"
    select_modalities(test_ds / "imagesTr", limited, list(config.keep))
    echo(f"    {limited}")
    result.seconds["select"] = time.time() - t

    trainers = [config.trainer] + ([config.baseline] if config.baseline else [])
    for trainer in trainers:
        t = stage(f"5/6 nnUNetv2_train {TRAIN_ID} 3d_fullres 0 -tr {trainer}  (tiny CPU schedule)")
        run_logged([str(bin_dir / "nnUNetv2_train"), str(TRAIN_ID), "3d_fullres", "0", "-tr", trainer,
                    "-device", config.device], env, logs / f"train_{trainer}.log", highlight, echo)
        result.seconds[f"train {trainer}"] = time.time() - t

        t = stage(f"6/6 nnUNetv2_predict -tr {trainer} on {'+'.join(config.keep)} only, then BraTS metrics")
        pred = work / "predictions" / trainer
        # stock nnU-Net only counts a case's files: check they are the trained student's modalities
        expected = check_input_folder(Path(env["nnUNet_results"]) / train_ds.name /
                                      f"{trainer}__nnUNetPlans__3d_fullres", limited)
        echo(f"    check-inputs: every case has exactly the model's files, {expected.describe()}")
        run_logged([str(bin_dir / "nnUNetv2_predict"), "-i", str(limited), "-o", str(pred), "-d", str(TRAIN_ID),
                    "-c", "3d_fullres", "-f", "0", "-tr", trainer, "-device", config.device, "-npp", "1",
                    "-nps", "1"], env, logs / f"predict_{trainer}.log", show_all, echo)
        _, summary = evaluate_folders(pred, test_ds / "labelsTr", out_dir=work / "evaluation" / trainer,
                                      progress=False)
        result.summaries[trainer] = summary
        result.seconds[f"predict+evaluate {trainer}"] = time.time() - t
    return result


def format_results(result: DemoResult) -> str:
    """The demo's closing table (mean Dice / HD95 per region and model) and where its outputs lie."""
    lines = ["", "== Held-out cases, student on FLAIR + T1ce only (mean over cases)", "",
             f"{'model':40s} {'Dice WT':>8s} {'Dice TC':>8s} {'Dice ET':>8s} {'HD95 WT':>8s} {'HD95 TC':>8s} "
             f"{'HD95 ET':>8s}"]
    for trainer, summary in result.summaries.items():
        regions = summary["metrics"]
        cells = []
        for metric in ("dice", "hd95"):
            for region in ("WT", "TC", "ET"):
                cells.append(f"{regions[region][metric]['mean']:8.3f}")
        lines.append(f"{trainer:40s} " + " ".join(cells))
    lines += [
        "",
        "These numbers come from a tiny CPU run (minutes, synthetic data) and say nothing about accuracy on real",
        "BraTS data; docs/reproduce.md has the GPU protocol.",
        "",
        f"Outputs in {result.workdir}:",
        "  nnUNet_raw/ nnUNet_preprocessed/ nnUNet_results/   the nnU-Net folders (export them to keep using the model)",
        "  predictions/<trainer>/                             segmentations of the held-out cases",
        "  evaluation/<trainer>/                              per_case.csv, summary.csv, summary.json",
        "  logs/                                              full output of every nnU-Net command",
        "  Timings: " + ", ".join(f"{k} {v:.0f}s" for k, v in result.seconds.items()),
    ]
    return "\n".join(lines)
