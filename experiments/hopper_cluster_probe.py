"""Why 2x1 clusters (cluster_m = 2) run 1.5x slower at 4096^3 (fp16 -> fp32) on an H200: too few
clusters resident, or the kernel itself?

    python3 experiments/hopper_cluster_probe.py OUT.json        # timings
    ncu --clock-control none --profile-from-start off --section LaunchStats --section Occupancy \\
        --section SpeedOfLight --csv --page details python3 experiments/hopper_cluster_probe.py x --ncu

Times `wsp_half` (132 CTAs) and `wsp_half_c2` with persistent grids of 132 down to 64 CTAs (the
family's NUM_SMS patched while the kernel is written), each checked against torch first; the
median of 5 rounds of 200 back-to-back calls timed by CUDA events; cuBLAS (torch.mm, fp32 out)
for scale. With --ncu only the two 132-CTA kernels run inside the profiled range, once each.
Results: experiments/results/hopper_cluster_probe_h200_2026-12-02.
"""
import json
import sys

import torch
import tvm

from energy_tuner.schedules import hopper_gemm as hg
from experiments.hopper_gemm_bench import CONFIGS

M = N = K = 4096
GRIDS = (132, 128, 120, 112, 104, 96, 88, 80, 64)


def kernel(name: str, grid_ctas: int):
    """CONFIGS[name] at 4096^3 with a persistent grid of at most `grid_ctas` CTAs."""
    hg.NUM_SMS = grid_ctas
    try:
        return hg.build(hg.gemm_func(M, N, K, hg.GemmConfig(**CONFIGS[name])))["main"]
    finally:
        hg.NUM_SMS = 132


def ms_per_call(fn, calls: int = 200) -> float:
    for _ in range(10):
        fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    rounds = []
    for _ in range(5):
        start.record()
        for _ in range(calls):
            fn()
        end.record()
        torch.cuda.synchronize()
        rounds.append(start.elapsed_time(end) / calls)
    return sorted(rounds)[2]


def main() -> None:
    a = torch.rand((M, K), device="cuda", dtype=torch.float16) * 2 - 1
    b = torch.rand((K, N), device="cuda", dtype=torch.float16) * 2 - 1
    c = torch.empty((M, N), device="cuda", dtype=torch.float32)
    args = [tvm.runtime.from_dlpack(t) for t in (a, b, c)]
    if "--ncu" in sys.argv:
        fns = [kernel("wsp_half", 132), kernel("wsp_half_c2", 132)]
        for fn in fns:
            fn(*args)
        torch.cuda.synchronize()
        torch.cuda.profiler.start()
        for fn in fns:
            fn(*args)
            torch.cuda.synchronize()
        torch.cuda.profiler.stop()
        return
    ref = a.float() @ b.float()
    rows = []
    for name, grid in [("wsp_half", 132)] + [("wsp_half_c2", g) for g in GRIDS]:
        fn = kernel(name, grid)
        c.fill_(float("nan"))
        fn(*args)
        torch.cuda.synchronize()
        error = ((c - ref).norm() / ref.norm()).item()       # checked before it is timed
        rows.append({"config": name, "grid_ctas": grid, "ms": ms_per_call(lambda: fn(*args)),
                     "rel_error": error})
        print(json.dumps(rows[-1]), flush=True)
    rows.append({"config": "cublas fp16->fp32",
                 "ms": ms_per_call(lambda: torch.mm(a, b, out_dtype=torch.float32))})
    print(json.dumps(rows[-1]))
    with open(sys.argv[1], "w") as f:
        json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
