"""The README's demo command: its safety checks, and one end-to-end run with the smoke schedule."""

from __future__ import annotations

from pathlib import Path

import pytest

from nnunet_kd.cli import main
from nnunet_kd.demo import MARKER, _prepare_workdir


def test_demo_refuses_a_folder_it_did_not_create(tmp_path: Path, capsys):
    (tmp_path / "precious.txt").write_text("keep me")
    assert main(["demo", "--workdir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not a previous demo folder" in err
    assert (tmp_path / "precious.txt").read_text() == "keep me"


def test_previous_demo_folder_is_replaced(tmp_path: Path):
    work = tmp_path / "demo"
    _prepare_workdir(work)
    (work / "old_output.txt").write_text("from the last run")
    _prepare_workdir(work)
    assert (work / MARKER).is_file() and not (work / "old_output.txt").exists()


def test_demo_needs_enough_cases_for_five_folds(tmp_path: Path, capsys):
    assert main(["demo", "--workdir", str(tmp_path / "d"), "--cases", "3"]) == 2
    assert "at least 5" in capsys.readouterr().err


@pytest.mark.slow
def test_demo_runs_end_to_end_with_smoke_schedule(tmp_path: Path, capsys):
    work = tmp_path / "demo"
    assert main(["demo", "--workdir", str(work), "--cases", "5", "--test-cases", "2", "--shape", "32",
                 "--trainer", "nnUNetTrainerBarlowKD_smoke"]) == 0
    out = capsys.readouterr().out
    assert "nnUNetTrainerBarlowKD_smoke" in out and "Dice WT" in out and "tiny CPU run" in out
    assert "check-inputs: every case has exactly the model's files, T1ce (_0001), FLAIR (_0003)" in out
    assert (work / MARKER).is_file()
    preds = sorted((work / "predictions" / "nnUNetTrainerBarlowKD_smoke").glob("*.nii.gz"))
    assert len(preds) == 2
    assert sorted(p.name for p in (work / "test_flair_t1ce").iterdir())[:2] == [
        "BraTS2021_00000_0001.nii.gz", "BraTS2021_00000_0003.nii.gz"]
    assert (work / "evaluation" / "nnUNetTrainerBarlowKD_smoke" / "summary.json").is_file()
