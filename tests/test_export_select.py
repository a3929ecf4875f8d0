"""Back-conversion to release labels (export-brats) and modality selection (select-modalities)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from brats_release_builders import BUILDERS, DIRECTION, ORIGIN, SPACING, canonical_seg, release_seg, write

from nnunet_kd.brats import UnknownModalityError
from nnunet_kd.cli import main
from nnunet_kd.dataset_conversion.convert import convert_brats
from nnunet_kd.dataset_conversion.export import export_brats
from nnunet_kd.dataset_conversion.select import select_modalities
from nnunet_kd.errors import InputDataError, NnunetKDError


def read(path: Path) -> tuple[np.ndarray, sitk.Image]:
    image = sitk.ReadImage(str(path))
    return sitk.GetArrayFromImage(image), image


@pytest.mark.parametrize("layout", ["2020", "2021", "2023", "msd"])
def test_round_trip_convert_then_export_restores_release_labels(tmp_path, layout):
    ids = BUILDERS[layout](tmp_path / "src")
    out = convert_brats(tmp_path / "src", 601, raw_root=tmp_path / "raw", progress=False)
    (out / "labelsTr" / "notes.txt").write_text("ignored: not a NIfTI file")
    written = export_brats(out / "labelsTr", tmp_path / "export", layout, progress=False)
    assert [p.name for p in written] == [f"{c}.nii.gz" for c in sorted(ids[:2])]
    assert sorted(p.name for p in (tmp_path / "export").iterdir()) == [p.name for p in written]
    for path in written:
        array, image = read(path)
        assert array.dtype == np.uint8
        np.testing.assert_array_equal(array, release_seg(layout))
        np.testing.assert_allclose(image.GetSpacing(), SPACING, atol=1e-6)
        np.testing.assert_allclose(image.GetOrigin(), ORIGIN, atol=1e-6)
        np.testing.assert_allclose(image.GetDirection(), DIRECTION, atol=1e-6)


def test_export_2021_label_values(tmp_path):
    write(tmp_path / "pred" / "BraTS2021_00000.nii.gz", canonical_seg())
    (path,) = export_brats(tmp_path / "pred", tmp_path / "out", "2021", progress=False)
    exported, canonical = read(path)[0], canonical_seg()
    for before, after in {0: 0, 1: 2, 2: 1, 3: 4}.items():  # ED 1->2, NCR 2->1, ET 3->4
        assert np.all(exported[canonical == before] == after)


def _two_predictions(folder: Path) -> None:
    write(folder / "case_a.nii.gz", canonical_seg())
    bad = canonical_seg()
    bad[0, 0, 0] = 4
    write(folder / "case_b.nii.gz", bad)


@pytest.mark.parametrize("num_processes", [1, 2])
def test_export_unexpected_label_is_a_clear_error_and_writes_nothing(tmp_path, num_processes):
    _two_predictions(tmp_path / "pred")
    with pytest.raises(InputDataError) as info:
        export_brats(tmp_path / "pred", tmp_path / "out", "2023", num_processes=num_processes, progress=False)
    message = str(info.value)
    assert message.startswith("case case_b: prediction file ") and "case_b.nii.gz" in message
    assert "label value(s) [4]" in message and "\n" not in message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pred"]


def test_export_refuses_non_empty_output_and_empty_input(tmp_path):
    write(tmp_path / "pred" / "case_a.nii.gz", canonical_seg())
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("x")
    with pytest.raises(NnunetKDError, match="already exists and is not empty"):
        export_brats(tmp_path / "pred", tmp_path / "out", "msd", progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(NnunetKDError, match="no prediction files"):
        export_brats(tmp_path / "empty", tmp_path / "out2", "msd", progress=False)
    with pytest.raises(NnunetKDError, match="unknown label convention 'brats'"):
        export_brats(tmp_path / "pred", tmp_path / "out2", "brats", progress=False)
    (tmp_path / "out3").mkdir()  # an existing empty folder is fine
    assert len(export_brats(tmp_path / "pred", tmp_path / "out3", "msd", progress=False)) == 1


def test_export_cli(tmp_path, capsys):
    write(tmp_path / "pred" / "BRATS_001.nii.gz", canonical_seg())
    assert main(["export-brats", str(tmp_path / "pred"), str(tmp_path / "out"), "--convention", "msd"]) == 0
    assert "wrote 1 file(s)" in capsys.readouterr().out
    np.testing.assert_array_equal(read(tmp_path / "out" / "BRATS_001.nii.gz")[0], release_seg("msd"))
    _two_predictions(tmp_path / "bad")
    assert main(["export-brats", str(tmp_path / "bad"), str(tmp_path / "out2"), "--convention", "2021"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("nnunet-kd export-brats: error: case case_b") and err.count("\n") == 1
    assert not (tmp_path / "out2").exists()


# ------------------------------------------------------------------------------------------ select-modalities
def _images_folder(folder: Path, cases=("c1", "c2"), channels=range(4)) -> None:
    folder.mkdir(parents=True)
    for case in cases:
        for k in channels:
            write(folder / f"{case}_{k:04d}.nii.gz", np.full((4, 4, 4), 10 * int(case[1:]) + k, np.float32))
    (folder / "._c1_0000.nii.gz").write_bytes(b"junk")


def test_select_keeps_the_named_channels_with_their_suffixes(tmp_path):
    _images_folder(tmp_path / "imagesTs")
    written = select_modalities(tmp_path / "imagesTs", tmp_path / "out", "FLAIR,T1ce", progress=False)
    names = ["c1_0001.nii.gz", "c1_0003.nii.gz", "c2_0001.nii.gz", "c2_0003.nii.gz"]
    assert [p.name for p in written] == names
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == names
    assert (tmp_path / "out" / "c2_0003.nii.gz").read_bytes() == (tmp_path / "imagesTs" / "c2_0003.nii.gz").read_bytes()
    # aliases and sequences work too
    written = select_modalities(tmp_path / "imagesTs", tmp_path / "out2", ["t2f"], progress=False)
    assert [p.name for p in written] == ["c1_0003.nii.gz", "c2_0003.nii.gz"]


def test_select_resolves_names_against_dataset_json(tmp_path):
    _images_folder(tmp_path / "images", channels=range(3))
    meta = {"channel_names": {"0": "FLAIR", "1": "T1", "2": "t1c"}, "file_ending": ".nii.gz"}
    (tmp_path / "dataset.json").write_text(json.dumps(meta))
    written = select_modalities(tmp_path / "images", tmp_path / "out", "T1ce,FLAIR",
                                dataset_json=tmp_path / "dataset.json", progress=False)
    assert [p.name for p in written] == ["c1_0000.nii.gz", "c1_0002.nii.gz", "c2_0000.nii.gz", "c2_0002.nii.gz"]
    assert (tmp_path / "out" / "c1_0002.nii.gz").read_bytes() == (tmp_path / "images" / "c1_0002.nii.gz").read_bytes()
    with pytest.raises(NnunetKDError, match=r"modality T2 not among the channel_names of .*dataset\.json"):
        select_modalities(tmp_path / "images", tmp_path / "out3", "T2", dataset_json=tmp_path / "dataset.json",
                          progress=False)
    assert not (tmp_path / "out3").exists()


def test_select_errors(tmp_path):
    _images_folder(tmp_path / "images")
    (tmp_path / "images" / "c2_0001.nii.gz").unlink()
    with pytest.raises(UnknownModalityError, match="unknown modality 'PD'"):
        select_modalities(tmp_path / "images", tmp_path / "out", "FLAIR,PD", progress=False)
    with pytest.raises(InputDataError) as info:
        select_modalities(tmp_path / "images", tmp_path / "out", "FLAIR,T1ce", progress=False)
    message = str(info.value)
    assert message.startswith("case c2: missing T1ce file") and "c2_0001.nii.gz" in message
    assert not (tmp_path / "out").exists()
    # a case only missing a channel that is not kept is fine
    assert len(select_modalities(tmp_path / "images", tmp_path / "out", "FLAIR", progress=False)) == 2
    with pytest.raises(NnunetKDError, match="already exists and is not empty"):
        select_modalities(tmp_path / "images", tmp_path / "out", "FLAIR", progress=False)
    (tmp_path / "none").mkdir()
    with pytest.raises(NnunetKDError, match="no nnU-Net image files"):
        select_modalities(tmp_path / "none", tmp_path / "out4", "FLAIR", progress=False)


def test_select_cli(tmp_path, capsys):
    _images_folder(tmp_path / "images")
    assert main(["select-modalities", str(tmp_path / "images"), str(tmp_path / "out"), "--keep", "FLAIR,T1ce"]) == 0
    assert "wrote 4 file(s) (T1ce _0001, FLAIR _0003)" in capsys.readouterr().out
    assert main(["select-modalities", str(tmp_path / "images"), str(tmp_path / "o2"), "--keep", "FLAIR,XYZ"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("nnunet-kd select-modalities: error: unknown modality 'XYZ'") and err.count("\n") == 1


@pytest.mark.parametrize("damage", ["truncated", "not gzip"])
def test_select_cli_refuses_a_damaged_file_and_writes_nothing(tmp_path, damage):
    _images_folder(tmp_path / "images")
    bad = tmp_path / "images" / "c2_0003.nii.gz"
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"not a NIfTI file at all")
    proc = subprocess.run([str(Path(sys.executable).parent / "nnunet-kd"), "select-modalities",
                           str(tmp_path / "images"), str(tmp_path / "out"), "--keep", "FLAIR"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"nnunet-kd select-modalities: error: case c2: cannot copy {bad}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images"]
