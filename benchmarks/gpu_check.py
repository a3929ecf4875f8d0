"""The GPU check: the KD trainer at BraTS plans on one GPU, end to end, in a few minutes, with one summary table.

Run through ``scripts/gpu_check.sh [--cpu] [--out DIR] [--cache DIR]`` (or ``python -m benchmarks.gpu_check``).
On a GPU (the default, ``--device cuda``) the synthetic dataset is brain-sized at 1 mm (``--geometry brats``), so
``nnUNetv2_plan_and_preprocess`` plans nnU-Net's BraTS configuration (patch 128³, batch 2, 6 stages). ``--cpu``
runs the same steps on a tiny dataset (``--geometry tiny``) so that the script itself is tested without a GPU.

Steps (each timed; a failing step is reported as FAIL in the table and the run exits 1):

1. ``dataset``: :func:`benchmarks.common.prepare_dataset` (synthetic release -> ``convert_brats`` -> stock
   ``nnUNetv2_plan_and_preprocess``), reused from ``--cache`` when already built;
2. ``train``: the real ``nnUNetv2_train`` with ``nnUNetTrainerBarlowKD_smoke`` (2 epochs x 1 iteration and the
   final validation) into a fresh results folder. On CUDA nnU-Net's own defaults hold: autocast in every step,
   ``torch.compile`` on (``nnUNet_compile`` is not touched; the check reads "Using torch.compile" in the log);
3. ``train_step``: :mod:`benchmarks.bench_train_step`: KD step / stock 4-channel step, KD / (4-ch + 2-ch), peak
   memory KD / 4-ch (CUDA max allocated, each trainer in a fresh process);
4. ``two_stage``: :mod:`benchmarks.bench_two_stage`: frozen-teacher step / single-stage KD step;
5. ``predict``: the trained student predicts one full-size case (T1ce + FLAIR files only) with the real
   ``nnUNetv2_predict``; the prediction must have the input's size, spacing, origin and direction.

The step benchmarks (3, 4) build their trainers in-process and run eager by default (``--compile-benchmarks``
compiles them too: each of the 3 + 3 + 3 networks then compiles first, several minutes at BraTS plans). JSON of
every step goes to ``--out`` (``gpu_check.json`` and the benchmarks' own files).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path

from benchmarks import common

KD_TRAINER = "nnUNetTrainerBarlowKD_smoke"
#: what the whole check should take on one GPU (dataset build included)
BUDGET_SECONDS = 8 * 60


def _train(data: common.BenchData, device: str, work: Path) -> dict:
    results = work / "nnUNet_results"
    if results.exists():
        shutil.rmtree(results)
    results.mkdir(parents=True)
    env = common.subprocess_env(data, device)
    env["nnUNet_results"] = str(results)
    common.run_checked([str(common.BIN / "nnUNetv2_train"), str(data.dataset_id), common.CONFIGURATION, "0", "-tr",
                        KD_TRAINER, "-device", device], env)
    model = results / data.dataset_name / f"{KD_TRAINER}__{common.PLANS}__{common.CONFIGURATION}"
    fold = model / "fold_0"
    if not (fold / "checkpoint_final.pth").is_file():
        raise RuntimeError(f"nnUNetv2_train wrote no {fold / 'checkpoint_final.pth'}")
    logs = sorted(fold.glob("training_log_*.txt"))
    log_text = logs[-1].read_text() if logs else ""
    compiled = "Using torch.compile" in log_text
    if device == "cuda" and not compiled and os.environ.get("nnUNet_compile", "true").lower() in ("true", "1", "t"):
        raise RuntimeError(f"nnUNetv2_train did not compile the network on CUDA (no 'Using torch.compile' in {logs})")
    summary = json.loads((fold / "validation" / "summary.json").read_text())
    return {"model_folder": str(model), "results": str(results), "compiled": compiled,
            "validation_mean_dice": summary.get("foreground_mean", {}).get("Dice")}


def _predict(data: common.BenchData, device: str, work: Path, results: Path) -> dict:
    import SimpleITK as sitk

    raw = data.dataset_raw
    folder = raw / "imagesTs" if any((raw / "imagesTs").glob("*_0000.nii.gz")) else raw / "imagesTr"
    case = sorted(p.name[: -len("_0000.nii.gz")] for p in folder.glob("*_0000.nii.gz"))[0]
    images, out = work / "predict_in", work / "predict_out"
    for f in (images, out):
        if f.exists():
            shutil.rmtree(f)
    images.mkdir(parents=True)
    for suffix in ("_0001", "_0003"):  # T1ce and FLAIR, as the student's dataset.json asks
        shutil.copy(folder / f"{case}{suffix}.nii.gz", images)
    env = common.subprocess_env(data, device)
    env["nnUNet_results"] = str(results)
    cmd = [str(common.BIN / "nnUNetv2_predict"), "-i", str(images), "-o", str(out), "-d", str(data.dataset_id),
           "-c", common.CONFIGURATION, "-f", "0", "-tr", KD_TRAINER, "-device", device, "-npp", "1", "-nps", "1",
           "--disable_progress_bar"]
    t0 = time.perf_counter()
    common.run_checked(cmd, env)
    seconds = time.perf_counter() - t0
    source = sitk.ReadImage(str(images / f"{case}_0001.nii.gz"))
    pred_file = out / f"{case}.nii.gz"
    if not pred_file.is_file():
        raise RuntimeError(f"nnUNetv2_predict wrote no {pred_file}")
    pred = sitk.ReadImage(str(pred_file))
    from nnunet_kd.nifti import geometry_mismatch

    problem = geometry_mismatch(source, pred)
    if problem:
        raise RuntimeError(f"prediction {pred_file}: {problem} of the input")
    return {"case": case, "size": list(source.GetSize()), "spacing": list(source.GetSpacing()),
            "command_seconds": seconds, "labels": sorted(int(v) for v in set(sitk.GetArrayViewFromImage(pred).ravel()))}


def run(device: str, geometry: str, cache: Path, out: Path, compile_benchmarks: bool = False, repeats: int = 3,
        log: Callable[[str], None] = print) -> dict:
    from benchmarks import bench_train_step, bench_two_stage

    t_start = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    work = out / "gpu_check_work"
    steps: dict[str, dict] = {}
    state: dict = {}

    def step(name: str, fn: Callable[[], dict]) -> None:
        log(f"[gpu_check] {name} ...")
        t0 = time.perf_counter()
        try:
            steps[name] = {"ok": True, **fn()}
        except Exception as e:  # every failure is reported in the table; the run goes on where it can
            steps[name] = {"ok": False, "error": f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}",
                           "traceback": traceback.format_exc()}
            log(steps[name]["traceback"])
        steps[name]["seconds"] = time.perf_counter() - t0
        log(f"[gpu_check] {name}: {'ok' if steps[name]['ok'] else 'FAIL'} in {steps[name]['seconds']:.1f} s")

    def dataset() -> dict:
        data = common.prepare_dataset(cache, geometry, processes=min(8, os.cpu_count() or 1) if device == "cuda" else 1,
                                      log=log)
        state["data"] = data
        plans = data.plans()["configurations"][common.CONFIGURATION]
        return {"geometry": geometry, "patch_size": plans["patch_size"], "batch_size": plans["batch_size"],
                "stages": len(plans["architecture"]["arch_kwargs"]["features_per_stage"]),
                "spacing": plans["spacing"]}

    step("dataset", dataset)
    data = state.get("data")
    if data is not None:
        step("train", lambda: _train(data, device, work))
        saved_compile = os.environ.get("nnUNet_compile")
        if device == "cuda" and not compile_benchmarks:
            os.environ["nnUNet_compile"] = "false"
        try:
            step("train_step", lambda: bench_train_step.run(data, cache, device, repeats=repeats, warmup=1,
                                                            memory=True, probe_steps=1, out_dir=out, log=log))
            step("two_stage", lambda: bench_two_stage.run(data, device, repeats=repeats, warmup=1, out_dir=out,
                                                          log=log))
        finally:
            if saved_compile is None:
                os.environ.pop("nnUNet_compile", None)
            else:
                os.environ["nnUNet_compile"] = saved_compile
        if steps["train"]["ok"]:
            step("predict", lambda: _predict(data, device, work, Path(steps["train"]["results"])))
        else:
            steps["predict"] = {"ok": False, "error": "skipped: training failed", "seconds": 0.0}
    result = {"benchmark": "gpu_check", "device": device, "geometry": geometry,
              "compile_benchmarks": compile_benchmarks, "machine": common.machine_info(device), "steps": steps,
              "wall_seconds": time.perf_counter() - t_start, "budget_seconds": BUDGET_SECONDS}
    result["ok"] = all(s["ok"] for s in steps.values()) and set(steps) >= {"dataset", "train", "train_step",
                                                                              "two_stage", "predict"}
    common.write_json(out / "gpu_check.json", result)
    return result


def _ratio(step: dict, *keys: str) -> str:
    value: object = step
    for key in keys:
        if not isinstance(value, dict) or key not in value:
            return "-"
        value = value[key]
    return f"{value:.3f}" if isinstance(value, (int, float)) else "-"


def summary_table(result: dict) -> str:
    s = result["steps"]
    get = s.get
    ds, tr, ts, two, pr = (get(k, {}) for k in ("dataset", "train", "train_step", "two_stage", "predict"))
    rows = [
        ("dataset", ds, f"{ds.get('geometry', '-')}: patch {ds.get('patch_size', '-')}, batch {ds.get('batch_size', '-')}, "
                        f"{ds.get('stages', '-')} stages"),
        ("nnUNetv2_train KD (smoke)", tr, f"torch.compile {'on' if tr.get('compiled') else 'off'}, validation Dice "
                                          f"{_ratio(tr, 'validation_mean_dice')}"),
        ("KD step / stock 4-ch step", ts, _ratio(ts, "ratios", "kd_over_stock_4ch", "of_medians")),
        ("KD step / (4-ch + 2-ch steps)", ts, _ratio(ts, "ratios", "kd_over_sum_4ch_2ch", "of_medians")),
        ("KD peak memory / stock 4-ch", ts, _ratio(ts, "memory", "kd_over_stock_4ch")
         + (f" ({ts['memory']['metric']})" if "memory" in ts else "")),
        ("frozen-teacher step / KD step", two, _ratio(two, "ratios", "two_stage_over_single_stage", "of_medians")),
        ("student predicts a full-size case", pr, (f"{pr['case']} {pr['size']}, geometry equal, "
                                                   f"{pr['command_seconds']:.1f} s") if pr.get("ok") else "-"),
    ]
    width = max(len(r[0]) for r in rows)
    lines = [f"GPU check ({result['device']}, {result['machine'].get('gpu', result['machine'].get('cpu_model'))}), "
             f"total {result['wall_seconds']:.0f} s (budget on one GPU: {BUDGET_SECONDS} s)",
             f"| {'check'.ljust(width)} | result | value |", f"|{'-' * (width + 2)}|--------|-------|"]
    for name, st, value in rows:
        status = "ok" if st.get("ok") else "FAIL"
        if not st.get("ok"):
            value = st.get("error", "not run")
        lines.append(f"| {name.ljust(width)} | {status:<6} | {value} |")
    lines.append(f"RESULT: {'PASS' if result['ok'] else 'FAIL'}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/gpu_check.sh", description=__doc__.split("\n")[0])
    parser.add_argument("--cpu", action="store_true", help="run on CPU with tiny plans (tests the check itself)")
    parser.add_argument("--out", type=Path, default=Path("gpu_check_output"), help="folder for results (JSON)")
    parser.add_argument("--cache", type=Path, default=None, help="dataset cache (default OUT/_data)")
    parser.add_argument("--geometry", choices=sorted(common.GEOMETRIES), default=None,
                        help="synthetic dataset (default: brats on GPU, tiny with --cpu)")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds of the step benchmarks (default 3)")
    parser.add_argument("--compile-benchmarks", action="store_true",
                        help="also torch.compile the step benchmarks' networks (slow to start)")
    args = parser.parse_args(argv)
    device = "cpu" if args.cpu else "cuda"
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            print("gpu_check: no CUDA device visible; run with --cpu to check the script on CPU")
            return 2
    geometry = args.geometry or ("tiny" if args.cpu else "brats")
    cache = args.cache if args.cache is not None else args.out / "_data"
    result = run(device, geometry, cache, args.out, args.compile_benchmarks, args.repeats)
    print(summary_table(result))
    print(f"wrote {args.out / 'gpu_check.json'}")
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
