"""Benchmark: the two-stage (frozen-teacher) KD training step against the single-stage KD step, same plans and batch.

Run ``python -m benchmarks.bench_two_stage --out DIR [--device cpu|cuda]`` (writes ``DIR/bench_two_stage.json``).

On the synthetic preprocessed dataset of :mod:`benchmarks.common` (its own nnU-Net folders, never the user's), a
stock ``nnUNetTrainer`` network is saved as a teacher checkpoint and named with
:func:`nnunet_kd.trainers.teacher_config.write_teacher_config` (its weights are untrained: they do not change the cost).
Then, in this one process, four things are timed on the same fixed random batch after warm-up, in interleaved
rounds (order rotated each round):

* ``single_stage``: ``nnUNetTrainerBarlowKD.train_step`` (teacher and student both trained);
* ``two_stage``: ``nnUNetTrainerBarlowKD_FrozenTeacher.train_step`` (teacher frozen, forward under no_grad);
* ``student_only``: ``nnUNetTrainerStudentOnly.train_step`` (the same student alone: "1 student step");
* ``teacher_forward``: the frozen trainer's ``teacher_forward`` alone (under autocast on GPU, as in train_step).

Reported: two_stage / single_stage (the saving), and two_stage / (student_only + teacher_forward), which is
about 1 when the two-stage step costs one student step plus one teacher forward pass.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from benchmarks import common
from benchmarks.bench_train_step import make_batch, plans_summary, set_threads

TRAINERS = {"single_stage": "nnUNetTrainerBarlowKD", "two_stage": "nnUNetTrainerBarlowKD_FrozenTeacher",
            "student_only": "nnUNetTrainerStudentOnly"}
#: Folder name of the benchmark's teacher (inside the benchmark's own results folder).
TEACHER_TRAINER = "nnUNetTrainerBenchTeacher"


def save_teacher(data: common.BenchData, device: str) -> Path:
    """A stock ``nnUNetTrainer`` checkpoint of the plans, named as the teacher of the benchmark dataset."""
    import torch
    from nnunetv2.run.run_training import get_trainer_from_args

    from nnunet_kd.trainers.teacher_config import TeacherConfig, teacher_checkpoint_file, write_teacher_config

    config = TeacherConfig(TEACHER_TRAINER, common.PLANS, common.CONFIGURATION)
    with common.quiet():
        stock = get_trainer_from_args(str(data.dataset_id), common.CONFIGURATION, 0, "nnUNetTrainer", common.PLANS,
                                      device=torch.device(device))
        stock.initialize()
    path = data.results / data.dataset_name / config.folder_name / "fold_0" / "checkpoint_final.pth"
    path.parent.mkdir(parents=True, exist_ok=True)
    stock.save_checkpoint(str(path))
    write_teacher_config(data.dataset_name, config, data.preprocessed)
    if teacher_checkpoint_file(data.dataset_name, config, 0, data.results) != path:
        raise RuntimeError(f"teacher checkpoint not where the config points: {path}")
    return path


def build(name: str, data: common.BenchData, device: str):
    """An initialised trainer of class ``name`` on fold 0, in train mode at epoch 0 (as nnUNetv2_train builds it)."""
    import torch
    from nnunetv2.run.run_training import get_trainer_from_args

    with common.quiet():
        trainer = get_trainer_from_args(str(data.dataset_id), common.CONFIGURATION, 0, name, common.PLANS,
                                        device=torch.device(device))
        trainer.initialize()
        trainer.on_train_epoch_start()
    return trainer


def teacher_forward_call(trainer, batch: dict, device: str) -> Callable[[], object]:
    """The frozen trainer's teacher forward on ``batch`` as ``train_step`` runs it (autocast on GPU)."""
    from nnunetv2.utilities.helpers import dummy_context
    from torch import autocast

    data = batch["data"].to(trainer.device)

    def call():
        with autocast(trainer.device.type, enabled=True) if trainer.device.type == "cuda" else dummy_context():
            return trainer.teacher_forward(data)

    return call


def run(data: common.BenchData, device: str = "cpu", repeats: int = 5, warmup: int = 1,
        out_dir: Path | None = None, log: Callable[[str], None] = print) -> dict:
    """Time the steps interleaved; return (and write) the results."""
    common.activate(data, device)
    set_threads(device)
    t_start = time.perf_counter()
    teacher_file = save_teacher(data, device)
    log("two-stage: building trainers")
    trainers = {key: build(name, data, device) for key, name in TRAINERS.items()}
    batch = make_batch(trainers["single_stage"], 4, pin=device.startswith("cuda"))
    calls: dict[str, Callable[[], object]] = {key: (lambda t=t: t.train_step(batch)) for key, t in trainers.items()}
    calls["teacher_forward"] = teacher_forward_call(trainers["two_stage"], batch, device)
    log(f"two-stage: {warmup} warm-up + {repeats} interleaved rounds, patch "
        f"{list(trainers['single_stage'].configuration_manager.patch_size)}, batch "
        f"{trainers['single_stage'].batch_size}")
    samples = common.interleaved(calls, repeats, warmup, device, log=log)
    student_plus_teacher = common.summed(samples["student_only"], samples["teacher_forward"])
    frozen = trainers["two_stage"]
    result: dict = {
        "benchmark": "bench_two_stage", "device": device, "geometry": data.geometry,
        "machine": common.machine_info(device), "plans": plans_summary(trainers["single_stage"]),
        "trainers": dict(TRAINERS), "teacher_checkpoint": str(teacher_file),
        "compile": os.environ.get("nnUNet_compile", "default"), "warmup_rounds": warmup, "repeats": repeats,
        "optimised_tensors": {key: sum(len(g["params"]) for g in t.optimizer.param_groups)
                              for key, t in trainers.items()},
        "teacher_trainable_tensors_in_two_stage": sum(p.requires_grad for p in frozen.kd_modules["teacher"].parameters()),
        "seconds": {key: common.stats(values) for key, values in samples.items()},
        "samples_seconds": samples,
        "ratios": {
            "two_stage_over_single_stage": common.ratios(samples["two_stage"], samples["single_stage"]),
            "two_stage_over_student_plus_teacher_forward": common.ratios(samples["two_stage"], student_plus_teacher),
            "student_only_over_single_stage": common.ratios(samples["student_only"], samples["single_stage"]),
        },
    }
    result["wall_seconds"] = time.perf_counter() - t_start
    if out_dir is not None:
        common.write_json(Path(out_dir) / "bench_two_stage.json", result)
    return result


def summary_lines(result: dict) -> list[str]:
    s, r = result["seconds"], result["ratios"]
    return [
        f"train step ({result['device']}, patch {result['plans']['patch_size']}, batch "
        f"{result['plans']['batch_size']}), medians: single-stage {s['single_stage']['median']:.3f} s, two-stage "
        f"{s['two_stage']['median']:.3f} s, student only {s['student_only']['median']:.3f} s, teacher forward "
        f"{s['teacher_forward']['median']:.3f} s",
        f"  two-stage / single-stage:                     {common.fmt_ratio(r['two_stage_over_single_stage'])}",
        f"  two-stage / (student step + teacher forward): "
        f"{common.fmt_ratio(r['two_stage_over_student_plus_teacher_forward'])}",
    ]


def main(argv: Sequence[str] | None = None) -> int:
    parser = common.parser("bench_two_stage", __doc__, repeats=5)
    common.add_dataset_arguments(parser)
    args = parser.parse_args(argv)
    cache, geometry = common.dataset_arguments(args)
    data = common.prepare_dataset(cache, geometry)
    result = run(data, args.device, args.repeats, args.warmup, args.out)
    return common.print_summary(summary_lines(result), args.out, "bench_two_stage")


if __name__ == "__main__":
    raise SystemExit(main())
