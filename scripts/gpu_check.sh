#!/usr/bin/env bash
# GPU check of nnunet-kd: in under 8 minutes on one GPU, nnUNetv2_train with the KD trainer for a few iterations at
# nnU-Net's BraTS plans (CUDA autocast and torch.compile on, as nnU-Net runs them), the KD / stock step-time and
# peak-memory ratios, the frozen-teacher ratio and a student prediction of a full-size case; one summary table.
#
#   scripts/gpu_check.sh [--cpu] [--out DIR] [--cache DIR] [--repeats N] [--compile-benchmarks]
#
#   --cpu                 the same steps on CPU with tiny plans (checks the script itself; numbers mean nothing)
#   --out DIR             JSON results of every step (gpu_check.json, bench_*.json)          [./gpu_check_output]
#   --cache DIR           synthetic dataset, built once and reused                                      [OUT/_data]
#   --repeats N           timed rounds of the step benchmarks                                                  [3]
#   --compile-benchmarks  torch.compile the step benchmarks' networks too (nnUNetv2_train always compiles on CUDA)
#   PYTHON=...            Python of the environment where nnunet-kd, nnU-Net and torch are installed   [python3]
#
# Exit status: 0 when every step passed, 1 when any failed (the table says which), 2 without a CUDA device
# (unless --cpu). What each step does: benchmarks/gpu_check.py.
set -euo pipefail

if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then
    sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
    exit 0
fi
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
exec "$PYTHON" -m benchmarks.gpu_check "$@"
