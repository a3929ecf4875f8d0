"""evaluate-subsets, report and evaluate --group-by-routing on a post-treatment (GLI-POST) dataset: every region
of the dataset kind (WT, TC, ET, NETC, SNFH, RC) is scored and shown, checked against plain numpy Dice.

No training: label maps are written with numpy/SimpleITK; evaluate-subsets reads predictions already in its cache
(a ``subset_prediction.json`` marker for the model's settings), so only its scoring and table run.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from nnunet_kd import brats
from nnunet_kd.cli import main

SHAPE = (10, 16, 18)   # z, y, x
SPACING_ZYX = (2.0, 1.0, 1.0)
CASES = ("P_001", "P_002", "P_003", "P_004")
#: The BraTS 2024 post-treatment regions in canonical labels (ED 1, NCR 2, ET 3, RC 4), written out here on
#: purpose instead of taken from nnunet_kd.brats: the reference must not come from the code under test.
REFERENCE_REGIONS = {"WT": (1, 2, 3), "TC": (2, 3), "ET": (3,), "NETC": (2,), "SNFH": (1,), "RC": (4,)}
#: The 8-bit RGB of the report's RC colour (#ff7f0e), looked for in the overlay PNG.
RC_RGB = (255, 127, 14)
NNUNET_KD = str(Path(sys.executable).parent / "nnunet-kd")


def write_image(path: Path, array: np.ndarray) -> None:
    img = sitk.GetImageFromArray(array)
    img.SetSpacing(tuple(float(s) for s in SPACING_ZYX[::-1]))
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(img, str(path))


def post_treatment_case(rng: np.random.Generator, shift: int = 0) -> np.ndarray:
    """Edema box with a necrotic core and an enhancing rim, and a resection cavity beside it (canonical labels)."""
    seg = np.zeros(SHAPE, np.uint8)
    y0, x0 = 3 + rng.integers(0, 2), 3 + rng.integers(0, 2)
    seg[2:8, y0:y0 + 8, x0:x0 + 8] = 1
    seg[3:7, y0 + 2:y0 + 6, x0 + 2:x0 + 6] = 3
    seg[4:6, y0 + 3:y0 + 5, x0 + 3:x0 + 5] = 2
    seg[3:7, 5 + shift:10 + shift, 13:17] = 4
    return seg


def perturbed(gt: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A prediction: the GT with the cavity shifted, some edema missed and some core relabelled."""
    pred = gt.copy()
    pred[pred == 4] = 0
    pred[np.roll(gt == 4, int(rng.integers(1, 3)), axis=1)] = 4
    pred[2, :, :][pred[2, :, :] == 1] = 0
    flip = (pred == 2) & (rng.random(SHAPE) < 0.5)
    pred[flip] = 3
    return pred


def dice(pred: np.ndarray, gt: np.ndarray, labels: tuple[int, ...]) -> float:
    p, g = np.isin(pred, labels), np.isin(gt, labels)
    total = int(p.sum()) + int(g.sum())
    return 1.0 if total == 0 else 2.0 * int((p & g).sum()) / total


def read(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def png_width(path: Path) -> int:
    import matplotlib.image as mpimg

    return mpimg.imread(path).shape[1]


@pytest.fixture(scope="module")
def post(tmp_path_factory) -> dict:
    """GLI-POST reference labels (with dataset.json), two prediction folders, the four images per case."""
    root = tmp_path_factory.mktemp("post")
    rng = np.random.default_rng(4)
    gts, preds = {}, {"a": {}, "b": {}}
    for i, case in enumerate(CASES):
        gt = post_treatment_case(rng, shift=i % 2)
        gts[case] = gt
        write_image(root / "gt" / f"{case}.nii.gz", gt)
        for name in preds:
            preds[name][case] = perturbed(gt, rng)
            write_image(root / name / f"{case}.nii.gz", preds[name][case])
        for channel in range(4):
            image = rng.normal(100, 10, SHAPE).astype(np.float32) + 60 * (gt > 0) * (channel == 3)
            write_image(root / "images" / f"{case}_{channel:04d}.nii.gz", image)
    (root / "gt" / "dataset.json").write_text(json.dumps(brats.make_dataset_json(len(CASES), "Post",
                                                                                kind="GLI-POST")))
    return {"root": root, "gt": root / "gt", "images": root / "images", "gts": gts, "preds": preds}


def expected_means(preds: dict, gts: dict, cases=CASES) -> dict[str, float]:
    return {r: float(np.mean([dice(preds[c], gts[c], labels) for c in cases])) for r, labels in REFERENCE_REGIONS.items()}


# ------------------------------------------------------------------------------------------ evaluate-subsets

ANY_SUBSET = "nnUNetTrainerBarlowKD_AnySubset_smoke"


def fake_post_treatment_any_subset_model(root: Path) -> Path:
    """An any-subset model folder of a GLI-POST dataset (its dataset.json records the kind); weights are dummies,
    never run: the predictions come from the cache."""
    from test_subset_export import fake_plans

    folder = root / f"{ANY_SUBSET}__nnUNetPlans__3d_fullres"
    (folder / "fold_0").mkdir(parents=True)
    dataset_json = brats.make_dataset_json(8, "Post", kind="GLI-POST")
    dataset_json["nnunet_kd"] = {"any_subset": {"subsets": ["T1ce", "T2+FLAIR"], "probabilities": [0.5, 0.5]}}
    (folder / "dataset.json").write_text(json.dumps(dataset_json))
    (folder / "plans.json").write_text(json.dumps(fake_plans()))
    checkpoint = {"network_weights": {"w": torch.ones(1)}, "trainer_name": ANY_SUBSET,
                  "init_args": {"configuration": "3d_fullres"}, "inference_allowed_mirroring_axes": (0, 1, 2)}
    torch.save(checkpoint, folder / "fold_0" / "checkpoint_final.pth")
    return folder


def test_evaluate_subsets_scores_the_cavity_of_a_post_treatment_dataset(post, tmp_path, capsys):
    model = fake_post_treatment_any_subset_model(tmp_path)
    labels = tmp_path / "labels"  # a reference folder without dataset.json: the kind comes from the model folder
    labels.mkdir()
    for case in CASES:
        (labels / f"{case}.nii.gz").write_bytes((post["gt"] / f"{case}.nii.gz").read_bytes())
    out = tmp_path / "out"
    subsets = {"T1ce": post["preds"]["a"], "T2+FLAIR": post["preds"]["b"]}
    for name, preds in subsets.items():  # finished predictions, as an earlier run leaves them
        folder = out / "subsets" / name / "predictions"
        for case in CASES:
            write_image(folder / f"{case}.nii.gz", preds[case])
        marker = {"model_folder": str(model.resolve()), "subset": name.split("+"), "folds": ["0"],
                  "checkpoint": "checkpoint_final.pth", "trainer": ANY_SUBSET, "test_time_mirroring": True,
                  "cases": list(CASES)}
        (folder / "subset_prediction.json").write_text(json.dumps(marker))
    assert main(["evaluate-subsets", str(model), str(post["images"]), str(labels), "-o", str(out), "--subsets",
                 "T1ce", "T2,FLAIR", "-device", "cpu", "-npp", "0", "-nps", "0"]) == 0
    assert "2 subset(s) (2 reused" in capsys.readouterr().out
    rows = read_csv(out / "subset_table.csv")
    assert [r["subset"] for r in rows] == ["T1ce", "T2+FLAIR", "Mean"]
    assert [k for k in rows[0] if k.endswith("_dice")] == [f"{r}_dice" for r in REFERENCE_REGIONS]
    for row in rows[:-1]:
        expected = expected_means(subsets[row["subset"]], post["gts"])
        for region, value in expected.items():
            assert float(row[f"{region}_dice"]) == pytest.approx(value, abs=1e-9), (row["subset"], region)
    assert float(rows[-1]["RC_dice"]) == pytest.approx(np.mean([float(r["RC_dice"]) for r in rows[:-1]]))
    md = (out / "subset_table.md").read_text()
    assert "RC Dice (%)" in md and "NETC HD95 (mm)" in md
    summary = json.loads((out / "subsets" / "T1ce" / "evaluation" / "summary.json").read_text())
    assert summary["dataset_kind"] == "GLI-POST" and summary["pred_convention"] == "dataset137-rc"
    # the kind's lesion-wise procedure (BraTS 2024 post-treatment: 10 mm^3 for ET, 20 for the other regions)
    assert summary["lesion_wise"]["procedure"] == "brats2024-gli-post"
    assert summary["lesion_wise"]["volume_threshold_mm3"] == {**dict.fromkeys(REFERENCE_REGIONS, 20.0), "ET": 10.0}
    # the heat map has one column per region: wider than the three-region map (9.5 inch at 110 dpi)
    assert png_width(out / "subset_heatmap.png") > 1.5 * 9.5 * 110

    # a GLI evaluation left in the cache is not reused for the GLI-POST table
    (out / "subsets" / "T1ce" / "evaluation" / "summary.json").write_text(json.dumps(
        {**summary, "dataset_kind": "GLI", "regions": ["WT", "TC", "ET"]}))
    assert main(["evaluate-subsets", str(model), str(post["images"]), str(labels), "-o", str(out), "--subsets",
                 "T1ce", "-device", "cpu", "-npp", "0", "-nps", "0"]) == 0
    assert json.loads((out / "subsets" / "T1ce" / "evaluation" / "summary.json").read_text())[
        "dataset_kind"] == "GLI-POST"
    # nor a GLI-POST evaluation scored with another lesion-wise procedure (the 2023 one, GLI-POST task 3 / 20 mm^3)
    lesion_2023 = {"procedure": "brats2023", "connectivity": 26, "dilation_iterations": 3,
                   "dilation_structure": "18-connected", "volume_threshold_mm3": 20.0, "hd95_penalty_mm": 374.0}
    (out / "subsets" / "T1ce" / "evaluation" / "summary.json").write_text(json.dumps(
        {**summary, "lesion_wise": lesion_2023}))
    assert main(["evaluate-subsets", str(model), str(post["images"]), str(labels), "-o", str(out), "--subsets",
                 "T1ce", "-device", "cpu", "-npp", "0", "-nps", "0"]) == 0
    assert json.loads((out / "subsets" / "T1ce" / "evaluation" / "summary.json").read_text())[
        "lesion_wise"]["procedure"] == "brats2024-gli-post"


# ------------------------------------------------------------------------------ evaluate --group-by-routing

GROUPS = {"P_001": "T1ce+FLAIR", "P_002": "T1ce+FLAIR", "P_003": "FLAIR"}  # P_004 is not in routing.json
UNROUTED = "(not in routing.json)"


@pytest.fixture(scope="module")
def evaluated(post, tmp_path_factory) -> dict[str, Path]:
    """Run a evaluated with --group-by-routing, run b without (the kind comes from GT's dataset.json)."""
    root = tmp_path_factory.mktemp("post_eval")
    routing = {"groups": [{"group": "T1ce+FLAIR"}, {"group": "FLAIR"}],
               "cases": {c: {"group": g} for c, g in GROUPS.items()}}
    (root / "routing.json").write_text(json.dumps(routing))
    for name, extra in (("a", ["--group-by-routing", str(root / "routing.json")]), ("b", [])):
        assert main(["evaluate", str(post["root"] / name), str(post["gt"]), "-o", str(root / name), "-np", "1",
                     "--no-progress", *extra]) == 0
    return {"a": root / "a", "b": root / "b", "routing": root / "routing.json"}


def test_evaluate_group_by_routing_lists_every_region_of_the_kind(post, evaluated, capsys):
    rows = read_csv(evaluated["a"] / "summary_by_group.csv")
    assert list(rows[0]) == ["group", "n_cases"] + [f"{r}_{m}" for r in REFERENCE_REGIONS for m in ("dice", "hd95")]
    assert [(r["group"], r["n_cases"]) for r in rows] == [("T1ce+FLAIR", "2"), ("FLAIR", "1"), (UNROUTED, "1")]
    members = {"T1ce+FLAIR": ["P_001", "P_002"], "FLAIR": ["P_003"], UNROUTED: ["P_004"]}
    for row in rows:
        expected = expected_means(post["preds"]["a"], post["gts"], members[row["group"]])
        for region, value in expected.items():
            assert float(row[f"{region}_dice"]) == pytest.approx(value, abs=1e-9), (row["group"], region)
    summary = json.loads((evaluated["a"] / "summary.json").read_text())
    groups = summary["availability_groups"]
    assert groups["groups"] == ["T1ce+FLAIR", "FLAIR", UNROUTED]
    assert groups["cases"] == {**GROUPS, "P_004": UNROUTED}
    assert groups["routing_json"] == str(evaluated["routing"].resolve())
    assert "availability_groups" not in json.loads((evaluated["b"] / "summary.json").read_text())
    assert not (evaluated["b"] / "summary_by_group.csv").exists()


# ------------------------------------------------------------------------------ report


@pytest.fixture(scope="module")
def report(post, evaluated, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("post_report") / "report"
    proc = subprocess.run([NNUNET_KD, "report", f"a={evaluated['a']}", f"b={evaluated['b']}", "-o", str(out),
                           "--images", str(post["images"])], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "RC Dice" in proc.stdout
    return out


def colour_pixels(path: Path, rgb: tuple[int, int, int], tolerance: int = 2) -> int:
    import matplotlib.image as mpimg

    img = np.round(mpimg.imread(path)[..., :3] * 255).astype(int)
    return int((np.abs(img - np.array(rgb)).max(axis=-1) <= tolerance).sum())


def test_report_shows_every_region_of_the_kind(post, report):
    rows = read_csv(report / "comparison.csv")
    assert [r["model"] for r in rows] == ["a", "b"]
    for row in rows:
        expected = expected_means(post["preds"][row["model"]], post["gts"])
        for region, value in expected.items():
            assert float(row[f"{region}_dice_mean"]) == pytest.approx(value, abs=1e-9), (row["model"], region)
    header = (report / "comparison.md").read_text().splitlines()[0]
    dice_columns = [c.strip() for c in header.strip("|").split("|") if c.strip().endswith(" Dice")]
    assert dice_columns == ["ET Dice", "TC Dice", "WT Dice", "NETC Dice", "SNFH Dice", "RC Dice"]
    report_md = (report / "report.md").read_text()
    assert "RC LW Dice" in report_md
    assert "BraTS 2024 post-treatment" in report_md.split("## Lesion-wise", 1)[1].split("\n\n")[1]
    # one violin panel per region: six panels of 4.2 inch at 110 dpi
    assert png_width(report / "dice_distribution.png") >= 6 * 4.2 * 110 - 2
    # the overlay draws the resection cavity in its colour (legend and contours of three cases)
    assert colour_pixels(report / "overlays" / "a.png", RC_RGB) > 300  # measured 1581; the legend line alone ~40


def test_report_groups_a_run_by_availability(post, report):
    rows = read_csv(report / "comparison_by_group.csv")
    assert [(r["model"], r["group"], r["n_cases"]) for r in rows] == [
        ("a", "T1ce+FLAIR", "2"), ("a", "FLAIR", "1"), ("a", UNROUTED, "1")]
    members = {"T1ce+FLAIR": ["P_001", "P_002"], "FLAIR": ["P_003"], UNROUTED: ["P_004"]}
    for row in rows:
        cases = members[row["group"]]
        for region, labels in REFERENCE_REGIONS.items():
            values = [dice(post["preds"]["a"][c], post["gts"][c], labels) for c in cases]
            assert float(row[f"{region}_dice_mean"]) == pytest.approx(np.mean(values), abs=1e-9)
            assert float(row[f"{region}_dice_std"]) == pytest.approx(np.std(values), abs=1e-9)
    md = (report / "comparison_by_group.md").read_text()
    assert "| Group | n | ET Dice |" in md and "| T1ce+FLAIR | 2 |" in md and "RC HD95 (mm)" in md
    report_md = (report / "report.md").read_text()
    assert "## Per availability group" in report_md and "by_group/a_dice.png" in report_md
    for metric in ("dice", "hd95"):  # one panel per region, one violin per group; run b has no groups
        assert png_width(report / "by_group" / f"a_{metric}.png") >= 6 * 4.2 * 110 - 2
    assert not (report / "by_group" / "b_dice.png").exists()


def test_evaluate_subsets_refuses_disagreeing_dataset_kinds(post, tmp_path):
    """GT says GLI, the model folder GLI-POST: one line naming both files, exit 2, no output folder."""
    model = fake_post_treatment_any_subset_model(tmp_path)
    labels = tmp_path / "labels"
    labels.mkdir()
    (labels / f"{CASES[0]}.nii.gz").write_bytes((post["gt"] / f"{CASES[0]}.nii.gz").read_bytes())
    (labels / "dataset.json").write_text(json.dumps(brats.make_dataset_json(1, "Gli", kind="GLI")))
    out = tmp_path / "out"
    proc = subprocess.run([NNUNET_KD, "evaluate-subsets", str(model), str(post["images"]), str(labels), "-o",
                           str(out), "--subsets", "T1ce", "-device", "cpu"], capture_output=True, text=True,
                          timeout=600)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert "different dataset kinds" in lines[0] and str(labels / "dataset.json") in lines[0]
    assert str(model / "dataset.json") in lines[0] and "--kind" in lines[0]
    assert not out.exists()
