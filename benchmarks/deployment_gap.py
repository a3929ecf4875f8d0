"""How far a KD student's final validation on nnU-Net's preprocessed arrays is from what deployment gives.

Why: nnU-Net crops and normalises each training case with a non-zero mask built from all four channels; stock
``nnUNetv2_predict`` with the student's two files builds it from those two. When the modalities' non-zero extents
differ, the student's inputs differ between the two paths. This script builds a synthetic BraTS dataset whose T1
and T2 (``_0000``, ``_0002``, *not* the default student's channels) carry a thin low-signal rim just outside the
brain, trains a short KD run, and validates the same checkpoint twice in one process:

* ``preprocessed``: the old validation (``validate_from_raw_files = False``): the student's channels of the
  4-channel preprocessed arrays;
* ``deployment``: the new one (default): each validation case from its raw student files through nnU-Net's
  predictor (:mod:`nnunet_kd.trainers.deployment_validation`);

and runs stock ``nnUNetv2_predict`` on the validation cases' two student files. It reports the fraction of voxels
whose label differs between the paths, the validation Dice of each, and how many voxels the deployment
validation differs from ``nnUNetv2_predict`` (expected: 0).

    python -m benchmarks.deployment_gap --out bench_output/deployment_gap [--trainer nnUNetTrainerBarlowKD_demo]

Not part of ``run_all``: it trains a model (about 10 min on 2 loaded CPU cores with the ``_demo`` trainer).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np

from benchmarks.common import BIN, machine_info, run_checked, write_json
from nnunet_kd.synthetic import add_low_signal_rim

DATASET_ID = 991
DATASET_NAME = "RimBraTS"
STUDENT_SUFFIXES = ("_0001", "_0003")
RIM_SUFFIXES = ("_0000", "_0002")  # the rim of nnunet_kd.synthetic.add_low_signal_rim


def _env(root: Path) -> dict[str, str]:
    from nnunet_kd.paths import environment_with_trainers

    env = environment_with_trainers(dict(os.environ))
    env.update({"nnUNet_raw": str(root / "raw"), "nnUNet_preprocessed": str(root / "preprocessed"),
                "nnUNet_results": str(root / "results"), "nnUNet_n_proc_DA": "0", "nnUNet_def_n_proc": "1",
                "nnUNet_compile": "false", "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"})
    return env


def build(root: Path, cases: int, shape: tuple[int, int, int], width: int, margin: int, seed: int) -> Path:
    """Synthetic dataset with the T1/T2 rim, planned and preprocessed; returns the raw dataset folder."""
    from nnunet_kd.dataset_conversion.convert import convert_brats
    from nnunet_kd.synthetic import write_brats_folder

    for name in ("raw", "preprocessed", "results"):
        (root / name).mkdir(parents=True, exist_ok=True)
    write_brats_folder(root / "source", cases, layout="2021", seed=seed, shape=shape, unlabeled=0, progress=False)
    raw = convert_brats(root / "source", DATASET_ID, name=DATASET_NAME, raw_root=root / "raw", progress=False)
    add_low_signal_rim(raw, RIM_SUFFIXES, width=width, margin=margin)
    env = _env(root)
    env["nnUNet_n_proc_DA"] = "1"
    run_checked([str(BIN / "nnUNetv2_plan_and_preprocess"), "-d", str(DATASET_ID), "-c", "3d_fullres", "-np", "1",
                 "-npfp", "1"], env)
    return raw


def validate_both(root: Path, trainer_name: str, fold: int = 0) -> dict[str, float]:
    """Validate the trained checkpoint both ways in this process; folders validation_{deployment,preprocessed}."""
    import torch
    from nnunetv2.run.run_training import get_trainer_from_args

    os.environ.update(_env(root))
    trainer = get_trainer_from_args(str(DATASET_ID), "3d_fullres", fold, trainer_name, device=torch.device("cpu"))
    trainer.load_checkpoint(os.path.join(trainer.output_folder, "checkpoint_final.pth"))
    seconds = {}
    for name, from_raw in (("deployment", True), ("preprocessed", False)):
        trainer.validate_from_raw_files = from_raw
        t0 = time.perf_counter()
        trainer.perform_actual_validation(False)
        seconds[name] = time.perf_counter() - t0
        target = Path(trainer.output_folder) / f"validation_{name}"
        if target.exists():
            shutil.rmtree(target)
        os.replace(Path(trainer.output_folder) / "validation", target)
    return seconds


def input_differences(root: Path, model: Path, cases: list[str]) -> dict[str, dict]:
    """Per case: the student's inputs as training sees them (its channels of the 4-channel preprocessed array) vs
    as deployment makes them (nnU-Net's preprocessor on the 2 files): crop boxes and value differences."""
    from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    plans = PlansManager(json.loads((model / "plans.json").read_text()))
    dataset_json = json.loads((model / "dataset.json").read_text())
    indices = dataset_json["nnunet_kd"]["student"]["channel_indices"]
    raw = root / "raw" / f"Dataset{DATASET_ID:03d}_{DATASET_NAME}" / "imagesTr"
    folder = root / "preprocessed" / f"Dataset{DATASET_ID:03d}_{DATASET_NAME}" / "nnUNetPlans_3d_fullres"
    out = {}
    for case in cases:
        files = [str(raw / f"{case}{s}.nii.gz") for s in STUDENT_SUFFIXES]
        alone, _, p_alone = DefaultPreprocessor(verbose=False).run_case(
            files, None, plans, plans.get_configuration("3d_fullres"), dataset_json)
        four, _, _, p_four = infer_dataset_class(str(folder))(str(folder), [case]).load_case(case)
        four = np.asarray(four[:])[indices]
        box_a, box_f = p_alone["bbox_used_for_cropping"], p_four["bbox_used_for_cropping"]
        record = {"crop_training": [int(b - a) for a, b in box_f], "crop_deployment": [int(b - a) for a, b in box_a]}
        if tuple(four.shape[1:]) == tuple(record["crop_training"]) and \
                tuple(alone.shape[1:]) == tuple(record["crop_deployment"]):  # no resampling: align the crops
            region = tuple(slice(a0 - f0, b0 - f0) for (a0, b0), (f0, _) in zip(box_a, box_f))
            seen_in_training = four[(slice(None), *region)]
            brain = alone != 0
            diff = np.abs(seen_in_training - alone)
            record.update({"max_abs_difference": float(diff.max()),
                           "mean_abs_difference_in_brain": float(diff[brain].mean()),
                           "deployment_channel_std_over_brain": [float(alone[c][brain[c]].std())
                                                                 for c in range(alone.shape[0])]})
        out[case] = record
    return out


def compare(a: Path, b: Path, cases: list[str]) -> dict[str, dict]:
    """Per case: voxels, voxels with different labels, and those among the union of foregrounds."""
    import SimpleITK as sitk

    out = {}
    for case in cases:
        x = sitk.GetArrayFromImage(sitk.ReadImage(str(a / f"{case}.nii.gz")))
        y = sitk.GetArrayFromImage(sitk.ReadImage(str(b / f"{case}.nii.gz")))
        differ = x != y
        foreground = (x > 0) | (y > 0)
        out[case] = {"voxels": int(x.size), "differ": int(differ.sum()), "fraction_differ": float(differ.mean()),
                     "foreground_union": int(foreground.sum()),
                     "fraction_of_foreground_differ": float(differ[foreground].mean()) if foreground.any() else 0.0}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="bench_output/deployment_gap")
    parser.add_argument("--trainer", default="nnUNetTrainerBarlowKD_demo")
    parser.add_argument("--cases", type=int, default=8)
    parser.add_argument("--shape", type=int, nargs=3, default=(40, 40, 40))
    parser.add_argument("--rim-width", type=int, default=1)
    parser.add_argument("--margin", type=int, default=3, help="zero voxels padded on each side before the rim")
    parser.add_argument("--seed", type=int, default=3)
    args = parser.parse_args(argv)

    root = Path(args.out).resolve()
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    t0 = time.perf_counter()
    build(root, args.cases, tuple(args.shape), args.rim_width, args.margin, args.seed)
    env = _env(root)
    run_checked([str(BIN / "nnUNetv2_train"), str(DATASET_ID), "3d_fullres", "0", "-tr", args.trainer,
                 "-device", "cpu"], env)
    train_s = time.perf_counter() - t0
    seconds = validate_both(root, args.trainer)

    model = root / "results" / f"Dataset{DATASET_ID:03d}_{DATASET_NAME}" / f"{args.trainer}__nnUNetPlans__3d_fullres"
    fold = model / "fold_0"
    cases = sorted(p.name[: -len(".nii.gz")] for p in (fold / "validation_deployment").glob("*.nii.gz"))
    raw = root / "raw" / f"Dataset{DATASET_ID:03d}_{DATASET_NAME}"
    student_in = root / "student_files"
    student_in.mkdir()
    for case in cases:
        for suffix in STUDENT_SUFFIXES:
            shutil.copy(raw / "imagesTr" / f"{case}{suffix}.nii.gz", student_in)
    run_checked([str(BIN / "nnUNetv2_predict"), "-i", str(student_in), "-o", str(root / "stock_predict"), "-d",
                 str(DATASET_ID), "-c", "3d_fullres", "-f", "0", "-tr", args.trainer, "-device", "cpu", "-npp", "1",
                 "-nps", "1"], env)

    summaries = {name: json.loads((fold / f"validation_{name}" / "summary.json").read_text())
                 for name in ("deployment", "preprocessed")}
    dice = {name: {"foreground_mean": s["foreground_mean"]["Dice"],
                   **{f"region_{k}": v["Dice"] for k, v in s["mean"].items()}} for name, s in summaries.items()}
    old_vs_new = compare(fold / "validation_preprocessed", fold / "validation_deployment", cases)
    new_vs_stock = compare(fold / "validation_deployment", root / "stock_predict", cases)
    inputs = input_differences(root, model, cases)
    result = {
        "machine": machine_info("cpu"),
        "settings": {**vars(args), "rim_suffixes": RIM_SUFFIXES, "student_suffixes": STUDENT_SUFFIXES},
        "validation_cases": cases,
        "dice": dice,
        "dice_difference_deployment_minus_preprocessed": dice["deployment"]["foreground_mean"]
        - dice["preprocessed"]["foreground_mean"],
        "old_vs_new_label_differences": old_vs_new,
        "deployment_vs_nnUNetv2_predict": new_vs_stock,
        "student_inputs_training_vs_deployment": inputs,
        "seconds": {"build_and_train": train_s, **{f"validate_{k}": v for k, v in seconds.items()}},
    }
    write_json(root / "deployment_gap.json", result)
    for case, r in old_vs_new.items():
        print(f"{case}: old vs new labels differ in {r['fraction_differ']:.1%} of voxels "
              f"({r['fraction_of_foreground_differ']:.1%} of the foreground union); new vs nnUNetv2_predict: "
              f"{new_vs_stock[case]['differ']} voxels; inputs {inputs[case]}")
    print(f"validation Dice (foreground mean): preprocessed {dice['preprocessed']['foreground_mean']:.4f}, "
          f"deployment {dice['deployment']['foreground_mean']:.4f}")
    print(f"times: {result['seconds']}; load average {result['machine'].get('load_average_1_5_15')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
