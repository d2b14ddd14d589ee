#!/usr/bin/env bash
# The first-slice GPU baseline: tune a 4096^3 fp16 matmul for OBJECTIVE (64 trials), then time
# cuBLAS (torch) on the same GPU with the same energy method. Results land in OUTDIR.
#   experiments/gpu_baseline.sh latency|energy OUTDIR
set -euo pipefail
objective=$1
out=$2
mkdir -p "$out"
nvidia-smi --query-gpu=name,driver_version,power.limit,temperature.gpu,clocks.sm --format=csv \
  | tee "$out/gpu_$objective.txt"
python3 -m energy_tuner.compiler.cli --op matmul --shape 4096,4096,4096 --dtype float16 --target cuda \
  --objective "$objective" --trials 64 --seed 0 --db "$out/$objective.sqlite" \
  --export "$out/export_$objective" 2>&1 | tee "$out/tune_$objective.log"
python3 -m experiments.cublas_energy --shape 4096,4096,4096 --out "$out/cublas_$objective.json" \
  2>&1 | tee -a "$out/tune_$objective.log"
