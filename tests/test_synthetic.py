"""Synthetic BraTS cases: geometry, labels, determinism, MRI contrasts, release folders and the `synth` CLI."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from nnunet_kd import synthetic
from nnunet_kd.brats import EDEMA, ENHANCING, MODALITIES, NECROSIS, get_convention
from nnunet_kd.cli import main
from nnunet_kd.errors import NnunetKDError
from nnunet_kd.synthetic import SyntheticCase, case_seed, make_case, write_brats_folder

SHAPE = (40, 40, 40)
SEEDS = (0, 1, 2)

FILES_2021 = ("t1", "t1ce", "t2", "flair")
FILES_2023 = ("t1n", "t1c", "t2w", "t2f")


@pytest.fixture(scope="module")
def cases() -> dict[int, SyntheticCase]:
    return {seed: make_case(seed, SHAPE) for seed in SEEDS}


def _spacing(case: SyntheticCase) -> np.ndarray:
    return np.sqrt((case.affine[:3, :3] ** 2).sum(axis=0))


# ------------------------------------------------------------------------------------------ make_case


def test_case_arrays_have_the_documented_shapes_and_types(cases):
    case = cases[0]
    assert tuple(case.images) == MODALITIES
    for image in case.images.values():
        assert image.shape == SHAPE and image.dtype == np.float32
        assert np.isfinite(image).all()
    assert case.seg.shape == SHAPE and case.seg.dtype == np.uint8
    assert case.brain_mask.shape == SHAPE and case.brain_mask.dtype == bool
    assert 0.2 < case.brain_mask.mean() < 0.8  # the brain fills a good part of the cropped grid
    assert set(case.tissues) == {"csf", "gm", "wm"}
    total = case.tissues["csf"] + case.tissues["gm"] + case.tissues["wm"]
    np.testing.assert_allclose(total[case.brain_mask], 1.0, atol=1e-4)


def test_affine_is_ras_and_covers_the_mni_brain(cases):
    case = cases[0]
    assert case.affine.shape == (4, 4)
    np.testing.assert_allclose(case.affine[3], [0, 0, 0, 1])
    np.testing.assert_allclose(case.affine[:3, :3], np.diag(np.diag(case.affine[:3, :3])))  # axis-aligned
    spacing = np.diag(case.affine)[:3]
    assert (spacing > 0).all()  # RAS: +x right, +y anterior, +z superior
    # the grid spans the brain's bounding box in the 1 mm template (about 145 x 181 x 155 mm) plus 2 mm
    fov = spacing * np.array(SHAPE)
    assert np.all((fov > 140) & (fov < 200)), fov
    # symmetric template: the brain's centre lies on the mid-sagittal plane x = 0
    centre_vox = np.argwhere(case.brain_mask).mean(axis=0)
    centre_world = case.affine[:3, :3] @ centre_vox + case.affine[:3, 3]
    assert abs(centre_world[0]) < 2 * spacing[0]
    # smaller grids keep the field of view with coarser spacing
    small = make_case(0, (32, 32, 32))
    np.testing.assert_allclose(_spacing(small) * 32, spacing * 40, rtol=1e-6)


@pytest.mark.parametrize("seed", SEEDS)
def test_labelled_case_has_all_canonical_labels_inside_the_brain(cases, seed):
    case = cases[seed]
    assert set(np.unique(case.seg).tolist()) == {0, EDEMA, NECROSIS, ENHANCING}
    assert not (case.seg > 0)[~case.brain_mask].any()
    for image in case.images.values():
        assert not image[~case.brain_mask].any()  # skull-stripped: background exactly zero
        assert (image[case.brain_mask] > 0).mean() > 0.99


@pytest.mark.parametrize("seed", SEEDS)
def test_tumour_anatomy_core_in_one_hemisphere_rim_around_necrosis(cases, seed):
    case = cases[seed]
    core = np.argwhere(case.seg >= NECROSIS)
    world_x = (case.affine[:3, :3] @ core.T)[0] + case.affine[0, 3]
    assert abs(world_x.mean()) > 5.0
    assert max((world_x > 0).mean(), (world_x < 0).mean()) > 0.9
    # the enhancing rim encloses the necrosis: necrosis never touches edema or background directly
    grown = ndimage.binary_dilation(case.seg == NECROSIS)
    assert not np.isin(case.seg[grown], (0, EDEMA)).any()
    # the enhancing core sits mostly in white matter, edema avoids CSF
    centre = tuple(np.round(core.mean(axis=0)).astype(int))
    assert case.seg[centre] in (NECROSIS, ENHANCING)
    assert case.tissues["csf"][case.seg == EDEMA].mean() < 0.3


def test_same_seed_same_case_other_seed_other_case(cases):
    again = make_case(1, SHAPE)
    for m in MODALITIES:
        np.testing.assert_array_equal(again.images[m], cases[1].images[m])
    np.testing.assert_array_equal(again.seg, cases[1].seg)
    np.testing.assert_array_equal(again.brain_mask, cases[1].brain_mask)
    assert not np.array_equal(cases[0].seg, cases[1].seg)
    assert not np.array_equal(cases[0].images["T1"], cases[1].images["T1"])
    assert not np.array_equal(cases[0].brain_mask, cases[1].brain_mask)  # per-case deformation


def test_unlabelled_case_is_the_same_scan_without_seg(cases):
    unlabelled = make_case(2, SHAPE, labeled=False)
    assert unlabelled.seg is None
    for m in MODALITIES:
        np.testing.assert_array_equal(unlabelled.images[m], cases[2].images[m])


@pytest.mark.parametrize("seed", SEEDS)
def test_mri_contrasts(cases, seed):
    case = cases[seed]
    seg, tissues = case.seg, case.tissues
    healthy = seg == 0
    near_tumour = ndimage.distance_transform_edt(healthy, sampling=_spacing(case)) < 20
    inner = ndimage.binary_erosion(case.brain_mask)
    regions = {
        "wm": (tissues["wm"] > 0.8) & healthy & near_tumour,  # white matter surrounding the tumour
        "gm": (tissues["gm"] > 0.8) & healthy,
        "csf": (tissues["csf"] > 0.8) & healthy & inner,
        "edema": seg == EDEMA, "necrosis": seg == NECROSIS, "enhancing": seg == ENHANCING,
    }
    for name, mask in regions.items():
        assert mask.sum() >= 10, name
    mean = {m: {r: float(case.images[m][mask].mean()) for r, mask in regions.items()} for m in MODALITIES}
    t1, t1ce, t2, flair = (mean[m] for m in MODALITIES)
    # enhancement shows on T1ce only
    assert t1ce["enhancing"] > 1.2 * t1ce["edema"] and t1ce["enhancing"] > 1.2 * t1ce["wm"]
    assert t1["enhancing"] < t1["wm"] and t1["enhancing"] <= t1["edema"]
    # T1: WM > GM > CSF, tumour slightly hypo-intense, necrosis dark
    assert t1["wm"] > t1["gm"] > t1["csf"]
    assert t1["csf"] < t1["necrosis"] < t1["edema"] < t1["wm"]
    # T2: CSF, edema and necrosis bright
    assert t2["csf"] > t2["wm"] and t2["edema"] > 1.3 * t2["wm"] and t2["necrosis"] > 1.3 * t2["wm"]
    # FLAIR: CSF dark, edema bright
    assert flair["csf"] < 0.7 * flair["wm"]
    assert flair["edema"] > 1.5 * flair["wm"] and flair["edema"] > flair["gm"]


@pytest.mark.parametrize("shape", [(8, 8, 8), (64, 64), (16, 16, 15), (16.5, 16, 16)])
def test_bad_shape_is_a_clear_error(shape):
    with pytest.raises(NnunetKDError, match="shape"):
        make_case(0, shape)


def test_fixed_spacing_centres_a_grid_larger_than_the_brain_on_it():
    """``spacing``: isotropic voxels of that size (a BraTS grid is 240x240x155 at 1 mm), the brain inside the grid."""
    shape = (48, 56, 40)
    case = make_case(0, shape, spacing=4.0)  # 192 x 224 x 160 mm around a brain of about 149 x 185 x 159 mm
    np.testing.assert_allclose(_spacing(case), [4.0, 4.0, 4.0])
    assert case.seg.shape == shape and all((case.seg == label).any() for label in (EDEMA, NECROSIS, ENHANCING))
    inside = np.argwhere(case.brain_mask)
    lo, hi = inside.min(0), inside.max(0)
    assert lo[0] >= 2 and lo[1] >= 2 and hi[0] <= shape[0] - 3 and hi[1] <= shape[1] - 3  # background in x and y
    default = make_case(0, shape)  # without spacing the brain's bounding box fills the grid, as before
    assert not np.allclose(_spacing(default), 4.0)
    brain_centre = default.affine @ np.array([*(np.asarray(shape) - 1) / 2, 1.0])
    centre = case.affine @ np.array([*(lo + hi) / 2, 1.0])
    assert np.all(np.abs(centre[:3] - brain_centre[:3]) < 8.0)  # the same brain centre, within 2 voxels


@pytest.mark.parametrize("spacing", [0, -1.0, float("nan"), "one"])
def test_bad_spacing_is_a_clear_error(tmp_path, spacing):
    with pytest.raises(NnunetKDError, match="spacing"):
        write_brats_folder(tmp_path / "out", 1, shape=(32, 32, 32), spacing=spacing, progress=False)
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------------ release folders

WRITE_SHAPE = (32, 32, 32)


@pytest.fixture(scope="module")
def folder_2021(tmp_path_factory) -> tuple[Path, list[str]]:
    out = tmp_path_factory.mktemp("synth2021") / "BraTS2021"
    ids = write_brats_folder(out, 2, layout="2021", seed=5, shape=WRITE_SHAPE, unlabeled=1, progress=False)
    return out, ids


def test_2021_folder_names_labels_and_affine(folder_2021):
    out, ids = folder_2021
    assert ids == ["BraTS2021_00000", "BraTS2021_00001", "BraTS2021_00002"]
    assert sorted(p.name for p in out.iterdir()) == ids
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temp folders left behind
    for i, cid in enumerate(ids[:2]):
        names = sorted(p.name for p in (out / cid).iterdir())
        assert names == sorted(f"{cid}_{s}.nii.gz" for s in (*FILES_2021, "seg"))
        expected = make_case(case_seed(5, i), WRITE_SHAPE)
        seg_img = nib.load(out / cid / f"{cid}_seg.nii.gz")
        seg = np.asanyarray(seg_img.dataobj)
        assert seg.dtype == np.uint8
        assert set(np.unique(seg).tolist()) == {0, 1, 2, 4}  # NCR 1, ED 2, ET 4
        np.testing.assert_array_equal(seg, get_convention("2021").from_canonical_array(expected.seg))
        assert ((seg == 1) == (expected.seg == NECROSIS)).all() and ((seg == 2) == (expected.seg == EDEMA)).all()
        np.testing.assert_allclose(seg_img.affine, expected.affine, atol=1e-4)
        flair = nib.load(out / cid / f"{cid}_flair.nii.gz")
        assert flair.get_data_dtype() == np.float32 and flair.shape == WRITE_SHAPE
        np.testing.assert_allclose(flair.get_fdata(dtype=np.float32), expected.images["FLAIR"], rtol=1e-6)
    # the unlabelled case follows the labelled ids and has images but no seg
    names = sorted(p.name for p in (out / ids[2]).iterdir())
    assert names == sorted(f"{ids[2]}_{s}.nii.gz" for s in FILES_2021)


def test_2023_folder_names_and_labels(tmp_path):
    out = tmp_path / "gli"
    ids = write_brats_folder(out, 1, layout="2023", seed=5, shape=WRITE_SHAPE, unlabeled=1, progress=False)
    assert ids == ["BraTS-GLI-00000-000", "BraTS-GLI-00001-000"]
    cid = ids[0]
    names = sorted(p.name for p in (out / cid).iterdir())
    assert names == sorted(f"{cid}-{s}.nii.gz" for s in (*FILES_2023, "seg"))
    seg = np.asanyarray(nib.load(out / cid / f"{cid}-seg.nii.gz").dataobj)
    canonical = make_case(case_seed(5, 0), WRITE_SHAPE).seg
    assert set(np.unique(seg).tolist()) == {0, 1, 2, 3}  # NETC 1, SNFH 2, ET 3
    assert ((seg == 1) == (canonical == NECROSIS)).all()
    assert ((seg == 2) == (canonical == EDEMA)).all()
    assert ((seg == 3) == (canonical == ENHANCING)).all()
    assert sorted(p.name for p in (out / ids[1]).iterdir()) == sorted(f"{ids[1]}-{s}.nii.gz" for s in FILES_2023)


def test_folder_seed_changes_cases_but_not_ids(folder_2021, tmp_path):
    out, ids = folder_2021
    other = tmp_path / "other"
    assert write_brats_folder(other, 1, seed=6, shape=WRITE_SHAPE, progress=False) == ids[:1]
    a = np.asanyarray(nib.load(out / ids[0] / f"{ids[0]}_seg.nii.gz").dataobj)
    b = np.asanyarray(nib.load(other / ids[0] / f"{ids[0]}_seg.nii.gz").dataobj)
    assert not np.array_equal(a, b)


def test_existing_output_is_refused_unless_overwrite(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(NnunetKDError, match=r"not empty.*overwrite") as info:
        write_brats_folder(out, 1, shape=WRITE_SHAPE, progress=False)
    assert str(out) in str(info.value)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]

    ids = write_brats_folder(out, 1, shape=WRITE_SHAPE, progress=False, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ids
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]

    empty = tmp_path / "empty"
    empty.mkdir()
    assert write_brats_folder(empty, 1, shape=WRITE_SHAPE, progress=False) == ids


def test_failure_midway_leaves_nothing_behind(tmp_path, monkeypatch):
    real = synthetic.make_case
    calls = []

    def failing(seed, shape, labeled=True, **kwargs):
        calls.append(seed)
        if len(calls) == 2:
            raise RuntimeError("disk full")
        return real(seed, shape, labeled, **kwargs)

    monkeypatch.setattr(synthetic, "make_case", failing)
    with pytest.raises(RuntimeError, match="disk full"):
        write_brats_folder(tmp_path / "out", 3, shape=WRITE_SHAPE, progress=False)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("kwargs, message", [
    ({"n_cases": 0}, "at least one case"),
    ({"n_cases": -1, "unlabeled": 2}, "at least one case"),
    ({"n_cases": 1, "layout": "2019"}, "unknown BraTS layout"),
    ({"n_cases": 1, "shape": (8, 8, 8)}, "shape"),
])
def test_bad_arguments_are_clear_errors(tmp_path, kwargs, message):
    with pytest.raises(NnunetKDError, match=message):
        write_brats_folder(tmp_path / "out", progress=False, **kwargs)
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------------ CLI


def test_cli_writes_a_folder_and_parses_the_shape(tmp_path, capsys):
    out = tmp_path / "cli"
    rc = main(["synth", str(out), "--cases", "1", "--unlabeled", "1", "--layout", "2023", "--seed", "3",
               "--shape", "32,36,40", "--no-progress"])
    assert rc == 0
    assert "wrote 2 synthetic cases" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["BraTS-GLI-00000-000", "BraTS-GLI-00001-000"]
    image = nib.load(out / "BraTS-GLI-00000-000" / "BraTS-GLI-00000-000-t2f.nii.gz")
    assert image.shape == (32, 36, 40)
    np.testing.assert_allclose(image.get_fdata(dtype=np.float32),
                               make_case(case_seed(3, 0), (32, 36, 40)).images["FLAIR"], rtol=1e-6)

    rc = main(["synth", str(out), "--cases", "1", "--shape", "32", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("nnunet-kd synth: error: ") and str(out) in err and err.count("\n") == 1

    rc = main(["synth", str(out), "--cases", "1", "--shape", "32", "--overwrite", "--no-progress"])
    assert rc == 0 and sorted(p.name for p in out.iterdir()) == ["BraTS2021_00000"]


def test_cli_spacing_writes_that_voxel_size(tmp_path, capsys):
    out = tmp_path / "spaced"
    assert main(["synth", str(out), "--cases", "1", "--shape", "40,48,40", "--spacing", "4.5", "--no-progress"]) == 0
    assert "4.5 mm" in capsys.readouterr().out
    image = nib.load(out / "BraTS2021_00000" / "BraTS2021_00000_t1ce.nii.gz")
    np.testing.assert_allclose(image.header.get_zooms(), [4.5, 4.5, 4.5])
    assert main(["synth", str(tmp_path / "bad"), "--cases", "1", "--spacing", "0", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "spacing" in err and err.count("\n") == 1 and not (tmp_path / "bad").exists()


def test_cli_rejects_a_malformed_shape(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main(["synth", str(tmp_path / "x"), "--cases", "1", "--shape", "32,32"])
    assert info.value.code == 2
    assert "--shape" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def _console_script() -> str:
    candidate = Path(sys.executable).parent / "nnunet-kd"
    found = str(candidate) if candidate.exists() else shutil.which("nnunet-kd")
    if not found:
        pytest.fail("the nnunet-kd console script is not installed next to the test interpreter or on PATH")
    return found


@pytest.mark.slow
def test_console_script_help_and_tiny_run(tmp_path):
    script = _console_script()
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    result = subprocess.run([script, "synth", "--help"], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0 and "--layout" in result.stdout and "--unlabeled" in result.stdout

    out = tmp_path / "tiny"
    result = subprocess.run([script, "synth", str(out), "--cases", "1", "--shape", "24"],
                            capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    names = sorted(p.name for p in (out / "BraTS2021_00000").iterdir())
    assert names == sorted(f"BraTS2021_00000_{s}.nii.gz" for s in (*FILES_2021, "seg"))

    result = subprocess.run([script, "synth", str(out), "--cases", "1", "--shape", "24"],
                            capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 2
    assert "nnunet-kd synth: error:" in result.stderr and "Traceback" not in result.stderr
