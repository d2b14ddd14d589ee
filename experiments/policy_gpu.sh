#!/usr/bin/env bash
# Dynamic energy policy vs measuring every candidate, same trial budget, on the GPU.
#   experiments/policy_gpu.sh all|dynamic OUTDIR [TRIALS]
set -euo pipefail
policy=$1
out=$2
trials=${3:-48}
mkdir -p "$out"
nvidia-smi --query-gpu=name,driver_version,power.limit,temperature.gpu --format=csv \
  | tee "$out/gpu_$policy.txt"
SECONDS=0
python3 -m energy_tuner.compiler.cli --op matmul --shape 4096,4096,4096 --dtype float16 --target cuda \
  --objective energy --energy-policy "$policy" --trials "$trials" --seed 0 \
  --db "$out/$policy.sqlite" 2>&1 | tee "$out/tune_$policy.log"
echo "wall seconds: $SECONDS" | tee -a "$out/tune_$policy.log"
