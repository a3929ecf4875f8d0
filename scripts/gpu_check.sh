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
#   PYTHON=...            Python of the environment where nnunet-kd, nnU-Net and torch are installed
#                         [the repository's .venv/bin/python (made by `make test`) if it exists, else python3]
#
# Exit status: 0 when every step passed, 1 when any failed (the table says which), 2 without a CUDA device
# (unless --cpu). What each step does: benchmarks/gpu_check.py.
set -euo pipefail

if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then
    sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
    exit 0
fi
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x "$ROOT/.venv/bin/python" ]]; then PYTHON="$ROOT/.venv/bin/python"; else PYTHON=python3; fi
fi
if ! "$PYTHON" -c "import torch, nnunetv2, nnunet_kd" 2>/dev/null; then
    echo "gpu_check: $PYTHON cannot import torch, nnunetv2 and nnunet_kd; run 'make test' once (it makes .venv) or set PYTHON=" >&2
    exit 1
fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
exec "$PYTHON" -m benchmarks.gpu_check "$@"
