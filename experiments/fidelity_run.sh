#!/usr/bin/env bash
# The measurement-fidelity benchmark plus a short energy tune through the isolated worker.
#   experiments/fidelity_run.sh OUTDIR
set -euo pipefail
out=$1
mkdir -p "$out"
nvidia-smi --query-gpu=name,driver_version,power.limit,temperature.gpu,clocks.sm --format=csv \
  | tee "$out/gpu.txt"
python3 -m experiments.measure_fidelity --out "$out" --trace "$out/nvml_trace.json.gz" 2>&1 \
  | tee "$out/fidelity.log"
python3 -m energy_tuner.compiler.cli --op matmul --shape 4096,4096,4096 --dtype float16 --target cuda \
  --objective energy --trials 16 --seed 1 --db "$out/tune16.sqlite" 2>&1 | tee "$out/tune16.log"
