"""One call each of our best GEMV kernels of a gemv_bench summary and of cuBLAS's, for Nsight
Compute to compare.

    ncu --clock-control none --profile-from-start off --set full -o OUT/gemv \
        python3 -m experiments.gemv_ncu experiments/results/gemv_h200_2026-12-01/gemv_fp16/summary.json

Issue 10 asks why cuBLAS streams a GEMV's weights as fast as our kernels with 11-18% less board
power, and what bounds the low-bit GEMVs at 1.6-2.3x their bandwidth floor. For every row of the
given summary (fp16 gemv, or lut_mpgemm's dequant twin) this builds the row's chosen config
(`ours.config` in `ours.space`, gemv-simt where a summary names none), checks it against a
float64 product, and calls, inside the profiled range only (cudaProfilerStart/Stop), ours once,
then torch.mv (cuBLAS fp16 -> fp16) and torch.mm with out_dtype float32 (cuBLAS fp16 -> fp32) once
each on the same (for lut_mpgemm: dequantized) fp16 weights. ncu's default cache control flushes
the caches before each profiled kernel, so each one reads its weights from DRAM, as the
benchmark's rotation does. The shape and caller of every profiled kernel is printed in order, so
the report's kernels can be matched to them.
"""
from __future__ import annotations

import json
import sys

import numpy as np
import torch
import tvm

from energy_tuner.schedules import make_op
from energy_tuner.schedules.gemv_knobs import GemvKnobs
from energy_tuner.schedules.knobs import SPACES
from experiments.gemv_bench import SM90


def problem(row: dict, gen: torch.Generator):
    """(op, our arguments, fp16 weights [n, k], x [k]) on the GPU, random."""
    shape = row["shape"]
    if row.get("op", "gemv") == "gemv":
        op = make_op("gemv", f"{shape['n']},{shape['k']}", "float16")
        w = torch.randn((shape["n"], shape["k"]), device="cuda", dtype=torch.float16, generator=gen)
        x = torch.randn((shape["k"],), device="cuda", dtype=torch.float16, generator=gen)
        return op, [w, x], w, x
    op = make_op(row["op"], ",".join(f"{k}={v}" for k, v in shape.items()), row["dtype"],
                 row["params"])
    host = op.inputs(np.random.default_rng(0))          # x, packed weights, scales (, zeros)
    ours = [torch.from_numpy(a).cuda() for a in host]
    w = torch.from_numpy(op.quantized(*host[1:]).dequantize()).cuda().half()
    return op, ours, w, ours[0].reshape(-1)


def main(summary_path: str) -> int:
    rows = json.load(open(summary_path))["rows"]
    dev = tvm.cuda(0)
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    gen = torch.Generator(device="cuda").manual_seed(0)
    calls = []
    for row in rows:
        op, ours, w, x = problem(row, gen)
        n, k = w.shape
        space = SPACES.get(row["ours"].get("space"), GemvKnobs)(op, SM90, sms=sms)
        config = row["ours"]["config"]
        ex = tvm.compile(space.module(config), target=SM90, **space.compile_options)
        y = torch.full((n,) if op.name == "gemv" else (1, n), float("nan"), device="cuda")
        args = [tvm.runtime.from_dlpack(t) for t in (*ours, y)]
        ex["main"](*args)
        dev.sync()
        ref = w.double() @ x.double()
        err = ((y.reshape(-1).double() - ref).norm() / ref.norm()).item()
        print(f"{row['case']} ours {space.key(config)}: rel_error {err:.2e}", flush=True)
        calls += [(f"{row['case']} ours", lambda f=ex["main"], a=args: f(*a)),
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
