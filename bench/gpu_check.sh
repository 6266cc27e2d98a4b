#!/usr/bin/env bash
# GPU check for kernels/: the kernel tests with the Triton kernels *compiled* (no interpreter), then the
# GPU benchmark tables of bench/logprob.py. Meant to finish in under 5 minutes on one H100/H200-class card.
#   bash bench/gpu_check.sh              # uses .venv/bin/python when present, else python3; PYTHON=... overrides
set -euo pipefail
cd "$(dirname "$0")/.."
unset TRITON_INTERPRET KERNELS_BACKEND  # compiled Triton on CUDA tensors; the tests pick CUDA when it is present

if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi

echo "== card"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || echo "(nvidia-smi unavailable)"
"$PYTHON" - <<'PY'
import sys
import torch
import triton
if not torch.cuda.is_available():
    sys.exit("bench/gpu_check.sh: torch sees no CUDA device; this check needs a GPU")
print(f"torch {torch.__version__}, triton {triton.__version__}, device: {torch.cuda.get_device_name()}")
PY

echo "== kernel tests, compiled Triton on CUDA"
start=$SECONDS
timeout 240 "$PYTHON" -m pytest -q tests/test_kernels.py
echo "tests took $((SECONDS - start)) s"

echo "== benchmark (GPU tables)"
start=$SECONDS
timeout 240 "$PYTHON" bench/logprob.py --device cuda --rows 1024,2048,4096,8192 --gpu-big-rows 65536
echo "benchmark took $((SECONDS - start)) s"
