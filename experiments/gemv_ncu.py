"""One call each of our best fp16 GEMV kernels and of cuBLAS's, for Nsight Compute to compare.

    ncu --clock-control none --profile-from-start off --set full -o OUT/gemv \
        python3 -m experiments.gemv_ncu experiments/results/gemv_h200_2026-12-01/gemv_fp16/summary.json

Issue 10 asks why cuBLAS streams a GEMV's weights as fast as our kernels with 11-18% less board
power. For every shape of the given gemv_bench summary this builds the row's chosen config
(`ours.config`, space gemv-simt), checks it against torch in float64, and calls, inside the
profiled range only (cudaProfilerStart/Stop), ours once, then torch.mv (cuBLAS fp16 -> fp16) and
torch.mm with out_dtype float32 (cuBLAS fp16 -> fp32) once each, on random normal inputs. ncu's
default cache control flushes the caches before each profiled kernel, so each one reads its
weights from DRAM, as the benchmark's rotation does. The shape and caller of every profiled
kernel is printed in order, so the report's kernels can be matched to them.
"""
from __future__ import annotations

import json
import sys

import torch
import tvm

from energy_tuner.schedules import make_op
from energy_tuner.schedules.gemv_knobs import GemvKnobs
from experiments.gemv_bench import SM90


def main(summary_path: str) -> int:
    rows = json.load(open(summary_path))["rows"]
    dev = tvm.cuda(0)
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    gen = torch.Generator(device="cuda").manual_seed(0)
    calls = []
    for row in rows:
        n, k = row["shape"]["n"], row["shape"]["k"]
        space = GemvKnobs(make_op("gemv", f"{n},{k}", "float16"), SM90, sms=sms)
        ex = tvm.compile(space.module(row["ours"]["config"]), target=SM90, **space.compile_options)
        w = torch.randn((n, k), device="cuda", dtype=torch.float16, generator=gen)
        x = torch.randn((k,), device="cuda", dtype=torch.float16, generator=gen)
        y = torch.full((n,), float("nan"), device="cuda")
        args = [tvm.runtime.from_dlpack(t) for t in (w, x, y)]
        ex["main"](*args)
        dev.sync()
        ref = w.double() @ x.double()
        err = ((y.double() - ref).norm() / ref.norm()).item()
        print(f"{n}x{k} ours {space.key(row['ours']['config'])}: rel_error {err:.2e}", flush=True)
        calls += [(f"{n}x{k} ours", lambda f=ex["main"], a=args: f(*a)),
                  (f"{n}x{k} cublas fp16->fp16", lambda w=w, x=x: torch.mv(w, x)),
                  (f"{n}x{k} cublas fp16->fp32",
                   lambda w=w, x=x: torch.mm(w, x[:, None], out_dtype=torch.float32))]
    for _, fn in calls:     # warm: the first call of a torch op may load its kernel
        fn()
    torch.cuda.synchronize()
    torch.cuda.profiler.start()
    for i, (name, fn) in enumerate(calls):
        fn()
        torch.cuda.synchronize()
        print(f"profiled call {i}: {name}", flush=True)
    torch.cuda.profiler.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
