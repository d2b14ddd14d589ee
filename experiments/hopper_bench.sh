#!/usr/bin/env bash
# Issue 9's family table on the GPU, in ONE device call: the family's GPU tests, then
# experiments/hopper_gemm_bench.py with energy (cuBLAS before and after ours, per case).
#   bash experiments/hopper_bench.sh OUT [COMMIT] [CASES] [CONFIGS] [ACCUM] [DTYPE: float16|bfloat16]
# TVM must be staged in /tmp/site first (shared/device/prepare.sh here, .device/pK/stage.sh there).
set -uo pipefail
out=$1; export GIT_COMMIT=${2:-unknown}
cases=${3:-mm4096,mm8192,mm2048x11008x4096,mm2048x4096x11008,bmm8x1024}
configs=${4:-wsp,wsp_c2,wsp_g16,wsp_g16_c2,wsp_half,wsp_half_c2,wsp_tma2}; accum=${5:-float32}; dtype=${6:-float16}
mkdir -p "$out"
export PYTHONPATH=/tmp/site:$PWD TVM_CUDA_COMPILE_MODE=nvcc
nvidia-smi --query-gpu=index,name,driver_version,power.limit,temperature.gpu,clocks.max.sm \
  --format=csv > "$out/gpu.txt" || true
# a kernel whose barriers deadlock hangs; the limit keeps the bench after it
timeout 300 python3 -m pytest -q -m gpu tests/test_hopper_gemm.py > "$out/pytest_gpu.txt" 2>&1
tail -3 "$out/pytest_gpu.txt"
python3 -m experiments.hopper_gemm_bench --out "$out/bench" --energy --cases "$cases" \
  --configs "$configs" --accum "$accum" --dtype "$dtype" 2>&1 | tee "$out/bench.txt" | grep -v '^{' | tail -40
rm -f "$out"/bench/*.so
