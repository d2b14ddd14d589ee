#!/usr/bin/env bash
# Issue 13's GPU benchmark in ONE device call: experiments/model_benchmark.py one case at a time,
# each under its own time limit. A stopped case loses nothing: its tune db (OUT/CASE/tune.sqlite)
# resumes when the same command runs again. The spaces' seeds make short budgets useful.
#   bash experiments/model_benchmark.sh OUT [COMMIT] [CASES] [TRIALS] [LIMIT_S per case] [FLAGS...]
# (FLAGS go to model_benchmark.py, e.g. --served-only, --merge: q/k/v and gate/up merged)
# CASES: comma-separated of decode1, decode16, prefill2048 (default prefill2048,decode1).
# TVM must be staged in /tmp/site first (shared/device/prepare.sh here, .device/pK/stage.sh there).
set -uo pipefail
out=$1; export COMMIT=${2:-unknown}; cases=${3:-prefill2048,decode1}; trials=${4:-32}
limit=${5:-240}; extra=("${@:6}")
mkdir -p "$out"
export PYTHONPATH=/tmp/site:$PWD TVM_CUDA_COMPILE_MODE=nvcc
nvidia-smi --query-gpu=index,name,driver_version,power.limit,temperature.gpu,clocks.max.sm \
  --format=csv > "$out/gpu.txt" || true
for case in ${cases//,/ }; do
  mkdir -p "$out/$case"
  timeout -s INT "$limit" python3 -m experiments.model_benchmark "$out/$case" --cases "$case" \
    --trials "$trials" "${extra[@]}" > "$out/$case/log.txt" 2>&1
  echo "$case rc $?"; tail -15 "$out/$case/log.txt"
done
