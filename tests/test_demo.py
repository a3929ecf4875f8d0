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
    import json

    work = tmp_path / "demo"
    assert main(["demo", "--workdir", str(work), "--cases", "5", "--test-cases", "4", "--shape", "32",
                 "--trainer", "nnUNetTrainerBarlowKD_smoke"]) == 0
    out = capsys.readouterr().out
    assert "tiny CPU run" in out and "T1ce+FLAIR" in out and "WT_dice" in out
    assert (work / MARKER).is_file()
    pred = work / "predictions" / "nnUNetTrainerBarlowKD_smoke"
    routing = json.loads((pred / "routing.json").read_text())
    by_group = {g["group"]: g for g in routing["groups"]}
    # one case per pattern: teacher for all four, student for T1ce+FLAIR and (ignoring T2) T1ce+T2+FLAIR, FLAIR refused
    assert by_group["T1+T1ce+T2+FLAIR"]["trainer"] == "nnUNetTrainerBarlowKD_smoke_teacher"
    assert by_group["T1ce+FLAIR"]["trainer"] == by_group["T1ce+T2+FLAIR"]["trainer"] == "nnUNetTrainerBarlowKD_smoke"
    assert by_group["T1ce+T2+FLAIR"]["files_ignored"] == ["_0002"]
    assert by_group["FLAIR"]["rule"] == "refused" and "Refused" in out
    refused = by_group["FLAIR"]["cases"]
    assert sorted(p.name for p in pred.glob("*.nii.gz")) == sorted(
        f"{c}.nii.gz" for c in routing["cases"] if c not in refused)
    assert (work / "evaluation" / "nnUNetTrainerBarlowKD_smoke" / "summary.json").is_file()
    report = work / "report"
    assert (report / "report.md").is_file() and list((report / "overlays").glob("*.png"))
    assert any(p.name.startswith("training_") for p in report.glob("*.png"))
    assert str(report / "overlays") in out  # the pictures' paths are printed


def test_demo_epochs_fit_the_budget_and_stay_within_bounds():
    from nnunet_kd.trainers.smoke import demo_epochs

    # 5 s steps, 10 + 2/3 step-equivalents and 1 s overhead per epoch = 54.3 s: 4 epochs fit 240 s, 5 do not
    assert demo_epochs(5.0, 10, 2, 240.0, 2, 12) == 4
    assert demo_epochs(60.0, 10, 2, 240.0, 2, 12) == 2      # a very slow machine still trains 2 epochs
    assert demo_epochs(0.01, 10, 2, 240.0, 2, 12) == 12     # a fast one stops at the upper bound


@pytest.mark.slow
def test_demo_schedule_is_sized_from_a_measured_step(nnunet_env, monkeypatch):
    trainer = nnunet_env.make_trainer("nnUNetTrainerStudentOnly_demo", monkeypatch)
    trainer.demo_train_seconds = 1.0  # less than one epoch: the lower bound applies
    trainer.on_train_start()
    try:
        assert trainer.num_epochs == trainer.demo_min_epochs == 2
        assert trainer.lr_scheduler.max_steps == 2
        log = Path(trainer.log_file).read_text()
        assert "Demo schedule: one training step took" in log and "-> 2 epochs x 10 iterations" in log
    finally:
        trainer.on_train_end()


def test_demo_refuses_a_trainer_without_teacher_before_any_work(tmp_path: Path):
    import subprocess
    import sys

    work = tmp_path / "d"
    proc = subprocess.run([sys.executable, "-m", "nnunet_kd.cli", "demo", "--workdir", str(work), "--trainer",
                           "nnUNetTrainerStudentOnly_demo"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1 and "trains no teacher" in proc.stderr
    assert not work.exists()


@pytest.mark.slow
def test_demo_schedule_resumes_with_the_sized_epoch_count(nnunet_env, monkeypatch):
    import json

    from nnunet_kd.trainers.smoke import DEMO_SCHEDULE_FILE

    trainer = nnunet_env.make_trainer("nnUNetTrainerStudentOnly_demo", monkeypatch)
    trainer.initialize()
    (Path(trainer.output_folder) / DEMO_SCHEDULE_FILE).write_text(json.dumps({"num_epochs": 3}))
    trainer.current_epoch = 1  # as maybe_load_checkpoint leaves it for `--c`
    trainer.on_train_start()
    try:
        assert trainer.num_epochs == 3 and trainer.lr_scheduler.max_steps == 3
    finally:
        trainer.on_train_end()


def test_demo_baseline_must_train_the_kd_trainers_student(tmp_path: Path, capsys):
    """--baseline is nnUNetTrainerStudentOnly_demo, a T1ce + FLAIR student: a KD trainer with another student
    is refused in one line before anything is written."""
    work = tmp_path / "d"
    assert main(["demo", "--workdir", str(work), "--trainer", "nnUNetTrainerBarlowKD_T1Flair", "--baseline"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "T1 + FLAIR student" in err and "T1ce + FLAIR student alone" in err, err
    assert not work.exists()


def test_demo_baseline_routes_follow_the_student(tmp_path: Path):
    """The baseline gets the availability groups the KD run sends to its student (those holding its modalities,
    except all four), computed from the trainer's student, not assumed to be FLAIR + T1ce."""
    from nnunet_kd.demo import DemoConfig, baseline_routes, validate_config

    config = DemoConfig(tmp_path / "d", trainer="nnUNetTrainerBarlowKD_demo", baseline="nnUNetTrainerStudentOnly_demo")
    student = validate_config(config)
    assert student == ("T1ce", "FLAIR")
    folder = tmp_path / "model"
    assert baseline_routes(student, folder) == [f"T1ce,FLAIR={folder}", f"T1ce,T2,FLAIR={folder}"]
    assert baseline_routes(("T1ce", "T2", "FLAIR"), folder) == [f"T1ce,T2,FLAIR={folder}"]
    assert baseline_routes(("T1", "FLAIR"), folder) == []
    assert not config.workdir.exists()
