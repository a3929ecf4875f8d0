"""Ensemble pseudo-labelling: averaging, labels in the dataset convention, parts, reports, the CLI."""

from __future__ import annotations

import json
import pickle
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import BIN, NnunetEnv
from nnunet_kd.cli import main
from nnunet_kd.distillation import pseudolabel as pl
from nnunet_kd.errors import ConfigurationError, InputDataError

SHAPE = (4, 5, 6)
SPACING = (1.0, 1.5, 2.0)  # x, y, z as SimpleITK reports it


def label_manager():
    from nnunetv2.utilities.label_handling.label_handling import LabelManager

    from nnunet_kd.brats import make_dataset_json

    meta = make_dataset_json(1, "x")
    return LabelManager(meta["labels"], meta["regions_class_order"])


def writer():
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

    return SimpleITKIO()


def properties() -> dict:
    return {"sitk_stuff": {"spacing": SPACING, "origin": (0.0, 0.0, 0.0),
                           "direction": (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)},
            "spacing": list(SPACING[::-1])}


def write_member(folder: Path, case: str, probabilities: np.ndarray) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(folder / f"{case}.npz", probabilities=probabilities)
    (folder / f"{case}.pkl").write_bytes(pickle.dumps(properties()))


def hand_labels(mean: np.ndarray) -> np.ndarray:
    """WT > 0.5 -> 1, then TC > 0.5 -> 2, then ET > 0.5 -> 3 (regions_class_order 1, 2, 3), voxel by voxel."""
    out = np.zeros(mean.shape[1:], dtype=np.uint8)
    for idx in np.ndindex(*mean.shape[1:]):
        for channel, label in enumerate((1, 2, 3)):
            if mean[(channel, *idx)] > 0.5:
                out[idx] = label
    return out


# --- averaging on crafted probability files -------------------------------------------------------------------------

def test_average_of_crafted_members_matches_hand_computation(tmp_path: Path):
    rng = np.random.default_rng(0)
    members = [rng.random((3, *SHAPE)).astype(np.float32) for _ in range(3)]
    members[0][:, 0, 0, 0] = [0.9, 0.9, 0.9]  # mean (0.9 + a + b) / 3 decided by hand below
    members[1][:, 0, 0, 0] = [0.6, 0.3, 0.0]
    members[2][:, 0, 0, 0] = [0.3, 0.6, 0.0]
    dirs = [tmp_path / f"m{i}" for i in range(3)]
    for d, p in zip(dirs, members):
        write_member(d, "case_a", p)
    out = tmp_path / "out"
    result = pl.ensemble_case("case_a", dirs, out, label_manager(), writer(), ".nii.gz", save_probabilities=True)

    mean = (members[0] + members[1] + members[2]) / 3
    saved = np.load(out / "probabilities" / "case_a.npz")["probabilities"]
    np.testing.assert_allclose(saved.astype(np.float32), mean, atol=1e-3)  # stored as float16
    seg_image = sitk.ReadImage(str(out / "labels" / "case_a.nii.gz"))
    seg = sitk.GetArrayFromImage(seg_image)
    np.testing.assert_array_equal(seg, hand_labels(mean))
    assert seg[0, 0, 0] == 2  # WT 0.6 and TC 0.6 above 0.5, ET 0.3 below
    assert seg_image.GetSpacing() == SPACING
    assert result.status == pl.STATUS_OK and result.foreground_voxels == int((seg > 0).sum())
    assert result.region_voxels == {"WT": int((seg > 0).sum()), "TC": int((seg >= 2).sum()),
                                    "ET": int((seg == 3).sum())}
    assert set(np.unique(seg).tolist()) <= {0, 1, 2, 3}


def test_empty_and_unusable_cases_are_reported(tmp_path: Path):
    zeros = np.zeros((3, *SHAPE), dtype=np.float32)
    a, b = tmp_path / "a", tmp_path / "b"
    write_member(a, "empty", zeros)
    write_member(b, "empty", zeros + 0.4)
    out = tmp_path / "out"
    lm, w = label_manager(), writer()
    empty = pl.ensemble_case("empty", [a, b], out, lm, w, ".nii.gz")
    assert empty.status == pl.STATUS_EMPTY and empty.foreground_voxels == 0
    assert (out / "labels" / "empty.nii.gz").is_file()

    write_member(a, "shape", zeros)
    write_member(b, "shape", np.zeros((3, 4, 5, 7), dtype=np.float32))
    bad = pl.ensemble_case("shape", [a, b], out, lm, w, ".nii.gz")
    assert bad.status == pl.STATUS_UNUSABLE and "shape" in bad.message
    assert not (out / "labels" / "shape.nii.gz").exists()

    write_member(a, "missing", zeros + 0.9)
    missing = pl.ensemble_case("missing", [a, b], out, lm, w, ".nii.gz")
    assert missing.status == pl.STATUS_UNUSABLE and "missing" in missing.message

    nan = zeros.copy()
    nan[0, 0, 0, 0] = np.nan
    write_member(a, "nan", nan)
    write_member(b, "nan", zeros)
    assert pl.ensemble_case("nan", [a, b], out, lm, w, ".nii.gz").status == pl.STATUS_UNUSABLE

    few = zeros + 0.0
    few[:, 0, 0, 0] = 1.0
    write_member(a, "few", few)
    write_member(b, "few", few)
    assert pl.ensemble_case("few", [a, b], out, lm, w, ".nii.gz", min_foreground_voxels=2).status == pl.STATUS_EMPTY


# --- parts ------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("num_parts", [1, 2, 3, 7])
def test_parts_cover_every_case_exactly_once(num_parts: int):
    cases = [f"case_{i:02d}" for i in (5, 1, 4, 0, 3, 2)]
    parts = [pl.split_cases(cases, num_parts, k) for k in range(num_parts)]
    flat = [c for part in parts for c in part]
    assert sorted(flat) == sorted(cases) and len(flat) == len(set(flat))


def test_invalid_part_ids():
    with pytest.raises(ConfigurationError, match="part_id"):
        pl.split_cases(["a"], 2, 2)
    with pytest.raises(ConfigurationError, match="num_parts"):
        pl.split_cases(["a"], 0, 0)


def _part(num_parts: int, part_id: int, cases: dict[str, str], all_cases: list[str], out: Path | None = None,
          **changes) -> dict:
    """A part report as run_pseudolabel writes it; with ``out``, the labels it describes are written too."""
    infos = {}
    for c, s in cases.items():
        sha = ""
        if out is not None and s != pl.STATUS_UNUSABLE:
            (out / "labels").mkdir(parents=True, exist_ok=True)
            label = out / "labels" / f"{c}.nii.gz"
            label.write_bytes(f"label of {c}".encode())
            sha = pl.file_sha256(label)
        infos[c] = {"status": s, "foreground_voxels": 0, "region_voxels": {}, "message": "", "label_sha256": sha}
    report = {"format": pl.REPORT_FORMAT, "images": "/x", "file_ending": ".nii.gz",
              "members": [{"model_folder": "/m", "fold": "0"}],
              "models": [{"model_folder": "/m", "folds": ["0"]}], "folds": ["0"], "all_cases": all_cases,
              "num_parts": num_parts, "part_id": part_id, "save_probabilities": False, "min_foreground_voxels": 1,
              "checkpoint": "checkpoint_final.pth", "use_mirroring": True, "tile_step_size": 0.5, "cases": infos}
    report.update(changes)
    return report


def test_merge_parts_checks_completeness(tmp_path: Path):
    all_cases = ["a", "b", "c"]
    parts = tmp_path / "parts"
    parts.mkdir()
    (parts / "part_0_of_2.json").write_text(json.dumps(_part(2, 0, {"a": "ok", "c": "empty"}, all_cases, tmp_path)))
    with pytest.raises(InputDataError, match=r"parts \[1\]"):
        pl.merge_parts(tmp_path)
    (parts / "part_1_of_2.json").write_text(json.dumps(_part(2, 1, {"b": "ok", "c": "ok"}, all_cases, tmp_path)))
    with pytest.raises(InputDataError, match="case c appears in parts 0 and 1"):
        pl.merge_parts(tmp_path)
    (parts / "part_0_of_2.json").write_text(json.dumps(_part(2, 0, {"a": "ok", "c": "empty"}, all_cases, tmp_path)))
    (parts / "part_1_of_2.json").write_text(json.dumps(_part(2, 1, {"b": "ok"}, all_cases, tmp_path)))
    merged = pl.merge_parts(tmp_path)
    assert merged["ok"] == ["a", "b"] and merged["rejected"] == {"c": "empty"}
    assert merged["cases"]["b"]["part"] == 1
    assert pl.load_report(tmp_path) == merged
    assert main(["pseudolabel", "--merge", "-o", str(tmp_path)]) == 0


def test_parse_model_spec_and_cli_errors(tmp_path: Path, capsys):
    assert pl.parse_model_spec("/r/Trainer__P__3d:0,1") == (Path("/r/Trainer__P__3d"), ["0", "1"])
    assert pl.parse_model_spec("/r/Trainer__P__3d:all") == (Path("/r/Trainer__P__3d"), ["all"])
    assert pl.parse_model_spec("/r/Trainer__P__3d") == (Path("/r/Trainer__P__3d"), None)
    assert pl.parse_model_spec("/r:x/model") == (Path("/r:x/model"), None)
    code = main(["pseudolabel", "-i", str(tmp_path), "-o", str(tmp_path / "o"), "--models", str(tmp_path / "nope")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("nnunet-kd pseudolabel: error:") and "nope" in err[0]
    assert main(["pseudolabel", "--merge", "-o", str(tmp_path / "none")]) == 2


def test_list_cases_requires_every_channel(tmp_path: Path):
    for name in ("c1_0000.nii.gz", "c1_0001.nii.gz", "c2_0000.nii.gz"):
        (tmp_path / name).write_bytes(b"")
    with pytest.raises(InputDataError, match="case c2"):
        pl.list_cases(tmp_path, ".nii.gz", 2)
    (tmp_path / "c2_0001.nii.gz").write_bytes(b"")
    assert list(pl.list_cases(tmp_path, ".nii.gz", 2)) == ["c1", "c2"]


# --- members, runs and inputs (CLI refusals: exit 2, one line, nothing written) -------------------------------------

MODEL_NAME = "nnUNetTrainerUNet__nnUNetPlans__3d_fullres"


def fake_model(root: Path, folds=("0",), dataset_json: dict | None = None, name: str = MODEL_NAME) -> Path:
    """A model folder as resolve_members sees it (files present; the checkpoint is never loaded here)."""
    from nnunet_kd.brats import make_dataset_json

    folder = root / "Dataset517_X" / name
    for fold in folds:
        (folder / f"fold_{fold}").mkdir(parents=True)
        (folder / f"fold_{fold}" / "checkpoint_final.pth").write_bytes(b"never loaded")
    (folder / "dataset.json").write_text(json.dumps(dataset_json or make_dataset_json(1, "X")))
    (folder / "plans.json").write_text("{}")
    return folder


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "nnunet-kd"), *args], capture_output=True, text=True, timeout=120)


def assert_one_line_refusal(proc: subprocess.CompletedProcess, *words: str) -> str:
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert lines[0].startswith("nnunet-kd pseudolabel: error:")
    for word in words:
        assert word in lines[0], (word, lines[0])
    return lines[0]


def test_same_named_models_get_their_own_member_folders(tmp_path: Path):
    a, b = fake_model(tmp_path / "results_a"), fake_model(tmp_path / "results_b")
    assert a.name == b.name  # same trainer/plans/configuration in two results roots
    members = pl.resolve_members([(a, ["0"]), (b, ["0"])])
    assert len({m.tag for m in members}) == 2 and all(m.tag.startswith(MODEL_NAME) for m in members)
    assert [[m.model_folder for m in g] for g in pl.group_by_model(members)] == [[a], [b]]


def test_the_same_model_twice_is_refused(tmp_path: Path):
    a = fake_model(tmp_path / "results", folds=("0", "1"))
    link = tmp_path / "link"
    link.symlink_to(a)
    for specs in ([(a, ["0"]), (a, ["1"])], [(a, None), (link, None)]):
        with pytest.raises(ConfigurationError, match="given twice"):
            pl.resolve_members(specs)
    images = tmp_path / "images"
    images.mkdir()
    out = tmp_path / "out"
    proc = run_cli("pseudolabel", "-i", str(images), "-o", str(out), "--models", f"{a}:0", str(link), "-device",
                   "cpu")
    assert_one_line_refusal(proc, "given twice")
    assert not out.exists()


def test_members_are_averaged_per_model_then_across_models(tmp_path: Path):
    """Model A with two folds (0.9 everywhere) and model B with one (0.0): the mean is 0.45, not 0.6."""
    ones = np.ones((3, *SHAPE), dtype=np.float32)
    a0, a1, b0 = tmp_path / "a0", tmp_path / "a1", tmp_path / "b0"
    write_member(a0, "c", 0.9 * ones)
    write_member(a1, "c", 0.9 * ones)
    write_member(b0, "c", 0.0 * ones)
    out = tmp_path / "out"
    result = pl.ensemble_case("c", [[a0, a1], [b0]], out, label_manager(), writer(), ".nii.gz",
                              save_probabilities=True)
    saved = np.load(out / "probabilities" / "c.npz")["probabilities"].astype(np.float32)
    np.testing.assert_allclose(saved, 0.45 * ones, atol=1e-3)  # ((0.9 + 0.9) / 2 + 0.0) / 2
    assert result.status == pl.STATUS_EMPTY  # 0.45 < 0.5 everywhere; pooling the three files would give 0.6
    assert not sitk.GetArrayFromImage(sitk.ReadImage(str(out / "labels" / "c.nii.gz"))).any()


def test_inputs_are_checked_against_every_model_before_predicting(tmp_path: Path):
    """A T1ce + FLAIR student (files _0001, _0003) given T1 + T1ce (_0000, _0001): the right count, refused."""
    from nnunet_kd.brats import make_dataset_json

    student_json = make_dataset_json(1, "X")
    student_json["channel_names"] = {"0": "T1ce", "1": "FLAIR"}
    student_json["nnunet_kd"] = {"student": {"file_suffixes": ["_0001", "_0003"], "channel_names": ["T1ce", "FLAIR"]}}
    model = fake_model(tmp_path / "results", dataset_json=student_json)
    images = tmp_path / "images"
    images.mkdir()
    for name in ("wrong_0000.nii.gz", "wrong_0001.nii.gz", "right_0001.nii.gz", "right_0003.nii.gz"):
        (images / name).write_bytes(b"")
    out = tmp_path / "out"
    proc = run_cli("pseudolabel", "-i", str(images), "-o", str(out), "--models", f"{model}:0", "-device", "cpu")
    line = assert_one_line_refusal(proc, "case wrong", "_0003", str(model))
    assert "case right" not in line
    assert not out.exists()


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def _run_settings(**changes) -> dict:
    run = _part(1, 0, {}, [])
    del run["part_id"], run["cases"]
    run.update(changes)
    return run


def test_a_new_run_owns_the_reports_and_cleans_temp_files_of_killed_runs(tmp_path: Path):
    import os

    out = tmp_path / "out"
    (out / "parts").mkdir(parents=True)
    (out / "labels").mkdir()
    (out / pl.REPORT_NAME).write_text("{}")
    for k in (0, 1):
        (out / "parts" / f"part_{k}_of_2.json").write_text(json.dumps(_part(2, k, {}, [])))
    dead = out / "labels" / f".tmp-{_dead_pid()}-case.nii.gz"
    live = out / "labels" / f".tmp-{os.getpid()}-other.nii.gz"
    dead.write_bytes(b"half")
    live.write_bytes(b"busy")

    # a multi-part run next to reports of a run with other settings: refused before anything changes
    with pytest.raises(ConfigurationError, match="another pseudolabel run .*num_parts.*remove"):
        pl.prepare_output(out, _run_settings(num_parts=3), 0)
    with pytest.raises(ConfigurationError, match="models/folds"):
        pl.prepare_output(out, _run_settings(num_parts=2, members=[{"model_folder": "/n", "fold": "0"}]), 0)
    assert (out / pl.REPORT_NAME).exists() and dead.exists()
    # part 1 of the same run: its own report and the merged report go, the other part stays
    pl.prepare_output(out, _run_settings(num_parts=2), 1)
    assert not (out / pl.REPORT_NAME).exists() and not dead.exists() and live.exists()
    assert sorted(p.name for p in (out / "parts").iterdir()) == ["part_0_of_2.json"]
    # a single-part run owns every report
    pl.prepare_output(out, _run_settings(num_parts=1), 0)
    assert not list((out / "parts").iterdir())


def test_merge_refuses_parts_of_different_runs(tmp_path: Path):
    parts = tmp_path / "parts"
    parts.mkdir()
    all_cases = ["a", "b"]
    (parts / "part_0_of_2.json").write_text(json.dumps(_part(2, 0, {"a": "ok"}, all_cases, tmp_path)))
    for changes, word in (({"min_foreground_voxels": 5}, "min_foreground_voxels"),
                          ({"members": [{"model_folder": "/m", "fold": "1"}]}, "models/folds")):
        (parts / "part_1_of_2.json").write_text(json.dumps(_part(2, 1, {"b": "ok"}, all_cases, tmp_path, **changes)))
        with pytest.raises(InputDataError, match=f"different pseudolabel runs .*{word}"):
            pl.merge_parts(tmp_path)
    proc = run_cli("pseudolabel", "--merge", "-o", str(tmp_path))
    assert_one_line_refusal(proc, "remove the part reports")
    assert not (tmp_path / pl.REPORT_NAME).exists()

    (parts / "part_1_of_2.json").write_text(json.dumps(_part(2, 1, {"b": "ok"}, all_cases, tmp_path)))
    (tmp_path / "labels" / "b.nii.gz").write_bytes(b"rewritten by another run")
    with pytest.raises(InputDataError, match="case b: label .* changed after part 1"):
        pl.merge_parts(tmp_path)
    (parts / "part_1_of_2.json").write_text(json.dumps(_part(2, 1, {"b": "ok"}, all_cases, tmp_path)))
    assert pl.merge_parts(tmp_path)["ok"] == ["a", "b"]


# --- the real thing: nnU-Net models trained in this session -----------------------------------------------------------



@pytest.mark.slow
def test_pseudolabel_two_parts_with_real_models(nnunet_env: NnunetEnv, tmp_path: Path):
    models = [nnunet_env.ensure_trained(t) for t in ("nnUNetTrainerUNet_smoke", "nnUNetTrainerCascadedUNet_smoke")]
    images = nnunet_env.dataset_raw / "imagesTs"
    cases = sorted(p.name[: -len("_0000.nii.gz")] for p in images.glob("*_0000.nii.gz"))
    assert len(cases) >= 2
    out = tmp_path / "pseudo"
    for part in (0, 1):
        nnunet_env.run(str(BIN / "nnunet-kd"), "pseudolabel", "-i", str(images), "-o", str(out), "--models",
                       f"{models[0]}:0", str(models[1]), "-num_parts", "2", "-part_id", str(part), "-device", "cpu",
                       "--keep-member-predictions", "--save-probabilities", "--no-progress")
    assert not (out / pl.REPORT_NAME).exists()  # not merged until asked
    proc = nnunet_env.run(str(BIN / "nnunet-kd"), "pseudolabel", "--merge", "-o", str(out))
    assert "merged 2 part(s)" in proc.stdout
    merged = json.loads((out / pl.REPORT_NAME).read_text())
    parts = [json.loads((out / "parts" / f"part_{k}_of_2.json").read_text()) for k in (0, 1)]
    assert sorted(c for p in parts for c in p["cases"]) == cases  # every case exactly once
    assert sorted(merged["cases"]) == cases and len(merged["members"]) == 2

    for case in cases:
        member_files = [out / "members" / pl.EnsembleMember(m.resolve(), "0").tag / f"{case}.npz" for m in models]
        mean = np.mean([np.load(f)["probabilities"].astype(np.float32) for f in member_files], axis=0)
        saved = np.load(out / "probabilities" / f"{case}.npz")["probabilities"].astype(np.float32)
        np.testing.assert_allclose(saved, mean, atol=1e-3)
        label = sitk.ReadImage(str(out / "labels" / f"{case}.nii.gz"))
        image = sitk.ReadImage(str(images / f"{case}_0000.nii.gz"))
        assert label.GetSize() == image.GetSize() and label.GetSpacing() == pytest.approx(image.GetSpacing())
        seg = sitk.GetArrayFromImage(label)
        assert set(np.unique(seg).tolist()) <= {0, 1, 2, 3}
        expected = np.zeros(seg.shape, dtype=np.uint8)
        for channel, value in enumerate((1, 2, 3)):
            expected[mean[channel] > 0.5] = value
        np.testing.assert_array_equal(seg, expected)
        status = merged["cases"][case]["status"]
        assert status == (pl.STATUS_OK if (seg > 0).any() else pl.STATUS_EMPTY)


@pytest.mark.slow
def test_same_named_models_in_two_results_roots_both_count(nnunet_env: NnunetEnv, tmp_path: Path):
    """The cascaded U-Net copied under the U-Net's folder name in another results root: two distinct members whose
    mean is the label; a rerun with one model replaces the report instead of keeping the stale one."""
    unet, cascaded = (nnunet_env.ensure_trained(t) for t in ("nnUNetTrainerUNet_smoke",
                                                               "nnUNetTrainerCascadedUNet_smoke"))
    twin = tmp_path / "other_results" / nnunet_env.dataset_name / unet.name
    twin.parent.mkdir(parents=True)
    shutil.copytree(cascaded, twin)
    images = nnunet_env.dataset_raw / "imagesTs"
    out = tmp_path / "pseudo"
    nnunet_env.run(str(BIN / "nnunet-kd"), "pseudolabel", "-i", str(images), "-o", str(out), "--models",
                   str(unet), str(twin), "--fold", "0", "-device", "cpu", "--keep-member-predictions",
                   "--save-probabilities", "--disable-tta", "--no-progress")
    member_dirs = sorted((out / "members").iterdir())
    assert len(member_dirs) == 2 and all(d.name.startswith(unet.name) for d in member_dirs)
    report = json.loads((out / pl.REPORT_NAME).read_text())
    assert report["folds"] == ["0"] and len(report["models"]) == 2
    for case in report["cases"]:
        members = [np.load(d / f"{case}.npz")["probabilities"].astype(np.float32) for d in member_dirs]
        assert not np.allclose(members[0], members[1])  # two different networks, not one counted twice
        saved = np.load(out / "probabilities" / f"{case}.npz")["probabilities"].astype(np.float32)
        np.testing.assert_allclose(saved, (members[0] + members[1]) / 2, atol=1e-3)

    nnunet_env.run(str(BIN / "nnunet-kd"), "pseudolabel", "-i", str(images), "-o", str(out), "--models",
                   f"{unet}:0", "-device", "cpu", "--disable-tta", "--no-progress")
    rerun = json.loads((out / pl.REPORT_NAME).read_text())
    assert [m["model_folder"] for m in rerun["models"]] == [str(unet.resolve())]
    assert sorted(p.name for p in (out / "parts").iterdir()) == ["part_0_of_1.json"]


def test_subprocess_console_script_help():
    proc = subprocess.run([str(BIN / "nnunet-kd"), "pseudolabel", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and "-num_parts" in proc.stdout and "--merge" in proc.stdout
