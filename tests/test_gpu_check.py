"""scripts/gpu_check.sh --cpu: the GPU check's steps run end to end on a tiny dataset and print one table."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import BIN

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "gpu_check.sh"


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results", "nnUNet_extTrainer")}
    env.update({"PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}", "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"})
    return env


def test_help_lists_the_options():
    proc = subprocess.run(["bash", str(SCRIPT), "--help"], capture_output=True, text=True, env=_env(), timeout=30)
    assert proc.returncode == 0
    assert "--cpu" in proc.stdout and "Exit status" in proc.stdout


@pytest.mark.slow
@pytest.mark.expensive  # 298 s in a quiet run of the whole suite (2-core VM): run with PYTEST_ARGS="-m expensive"
def test_gpu_check_on_cpu_passes_and_prints_the_table(tmp_path: Path):
    out = tmp_path / "out"
    proc = subprocess.run(["bash", str(SCRIPT), "--cpu", "--out", str(out), "--repeats", "1"], capture_output=True,
                          text=True, env=_env(), timeout=900, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    table = proc.stdout[proc.stdout.index("GPU check (cpu"):]
    for row in ("nnUNetv2_train KD (smoke)", "KD step / stock 4-ch step", "KD step / (4-ch + 2-ch steps)",
                "KD peak memory / stock 4-ch", "frozen-teacher step / KD step", "student predicts a full-size case"):
        line = next(x for x in table.splitlines() if x.startswith(f"| {row}"))
        assert "| ok " in line, line
    assert "RESULT: PASS" in table
    result = json.loads((out / "gpu_check.json").read_text())
    assert result["ok"] and set(result["steps"]) == {"dataset", "train", "train_step", "two_stage", "predict"}
    assert result["steps"]["train_step"]["ratios"]["kd_over_stock_4ch"]["of_medians"] > 0  # measured, not judged
    assert result["steps"]["two_stage"]["ratios"]["two_stage_over_single_stage"]["of_medians"] > 0
    assert result["steps"]["predict"]["size"] == [32, 32, 32]


@pytest.mark.slow
def test_gpu_check_exits_nonzero_and_says_which_step_failed(tmp_path: Path):
    """A dataset cache that is a file: the dataset step fails, the rest cannot run, exit 1 and FAIL in the table."""
    cache = tmp_path / "cache"
    cache.write_text("not a folder")
    proc = subprocess.run(["bash", str(SCRIPT), "--cpu", "--out", str(tmp_path / "out"), "--cache", str(cache)],
                          capture_output=True, text=True, env=_env(), timeout=300, cwd=tmp_path)
    assert proc.returncode == 1
    assert "| dataset" in proc.stdout and "FAIL" in proc.stdout and "RESULT: FAIL" in proc.stdout
