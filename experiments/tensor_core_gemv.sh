#!/usr/bin/env bash
# Issue 10 on tensor cores, in ONE device call: the GPU tests of the two mma GEMV spaces, then
# experiments/gemv_bench.py (weights from DRAM, cuBLAS interleaved) for fp16 (gemv-mma) and W4/W2
# (lut-dequant-gemv-mma).
#   bash experiments/tensor_core_gemv.sh OUT [COMMIT] [FP16_S] [W4_S] [W2_S] [W4_CONFIGS] [W2_CONFIGS]
# (budgets in seconds; a budget of 0 leaves that bench out)
# TVM must be staged in /tmp/site first (shared/device/prepare.sh here, .device/pK/stage.sh there).
set -uo pipefail
out=$1; commit=${2:-unknown}; fp16_s=${3:-140}; w4_s=${4:-80}; w2_s=${5:-40}
w4_configs=${6:-8}; w2_configs=${7:-6}
mkdir -p "$out"
export PYTHONPATH=/tmp/site:$PWD TVM_CUDA_COMPILE_MODE=nvcc
python3 -m pytest -q -m gpu tests/test_gemv_mma.py tests/test_dequant_gemv_mma.py > "$out/pytest_gpu.txt" 2>&1
tail -3 "$out/pytest_gpu.txt"
bench() {  # NAME BUDGET_S ARGS...
  [ "$2" -gt 0 ] || return 0
  bash experiments/gemv_bench.sh "$out/$1" "$commit" "${@:3}" --budget-s "$2" --bulk-configs 0 \
    | grep -v '^  \[' | tail -12
}
bench fp16 "$fp16_s" --space gemv-mma --configs 10
bench w4 "$w4_s" --op dequant --wbits 4 --space lut-dequant-gemv-mma --shapes 28672x8192,14336x4096 \
  --configs "$w4_configs"
bench w2 "$w2_s" --op dequant --wbits 2 --space lut-dequant-gemv-mma --shapes 28672x8192 \
  --configs "$w2_configs"
