#!/usr/bin/env bash
# LUT-mpGEMM vs its dequant twin vs cuBLAS fp16, on one GPU: for each weight shape NxK given, each
# M in $MS (default "1 16") and each bit width in $BITS (default "2 4 1"), a latency tune of
# lut_mpgemm --impl $IMPL (default both: LUT and dequant, splitting the TRIALS; group 128,
# symmetric; energy measured for every candidate), then cuBLAS fp16 on the same M,N,K
# (CUDA-graph replays, so launch gaps are not counted for cuBLAS; our kernels are timed by TVM's
# time_evaluator, launch gaps included). Results: OUTDIR/lut.sqlite, OUTDIR/cublas_M_N_K.json.
#   experiments/lut_benchmark.sh OUTDIR TRIALS NxK [NxK ...]
set -euo pipefail
out=$1; trials=$2; shift 2
mkdir -p "$out"
nvidia-smi --query-gpu=index,name,driver_version,power.limit,temperature.gpu --format=csv \
  -i "${CUDA_VISIBLE_DEVICES:-0}" > "$out/gpu.txt" || true
for nk in "$@"; do
  n=${nk%x*}; k=${nk#*x}
  for m in ${MS:-1 16}; do
    for bits in ${BITS:-2 4 1}; do
      echo "== lut_mpgemm m=$m n=$n k=$k W$bits" | tee -a "$out/log.txt"
      python3 -m energy_tuner.compiler.cli --op lut_mpgemm --shape "m=$m,n=$n,k=$k" --wbits "$bits" \
        --group-size 128 --impl "${IMPL:-both}" --target cuda --objective latency --trials "$trials" \
        --seed 0 --db "$out/lut.sqlite" >> "$out/log.txt" 2>&1 || echo "tune failed" >> "$out/log.txt"
    done
    python3 -m experiments.cublas_energy --shape "$m,$n,$k" --graph-calls 50 \
      --out "$out/cublas_${m}_${n}_${k}.json" >> "$out/log.txt" 2>&1 || echo "cublas failed" >> "$out/log.txt"
  done
done
