"""`nnunet-kd evaluate` and `nnunet-kd report` end to end on tiny label maps written with SimpleITK."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from nnunet_kd import brats
from nnunet_kd.cli import main
from nnunet_kd.errors import InputDataError
from nnunet_kd.evaluation import evaluate, lesionwise, metrics

SHAPE = (14, 22, 20)              # numpy order (z, y, x)
SPACING_ZYX = (2.0, 1.0, 1.2)
CASES = ("BraTS_001", "BraTS_002", "BraTS_003", "BraTS_004")


def write_image(path: Path, array: np.ndarray, spacing_zyx=SPACING_ZYX, origin=(0.0, 0.0, 0.0)) -> None:
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(array)
    img.SetSpacing(tuple(float(s) for s in spacing_zyx[::-1]))
    img.SetOrigin(origin)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(img, str(path))


def tumour(center, r_wt: float, r_tc: float, shape=SHAPE) -> np.ndarray:
    """Canonical labels: edema shell, necrotic core, enhancing rim inside the core."""
    zz, yy, xx = np.indices(shape)
    d = np.sqrt(((zz - center[0]) * SPACING_ZYX[0]) ** 2 + ((yy - center[1]) * SPACING_ZYX[1]) ** 2
                + ((xx - center[2]) * SPACING_ZYX[2]) ** 2)
    seg = np.zeros(shape, np.uint8)
    seg[d <= r_wt] = brats.EDEMA
    seg[d <= r_tc] = brats.NECROSIS
    seg[(d <= r_tc) & (d > r_tc - 1.6)] = brats.ENHANCING
    return seg


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    """GT folder, two prediction folders (good/poor), FLAIR images and a fake nnU-Net fold folder."""
    root = tmp_path_factory.mktemp("evaldata")
    rng = np.random.default_rng(0)
    for i, case in enumerate(CASES):
        c = np.array([7, 11, 10]) + rng.integers(-1, 2, 3)
        gt = tumour(c, 7.0 + i, 4.0 + 0.5 * i)
        write_image(root / "gt" / f"{case}.nii.gz", gt)
        write_image(root / "good" / f"{case}.nii.gz", tumour(c + (0, 1, 0), 7.0 + i, 4.0 + 0.5 * i))
        poor = tumour(c + (1, 2 - i, 1), 5.0 + i, 3.0)
        if i == 3:
            poor[poor == brats.ENHANCING] = brats.NECROSIS       # no ET predicted at all
            poor[1, 1, 1] = brats.ENHANCING                      # ... except a far false positive
        write_image(root / "poor" / f"{case}.nii.gz", poor)
        flair = rng.normal(100, 10, SHAPE).astype(np.float32) + 80 * (gt > 0)
        write_image(root / "images" / f"{case}_0003.nii.gz", flair)
    fold = root / "fold_0"
    fold.mkdir()
    (fold / "training_log_2024_1_1_00_00_00.txt").write_text("".join(
        f"2024-01-01 00:00:0{e}.000000: Epoch {e}\n"
        f"2024-01-01 00:00:0{e}.000000: Current learning rate: {0.01 * (1 - e / 10):.5f}\n"
        f"2024-01-01 00:00:0{e}.000000: train_loss {-0.1 * e:.4f}\n"
        f"2024-01-01 00:00:0{e}.000000: val_loss {-0.08 * e:.4f}\n"
        f"2024-01-01 00:00:0{e}.000000: Pseudo dice [np.float32({0.1 * e:.4f}), np.float32({0.05 * e:.4f}), "
        f"np.float32({0.07 * e:.4f})]\n" for e in range(6)))
    return {"root": root, "gt": root / "gt", "good": root / "good", "poor": root / "poor",
            "images": root / "images", "fold": fold}


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def load(path: Path) -> np.ndarray:
    return evaluate.read_label_map(path).array


def test_evaluate_folders_values_and_outputs(data, tmp_path):
    out = tmp_path / "eval"
    rows, summary = evaluate.evaluate_folders(data["poor"], data["gt"], out, progress=False)
    assert [r["case"] for r in rows] == list(CASES)
    for row in rows:
        pred, gt = load(data["poor"] / f"{row['case']}.nii.gz"), load(data["gt"] / f"{row['case']}.nii.gz")
        ref = metrics.region_metrics(pred, gt, SPACING_ZYX)
        lw = lesionwise.lesion_wise_region_scores(pred, gt, SPACING_ZYX)
        for region in ("WT", "TC", "ET"):
            for m in metrics.REGION_METRIC_NAMES:
                assert row[f"{region}_{m}"] == pytest.approx(ref[region][m])
            assert row[f"{region}_lesion_dice"] == pytest.approx(lw[region].dice)
        assert row["pred_file"] == str((data["poor"] / f"{row['case']}.nii.gz").resolve())
    # case 4 has no ET but one false-positive voxel: Dice 0, lesion-wise HD95 = the 2023 penalty
    assert rows[3]["ET_dice"] == 0.0 and rows[3]["ET_lesion_fp"] == 1
    assert rows[3]["ET_lesion_hd95"] == pytest.approx((lesionwise.LESION_HD95_PENALTY_MM * 2) / 2)
    # volumes are mm^3: voxel count times the voxel volume
    gt1 = load(data["gt"] / f"{CASES[0]}.nii.gz")
    assert rows[0]["WT_vol_gt_mm3"] == pytest.approx((gt1 > 0).sum() * np.prod(SPACING_ZYX))

    per_case = read_csv(out / "per_case.csv")
    assert [r["case"] for r in per_case] == list(CASES)
    assert float(per_case[1]["TC_hd95"]) == pytest.approx(rows[1]["TC_hd95"])
    js = json.loads((out / "summary.json").read_text())
    assert js["pred_dir"] == str(data["poor"].resolve()) and js["gt_dir"] == str(data["gt"].resolve())
    dice_wt = np.array([r["WT_dice"] for r in rows])
    stats = js["metrics"]["WT"]["dice"]
    assert stats["mean"] == pytest.approx(dice_wt.mean()) and stats["std"] == pytest.approx(dice_wt.std())
    assert stats["median"] == pytest.approx(np.median(dice_wt))
    assert stats["q25"] == pytest.approx(np.percentile(dice_wt, 25)) and stats["n"] == 4
    summ = {(r["region"], r["metric"]): r for r in read_csv(out / "summary.csv")}
    assert float(summ[("ET", "hd95")]["q75"]) == pytest.approx(js["metrics"]["ET"]["hd95"]["q75"])
    assert summary == js
    assert not list(tmp_path.glob(".*tmp"))          # the temporary build folder is gone
    again, _ = evaluate.load_evaluation(out)
    assert again[2]["ET_dice"] == pytest.approx(rows[2]["ET_dice"])


def test_parallel_equals_serial(data):
    serial, _ = evaluate.evaluate_folders(data["good"], data["gt"], progress=False)
    parallel, _ = evaluate.evaluate_folders(data["good"], data["gt"], num_processes=2, progress=False)
    assert serial == parallel


def test_convention_applies_to_both_folders(data, tmp_path):
    conv = brats.get_convention("2021")
    for sub in ("gt", "poor"):
        for case in CASES[:2]:
            src = data[sub] / f"{case}.nii.gz"
            write_image(tmp_path / sub / src.name, conv.from_canonical_array(load(src)))
    a, _ = evaluate.evaluate_folders(tmp_path / "poor", tmp_path / "gt", convention="2021", progress=False)
    b, _ = evaluate.evaluate_folders(data["poor"], data["gt"], progress=False)
    for ra, rb in zip(a, b[:2]):
        assert ra["ET_dice"] == pytest.approx(rb["ET_dice"]) and ra["TC_hd95"] == pytest.approx(rb["TC_hd95"])


def test_missing_prediction_error_and_allow_missing(data, tmp_path):
    pred = tmp_path / "pred"
    shutil.copytree(data["good"], pred)
    (pred / f"{CASES[2]}.nii.gz").unlink()
    with pytest.raises(InputDataError, match=CASES[2]):
        evaluate.evaluate_folders(pred, data["gt"], progress=False)
    with pytest.warns(UserWarning, match=CASES[2]):
        rows, summary = evaluate.evaluate_folders(pred, data["gt"], allow_missing=True, progress=False)
    missing = rows[2]
    assert missing["missing_prediction"] == 1 and missing["pred_file"] == ""
    assert missing["WT_dice"] == 0.0 and missing["WT_hd95"] == pytest.approx(metrics.HD95_PENALTY_MM)
    assert summary["missing_predictions"] == [CASES[2]]


@pytest.mark.parametrize("problem", ["shape", "spacing", "labels"])
def test_bad_input_names_the_case(data, tmp_path, problem):
    pred = tmp_path / "pred"
    shutil.copytree(data["good"], pred)
    bad = pred / f"{CASES[1]}.nii.gz"
    arr = load(bad)
    if problem == "shape":
        write_image(bad, arr[:-1])
    elif problem == "spacing":
        write_image(bad, arr, spacing_zyx=(1.0, 1.0, 1.0))
    else:
        arr[0, 0, 0] = 4                          # not a dataset137 label
        write_image(bad, arr)
    with pytest.raises(InputDataError, match=CASES[1]) as err:
        evaluate.evaluate_folders(pred, data["gt"], progress=False)
    assert "\n" not in str(err.value)
    assert {"shape": "shape", "spacing": "spacing", "labels": "not allowed"}[problem] in str(err.value)


def test_cli_evaluate_and_errors(data, tmp_path, capsys):
    out = tmp_path / "ev"
    assert main(["evaluate", str(data["good"]), str(data["gt"]), "-o", str(out), "--num-processes", "1",
                 "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "ET" in printed and "WT" in printed and "±" in printed
    assert (out / "per_case.csv").is_file() and (out / "summary.json").is_file()
    pred = tmp_path / "pred"
    shutil.copytree(data["good"], pred)
    (pred / f"{CASES[0]}.nii.gz").unlink()
    assert main(["evaluate", str(pred), str(data["gt"]), "-o", str(tmp_path / "x"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("nnunet-kd evaluate: error:") and CASES[0] in err[0]
    assert not (tmp_path / "x").exists()
    with warnings.catch_warnings():
        warnings.simplefilter("error")                   # the command prints the warning instead of raising it
        assert main(["evaluate", str(pred), str(data["gt"]), "-o", str(tmp_path / "y"), "--allow-missing",
                     "--no-progress", "-np", "1"]) == 0
    assert CASES[0] in capsys.readouterr().err


@pytest.fixture(scope="module")
def evaluated(data, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("evaluated")
    out = {}
    for name in ("good", "poor"):
        evaluate.evaluate_folders(data[name], data["gt"], root / f"{name}_eval", progress=False)
        out[name] = root / f"{name}_eval"
    return out


def assert_nontrivial_png(path: Path, min_side: int = 200) -> None:
    import matplotlib.image as mpimg

    assert path.is_file() and path.stat().st_size > 5000, path
    img = mpimg.imread(path)
    assert min(img.shape[:2]) >= min_side
    assert np.unique(img.reshape(-1, img.shape[-1]), axis=0).shape[0] > 20     # many distinct colours


def test_cli_report_end_to_end(data, evaluated, tmp_path, capsys):
    import torch

    fold = tmp_path / "fold_kd"
    fold.mkdir()
    n = 5
    torch.save({"logging": {"train_losses": [-0.1 * e for e in range(n)], "val_losses": [-0.05 * e for e in range(n)],
                            "mean_fg_dice": [0.1 * e for e in range(n)], "ema_fg_dice": [0.08 * e for e in range(n)],
                            "dice_per_class_or_region": [[0.1 * e, 0.2 * e, 0.05 * e] for e in range(n)],
                            "lrs": [0.01 / (e + 1) for e in range(n)],
                            "epoch_start_timestamps": list(range(n)), "epoch_end_timestamps": list(range(1, n + 1)),
                            "teacher_mean_fg_dice": [0.5 + 0.05 * e for e in range(n)],
                            "kd_barlow_loss": [1.0 / (e + 1) for e in range(n)]},
                "current_epoch": n}, fold / "checkpoint_final.pth")
    out = tmp_path / "report"
    rc = main(["report", f"teacher={evaluated['good']}", str(evaluated["poor"]), "-o", str(out),
               "--images", str(data["images"]), "--training-log", f"kd={fold}", "--training-log", str(data["fold"])])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "teacher" in printed and "poor_eval" in printed

    rows = read_csv(out / "comparison.csv")
    assert [r["model"] for r in rows] == ["teacher", "poor_eval"]
    good_rows, _ = evaluate.load_evaluation(evaluated["good"])
    assert float(rows[0]["ET_dice_mean"]) == pytest.approx(np.mean([r["ET_dice"] for r in good_rows]))
    assert float(rows[0]["WT_hd95_std"]) == pytest.approx(np.std([r["WT_hd95"] for r in good_rows]))
    assert float(rows[0]["WT_dice_mean"]) > float(rows[1]["WT_dice_mean"])
    md = (out / "comparison.md").read_text()
    header, _, *body = md.strip().splitlines()
    assert "ET Dice" in header and "WT HD95 (mm)" in header and header.index("ET Dice") < header.index("WT Dice")
    assert len(body) == 2 and body[0].startswith("| teacher") and "±" in body[0]

    for png in ("dice_distribution.png", "hd95_distribution.png", "overlays/teacher.png", "overlays/poor_eval.png",
                "training_kd.png", "training_fold_0.png"):
        assert_nontrivial_png(out / png)
    report_md = (out / "report.md").read_text()
    assert "overlays/teacher.png" in report_md and "training_kd.png" in report_md


def test_report_without_images_skips_overlays(evaluated, tmp_path, capsys):
    out = tmp_path / "r"
    assert main(["report", str(evaluated["good"]), "-o", str(out)]) == 0
    assert "overlays skipped" in capsys.readouterr().out
    assert not (out / "overlays").exists() and (out / "dice_distribution.png").is_file()
    assert main(["report", str(tmp_path / "nothing"), "-o", str(tmp_path / "r2")]) == 2
    assert "per_case.csv" in capsys.readouterr().err


def test_training_log_readers(data, tmp_path):
    from nnunet_kd.reporting import plots

    log, source = plots.load_training_log(data["fold"])
    assert source.name.startswith("training_log_")
    assert log["train_losses"] == pytest.approx([-0.1 * e for e in range(6)])
    assert log["dice_per_class_or_region"][2] == pytest.approx([0.2, 0.1, 0.14])
    assert log["mean_fg_dice"][2] == pytest.approx(np.mean([0.2, 0.1, 0.14]))
    assert log["ema_fg_dice"][1] == pytest.approx(0.9 * log["mean_fg_dice"][0] + 0.1 * log["mean_fg_dice"][1])
    assert len(log["lrs"]) == 6
    with pytest.raises(InputDataError):
        plots.load_training_log(tmp_path)


@pytest.mark.slow
def test_console_script(data, tmp_path):
    exe = Path(sys.executable).parent / "nnunet-kd"
    out = tmp_path / "ev"
    proc = subprocess.run([str(exe), "evaluate", str(data["good"]), str(data["gt"]), "-o", str(out), "-np", "2"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "WT" in proc.stdout and (out / "summary.csv").is_file()
    proc = subprocess.run([str(exe), "evaluate", str(data["good"]), str(tmp_path / "nope")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_select_cases_and_single_case_run(evaluated):
    from nnunet_kd.reporting import plots, table

    run = table.load_runs([f"x={evaluated['poor']}"])[0]
    picks = plots.select_cases(run)
    assert list(picks) == ["best", "median", "worst"]
    mean_dice = {r["case"]: np.mean([r["ET_dice"], r["TC_dice"], r["WT_dice"]]) for r in run.rows}
    assert picks["best"]["case"] == max(mean_dice, key=mean_dice.get)
    assert picks["worst"]["case"] == min(mean_dice, key=mean_dice.get)
    run.rows = run.rows[:1]
    assert list(plots.select_cases(run)) == ["best/median/worst"]


# ------------------------------------------------------------------------------ bad input through the real CLI

def run_cli(*args: str) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).parent / "nnunet-kd"
    return subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=300)


def truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def write_nii(path: Path, array: np.ndarray) -> None:
    """An uncompressed .nii with the test spacing."""
    write_image(path, array)


@pytest.mark.parametrize("problem", ["truncated_pred", "truncated_gt_tail", "truncated_nii", "non_integer",
                                     "unexpected_label", "negative_dilation", "negative_min_volume",
                                     "nonempty_output"])
def test_cli_refuses_bad_input_with_one_line(data, tmp_path, problem):
    pred, gt = tmp_path / "pred", tmp_path / "gt"
    shutil.copytree(data["good"], pred)
    shutil.copytree(data["gt"], gt)
    out = tmp_path / "out"
    extra: list[str] = []
    bad_case, named = CASES[1], None
    if problem == "truncated_pred":
        named = pred / f"{bad_case}.nii.gz"
        truncate(named, 0.5)
    elif problem == "truncated_gt_tail":          # a few last bytes missing: SimpleITK still reads it
        named = gt / f"{bad_case}.nii.gz"
        data_bytes = named.read_bytes()
        named.write_bytes(data_bytes[:-9])
    elif problem == "truncated_nii":
        for folder in (pred, gt):
            for case in CASES:
                arr = load(folder / f"{case}.nii.gz")
                (folder / f"{case}.nii.gz").unlink()
                write_nii(folder / f"{case}.nii", arr)
        named = pred / f"{bad_case}.nii"
        truncate(named, 0.5)
        extra = ["--file-ending", ".nii"]
    elif problem == "non_integer":
        named = pred / f"{bad_case}.nii.gz"
        arr = load(named).astype(np.float32)
        arr[arr == brats.NECROSIS] = 1.5
        write_image(named, arr)
    elif problem == "unexpected_label":
        named = gt / f"{bad_case}.nii.gz"
        arr = load(named)
        arr[0, 0, 0] = 4
        write_image(named, arr)
    elif problem == "negative_dilation":
        extra = ["--lesion-dilation", "-1"]
    elif problem == "negative_min_volume":
        extra = ["--lesion-min-volume", "-5"]
    else:
        out.mkdir()
        (out / "mine.txt").write_text("keep me")
    proc = run_cli("evaluate", str(pred), str(gt), "-o", str(out), "-np", "1", "--no-progress", *extra)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and lines[0].startswith("nnunet-kd evaluate: error:"), proc.stderr
    message = lines[0]
    if named is not None:
        assert bad_case in message and str(named.resolve()) in message
    expected = {"truncated_pred": "truncated", "truncated_gt_tail": "truncated", "truncated_nii": "truncated",
                "non_integer": "non-integer label values 1.5", "unexpected_label": "label value(s) [4]",
                "negative_dilation": "--lesion-dilation", "negative_min_volume": "--lesion-min-volume",
                "nonempty_output": "--overwrite"}[problem]
    if problem == "unexpected_label":
        assert "reference file" in message      # says which side holds the bad value
    assert expected in message
    if problem == "nonempty_output":
        assert sorted(p.name for p in out.iterdir()) == ["mine.txt"]
    else:
        assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]     # no temporary folder left


def test_cli_overwrite_replaces_evaluation_and_report(data, tmp_path):
    out = tmp_path / "ev"
    out.mkdir()
    (out / "stale.csv").write_text("old")
    proc = run_cli("evaluate", str(data["good"]), str(data["gt"]), "-o", str(out), "-np", "1", "--no-progress",
                   "--overwrite")
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in out.iterdir()) == ["per_case.csv", "summary.csv", "summary.json"]
    report = tmp_path / "report"
    report.mkdir()
    (report / "notes.md").write_text("mine")
    proc = run_cli("report", str(out), "-o", str(report))
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1 and "--overwrite" in proc.stderr
    assert sorted(p.name for p in report.iterdir()) == ["notes.md"]
    proc = run_cli("report", str(out), "-o", str(report), "--overwrite")
    assert proc.returncode == 0, proc.stderr
    assert (report / "report.md").is_file() and not (report / "notes.md").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_separate_conventions_for_prediction_and_reference(data, tmp_path):
    """Raw BraTS 2023 references (NETC 1, SNFH 2, ET 3) against nnU-Net predictions (ED 1, NCR 2, ET 3)."""
    raw = brats.get_convention("2023")
    gt23, gt137 = tmp_path / "gt2023", tmp_path / "gt137"
    for case in CASES[:2]:
        canonical = load(data["gt"] / f"{case}.nii.gz")
        write_image(gt23 / f"{case}.nii.gz", raw.from_canonical_array(canonical))
        write_image(gt137 / f"{case}.nii.gz", canonical)
    pred = tmp_path / "pred"
    for case in CASES[:2]:
        write_image(pred / f"{case}.nii.gz", load(data["poor"] / f"{case}.nii.gz"))
    mixed, summary = evaluate.evaluate_folders(
        pred, gt23, progress=False, settings=evaluate.EvaluationSettings(gt_convention="2023"))
    same, _ = evaluate.evaluate_folders(pred, gt137, progress=False)
    assert summary["gt_convention"] == "2023" and summary["pred_convention"] == "dataset137"
    for a, b in zip(mixed, same):
        for key in ("TC_dice", "TC_hd95", "WT_dice", "ET_lesion_dice"):
            assert a[key] == pytest.approx(b[key])
    out = tmp_path / "ev"
    proc = run_cli("evaluate", str(pred), str(gt23), "-o", str(out), "-np", "1", "--no-progress",
                   "--gt-convention", "2023")
    assert proc.returncode == 0, proc.stderr
    rows = read_csv(out / "per_case.csv")
    assert float(rows[0]["TC_dice"]) == pytest.approx(same[0]["TC_dice"])
    # reading the raw labels as if they were nnU-Net's swaps edema and necrosis in TC: a different number
    wrong, _ = evaluate.evaluate_folders(pred, gt23, progress=False)
    assert wrong[0]["TC_dice"] != pytest.approx(same[0]["TC_dice"], abs=1e-3)


def test_report_refuses_evaluations_with_the_old_hd95_definition(evaluated, tmp_path):
    old = tmp_path / "old_eval"
    shutil.copytree(evaluated["good"], old)
    summary = json.loads((old / "summary.json").read_text())
    summary["hd95_definition"] = ("legacy BraTS HD95: max of the two directed 95th percentiles (numpy linear "
                                  "interpolation) of distances between 6-connected-erosion surface voxels, in mm")
    (old / "summary.json").write_text(json.dumps(summary))
    proc = run_cli("report", str(old), "-o", str(tmp_path / "r"))
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and str(old / "summary.json") in lines[0], proc.stderr
    assert "HD95 definition" in lines[0] and not (tmp_path / "r").exists()


def test_task_sets_the_reference_lesion_wise_parameters(data, tmp_path):
    out = tmp_path / "met"
    assert main(["evaluate", str(data["poor"]), str(data["gt"]), "-o", str(out), "--task", "MET", "-np", "1",
                 "--no-progress"]) == 0
    lw = json.loads((out / "summary.json").read_text())["lesion_wise"]
    assert (lw["dilation_iterations"], lw["volume_threshold_mm3"]) == (1, 2.0)
    assert main(["evaluate", str(data["poor"]), str(data["gt"]), "-o", str(out), "--task", "MET", "-np", "1",
                 "--no-progress", "--lesion-dilation", "0", "--overwrite"]) == 0
    lw = json.loads((out / "summary.json").read_text())["lesion_wise"]
    assert (lw["dilation_iterations"], lw["volume_threshold_mm3"]) == (0, 2.0)


def test_output_may_not_replace_an_input_folder(data, evaluated, tmp_path):
    pred = tmp_path / "pred"
    shutil.copytree(data["good"], pred)
    proc = run_cli("evaluate", str(pred), str(data["gt"]), "-o", str(pred), "--overwrite", "-np", "1", "--no-progress")
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1 and "prediction folder" in proc.stderr
    assert sorted(p.name for p in pred.iterdir()) == sorted(f"{c}.nii.gz" for c in CASES)
    run = tmp_path / "run"
    shutil.copytree(evaluated["good"], run)
    proc = run_cli("report", str(run), "-o", str(tmp_path), "--overwrite")      # a parent of the run folder
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1 and "run" in proc.stderr
    assert (run / "per_case.csv").is_file() and pred.is_dir()
