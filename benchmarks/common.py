"""Shared pieces of the benchmarks: one synthetic preprocessed dataset, timing with warm-up and interleaved
repetitions, peak memory (RSS on CPU, CUDA max allocated on GPU) and a description of the machine.

Public API:

* :data:`GEOMETRIES`, :func:`prepare_dataset` -> :class:`BenchData` (synthetic BraTS 2021 folder ->
  ``convert_brats`` -> ``nnUNetv2_plan_and_preprocess``, built once and reused from a cache folder);
* :func:`activate` (nnU-Net variables of a :class:`BenchData` in this process), :func:`subprocess_env`;
* :func:`interleaved`, :func:`cpu_seconds`, :func:`stats`, :func:`ratios`, :func:`sync` — timing;
* :func:`rss_bytes`, :func:`peak_rss_bytes` — memory;
* :func:`machine_info`, :func:`write_json`, :func:`quiet` — reporting;
* :func:`parser`, :func:`add_dataset_arguments`, :func:`dataset_arguments`, :func:`print_summary` — the
  command line every ``python -m benchmarks.bench_*`` shares.

Nothing here asserts anything about speed: benchmarks print and record numbers, tests never check them.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

#: Dataset id and name of the benchmark dataset (inside the benchmark's own nnU-Net folders, never the user's).
DATASET_ID = 990
DATASET_NAME = "BenchBraTS"
CONFIGURATION = "3d_fullres"
PLANS = "nnUNetPlans"
BIN = Path(sys.executable).parent


@dataclass(frozen=True)
class Geometry:
    """Synthetic case grid and number of cases of the benchmark dataset."""

    name: str
    shape: tuple[int, int, int]
    cases: int
    unlabeled: int
    note: str


#: ``small``: the CPU default (nnU-Net plans a small patch); ``brats``: 1 mm isotropic brain-sized grid (the
#: synthetic brain's bounding box is 149 x 185 x 159 mm), so nnU-Net plans what it plans for BraTS on a GPU.
GEOMETRIES: dict[str, Geometry] = {
    "small": Geometry("small", (40, 40, 40), 6, 2, "40^3 grid, ~4 mm voxels: small patch for CPU timing"),
    "brats": Geometry("brats", (149, 185, 159), 6, 2, "1 mm isotropic, brain-sized like BraTS: the real plans"),
    "tiny": Geometry("tiny", (32, 32, 32), 5, 0, "32^3 grid, 5 cases: scripts/gpu_check.sh --cpu, tested in CI"),
}


@dataclass(frozen=True)
class BenchData:
    """A benchmark dataset in its own nnU-Net folder tree (raw, preprocessed, results)."""

    root: Path
    geometry: str
    source: Path
    raw: Path
    preprocessed: Path
    results: Path
    dataset_id: int = DATASET_ID
    dataset_name: str = f"Dataset{DATASET_ID:03d}_{DATASET_NAME}"

    @property
    def dataset_preprocessed(self) -> Path:
        return self.preprocessed / self.dataset_name

    @property
    def dataset_raw(self) -> Path:
        return self.raw / self.dataset_name

    def plans(self) -> dict:
        return json.loads((self.dataset_preprocessed / f"{PLANS}.json").read_text())

    def dataset_json(self) -> dict:
        return json.loads((self.dataset_preprocessed / "dataset.json").read_text())


def subprocess_env(data: BenchData, device: str = "cpu", base: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment for ``nnUNetv2_*`` commands on ``data``: its folders, our trainers, no compile on CPU."""
    from nnunet_kd.paths import environment_with_trainers

    env = environment_with_trainers(dict(os.environ if base is None else base))
    env.update({"nnUNet_raw": str(data.raw), "nnUNet_preprocessed": str(data.preprocessed),
                "nnUNet_results": str(data.results), "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}"})
    env.setdefault("nnUNet_n_proc_DA", "0" if device == "cpu" else "4")
    env.setdefault("nnUNet_def_n_proc", "1" if device == "cpu" else "4")
    if device == "cpu":
        env["nnUNet_compile"] = "false"
    return env


def activate(data: BenchData, device: str = "cpu") -> None:
    """Set the nnU-Net variables of ``data`` in this process (before trainers are built in-process)."""
    os.environ.update(subprocess_env(data, device))


def _ready_record(geometry: Geometry, seed: int) -> dict:
    return {"geometry": asdict(geometry), "seed": seed, "dataset_id": DATASET_ID, "layout": "2021"}


def prepare_dataset(cache: str | Path, geometry: str = "small", seed: int = 0, processes: int = 1,
                    log: Callable[[str], None] = print) -> BenchData:
    """The preprocessed synthetic dataset of ``geometry`` under ``cache/<geometry>``, built if missing.

    Runs the real pipeline: :func:`nnunet_kd.synthetic.write_brats_folder` (BraTS 2021 layout) ->
    :func:`nnunet_kd.dataset_conversion.convert.convert_brats` -> ``nnUNetv2_plan_and_preprocess -c 3d_fullres``.
    A folder holding a complete build with the same parameters (``ready.json``) is reused as it is.
    """
    from nnunet_kd.dataset_conversion.convert import convert_brats
    from nnunet_kd.synthetic import write_brats_folder

    geo = GEOMETRIES[geometry]
    root = Path(cache).resolve() / geometry
    data = BenchData(root, geometry, root / "brats2021", root / "nnUNet_raw", root / "nnUNet_preprocessed",
                     root / "nnUNet_results")
    ready = root / "ready.json"
    record = _ready_record(geo, seed)
    if ready.is_file() and json.loads(ready.read_text()) == record and (data.dataset_preprocessed /
                                                                       f"{PLANS}.json").is_file():
        log(f"dataset: reusing {root}")
        return data
    if root.exists():
        import shutil

        shutil.rmtree(root)
    root.mkdir(parents=True)
    t0 = time.perf_counter()
    log(f"dataset: writing {geo.cases}+{geo.unlabeled} synthetic cases {geo.shape} into {data.source}")
    write_brats_folder(data.source, geo.cases, layout="2021", seed=seed, shape=geo.shape, unlabeled=geo.unlabeled,
                       progress=False)
    convert_brats(data.source, DATASET_ID, name=DATASET_NAME, raw_root=data.raw, progress=False,
                  num_processes=processes)
    for folder in (data.preprocessed, data.results):
        folder.mkdir()
    env = subprocess_env(data, "cpu")
    env["nnUNet_n_proc_DA"] = str(processes)  # the planner sets torch threads from it
    run_checked([str(BIN / "nnUNetv2_plan_and_preprocess"), "-d", str(DATASET_ID), "-c", CONFIGURATION,
                 "-np", str(processes), "-npfp", str(processes)], env)
    write_json(ready, record)
    log(f"dataset: built in {time.perf_counter() - t0:.0f} s")
    return data


def run_checked(cmd: Sequence[str], env: Mapping[str, str], timeout: float | None = None) -> str:
    """Run a command, return its stdout; a failure raises RuntimeError with the end of its output."""
    proc = subprocess.run(list(cmd), env=dict(env), capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n"
                           f"{proc.stderr[-3000:]}")
    return proc.stdout


# ------------------------------------------------------------------------------------------------ timing

def sync(device: str) -> None:
    """Wait for queued GPU work so that wall-clock times cover it."""
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def cpu_seconds() -> float:
    """CPU time (user + system) of this process and of its children that have ended, in seconds."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def interleaved(calls: Mapping[str, Callable[[], object]], repeats: int, warmup: int = 1, device: str = "cpu",
                log: Callable[[str], None] | None = None,
                cpu: dict[str, list[float]] | None = None) -> dict[str, list[float]]:
    """Wall times of each call in rounds: every round runs every call once, in an order rotated per round.

    ``warmup`` rounds are run first and discarded. Interleaving spreads load changes of a shared machine over
    all calls alike, so that ratios of the same round stay meaningful. Given a dict ``cpu``, the CPU time of
    each call (:func:`cpu_seconds`: this process plus the worker processes it waited for) is recorded there
    too: on a machine that other work shares it is the steadier measure of a CPU-bound call.
    """
    names = list(calls)
    samples: dict[str, list[float]] = {name: [] for name in names}
    if cpu is not None:
        cpu.update({name: [] for name in names})
    for r in range(warmup + repeats):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            sync(device)
            c0 = cpu_seconds()
            t0 = time.perf_counter()
            calls[name]()
            sync(device)
            dt = time.perf_counter() - t0
            if r >= warmup:
                samples[name].append(dt)
                if cpu is not None:
                    cpu[name].append(cpu_seconds() - c0)
        if log is not None:
            kind = "warm-up" if r < warmup else f"round {r - warmup + 1}/{repeats}"
            log(f"  {kind}: " + ", ".join(f"{n} {samples[n][-1]:.3f} s" if r >= warmup else n for n in names))
    return samples


def stats(samples: Sequence[float]) -> dict[str, float | int]:
    """n, min, median, mean, max of a list of seconds (or bytes)."""
    a = np.asarray(samples, dtype=float)
    return {"n": int(a.size), "min": float(a.min()), "median": float(np.median(a)), "mean": float(a.mean()),
            "max": float(a.max())}


def ratios(numerator: Sequence[float], denominator: Sequence[float]) -> dict[str, float]:
    """numerator / denominator as ratio of medians, ratio of minima and min / median of per-round ratios."""
    num, den = np.asarray(numerator, float), np.asarray(denominator, float)
    per_round = num / den
    return {"of_medians": float(np.median(num) / np.median(den)), "of_mins": float(num.min() / den.min()),
            "per_round_median": float(np.median(per_round)), "per_round_min": float(per_round.min())}


def summed(*series: Sequence[float]) -> list[float]:
    """Element-wise sum of equally long series (e.g. a 4-channel and a 2-channel step of the same round)."""
    return [float(sum(values)) for values in zip(*series)]


# ------------------------------------------------------------------------------------------------ memory

def _status_kib(key: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(f"{key}:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def rss_bytes() -> int:
    """Current resident set size of this process (0 where /proc is missing)."""
    kib = _status_kib("VmRSS")
    return 1024 * kib if kib is not None else 0


def peak_rss_bytes() -> int:
    """Peak resident set size of this process so far (VmHWM, or ru_maxrss)."""
    kib = _status_kib("VmHWM")
    if kib is None:
        import resource

        kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return 1024 * int(kib)


# ------------------------------------------------------------------------------------------------ reporting

def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info(device: str = "cpu") -> dict:
    """CPU model, cores, memory, library versions and (on CUDA) the GPU: what a results table must state."""
    import importlib.metadata as md

    import torch

    info: dict = {
        "platform": platform.platform(), "python": platform.python_version(), "cpu_model": _cpu_model(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
    }
    for pkg in ("nnunetv2", "dynamic-network-architectures", "numpy", "nnunet-kd"):
        try:
            info[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            info[pkg] = None
    kib = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        kib = int(next(line for line in Path("/proc/meminfo").read_text().splitlines()
                       if line.startswith("MemTotal")).split()[1])
    info["memory_gib"] = round(kib / 2**20, 1) if kib else None
    with contextlib.suppress(OSError, ValueError):
        info["load_average_1_5_15"] = list(os.getloadavg())
    info["device"] = device
    if device.startswith("cuda") and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update({"gpu": props.name, "gpu_memory_gib": round(props.total_memory / 2**30, 1),
                     "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version()})
    return info


def write_json(path: str | Path, data: object) -> Path:
    """Write ``data`` as indented JSON through a temporary file and an atomic rename."""
    from nnunet_kd.evaluation.evaluate import atomic_write_text

    atomic_write_text(path, json.dumps(data, indent=2, default=str) + "\n")
    return Path(path)


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Swallow what nnU-Net prints to stdout while trainers are built (citation banner, log lines)."""
    with contextlib.redirect_stdout(io.StringIO()):
        yield


def fmt_ratio(r: Mapping[str, float]) -> str:
    """``1.93x (min 1.90x, per-round median 1.94x)``."""
    return (f"{r['of_medians']:.3f}x (of mins {r['of_mins']:.3f}x, per-round median {r['per_round_median']:.3f}x, "
            f"per-round min {r['per_round_min']:.3f}x)")


# ------------------------------------------------------------------------------------------- command line
def parser(module: str, doc: str, repeats: int, warmup: int = 1) -> argparse.ArgumentParser:
    """The parser of ``python -m benchmarks.<module>``: description from ``doc``, ``--repeats`` and ``--warmup``."""
    result = argparse.ArgumentParser(prog=f"python -m benchmarks.{module}", description=doc.split("\n")[0])
    result.add_argument("--repeats", type=int, default=repeats, help=f"interleaved timed rounds (default {repeats})")
    result.add_argument("--warmup", type=int, default=warmup, help=f"warm-up rounds (default {warmup})")
    return result


def add_dataset_arguments(parser: argparse.ArgumentParser) -> None:
    """Options shared by the benchmarks run on the synthetic preprocessed dataset."""
    parser.add_argument("--out", type=Path, default=Path("bench_output"), help="folder for the JSON results")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--cache", type=Path, default=None,
                        help="folder of the synthetic dataset, reused between runs (default OUT/_data)")
    parser.add_argument("--geometry", choices=sorted(GEOMETRIES), default=None,
                        help="synthetic grid: small (CPU default) or brats (GPU default, the real BraTS plans)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: all cores on CPU, as nnUNetv2_train; 1 is steadier on a "
                             "machine shared with other work)")


def dataset_arguments(args: argparse.Namespace) -> tuple[Path, str]:
    """(cache folder, geometry) of :func:`add_dataset_arguments`' options, with their defaults resolved."""
    cache = args.cache if args.cache is not None else Path(args.out) / "_data"
    geometry = args.geometry or ("brats" if str(args.device).startswith("cuda") else "small")
    return cache, geometry


def print_summary(lines: Sequence[str], out: str | Path, name: str) -> int:
    """Print a benchmark's summary lines and where its JSON went; the exit status 0 of its ``main``."""
    print("\n".join(lines))
    print(f"wrote {Path(out) / f'{name}.json'}")
    return 0

