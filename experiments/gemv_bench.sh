#!/usr/bin/env bash
# fp16 GEMV knob configs vs cuBLAS on issue 10's four shapes, weights from DRAM, gap-free launches,
# in ONE device call (under 9 minutes; see experiments/gemv_bench.py). TVM must be staged in
# /tmp/site first (shared/device/prepare.sh here, then .device/pK/stage.sh on the device).
#   bash experiments/gemv_bench.sh OUT [COMMIT] [gemv_bench.py flags...]
set -euo pipefail
out=$1; export COMMIT=${2:-${COMMIT:-unknown}}; shift $(( $# >= 2 ? 2 : 1 ))
mkdir -p "$out"
export PYTHONPATH=/tmp/site:$PWD
python3 -c "import tvm" 2>/dev/null || { echo "TVM is not importable from /tmp/site: stage it first (.device/pK/stage.sh)" >&2; exit 2; }
nvidia-smi --query-gpu=index,name,driver_version,power.limit,temperature.gpu,clocks.max.sm --format=csv \
  -i "${CUDA_VISIBLE_DEVICES:-0}" > "$out/gpu.txt" || true
python3 experiments/gemv_bench.py --out "$out" "$@" 2>&1 | tee "$out/log.txt"
