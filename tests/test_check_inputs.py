"""``nnunet-kd check-inputs``: every case whose ``_000X`` files are not exactly the model's is named, through the CLI.

The model folder holds only a dataset.json (all the command reads): a T1ce + FLAIR student's reduced one, or a
4-channel model's. Image files are empty (the check looks at names, not voxels).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

NNUNET_KD = str(Path(sys.executable).parent / "nnunet-kd")
STUDENT = ("_0001", "_0003")  # T1ce + FLAIR
DESCRIBED = "T1ce (_0001), FLAIR (_0003)"


def _model(root: Path, student: bool = True) -> Path:
    from nnunet_kd.brats import make_dataset_json
    from nnunet_kd.subsets.modalities import resolve_channels, student_dataset_json

    folder = root / "nnUNetTrainerBarlowKD__nnUNetPlans__3d_fullres"
    folder.mkdir(parents=True)
    dataset_json = make_dataset_json(8, "X")
    if student:
        dataset_json = student_dataset_json(dataset_json, resolve_channels(dataset_json["channel_names"],
                                                                           ["FLAIR", "T1ce"]))
    (folder / "dataset.json").write_text(json.dumps(dataset_json))
    return folder


def _images(folder: Path, files: dict[str, tuple[str, ...]]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for case, suffixes in files.items():
        for s in suffixes:
            (folder / f"{case}{s}.nii.gz").write_bytes(b"")
    return folder


def check_inputs(model: Path, images: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.pop("NNUNET_KD_DEBUG", None)
    return subprocess.run([NNUNET_KD, "check-inputs", str(model), str(images)], env=env, capture_output=True,
                          text=True, timeout=120)


def _tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_the_model_files_pass_with_one_line(tmp_path: Path):
    model = _model(tmp_path)
    images = _images(tmp_path / "in", {"A": STUDENT, "B": STUDENT})
    (images / "notes.txt").write_text("not an image: ignored, as nnU-Net ignores it")
    proc = check_inputs(model, images)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines() == [
        f"OK: all 2 case(s) in {images} have exactly the files the model takes: {DESCRIBED}"]
    assert proc.stderr == ""


def test_a_four_channel_model_takes_0000_to_0003(tmp_path: Path):
    model = _model(tmp_path, student=False)
    images = _images(tmp_path / "in", {"A": ("_0000", "_0001", "_0002", "_0003")})
    assert check_inputs(model, images).returncode == 0
    (images / "A_0002.nii.gz").unlink()
    proc = check_inputs(model, images)
    assert proc.returncode == 2 and "case A: missing _0002 (T2)" in proc.stderr


# what the input folder holds, and what the one error line must say about it
BAD = {
    "wrong modalities, right count": ({"A": STUDENT, "B": ("_0000", "_0002")},
                                      ["case B: missing _0001 (T1ce), _0003 (FLAIR); unexpected _0000 (T1), _0002 (T2)"]),
    "missing file": ({"A": STUDENT, "B": ("_0003",)}, ["case B: missing _0001 (T1ce) (the model takes"]),
    "extra file": ({"A": STUDENT, "B": STUDENT + ("_0002",)}, ["case B: unexpected _0002 (T2) (the model takes"]),
    "unknown suffix": ({"A": STUDENT, "B": ("_0001", "_0007")},
                       ["case B: missing _0003 (FLAIR); unexpected _0007 (the model"]),
    "suffix not four digits": ({"A": STUDENT, "B_00001": ()}, ["B_00001"]),
    "no suffix": ({"A": STUDENT, "B": ()}, ["B.nii.gz: name does not end in _XXXX.nii.gz"]),
    "every case named": ({"A": STUDENT, "B": ("_0000",), "C": ("_0002", "_0003"), "D": STUDENT},
                         ["3 input problem(s)", "case B: missing", "case C: missing", "no suffix.nii.gz"]),
    "empty folder": ({}, ["holds no *.nii.gz files"]),
}


@pytest.mark.parametrize("kind", sorted(BAD))
def test_bad_cases_are_named_on_one_line_exit_2(tmp_path: Path, kind: str):
    files, expected = BAD[kind]
    model = _model(tmp_path)
    images = _images(tmp_path / "in", files)
    if kind in ("suffix not four digits", "no suffix"):  # a file whose name has no (4-digit) channel suffix
        (images / ("B_00001.nii.gz" if kind == "suffix not four digits" else "B.nii.gz")).write_bytes(b"")
    if kind == "every case named":
        (images / "no suffix.nii.gz").write_bytes(b"")
    before = _tree(tmp_path)
    proc = check_inputs(model, images)
    assert proc.returncode == 2, proc.stdout
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("nnunet-kd check-inputs: error:"), proc.stderr
    assert str(images) in lines[0] and str(model) in lines[0]
    for text in expected:
        assert text in lines[0], (text, lines[0])
    assert "case A:" not in lines[0] and "case D:" not in lines[0]  # cases with the right files are not named
    assert proc.stdout == "" and _tree(tmp_path) == before


def test_a_folder_that_is_no_model_folder_is_refused(tmp_path: Path):
    images = _images(tmp_path / "in", {"A": STUDENT})
    proc = check_inputs(tmp_path / "in", images)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"nnunet-kd check-inputs: error: {images} is not an nnU-Net model folder (no dataset.json)"]


def test_evaluate_subsets_refuses_labelled_cases_without_exactly_the_model_files(tmp_path: Path):
    """Before: an extra ``_0004`` was ignored and predicted from; now every labelled case is checked first."""
    from test_subset_export import fake_any_subset_folder

    model = fake_any_subset_folder(tmp_path / "models")
    all_four = ("_0000", "_0001", "_0002", "_0003")
    images = _images(tmp_path / "images", {"A": all_four + ("_0004",), "B": ("_0000", "_0001", "_0003"),
                                           "C": all_four, "X": ("_0000",)})  # X has no label: not predicted
    labels = tmp_path / "labels"
    labels.mkdir()
    for case in "ABC":
        (labels / f"{case}.nii.gz").write_bytes(b"")
    before = _tree(tmp_path)
    env = dict(os.environ)
    env.pop("NNUNET_KD_DEBUG", None)
    proc = subprocess.run([NNUNET_KD, "evaluate-subsets", str(model), str(images), str(labels),
                           "-o", str(tmp_path / "out"), "--subsets", "T2", "-device", "cpu"],
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("nnunet-kd evaluate-subsets: error: 2 input problem(s)"), lines
    assert "case A: unexpected _0004" in lines[0] and "case B: missing _0002 (T2)" in lines[0]
    assert "case C" not in lines[0] and "case X" not in lines[0]
    assert _tree(tmp_path) == before
