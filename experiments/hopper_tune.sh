#!/usr/bin/env bash
# Issue 9's user path on the GPU, in ONE device call: a default-settings energy tune of matmul
# through the Hopper GEMM space (tune picks it on sm_90), timed, its kernel exported, then the
# export re-measured in a fresh process against cuBLAS, interleaved (experiments/remeasure_export.py).
#   bash experiments/hopper_tune.sh OUT [COMMIT] [SHAPE] [TRIALS] [TUNE_TIMEOUT_S]
# REMEASURE=0: the tune only (a throughput run: no export re-measurement, and a tune stopped by
# the limit is not resumed to export).
# TVM must be staged in /tmp/site first (shared/device/prepare.sh here, .device/pK/stage.sh there).
set -uo pipefail
out=$1; export COMMIT=${2:-unknown}; shape=${3:-4096,4096,4096}; trials=${4:-64}; limit=${5:-360}
mkdir -p "$out"
export PYTHONPATH=/tmp/site:$PWD
nvidia-smi --query-gpu=index,name,driver_version,power.limit,temperature.gpu,clocks.max.sm \
  --format=csv > "$out/gpu.txt" || true
tune=(python3 -m energy_tuner.compiler.cli --op matmul --shape "$shape" --objective energy
      --db "$out/tune.sqlite" --export "$out/export")
# The staged wheels carry no byte-code (pip --no-compile); a user's pip install does. Compile it
# once, untimed, so the start-up is a user's: otherwise TVM's sources compile on every import (2.6 s).
python3 -c "import importlib.util as u
for m in ('tvm', 'tvm_ffi', 'xgboost'):
    s = u.find_spec(m)
    print(s.submodule_search_locations[0] if s else '')" | xargs -r -n1 python3 -m compileall -q -j 0 > /dev/null
start=$(date +%s.%N)
timeout -s INT "$limit" "${tune[@]}" --trials "$trials" > "$out/tune.log" 2>&1
rc=$?
end=$(date +%s.%N)
echo "tune rc $rc wall_s $(python3 -c "print(round($end - $start, 1))")" | tee "$out/tune_wall.txt"
tail -25 "$out/tune.log"
[ "${REMEASURE:-1}" = 0 ] && exit 0
if [ "$rc" -ne 0 ]; then  # stopped by the limit: export what it has (a resume with nothing left)
  done=$(python3 -c "import sqlite3,sys; print(sqlite3.connect(sys.argv[1]).execute('select count(*) from candidates').fetchone()[0])" "$out/tune.sqlite")
  echo "resuming with --trials $done to export" | tee -a "$out/tune_wall.txt"
  "${tune[@]}" --trials "$done" > "$out/tune_export.log" 2>&1; tail -8 "$out/tune_export.log"
fi
python3 -m experiments.remeasure_export "$out/export" --out "$out" --rounds 3 2>&1 | tee "$out/remeasure.log"
