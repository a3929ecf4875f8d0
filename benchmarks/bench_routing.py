"""Benchmark: ``nnunet-kd predict`` on a folder whose cases miss different modalities, against doing it by hand.

Run ``python -m benchmarks.bench_routing --out DIR`` (writes ``DIR/bench_routing.json``).

Two model folders of the benchmark dataset are written into one ``nnUNet_results`` (untrained weights, as in
:mod:`benchmarks.bench_inference`): a stock 4-channel ``nnUNetTrainer`` and a T1ce + FLAIR KD student
(``nnUNetTrainerBarlowKD``). The input folder holds ``--cases`` cases with all four files and as many with only
T1ce + FLAIR. Timed, interleaved after a warm-up round:

* ``by_hand``: what a user does without the router once the cases are sorted into two folders: one
  ``nnUNetv2_predict -tr nnUNetTrainer`` on the full cases and one ``nnUNetv2_predict -tr nnUNetTrainerBarlowKD``
  on the two-file cases (sum of both commands; sorting the files by hand is not timed);
* ``router``: one ``nnunet-kd predict`` on the mixed folder (reads the files, routes both groups, writes
  routing.json, predicts group after group with nnU-Net's predictor).

Both run on the CPU without test-time mirroring, one preprocessing and one export process. Goal: router <= 1.05 x
by hand (ratio of medians). The benchmark also checks that both give the same segmentations.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from benchmarks import common
from benchmarks.bench_inference import read_labels, write_model_folders
from benchmarks.bench_train_step import build_trainer

GOAL_MAX = 1.05
STUDENT, STOCK = "nnUNetTrainerBarlowKD", "nnUNetTrainer"


def write_stock_4ch(data: common.BenchData, results: Path, device: str) -> Path:
    """A stock 4-channel model folder (fold 0) of the benchmark dataset's plans."""
    trainer = build_trainer("stock_4ch", data, device)
    folder = results / data.dataset_name / f"{STOCK}__{common.PLANS}__{common.CONFIGURATION}"
    (folder / "fold_0").mkdir(parents=True)
    (folder / "plans.json").write_text(json.dumps(trainer.plans_manager.plans, indent=2))
    (folder / "dataset.json").write_text(json.dumps(trainer.dataset_json, indent=2))
    with common.quiet():
        trainer.configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        trainer.save_checkpoint(str(folder / "fold_0" / "checkpoint_final.pth"))
    return folder


def input_folders(data: common.BenchData, work: Path, cases: int) -> tuple[Path, Path, Path]:
    """(mixed folder, the same full cases alone, the same two-file cases alone)."""
    images = data.dataset_raw / "imagesTr"
    names = sorted({p.name[: -len("_0000.nii.gz")] for p in images.glob("*_0000.nii.gz")})[: 2 * cases]
    mixed, full, two = work / "mixed", work / "full", work / "t1ce_flair"
    for folder in (mixed, full, two):
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
    for k, name in enumerate(names):
        channels = (0, 1, 2, 3) if k < cases else (1, 3)
        for c in channels:
            f = images / f"{name}_{c:04d}.nii.gz"
            shutil.copyfile(f, mixed / f.name)
            shutil.copyfile(f, (full if k < cases else two) / f.name)
    return mixed, full, two


def run(data: common.BenchData, device: str = "cpu", repeats: int = 3, warmup: int = 1, cases: int = 2,
        out_dir: Path | None = None, log=print) -> dict:
    common.activate(data, device)
    t_start = time.perf_counter()
    work = data.root / "routing"
    if work.exists():
        shutil.rmtree(work)
    results = work / "nnUNet_results"
    folders = write_model_folders(data, results, device)
    shutil.rmtree(folders.pop("stock"))  # the 2-channel stock twin of the student would tie with it
    write_stock_4ch(data, results, device)
    mixed, full, two = input_folders(data, work, cases)
    env = common.subprocess_env(data, device)
    env["nnUNet_results"] = str(results)
    flags = ["-f", "0", "-npp", "1", "-nps", "1", "--disable_tta"]
    hand_out, router_out = work / "pred_by_hand", work / "pred_router"

    def by_hand() -> None:
        for folder, trainer in ((full, STOCK), (two, STUDENT)):
            common.run_checked([str(common.BIN / "nnUNetv2_predict"), "-i", str(folder), "-o", str(hand_out), "-d",
                                str(data.dataset_id), "-c", common.CONFIGURATION, "-tr", trainer, "-device", "cpu",
                                "--disable_progress_bar", *flags], env)

    def router() -> None:
        if router_out.exists():
            shutil.rmtree(router_out)
        common.run_checked([str(common.BIN / "nnunet-kd"), "predict", "-i", str(mixed), "-o", str(router_out), "-d",
                            str(data.dataset_id), "-c", common.CONFIGURATION, "--device", "cpu", *flags], env)

    log(f"routing: {cases} full + {cases} T1ce+FLAIR cases; {warmup} warm-up + {repeats} rounds")
    samples = common.interleaved({"router": router, "by_hand": by_hand}, repeats, warmup, device, log=log)
    hand, routed = read_labels(hand_out), read_labels(router_out)
    identical = hand.keys() == routed.keys() and all(np.array_equal(hand[k], routed[k]) for k in hand)
    routing = json.loads((router_out / "routing.json").read_text())
    ratio = common.ratios(samples["router"], samples["by_hand"])
    result = {
        "benchmark": "bench_routing", "device": device, "geometry": data.geometry, "cases": 2 * cases,
        "groups": {g["group"]: g.get("trainer") for g in routing["groups"]},
        "warmup_rounds": warmup, "repeats": repeats, "predictions_identical": bool(identical),
        "seconds": {k: common.stats(v) for k, v in samples.items()}, "samples_seconds": samples,
        "ratios": {"router_over_by_hand": ratio},
        "goal": f"router / by hand <= {GOAL_MAX}", "goal_met": ratio["of_medians"] <= GOAL_MAX,
        "wall_seconds": time.perf_counter() - t_start,
    }
    if out_dir is not None:
        common.write_json(Path(out_dir) / "bench_routing.json", result)
    return result


def summary_lines(result: dict) -> list[str]:
    s = result["seconds"]
    return [f"routing ({result['cases']} cases in {len(result['groups'])} groups: {result['groups']}): "
            f"nnunet-kd predict median {s['router']['median']:.2f} s, nnUNetv2_predict per group by hand "
            f"{s['by_hand']['median']:.2f} s -> {common.fmt_ratio(result['ratios']['router_over_by_hand'])}  "
            f"goal <= {GOAL_MAX}; predictions identical: {result['predictions_identical']}"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = common.parser("bench_routing", __doc__, repeats=3)
    common.add_dataset_arguments(parser)
    parser.add_argument("--cases", type=int, default=2, help="cases per availability group (default 2)")
    args = parser.parse_args(argv)
    cache, geometry = common.dataset_arguments(args)
    data = common.prepare_dataset(cache, geometry)
    result = run(data, args.device, args.repeats, args.warmup, args.cases, args.out)
    return common.print_summary(summary_lines(result), args.out, "bench_routing")


if __name__ == "__main__":
    raise SystemExit(main())
