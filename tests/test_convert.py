"""BraTS -> nnU-Net conversion (nnunet_kd.dataset_conversion.convert and the convert-brats command)."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from brats_release_builders import (
    BUILDERS,
    DIRECTION,
    ORIGIN,
    SPACING,
    canonical_seg,
    code,
    make_2021,
    make_msd,
    release_seg,
    write,
)

from nnunet_kd.brats import MODALITIES, REGIONS_CLASS_ORDER, dataset_json_labels
from nnunet_kd.cli import main
from nnunet_kd.dataset_conversion.convert import convert_brats
from nnunet_kd.errors import ConfigurationError, InputDataError, NnunetKDError


def read(path: Path) -> tuple[np.ndarray, sitk.Image]:
    image = sitk.ReadImage(str(path))
    return sitk.GetArrayFromImage(image), image


def assert_geometry(image: sitk.Image) -> None:
    assert image.GetDimension() == 3
    np.testing.assert_allclose(image.GetSpacing(), SPACING, atol=1e-6)
    np.testing.assert_allclose(image.GetOrigin(), ORIGIN, atol=1e-6)
    np.testing.assert_allclose(image.GetDirection(), DIRECTION, atol=1e-6)


def leftovers(raw: Path) -> list[str]:
    return sorted(p.name for p in raw.iterdir()) if raw.exists() else []


@pytest.mark.parametrize("layout", sorted(BUILDERS))
def test_every_layout_converts_with_channel_order_labels_and_geometry(tmp_path, layout):
    ids = BUILDERS[layout](tmp_path / "src")
    labeled = ids[:2]  # msd: the third case is in imagesTs
    out = convert_brats(tmp_path / "src", 501, name="Test", raw_root=tmp_path / "raw", progress=False)
    assert out == tmp_path / "raw" / "Dataset501_Test"
    assert leftovers(tmp_path / "raw") == ["Dataset501_Test"]
    images = sorted(p.name for p in (out / "imagesTr").iterdir())
    assert images == sorted(f"{c}_{k:04d}.nii.gz" for c in labeled for k in range(4))
    for case_id in ids:
        index = ids.index(case_id)
        folder = out / ("imagesTr" if case_id in labeled else "imagesTs")
        for channel, modality in enumerate(MODALITIES):
            array, image = read(folder / f"{case_id}_{channel:04d}.nii.gz")
            assert np.all(array == code(modality, index)), (case_id, modality)
            assert array.dtype == (np.int16 if layout == "2020" else np.float32)  # values and type kept
            assert_geometry(image)
    for case_id in labeled:
        seg, image = read(out / "labelsTr" / f"{case_id}.nii.gz")
        assert seg.dtype == np.uint8
        np.testing.assert_array_equal(seg, canonical_seg())
        assert_geometry(image)
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["channel_names"] == {"0": "T1", "1": "T1ce", "2": "T2", "3": "FLAIR"}
    assert meta["labels"] == json.loads(json.dumps(dataset_json_labels()))
    assert meta["regions_class_order"] == list(REGIONS_CLASS_ORDER)
    assert meta["numTraining"] == len(labeled) and meta["file_ending"] == ".nii.gz"
    assert meta["source_layout"] == layout and meta["numTest"] == len(ids) - len(labeled)
    assert (out / "imagesTs").is_dir() == (len(ids) > len(labeled))


def test_msd_channel_order_follows_its_dataset_json(tmp_path):
    order = ("T2", "T1ce", "FLAIR", "T1")
    make_msd(tmp_path / "src", n_train=1, n_test=0, order=order)
    out = convert_brats(tmp_path / "src", 7, raw_root=tmp_path / "raw", progress=False)
    for channel, modality in enumerate(MODALITIES):
        array, _ = read(out / "imagesTr" / f"BRATS_001_{channel:04d}.nii.gz")
        assert np.all(array == code(modality, 0))


def test_cases_without_segmentation_go_to_imagesTs(tmp_path):
    make_2021(tmp_path / "src", n=2, unlabeled=1)
    out = convert_brats(tmp_path / "src", 8, raw_root=tmp_path / "raw", progress=False)
    assert sorted(p.name for p in (out / "imagesTs").iterdir()) == [f"BraTS2021_00002_{k:04d}.nii.gz"
                                                                     for k in range(4)]
    assert sorted(p.name for p in (out / "labelsTr").iterdir()) == ["BraTS2021_00000.nii.gz",
                                                                    "BraTS2021_00001.nii.gz"]
    assert json.loads((out / "dataset.json").read_text())["numTraining"] == 2


def _case(src: Path) -> Path:
    return src / "BraTS2021_00001"


def _corrupt(src: Path, problem: str) -> tuple[str, str]:
    """Damage case BraTS2021_00001 of a 2021 release; return (expected text, expected file name)."""
    case = _case(src)
    t1 = case / "BraTS2021_00001_t1.nii.gz"
    if problem == "missing_modality":
        (case / "BraTS2021_00001_t1ce.nii.gz").unlink()
        return "missing T1ce file", "BraTS2021_00001_t1ce.nii.gz"
    if problem == "unexpected_label":
        seg = release_seg("2021")
        seg[0, 0, 0] = 3  # 3 is no BraTS 2021 label
        write(case / "BraTS2021_00001_seg.nii.gz", seg)
        return "label value(s) [3] not allowed", "BraTS2021_00001_seg.nii.gz"
    if problem == "seg_shape":
        write(case / "BraTS2021_00001_seg.nii.gz", release_seg("2021")[:, :, :7])
        return "shape 10x9x7 differs from 10x9x8", "BraTS2021_00001_seg.nii.gz"
    if problem == "modality_shape":
        write(case / "BraTS2021_00001_flair.nii.gz", np.zeros((10, 8, 8), np.float32))
        return "FLAIR file", "BraTS2021_00001_flair.nii.gz"
    if problem == "modality_spacing":
        write(case / "BraTS2021_00001_t2.nii.gz", np.zeros((10, 9, 8), np.float32), spacing=(1.0, 1.0, 1.0))
        return "spacing (1, 1, 1) differs", "BraTS2021_00001_t2.nii.gz"
    if problem == "garbage":
        t1.write_bytes(b"this is not an image")
        return "cannot read T1 file", t1.name
    if problem == "truncated_gz":
        write(t1, np.random.default_rng(0).random((10, 9, 8)).astype(np.float32))
        data = t1.read_bytes()
        t1.write_bytes(data[: len(data) // 2])
        return "cannot read T1 file", t1.name
    if problem == "truncated_gz_tail":  # SimpleITK reads this one without complaint (see the test below)
        flair = case / "BraTS2021_00001_flair.nii.gz"
        write(flair, np.random.default_rng(0).random((10, 9, 8)).astype(np.float32))
        flair.write_bytes(flair.read_bytes()[:-30])
        return "truncated", flair.name
    if problem == "short_payload_gz":  # a complete gzip stream holding fewer voxel bytes than the header says
        t2 = case / "BraTS2021_00001_t2.nii.gz"
        write(t2, np.ones((10, 9, 8), np.float32))
        t2.write_bytes(gzip.compress(gzip.decompress(t2.read_bytes())[:-40]))
        return "truncated", t2.name
    if problem == "truncated_seg_tail":  # the segmentation is read in one pass too: its stream is checked
        seg = case / "BraTS2021_00001_seg.nii.gz"
        seg.write_bytes(seg.read_bytes()[:-30])
        return "truncated", seg.name
    if problem == "short_payload_seg":
        seg = case / "BraTS2021_00001_seg.nii.gz"
        seg.write_bytes(gzip.compress(gzip.decompress(seg.read_bytes())[:-40]))
        return "truncated", seg.name
    if problem == "truncated_nii":
        t1.unlink()
        nii = case / "BraTS2021_00001_t1.nii"
        write(nii, np.ones((10, 9, 8), np.float32))
        nii.write_bytes(nii.read_bytes()[:-40])
        return "truncated", nii.name
    raise AssertionError(problem)


BAD_INPUTS = ["missing_modality", "unexpected_label", "seg_shape", "modality_shape", "modality_spacing", "garbage",
              "truncated_gz", "truncated_gz_tail", "short_payload_gz", "truncated_seg_tail", "short_payload_seg",
              "truncated_nii"]


@pytest.mark.parametrize("problem", BAD_INPUTS)
def test_bad_input_is_one_clear_line_and_leaves_nothing(tmp_path, problem):
    src, raw = tmp_path / "src", tmp_path / "raw"
    make_2021(src, n=2)
    text, filename = _corrupt(src, problem)
    with pytest.raises(InputDataError) as info:
        convert_brats(src, 9, raw_root=raw, progress=False)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("case BraTS2021_00001: "), message
    assert text in message and filename in message, message
    assert leftovers(raw) == []  # neither Dataset009_* nor the hidden temp folder


def test_images_are_copied_byte_for_byte_also_from_multi_member_gzip(tmp_path):
    src, raw = tmp_path / "src", tmp_path / "raw"
    make_2021(src, n=2)
    flair = _case(src) / "BraTS2021_00001_flair.nii.gz"
    data = gzip.decompress(flair.read_bytes())
    flair.write_bytes(gzip.compress(data[:100]) + gzip.compress(data[100:]))  # two gzip members, as `cat a.gz b.gz`
    out = convert_brats(src, 9, raw_root=raw, progress=False)
    for case in ("BraTS2021_00000", "BraTS2021_00001"):
        for index, modality in enumerate(MODALITIES):
            source = src / case / f"{case}_{modality.lower()}.nii.gz"
            [copied] = out.glob(f"images*/{case}_{index:04d}.nii.gz")
            assert copied.read_bytes() == source.read_bytes(), source


def test_segmentation_is_copied_only_when_its_labels_are_already_canonical_uint8(tmp_path):
    """MSD labels are canonical: a uint8 file is copied as it is, another type is written as uint8 labels; 2021
    labels (ET 4) are mapped and written again."""
    make_msd(tmp_path / "msd", n_train=2, n_test=0)
    labels = tmp_path / "msd" / "Task01_BrainTumour" / "labelsTr"
    write(labels / "BRATS_002.nii.gz", release_seg("msd").astype(np.int16))
    out = convert_brats(tmp_path / "msd", 11, raw_root=tmp_path / "raw", progress=False)
    assert (out / "labelsTr" / "BRATS_001.nii.gz").read_bytes() == (labels / "BRATS_001.nii.gz").read_bytes()
    assert (out / "labelsTr" / "BRATS_002.nii.gz").read_bytes() != (labels / "BRATS_002.nii.gz").read_bytes()
    for case in ("BRATS_001", "BRATS_002"):
        seg, image = read(out / "labelsTr" / f"{case}.nii.gz")
        assert seg.dtype == np.uint8
        np.testing.assert_array_equal(seg, canonical_seg())
        assert_geometry(image)
    make_2021(tmp_path / "src", n=1)
    out = convert_brats(tmp_path / "src", 12, raw_root=tmp_path / "raw", progress=False)
    seg, _ = read(out / "labelsTr" / "BraTS2021_00000.nii.gz")
    np.testing.assert_array_equal(seg, canonical_seg())


def test_rescaled_segmentation_is_read_as_simpleitk_reads_it(tmp_path):
    """A label file storing value + 10 with scl_inter -10 holds the 2021 labels for SimpleITK (and nnU-Net):
    the one-pass reader must not take the stored values for labels."""
    import nibabel as nib

    make_2021(tmp_path / "src", n=1)
    path = tmp_path / "src" / "BraTS2021_00000" / "BraTS2021_00000_seg.nii.gz"
    original = nib.load(str(path))
    stored = np.asarray(original.dataobj).astype(np.int16) + 10
    shifted = nib.Nifti1Image(stored, original.affine, original.header)
    shifted.header.set_data_dtype(np.int16)
    shifted.header.set_slope_inter(1.0, -10.0)
    nib.save(shifted, str(path))
    assert sitk.GetArrayFromImage(sitk.ReadImage(str(path))).max() == 4  # SimpleITK applies scl_inter
    out = convert_brats(tmp_path / "src", 13, raw_root=tmp_path / "raw", progress=False)
    seg, image = read(out / "labelsTr" / "BraTS2021_00000.nii.gz")
    np.testing.assert_array_equal(seg, canonical_seg())
    assert_geometry(image)


def test_corrupt_gzip_is_detected_even_though_simpleitk_reads_it(tmp_path):
    path = write(tmp_path / "x.nii.gz", np.random.default_rng(0).random((10, 9, 8)).astype(np.float32))
    path.write_bytes(path.read_bytes()[:-30])
    sitk.ReadImage(str(path))  # SimpleITK alone does not notice
    with gzip.open(path) as f, pytest.raises(EOFError):
        f.read()


@pytest.mark.parametrize("source", ["empty", "unknown"])
def test_unknown_layout_or_empty_source(tmp_path, source):
    src = tmp_path / "src"
    src.mkdir()
    if source == "unknown":
        (src / "notes.txt").write_text("hello")
        (src / "subject01").mkdir()
    with pytest.raises(NnunetKDError, match="no BraTS release found"):
        convert_brats(src, 10, raw_root=tmp_path / "raw", progress=False)
    assert leftovers(tmp_path / "raw") == []


def test_invalid_id_name_and_missing_raw_variable(tmp_path, monkeypatch):
    make_2021(tmp_path / "src", n=1)
    with pytest.raises(ConfigurationError, match="1 to 999"):
        convert_brats(tmp_path / "src", 1000, raw_root=tmp_path / "raw", progress=False)
    with pytest.raises(ConfigurationError, match="name 'my data'"):
        convert_brats(tmp_path / "src", 11, name="my data", raw_root=tmp_path / "raw", progress=False)
    monkeypatch.delenv("nnUNet_raw", raising=False)
    with pytest.raises(ConfigurationError, match="nnUNet_raw"):
        convert_brats(tmp_path / "src", 11, progress=False)
    assert leftovers(tmp_path / "raw") == []


def test_existing_dataset_id_needs_overwrite(tmp_path):
    src, raw = tmp_path / "src", tmp_path / "raw"
    make_2021(src, n=1)
    old = raw / "Dataset012_Older"
    (old / "imagesTr").mkdir(parents=True)
    (old / "marker.txt").write_text("old")
    with pytest.raises(NnunetKDError, match="dataset id 012 already exists.*Dataset012_Older.*--overwrite"):
        convert_brats(src, 12, raw_root=raw, progress=False)
    assert leftovers(raw) == ["Dataset012_Older"]

    # a failing overwrite keeps the old dataset untouched
    (src / "BraTS2021_00000" / "BraTS2021_00000_t2.nii.gz").write_bytes(b"broken")
    with pytest.raises(InputDataError, match="BraTS2021_00000_t2.nii.gz"):
        convert_brats(src, 12, raw_root=raw, overwrite=True, progress=False)
    assert leftovers(raw) == ["Dataset012_Older"] and (old / "marker.txt").read_text() == "old"

    make_2021(src, n=1)  # repair
    out = convert_brats(src, 12, raw_root=raw, overwrite=True, progress=False)
    assert leftovers(raw) == ["Dataset012_BraTS"]
    assert (out / "labelsTr" / "BraTS2021_00000.nii.gz").is_file()
    out = convert_brats(src, 12, raw_root=raw, overwrite=True, progress=False)  # same name again
    assert leftovers(raw) == ["Dataset012_BraTS"]


def test_two_processes_give_the_same_dataset_and_clean_errors(tmp_path):
    src = tmp_path / "src"
    make_2021(src, n=3)
    one = convert_brats(src, 13, raw_root=tmp_path / "raw1", progress=False)
    two = convert_brats(src, 13, raw_root=tmp_path / "raw2", num_processes=2, progress=False)
    files = sorted(p.relative_to(one) for p in one.rglob("*.nii.gz"))
    assert files == sorted(p.relative_to(two) for p in two.rglob("*.nii.gz")) and len(files) == 15
    for f in files:
        np.testing.assert_array_equal(read(one / f)[0], read(two / f)[0])
    assert (one / "dataset.json").read_text() == (two / "dataset.json").read_text()

    _corrupt(src, "unexpected_label")  # the error is raised inside a worker process
    with pytest.raises(InputDataError, match=r"^case BraTS2021_00001: segmentation file .*label value\(s\) \[3\]"):
        convert_brats(src, 14, raw_root=tmp_path / "raw2", num_processes=2, progress=False)
    assert leftovers(tmp_path / "raw2") == ["Dataset013_BraTS"]


def test_cli_convert_success_and_one_line_error(tmp_path, monkeypatch, capsys):
    src, raw = tmp_path / "src", tmp_path / "raw"
    make_2021(src, n=2, unlabeled=1)
    raw.mkdir()
    monkeypatch.setenv("nnUNet_raw", str(raw))
    assert main(["convert-brats", str(src), "-d", "21", "-n", "Cli", "--layout", "2021"]) == 0
    out = capsys.readouterr().out
    assert "Dataset021_Cli" in out and "2 training case(s)" in out and "1 test case(s)" in out
    assert main(["convert-brats", str(src), "-d", "21"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("nnunet-kd convert-brats: error: dataset id 021 already exists") and err.count("\n") == 1
    _corrupt(src, "seg_shape")
    assert main(["convert-brats", str(src), "-d", "21", "--overwrite", "--num-processes", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "case BraTS2021_00001" in err[0] and "BraTS2021_00001_seg.nii.gz" in err[0]
    assert leftovers(raw) == ["Dataset021_Cli"]


@pytest.mark.parametrize("command", ["convert-brats", "export-brats", "select-modalities"])
def test_every_subcommand_has_help(command, capsys):
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0
    assert f"usage: nnunet-kd {command}" in capsys.readouterr().out


def _console_script() -> str:
    return str(Path(sys.executable).parent / "nnunet-kd")


@pytest.mark.slow
def test_console_script_bad_input_exits_nonzero_with_one_line(tmp_path):
    src, raw = tmp_path / "src", tmp_path / "raw"
    make_2021(src, n=2)
    _corrupt(src, "missing_modality")
    env = dict(os.environ, nnUNet_raw=str(raw))
    proc = subprocess.run([_console_script(), "convert-brats", str(src), "-d", "22"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("nnunet-kd convert-brats: error: case BraTS2021_00001: missing T1ce file")
    assert "Traceback" not in proc.stderr and leftovers(raw) == []


def _blob_release(root: Path, n: int, size: int = 32) -> None:
    """MSD-layout release of ``n`` cases: random tumour blobs inside a brain-shaped ellipsoid of ``size``^3."""
    rng = np.random.default_rng(3)
    z, y, x = np.mgrid[:size, :size, :size] / (size - 1) * 2 - 1
    brain = (z / 0.8) ** 2 + (y / 0.95) ** 2 + (x / 0.85) ** 2 < 1
    task = root / "Task01_BrainTumour"
    geometry = {"spacing": SPACING + (1.0,), "origin": ORIGIN + (0.0,),
                "direction": tuple(np.block([[np.reshape(DIRECTION, (3, 3)), np.zeros((3, 1))],
                                             [np.zeros((1, 3)), np.ones((1, 1))]]).ravel())}
    for i in range(n):
        c = rng.uniform(-0.3, 0.3, 3)
        r = np.sqrt((z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2)
        seg = np.zeros(brain.shape, np.uint8)  # msd: edema 1, non-enhancing 2, enhancing 3
        seg[(r < 0.45) & brain] = 1
        seg[r < 0.3] = 3
        seg[r < 0.2] = 2
        channels = [np.where(brain, 100 + 20 * k + 40 * (seg == k % 4) + rng.normal(0, 5, brain.shape), 0)
                    for k in range(4)]
        write(task / "imagesTr" / f"BRATS_{i + 1:03d}.nii.gz", np.stack(channels).astype(np.float32), **geometry)
        write(task / "labelsTr" / f"BRATS_{i + 1:03d}.nii.gz", seg)


@pytest.mark.slow
def test_nnunet_verify_dataset_integrity_accepts_converted_dataset(tmp_path):
    _blob_release(tmp_path / "src", n=3)
    raw, pre, res = tmp_path / "raw", tmp_path / "pre", tmp_path / "res"
    convert_brats(tmp_path / "src", 531, name="Blobs", raw_root=raw, progress=False)
    env = dict(os.environ, nnUNet_raw=str(raw), nnUNet_preprocessed=str(pre), nnUNet_results=str(res),
               nnUNet_def_n_proc="1", nnUNet_n_proc_DA="1", nnUNet_compile="false")
    tool = str(Path(sys.executable).parent / "nnUNetv2_plan_and_preprocess")
    proc = subprocess.run([tool, "-d", "531", "--verify_dataset_integrity", "-c", "3d_fullres", "-np", "1",
                           "-npfp", "1"], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "verify_dataset_integrity Done" in proc.stdout
    assert "WARNING" not in proc.stdout and "Error" not in proc.stdout
    assert (pre / "Dataset531_Blobs" / "nnUNetPlans.json").is_file()
    assert len(list((pre / "Dataset531_Blobs" / "nnUNetPlans_3d_fullres").glob("BRATS_*"))) >= 3


def test_dataset_id_must_name_one_dataset_across_the_nnunet_folders(tmp_path, monkeypatch):
    src = tmp_path / "src"
    make_2021(src, n=1)
    for name in ("raw", "pre", "res"):
        (tmp_path / name).mkdir()
    monkeypatch.setenv("nnUNet_raw", str(tmp_path / "raw"))
    monkeypatch.setenv("nnUNet_preprocessed", str(tmp_path / "pre"))
    monkeypatch.setenv("nnUNet_results", str(tmp_path / "res"))
    (tmp_path / "pre" / "Dataset030_BraTS").mkdir()  # the same dataset, preprocessed earlier: fine
    assert convert_brats(src, 30, progress=False).name == "Dataset030_BraTS"
    (tmp_path / "res" / "Dataset030_Old").mkdir()  # models of another dataset with this id
    with pytest.raises(ConfigurationError, match=r"dataset id 030 is already used by .*res/Dataset030_Old"):
        convert_brats(src, 30, overwrite=True, progress=False)
    assert leftovers(tmp_path / "raw") == ["Dataset030_BraTS"]


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.int32, np.uint32, np.float32])
def test_label_remap_of_every_dtype_matches_a_plain_lookup(dtype):
    from nnunet_kd.brats import get_convention

    conv = get_convention("2021")
    seg = np.random.default_rng(0).choice([0, 1, 2, 4], size=(7, 6, 5)).astype(dtype)
    expected = np.vectorize(lambda v: conv.to_canonical[int(v)])(seg)
    out = conv.to_canonical_array(seg)
    assert out.dtype == np.uint8 and np.array_equal(out, expected)
    seg[0, 0, 0] = 3
    with pytest.raises(ValueError, match=r"label value\(s\) \[3\] not allowed in the 2021 convention"):
        conv.to_canonical_array(seg)
    if dtype == np.int16:
        seg[0, 0, 0] = -1
        with pytest.raises(ValueError, match=r"\[-1\] not allowed"):
            conv.to_canonical_array(seg)
