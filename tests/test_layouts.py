"""Layout recognition and case listing of BraTS releases (nnunet_kd.dataset_conversion.layouts)."""

from __future__ import annotations

import json

import pytest
from brats_release_builders import BUILDERS, make_2020, make_2021, make_2023, make_legacy, make_msd

from nnunet_kd.brats import MODALITIES
from nnunet_kd.dataset_conversion.layouts import detect_layout, list_cases
from nnunet_kd.errors import InputDataError, NnunetKDError


@pytest.mark.parametrize("layout", sorted(BUILDERS))
def test_detects_every_layout_from_release_folder_and_parent(tmp_path, layout):
    ids = BUILDERS[layout](tmp_path)
    release = next(p for p in tmp_path.iterdir() if p.is_dir()) if layout not in ("2021", "2023") else tmp_path
    assert detect_layout(release) == layout
    assert detect_layout(tmp_path) == layout  # parent of the release, or the release itself
    cases = list_cases(tmp_path)
    assert [c.case_id for c in cases] == sorted(ids)
    assert {c.convention for c in cases} == {layout}


def test_only_one_folder_level_below_src_is_searched(tmp_path):
    make_2021(tmp_path / "outer" / "inner", n=1)
    assert detect_layout(tmp_path / "outer") == "2021"
    with pytest.raises(NnunetKDError, match="no BraTS release found"):
        detect_layout(tmp_path)


def test_folder_layout_maps_each_modality_to_its_file(tmp_path):
    make_2023(tmp_path, n=1, unlabeled=1)
    labeled, unlabeled = list_cases(tmp_path)
    suffix = {"T1": "t1n", "T1ce": "t1c", "T2": "t2w", "FLAIR": "t2f"}
    for m in MODALITIES:
        assert labeled.images[m].name == f"BraTS-GLI-00000-000-{suffix[m]}.nii.gz"
    assert labeled.seg.name == "BraTS-GLI-00000-000-seg.nii.gz"
    assert unlabeled.seg is None and not unlabeled.is_4d


def test_2020_nii_files_and_misnamed_case_355(tmp_path):
    make_2020(tmp_path)
    first, c355 = list_cases(tmp_path)
    assert first.images["T1ce"].name == "BraTS20_Training_001_t1ce.nii"
    assert first.seg.name == "BraTS20_Training_001_seg.nii"
    assert c355.case_id == "BraTS20_Training_355"
    assert c355.seg.name == "W39_1998.09.19_Segm.nii"


def test_2020_two_candidate_segmentations_is_an_error(tmp_path):
    make_2020(tmp_path)
    case = tmp_path / "MICCAI_BraTS2020_TrainingData" / "BraTS20_Training_355"
    (case / "other_seg.nii").write_bytes((case / "W39_1998.09.19_Segm.nii").read_bytes())
    with pytest.raises(InputDataError, match="BraTS20_Training_355: several possible segmentation files"):
        list_cases(tmp_path)


@pytest.mark.parametrize(("year", "name", "expected"), [
    ("2018", None, "2018"), ("2019", None, "2019"),
    ("other", "MICCAI_BraTS_2018_Data_Training", "2018"), ("other", "SomeRelease", "2019"),
])
def test_legacy_year_rule(tmp_path, year, name, expected):
    make_legacy(tmp_path, year, release_name=name)
    assert detect_layout(tmp_path) == expected
    cases = list_cases(tmp_path)
    assert {c.convention for c in cases} == {expected}
    assert {c.images["FLAIR"].parent.parent.name for c in cases} == {"HGG", "LGG"}
    # forcing the other legacy year only changes the recorded convention
    other = "2019" if expected == "2018" else "2018"
    assert {c.convention for c in list_cases(tmp_path, layout=other)} == {other}


def test_msd_ignores_junk_and_reads_channel_order_from_dataset_json(tmp_path):
    order = ("T2", "FLAIR", "T1", "T1ce")
    make_msd(tmp_path, n_train=2, n_test=1, order=order)
    cases = list_cases(tmp_path / "Task01_BrainTumour")
    assert [c.case_id for c in cases] == ["BRATS_001", "BRATS_002", "BRATS_003"]
    assert all(c.is_4d for c in cases)
    assert dict(cases[0].channel_index) == {m: order.index(m) for m in MODALITIES}
    assert cases[0].seg.name == "BRATS_001.nii.gz" and cases[2].seg is None
    assert len({cases[0].images[m] for m in MODALITIES}) == 1


def test_msd_default_channel_order_without_dataset_json(tmp_path):
    make_msd(tmp_path, with_json=False)
    case = list_cases(tmp_path)[0]
    assert dict(case.channel_index) == {"FLAIR": 0, "T1": 1, "T1ce": 2, "T2": 3}


def test_msd_bad_dataset_json_modality(tmp_path):
    make_msd(tmp_path)
    meta_path = tmp_path / "Task01_BrainTumour" / "dataset.json"
    meta = json.loads(meta_path.read_text())
    meta["modality"]["0"] = "CT"
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(InputDataError, match=r"dataset\.json.*unknown modality 'CT'"):
        list_cases(tmp_path)


def test_msd_image_without_label(tmp_path):
    make_msd(tmp_path)
    (tmp_path / "Task01_BrainTumour" / "labelsTr" / "BRATS_002.nii.gz").unlink()
    with pytest.raises(InputDataError, match="case BRATS_002: missing label file .*labelsTr/BRATS_002.nii.gz"):
        list_cases(tmp_path)


def test_missing_modality_names_case_and_file(tmp_path):
    make_2021(tmp_path, n=2)
    (tmp_path / "BraTS2021_00001" / "BraTS2021_00001_t2.nii.gz").unlink()
    with pytest.raises(InputDataError) as info:
        list_cases(tmp_path)
    message = str(info.value)
    assert "\n" not in message
    assert "case BraTS2021_00001: missing T2 file" in message and "BraTS2021_00001_t2.nii.gz" in message


def test_parent_with_training_and_validation_releases_is_merged(tmp_path):
    make_2021(tmp_path / "train", n=2)
    make_2021(tmp_path / "validation", n=0, unlabeled=1)
    (tmp_path / "validation" / "BraTS2021_00000").rename(tmp_path / "validation" / "BraTS2021_01000")
    for f in (tmp_path / "validation" / "BraTS2021_01000").iterdir():
        f.rename(f.with_name(f.name.replace("00000", "01000")))
    cases = list_cases(tmp_path)
    assert [(c.case_id, c.seg is not None) for c in cases] == [
        ("BraTS2021_00000", True), ("BraTS2021_00001", True), ("BraTS2021_01000", False)]


def test_duplicate_case_ids_across_releases(tmp_path):
    make_2021(tmp_path / "a", n=1)
    make_2021(tmp_path / "b", n=1)
    with pytest.raises(InputDataError, match="case BraTS2021_00000: found twice"):
        list_cases(tmp_path)


def test_parent_with_different_layouts_is_refused(tmp_path):
    make_2021(tmp_path / "a", n=1)
    make_2023(tmp_path / "b", n=1)
    with pytest.raises(NnunetKDError, match="releases of different layouts"):
        detect_layout(tmp_path)


def test_forced_layout_only_looks_for_that_layout(tmp_path):
    make_2021(tmp_path, n=1)
    assert [c.convention for c in list_cases(tmp_path, layout="2021")] == ["2021"]
    with pytest.raises(NnunetKDError, match="no BraTS 2023 cases found"):
        list_cases(tmp_path, layout="2023")
    with pytest.raises(NnunetKDError, match="unknown layout 'brats'"):
        list_cases(tmp_path, layout="brats")


@pytest.mark.parametrize("content", ["empty", "unknown", "missing", "file"])
def test_unknown_or_empty_source(tmp_path, content):
    src = tmp_path / "src"
    if content == "empty":
        src.mkdir()
    elif content == "unknown":
        (src / "patient1").mkdir(parents=True)
        (src / "patient1" / "scan.nii.gz").write_bytes(b"x")
    elif content == "file":
        src.write_text("x")
    with pytest.raises(NnunetKDError) as info:
        detect_layout(src)
    assert str(src) in str(info.value) and "\n" not in str(info.value)
