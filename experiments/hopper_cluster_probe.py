"""Why 2x1 clusters (cluster_m = 2) run 1.5x slower at 4096^3 (fp16 -> fp32) on an H200: too few
clusters resident, or the kernel itself?

    python3 experiments/hopper_cluster_probe.py OUT.json        # timings
    ncu --clock-control none --profile-from-start off --section LaunchStats --section Occupancy \
        --section SpeedOfLight --csv --page details python3 experiments/hopper_cluster_probe.py x --ncu

Times `wsp_half` (132 CTAs) and `wsp_half_c2` with persistent grids of 132 down to 64 CTAs (the
family's NUM_SMS patched while the kernel is written), each checked against torch first; the
median of 5 rounds of 200 back-to-back calls timed by CUDA events; cuBLAS (torch.mm, fp32 out)
for scale. With --ncu only the two 132-CTA kernels run inside the profiled range, once each.
Results: experiments/results/hopper_cluster_probe_h200_2026-12-02."""
import sys, json
import numpy as np, torch, tvm
from energy_tuner.schedules import hopper_gemm as hg
from experiments.hopper_gemm_bench import CONFIGS

m = n = k = 4096
dev = tvm.cuda(0)
a = torch.rand((m, k), device="cuda", dtype=torch.float16) * 2 - 1
b = torch.rand((k, n), device="cuda", dtype=torch.float16) * 2 - 1
ref = (a.float() @ b.float())
c = torch.empty((m, n), device="cuda", dtype=torch.float32)
args = [tvm.runtime.from_dlpack(t) for t in (a, b, c)]

def make(name, sms):
    hg.NUM_SMS = sms
    cfg = hg.GemmConfig(**CONFIGS[name])
    ex = hg.build(hg.gemm_func(m, n, k, cfg))
    hg.NUM_SMS = 132
    return ex["main"]

def timed(fn, calls=200):
    for _ in range(10): fn()
    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    best = []
    for _ in range(5):
        s.record()
        for _ in range(calls): fn()
        e.record(); torch.cuda.synchronize()
        best.append(s.elapsed_time(e) / calls)
    return sorted(best)[2]

if "--ncu" in sys.argv:
    fs = [make("wsp_half", 132), make("wsp_half_c2", 132)]
    for f in fs: f(*args)
    torch.cuda.synchronize(); torch.cuda.profiler.start()
    for f in fs: f(*args); torch.cuda.synchronize()
    torch.cuda.profiler.stop(); sys.exit(0)

rows = []
for name, sms in [("wsp_half", 132)] + [("wsp_half_c2", g) for g in (132, 128, 120, 112, 104, 96, 88, 80, 64)]:
    f = make(name, sms)
    c.fill_(float("nan")); f(*args); torch.cuda.synchronize()
    err = ((c - ref).norm() / ref.norm()).item()
    ms = timed(lambda: f(*args))
    rows.append({"config": name, "grid_ctas": sms, "ms": ms, "rel_error": err})
    print(json.dumps(rows[-1]), flush=True)
ms = timed(lambda: torch.mm(a, b, out_dtype=torch.float32))
rows.append({"config": "cublas fp16->fp32", "ms": ms}); print(json.dumps(rows[-1]))
json.dump(rows, open(sys.argv[1], "w"), indent=1)
