#!/usr/bin/env bash
# Issue 10's questions (why cuBLAS's GEMV draws less power at our speed; what bounds the low-bit
# GEMVs) put to Nsight Compute: our best GEMV kernels (fp16, or the dequant twin) of a gemv_bench
# summary and cuBLAS's, one call each, full section set, caches flushed before each kernel, GPU
# clocks left as they are.
#   bash experiments/gemv_ncu.sh OUT [SUMMARY]
# Writes OUT/gemv.ncu-rep, OUT/details.csv (the sections) and OUT/raw.csv (every metric).
set -uo pipefail
out=$1; summary=${2:-experiments/results/gemv_h200_2026-12-01/gemv_fp16/summary.json}
mkdir -p "$out"
export PYTHONPATH=/tmp/site:$PWD TVM_CUDA_COMPILE_MODE=nvcc
ncu=$(command -v ncu || ls /usr/local/cuda*/bin/ncu 2>/dev/null | head -1)
"$ncu" --clock-control none --profile-from-start off --set full -f -o "$out/gemv" \
  python3 -m experiments.gemv_ncu "$summary" > "$out/ncu_log.txt" 2>&1
echo "ncu rc $?"; grep -v "^==PROF== Profiling" "$out/ncu_log.txt" | tail -20
"$ncu" -i "$out/gemv.ncu-rep" --page details --csv > "$out/details.csv"
"$ncu" -i "$out/gemv.ncu-rep" --page raw --csv > "$out/raw.csv"
