"""Benchmark: start-up of nnU-Net's trainer look-up for a KD student against a stock model, in fresh processes.

Run ``python -m benchmarks.bench_startup --out DIR [--repeats N]`` (writes ``DIR/bench_startup.json``). No dataset
is needed.

``nnUNetv2_predict`` (and ``nnUNetv2_train``) start by importing nnU-Net's predictor and calling
``recursive_find_trainer_class_by_name`` with the trainer named in the model folder; for a trainer outside nnU-Net
that walks every module of nnU-Net's trainer folder, then imports the modules of each ``nnUNet_extTrainer``
folder. Each timed sample here is one fresh ``python`` process doing exactly that start-up (import
``nnunetv2.inference.predict_from_raw_data``, look up the trainer), wall time of the whole process:

* ``stock``: ``nnUNetTrainer`` (found in nnU-Net's first module);
* ``ours``: ``nnUNetTrainerBarlowKD`` through ``$(nnunet-kd ext-path)`` (the lazy registry: only
  ``nnunet_kd.trainers.barlow_kd`` and what it needs are imported);
* ``eager``: the same name through a temporary folder whose one module imports every nnunet-kd trainer (``from
  nnunet_kd.trainer_registry.nnunet_kd_trainers import *``), i.e. what the registry did before it was lazy.

Samples are interleaved (order rotated each round) after one warm-up round. Goal: ours <= 1.05 x stock (ratio of
medians of wall time). The CPU time (user + system) of each process is recorded too: on a shared, overloaded
machine it moves far less than wall time, so its ratio is the steadier reading of the same start-up work. The full ``nnUNetv2_predict`` command, start-up included, is timed by ``bench_inference``.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from benchmarks import common

GOAL_MAX = 1.05
OURS, STOCK = "nnUNetTrainerBarlowKD", "nnUNetTrainer"

_STARTUP = (
    "import contextlib, io, sys, warnings\n"
    "warnings.simplefilter('ignore')\n"
    "import nnunetv2.inference.predict_from_raw_data\n"
    "from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name\n"
    "with contextlib.redirect_stdout(io.StringIO()):\n"
    "    cls = recursive_find_trainer_class_by_name(sys.argv[1])\n"
    "assert cls.__name__ == sys.argv[1], cls\n"
)


def _process(name: str, ext_folder: Path, threads: int | None, cpu_seconds: list[float]) -> Callable[[], None]:
    """One start-up in a fresh process; appends its CPU time (user + system, from the reaped child) to the list."""
    import os
    import resource

    env = {k: v for k, v in os.environ.items() if k != "nnUNet_extTrainer"}
    env["nnUNet_extTrainer"] = str(ext_folder)
    for key in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        env.setdefault(key, tempfile.gettempdir())  # nnU-Net only warns when unset, but keep its output quiet
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)

    def call() -> None:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        proc = subprocess.run([sys.executable, "-c", _STARTUP, name], env=env, capture_output=True, text=True)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu_seconds.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
        if proc.returncode != 0:
            raise RuntimeError(f"look-up of {name} failed:\n{proc.stderr[-2000:]}")

    return call


def run(repeats: int = 5, warmup: int = 1, out_dir: Path | None = None, threads: int | None = 1,
        log: Callable[[str], None] = print) -> dict:
    from nnunet_kd.paths import trainer_registry_folder

    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="nnunet_kd_eager_") as tmp:
        eager = Path(tmp)
        (eager / "eager_trainers.py").write_text(
            "from nnunet_kd.trainer_registry.nnunet_kd_trainers import *  # noqa: F401,F403\n")
        cpu: dict[str, list[float]] = {"stock": [], "ours": [], "eager": []}
        calls = {"stock": _process(STOCK, trainer_registry_folder(), threads, cpu["stock"]),
                 "ours": _process(OURS, trainer_registry_folder(), threads, cpu["ours"]),
                 "eager": _process(OURS, eager, threads, cpu["eager"])}
        log(f"start-up: fresh processes, {warmup} warm-up + {repeats} interleaved rounds")
        samples = common.interleaved(calls, repeats, warmup, log=log)
        cpu = {k: v[warmup:] for k, v in cpu.items()}
    result = {
        "benchmark": "startup",
        "what": "fresh python process: import nnU-Net's predictor, recursive_find_trainer_class_by_name(name)",
        "trainers": {"stock": STOCK, "ours": OURS, "eager": OURS},
        "samples_s": samples,
        "stats": {k: common.stats(v) for k, v in samples.items()},
        "ratio_ours_stock": common.ratios(samples["ours"], samples["stock"]),
        "ratio_eager_stock": common.ratios(samples["eager"], samples["stock"]),
        "cpu_samples_s": cpu,
        "cpu_stats": {k: common.stats(v) for k, v in cpu.items()},
        "cpu_ratio_ours_stock": common.ratios(cpu["ours"], cpu["stock"]),
        "cpu_ratio_eager_stock": common.ratios(cpu["eager"], cpu["stock"]),
        "goal": {"ours_over_stock_max": GOAL_MAX},
        "machine": common.machine_info("cpu"),
        "load_average_after": list(_loadavg()),
        "wall_seconds": time.perf_counter() - t_start,
    }
    result["goal"]["met"] = result["ratio_ours_stock"]["of_medians"] <= GOAL_MAX
    if out_dir is not None:
        common.write_json(Path(out_dir) / "bench_startup.json", result)
    return result


def _loadavg() -> tuple[float, float, float]:
    import os

    return os.getloadavg()


def summary_lines(result: dict) -> list[str]:
    s = result["stats"]
    return [
        f"start-up (look-up of the trainer in a fresh process), median s: stock {s['stock']['median']:.3f}, "
        f"ours {s['ours']['median']:.3f}, eager registry {s['eager']['median']:.3f}",
        f"ours / stock: {common.fmt_ratio(result['ratio_ours_stock'])} (goal <= {GOAL_MAX}: "
        f"{'met' if result['goal']['met'] else 'MISSED'}); eager / stock: {common.fmt_ratio(result['ratio_eager_stock'])}",
        f"CPU time (user + system of the process), ours / stock: {common.fmt_ratio(result['cpu_ratio_ours_stock'])}; "
        f"eager / stock: {common.fmt_ratio(result['cpu_ratio_eager_stock'])}",
        f"load average after the run: {', '.join(f'{x:.2f}' for x in result['load_average_after'])}",
    ]


def main(argv: Sequence[str] | None = None) -> int:
    parser = common.parser("bench_startup", __doc__, repeats=5)
    parser.add_argument("--out", default="bench_output", help="folder for bench_startup.json (default bench_output)")
    parser.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of the processes (default 1)")
    args = parser.parse_args(argv)
    result = run(args.repeats, args.warmup, Path(args.out), args.threads)
    return common.print_summary(summary_lines(result), args.out, "bench_startup")


if __name__ == "__main__":
    raise SystemExit(main())
