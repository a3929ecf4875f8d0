"""The README's demo: the whole missing-modality workflow on synthetic data, on a CPU, in minutes.

synthetic BraTS 2021 release -> ``convert-brats`` -> ``nnUNetv2_plan_and_preprocess`` -> ``nnUNetv2_train ... -tr
nnUNetTrainerBarlowKD_demo`` (teacher on 4 modalities + student on FLAIR/T1ce, trained for a budget sized from a
measured step) -> ``export-teacher`` (the teacher as a stock 4-channel model) -> held-out cases that miss different
modalities (all four; FLAIR + T1ce; T1ce + T2 + FLAIR; FLAIR only) -> one ``nnunet-kd predict`` that routes each
availability group to a model (teacher, student, student ignoring T2; FLAIR alone is refused, as no model takes it)
-> BraTS metrics per availability group -> ``nnunet-kd report`` (table, overlays, KD training progress).

Every step is the real command line, run in a subprocess with ``nnUNet_raw`` / ``nnUNet_preprocessed`` /
``nnUNet_results`` pointing into the demo folder. The numbers come from a tiny CPU run and mean nothing about the
method's accuracy on real BraTS data.
"""

from __future__ import annotations

import contextlib
import io
import json
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
    n_test: int = 4
    shape: tuple[int, int, int] = (48, 48, 48)
    seed: int = 0
    trainer: str = "nnUNetTrainerBarlowKD_demo"
    baseline: str | None = None  # e.g. "nnUNetTrainerStudentOnly_demo": the same student trained alone
    device: str = "cpu"
    verbose: bool = False


@dataclass
class DemoResult:
    workdir: Path
    summaries: dict[str, dict] = field(default_factory=dict)  # trainer -> evaluation summary
    groups: dict[str, str] = field(default_factory=dict)  # trainer -> Dice/HD95 per availability group (text)
    availability: dict[str, tuple[str, ...]] = field(default_factory=dict)  # held-out case -> modalities it keeps
    refused: list[str] = field(default_factory=list)  # routing lines of cases no model could take
    routing_tables: dict[str, str] = field(default_factory=dict)  # trainer -> routing table printed by predict
    pictures: list[Path] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)


#: Availability patterns of the held-out cases (canonical names): the first cases get one each, in a seeded random
#: order, the rest a seeded random choice. FLAIR alone has no model in the demo: it shows a refusal.
AVAILABILITY_PATTERNS: tuple[tuple[str, ...], ...] = (
    ("T1", "T1ce", "T2", "FLAIR"), ("T1ce", "FLAIR"), ("T1ce", "T2", "FLAIR"), ("FLAIR",))


def availability_patterns(n: int, seed: int) -> list[tuple[str, ...]]:
    """Modalities kept by each of ``n`` held-out cases: every pattern once (when ``n`` allows), then at random."""
    import random

    rng = random.Random(seed)
    first = list(AVAILABILITY_PATTERNS)
    rng.shuffle(first)
    return (first + [rng.choice(AVAILABILITY_PATTERNS) for _ in range(max(0, n - len(first)))])[:n]


DEVICES = ("cpu", "cuda", "mps")


def validate_config(config: DemoConfig) -> tuple[str, ...]:
    """Refuse a bad setting before anything is written (the demo takes minutes; fail in the first second).

    Returns the modalities of the trainer's student (canonical order)."""
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
    trainer = _check_trainer(config.trainer, needs_teacher=True)  # slowest checks last
    student = _student_modalities(trainer)
    if config.baseline:
        alone = _student_modalities(_check_trainer(config.baseline))
        if set(alone) != set(student):
            raise ConfigurationError(
                f"--baseline trains {config.baseline}, a {' + '.join(alone)} student alone, but --trainer "
                f"{config.trainer} has a {' + '.join(student)} student: the comparison needs the same student; use a "
                f"{' + '.join(alone)} KD trainer (e.g. nnUNetTrainerBarlowKD_demo) or leave out --baseline")
        if not baseline_routes(student, config.workdir):
            raise ConfigurationError(f"--baseline: no held-out availability pattern of the demo holds the student's "
                                     f"{' + '.join(student)} without all four modalities, so the baseline would "
                                     f"predict nothing; leave out --baseline")
    return student


def _student_modalities(trainer: type) -> tuple[str, ...]:
    """The student modalities of a KD / student-only trainer (the ones the demo can run), canonical order."""
    from nnunet_kd.brats import parse_modality_list

    modalities = getattr(trainer, "student_modalities", None)
    if not modalities:
        raise ConfigurationError(f"{trainer.__name__} trains no student on a subset of the modalities; the demo "
                                 f"runs KD trainers such as nnUNetTrainerBarlowKD_demo")
    return parse_modality_list(modalities)


def baseline_routes(student: Sequence[str], folder: Path) -> list[str]:
    """``nnunet-kd predict --models`` entries giving the baseline the availability groups the KD run routes to its
    student: the demo's patterns that hold every student modality, except all four (the teacher's)."""
    from nnunet_kd.brats import MODALITIES

    return [f"{','.join(p)}={folder}" for p in AVAILABILITY_PATTERNS
            if set(student) <= set(p) and len(p) < len(MODALITIES)]


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


def _check_trainer(name: str, needs_teacher: bool = False) -> type:
    """The trainer class, which must be one nnU-Net finds (stock or ours), else nnUNetv2_train would fail minutes in;
    the demo's main trainer must train a teacher (``needs_teacher``), which the demo exports for the cases with all
    four files."""
    # nnU-Net prints where it searches and imported modules warn about deprecations: keep the demo's output clean
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        from nnunet_kd.trainer_registry import nnunet_kd_trainers

        found = getattr(nnunet_kd_trainers, name, None)
        if not isinstance(found, type):
            from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

            try:
                found = recursive_find_trainer_class_by_name(name)
            except (RuntimeError, AssertionError):
                raise ConfigurationError(f"--trainer {name} is neither an nnunet-kd trainer nor one nnU-Net finds "
                                         f"(e.g. nnUNetTrainerBarlowKD_demo)") from None
    if needs_teacher and not getattr(found, "use_teacher", False):
        raise ConfigurationError(f"--trainer {name} trains no teacher; the demo needs a teacher-student KD trainer "
                                 f"such as nnUNetTrainerBarlowKD_demo (use --baseline for the student-only one)")
    return found


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
               echo: Callable[[str], None] = print, ok_codes: Sequence[int] = (0,)) -> int:
    """Run ``cmd``, write all output to ``log_file``, echo the lines ``show`` selects; raise on an exit status
    not in ``ok_codes``; return the status."""
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
    if returncode not in ok_codes:
        tail = "".join(log_file.read_text().splitlines(keepends=True)[-15:])
        raise ConfigurationError(f"`{' '.join(cmd)}` failed (exit {returncode}); see {log_file}. Last lines:\n{tail}")
    return returncode


def run_demo(config: DemoConfig, echo: Callable[[str], None] = print) -> DemoResult:
    """Run the demo end to end; returns the evaluation of each trained model per availability group."""
    from nnunet_kd.commands.predict import EXIT_REFUSED
    from nnunet_kd.dataset_conversion.convert import convert_brats
    from nnunet_kd.synthetic import write_brats_folder

    student = validate_config(config)
    work = config.workdir.resolve()
    _prepare_workdir(work)
    env = demo_environment(work)
    logs = work / "logs"
    result = DemoResult(work)
    bin_dir = Path(sys.executable).parent
    cli = [sys.executable, "-m", "nnunet_kd.cli"]
    started = time.time()

    def show_all(line: str) -> bool:
        return config.verbose

    def highlight(line: str) -> bool:
        return config.verbose or any(h in line for h in TRAINING_HIGHLIGHTS)

    def stage(title: str) -> float:
        echo(f"\n== {title}   [{_clock(time.time() - started)}]")
        return time.time()

    t = stage(f"1/7 synthesising {config.n_train} training + {config.n_test} held-out BraTS 2021-style cases "
              f"({'x'.join(map(str, config.shape))} voxels, MNI152 anatomy)")
    write_brats_folder(work / "brats_train", config.n_train, seed=config.seed, shape=config.shape)
    write_brats_folder(work / "brats_test", config.n_test, seed=config.seed + 10_000, shape=config.shape)
    result.seconds["synth"] = time.time() - t

    t = stage("2/7 converting to nnU-Net datasets (Dataset137 convention)")
    raw = Path(env["nnUNet_raw"])
    train_ds = convert_brats(work / "brats_train", TRAIN_ID, "DemoBraTS", raw_root=raw)
    test_ds = convert_brats(work / "brats_test", TEST_ID, "DemoBraTSTest", raw_root=raw)
    echo(f"    {train_ds}\n    {test_ds}")
    result.seconds["convert"] = time.time() - t

    t = stage("3/7 nnUNetv2_plan_and_preprocess")
    run_logged([str(bin_dir / "nnUNetv2_plan_and_preprocess"), "-d", str(TRAIN_ID), "-c", "3d_fullres", "-np", "2",
                "--verify_dataset_integrity"], env, logs / "plan_and_preprocess.log", show_all, echo)
    result.seconds["plan_and_preprocess"] = time.time() - t

    results_dir = Path(env["nnUNet_results"]) / train_ds.name
    trainers = [config.trainer] + ([config.baseline] if config.baseline else [])
    for trainer in trainers:
        t = stage(f"4/7 nnUNetv2_train {TRAIN_ID} 3d_fullres 0 -tr {trainer}  (CPU schedule sized to this machine)")
        run_logged([str(bin_dir / "nnUNetv2_train"), str(TRAIN_ID), "3d_fullres", "0", "-tr", trainer,
                    "-device", config.device], env, logs / f"train_{trainer}.log", highlight, echo)
        result.seconds[f"train {trainer}"] = time.time() - t

    t = stage(f"5/7 nnunet-kd export-teacher -d {TRAIN_ID} -tr {config.trainer}  (the teacher as a 4-channel model)")
    run_logged(cli + ["export-teacher", "-d", str(TRAIN_ID), "-tr", config.trainer, "-f", "0"], env,
               logs / "export_teacher.log", lambda line: True, echo)
    result.seconds["export-teacher"] = time.time() - t

    t = stage("6/7 held-out cases missing different modalities -> one `nnunet-kd predict`")
    mixed = work / "test_mixed_modalities"
    result.availability = write_mixed_cases(test_ds / "imagesTr", mixed, config.n_test, config.seed)
    for case, kept in result.availability.items():
        echo(f"    {case}: {' + '.join(kept)}")
    for trainer in trainers:
        pred = work / "predictions" / trainer
        cmd = cli + ["predict", "-i", str(mixed), "-o", str(pred), "-d", str(TRAIN_ID), "-c", "3d_fullres",
                     "-f", "0", "--device", config.device, "-npp", "1", "-nps", "1"]
        if trainer != config.trainer:  # the baseline takes the groups the KD student would take
            cmd += ["--models", *baseline_routes(student, results_dir / f"{trainer}__nnUNetPlans__3d_fullres")]
        log_file = logs / f"predict_{trainer}.log"
        run_logged(cmd, env, log_file, _not_a_warning, echo, ok_codes=(0, EXIT_REFUSED))
        routing = json.loads((pred / "routing.json").read_text())
        if trainer == config.trainer:  # the baseline's run refuses the same cases
            result.refused = [f"{case}: {group['reason']}" for group in routing["groups"]
                              if not group.get("model_folder") for case in group["cases"]]
    result.seconds["predict"] = time.time() - t

    t = stage("7/7 BraTS metrics per availability group, then `nnunet-kd report`")
    _evaluate(work, trainers, test_ds / "labelsTr", result)
    report = work / "report"
    cmd = cli + ["report", *[f"{tr}={work / 'evaluation' / tr}" for tr in trainers], "-o", str(report),
                 "--images", str(test_ds / "imagesTr"),
                 "--training-log", f"{config.trainer}={results_dir / f'{config.trainer}__nnUNetPlans__3d_fullres'}"
                                   f"/fold_0"]
    run_logged(cmd, env, logs / "report.log", show_all, echo)
    result.pictures = sorted(report.rglob("*.png"))
    result.seconds["evaluate+report"] = time.time() - t
    result.seconds["total"] = time.time() - started
    return result


def write_mixed_cases(images: Path, out: Path, n: int, seed: int) -> dict[str, tuple[str, ...]]:
    """Copy each held-out case with only some of its ``_000X`` files (:func:`availability_patterns`)."""
    from nnunet_kd.brats import MODALITIES, channel_suffix

    cases = sorted({p.name[: -len("_0000.nii.gz")] for p in images.glob("*_0000.nii.gz")})
    out.mkdir(parents=True, exist_ok=True)
    kept: dict[str, tuple[str, ...]] = {}
    for case, pattern in zip(cases, availability_patterns(n, seed)):
        for modality in pattern:
            name = f"{case}{channel_suffix(MODALITIES.index(modality))}.nii.gz"
            shutil.copyfile(images / name, out / name)
        kept[case] = pattern
    return kept


def _evaluate(work: Path, trainers: Sequence[str], labels: Path, result: DemoResult) -> None:
    """Scores of the predicted cases (refused ones have no segmentation) per model and availability group."""
    from nnunet_kd.evaluation.evaluate import evaluate_folders
    from nnunet_kd.subsets.routing import format_scores_by_group, scores_by_group

    for trainer in trainers:
        pred = work / "predictions" / trainer
        reference = work / "labels_predicted" / trainer  # the labels of the cases that got a segmentation
        reference.mkdir(parents=True, exist_ok=True)
        for seg in pred.glob("*.nii.gz"):
            shutil.copyfile(labels / seg.name, reference / seg.name)
        rows, summary = evaluate_folders(pred, reference, out_dir=work / "evaluation" / trainer, progress=False)
        result.summaries[trainer] = summary
        result.groups[trainer] = format_scores_by_group(
            scores_by_group(rows, json.loads((pred / "routing.json").read_text()), summary["regions"]))


def _not_a_warning(line: str) -> bool:
    """Lines of ``nnunet-kd predict`` worth showing: all but library deprecation warnings (they stay in the log)."""
    return "Warning:" not in line and "warnings.warn(" not in line


def _clock(seconds: float) -> str:
    return f"{int(seconds // 60)} min {int(seconds % 60):02d} s"


def format_results(result: DemoResult) -> str:
    """The demo's closing tables (Dice / HD95 per availability group and model) and where its outputs lie."""
    lines = ["", "== Held-out cases: mean Dice / HD95 (mm) per availability group (routing in predictions/*/routing.json)"]
    for trainer, table in result.groups.items():
        lines += ["", f"{trainer}:", *("  " + line for line in table.splitlines())]
    if result.refused:
        lines += ["", "Refused (no model takes what these cases have; nnUNetTrainerBarlowKD_AnySubset would):"]
        lines += [f"  {line}" for line in result.refused]
    lines += [
        "",
        "These numbers come from a tiny CPU run (minutes, synthetic data) and say nothing about accuracy on real",
        "BraTS data; docs/reproduce.md has the GPU protocol.",
        "",
        "Pictures (segmentations over FLAIR, score distributions, KD training progress):",
        *(f"  {p}" for p in result.pictures),
        "",
        f"Outputs in {result.workdir}:",
        "  nnUNet_raw/ nnUNet_preprocessed/ nnUNet_results/   the nnU-Net folders (export them to keep using the model)",
        "  test_mixed_modalities/                             held-out cases, each missing different modalities",
        "  predictions/<trainer>/                             segmentations + routing.json (which model took which case)",
        "  evaluation/<trainer>/ report/                      per-case and summary scores; report.md with the pictures",
        "  logs/                                              full output of every command",
        "  Timings: " + ", ".join(f"{k} {v:.0f}s" for k, v in result.seconds.items()),
    ]
    return "\n".join(lines)
