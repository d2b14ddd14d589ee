#!/usr/bin/env bash
# Issue 10 on tensor cores, in ONE device call: the GPU tests of the two mma GEMV spaces, then
# experiments/gemv_bench.py (weights from DRAM, cuBLAS interleaved) for fp16 (gemv-mma) and W4/W2
# (lut-dequant-gemv-mma).
#   bash experiments/tensor_core_gemv.sh OUT [COMMIT] [FP16_S] [W4_S] [W2_S]   (budgets in seconds)
# TVM must be staged in /tmp/site first (shared/device/prepare.sh here, .device/pK/stage.sh there).
set -uo pipefail
out=$1; commit=${2:-unknown}; fp16_s=${3:-140}; w4_s=${4:-80}; w2_s=${5:-40}
mkdir -p "$out"
export PYTHONPATH=/tmp/site:$PWD TVM_CUDA_COMPILE_MODE=nvcc
python3 -m pytest -q -m gpu tests/test_gemv_mma.py tests/test_dequant_gemv_mma.py > "$out/pytest_gpu.txt" 2>&1
tail -3 "$out/pytest_gpu.txt"
bench() { bash experiments/gemv_bench.sh "$out/$1" "$commit" "${@:2}" --bulk-configs 0 | grep -v '^  \[' | tail -12; }
bench fp16 --space gemv-mma --configs 10 --budget-s "$fp16_s"
bench w4 --op dequant --wbits 4 --space lut-dequant-gemv-mma --shapes 28672x8192,14336x4096 --configs 8 --budget-s "$w4_s"
bench w2 --op dequant --wbits 2 --space lut-dequant-gemv-mma --shapes 28672x8192 --configs 6 --budget-s "$w2_s"
