"""Benchmark: ``convert_brats`` throughput (cases/s, 1 and 2 processes) against a plain copy of the same files.

Run ``python -m benchmarks.bench_convert --out DIR`` (writes ``DIR/bench_convert.json``).

The source is a synthetic BraTS 2021 release written once into the cache folder (BraTS-sized 240 x 240 x 155
float32 cases by default, ``--shape`` to change). Timed, interleaved per round, each into a fresh folder that
is deleted afterwards:

* ``copy``: ``shutil.copytree`` of the release (what the conversion cannot beat: it copies ``.nii.gz`` files
  byte for byte after reading and checking every volume);
* ``read``: every file of the release decompressed and read with SimpleITK, nothing written (the floor for any
  converter that checks the voxels);
* ``convert_1`` / ``convert_2``: :func:`nnunet_kd.dataset_conversion.convert.convert_brats` with 1 and 2 worker
  processes (each file read and decompressed once: images checked from their bytes and copied, the
  segmentation's labels mapped and written again).

All runs read from the page cache after the warm-up round; the numbers therefore show CPU cost, not disk speed.
Each call's wall time and CPU time (user + system of this process and the worker processes, which have ended
when ``convert_2`` returns) are recorded. Goal: convert (1 process) <= 1.2 x the bare read, judged on the ratio
of median CPU times, which other load on a shared machine disturbs far less than wall time; the wall-time
ratios and the ratios to the copy are reported too.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from benchmarks import common

#: convert_1 / read, ratio of medians
GOAL_MAX_OVER_READ = 1.2
#: BraTS image grid (x, y, z).
BRATS_SHAPE = (240, 240, 155)


def prepare_source(cache: Path, cases: int, shape: tuple[int, int, int], seed: int = 0,
                   log: Callable[[str], None] = print) -> Path:
    """A synthetic BraTS 2021 release of ``cases`` labelled cases of ``shape``, reused when already there."""
    from nnunet_kd.synthetic import write_brats_folder

    folder = Path(cache).resolve() / f"convert_source_{cases}x{'x'.join(map(str, shape))}_seed{seed}"
    done = folder / ".complete"
    if done.is_file():
        return folder
    if folder.exists():
        shutil.rmtree(folder)
    t0 = time.perf_counter()
    log(f"convert: writing {cases} synthetic BraTS 2021 cases {shape} (once, cached in {folder})")
    write_brats_folder(folder, cases, layout="2021", seed=seed, shape=shape, progress=False)
    done.write_text("")
    log(f"convert: source written in {time.perf_counter() - t0:.0f} s")
    return folder


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def run(cache: Path, cases: int = 3, shape: tuple[int, int, int] = BRATS_SHAPE, repeats: int = 3, warmup: int = 1,
        out_dir: Path | None = None, log: Callable[[str], None] = print) -> dict:
    """Time copy / convert with 1 and 2 processes interleaved; return (and write) the results."""
    from nnunet_kd.dataset_conversion.convert import convert_brats

    t_start = time.perf_counter()
    source = prepare_source(cache, cases, shape, log=log)
    n_bytes = folder_bytes(source)
    scratch = Path(tempfile.mkdtemp(prefix="bench_convert_", dir=Path(cache).resolve()))
    counter = iter(range(10**6))

    def copy() -> None:
        target = scratch / f"copy_{next(counter)}"
        shutil.copytree(source, target)
        shutil.rmtree(target)

    def read() -> None:
        import SimpleITK as sitk

        for path in sorted(source.rglob("*.nii.gz")):
            sitk.ReadImage(str(path))

    def convert(processes: int) -> Callable[[], None]:
        def call() -> None:
            raw = scratch / f"raw_{next(counter)}"
            convert_brats(source, 1, name="Bench", raw_root=raw, num_processes=processes, progress=False)
            shutil.rmtree(raw)
        return call

    log(f"convert: {cases} cases, {n_bytes / 2**20:.0f} MiB; {warmup} warm-up + {repeats} rounds")
    cpu: dict[str, list[float]] = {}
    try:
        samples = common.interleaved({"copy": copy, "read": read, "convert_1": convert(1), "convert_2": convert(2)},
                                     repeats, warmup, "cpu", log=log, cpu=cpu)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    throughput = {k: common.stats([cases / s for s in v]) for k, v in samples.items()}
    result = {
        "benchmark": "bench_convert", "cases": cases, "shape": list(shape), "source_bytes": n_bytes,
        "warmup_rounds": warmup, "repeats": repeats,
        "seconds": {k: common.stats(v) for k, v in samples.items()}, "samples_seconds": samples,
        "cpu_seconds": {k: common.stats(v) for k, v in cpu.items()}, "samples_cpu_seconds": cpu,
        "cases_per_second": throughput,
        "mib_per_second_median": {k: n_bytes / 2**20 / common.stats(v)["median"] for k, v in samples.items()},
        "ratios": {"convert_1_over_copy": common.ratios(samples["convert_1"], samples["copy"]),
                   "convert_2_over_copy": common.ratios(samples["convert_2"], samples["copy"]),
                   "convert_1_over_read": common.ratios(samples["convert_1"], samples["read"]),
                   "convert_1_over_convert_2": common.ratios(samples["convert_1"], samples["convert_2"])},
        "cpu_ratios": {"convert_1_over_read": common.ratios(cpu["convert_1"], cpu["read"]),
                       "convert_2_over_read": common.ratios(cpu["convert_2"], cpu["read"])},
        "load_average": list(os.getloadavg()),
        "goal": {"convert_1_over_read_max": GOAL_MAX_OVER_READ},
        "machine": common.machine_info("cpu"), "wall_seconds": time.perf_counter() - t_start,
    }
    result["goal"]["met"] = result["cpu_ratios"]["convert_1_over_read"]["of_medians"] <= GOAL_MAX_OVER_READ
    if out_dir is not None:
        common.write_json(Path(out_dir) / "bench_convert.json", result)
    return result


def summary_lines(result: dict) -> list[str]:
    c, r = result["cases_per_second"], result["ratios"]
    return [f"convert ({result['cases']} cases {result['shape']}, {result['source_bytes'] / 2**20:.0f} MiB): median "
            f"{c['convert_1']['median']:.2f} cases/s (1 process), {c['convert_2']['median']:.2f} cases/s "
            f"(2 processes), plain copy {c['copy']['median']:.2f} cases/s, read only {c['read']['median']:.2f} cases/s",
            f"  time convert(1) / copy {common.fmt_ratio(r['convert_1_over_copy'])}",
            f"  time convert(2) / copy {common.fmt_ratio(r['convert_2_over_copy'])}",
            f"  time convert(1) / read {common.fmt_ratio(r['convert_1_over_read'])}",
            f"  CPU time convert(1) / read {common.fmt_ratio(result['cpu_ratios']['convert_1_over_read'])} (goal <= "
            f"{GOAL_MAX_OVER_READ}: {'met' if result['goal']['met'] else 'MISSED'}), convert(2) / read "
            f"{common.fmt_ratio(result['cpu_ratios']['convert_2_over_read'])}",
            f"  load average at the end {', '.join(f'{v:.1f}' for v in result['load_average'])}"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = common.parser("bench_convert", __doc__, repeats=3)
    parser.add_argument("--out", type=Path, default=Path("bench_output"), help="folder for the JSON results")
    parser.add_argument("--cache", type=Path, default=None, help="folder for the synthetic source (default OUT/_data)")
    parser.add_argument("--cases", type=int, default=3, help="cases in the synthetic release (default 3)")
    parser.add_argument("--shape", type=int, nargs=3, default=BRATS_SHAPE, metavar=("X", "Y", "Z"),
                        help="grid of each case (default 240 240 155, as BraTS)")
    args = parser.parse_args(argv)
    cache = args.cache if args.cache is not None else Path(args.out) / "_data"
    result = run(cache, args.cases, tuple(args.shape), args.repeats, args.warmup, args.out)
    return common.print_summary(summary_lines(result), args.out, "bench_convert")


if __name__ == "__main__":
    raise SystemExit(main())
