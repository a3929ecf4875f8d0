"""``nnunet-kd predict``: routing each availability group to a model, routing.json, --continue, stock-equal outputs.

The routing rule is tested on fabricated model folders (dataset.json and empty checkpoint files are all the router
reads); prediction itself on the session's tiny trained ``_smoke`` models, against stock ``nnUNetv2_predict``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import BIN, NnunetEnv
from nnunet_kd.brats import make_dataset_json
from nnunet_kd.cli import main
from nnunet_kd.errors import ConfigurationError
from nnunet_kd.subsets.modalities import resolve_channels, student_dataset_json
from nnunet_kd.subsets.routing import read_model, route_cases, routing_table, scan_models

DATASET = "Dataset517_SynthBraTS"
TABLE = {0: "T1", 1: "T1ce", 2: "T2", 3: "FLAIR"}
T1, T1CE, T2, FLAIR = range(4)


def fake_model(dataset_folder: Path, trainer: str, student: tuple[str, ...] | None = None, folds=("0",),
               any_subset: bool = False) -> Path:
    """A model folder with dataset.json and empty fold checkpoints (enough for routing, not for prediction)."""
    folder = dataset_folder / f"{trainer}__nnUNetPlans__3d_fullres"
    dataset_json = make_dataset_json(8, "Synth")
    if student is not None:
        dataset_json = student_dataset_json(dataset_json, resolve_channels(dataset_json["channel_names"], student))
    if any_subset:
        dataset_json.setdefault("nnunet_kd", {})["any_subset"] = {"subsets": ["T1"], "probabilities": [1.0]}
    folder.mkdir(parents=True)
    (folder / "dataset.json").write_text(json.dumps(dataset_json))
    for fold in folds:
        (folder / f"fold_{fold}").mkdir()
        (folder / f"fold_{fold}" / "checkpoint_final.pth").write_bytes(b"")
    return folder


@pytest.fixture
def results(tmp_path: Path) -> Path:
    """A stock 4-channel model, KD and student-only T1ce+FLAIR students, a KD T1+FLAIR student, an any-subset model."""
    ds = tmp_path / "results" / DATASET
    fake_model(ds, "nnUNetTrainer", folds=("0", "1"))
    fake_model(ds, "nnUNetTrainerBarlowKD", ("T1ce", "FLAIR"), folds=("0",))
    fake_model(ds, "nnUNetTrainerStudentOnly", ("FLAIR", "T1ce"), folds=("0", "1", "2"))  # more folds, still second
    fake_model(ds, "nnUNetTrainerBarlowKD_T1Flair", ("T1", "FLAIR"), folds=("0", "1"))
    fake_model(ds, "nnUNetTrainerBarlowKD_AnySubset", tuple(TABLE.values()), any_subset=True)
    fake_model(ds, "nnUNetTrainerBarlowKD_AnySubset_keep_T2", ("T2",))
    # an exported subset folder (zero-filled): never picked automatically
    exported = ds / "nnUNetTrainerBarlowKD_AnySubset_keep_T2__nnUNetPlans__3d_fullres"
    dataset_json = json.loads((exported / "dataset.json").read_text())
    dataset_json["nnunet_kd"]["zero_filled_input"] = {"model_channel_names": list(TABLE.values()),
                                                      "kept_channel_indices": [2]}
    (exported / "dataset.json").write_text(json.dumps(dataset_json))
    fake_model(ds, "nnUNetTrainerOther", folds=())  # no checkpoint: not a candidate
    return tmp_path / "results"


def routes_by_group(results: Path, cases: dict[str, tuple[int, ...]], drop: tuple[str, ...] = (), **kw):
    models = [m for m in scan_models(results / DATASET, "3d_fullres", **kw) if m.trainer not in drop]
    routes = route_cases(cases, models, TABLE, Path("OUT/subset_models"))
    return {"+".join(TABLE[i] for i in r.channels): r for r in routes}, models


def test_the_rule_for_every_kind_of_case(results: Path):
    cases = {"full": (T1, T1CE, T2, FLAIR), "kd": (T1CE, FLAIR), "kd2": (FLAIR, T1CE), "anysub": (T2, FLAIR),
             "single": (T2,)}
    routes, models = routes_by_group(results, cases)
    assert "nnUNetTrainerOther" not in {m.trainer for m in models}
    full, kd, anysub, single = (routes[g] for g in ("T1+T1ce+T2+FLAIR", "T1ce+FLAIR", "T2+FLAIR", "T2"))
    # 1. exact: the stock model on all four (not the any-subset model); the KD student over student-only
    assert (full.rule, full.model.trainer, full.model.folds) == ("exact", "nnUNetTrainer", ("0", "1"))
    assert (kd.rule, kd.model.trainer, kd.cases) == ("exact", "nnUNetTrainerBarlowKD", ["kd", "kd2"])
    assert kd.fed == (T1CE, FLAIR) and kd.predict_folder == kd.model.folder
    # 2. any-subset, exported into the cache (not the already exported T2 folder)
    assert (anysub.rule, anysub.model.trainer) == ("any-subset", "nnUNetTrainerBarlowKD_AnySubset")
    assert anysub.predict_folder == Path("OUT/subset_models/nnUNetTrainerBarlowKD_AnySubset_keep_T2_FLAIR__"
                                         "nnUNetPlans__3d_fullres")
    assert single.rule == "any-subset" and single.fed == (T2,)

    # without the any-subset model: 3. superset (most modalities, extra files ignored), 4. refused
    cases.update({"t1ce_t2_flair": (T1CE, T2, FLAIR), "flair": (FLAIR,)})
    routes, _ = routes_by_group(results, cases, drop=("nnUNetTrainerBarlowKD_AnySubset",))
    sup = routes["T1ce+T2+FLAIR"]
    assert (sup.rule, sup.model.trainer, sup.fed) == ("superset", "nnUNetTrainerBarlowKD", (T1CE, FLAIR))
    assert sup.notes == ["not given to the model: T2 (_0002)"]
    # the closest model: fewest missing modalities, then the tie-break (the T1+FLAIR student has more folds)
    for group, lacks in (("T2+FLAIR", "T1 (_0000)"), ("T2", "T1 (_0000), FLAIR (_0003)"), ("FLAIR", "T1 (_0000)")):
        assert routes[group].model is None and routes[group].rule is None
        assert f"also needs {lacks}" in routes[group].reason, routes[group].reason
    text = routing_table(list(routes.values()), TABLE)
    assert "refused: case flair: has FLAIR (_0003); no model takes only these -- the closest, " \
           "nnUNetTrainerBarlowKD_T1Flair__nnUNetPlans__3d_fullres, also needs T1 (_0000)" in text
    assert "T1ce+T2+FLAIR: not given to the model: T2 (_0002)" in text


def test_tie_breaks_and_folds(results: Path):
    cases = {"kd": (T1CE, FLAIR)}
    routes, _ = routes_by_group(results, cases, drop=("nnUNetTrainerBarlowKD",))
    assert routes["T1ce+FLAIR"].model.trainer == "nnUNetTrainerStudentOnly"
    # -f 1: only models with fold 1 are candidates (the KD student has fold 0 only)
    routes, models = routes_by_group(results, cases, folds=["1"])
    assert routes["T1ce+FLAIR"].model.trainer == "nnUNetTrainerStudentOnly"
    assert routes["T1ce+FLAIR"].model.folds == ("1",)
    assert "nnUNetTrainerBarlowKD_AnySubset" not in {m.trainer for m in models}


def test_a_model_with_other_channels_is_refused(tmp_path: Path):
    folder = fake_model(tmp_path, "nnUNetTrainer")
    dataset_json = json.loads((folder / "dataset.json").read_text())
    dataset_json["channel_names"] = {"0": "CT"}
    (folder / "dataset.json").write_text(json.dumps(dataset_json))
    with pytest.raises(ConfigurationError, match="are not the dataset's"):
        read_model(folder, TABLE)


# --------------------------------------------------------------------------------------------- the CLI, dry run


def write_cases(folder: Path, cases: dict[str, tuple[int, ...]], source: Path | None = None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for case, channels in cases.items():
        for c in channels:
            target = folder / f"{case}_{c:04d}.nii.gz"
            if source is None:
                target.write_bytes(b"")
            else:
                shutil.copy(source / f"{case}_{c:04d}.nii.gz", target)


def test_dry_run_prints_the_table_and_writes_only_routing_json(results: Path, tmp_path: Path, monkeypatch, capsys):
    monkeypatch.setenv("nnUNet_results", str(results))
    monkeypatch.delenv("nnUNet_raw", raising=False)
    write_cases(tmp_path / "in", {"A": (0, 1, 2, 3), "B": (1, 3), "C": (2, 3)})
    (tmp_path / "in" / "README.txt").write_text("not an image")
    out = tmp_path / "out"
    argv = ["predict", "-i", str(tmp_path / "in"), "-o", str(out), "-d", "517", "--dry-run",
            "--models", "T1ce+FLAIR=nnUNetTrainerStudentOnly__nnUNetPlans__3d_fullres"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "T1+T1ce+T2+FLAIR  1      exact" in printed and "override" in printed
    assert "  T2+FLAIR: exported from " in printed and "nnUNetTrainerBarlowKD_AnySubset_keep_T2_FLAIR__" in printed
    assert [p.name for p in out.iterdir()] == ["routing.json"]  # nothing exported, nothing predicted
    record = json.loads((out / "routing.json").read_text())
    assert record["nnunet_version"] == __import__("importlib.metadata").metadata.version("nnunetv2")
    assert record["dataset"] == DATASET and record["checkpoint"] == "checkpoint_final.pth"
    assert record["channels"] == {"_0000": "T1", "_0001": "T1ce", "_0002": "T2", "_0003": "FLAIR"}
    assert record["cases"]["B"] == {"group": "T1ce+FLAIR", "rule": "override", "folds": ["0", "1", "2"],
                                    "model_folder": str(results / DATASET / "nnUNetTrainerStudentOnly__nnUNetPlans__"
                                                                            "3d_fullres")}
    assert record["cases"]["C"]["rule"] == "any-subset"
    assert record["cases"]["C"]["model_folder"] == str(out / "subset_models" / "nnUNetTrainerBarlowKD_AnySubset_"
                                                                               "keep_T2_FLAIR__nnUNetPlans__3d_fullres")
    group = next(g for g in record["groups"] if g["group"] == "T2+FLAIR")
    assert group["files_fed"] == ["_0002", "_0003"] and group["model_kind"] == "any-subset"
    assert group["model_folder"] == str(results / DATASET / "nnUNetTrainerBarlowKD_AnySubset__nnUNetPlans__3d_fullres")


def test_refused_cases_exit_3_and_bad_overrides_are_one_line(results: Path, tmp_path: Path, monkeypatch, capsys):
    monkeypatch.setenv("nnUNet_results", str(results))
    shutil.rmtree(results / DATASET / "nnUNetTrainerBarlowKD_AnySubset__nnUNetPlans__3d_fullres")
    write_cases(tmp_path / "in", {"A": (0, 1, 2, 3), "F": (3,)})
    out = tmp_path / "out"
    assert main(["predict", "-i", str(tmp_path / "in"), "-o", str(out), "-d", DATASET, "--dry-run"]) == 3
    assert "refused: case F: has FLAIR (_0003); no model takes only these" in capsys.readouterr().out
    assert json.loads((out / "routing.json").read_text())["cases"]["F"]["rule"] == "refused"
    # an override that needs a file the group lacks
    assert main(["predict", "-i", str(tmp_path / "in"), "-o", str(tmp_path / "o2"), "-d", "517", "--dry-run",
                 "--models", "FLAIR=nnUNetTrainerBarlowKD__nnUNetPlans__3d_fullres"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "the model needs T1ce (_0001), which these cases do not have" in err[0]
    assert not (tmp_path / "o2").exists()


# --------------------------------------------------------------------------------------------- real prediction

KD = "nnUNetTrainerBarlowKD_smoke"
ANY_SUBSET = "nnUNetTrainerBarlowKD_AnySubset_smoke"


def _seg(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


@pytest.mark.slow
def test_predict_matches_stock_nnunet_per_group_and_continues(nnunet_env: NnunetEnv, tmp_path: Path):
    kd, any_subset = nnunet_env.ensure_trained(KD), nnunet_env.ensure_trained(ANY_SUBSET)
    source = nnunet_env.dataset_raw / "imagesTr"
    cases = sorted(p.name[: -len("_0000.nii.gz")] for p in source.glob("*_0000.nii.gz"))[:3]
    availability = {cases[0]: (1, 3), cases[1]: (2, 3), cases[2]: (1, 2, 3)}  # KD exact, any-subset, KD pinned
    write_cases(tmp_path / "in", availability, source)
    out = tmp_path / "out"
    argv = [str(BIN / "nnunet-kd"), "predict", "-i", str(tmp_path / "in"), "-o", str(out), "-d", "517",
            "-f", "0", "--device", "cpu", "-npp", "1", "-nps", "1",
            "--models", f"T1ce,FLAIR={kd.name}", f"T2,FLAIR={any_subset}", f"T1ce,T2,FLAIR={kd}"]
    proc = nnunet_env.run(*argv)
    assert "3 case(s) predicted, 0 refused" in proc.stdout
    record = json.loads((out / "routing.json").read_text())
    exported = out / "subset_models" / f"{ANY_SUBSET}_keep_T2_FLAIR__nnUNetPlans__3d_fullres"
    assert record["cases"][cases[1]]["model_folder"] == str(exported)
    group = next(g for g in record["groups"] if g["group"] == "T1ce+T2+FLAIR")
    assert group["files_fed"] == ["_0001", "_0003"] and group["files_ignored"] == ["_0002"]
    assert sorted(p.name for p in out.glob("*.nii.gz")) == sorted(f"{c}.nii.gz" for c in cases)
    assert not list(out.glob(".nnunet-kd-predict-*"))  # staging folders removed

    # stock nnUNetv2_predict on folders holding only each group's model files gives the same segmentations
    stock_in, stock_out = tmp_path / "stock_in", tmp_path / "stock_out"
    write_cases(stock_in / "kd", {cases[0]: (1, 3), cases[2]: (1, 3)}, source)
    write_cases(stock_in / "sub", {cases[1]: (2, 3)}, source)
    for name, folder in (("kd", kd), ("sub", exported)):
        nnunet_env.run(str(BIN / "nnUNetv2_predict_from_modelfolder"), "-i", str(stock_in / name), "-o",
                       str(stock_out / name), "-m", str(folder), "-f", "0", "-device", "cpu", "-npp", "1",
                       "-nps", "1", "--disable_progress_bar")
    for case, name in ((cases[0], "kd"), (cases[1], "sub"), (cases[2], "kd")):
        assert np.array_equal(_seg(out / f"{case}.nii.gz"), _seg(stock_out / name / f"{case}.nii.gz")), case

    # --continue: finished cases are skipped; a removed one and one routed elsewhere are predicted again;
    # this run uses nnU-Net's sequential prediction (-npp 0 -nps 0: no worker processes to start)
    before = {c: (out / f"{c}.nii.gz").stat().st_mtime_ns for c in cases}
    (out / f"{cases[0]}.nii.gz").unlink()
    sequential = argv[:-1]
    sequential[sequential.index("-npp") + 1] = sequential[sequential.index("-nps") + 1] = "0"
    proc = nnunet_env.run(*sequential, f"T1ce,T2,FLAIR={any_subset}", "--continue")
    assert "2 case(s) predicted, 1 already finished (--continue)" in proc.stdout
    assert np.array_equal(_seg(out / f"{cases[0]}.nii.gz"), _seg(stock_out / "kd" / f"{cases[0]}.nii.gz"))
    assert (out / f"{cases[1]}.nii.gz").stat().st_mtime_ns == before[cases[1]]
    assert (out / f"{cases[2]}.nii.gz").stat().st_mtime_ns != before[cases[2]]
    assert json.loads((out / "routing.json").read_text())["cases"][cases[2]]["model_folder"] == str(
        out / "subset_models" / f"{ANY_SUBSET}_keep_T1ce_T2_FLAIR__nnUNetPlans__3d_fullres")


# --------------------------------------------------------------------------------------------- scores per group


def _write_seg(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(sitk.GetImageFromArray(array.astype(np.uint8)), str(path))


def test_evaluate_groups_scores_by_routing(tmp_path: Path, capsys):
    rng = np.random.default_rng(0)
    groups = {"A": "T1ce+FLAIR", "B": "T1ce+FLAIR", "C": "FLAIR"}  # D is not in routing.json
    wt_dice: dict[str, float] = {}
    for case in ("A", "B", "C", "D"):
        gt = np.zeros((12, 12, 12), np.uint8)
        gt[3:9, 3:9, 3:9] = rng.integers(1, 4, size=(6, 6, 6))
        pred = np.roll(gt, rng.integers(0, 3), axis=0)
        _write_seg(tmp_path / "gt" / f"{case}.nii.gz", gt)
        _write_seg(tmp_path / "pred" / f"{case}.nii.gz", pred)
        p, g = pred > 0, gt > 0
        wt_dice[case] = 2 * (p & g).sum() / (p.sum() + g.sum())  # WT = any tumour label, plain numpy
    routing = {"groups": [{"group": "T1ce+FLAIR"}, {"group": "FLAIR"}],
               "cases": {c: {"group": g} for c, g in groups.items()}}
    (tmp_path / "routing.json").write_text(json.dumps(routing))
    out = tmp_path / "eval"
    assert main(["evaluate", str(tmp_path / "pred"), str(tmp_path / "gt"), "-o", str(out), "-np", "1",
                 "--no-progress", "--group-by-routing", str(tmp_path / "routing.json")]) == 0
    assert "mean per availability group" in capsys.readouterr().out
    import csv

    rows = list(csv.DictReader((out / "summary_by_group.csv").read_text().splitlines()))
    assert [(r["group"], r["n_cases"]) for r in rows] == [("T1ce+FLAIR", "2"), ("FLAIR", "1"),
                                                          ("(not in routing.json)", "1")]
    expected = [np.mean([wt_dice["A"], wt_dice["B"]]), wt_dice["C"], wt_dice["D"]]
    assert [float(r["WT_dice"]) for r in rows] == pytest.approx(expected, abs=1e-9)
    # a malformed routing.json stops before the evaluation
    (tmp_path / "bad.json").write_text("[]")
    assert main(["evaluate", str(tmp_path / "pred"), str(tmp_path / "gt"), "-o", str(tmp_path / "eval2"), "-np",
                 "1", "--no-progress", "--group-by-routing", str(tmp_path / "bad.json")]) == 2
    assert not (tmp_path / "eval2").exists()


def test_a_superset_case_is_fed_only_its_models_files(results: Path, tmp_path: Path):
    from nnunet_kd.subsets.routed_prediction import case_inputs

    write_cases(tmp_path / "in", {"S": (T1CE, T2, FLAIR)})
    routes, _ = routes_by_group(results, {"S": (T1CE, T2, FLAIR)}, drop=("nnUNetTrainerBarlowKD_AnySubset",))
    route = routes["T1ce+T2+FLAIR"]
    assert case_inputs(route, tmp_path / "in", ["S"]) == [[str(tmp_path / "in" / "S_0001.nii.gz"),
                                                           str(tmp_path / "in" / "S_0003.nii.gz")]]
    route.fed = (T1CE, T2, FLAIR)  # a router/model disagreement is refused, never guessed
    with pytest.raises(ConfigurationError, match="takes T1ce \\(_0001\\), FLAIR \\(_0003\\), not the files"):
        case_inputs(route, tmp_path / "in", ["S"])
