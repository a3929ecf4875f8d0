"""scripts/reproduce_reduced.sh end to end on a tiny synthetic BraTS release, with ``_smoke`` trainers on CPU.

The script runs convert -> split -> plan/preprocess -> BarlowKD -> one seed-001 architecture -> ensemble and
pseudo-labels -> distillation dataset -> distilled model -> evaluate -> report -> comparison table. Teacher-only
and student-only trainings are skipped here (``SKIP=teacher,student``: stock nnU-Net and the KD trainer with
``use_teacher=False`` are trained in other tests); only one architecture is trained, the cheapest (UNet: the others
are tested in tests/test_architecture_trainers.py, and the Residual U-Net is trained here as the distilled model).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import BIN

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "reproduce_reduced.sh"
N_LABELED = 10  # TEST_EVERY=5 / UNLABELED_EVERY=5: cases 0, 5 -> test; 1, 6 -> unlabelled pool; 6 train


def script_env(**settings: str) -> dict[str, str]:
    env = dict(os.environ)
    for key in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results", "nnUNet_extTrainer"):
        env.pop(key, None)  # the script sets its own
    env.update({"PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}", "PYTHON": sys.executable,
                "nnUNet_n_proc_DA": "0", "nnUNet_def_n_proc": "1", "nnUNet_compile": "false"})
    env.update(settings)
    return env


def run_script(*args: str, timeout: float = 1500, **settings: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), *args], env=script_env(**settings), capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


@pytest.fixture(scope="module")
def reproduced(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess]:
    from nnunet_kd.synthetic import write_brats_folder

    root = tmp_path_factory.mktemp("reproduce")
    source = root / "BraTS2021_synthetic"
    write_brats_folder(source, N_LABELED, layout="2021", seed=7, shape=(32, 32, 32), progress=False)
    work = root / "work"
    proc = run_script(f"SOURCE={source}", f"WORK={work}", "TRAINER_SUFFIX=_smoke", "DEVICE=cpu", "NUM_PROCESSES=1",
                      "TTA=0", "INCLUDE_EMPTY=1", "SKIP=teacher,student", "ARCHITECTURES=UNet")
    assert proc.returncode == 0, f"{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return work, proc


@pytest.mark.slow
def test_split_holds_out_test_cases_and_hides_pool_labels(reproduced):
    work, _ = reproduced
    raw = work / "nnUNet_raw" / "Dataset521_BraTS"
    meta = json.loads((raw / "dataset.json").read_text())
    cases = [f"BraTS2021_{i:05d}" for i in range(N_LABELED)]
    test, pool = [cases[0], cases[5]], [cases[1], cases[6]]
    assert meta["numTraining"] == 6
    assert sorted(p.name for p in (work / "test_set" / "labels").iterdir()) == [f"{c}.nii.gz" for c in test]
    assert sorted(p.name for p in (work / "heldout_pool_labels").iterdir()) == [f"{c}.nii.gz" for c in pool]
    train_labels = {p.name[: -len(".nii.gz")] for p in (raw / "labelsTr").iterdir()}
    assert train_labels == set(cases) - set(test) - set(pool)
    assert {p.name[: -len("_0000.nii.gz")] for p in (raw / "imagesTs").glob("*_0000.nii.gz")} == set(pool)
    assert len(list((work / "test_set" / "images").iterdir())) == 4 * len(test)
    student_inputs = sorted(p.name for p in (work / "test_set" / "images_t1ce_flair").iterdir())
    assert student_inputs == sorted(f"{c}_{s}.nii.gz" for c in test for s in ("0001", "0003"))


@pytest.mark.slow
def test_distillation_dataset_adds_the_pseudo_labelled_pool(reproduced):
    work, _ = reproduced
    meta = json.loads((work / "nnUNet_raw" / "Dataset522_BraTSDistill" / "dataset.json").read_text())
    assert sorted(meta["nnunet_kd_pseudo_labelled"]) == ["BraTS2021_00001", "BraTS2021_00006"]
    assert (work / "nnUNet_results" / "Dataset522_BraTSDistill" /
            "nnUNetTrainerResidualUNetDistill_smoke__nnUNetPlans__3d_fullres" / "fold_0" /
            "checkpoint_final.pth").is_file()


@pytest.mark.slow
def test_every_run_is_evaluated_on_the_test_set_and_compared(reproduced):
    work, proc = reproduced
    runs = ("barlow_kd", "arch_UNet", "ensemble", "distilled")
    for run in runs:
        summary = json.loads((work / "eval" / run / "summary.json").read_text())
        assert summary["num_cases"] == 2, run
        assert not summary["missing_predictions"], run
        assert sorted(p.name for p in (work / "pred" / run).glob("*.nii.gz")) == \
            ["BraTS2021_00000.nii.gz", "BraTS2021_00005.nii.gz"], run
    table = (work / "comparison.md").read_text()
    rows = {line.split("|")[1].strip(): line for line in table.splitlines() if line.startswith("| ")}
    assert set(runs) <= set(rows)
    assert "89.70 / 91.11 / 92.20" in rows["barlow_kd"]
    assert "75.19 / 82.66 / 87.07" in rows["distilled"]
    report = (work / "report" / "report.md").read_text()
    assert all(run in report for run in runs)
    assert (work / "report" / "dice_distribution.png").stat().st_size > 0
    timings = (work / "timings.tsv").read_text()
    assert "train_nnUNetTrainerBarlowKD_smoke_521_fold0\t" in timings
    assert "comparison" in proc.stdout


@pytest.mark.slow
def test_second_run_reuses_finished_steps(reproduced, tmp_path):
    work, _ = reproduced
    source = next(p for p in work.parent.iterdir() if p.name.startswith("BraTS2021"))
    proc = run_script(f"SOURCE={source}", f"WORK={work}", "TRAINER_SUFFIX=_smoke", "DEVICE=cpu", "NUM_PROCESSES=1",
                      "TTA=0", "INCLUDE_EMPTY=1", "SKIP=teacher,student", "ARCHITECTURES=UNet", timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "== train_nnUNetTrainerBarlowKD_smoke_521_fold0: done before, skipped" in proc.stdout
    assert "== convert_split: done before, skipped" in proc.stdout


@pytest.mark.slow
def test_epochs_generates_trainer_variants_nnunet_finds(reproduced, tmp_path):
    work, _ = reproduced
    dry = tmp_path / "dry"
    proc = run_script(f"SOURCE={tmp_path}", f"WORK={dry}", "EPOCHS=3", "DRY_RUN=1", "DEVICE=cpu", timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "-tr nnUNetTrainerBarlowKD_3epochs" in proc.stdout
    assert "-tr nnUNetTrainerResidualUNetDistill_3epochs" in proc.stdout
    assert not (dry / "nnUNet_raw" / "Dataset521_BraTS").exists()  # a dry run converts nothing
    check = (
        "import sys, torch\n"
        "from nnunetv2.run.run_training import get_trainer_from_args\n"
        "from nnunet_kd.trainers.barlow_kd import nnUNetTrainerBarlowKD\n"
        "t = get_trainer_from_args('521', '3d_fullres', 0, 'nnUNetTrainerBarlowKD_3epochs', device=torch.device('cpu'))\n"
        "assert isinstance(t, nnUNetTrainerBarlowKD), type(t)\n"
        "print('EPOCHS', t.num_epochs, type(t).__name__)\n"
    )
    from nnunet_kd.paths import trainer_registry_folder

    env = script_env(nnUNet_preprocessed=str(work / "nnUNet_preprocessed"), nnUNet_raw=str(work / "nnUNet_raw"),
                     nnUNet_results=str(tmp_path / "results"),
                     nnUNet_extTrainer=f"{trainer_registry_folder()}{os.pathsep}{dry / 'trainers'}")
    out = subprocess.run([sys.executable, "-c", check], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "EPOCHS 3 nnUNetTrainerBarlowKD_3epochs" in out.stdout


@pytest.mark.parametrize("args, message", [((), "SOURCE is not set"),
                                           (("SOURCE=/nonexistent/brats",), "is not a folder"),
                                           (("oops",), "unexpected argument 'oops'")])
def test_bad_settings_stop_with_one_line(args, message, tmp_path):
    proc = run_script(*args, f"WORK={tmp_path / 'w'}", timeout=60)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
