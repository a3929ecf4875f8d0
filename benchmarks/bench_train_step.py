"""Benchmark: one ``nnUNetTrainerBarlowKD`` training step against stock nnU-Net steps on the same plans.

Run ``python -m benchmarks.bench_train_step --out DIR [--device cpu|cuda]`` (writes ``DIR/bench_train_step.json``).

Three trainers are built in this process on the same plans, patch and batch size and initialised as
``nnUNetv2_train`` would (plans + dataset.json of the preprocessed dataset, ``initialize``):

* ``kd``: ``nnUNetTrainerBarlowKD`` (4-channel teacher + T1ce/FLAIR student + Barlow Twins), fed 4-channel batches;
* ``stock_4ch``: stock ``nnUNetTrainer`` on the 4-channel dataset;
* ``stock_2ch``: stock ``nnUNetTrainer`` whose dataset.json lists only T1ce and FLAIR, fed those 2 channels.

Their ``train_step`` runs on fixed random batches (data ``(B, C, *patch)`` and one region target per
deep-supervision scale, as nnU-Net's loader delivers them), warm-up rounds first, then interleaved rounds with
the order rotated each round. Goals: KD <= 1.05 x (4-ch step + 2-ch step) and KD <= 2.0 x 4-ch step.

Peak memory of each trainer is measured in a fresh process per trainer (``--probe``): CUDA max allocated
since start (parameters, gradients, optimizer state, activations) on GPU; on CPU the peak resident set size
minus the resident size after imports, before the trainer is built. Goal: KD <= 1.9 x stock 4-ch.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from benchmarks import common

VARIANTS: tuple[str, ...] = ("kd", "stock_4ch", "stock_2ch")
GOALS = {"kd_over_sum_max": 1.05, "kd_over_stock_4ch_max": 2.0, "memory_kd_over_stock_4ch_max": 1.9}


def set_threads(device: str, threads: int | None = None) -> None:
    """Torch threads: ``threads``, or as ``nnUNetv2_train`` sets them (all cores on CPU); cuDNN autotuning on GPU."""
    import torch

    if threads is not None:
        torch.set_num_threads(int(threads))
    elif device == "cpu":
        torch.set_num_threads(os.cpu_count() or 1)
    if device != "cpu":
        torch.backends.cudnn.benchmark = True


def build_trainer(variant: str, data: common.BenchData, device: str):
    """An initialised trainer of ``variant`` (see :data:`VARIANTS`) on the benchmark dataset.

    Built as ``nnUNetv2_train`` builds it (``get_trainer_from_args``: plans and dataset.json of the preprocessed
    dataset, ``continue_training`` False), with the class imported directly rather than searched for.
    """
    import torch
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    from nnunet_kd.subsets.modalities import resolve_channels, student_dataset_json
    from nnunet_kd.trainers.barlow_kd import nnUNetTrainerBarlowKD

    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; choose from {VARIANTS}")
    plans, dataset_json = data.plans(), data.dataset_json()
    plans["continue_training"] = False
    trainer_class = nnUNetTrainerBarlowKD if variant == "kd" else nnUNetTrainer
    if variant == "stock_2ch":
        subset = resolve_channels(dataset_json["channel_names"], nnUNetTrainerBarlowKD.student_modalities)
        dataset_json = student_dataset_json(dataset_json, subset)
    with common.quiet():
        trainer = trainer_class(plans, common.CONFIGURATION, 0, dataset_json, torch.device(device))
        trainer.initialize()
        trainer.on_train_epoch_start()  # train mode, learning rate of epoch 0
    return trainer


def input_channels(variant: str) -> int:
    return 2 if variant == "stock_2ch" else 4


def make_batch(trainer, channels: int, seed: int = 0, pin: bool = False) -> dict:
    """A fixed random batch shaped like nnU-Net's loader output for ``trainer``'s plans.

    ``data``: (B, channels, *patch) float32; ``target``: per deep-supervision scale a (B, regions, *shape) bool
    tensor (region training, BraTS) or (B, 1, *shape) label map, nested regions derived from random labels.
    """
    import torch
    from torch.nn.functional import interpolate

    patch = [int(p) for p in trainer.configuration_manager.patch_size]
    batch_size = int(trainer.batch_size)
    g = torch.Generator().manual_seed(seed)
    data = torch.randn((batch_size, channels, *patch), generator=g)
    labels = torch.randint(0, 4, (batch_size, 1, *patch), generator=g)
    lm = trainer.label_manager
    if lm.has_regions:
        full = torch.cat([torch.isin(labels, torch.tensor([r] if isinstance(r, int) else list(r)))
                          for r in lm.foreground_regions], 1)
    else:
        full = labels.to(torch.int16)
    scales = trainer._get_deep_supervision_scales()
    if scales is None:
        target = full
    else:
        target = []
        for scale in scales:
            shape = [max(1, int(round(p * s))) for p, s in zip(patch, scale)]
            down = interpolate(full.float(), size=shape, mode="nearest-exact") if shape != patch else full.float()
            target.append(down.to(full.dtype))
    if pin:
        data = data.pin_memory()
        target = [t.pin_memory() for t in target] if isinstance(target, list) else target.pin_memory()
    return {"data": data, "target": target}


def student_channels_of(batch: dict, trainer_kd) -> dict:
    """The 2-channel batch a stock T1ce/FLAIR training would load (same voxels as the KD student sees)."""
    data = batch["data"][:, list(trainer_kd.student_subset.indices)].contiguous()
    if batch["data"].is_pinned():
        data = data.pin_memory()
    return {"data": data, "target": batch["target"]}


def count_parameters(module) -> int:
    return int(sum(p.numel() for p in module.parameters()))


def plans_summary(trainer) -> dict:
    """Patch, batch and network size of the configuration being timed."""
    cm = trainer.configuration_manager
    kwargs = cm.network_arch_init_kwargs
    return {"patch_size": [int(p) for p in cm.patch_size], "batch_size": int(trainer.batch_size),
            "spacing": [float(s) for s in cm.spacing], "n_stages": kwargs.get("n_stages"),
            "features_per_stage": kwargs.get("features_per_stage"),
            "deep_supervision_scales": trainer._get_deep_supervision_scales()}


# ------------------------------------------------------------------------------------------------ memory probe

def probe_memory(variant: str, data: common.BenchData, device: str, steps: int = 2,
                 threads: int | None = None) -> dict:
    """Peak memory of ``steps`` training steps (after one warm-up step) of ``variant``; call in a fresh process."""
    import torch

    set_threads(device, threads)
    import nnunetv2.training.nnUNetTrainer.nnUNetTrainer  # noqa: F401  (imports count in the baseline)

    import nnunet_kd.trainers.barlow_kd  # noqa: F401

    baseline_rss = common.rss_bytes()
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    trainer = build_trainer(variant, data, device)
    batch = make_batch(trainer, input_channels(variant), pin=device.startswith("cuda"))
    for _ in range(1 + steps):
        trainer.train_step(batch)
    common.sync(device)
    result = {"variant": variant, "device": device, "steps": 1 + steps, "baseline_rss_bytes": baseline_rss,
              "peak_rss_bytes": common.peak_rss_bytes()}
    result["peak_rss_increment_bytes"] = result["peak_rss_bytes"] - baseline_rss
    if device.startswith("cuda"):
        result["cuda_max_allocated_bytes"] = int(torch.cuda.max_memory_allocated())
        result["cuda_max_reserved_bytes"] = int(torch.cuda.max_memory_reserved())
    result["metric"] = "cuda_max_allocated_bytes" if device.startswith("cuda") else "peak_rss_increment_bytes"
    result["value_bytes"] = result[result["metric"]]
    return result


def probe_in_subprocess(variant: str, cache: Path, geometry: str, device: str, steps: int = 2,
                        threads: int | None = None) -> dict:
    """:func:`probe_memory` in a fresh Python process (peak memory cannot be reset in-process on CPU)."""
    cmd = [sys.executable, "-m", "benchmarks.bench_train_step", "--probe", variant, "--cache", str(cache),
           "--geometry", geometry, "--device", device, "--probe-steps", str(steps)]
    if threads is not None:
        cmd += ["--threads", str(threads)]
    root = Path(__file__).resolve().parent.parent
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(root), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=root)
    if proc.returncode != 0:
        raise RuntimeError(f"memory probe {variant} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------------------ main benchmark

def run(data: common.BenchData, cache: Path, device: str = "cpu", repeats: int = 5, warmup: int = 1,
        memory: bool = True, probe_steps: int = 2, out_dir: Path | None = None,
        log: Callable[[str], None] = print, threads: int | None = None) -> dict:
    """Time the three steps interleaved, probe their peak memory, return (and write) the results."""
    import torch

    common.activate(data, device)
    set_threads(device, threads)
    t_start = time.perf_counter()
    log("train step: building trainers")
    trainers = {v: build_trainer(v, data, device) for v in VARIANTS}
    pin = device.startswith("cuda")
    batch4 = make_batch(trainers["kd"], 4, pin=pin)
    batch2 = student_channels_of(batch4, trainers["kd"])
    batches = {"kd": batch4, "stock_4ch": batch4, "stock_2ch": batch2}
    calls = {v: (lambda t=trainers[v], b=batches[v]: t.train_step(b)) for v in VARIANTS}
    log(f"train step: {warmup} warm-up + {repeats} interleaved rounds, patch "
        f"{list(trainers['kd'].configuration_manager.patch_size)}, batch {trainers['kd'].batch_size}")
    samples = common.interleaved(calls, repeats, warmup, device, log=log)
    kd_modules = trainers["kd"].kd_modules
    result: dict = {
        "benchmark": "bench_train_step", "device": device, "geometry": data.geometry,
        "plans": plans_summary(trainers["kd"]),
        "parameters": {"student": count_parameters(trainers["kd"].network),
                       "teacher": count_parameters(kd_modules["teacher"]),
                       "projectors": count_parameters(kd_modules) - count_parameters(kd_modules["teacher"]),
                       "stock_4ch": count_parameters(trainers["stock_4ch"].network),
                       "stock_2ch": count_parameters(trainers["stock_2ch"].network)},
        "compile": os.environ.get("nnUNet_compile", "default"), "torch_threads": torch.get_num_threads(),
        "warmup_rounds": warmup, "repeats": repeats,
        "seconds": {v: stats for v, stats in ((v, common.stats(samples[v])) for v in VARIANTS)},
        "samples_seconds": samples,
    }
    sum_2 = common.summed(samples["stock_4ch"], samples["stock_2ch"])
    result["ratios"] = {"kd_over_stock_4ch": common.ratios(samples["kd"], samples["stock_4ch"]),
                        "kd_over_sum_4ch_2ch": common.ratios(samples["kd"], sum_2),
                        "stock_2ch_over_stock_4ch": common.ratios(samples["stock_2ch"], samples["stock_4ch"])}
    del trainers, calls
    if memory:
        log("train step: peak memory, one fresh process per trainer")
        probes = {v: probe_in_subprocess(v, cache, data.geometry, device, probe_steps, threads)
                  for v in VARIANTS}
        mem = {v: probes[v]["value_bytes"] for v in VARIANTS}
        result["memory"] = {"metric": probes["kd"]["metric"], "bytes": mem, "probes": probes,
                            "kd_over_stock_4ch": mem["kd"] / mem["stock_4ch"],
                            "kd_over_sum_4ch_2ch": mem["kd"] / (mem["stock_4ch"] + mem["stock_2ch"])}
    r = result["ratios"]
    result["goals"] = GOALS
    result["goal_met"] = {
        "kd_over_sum": r["kd_over_sum_4ch_2ch"]["of_medians"] <= GOALS["kd_over_sum_max"],
        "kd_over_stock_4ch": r["kd_over_stock_4ch"]["of_medians"] <= GOALS["kd_over_stock_4ch_max"],
    }
    if memory:
        result["goal_met"]["memory"] = result["memory"]["kd_over_stock_4ch"] <= GOALS["memory_kd_over_stock_4ch_max"]
    result["wall_seconds"] = time.perf_counter() - t_start
    if out_dir is not None:
        common.write_json(Path(out_dir) / "bench_train_step.json", result)
    return result


def summary_lines(result: dict) -> list[str]:
    """Human-readable lines of a :func:`run` result."""
    s, r = result["seconds"], result["ratios"]
    lines = [f"train step ({result['device']}, patch {result['plans']['patch_size']}, batch "
             f"{result['plans']['batch_size']}): median KD {s['kd']['median']:.3f} s, stock 4-ch "
             f"{s['stock_4ch']['median']:.3f} s, stock 2-ch {s['stock_2ch']['median']:.3f} s",
             f"  KD / (4-ch + 2-ch): {common.fmt_ratio(r['kd_over_sum_4ch_2ch'])}  goal <= "
             f"{GOALS['kd_over_sum_max']}",
             f"  KD / 4-ch:          {common.fmt_ratio(r['kd_over_stock_4ch'])}  goal <= "
             f"{GOALS['kd_over_stock_4ch_max']}"]
    if "memory" in result:
        m = result["memory"]
        mib = {k: v / 2**20 for k, v in m["bytes"].items()}
        lines.append(f"  peak memory ({m['metric']}): KD {mib['kd']:.0f} MiB, 4-ch {mib['stock_4ch']:.0f} MiB, "
                     f"2-ch {mib['stock_2ch']:.0f} MiB -> KD / 4-ch {m['kd_over_stock_4ch']:.3f}x (goal <= "
                     f"{GOALS['memory_kd_over_stock_4ch_max']}), KD / (4-ch + 2-ch) {m['kd_over_sum_4ch_2ch']:.3f}x")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = common.parser("bench_train_step", __doc__, repeats=5)
    common.add_dataset_arguments(parser)
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory probes")
    parser.add_argument("--probe", choices=VARIANTS, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--probe-steps", type=int, default=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    cache, geometry = common.dataset_arguments(args)
    if args.probe is not None:  # internal: one trainer in this fresh process, JSON on the last stdout line
        data = common.prepare_dataset(cache, geometry, log=lambda _m: None)
        common.activate(data, args.device)
        print(json.dumps(probe_memory(args.probe, data, args.device, args.probe_steps, args.threads)))
        return 0
    data = common.prepare_dataset(cache, geometry)
    result = run(data, cache, args.device, args.repeats, args.warmup, not args.no_memory, args.probe_steps,
                 args.out, threads=args.threads)
    return common.print_summary(summary_lines(result), args.out, "bench_train_step")


if __name__ == "__main__":
    raise SystemExit(main())
