"""Run every benchmark once and write their results: ``make bench`` or ``python -m benchmarks.run_all``.

    python -m benchmarks.run_all [--device cpu|cuda] [--out DIR] [--quick] [--only NAME,...]

Writes ``DIR/bench_<name>.json`` per benchmark, ``DIR/results.json`` (all of them plus the machine) and
``DIR/summary.md`` (the lines printed at the end, with the goals). Each benchmark measures ours and the stock
baseline in the same run, interleaved, after warm-up; see each module's docstring. A benchmark that fails is
recorded with its error and the others still run (the exit status is then 1).

On CPU the synthetic dataset is small (40^3 grid, the planner picks a small patch); with ``--device cuda`` it is
brain-sized at 1 mm, so nnU-Net plans what it plans for BraTS. The dataset and the converter's source are built
once into ``DIR/_data`` (or ``--cache``) and reused by later runs. Nothing here is a test: no assertion on
speed anywhere.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path

from benchmarks import common

BENCHMARKS: tuple[str, ...] = ("train_step", "barlow", "inference", "convert", "evaluate")


def _settings(quick: bool, device: str) -> dict[str, dict]:
    gpu = device.startswith("cuda")
    if quick:
        return {"train_step": dict(repeats=2, warmup=1, probe_steps=1), "barlow": dict(repeats=2, warmup=1, inner=3),
                "inference": dict(repeats=1, warmup=1, cases=2), "convert": dict(cases=2, shape=(120, 120, 78),
                                                                                 repeats=1, warmup=1),
                "evaluate": dict(num_cases=1, repeats=1)}
    return {"train_step": dict(repeats=10 if gpu else 4, warmup=3 if gpu else 1, probe_steps=3 if gpu else 2),
            "barlow": dict(repeats=10 if gpu else 3, warmup=3 if gpu else 1, inner=10 if gpu else 5),
            "inference": dict(repeats=3, warmup=1, cases=6 if gpu else 3),
            "convert": dict(cases=3, repeats=3, warmup=1), "evaluate": dict(num_cases=3, repeats=2)}


def run_all(out: Path, device: str = "cpu", quick: bool = False, only: Sequence[str] = BENCHMARKS,
            cache: Path | None = None, geometry: str | None = None, threads: int | None = None,
            log: Callable[[str], None] = print) -> dict:
    """Run the selected benchmarks; write and return ``{"machine", "results", "errors", "summary"}``."""
    from benchmarks import bench_barlow, bench_convert, bench_evaluate, bench_inference, bench_train_step

    t0 = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cache = Path(cache) if cache is not None else out / "_data"
    geometry = geometry or ("brats" if device.startswith("cuda") else "small")
    if device == "cpu":
        os.environ["nnUNet_compile"] = "false"
    settings = _settings(quick, device)
    for name in ("train_step", "barlow", "inference"):
        settings[name]["threads"] = threads
    machine = common.machine_info(device)
    log(f"machine: {machine['cpu_model']} ({machine['usable_cpus']} usable CPUs), torch {machine['torch']}, "
        f"nnunetv2 {machine['nnunetv2']}" + (f", GPU {machine.get('gpu')}" if device.startswith("cuda") else ""))
    results: dict[str, dict] = {}
    errors: dict[str, str] = {}
    summary: list[str] = []
    data = None
    needs_data = {"train_step", "barlow", "inference"} & set(only)
    if needs_data:
        try:
            data = common.prepare_dataset(cache, geometry, processes=min(4, os.cpu_count() or 1), log=log)
        except Exception as e:  # every benchmark that needs the dataset fails with it
            errors["dataset"] = "".join(traceback.format_exception_only(type(e), e)).strip()
            log(f"dataset failed: {errors['dataset']}")

    def attempt(name: str, fn: Callable[[], dict], lines: Callable[[dict], list[str]]) -> None:
        if name not in only:
            return
        if name in needs_data and data is None:
            errors[name] = "skipped: the benchmark dataset could not be built"
            return
        log(f"--- {name}")
        t = time.perf_counter()
        try:
            results[name] = fn()
        except Exception as e:
            errors[name] = traceback.format_exc()
            log(f"{name} failed: {type(e).__name__}: {e}")
            summary.append(f"{name}: FAILED ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})")
            return
        results[name].setdefault("wall_seconds", time.perf_counter() - t)
        summary.extend(lines(results[name]))
        log("\n".join(lines(results[name])))

    s = settings
    attempt("train_step", lambda: bench_train_step.run(data, cache, device, out_dir=out, log=log, **s["train_step"]),
            bench_train_step.summary_lines)
    attempt("barlow", lambda: bench_barlow.run(data, device, out_dir=out, log=log, **s["barlow"]),
            bench_barlow.summary_lines)
    attempt("inference", lambda: bench_inference.run(data, device, out_dir=out, log=log, **s["inference"]),
            bench_inference.summary_lines)
    attempt("convert", lambda: bench_convert.run(cache, out_dir=out, log=log, **s["convert"]),
            bench_convert.summary_lines)
    attempt("evaluate", lambda: bench_evaluate.run(out, **s["evaluate"]), _evaluate_lines)
    total = time.perf_counter() - t0
    report = {"machine": machine, "device": device, "geometry": geometry, "quick": quick, "threads": threads,
              "settings": settings,
              "total_wall_seconds": total, "results": results, "errors": errors, "summary": summary}
    common.write_json(out / "results.json", report)
    (out / "summary.md").write_text(_summary_markdown(report), encoding="utf-8")
    return report


def _evaluate_lines(result: dict) -> list[str]:
    r, pc = result["ratios"], result["per_case_seconds"]
    return [f"evaluate ({result['num_cases']} cases {result['shape_zyx']}): ours {pc['ours_s']:.3f} s/case vs "
            f"BraTS 2023 reference procedure {pc['reference_s']:.2f} s -> {r['reference_over_ours']:.1f}x "
            f"(goal >= 10); values equal to 0.01: {result['values_equal_to_0.01']}"]


def _goal_rows(results: dict) -> list[tuple[str, str, str, str]]:
    rows = []
    if "train_step" in results:
        t = results["train_step"]
        rows.append(("KD step / (4-ch + 2-ch stock steps)", f"{t['ratios']['kd_over_sum_4ch_2ch']['of_medians']:.3f}",
                     "<= 1.05", _yes(t["goal_met"]["kd_over_sum"])))
        rows.append(("KD step / 4-ch stock step", f"{t['ratios']['kd_over_stock_4ch']['of_medians']:.3f}", "<= 2.0",
                     _yes(t["goal_met"]["kd_over_stock_4ch"])))
        if "memory" in t:
            rows.append((f"KD peak memory / 4-ch stock ({t['memory']['metric']})",
                         f"{t['memory']['kd_over_stock_4ch']:.3f}", "<= 1.9", _yes(t["goal_met"]["memory"])))
    if "inference" in results:
        i = results["inference"]
        rows.append(("student nnUNetv2_predict / stock 2-ch model", f"{i['ratios']['cli_ours_over_stock']['of_medians']:.3f}",
                     "<= 1.05", _yes(i["goal_met"])))
    if "barlow" in results:
        b = results["barlow"]
        rows.append(("Barlow Twins fwd+bwd / KD step", f"{100 * b['fraction_of_kd_step']['of_medians']:.2f} %",
                     "< 3 %", _yes(b["goal_met"])))
    if "convert" in results:
        c = results["convert"]["cases_per_second"]
        rows.append(("convert cases/s (1 / 2 processes; copy)", f"{c['convert_1']['median']:.2f} / "
                     f"{c['convert_2']['median']:.2f}; {c['copy']['median']:.1f}", "-", "-"))
    if "evaluate" in results:
        e = results["evaluate"]
        rows.append(("evaluate: BraTS 2023 reference procedure / ours", f"{e['ratios']['reference_over_ours']:.1f}",
                     ">= 10", _yes(e["goal_met"])))
    return rows


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def _summary_markdown(report: dict) -> str:
    m = report["machine"]
    lines = [f"# Benchmark summary ({report['device']}{', quick' if report['quick'] else ''})", "",
             f"Machine: {m['cpu_model']}, {m['usable_cpus']} usable CPUs, {m.get('memory_gib')} GiB RAM"
             + (f", GPU {m['gpu']}" if m.get("gpu") else "") + f"; torch {m['torch']}, nnunetv2 {m['nnunetv2']}, "
             f"python {m['python']}; torch threads {report['threads'] or 'all cores'}; load average at start "
             f"{m.get('load_average_1_5_15')}.",
             f"Total wall time {report['total_wall_seconds']:.0f} s.", "",
             "| measure | value (ratio of medians) | goal | met |", "|---|---|---|---|"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in _goal_rows(report["results"])]
    lines += ["", "```", *report["summary"], "```"]
    if report["errors"]:
        lines += ["", "## Errors", ""] + [f"- {k}: {v.strip().splitlines()[-1]}" for k, v in report["errors"].items()]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run_all", description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--out", type=Path, default=Path("bench_output"),
                        help="results folder (default ./bench_output, ignored by git)")
    parser.add_argument("--quick", action="store_true", help="fewer repetitions and smaller inputs (a few minutes)")
    parser.add_argument("--only", default=",".join(BENCHMARKS),
                        help=f"comma-separated subset of {','.join(BENCHMARKS)} (default: all)")
    parser.add_argument("--cache", type=Path, default=None, help="folder for the synthetic data (default OUT/_data)")
    parser.add_argument("--geometry", choices=sorted(common.GEOMETRIES), default=None,
                        help="synthetic dataset grid (default: small on cpu, brats on cuda)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads in the timed processes (default: all cores, as nnUNetv2_train; 1 is "
                             "steadier on a machine shared with other work)")
    args = parser.parse_args(argv)
    only = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = sorted(set(only) - set(BENCHMARKS))
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}")
    if args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            parser.error("--device cuda but torch sees no CUDA device")
    report = run_all(args.out, args.device, args.quick, only, args.cache, args.geometry, args.threads)
    print("\n" + (args.out / "summary.md").read_text(encoding="utf-8"))
    print(f"wrote {args.out / 'results.json'} and {args.out / 'summary.md'}")
    return 1 if report["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
