#!/usr/bin/env bash
# The LUT benchmark's four weight shapes, one per GPU in parallel (shape i on GPU i mod NGPU, one
# after another where shapes share a GPU), each GPU's tunes pinned to its share of the CPUs.
#   experiments/lut_all_gpus.sh OUTDIR TRIALS      -> OUTDIR/gpuI/ per GPU (see lut_benchmark.sh)
set -euo pipefail
out=$1; trials=$2
shapes=(4096x4096 11008x4096 4096x11008 28672x7168)
ngpu=${NGPU:-$(nvidia-smi -L | grep -c '^GPU ')}
cpus=$(nproc); share=$((cpus / ngpu))
export CUDA_DEVICE_ORDER=PCI_BUS_ID
for ((g = 0; g < ngpu; g++)); do
  mine=()
  for ((i = g; i < ${#shapes[@]}; i += ngpu)); do mine+=("${shapes[$i]}"); done
  (( ${#mine[@]} )) || continue
  CUDA_VISIBLE_DEVICES=$g taskset -c $((g * share))-$((g * share + share - 1)) \
    bash "$(dirname "$0")/lut_benchmark.sh" "$out/gpu$g" "$trials" "${mine[@]}" &
done
wait
