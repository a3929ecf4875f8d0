"""export-subset (stock nnUNetv2_predict with only the kept files) and evaluate-subsets (the 15-subset table)."""

from __future__ import annotations

import csv
import errno
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from torch import nn

from conftest import BIN, NnunetEnv
from nnunet_kd.brats import make_dataset_json
from nnunet_kd.cli import main
from nnunet_kd.errors import ConfigurationError
from nnunet_kd.subsets.export import (
    ZeroFillRecord,
    attach_zero_fill,
    export_subset,
    subset_model_files,
    zero_fill_record,
)
from nnunet_kd.subsets.modalities import WrongInputChannelsError, attach_input_channel_check
from nnunet_kd.subsets.table import mean_row, subset_row, table_csv, table_markdown

ANY_SUBSET = "nnUNetTrainerBarlowKD_AnySubset_smoke"
EXPORTED = f"{ANY_SUBSET}_keep_T2_FLAIR"


# --------------------------------------------------------------------------------------------- zero filling


def test_zero_fill_feeds_kept_channels_at_their_positions():
    torch.manual_seed(0)
    conv = nn.Conv3d(4, 2, 1)
    reference = {k: v.clone() for k, v in conv.state_dict().items()}
    x = torch.randn(2, 2, 3, 3, 3)
    full = torch.zeros(2, 4, 3, 3, 3)
    full[:, [2, 3]] = x
    expected = conv(full)
    attach_input_channel_check(conv, 4)  # the KD trainer's own check must still see 4 channels
    attach_zero_fill(conv, ZeroFillRecord(("T1", "T1ce", "T2", "FLAIR"), (2, 3)))
    assert torch.allclose(conv(x), expected)
    assert conv.state_dict().keys() == reference.keys()
    with pytest.raises(WrongInputChannelsError, match=r"expects 2 input file\(s\) per case: T2 \(_0002\), FLAIR "
                                                      r"\(_0003\); the case had 4.*--keep T2,FLAIR"):
        conv(torch.randn(1, 4, 3, 3, 3))
    with pytest.raises(WrongInputChannelsError, match="the case had 1"):
        conv(torch.randn(1, 1, 3, 3, 3))


# --------------------------------------------------------------------------------------------- fake model folder


def fake_plans() -> dict:
    props = {str(i): {"mean": float(i), "std": 1.0} for i in range(4)}
    return {"plans_name": "nnUNetPlans", "foreground_intensity_properties_per_channel": props,
            "configurations": {"3d_fullres": {"normalization_schemes": ["ZScore", "ZScore", "CT", "ZScore"],
                                              "use_mask_for_norm": [True, False, True, False]}}}


def fake_any_subset_folder(root: Path, any_subset: bool = True) -> Path:
    folder = root / f"{ANY_SUBSET}__nnUNetPlans__3d_fullres"
    (folder / "fold_0").mkdir(parents=True)
    dataset_json = make_dataset_json(8, "Fake")
    if any_subset:
        dataset_json["nnunet_kd"] = {"any_subset": {"subsets": ["T1"], "probabilities": [1.0]}}
    (folder / "dataset.json").write_text(json.dumps(dataset_json))
    (folder / "plans.json").write_text(json.dumps(fake_plans()))
    (folder / "dataset_fingerprint.json").write_text("{}")
    checkpoint = {"network_weights": {"w": torch.ones(2, 4)}, "trainer_name": ANY_SUBSET, "current_epoch": 2,
                  "init_args": {"plans": fake_plans(), "configuration": "3d_fullres", "fold": 0,
                                "dataset_json": dataset_json, "device": torch.device("cpu")},
                  "inference_allowed_mirroring_axes": (0, 1, 2), "optimizer_state": {"big": 1},
                  "nnunet_kd": {"kd_modules": {"teacher.w": torch.ones(1)}}}
    torch.save(checkpoint, folder / "fold_0" / "checkpoint_final.pth")
    return folder


def test_subset_model_files_reduce_channels_and_record_the_zero_fill(tmp_path: Path):
    folder = fake_any_subset_folder(tmp_path)
    dataset_json = json.loads((folder / "dataset.json").read_text())
    reduced_json, reduced_plans, record = subset_model_files(dataset_json, fake_plans(), "flair,t2")
    assert reduced_json["channel_names"] == {"0": "T2", "1": "FLAIR"}
    assert reduced_json["nnunet_kd"]["student"]["file_suffixes"] == ["_0002", "_0003"]
    assert record == zero_fill_record(reduced_plans) == zero_fill_record(reduced_json)
    assert record.kept_indices == (2, 3) and record.num_model_channels == 4
    config = reduced_plans["configurations"]["3d_fullres"]
    assert config["normalization_schemes"][:2] == ["CT", "ZScore"]  # kept channels first, in order
    assert config["use_mask_for_norm"][:2] == [True, False]
    assert reduced_plans["foreground_intensity_properties_per_channel"]["0"]["mean"] == 2.0
    assert zero_fill_record(fake_plans()) is None


@pytest.mark.parametrize("keep, message", [("", "empty modality subset"), ("T2,T5", "unknown modality 'T5'")])
def test_bad_subsets_are_clear_errors(tmp_path: Path, keep: str, message: str, capsys):
    folder = fake_any_subset_folder(tmp_path)
    with pytest.raises(ConfigurationError, match=message):
        export_subset(folder, keep)
    assert main(["export-subset", str(folder), "--keep", keep]) == 2
    err = capsys.readouterr().err
    assert err.startswith("nnunet-kd export-subset: error:") and message in err and len(err.splitlines()) == 1
    assert [p.name for p in tmp_path.iterdir()] == [folder.name]  # nothing written


def test_subset_never_drawn_in_training_gives_a_warning():
    dataset_json = make_dataset_json(8, "Fake")
    dataset_json["nnunet_kd"] = {"any_subset": {"subsets": ["T2+FLAIR", "FLAIR"], "probabilities": [0.0, 1.0]}}
    with pytest.warns(UserWarning, match="T2\\+FLAIR was never drawn in training"):
        subset_model_files(dataset_json, fake_plans(), "T2,FLAIR")


def test_export_refuses_models_not_trained_on_random_subsets(tmp_path: Path):
    folder = fake_any_subset_folder(tmp_path, any_subset=False)
    with pytest.raises(ConfigurationError, match="not trained with random modality subsets"):
        export_subset(folder, "T2,FLAIR")


def test_export_writes_a_reduced_model_folder(tmp_path: Path, capsys):
    folder = fake_any_subset_folder(tmp_path)
    assert main(["export-subset", str(folder), "--keep", "T2+FLAIR"]) == 0
    out = tmp_path / f"{EXPORTED}__nnUNetPlans__3d_fullres"
    assert str(out) in capsys.readouterr().out
    assert json.loads((out / "dataset.json").read_text())["channel_names"] == {"0": "T2", "1": "FLAIR"}
    assert zero_fill_record(json.loads((out / "plans.json").read_text())).kept_indices == (2, 3)
    assert (out / "dataset_fingerprint.json").is_file()
    ckpt = torch.load(out / "fold_0" / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert torch.equal(ckpt["network_weights"]["w"], torch.ones(2, 4))
    assert ckpt["trainer_name"] == ANY_SUBSET and ckpt["inference_allowed_mirroring_axes"] == (0, 1, 2)
    assert "nnunet_kd" not in ckpt and "optimizer_state" not in ckpt
    assert ckpt["init_args"]["dataset_json"]["channel_names"] == {"0": "T2", "1": "FLAIR"}
    with pytest.raises(ConfigurationError, match="--overwrite"):
        export_subset(folder, "T2,FLAIR")
    assert export_subset(folder, "T2,FLAIR", overwrite=True) == out
    assert not list(tmp_path.glob(".*tmp*"))


# --------------------------------------------------------------------------------------------- table


def fake_summary(dice: float, hd95: float, n: int = 3) -> dict:
    return {"num_cases": n, "metrics": {r: {"dice": {"mean": dice}, "hd95": {"mean": hd95}} for r in ("WT", "TC", "ET")}}


def test_table_rows_mean_and_published_reference():
    rows = [subset_row(("T2", "FLAIR"), fake_summary(0.8, 4.0)), subset_row(("T1ce",), fake_summary(0.6, 10.0))]
    mean = mean_row(rows)
    assert mean["WT_dice"] == pytest.approx(0.7) and mean["ET_hd95"] == pytest.approx(7.0)
    md = table_markdown(rows, published=True)
    assert "| ○ | ○ | ● | ● | T2+FLAIR | 80.00 | 80.00 | 80.00 | 4.00 | 4.00 | 4.00 |" in md
    assert "**Mean (2 subsets)** | 70.00" in md
    assert "DeMoSeg (Yang et al., 2024): published mean, BraTS 2020 | 88.90 | 81.58 | 69.71 | – | – | – |" in md
    parsed = list(csv.DictReader(table_csv(rows).splitlines()))
    assert [r["subset"] for r in parsed] == ["T2+FLAIR", "T1ce", "Mean"]
    assert parsed[0]["T2"] == "1" and parsed[0]["T1"] == "0" and float(parsed[2]["TC_dice"]) == pytest.approx(0.7)


# --------------------------------------------------------------------------------------------- through nnU-Net


def copy_channels(source: Path, dest: Path, cases: list[str], suffixes: tuple[str, ...]) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    for case in cases:
        for s in suffixes:
            shutil.copy(source / f"{case}{s}.nii.gz", dest)


def predict(env: NnunetEnv, images: Path, out: Path, trainer: str, check: bool = True):
    return env.run(str(BIN / "nnUNetv2_predict"), "-i", str(images), "-o", str(out), "-d", str(env.dataset_id),
                   "-c", "3d_fullres", "-f", "0", "-tr", trainer, "-device", "cpu", "-npp", "1", "-nps", "1",
                   check=check)


@pytest.fixture(scope="module")
def any_subset_model(nnunet_env: NnunetEnv) -> Path:
    folder = nnunet_env.model_folder(ANY_SUBSET)
    if not (folder / "fold_0" / "checkpoint_final.pth").is_file():  # test_any_subset may have trained it already
        nnunet_env.run(str(BIN / "nnUNetv2_train"), str(nnunet_env.dataset_id), "3d_fullres", "0", "-tr", ANY_SUBSET,
                       "-device", "cpu")
    return folder


@pytest.fixture(scope="module")
def exported(nnunet_env: NnunetEnv, any_subset_model: Path) -> Path:
    proc = nnunet_env.run(str(BIN / "nnunet-kd"), "export-subset", str(any_subset_model), "--keep", "T2,FLAIR",
                          "--overwrite")
    out = nnunet_env.model_folder(EXPORTED)
    assert str(out) in proc.stdout and "T2 (_0002), FLAIR (_0003)" in proc.stdout
    return out


@pytest.fixture(scope="module")
def two_cases(nnunet_env: NnunetEnv, tmp_path_factory) -> tuple[Path, Path, list[str]]:
    """Two labelled cases with all four files, and their label maps."""
    root = tmp_path_factory.mktemp("two_cases")
    source = nnunet_env.dataset_raw
    cases = sorted(p.name[: -len(".nii.gz")] for p in (source / "labelsTr").glob("*.nii.gz"))[:2]
    copy_channels(source / "imagesTr", root / "images", cases, ("_0000", "_0001", "_0002", "_0003"))
    (root / "labels").mkdir()
    for case in cases:
        shutil.copy(source / "labelsTr" / f"{case}.nii.gz", root / "labels")
    return root / "images", root / "labels", cases


@pytest.fixture(scope="module")
def stock_t2_flair(nnunet_env: NnunetEnv, exported: Path, two_cases, tmp_path_factory) -> tuple[Path, Path]:
    """Stock nnUNetv2_predict of the exported T2+FLAIR model on the two cases, given only _0002 and _0003."""
    images_all, _, cases = two_cases
    root = tmp_path_factory.mktemp("stock_t2_flair")
    copy_channels(images_all, root / "images", cases, ("_0002", "_0003"))
    predict(nnunet_env, root / "images", root / "pred", EXPORTED)
    return root / "images", root / "pred"


@pytest.mark.slow
def test_stock_predict_with_t2_and_flair_only(stock_t2_flair, two_cases):
    images, out = stock_t2_flair
    for case in two_cases[2]:
        pred = sitk.ReadImage(str(out / f"{case}.nii.gz"))
        ref = sitk.ReadImage(str(images / f"{case}_0002.nii.gz"))
        assert pred.GetSize() == ref.GetSize()
        assert np.allclose(pred.GetSpacing(), ref.GetSpacing()) and np.allclose(pred.GetOrigin(), ref.GetOrigin())
        assert set(np.unique(sitk.GetArrayFromImage(pred))) <= {0, 1, 2, 3}


@pytest.mark.slow
def test_stock_predict_with_wrong_files_is_a_clear_error(nnunet_env: NnunetEnv, exported: Path, two_cases,
                                                         tmp_path: Path):
    images_all, _, cases = two_cases
    copy_channels(images_all, tmp_path / "images", cases[:1], ("_0000", "_0001", "_0002", "_0003"))
    proc = predict(nnunet_env, tmp_path / "images", tmp_path / "pred", EXPORTED, check=False)
    assert proc.returncode != 0
    assert "expects 2 input file(s) per case: T2 (_0002), FLAIR (_0003); the case had 4" in proc.stderr
    assert "IndexError" not in proc.stderr


@pytest.mark.slow
def test_evaluate_subsets_writes_table_and_reuses_finished_subsets(any_subset_model: Path, stock_t2_flair, two_cases,
                                                                   tmp_path: Path, capsys, monkeypatch):
    images, labels, cases = two_cases
    out = tmp_path / "subsets_eval"
    argv = ["evaluate-subsets", str(any_subset_model), str(images), str(labels), "-o", str(out),
            "--subsets", "T2,FLAIR", "T1ce", "-device", "cpu", "-npp", "0", "-nps", "0", "--published"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "0 reused" in printed
    md = (out / "subset_table.md").read_text()
    assert "| ○ | ● | ○ | ○ | T1ce |" in md and "| ○ | ○ | ● | ● | T2+FLAIR |" in md
    assert md.index("| T1ce |") < md.index("| T2+FLAIR |")  # table order: singles first
    assert "**Mean (2 subsets)**" in md and "DeMoSeg" in md
    rows = list(csv.DictReader((out / "subset_table.csv").read_text().splitlines()))
    assert [r["subset"] for r in rows] == ["T1ce", "T2+FLAIR", "Mean"]
    assert all(r["n_cases"] == "2" for r in rows)
    # WT Dice of each subset recomputed from the written predictions and references with plain numpy
    # (WT = any tumour label; Dice 1 when both masks are empty); the mean row is the mean over subsets
    for r in rows[:-1]:
        expected = np.mean([_wt_dice(out / "subsets" / r["subset"] / "predictions" / f"{case}.nii.gz",
                                     labels / f"{case}.nii.gz") for case in cases])
        assert float(r["WT_dice"]) == pytest.approx(expected, abs=1e-9), r["subset"]
    assert float(rows[-1]["WT_dice"]) == pytest.approx(np.mean([float(r["WT_dice"]) for r in rows[:-1]]))
    assert (out / "subset_heatmap.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((out / "subsets" / "T1ce" / "evaluation" / "summary.json").read_text())["num_cases"] == 2

    # the same predictions as stock nnUNetv2_predict on the exported T2+FLAIR model with only those files
    _, stock_out = stock_t2_flair
    for case in cases:
        ours = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "subsets" / "T2+FLAIR" / "predictions" /
                                                         f"{case}.nii.gz")))
        stock = sitk.GetArrayFromImage(sitk.ReadImage(str(stock_out / f"{case}.nii.gz")))
        assert np.array_equal(ours, stock)

    # a re-run predicts nothing: finished subsets come from the cache
    marker = out / "subsets" / "T1ce" / "predictions" / "subset_prediction.json"
    before = marker.stat().st_mtime_ns
    import nnunet_kd.subsets.evaluation as subset_evaluation

    def no_prediction(*args, **kwargs):
        raise AssertionError("a finished subset was predicted again")

    monkeypatch.setattr(subset_evaluation, "_predict_subset", no_prediction)
    assert main(argv) == 0
    assert "2 subset(s) (2 reused" in capsys.readouterr().out
    assert marker.stat().st_mtime_ns == before


def _wt_dice(pred_file: Path, gt_file: Path) -> float:
    pred = sitk.GetArrayFromImage(sitk.ReadImage(str(pred_file))) > 0
    gt = sitk.GetArrayFromImage(sitk.ReadImage(str(gt_file))) > 0
    total = int(pred.sum()) + int(gt.sum())
    return 1.0 if total == 0 else 2.0 * int((pred & gt).sum()) / total


def test_overwrite_keeps_the_old_folder_until_the_new_one_is_in_place(tmp_path: Path, monkeypatch, capsys):
    folder = fake_any_subset_folder(tmp_path)
    assert main(["export-subset", str(folder), "--keep", "T2+FLAIR"]) == 0
    out = tmp_path / f"{EXPORTED}__nnUNetPlans__3d_fullres"
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    real_replace = os.replace

    def failing_replace(src, dst):  # the new folder is complete, but moving it into place fails
        if Path(src).name.startswith(f".{out.name}.nnunet-kd-tmp-"):
            raise OSError(errno.EIO, "Input/output error", str(dst))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", failing_replace)
    assert main(["export-subset", str(folder), "--keep", "T2+FLAIR", "--overwrite"]) == 1
    assert capsys.readouterr().err.strip().splitlines() == [
        f"nnunet-kd export-subset: error: Input/output error: {out}"]
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([folder.name, out.name])  # no temporary left


def test_evaluate_subsets_names_a_case_with_missing_files(tmp_path: Path, capsys):
    folder = fake_any_subset_folder(tmp_path)
    images, labels = tmp_path / "images", tmp_path / "labels"
    images.mkdir()
    labels.mkdir()
    (labels / "BraTS_001.nii.gz").write_bytes(b"")
    for s in ("_0000", "_0001", "_0003"):
        (images / f"BraTS_001{s}.nii.gz").write_bytes(b"")
    assert main(["evaluate-subsets", str(folder), str(images), str(labels), "-o", str(tmp_path / "out"),
                 "-device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "case BraTS_001: missing _0002 (T2)" in err and str(images) in err
