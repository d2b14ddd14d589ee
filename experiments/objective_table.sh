#!/usr/bin/env bash
# The objective table (arXiv 2411.18873 style). Per case, three tunes with the same trial budget
# and seed (--objective latency; --objective energy; --objective energy --max-slowdown 1.03), one
# after another on one GPU, then cuBLAS/cuDNN through torch on that GPU. Cases run in parallel,
# one per GPU (NGPU, default: all that nvidia-smi lists), each GPU's tunes pinned to its share of
# the CPUs; a GPU that finishes takes the next unstarted case. Everything lands in OUTDIR/<case>/;
# re-running with the same OUTDIR resumes the tunes, and a larger TRIALS extends them. Ends with
# the table of experiments/objective_table.py (OUTDIR/objective_table.{md,csv}).
#   experiments/objective_table.sh OUTDIR TRIALS [CASE...]     (default: every case below)
set -euo pipefail
out=$1
trials=$2
shift 2
declare -A CASES=(
  [mm4096]="matmul 4096,4096,4096"
  [llm_up]="matmul 2048,11008,4096"    # 2048 tokens through a LLaMA-7B MLP: 4096 -> 11008
  [llm_down]="matmul 2048,4096,11008"  # ... and 11008 -> 4096
  [conv]="conv2d n=8,h=56,w=56,c=64,k=64,r=3,s=3,stride=1,pad=1"  # ResNet-50 conv2_x 3x3
  [gemv]="gemv 11008,4096"             # one decode token: y = W x, W of 11008 x 4096
)
ORDER=(mm4096 llm_up llm_down conv gemv)  # the cheapest last: it runs on the first free GPU
cases=("$@")
(( ${#cases[@]} )) || cases=("${ORDER[@]}")
for name in "${cases[@]}"; do
  [[ -v CASES[$name] ]] || { echo "unknown case $name (known: ${ORDER[*]})" >&2; exit 2; }
done
ngpu=${NGPU:-$(nvidia-smi -L | grep -c '^GPU ')}
claims=$(mktemp -d)
mkdir -p "$out"
say() { echo "$*" | tee -a "$out/run.log"; }
{ nvidia-smi --query-gpu=index,name,pci.bus_id,driver_version,power.limit,temperature.gpu \
    --format=csv; lscpu || true; } > "$out/host.txt"

run_case() {  # run_case GPU CASE: the three tunes, then the library calls
  local gpu=$1 name=$2 dir=$out/$2 op shape tune
  read -r op shape <<< "${CASES[$name]}"
  mkdir -p "$dir"
  nvidia-smi -i "$gpu" --format=csv \
    --query-gpu=index,name,uuid,pci.bus_id,power.limit,temperature.gpu,clocks.sm > "$dir/gpu.txt"
  for tune in latency energy slowdown; do
    local objective=(--objective energy)
    [[ $tune == latency ]] && objective=(--objective latency)
    [[ $tune == slowdown ]] && objective+=(--max-slowdown 1.03)
    SECONDS=0
    python3 -m energy_tuner.compiler.cli --op "$op" --shape "$shape" --dtype float16 --target cuda \
      "${objective[@]}" --trials "$trials" --seed 0 --db "$dir/$tune.sqlite" \
      >> "$dir/$tune.log" 2>&1 || say "[gpu $gpu] $name $tune: exit code $?"
    say "[gpu $gpu] $name $tune: $SECONDS s ($(grep -c '^trial' "$dir/$tune.log") trials logged)"
  done
  SECONDS=0
  python3 -m experiments.cublas_energy --op "$op" --shape "$shape" --out "$dir/cublas.json" \
    >> "$dir/cublas.log" 2>&1 || say "[gpu $gpu] $name cublas: exit code $?"
  say "[gpu $gpu] $name cublas: $SECONDS s"
}

gpu_worker() {  # gpu_worker GPU: runs the cases no other GPU has claimed, in order
  local gpu=$1 name
  export CUDA_DEVICE_ORDER=PCI_BUS_ID CUDA_VISIBLE_DEVICES=$gpu
  local share  # this GPU's slice of the CPUs we may use, so parallel tunes do not compete
  share=$(python3 -c "import os; c = sorted(os.sched_getaffinity(0)); n = len(c) // $ngpu; \
print(','.join(map(str, c[$gpu * n:($gpu + 1) * n])))")
  taskset -cp "$share" $BASHPID > /dev/null || say "[gpu $gpu] not pinned: tunes share all CPUs"
  for name in "${cases[@]}"; do
    mkdir "$claims/$name" 2> /dev/null || continue  # mkdir is atomic: one GPU per case
    run_case "$gpu" "$name"
  done
}

say "$ngpu GPUs, $(nproc) CPUs, $trials trials per tune, cases: ${cases[*]}"
SECONDS=0
for ((gpu = 0; gpu < ngpu; gpu++)); do
  gpu_worker "$gpu" &
done
wait
say "all cases: $SECONDS s"
rm -r "$claims"
python3 -m experiments.objective_table "$out"
