"""Bad input ends in one line naming the file, a non-zero exit and nothing written -- for every subcommand.

Each case runs the real ``nnunet-kd`` console script in a subprocess against an output it cannot write (a path under
a regular file: ENOTDIR even for root, or under read-only ``/sys``), a malformed JSON file or a damaged checkpoint,
wherever the command writes or reads one. All inputs are tiny fabricated files built once per module; every case
stops within seconds. The kill tests stop a real ``select-modalities`` with SIGTERM and SIGKILL mid-copy.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from brats_release_builders import canonical_seg, make_2021, make_msd, write
from test_subset_export import fake_any_subset_folder, fake_plans

NNUNET_KD = str(Path(sys.executable).parent / "nnunet-kd")
SHAPE = (16, 16, 16)
MALFORMED_JSON = '{"channel_names": {"0": "T1",'
DAMAGED_CHECKPOINT = b"PK\x03\x04 this is no zip archive, the download broke off"
KD_TRAINER = "nnUNetTrainerBarlowKD"
ANY_SUBSET_FOLDER = "nnUNetTrainerBarlowKD_AnySubset_smoke__nnUNetPlans__3d_fullres"


@dataclass
class World:
    """Fabricated inputs, shared by all cases (none of them may change it)."""

    root: Path

    def __getattr__(self, name: str) -> Path:  # world.images -> root/images etc.
        if name.startswith("_"):
            raise AttributeError(name)
        return self.root / name

    @property
    def unwritable(self) -> Path:
        return self.root / "a_file" / "out"  # a path under a regular file: ENOTDIR, also for root

    def env(self) -> dict[str, str]:
        env = dict(os.environ, nnUNet_raw=str(self.raw), nnUNet_preprocessed=str(self.pre),
                   nnUNet_results=str(self.res))
        env.pop("NNUNET_KD_DEBUG", None)
        return env


def _kd_checkpoint() -> dict:
    return {"network_weights": {"w": torch.ones(1)}, "trainer_name": KD_TRAINER, "current_epoch": 1,
            "init_args": {"plans": fake_plans(), "configuration": "3d_fullres", "fold": 0, "dataset_json": {}},
            "nnunet_kd": {"kd_modules": {"teacher.w": torch.ones(1)}, "teacher_dataset_json": {"labels": {}},
                          "teacher_plans": fake_plans()}}


def _model_copy(src: Path, dst_root: Path) -> Path:
    dst = dst_root / src.name
    shutil.copytree(src, dst)
    return dst


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    from nnunet_kd.brats import make_dataset_json
    from nnunet_kd.cli import main

    w = World(tmp_path_factory.mktemp("bad_input"))
    for name in ("raw", "pre", "res", "preds", "gt", "images"):
        (w.root / name).mkdir()
    w.a_file.write_text("a regular file, not a folder\n")
    w.bad_json.write_text(MALFORMED_JSON)
    seg = canonical_seg(SHAPE)
    write(w.preds / "A.nii.gz", seg)
    write(w.gt / "A.nii.gz", seg)
    for k in range(4):
        write(w.images / f"A_{k:04d}.nii.gz", np.full(SHAPE, k + 1, np.float32))
    make_2021(w.release, n=1)
    make_msd(w.msd_release, n_train=1, n_test=0)
    (w.msd_release / "Task01_BrainTumour" / "dataset.json").write_text(MALFORMED_JSON)

    # any-subset models: good, malformed dataset.json, damaged checkpoint
    model = fake_any_subset_folder(w.root / "models")
    (_model_copy(model, w.root / "models_bad_json") / "dataset.json").write_text(MALFORMED_JSON)
    (_model_copy(model, w.root / "models_bad_ckpt") / "fold_0" / "checkpoint_final.pth").write_bytes(
        DAMAGED_CHECKPOINT)
    # KD runs whose teacher export-teacher writes out: good and damaged checkpoint
    for name, damaged in (("kd", False), ("kd_bad", True)):
        fold = w.root / name / f"{KD_TRAINER}__nnUNetPlans__3d_fullres" / "fold_0"
        fold.mkdir(parents=True)
        if damaged:
            (fold / "checkpoint_final.pth").write_bytes(DAMAGED_CHECKPOINT)
        else:
            torch.save(_kd_checkpoint(), fold / "checkpoint_final.pth")
    # set-teacher: malformed plans (Dataset901), damaged teacher checkpoint (Dataset902)
    dataset_json = make_dataset_json(8, "X")
    (w.pre / "Dataset901_BadPlans").mkdir()
    (w.pre / "Dataset901_BadPlans" / "nnUNetPlans.json").write_text(MALFORMED_JSON)
    (w.pre / "Dataset901_BadPlans" / "dataset.json").write_text(json.dumps(dataset_json))
    (w.pre / "Dataset902_BadTeacher").mkdir()
    (w.pre / "Dataset902_BadTeacher" / "nnUNetPlans.json").write_text(json.dumps(fake_plans()))
    (w.pre / "Dataset902_BadTeacher" / "dataset.json").write_text(json.dumps(dataset_json))
    teacher = w.res / "Dataset902_BadTeacher" / "nnUNetTrainer__nnUNetPlans__3d_fullres" / "fold_0"
    teacher.mkdir(parents=True)
    (teacher / "checkpoint_final.pth").write_bytes(DAMAGED_CHECKPOINT)
    # pseudo-labels: a malformed part report, a malformed merged report; raw sources for make-distill-dataset
    (w.root / "pl_parts" / "parts").mkdir(parents=True)
    (w.root / "pl_parts" / "parts" / "part_0_of_1.json").write_text(MALFORMED_JSON)
    (w.root / "pl_merged").mkdir()
    (w.root / "pl_merged" / "pseudolabels.json").write_text(MALFORMED_JSON)
    (w.raw / "Dataset903_Src").mkdir()
    (w.raw / "Dataset903_Src" / "dataset.json").write_text(json.dumps(dataset_json))
    (w.raw / "Dataset904_SrcBad").mkdir()
    (w.raw / "Dataset904_SrcBad" / "dataset.json").write_text(MALFORMED_JSON)
    src = w.raw / "Dataset908_Src"  # a labelled dataset and a pseudo-label report make-distill-dataset accepts
    for k in range(4):
        write(src / "imagesTr" / f"L1_{k:04d}.nii.gz", np.full(SHAPE, k + 1, np.float32))
    write(src / "labelsTr" / "L1.nii.gz", seg)
    (src / "dataset.json").write_text(json.dumps(dataset_json))
    write(w.root / "pl_ok" / "labels" / "A.nii.gz", seg)
    from nnunet_kd.distillation.pseudolabel import REPORT_FORMAT, file_sha256

    (w.root / "pl_ok" / "pseudolabels.json").write_text(json.dumps(
        {"format": REPORT_FORMAT, "images": str(w.images), "file_ending": ".nii.gz", "members": [], "folds": ["0"],
         "cases": {"A": {"status": "ok", "label_sha256": file_sha256(w.root / "pl_ok" / "labels" / "A.nii.gz")}},
         "rejected": {}}))
    # predict: a trained dataset (an any-subset model), one whose model has a malformed dataset.json, and input
    # folders with a channel the dataset lacks and with the same channel in two formats
    for dataset, bad in (("Dataset907_Route", False), ("Dataset910_RouteBadJson", True)):
        routed = _model_copy(model, w.res / dataset)
        if bad:
            (routed / "dataset.json").write_text(MALFORMED_JSON)
    for name, extra in (("images_unknown", "A_0004.nii.gz"), ("images_dup", "A_0000.nii")):
        shutil.copytree(w.images, w.root / name)
        shutil.copy(w.images / "A_0000.nii.gz", w.root / name / extra)
    # evaluation outputs for report: good and with a malformed summary.json
    assert main(["evaluate", str(w.preds), str(w.gt), "-o", str(w.eval_ok), "-np", "1", "--no-progress"]) == 0
    shutil.copytree(w.eval_ok, w.eval_bad)
    (w.eval_bad / "summary.json").write_text(MALFORMED_JSON)
    return w


@dataclass(frozen=True)
class Case:
    argv: Callable[[World], list[str]]
    names: Callable[[World], Path | str]  # what the error line must name
    env: Callable[[World], dict[str, str]] | None = None


U = "unwritable output"
J = "malformed JSON"
C = "damaged checkpoint"
CASES: dict[tuple[str, str], Case] = {
    ("synth", U): Case(lambda w: ["synth", str(w.unwritable), "--cases", "1", "--shape", "16", "--no-progress"],
                       lambda w: w.unwritable),
    ("demo", U): Case(lambda w: ["demo", "--workdir", str(w.unwritable)], lambda w: w.unwritable),
    ("synth", "grid too large"): Case(lambda w: ["synth", str(w.root / "s"), "--cases", "1", "--shape", "100000"],
                                      lambda w: "100000x100000x100000"),
    ("demo", "no test cases"): Case(lambda w: ["demo", "--workdir", str(w.root / "d"), "--test-cases", "0"],
                                    lambda w: "--test-cases"),
    ("demo", "grid too large"): Case(lambda w: ["demo", "--workdir", str(w.root / "d"), "--shape", "100000"],
                                     lambda w: "100000x100000x100000"),
    ("demo", "unknown trainer"): Case(lambda w: ["demo", "--workdir", str(w.root / "d"), "--trainer", "NoSuchTrainer"],
                                      lambda w: "NoSuchTrainer"),
    ("demo", "workdir is a file"): Case(lambda w: ["demo", "--workdir", str(w.a_file)], lambda w: w.a_file),
    ("convert-brats", U): Case(lambda w: ["convert-brats", str(w.release), "-d", "950"],
                               lambda w: w.unwritable, lambda w: {"nnUNet_raw": str(w.unwritable)}),
    ("convert-brats", J): Case(lambda w: ["convert-brats", str(w.msd_release), "-d", "951"],
                               lambda w: w.msd_release / "Task01_BrainTumour" / "dataset.json"),
    ("select-modalities", U): Case(lambda w: ["select-modalities", str(w.images), str(w.unwritable), "--keep", "T2"],
                                   lambda w: w.unwritable),
    ("select-modalities", J): Case(lambda w: ["select-modalities", str(w.images), str(w.root / "sel"), "--keep", "T2",
                                              "--dataset-json", str(w.bad_json)], lambda w: w.bad_json),
    ("export-brats", U): Case(lambda w: ["export-brats", str(w.preds), str(w.unwritable), "--convention", "2021"],
                              lambda w: w.unwritable),
    ("export-teacher", U): Case(lambda w: ["export-teacher", str(w.kd / f"{KD_TRAINER}__nnUNetPlans__3d_fullres"),
                                           "-o", str(w.unwritable)], lambda w: w.unwritable),
    ("export-teacher", C): Case(lambda w: ["export-teacher", str(w.kd_bad / f"{KD_TRAINER}__nnUNetPlans__3d_fullres"),
                                           "-o", str(w.root / "teacher")],
                                lambda w: w.kd_bad / f"{KD_TRAINER}__nnUNetPlans__3d_fullres" / "fold_0"),
    ("set-teacher", J): Case(lambda w: ["set-teacher", "-d", "901"],
                             lambda w: w.pre / "Dataset901_BadPlans" / "nnUNetPlans.json"),
    ("set-teacher", C): Case(lambda w: ["set-teacher", "-d", "902"],
                             lambda w: w.res / "Dataset902_BadTeacher" / "nnUNetTrainer__nnUNetPlans__3d_fullres"
                             / "fold_0" / "checkpoint_final.pth"),
    ("export-subset", U): Case(lambda w: ["export-subset", str(_model(w, "models")), "--keep", "T2",
                                          "-o", str(w.unwritable)], lambda w: w.unwritable),
    ("export-subset", J): Case(lambda w: ["export-subset", str(_model(w, "models_bad_json")), "--keep", "T2",
                                          "-o", str(w.root / "sub")],
                               lambda w: _model(w, "models_bad_json") / "dataset.json"),
    ("export-subset", C): Case(lambda w: ["export-subset", str(_model(w, "models_bad_ckpt")), "--keep", "T2",
                                          "-o", str(w.root / "sub")],
                               lambda w: _model(w, "models_bad_ckpt") / "fold_0" / "checkpoint_final.pth"),
    ("check-inputs", J): Case(lambda w: ["check-inputs", str(_model(w, "models_bad_json")), str(w.images)],
                              lambda w: _model(w, "models_bad_json") / "dataset.json"),
    ("evaluate-subsets", U): Case(lambda w: ["evaluate-subsets", str(_model(w, "models")), str(w.images), str(w.gt),
                                             "-o", str(w.unwritable), "--subsets", "T2", "-device", "cpu"],
                                  lambda w: w.unwritable),
    ("evaluate-subsets", J): Case(lambda w: ["evaluate-subsets", str(_model(w, "models_bad_json")), str(w.images),
                                             str(w.gt), "-o", str(w.root / "es"), "-device", "cpu"],
                                  lambda w: _model(w, "models_bad_json") / "dataset.json"),
    ("evaluate-subsets", C): Case(lambda w: ["evaluate-subsets", str(_model(w, "models_bad_ckpt")), str(w.images),
                                             str(w.gt), "-o", str(w.root / "es"), "-device", "cpu"],
                                  lambda w: _model(w, "models_bad_ckpt") / "fold_0" / "checkpoint_final.pth"),
    ("pseudolabel", J): Case(lambda w: ["pseudolabel", "--merge", "-o", str(w.pl_parts)],
                             lambda w: w.pl_parts / "parts" / "part_0_of_1.json"),
    ("pseudolabel", "malformed model JSON"): Case(
        lambda w: ["pseudolabel", "-i", str(w.images), "-o", str(w.root / "pl_new"), "--models",
                   str(_model(w, "models_bad_json")), "-device", "cpu"],
        lambda w: _model(w, "models_bad_json") / "dataset.json"),
    ("make-distill-dataset", U): Case(lambda w: ["make-distill-dataset", "-s", str(w.raw / "Dataset908_Src"),
                                                 "-p", str(w.pl_ok), "-d", "909"],
                                      lambda w: w.a_file, lambda w: {"nnUNet_raw": str(w.unwritable)}),
    ("make-distill-dataset", J): Case(lambda w: ["make-distill-dataset", "-s", str(w.raw / "Dataset903_Src"),
                                                 "-p", str(w.pl_merged), "-d", "905"],
                                      lambda w: w.pl_merged / "pseudolabels.json"),
    ("make-distill-dataset", "malformed source JSON"): Case(
        lambda w: ["make-distill-dataset", "-s", str(w.raw / "Dataset904_SrcBad"), "-p", str(w.pl_merged),
                   "-d", "906"], lambda w: w.raw / "Dataset904_SrcBad" / "dataset.json"),
    ("predict", U): Case(lambda w: ["predict", "-i", str(w.images), "-o", str(w.unwritable), "-d", "907"],
                         lambda w: w.unwritable),
    ("predict", J): Case(lambda w: ["predict", "-i", str(w.images), "-o", str(w.root / "pr"), "-d", "910"],
                         lambda w: w.res / "Dataset910_RouteBadJson" / f"{ANY_SUBSET_FOLDER}" / "dataset.json"),
    ("predict", "unknown channel file"): Case(
        lambda w: ["predict", "-i", str(w.images_unknown), "-o", str(w.root / "pr"), "-d", "907"],
        lambda w: "case A: file A_0004.nii.gz is channel _0004, which this dataset does not have"),
    ("predict", "duplicate channel file"): Case(
        lambda w: ["predict", "-i", str(w.images_dup), "-o", str(w.root / "pr"), "-d", "907"],
        lambda w: "case A: duplicate _0000 file: A_0000.nii beside A_0000.nii.gz"),
    ("evaluate", U): Case(lambda w: ["evaluate", str(w.preds), str(w.gt), "-o", str(w.unwritable), "-np", "1",
                                     "--no-progress"], lambda w: w.a_file),
    ("report", U): Case(lambda w: ["report", str(w.eval_ok), "-o", str(w.unwritable)], lambda w: w.a_file),
    ("report", J): Case(lambda w: ["report", str(w.eval_bad), "-o", str(w.root / "rep")],
                        lambda w: w.eval_bad / "summary.json"),
}


def _sys_refuses_writes() -> bool:
    """Whether /sys refuses a new folder (sysfs does, also for root); then it stands for a read-only output."""
    try:
        os.mkdir("/sys/nnunet_kd_probe")
    except OSError:
        return True
    os.rmdir("/sys/nnunet_kd_probe")
    return False


if _sys_refuses_writes():
    CASES[("export-brats", "read-only file system (/sys)")] = Case(
        lambda w: ["export-brats", str(w.preds), "/sys/nnunet_kd_out", "--convention", "2021"],
        lambda w: "/sys/nnunet_kd_out")


if not torch.cuda.is_available():  # refused before any work, not after minutes of synthesis and preprocessing
    CASES[("demo", "no CUDA device")] = Case(
        lambda w: ["demo", "--workdir", str(w.root / "d"), "--device", "cuda"], lambda w: "--device cuda")


def _model(w: World, group: str) -> Path:
    return w.root / group / "nnUNetTrainerBarlowKD_AnySubset_smoke__nnUNetPlans__3d_fullres"


def _tree(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_size if p.is_file() else -1 for p in sorted(root.rglob("*"))}


def run_cli(argv: list[str], env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([NNUNET_KD, *argv], env=env, capture_output=True, text=True, timeout=timeout)


def assert_one_line_error(proc: subprocess.CompletedProcess, command: str, names: str) -> None:
    assert proc.returncode not in (0, None), proc.stdout
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"nnunet-kd {command}: error:"), proc.stderr
    assert names in lines[0], (names, lines[0])


def test_the_cases_cover_every_writing_or_reading_subcommand():
    from test_cli import _names

    covered = {command for command, _ in CASES}
    assert covered == set(_names()) - {"ext-path"}  # ext-path only prints a folder name
    for command in ("export-teacher", "export-subset", "evaluate-subsets", "set-teacher"):
        assert (command, C) in CASES


SLOW_CASES = {("demo", "unknown trainer")}  # nnU-Net imports every trainer module to look for it (~10 s)


@pytest.mark.parametrize("command, kind", [
    pytest.param(c, k, id=f"{c}-{k}".replace(" ", "_"), marks=[pytest.mark.slow] if (c, k) in SLOW_CASES else [])
    for c, k in sorted(CASES)])
def test_bad_input_is_one_line_naming_the_file_and_writes_nothing(world: World, command: str, kind: str):
    case = CASES[(command, kind)]
    env = world.env()
    env.update(case.env(world) if case.env else {})
    before = _tree(world.root)
    proc = run_cli(case.argv(world), env)
    assert_one_line_error(proc, command, str(case.names(world)))
    assert "Traceback" not in proc.stderr
    assert _tree(world.root) == before  # nothing written, nothing half-written, nothing removed


def test_debug_variable_shows_the_traceback(world: World):
    argv = ["select-modalities", str(world.images), str(world.unwritable), "--keep", "T2"]
    quiet = run_cli(argv, world.env())
    assert quiet.returncode != 0 and len(quiet.stderr.strip().splitlines()) == 1
    proc = run_cli(argv, dict(world.env(), NNUNET_KD_DEBUG="1"))
    assert proc.returncode != 0 and "Traceback (most recent call last)" in proc.stderr


def test_an_id_used_under_another_name_in_preprocessed_or_results_is_refused(world: World):
    before = _tree(world.root)
    proc = run_cli(["convert-brats", str(world.release), "-d", "902", "-n", "Other"], world.env())
    assert_one_line_error(proc, "convert-brats", str(world.pre / "Dataset902_BadTeacher"))
    assert str(world.res / "Dataset902_BadTeacher") in proc.stderr and "two dataset names" in proc.stderr
    proc = run_cli(["make-distill-dataset", "-s", str(world.raw / "Dataset903_Src"), "-p", str(world.pl_merged),
                    "-d", "901"], world.env())
    assert_one_line_error(proc, "make-distill-dataset", str(world.pre / "Dataset901_BadPlans"))
    assert _tree(world.root) == before


# ------------------------------------------------------------------------------------------ SIGTERM / SIGKILL
def _slow_images(folder: Path, n_cases: int) -> None:
    """``n_cases`` cases whose files decompress to 64 MB each (all zeros, so tiny on disk): slow to check."""
    import nibabel as nib

    folder.mkdir(parents=True)
    first = folder / "S000_0000.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((256, 256, 256), np.float32), np.eye(4)), str(first))
    for case in range(n_cases):
        for k in range(4):
            path = folder / f"S{case:03d}_{k:04d}.nii.gz"
            if path != first:
                os.link(first, path)


def _start_and_wait_for_temp(src: Path, out: Path) -> tuple[subprocess.Popen, Path]:
    proc = subprocess.Popen([NNUNET_KD, "select-modalities", str(src), str(out), "--keep", "T1,T1ce,T2,FLAIR"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    tmp = out.parent / f".{out.name}.nnunet-kd-tmp-{proc.pid}"
    deadline = time.time() + 120
    while not (tmp.is_dir() and any(tmp.iterdir())):
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline, "select-modalities never started writing"
        time.sleep(0.05)
    return proc, tmp


@pytest.fixture(scope="module")
def slow_images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("slow") / "images"
    _slow_images(folder, 40)
    return folder


def test_sigterm_mid_write_removes_the_half_written_folder(slow_images: Path, tmp_path: Path):
    out = tmp_path / "out"
    proc, tmp = _start_and_wait_for_temp(slow_images, out)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143
    assert err.strip().splitlines()[-1] == "nnunet-kd select-modalities: terminated (SIGTERM); partial outputs removed"
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_sigkill_leftovers_are_removed_by_the_next_run(slow_images: Path, tmp_path: Path, world: World):
    out = tmp_path / "out"
    proc, tmp = _start_and_wait_for_temp(slow_images, out)
    proc.kill()
    proc.communicate(timeout=60)
    assert tmp.is_dir()  # a SIGKILL cannot be caught: the half-written folder stays ...
    live = tmp_path / f".out.nnunet-kd-tmp-{os.getpid()}"  # ... as does the folder of a run that is still alive
    live.mkdir()
    rerun = run_cli(["select-modalities", str(world.images), str(out), "--keep", "FLAIR"], world.env())
    assert rerun.returncode == 0, rerun.stderr
    assert f"removed {tmp}, left by an interrupted run (pid {proc.pid})" in rerun.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, "out"])
    assert sorted(p.name for p in out.iterdir()) == ["A_0003.nii.gz"]


def test_set_aside_output_of_a_killed_overwrite_is_restored(tmp_path: Path):
    from nnunet_kd.safe_io import remove_stale_siblings

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / f".model.nnunet-kd-old-{dead.pid}").mkdir()  # killed after setting the old output aside
    (tmp_path / f".model.nnunet-kd-old-{dead.pid}" / "plans.json").write_text("{}")
    (tmp_path / "other").mkdir()
    (tmp_path / f".other.nnunet-kd-old-{dead.pid}").mkdir()  # killed after the new output was in place
    (tmp_path / f".other.nnunet-kd-del-{dead.pid}").mkdir()  # killed while deleting the old output
    (tmp_path / f".Dataset005_X.tmp-{dead.pid}").mkdir()  # a raw dataset build (make-distill-dataset)
    (tmp_path / f".notes.tmp-{dead.pid}").write_text("another program's file")  # not ours: kept
    lines: list[str] = []
    remove_stale_siblings(tmp_path, lines.append)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f".notes.tmp-{dead.pid}", "model", "other"]
    assert (tmp_path / "model" / "plans.json").is_file() and len(lines) == 4


def test_sigkilled_convert_brats_leaves_no_pile_in_nnunet_raw(world: World, tmp_path: Path):
    import nibabel as nib

    big = tmp_path / "big.nii.gz"  # 64 MB of zeros once decompressed: each case takes a while to read
    nib.save(nib.Nifti1Image(np.zeros((256, 256, 256), np.float32), np.eye(4)), str(big))
    for i in range(20):
        case = tmp_path / "release" / f"BraTS2021_{i:05d}"
        case.mkdir(parents=True)
        for suffix in ("t1", "t1ce", "t2", "flair", "seg"):
            os.link(big, case / f"BraTS2021_{i:05d}_{suffix}.nii.gz")
    raw = tmp_path / "raw"
    env = dict(world.env(), nnUNet_raw=str(raw))
    proc = subprocess.Popen([NNUNET_KD, "convert-brats", str(tmp_path / "release"), "-d", "960"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    tmp = raw / f".Dataset960_BraTS.nnunet-kd-tmp-{proc.pid}"
    deadline = time.time() + 120
    while not (tmp / "imagesTr").is_dir() or not any((tmp / "imagesTr").iterdir()):
        assert proc.poll() is None and time.time() < deadline, "convert-brats never started writing"
        time.sleep(0.05)
    proc.kill()
    proc.wait(timeout=60)
    assert [p.name for p in raw.iterdir()] == [tmp.name]
    rerun = run_cli(["convert-brats", str(world.release), "-d", "960"], env)
    assert rerun.returncode == 0, rerun.stderr
    assert sorted(p.name for p in raw.iterdir()) == ["Dataset960_BraTS"]
