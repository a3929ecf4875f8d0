"""Benchmark: BraTS geometry (240x240x155 at 1 mm) on a CPU: nnU-Net's plans, KD against stock training
iterations (time, peak memory), a full-size prediction by the student and by a stock 2-channel model, and the
prediction's geometry.

    python -m benchmarks.bench_brats_geometry --out DIR [--size 240,240,155] [--spacing 1] [--cases 2]
        [--iterations 3] [--warmup 1] [--threads 1] [--batches auto|1,2] [--wait-memory S] [--tta]

Not part of ``run_all`` (whose benchmarks take minutes on a 2-core CPU; this one takes tens of minutes and
up to ~10 GiB of memory at full size). Writes ``DIR/bench_brats_geometry.json`` (every sample) and
``DIR/bench_brats_geometry.md`` (the table), and prints the table. Steps:

1. ``dataset``: ``nnunet-kd synth --shape SIZE --spacing MM`` (grid centred on the brain, as a BraTS volume) ->
   ``nnunet-kd convert-brats`` -> stock ``nnUNetv2_plan_and_preprocess -c 3d_fullres``, each a timed subprocess,
   into ``DIR/_data/<size>_<spacing>mm`` (reused when complete with the same parameters). The plans nnU-Net
   picked (patch, batch, stages, spacing, median shape) are reported as they are.
2. ``train``: one fresh process per (trainer, batch size) -- peak memory is per process -- builds the trainer
   as :func:`benchmarks.bench_train_step.build_trainer` does at those plans, runs ``warmup`` + ``iterations``
   ``train_step`` calls on a fixed random batch (:func:`benchmarks.bench_train_step.make_batch`) and reports the
   seconds per iteration and the peak resident set size (VmHWM). Trainers: ``stock_4ch`` (stock
   ``nnUNetTrainer``) and ``kd`` (``nnUNetTrainerBarlowKD``), in that order at each batch size. Batch 1 first;
   each run only when the memory available (``MemAvailable``) exceeds its estimate by 3 GiB: KD at batch 1 from
   the stock run (twice its increment over imports), either trainer at the plans' batch ``b`` from its batch-1
   run (``peak + (b - 1) x (peak - RSS after the trainer was built)``); when KD does not fit at a batch, neither
   runs there (no ratio to give) and the estimate is reported. A watchdog in every probe ends it (exit 3) when
   ``MemAvailable`` falls under 1.5 GiB, so that an estimate that was too low cannot take the machine's memory
   from other work.
3. ``predict``: :func:`benchmarks.bench_inference.write_model_folders` writes the student (``nnUNetTrainerBarlowKD``)
   and a stock ``nnUNetTrainer`` on the same two channels (T1ce, FLAIR), the same plans and the same (untrained)
   weights; both predict one full-size case made by ``select_modalities`` with the real ``nnUNetv2_predict``
   (sliding window at the plans' patch, test-time mirroring off unless ``--tta``), one after the other, timed.
   This is the honest comparison for the cost of our predictor: a stock 2-channel nnU-Net planned on its own
   would differ from the student only by what its planner picks for 2 channels, and a trained one would
   predict different labels (different export work); here the two differ only by our code, and the two
   predictions must be equal. Each prediction's size, spacing, origin and direction must equal the input's.

Torch threads: ``--threads`` (default 1) in the training probes; ``nnUNetv2_predict`` sets torch threads to
all cores on CPU itself. Nothing here asserts on speed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from benchmarks import common
from benchmarks.bench_train_step import (
    build_trainer,
    count_parameters,
    input_channels,
    make_batch,
    plans_summary,
    set_threads,
)

BRATS_SIZE = (240, 240, 155)
#: measured in this order at every batch size: the stock run's peak bounds the KD run's estimate
TRAINERS = ("stock_4ch", "kd")
ROOT = Path(__file__).resolve().parent.parent
GIB = 2**30
#: ``min_available``: a probe or prediction ends itself when the machine's available memory falls below it (0: no
#: watchdog); ``margin``: a training run starts only when its estimate plus this is available (``--min-available``,
#: ``--margin``)
GUARD = {"min_available": int(1.5 * GIB), "margin": 3 * GIB, "first_estimate": 0}


# ------------------------------------------------------------------------------------------------ memory

def available_bytes() -> int:
    """``MemAvailable`` of /proc/meminfo (what can be allocated without swapping), 0 if unknown."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return 1024 * int(line.split()[1])
    except OSError:
        pass
    return 0


def start_watchdog(minimum: int | None = None, interval: float = 0.2) -> None:
    """End this process (exit 3, one line on stderr) when the machine's available memory falls below ``minimum``."""
    minimum = GUARD["min_available"] if minimum is None else minimum
    if not available_bytes() or minimum <= 0:
        return

    def watch() -> None:
        while True:
            free = available_bytes()
            if free and free < minimum:
                sys.stderr.write(f"bench_brats_geometry: available memory fell to {free / GIB:.2f} GiB; stopping this "
                                 f"measurement (peak RSS so far {common.peak_rss_bytes() / GIB:.2f} GiB)\n")
                sys.stderr.flush()
                _kill_children()  # nnU-Net's worker processes would hold the caller's pipes open
                os._exit(3)
            time.sleep(interval)

    threading.Thread(target=watch, daemon=True).start()


def _kill_children() -> None:
    """SIGKILL every direct child process of this one (from /proc: nnU-Net's pools are not ours to reach)."""
    import signal

    me = str(os.getpid())
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            ppid = next(line.split()[1] for line in status.read_text().splitlines() if line.startswith("PPid:"))
            if ppid == me:
                os.kill(int(status.parent.name), signal.SIGKILL)
        except (OSError, StopIteration, ValueError):
            continue


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return " ".join(f"{x:.2f}" for x in os.getloadavg())


# ------------------------------------------------------------------------------------------------ dataset

def _subprocess_base(threads: int) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["OMP_NUM_THREADS"] = str(threads)
    return env


def dataset_paths(cache: Path, size: Sequence[int], spacing: float) -> common.BenchData:
    name = f"{'x'.join(map(str, size))}_{spacing:g}mm"
    root = Path(cache).resolve() / name
    return common.BenchData(root, name, root / "brats2021", root / "nnUNet_raw", root / "nnUNet_preprocessed",
                            root / "nnUNet_results")


def prepare(cache: Path, size: Sequence[int], spacing: float, cases: int, threads: int,
            log: Callable[[str], None] = print) -> tuple[common.BenchData, dict]:
    """Synthesise, convert and plan (each step a subprocess, timed); reuse a complete build of the same record."""
    data = dataset_paths(cache, size, spacing)
    record = {"size": list(size), "spacing": spacing, "cases": cases, "dataset_id": common.DATASET_ID}
    ready = data.root / "ready.json"
    if ready.is_file() and json.loads(ready.read_text()).get("record") == record and \
            (data.dataset_preprocessed / f"{common.PLANS}.json").is_file():
        log(f"dataset: reusing {data.root}")
        return data, {**json.loads(ready.read_text())["seconds"], "reused": True}
    if data.root.exists():
        shutil.rmtree(data.root)
    data.root.mkdir(parents=True)
    for folder in (data.raw, data.preprocessed, data.results):
        folder.mkdir()
    env = common.subprocess_env(data, "cpu", _subprocess_base(threads))
    env["nnUNet_n_proc_DA"] = "1"  # the planner sets torch threads from it (0, the CPU default of training, fails)
    cli = [sys.executable, "-m", "nnunet_kd.cli"]
    steps = {
        "synth": cli + ["synth", str(data.source), "--cases", str(cases), "--shape", ",".join(map(str, size)),
                        "--spacing", f"{spacing:g}", "--no-progress"],
        "convert": cli + ["convert-brats", str(data.source), "-d", str(common.DATASET_ID), "-n", common.DATASET_NAME],
        "plan_and_preprocess": [str(common.BIN / "nnUNetv2_plan_and_preprocess"), "-d", str(common.DATASET_ID), "-c",
                                common.CONFIGURATION, "-np", "1", "-npfp", "1"],
    }
    seconds = {}
    for name, cmd in steps.items():
        log(f"dataset: {name} ...")
        t0 = time.perf_counter()
        common.run_checked(cmd, env)
        seconds[name] = time.perf_counter() - t0
        log(f"dataset: {name} {seconds[name]:.0f} s")
    common.write_json(ready, {"record": record, "seconds": seconds})
    return data, {**seconds, "reused": False}


def planned(data: common.BenchData) -> dict:
    """What ``nnUNetv2_plan_and_preprocess`` picked for 3d_fullres, and the shapes it planned from."""
    plans = data.plans()
    cfg = plans["configurations"][common.CONFIGURATION]
    arch = cfg["architecture"]["arch_kwargs"]
    fingerprint = json.loads((data.dataset_preprocessed / "dataset_fingerprint.json").read_text())
    shapes = fingerprint.get("shapes_after_crop", [])
    return {"patch_size": cfg["patch_size"], "batch_size": cfg["batch_size"], "spacing": cfg["spacing"],
            "n_stages": arch.get("n_stages"), "features_per_stage": arch.get("features_per_stage"),
            "median_image_size_in_voxels": cfg.get("median_image_size_in_voxels"),
            "shapes_after_crop": shapes, "configurations": sorted(plans["configurations"]),
            "transpose_forward": plans.get("transpose_forward")}


# ------------------------------------------------------------------------------------------------ training probes

def probe(variant: str, data: common.BenchData, batch: int, iterations: int, warmup: int, threads: int) -> dict:
    """Time ``warmup + iterations`` training steps of ``variant`` at ``batch``; call in a fresh process."""
    start_watchdog()
    common.activate(data, "cpu")
    set_threads("cpu", threads)
    import nnunetv2.training.nnUNetTrainer.nnUNetTrainer  # noqa: F401  (imports count in the baseline)
    import torch

    import nnunet_kd.trainers.barlow_kd  # noqa: F401

    baseline = common.rss_bytes()
    trainer = build_trainer(variant, data, "cpu")
    trainer.batch_size = int(batch)  # make_batch shapes the batch from it; nothing else in train_step reads it
    built = common.rss_bytes()
    batch_data = make_batch(trainer, input_channels(variant))
    seconds = []
    for _ in range(warmup + iterations):
        t0 = time.perf_counter()
        trainer.train_step(batch_data)
        seconds.append(time.perf_counter() - t0)
    network = trainer.network
    params = {"network": count_parameters(network)}
    if variant == "kd":
        params["kd_modules"] = count_parameters(trainer.kd_modules)
    return {"variant": variant, "batch": int(batch), "torch_threads": torch.get_num_threads(),
            "plans": plans_summary(trainer), "parameters": params, "warmup_seconds": seconds[:warmup],
            "seconds": seconds[warmup:], "baseline_rss_bytes": baseline, "built_rss_bytes": built,
            "peak_rss_bytes": common.peak_rss_bytes()}


def probe_in_subprocess(variant: str, data: common.BenchData, batch: int, iterations: int, warmup: int,
                        threads: int) -> dict:
    """:func:`probe` in a fresh Python process; a failure (or the memory watchdog) gives ``{"error": ...}``."""
    cmd = [sys.executable, "-m", "benchmarks.bench_brats_geometry", "--probe", variant, "--data-root",
           str(data.root), "--batch-size", str(batch), "--iterations", str(iterations), "--warmup", str(warmup),
           "--threads", str(threads), "--min-available", str(GUARD["min_available"] / GIB)]
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=common.subprocess_env(data, "cpu",
                                                                                          _subprocess_base(threads)),
                          cwd=ROOT)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        return {"variant": variant, "batch": batch, "error": f"exit {proc.returncode}: {tail}",
                "stderr_tail": proc.stderr[-3000:], "wall_seconds": wall}
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result.update({"wall_seconds": wall, "load_before": list(load_before), "load_after": list(os.getloadavg())})
    return result


def _watchdog_peak(result: dict) -> int | None:
    """The peak RSS a probe had reached when the memory watchdog stopped it, or None if it was not stopped so."""
    import re

    found = re.search(r"available memory fell to .*peak RSS so far ([0-9.]+) GiB", result.get("error", ""))
    return int(float(found.group(1)) * GIB) if found else None


def batch_estimate(result: dict, batch: int) -> int:
    """Peak RSS of a batch-1 probe's trainer at ``batch``: the batch-dependent part (peak - built) per sample."""
    return int(result["peak_rss_bytes"] + (batch - 1) * (result["peak_rss_bytes"] - result["built_rss_bytes"]))


def kd_estimate(stock: dict) -> int:
    """Peak RSS of KD from the stock 4-channel run at the same batch: two networks, so twice the increment over
    imports (measured 1.7 x on small plans, ``benchmarks/RESULTS.md``; 2 x keeps a margin)."""
    return int(stock["peak_rss_bytes"] + (stock["peak_rss_bytes"] - stock["baseline_rss_bytes"]))


def _fits(estimate: int, wait: float = 0.0) -> str | None:
    """None if ``estimate`` bytes plus the margin are available (polled for up to ``wait`` seconds), else why not."""
    deadline = time.monotonic() + wait
    while True:
        free = available_bytes()
        if not free or free >= estimate + GUARD["margin"]:
            return None
        if time.monotonic() >= deadline:
            return (f"needs ~{estimate / GIB:.1f} GiB peak RSS, {free / GIB:.1f} GiB available (< estimate + "
                    f"{GUARD['margin'] / GIB:g} GiB margin)" + (f" after waiting {wait:.0f} s" if wait else ""))
        time.sleep(min(10.0, max(0.0, deadline - time.monotonic())))


def train(data: common.BenchData, batches: Sequence[int] | None, iterations: int, warmup: int, threads: int,
          log: Callable[[str], None] = print, wait: float = 0.0,
          checkpoint: Callable[[dict], None] | None = None) -> dict:
    """The probes of every trainer at every batch size that fits; see the module docstring."""
    plan_batch = int(data.plans()["configurations"][common.CONFIGURATION]["batch_size"])
    wanted = sorted({1, plan_batch} if batches is None else {1, *(int(b) for b in batches)})  # 1: the estimates
    probes: dict[str, dict[str, dict]] = {}
    skipped: dict[str, str] = {}
    for batch in wanted:
        first = probes.get("1", {})
        for variant in TRAINERS:
            key = f"{variant}@{batch}"
            if batch == 1:
                stock = probes.get("1", {}).get("stock_4ch", {})
                if variant == "kd" and "peak_rss_bytes" not in stock:
                    skipped[key] = "the stock run at batch 1 did not finish: no estimate to start KD on"
                    log(f"train: kd batch 1 not run: {skipped[key]}")
                    continue
                estimate = ((kd_estimate(stock), "2 x the stock run's increment") if variant == "kd" else
                            (GUARD["first_estimate"], "first run: --first-estimate"))
            elif "peak_rss_bytes" not in first.get("kd", {}) or "peak_rss_bytes" not in first.get(variant, {}):
                skipped[key] = "KD or this trainer did not run at batch 1: no estimate, nothing to compare"
                continue
            else:
                kd_why = _fits(batch_estimate(first["kd"], batch), wait)
                if kd_why is not None:  # the stock run alone would give no ratio
                    skipped[key] = (f"KD at batch {batch} {kd_why} (from batch 1)" if variant == "kd" else
                                    f"KD does not fit at batch {batch}: nothing to compare")
                    log(f"train: {variant} batch {batch} not run: {skipped[key]}")
                    continue
                estimate = (batch_estimate(first[variant], batch), "from batch 1")
            why = _fits(estimate[0], wait) if estimate is not None else None
            if why is not None:
                skipped[key] = f"{why} ({estimate[1]})"
                log(f"train: {variant} batch {batch} not run: {skipped[key]}")
                continue
            log(f"train: {variant} batch {batch}, {warmup} warm-up + {iterations} iterations "
                f"({available_bytes() / GIB:.1f} GiB available) ...")
            result = probe_in_subprocess(variant, data, batch, iterations, warmup, threads)
            stopped = _watchdog_peak(result)
            if stopped is not None and wait > 0:  # other work took the memory: wait for what it had reached, once
                need = max(stopped, estimate[0] if estimate is not None else 0)
                log(f"train: {variant} batch {batch} stopped by the memory watchdog at {stopped / GIB:.2f} GiB; "
                    f"waiting up to {wait:.0f} s for {(need + GUARD['margin']) / GIB:.1f} GiB, then once more")
                if _fits(need, wait) is None:
                    first_try = result
                    result = probe_in_subprocess(variant, data, batch, iterations, warmup, threads)
                    result["first_try"] = first_try
            probes.setdefault(str(batch), {})[variant] = result
            if "error" in result:
                log(f"train: {variant} batch {batch} FAILED: {result['error']}")
            else:
                log(f"train: {variant} batch {batch}: {', '.join(f'{s:.1f}' for s in result['seconds'])} s/iteration, "
                    f"peak RSS {result['peak_rss_bytes'] / GIB:.2f} GiB")
            if checkpoint is not None:
                checkpoint(_train_summary(plan_batch, wanted, probes, skipped))
    return _train_summary(plan_batch, wanted, probes, skipped)


def _train_summary(plan_batch: int, wanted: list[int], probes: dict, skipped: dict) -> dict:
    ratios = {}
    for batch, by_variant in probes.items():
        kd, stock = by_variant.get("kd", {}), by_variant.get("stock_4ch", {})
        if kd.get("seconds") and stock.get("seconds"):
            ratios[batch] = {"time_kd_over_stock_4ch": common.ratios(kd["seconds"], stock["seconds"]),
                             "peak_rss_kd_over_stock_4ch": kd["peak_rss_bytes"] / stock["peak_rss_bytes"],
                             "peak_rss_increment_kd_over_stock_4ch":
                                 (kd["peak_rss_bytes"] - kd["baseline_rss_bytes"])
                                 / (stock["peak_rss_bytes"] - stock["baseline_rss_bytes"])}
    estimates = {f"{v}@{plan_batch}": batch_estimate(r, plan_batch) for v, r in probes.get("1", {}).items()
                 if "error" not in r and plan_batch > 1}
    return {"plan_batch": plan_batch, "batches_wanted": wanted, "probes": probes, "skipped": skipped,
            "ratios": ratios, "estimated_peak_rss_bytes": estimates}


# ------------------------------------------------------------------------------------------------ prediction

def run_predict(argv: Sequence[str]) -> int:
    """``nnUNetv2_predict`` with ``argv`` in this process under the memory watchdog; JSON of the peak RSS last."""
    import resource

    start_watchdog()
    from nnunetv2.inference.predict_from_raw_data import predict_entry_point

    sys.argv = ["nnUNetv2_predict", *argv]
    predict_entry_point()
    children_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    print(json.dumps({"peak_rss_bytes": common.peak_rss_bytes(), "children_max_rss_bytes": 1024 * children_kib}))
    return 0


def image_geometry(path: Path) -> dict:
    import SimpleITK as sitk

    image = sitk.ReadImage(str(path))
    return {"size": list(image.GetSize()), "spacing": list(image.GetSpacing()), "origin": list(image.GetOrigin()),
            "direction": list(image.GetDirection())}


def predict(data: common.BenchData, threads: int, tta: bool, log: Callable[[str], None] = print) -> dict:
    """Student and stock 2-channel model predict one full-size case; times, peak RSS and geometry checks."""
    import numpy as np
    import SimpleITK as sitk

    from benchmarks.bench_inference import OURS, STOCK, input_folder, write_model_folders
    from nnunet_kd.nifti import geometry_mismatch

    common.activate(data, "cpu")
    work = data.root / "predict"
    if work.exists():
        shutil.rmtree(work)
    results = work / "nnUNet_results"
    with common.quiet():
        folders = write_model_folders(data, results, "cpu")
    images = input_folder(data, work, 1)
    case = sorted(p.name[: -len("_0001.nii.gz")] for p in images.glob("*_0001.nii.gz"))[0]
    env = common.subprocess_env(data, "cpu", _subprocess_base(threads))
    env["nnUNet_results"] = str(results)
    source = sitk.ReadImage(str(images / f"{case}_0001.nii.gz"))
    out: dict = {"case": case, "input": image_geometry(images / f"{case}_0001.nii.gz"), "tta": tta, "models": {}}
    for key, trainer in (("stock", STOCK), ("ours", OURS)):
        target = work / f"pred_{key}"
        args = ["-i", str(images), "-o", str(target), "-d", str(data.dataset_id), "-c", common.CONFIGURATION,
                "-f", "0", "-tr", trainer, "-device", "cpu", "-npp", "1", "-nps", "1", "--disable_progress_bar"]
        if not tta:
            args.append("--disable_tta")
        cmd = [sys.executable, "-m", "benchmarks.bench_brats_geometry", "--run-predict",
               str(GUARD["min_available"] / GIB), "--", *args]
        log(f"predict: {key} ({trainer}) ... ({available_bytes() / GIB:.1f} GiB available)")
        load_before = os.getloadavg()
        t0 = time.perf_counter()
        stdout = common.run_checked(cmd, env)
        seconds = time.perf_counter() - t0
        memory = json.loads(stdout.strip().splitlines()[-1])
        pred_file = target / f"{case}.nii.gz"
        problem = geometry_mismatch(source, sitk.ReadImage(str(pred_file))) if pred_file.is_file() else "no file"
        out["models"][key] = {"trainer": trainer, "seconds": seconds, **memory, "geometry_problem": problem,
                              "geometry_equal": not problem, "prediction": image_geometry(pred_file)
                              if pred_file.is_file() else None, "load_before": list(load_before),
                              "load_after": list(os.getloadavg())}
        log(f"predict: {key} {seconds:.1f} s, geometry {'equal' if not problem else problem}")
    labels = {k: sitk.GetArrayFromImage(sitk.ReadImage(str(work / f"pred_{k}" / f"{case}.nii.gz")))
              for k in out["models"]}
    out["predictions_identical"] = bool(np.array_equal(labels["ours"], labels["stock"]))
    out["seconds_ours_over_stock"] = out["models"]["ours"]["seconds"] / out["models"]["stock"]["seconds"]
    out["checkpoint_bytes"] = {k: (f / "fold_0" / "checkpoint_final.pth").stat().st_size for k, f in folders.items()}
    return out


# ------------------------------------------------------------------------------------------------ report

def table(result: dict) -> str:
    """One markdown table of every figure (rows named as the test expects)."""
    p, tr, pr, m = result["plans"], result["train"], result.get("predict", {}), result["machine"]
    rows: list[tuple[str, str]] = [
        ("machine", f"{m['cpu_model']}, {m['usable_cpus']} CPUs, {m['memory_gib']} GiB RAM"),
        ("load before / after (uptime)", f"{result['uptime_before']} / {result.get('uptime_after', '-')}"
                                         + ("" if result.get("complete") else " (run not finished)")),
        ("case grid", f"{result['size']} at {result['spacing']:g} mm, {result['cases']} cases; nnU-Net median shape "
                      f"after crop {p['median_image_size_in_voxels']}"),
        ("nnU-Net 3d_fullres plans", f"patch {p['patch_size']}, batch {p['batch_size']}, {p['n_stages']} stages "
                                     f"({p['features_per_stage'][0]}-{p['features_per_stage'][-1]} features), "
                                     f"spacing {p['spacing']}"),
        ("dataset steps (s)", ", ".join(f"{k} {v:.0f}" for k, v in result["dataset_seconds"].items()
                                        if isinstance(v, float)) + (" (reused)" if result["dataset_seconds"].get("reused")
                                                                    else "")),
        ("torch threads (training probes)", str(result["threads"])),
    ]
    for batch, by_variant in sorted(tr["probes"].items()):
        for variant, r in by_variant.items():
            if "error" in r:
                rows.append((f"{variant} batch {batch}", f"FAILED: {r['error']}"))
                continue
            s = common.stats(r["seconds"])
            rows.append((f"{variant} batch {batch}: s/iteration, peak RSS",
                         f"median {s['median']:.2f} s (min {s['min']:.2f}, n {s['n']}), peak RSS "
                         f"{r['peak_rss_bytes'] / GIB:.2f} GiB (after imports {r['baseline_rss_bytes'] / GIB:.2f})"))
        if batch in tr["ratios"]:
            rr = tr["ratios"][batch]
            rows.append((f"ratio KD / stock 4-ch time per iteration, batch {batch}",
                         common.fmt_ratio(rr["time_kd_over_stock_4ch"])))
            rows.append((f"ratio KD / stock 4-ch peak RSS, batch {batch}",
                         f"{rr['peak_rss_kd_over_stock_4ch']:.3f}x (increment over imports "
                         f"{rr['peak_rss_increment_kd_over_stock_4ch']:.3f}x)"))
    for key, reason in tr["skipped"].items():
        rows.append((f"{key.replace('@', ' batch ')} not run", reason))
    for key, estimate in tr["estimated_peak_rss_bytes"].items():
        rows.append((f"estimated peak RSS {key.replace('@', ' batch ')}", f"{estimate / GIB:.1f} GiB"))
    if pr:
        for key in ("stock", "ours"):
            mm = pr["models"][key]
            rows.append((f"predict {key} ({mm['trainer']}), 1 case",
                         f"{mm['seconds']:.1f} s, peak RSS {mm['peak_rss_bytes'] / GIB:.2f} GiB, TTA "
                         f"{'on' if pr['tta'] else 'off'}"))
        rows.append(("ratio student / stock 2-ch predict time", f"{pr['seconds_ours_over_stock']:.3f}x"))
        g = pr["input"]
        equal = all(pr["models"][k]["geometry_equal"] for k in pr["models"])
        rows.append(("prediction geometry equals input",
                     f"{'yes' if equal else 'NO'}: size {g['size']}, spacing {g['spacing']}, origin "
                     f"{[round(o, 2) for o in g['origin']]}, direction {[round(d, 3) for d in g['direction']]}"))
        rows.append(("student and stock predictions identical", "yes" if pr["predictions_identical"] else "NO"))
    elif "predict_error" in result:
        rows.append(("predict", f"FAILED: {result['predict_error']}"))
    width = max(len(a) for a, _ in rows)
    lines = [f"| {'measure'.ljust(width)} | value |", f"|{'-' * (width + 2)}|-------|"]
    lines += [f"| {a.ljust(width)} | {b} |" for a, b in rows]
    return "\n".join(lines)


def run(out: Path, cache: Path, size: Sequence[int], spacing: float, cases: int, iterations: int, warmup: int,
        threads: int, batches: Sequence[int] | None, tta: bool, log: Callable[[str], None] = print,
        wait: float = 0.0, steps: Sequence[str] = ("train", "predict")) -> dict:
    t_start = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    os.environ["nnUNet_compile"] = "false"
    result: dict = {"benchmark": "bench_brats_geometry", "complete": False, "steps": list(steps), "size": list(size), "spacing": spacing,
                    "cases": cases, "iterations": iterations, "warmup": warmup, "threads": threads,
                    "uptime_before": uptime(), "available_gib_before": round(available_bytes() / GIB, 1),
                    "train": {"probes": {}, "skipped": {}, "ratios": {}, "estimated_peak_rss_bytes": {}}}
    log(f"load before: {result['uptime_before']}; {result['available_gib_before']} GiB available")

    def save(**update: object) -> None:  # after every step, so that an interrupted run keeps its figures
        result.update(update)
        result["uptime_after"] = uptime()
        result["machine"] = common.machine_info("cpu")
        result["wall_seconds"] = time.perf_counter() - t_start
        common.write_json(out / "bench_brats_geometry.json", result)
        (out / "bench_brats_geometry.md").write_text(table(result) + "\n", encoding="utf-8")

    data, result["dataset_seconds"] = prepare(cache, size, spacing, cases, threads, log)
    save(plans=planned(data))
    log(f"plans: patch {result['plans']['patch_size']}, batch {result['plans']['batch_size']}, "
        f"{result['plans']['n_stages']} stages")
    if "train" in steps:
        save(train=train(data, batches, iterations, warmup, threads, log, wait, lambda t: save(train=t)))
    if "predict" in steps:
        try:
            result["predict"] = predict(data, threads, tta, log)
        except Exception as e:  # reported in the table; the training figures stay
            result["predict_error"] = f"{type(e).__name__}: {str(e).strip()[-500:]}"
            log(f"predict FAILED: {result['predict_error']}")
    save(complete=True)
    return result


def ok(result: dict) -> bool:
    """Every training probe that ran succeeded, and both predictions have the input's geometry."""
    probes_ok = all("error" not in r for by in result["train"]["probes"].values() for r in by.values())
    pr = result.get("predict")
    steps = result.get("steps", ["train", "predict"])
    return (probes_ok and (bool(result["train"]["ratios"]) or "train" not in steps)) and (
        "predict" not in steps or (pr is not None and all(m["geometry_equal"] for m in pr["models"].values())))


def _size(text: str) -> tuple[int, int, int]:
    from nnunet_kd.commands.synth import parse_shape

    return parse_shape(text)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--run-predict"]:  # internal: nnUNetv2_predict under the watchdog
        GUARD["min_available"] = int(float(argv[1]) * GIB)
        return run_predict(argv[3:] if argv[2:3] == ["--"] else argv[2:])
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_brats_geometry",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("bench_output"), help="results folder")
    parser.add_argument("--cache", type=Path, default=None, help="dataset folder, reused (default OUT/_data)")
    parser.add_argument("--size", type=_size, default=BRATS_SIZE, metavar="X,Y,Z",
                        help="case grid (default 240,240,155, BraTS)")
    parser.add_argument("--spacing", type=float, default=1.0, help="isotropic voxel size, mm (default 1)")
    parser.add_argument("--cases", type=int, default=2, help="synthetic labelled cases (default 2)")
    parser.add_argument("--iterations", type=int, default=3, help="timed training iterations per probe (default 3)")
    parser.add_argument("--warmup", type=int, default=1, help="warm-up iterations per probe (default 1)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads in the training probes (default 1)")
    parser.add_argument("--batches", default="auto",
                        help="batch sizes to measure, e.g. 1,2 (default auto: 1 and the plans' batch if it fits)")
    parser.add_argument("--wait-memory", type=float, default=0.0, metavar="S",
                        help="wait up to S seconds for the memory a run needs before skipping it (default 0)")
    parser.add_argument("--min-available", type=float, default=GUARD["min_available"] / GIB, metavar="GIB",
                        help="a measurement stops itself when the machine's available memory falls below this "
                             "(default 1.5; 0: no watchdog)")
    parser.add_argument("--margin", type=float, default=GUARD["margin"] / GIB, metavar="GIB",
                        help="a training run starts only when its estimated peak plus this is available (default 3)")
    parser.add_argument("--first-estimate", type=float, default=0.0, metavar="GIB",
                        help="expected peak RSS of the first run (stock, batch 1), for the memory guard (default 0; "
                             "7 at BraTS plans: ~1 GiB of imports + ~5 GiB of activations at 128^3, fp32)")
    parser.add_argument("--steps", default="train,predict", choices=["train,predict", "train", "predict"],
                        help="what to measure after the dataset (default both)")
    parser.add_argument("--tta", action="store_true", help="test-time mirroring in prediction (default off on CPU)")
    parser.add_argument("--probe", choices=TRAINERS, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--data-root", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--batch-size", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    GUARD.update(min_available=int(args.min_available * GIB), margin=int(args.margin * GIB),
                 first_estimate=int(args.first_estimate * GIB))
    if args.probe is not None:  # internal: one trainer in this fresh process, JSON on the last stdout line
        root = args.data_root.resolve()
        data = common.BenchData(root, root.name, root / "brats2021", root / "nnUNet_raw", root / "nnUNet_preprocessed",
                                root / "nnUNet_results")
        with common.quiet():
            result = probe(args.probe, data, args.batch_size, args.iterations, args.warmup, args.threads)
        print(json.dumps(result))
        return 0
    batches = None if args.batches == "auto" else [int(b) for b in args.batches.split(",") if b.strip()]
    cache = args.cache if args.cache is not None else args.out / "_data"
    result = run(args.out, cache, args.size, args.spacing, args.cases, args.iterations, args.warmup, args.threads,
                 batches, args.tta, wait=args.wait_memory, steps=args.steps.split(","))
    print(table(result))
    print(f"wrote {args.out / 'bench_brats_geometry.json'} and {args.out / 'bench_brats_geometry.md'}")
    return 0 if ok(result) else 1


if __name__ == "__main__":
    raise SystemExit(main())
