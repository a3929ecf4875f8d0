"""Benchmark: the Barlow Twins term's forward + backward time as a fraction of a whole KD training step.

Run ``python -m benchmarks.bench_barlow --out DIR [--device cpu|cuda]`` (writes ``DIR/bench_barlow.json``).

One ``nnUNetTrainerBarlowKD`` is built on the benchmark plans. The bottleneck features of student and teacher
are taken from one forward pass of a fixed random batch (under autocast on CUDA, as in training) and kept as
leaf tensors. Timed, interleaved per round:

* ``kd_step``: ``trainer.train_step(batch)`` (student + teacher + Barlow Twins, backward, optimizer step);
* ``barlow``: ``trainer.distillation_terms(...)`` on those features (both 1x1x1 projectors and the Barlow Twins
  loss, in fp32 as in the step) times its weight, then ``backward()`` down to the features; the mean over
  ``--inner`` calls per round.

Goal: ``barlow / kd_step < 3 %`` (ratio of medians).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path

from benchmarks import common
from benchmarks.bench_train_step import build_trainer, make_batch, set_threads

GOAL_FRACTION_MAX = 0.03


def bottleneck_features(trainer, batch: dict, device: str):
    """(student, teacher) bottleneck features of ``batch`` as detached leaves that require grad."""
    import torch

    from nnunet_kd.trainers.barlow_kd import unwrap

    captured: dict[str, torch.Tensor] = {}
    handles = []
    for key, net in (("student", trainer.network), ("teacher", trainer.kd_modules["teacher"])):
        handles.append(unwrap(net).encoder.register_forward_hook(
            lambda _m, _i, skips, key=key: captured.__setitem__(key, skips[-1])))
    data = batch["data"].to(trainer.device)
    try:
        with torch.no_grad(), torch.autocast(device.split(":")[0], enabled=device.startswith("cuda")):
            trainer.network(trainer.student_input(data))
            trainer.kd_modules["teacher"](data)
    finally:
        for h in handles:
            h.remove()
    return (captured["student"].detach().requires_grad_(True), captured["teacher"].detach().requires_grad_(True))


def run(data: common.BenchData, device: str = "cpu", repeats: int = 5, warmup: int = 1, inner: int = 5,
        out_dir: Path | None = None, log: Callable[[str], None] = print, threads: int | None = None) -> dict:
    """Time the Barlow Twins part and the whole KD step interleaved; return (and write) the results."""
    import torch

    common.activate(data, device)
    set_threads(device, threads)
    t_start = time.perf_counter()
    trainer = build_trainer("kd", data, device)
    batch = make_batch(trainer, 4, pin=device.startswith("cuda"))
    z_student, z_teacher = bottleneck_features(trainer, batch, device)
    weight = trainer.loss_weights()["barlow_loss"]

    def barlow() -> None:
        for _ in range(inner):
            terms = trainer.distillation_terms(None, None, z_student, z_teacher)
            (weight * terms["barlow_loss"]).backward()

    log(f"barlow: bottleneck {list(z_student.shape)} ({z_student.dtype}), projector dim {trainer.projector_dim}; "
        f"{warmup} warm-up + {repeats} rounds")
    samples = common.interleaved({"kd_step": lambda: trainer.train_step(batch), "barlow": barlow}, repeats, warmup,
                                 device, log=log)
    samples["barlow"] = [s / inner for s in samples["barlow"]]
    fraction = common.ratios(samples["barlow"], samples["kd_step"])
    result = {
        "benchmark": "bench_barlow", "device": device, "geometry": data.geometry,
        "bottleneck_shape": list(z_student.shape), "bottleneck_dtype": str(z_student.dtype),
        "projector_dim": trainer.projector_dim, "torch_threads": torch.get_num_threads(), "barlow_weight": weight, "inner_calls_per_round": inner,
        "warmup_rounds": warmup, "repeats": repeats,
        "seconds": {k: common.stats(v) for k, v in samples.items()}, "samples_seconds": samples,
        "fraction_of_kd_step": fraction, "goal": f"fraction < {GOAL_FRACTION_MAX}",
        "goal_met": fraction["of_medians"] < GOAL_FRACTION_MAX,
        "wall_seconds": time.perf_counter() - t_start,
    }
    if out_dir is not None:
        common.write_json(Path(out_dir) / "bench_barlow.json", result)
    return result


def summary_lines(result: dict) -> list[str]:
    s, f = result["seconds"], result["fraction_of_kd_step"]
    return [f"Barlow Twins fwd+bwd ({result['device']}, bottleneck {result['bottleneck_shape']}): median "
            f"{s['barlow']['median'] * 1e3:.2f} ms of a {s['kd_step']['median']:.3f} s KD step = "
            f"{100 * f['of_medians']:.2f} % (per-round median {100 * f['per_round_median']:.2f} %)  goal < "
            f"{100 * GOAL_FRACTION_MAX:.0f} %"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = common.parser("bench_barlow", __doc__, repeats=5)
    common.add_dataset_arguments(parser)
    parser.add_argument("--inner", type=int, default=5, help="Barlow Twins calls per round, averaged (default 5)")
    args = parser.parse_args(argv)
    cache, geometry = common.dataset_arguments(args)
    data = common.prepare_dataset(cache, geometry)
    result = run(data, args.device, args.repeats, args.warmup, args.inner, args.out, threads=args.threads)
    return common.print_summary(summary_lines(result), args.out, "bench_barlow")


if __name__ == "__main__":
    raise SystemExit(main())
