#!/usr/bin/env bash
# Issue 11's warm start across shapes, in ONE device call: the same energy tune of matmul SHAPE
# twice, same seed, from samples (--no-seeds: the space's seeds would lead both), cold (a fresh
# database) and warm (a copy of SOURCE_DB, whose saved model of another shape of the family
# starts the tune's model), then the trials each needed to come within 5% of the final
# objective (experiments/warm_start_effect.py).
#   bash experiments/transfer_tune.sh OUT COMMIT SHAPE TRIALS TUNE_TIMEOUT_S SOURCE_DB.sqlite.gz
# TVM must be staged in /tmp/site first (shared/device/prepare.sh here, .device/pK/stage.sh there).
set -uo pipefail
out=$1; export COMMIT=$2; shape=$3; trials=$4; limit=$5; source_db=$6
mkdir -p "$out"
export PYTHONPATH=/tmp/site:$PWD
nvidia-smi --query-gpu=index,name,driver_version,power.limit,temperature.gpu,clocks.max.sm \
  --format=csv > "$out/gpu.txt" || true
gunzip -c "$source_db" > "$out/warm.sqlite"
for run in cold warm; do
  start=$(date +%s.%N)
  timeout -s INT "$limit" python3 -m energy_tuner.compiler.cli --op matmul --shape "$shape" \
    --objective energy --no-seeds --trials "$trials" --db "$out/$run.sqlite" > "$out/$run.log" 2>&1
  rc=$?
  end=$(date +%s.%N)
  echo "$run rc $rc wall_s $(python3 -c "print(round($end - $start, 1))")" | tee -a "$out/wall.txt"
  tail -12 "$out/$run.log"
done
python3 -m experiments.warm_start_effect "$out/cold.sqlite" "$out/warm.sqlite" \
  --json "$out/warm_start_effect.json" 2>&1 | tee "$out/effect.log"
gzip -f "$out/cold.sqlite" "$out/warm.sqlite"
