"""Benchmark: predicting with a KD student against a stock 2-channel nnU-Net model of the same plans.

Run ``python -m benchmarks.bench_inference --out DIR [--device cpu|cuda]`` (writes ``DIR/bench_inference.json``).

Two model folders are written for the benchmark dataset, with the same dataset.json (T1ce, FLAIR) and the same
plans.json (the student's, :func:`nnunet_kd.subsets.modalities.student_plans`) and the same network weights:

* ``ours``: ``nnUNetTrainerBarlowKD`` (checkpoint also holding teacher and projectors, as training writes it);
* ``stock``: stock ``nnUNetTrainer`` built on those 2 channels, its network loaded with the student's weights.

The weights are untrained (initialisation) but identical, so both models predict the same labels and do the
same export work; the benchmark checks that the predictions are equal. Timed, interleaved:

* ``cli``: the whole ``nnUNetv2_predict`` command (start-up, trainer lookup, checkpoint loading, preprocessing,
  sliding window, export) on a folder of T1ce + FLAIR files made by ``select_modalities``;
* ``in_process``: ``nnUNetPredictor.initialize_from_trained_model_folder`` and ``predict_from_files`` separately.

Goal: ours <= 1.05 x stock (CLI, ratio of medians). On CPU test-time mirroring is off (``--disable_tta``) to
keep the run short; on CUDA it is on, as nnU-Net predicts by default.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from benchmarks import common
from benchmarks.bench_train_step import build_trainer, set_threads

GOAL_MAX = 1.05
OURS, STOCK = "nnUNetTrainerBarlowKD", "nnUNetTrainer"


def model_folder(results: Path, data: common.BenchData, trainer_name: str) -> Path:
    return results / data.dataset_name / f"{trainer_name}__{common.PLANS}__{common.CONFIGURATION}"


def write_model_folders(data: common.BenchData, results: Path, device: str) -> dict[str, Path]:
    """The ``ours`` and ``stock`` model folders (fold 0, checkpoint_final.pth) under ``results``."""
    import torch
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    from nnunet_kd.subsets.modalities import student_plans
    from nnunet_kd.trainers.barlow_kd import unwrap

    kd = build_trainer("kd", data, device)
    plans = student_plans(kd.plans_manager.plans, kd.student_subset)
    dataset_json = kd.dataset_json
    stock_plans = json.loads(json.dumps(plans))
    stock_plans["continue_training"] = False
    with common.quiet():
        stock = nnUNetTrainer(stock_plans, common.CONFIGURATION, 0, dataset_json, torch.device(device))
        stock.initialize()
        stock.network.load_state_dict(unwrap(kd.network).state_dict())
    folders = {}
    for key, trainer in (("ours", kd), ("stock", stock)):
        folder = model_folder(results, data, trainer.__class__.__name__)
        if folder.exists():
            shutil.rmtree(folder)
        (folder / "fold_0").mkdir(parents=True)
        (folder / "plans.json").write_text(json.dumps(plans, indent=2))
        (folder / "dataset.json").write_text(json.dumps(dataset_json, indent=2))
        with common.quiet():
            trainer.configure_rotation_dummyDA_mirroring_and_inital_patch_size()  # sets inference mirroring axes
            trainer.save_checkpoint(str(folder / "fold_0" / "checkpoint_final.pth"))
        folders[key] = folder
    return folders


def input_folder(data: common.BenchData, work: Path, cases: int) -> Path:
    """T1ce + FLAIR files of the first ``cases`` training cases, picked by :func:`select_modalities`."""
    from nnunet_kd.dataset_conversion.select import select_modalities

    everything = work / "t1ce_flair_all"
    if everything.exists():
        shutil.rmtree(everything)
    select_modalities(data.dataset_raw / "imagesTr", everything, ["T1ce", "FLAIR"],
                      dataset_json=data.dataset_raw / "dataset.json", progress=False)
    chosen = work / "t1ce_flair"
    if chosen.exists():
        shutil.rmtree(chosen)
    chosen.mkdir()
    names = sorted({p.name[: -len("_0001.nii.gz")] for p in everything.glob("*_0001.nii.gz")})[:cases]
    for name in names:
        for f in everything.glob(f"{name}_*.nii.gz"):
            shutil.move(str(f), chosen / f.name)
    shutil.rmtree(everything)
    return chosen


def read_labels(folder: Path) -> dict[str, np.ndarray]:
    import SimpleITK as sitk

    return {p.name: sitk.GetArrayFromImage(sitk.ReadImage(str(p))) for p in sorted(folder.glob("*.nii.gz"))}


def run(data: common.BenchData, device: str = "cpu", repeats: int = 3, warmup: int = 1, cases: int = 4,
        tta: bool | None = None, out_dir: Path | None = None, log: Callable[[str], None] = print,
        threads: int | None = None) -> dict:
    """Write both model folders, time CLI and in-process prediction interleaved; return (and write) the results."""
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    common.activate(data, device)
    set_threads(device, threads)
    t_start = time.perf_counter()
    tta = device.startswith("cuda") if tta is None else tta
    work = data.root / "inference"
    results = work / "nnUNet_results"
    folders = write_model_folders(data, results, device)
    images = input_folder(data, work, cases)
    n_cases = len(list(images.glob("*_0001.nii.gz")))
    env = common.subprocess_env(data, device)
    env["nnUNet_results"] = str(results)
    outputs = {k: work / f"pred_{k}" for k in folders}

    def cli(key: str) -> Callable[[], object]:
        trainer = OURS if key == "ours" else STOCK
        cmd = [str(common.BIN / "nnUNetv2_predict"), "-i", str(images), "-o", str(outputs[key]), "-d",
               str(data.dataset_id), "-c", common.CONFIGURATION, "-f", "0", "-tr", trainer, "-device",
               device.split(":")[0], "-npp", "1", "-nps", "1", "--disable_progress_bar"]
        if not tta:
            cmd.append("--disable_tta")
        return lambda: common.run_checked(cmd, env)

    log(f"inference: {n_cases} cases, TTA {'on' if tta else 'off'}; nnUNetv2_predict, {warmup} warm-up + "
        f"{repeats} rounds")
    cli_samples = common.interleaved({"ours": cli("ours"), "stock": cli("stock")}, repeats, warmup, device, log=log)
    labels = {k: read_labels(outputs[k]) for k in folders}
    identical = labels["ours"].keys() == labels["stock"].keys() and all(
        np.array_equal(labels["ours"][n], labels["stock"][n]) for n in labels["ours"])

    predictors: dict[str, nnUNetPredictor] = {}

    def init(key: str) -> Callable[[], object]:
        def call() -> None:
            with common.quiet():
                predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=tta,
                                            perform_everything_on_device=device.startswith("cuda"),
                                            device=torch.device(device), verbose=False, verbose_preprocessing=False,
                                            allow_tqdm=False)
                predictor.initialize_from_trained_model_folder(str(folders[key]), use_folds=(0,),
                                                               checkpoint_name="checkpoint_final.pth")
            predictors[key] = predictor
        return call

    def predict(key: str) -> Callable[[], object]:
        def call() -> None:
            with common.quiet():
                predictors[key].predict_from_files(str(images), str(work / f"inproc_{key}"), save_probabilities=False,
                                                   overwrite=True, num_processes_preprocessing=1,
                                                   num_processes_segmentation_export=1)
        return call

    log("inference: in-process initialize_from_trained_model_folder / predict_from_files")
    init_samples = common.interleaved({"ours": init("ours"), "stock": init("stock")}, repeats, warmup, device)
    pred_samples = common.interleaved({"ours": predict("ours"), "stock": predict("stock")}, repeats, warmup, device,
                                      log=log)
    ratio = common.ratios(cli_samples["ours"], cli_samples["stock"])
    result = {
        "benchmark": "bench_inference", "device": device, "geometry": data.geometry, "cases": n_cases,
        "tta": tta, "torch_threads_in_process": torch.get_num_threads(), "warmup_rounds": warmup, "repeats": repeats, "predictions_identical": bool(identical),
        "checkpoint_bytes": {k: (f / "fold_0" / "checkpoint_final.pth").stat().st_size for k, f in folders.items()},
        "cli_seconds": {k: common.stats(v) for k, v in cli_samples.items()},
        "cli_seconds_per_case": {k: common.stats(np.asarray(v) / n_cases) for k, v in cli_samples.items()},
        "in_process_init_seconds": {k: common.stats(v) for k, v in init_samples.items()},
        "in_process_predict_seconds": {k: common.stats(v) for k, v in pred_samples.items()},
        "samples_seconds": {"cli": cli_samples, "in_process_init": init_samples, "in_process_predict": pred_samples},
        "ratios": {"cli_ours_over_stock": ratio,
                   "in_process_init_ours_over_stock": common.ratios(init_samples["ours"], init_samples["stock"]),
                   "in_process_predict_ours_over_stock": common.ratios(pred_samples["ours"], pred_samples["stock"])},
        "goal": f"cli ours/stock <= {GOAL_MAX}", "goal_met": ratio["of_medians"] <= GOAL_MAX,
        "wall_seconds": time.perf_counter() - t_start,
    }
    if out_dir is not None:
        common.write_json(Path(out_dir) / "bench_inference.json", result)
    return result


def summary_lines(result: dict) -> list[str]:
    s, r = result["cli_seconds"], result["ratios"]
    mib = {k: v / 2**20 for k, v in result["checkpoint_bytes"].items()}
    return [f"inference ({result['device']}, {result['cases']} cases, TTA {'on' if result['tta'] else 'off'}): "
            f"nnUNetv2_predict median ours {s['ours']['median']:.2f} s, stock {s['stock']['median']:.2f} s -> "
            f"{common.fmt_ratio(r['cli_ours_over_stock'])}  goal <= {GOAL_MAX}",
            f"  in-process: load {common.fmt_ratio(r['in_process_init_ours_over_stock'])}; predict "
            f"{common.fmt_ratio(r['in_process_predict_ours_over_stock'])}",
            f"  checkpoint ours {mib['ours']:.1f} MiB (student + teacher + projectors) vs stock {mib['stock']:.1f} MiB; "
            f"predictions identical: {result['predictions_identical']}"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = common.parser("bench_inference", __doc__, repeats=3)
    common.add_dataset_arguments(parser)
    parser.add_argument("--cases", type=int, default=4, help="cases to predict per call (default 4)")
    parser.add_argument("--tta", choices=["on", "off"], default=None,
                        help="test-time mirroring (default: on for cuda, off for cpu)")
    args = parser.parse_args(argv)
    cache, geometry = common.dataset_arguments(args)
    data = common.prepare_dataset(cache, geometry)
    tta = None if args.tta is None else args.tta == "on"
    result = run(data, args.device, args.repeats, args.warmup, args.cases, tta, args.out, threads=args.threads)
    return common.print_summary(summary_lines(result), args.out, "bench_inference")


if __name__ == "__main__":
    raise SystemExit(main())
