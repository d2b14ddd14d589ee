"""Hopper GEMM family on the GPU: correctness and speed of several configs, then energy vs cuBLAS.

    python -m experiments.hopper_gemm_bench --out DIR [--energy] [--cases mm4096,...] [--configs ...]

Each config is built through TVM's TIRx pipeline for sm_90a, exported as a .so, and measured by
the project's Runner (measure/runner.py: NaN-poisoned output, relative error against the op's
numpy reference, time_evaluator latency, NVML energy windows of measure/protocol.py); cuBLAS
(torch) is measured in the same process on the same inputs with the same energy protocol
(experiments/cublas_energy.py), before and after ours for each case (list a config's `_c2` twin,
2x1 clusters multicasting B, next to it, so that both see the same board state) (the summary takes the mean of
the two, so that a drift of the board between them does not favour either). A fresh subprocess then loads
each exported .so with tvm.runtime.load_module alone and checks it again.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import asdict

import tvm

from energy_tuner.schedules import make_op
from energy_tuner.schedules.hopper_gemm import GemmConfig, build, gemm_func, reject

CASES = {
    "mm4096": ("matmul", "4096,4096,4096"), "mm8192": ("matmul", "8192,8192,8192"),
    "mm2048x11008x4096": ("matmul", "2048,11008,4096"), "mm2048x4096x11008": ("matmul", "2048,4096,11008"),
    "bmm8x1024": ("batch_matmul", "b=8,m=1024,n=1024,k=1024"),
}
CONFIGS = {
    "simple": dict(),
    "ws": dict(warp_specialized=True),
    "wsp": dict(warp_specialized=True, persistent=True),
    "wsp_g16": dict(warp_specialized=True, persistent=True, group_m=16),
    "wsp_tma": dict(warp_specialized=True, persistent=True, group_m=16, stages=3, epilogue="tma"),
    "wsp_half": dict(warp_specialized=True, persistent=True, group_m=16, stages=3, epilogue="tma_half"),
    "wsp_tma2": dict(warp_specialized=True, persistent=True, group_m=16, stages=2, epilogue="tma"),
}
# the same with 2x1 clusters whose CTAs multicast the shared B tile (cluster_m = 2), "NAME_c2"
CONFIGS.update({f"{name}_c2": dict(knobs, cluster_m=2) for name, knobs in list(CONFIGS.items())
                if knobs.get("warp_specialized")})


def make_case(case: str, accum: str, dtype: str = "float16"):
    name, shape = CASES[case]
    return make_op(name, shape, dtype, {"accum": accum} if name == "matmul" and accum != "float32" else None)


def kernel_for(op, cfg: GemmConfig):
    g = op.shape
    return gemm_func(g["m"], g["n"], g["k"], cfg, batch=g.get("b", 0))


FRESH_CHECK = r"""
import sys, ml_dtypes, numpy as np, tvm
so, m, n, k, b, out, dtype = sys.argv[1], *map(int, sys.argv[2:6]), sys.argv[6], sys.argv[7]
rng = np.random.default_rng(1)
sa, sb, sc = ((b, m, k), (b, k, n), (b, m, n)) if b else ((m, k), (k, n), (m, n))
a = rng.uniform(-1, 1, sa).astype(dtype); w = rng.uniform(-1, 1, sb).astype(dtype)
f = tvm.runtime.load_module(so)["main"]
dev = tvm.cuda(0)
c = tvm.runtime.tensor(np.full(sc, np.nan, out), dev)
f(tvm.runtime.tensor(a, dev), tvm.runtime.tensor(w, dev), c)
ref = np.matmul(a.astype("float32"), w.astype("float32"))
got = c.numpy().astype("float32")
print("fresh-process rel error %.3g finite %s" % (np.linalg.norm(got - ref) / np.linalg.norm(ref), np.isfinite(got).all()))
"""


def summary(rows: list[dict], state: dict, args) -> dict:
    """GUIDE section 6: per case, our best config by energy against the library call."""
    import torch
    import pynvml
    pynvml.nvmlInit()
    out = {"gpu": torch.cuda.get_device_name(), "driver": pynvml.nvmlSystemGetDriverVersion(),
           "date": time.strftime("%Y-%m-%d"), "commit": os.environ.get("GIT_COMMIT", "unknown"),
           "command": "python -m experiments.hopper_gemm_bench " + " ".join(sys.argv[1:]), "l2": "resident",
           "rows": []}
    for case in dict.fromkeys(r["case"] for r in rows):
        for out_dtype in dict.fromkeys(r["out_dtype"] for r in rows if r["case"] == case):
            mine = [r for r in rows if r["case"] == case and r["out_dtype"] == out_dtype and r.get("mj")
                    and r["config"] in CONFIGS]
            ref = [r for r in rows if r["case"] == case and r["out_dtype"] == out_dtype and r["config"].startswith("cublas")]
            if not mine:
                continue
            best = min(mine, key=lambda r: r["mj"])
            row = {"case": case + ("" if out_dtype == "float32" else "_f16"), "op": best["op"], "shape": best["shape"],
                   "dtype": best["knobs"]["in_dtype"], "out_dtype": out_dtype, "params": best["knobs"],
                   "ours": {"ms": best["ms"], "mj": best["mj"], "w": best["w"], "objective": "energy",
                            "trials": len(mine), "rel_error": best["rel_error"], "config": best["config"]}}
            ref = [r for r in ref if r.get("mj")]
            if ref:
                row["ref"] = {"name": ref[0]["config"], "rounds": len(ref),
                              **{key: statistics.mean(r[key] for r in ref) for key in ("ms", "mj", "w")}}
            out["rows"].append(row)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--cases", default="mm4096")
    ap.add_argument("--configs", default=",".join(CONFIGS))
    ap.add_argument("--accum", default="float32,float16")
    ap.add_argument("--dtype", default="float16", choices=("float16", "bfloat16"),
                    help="input dtype (bfloat16: float32 output only)")
    ap.add_argument("--energy", action="store_true")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    from energy_tuner.measure.meters import NvmlMeter
    from energy_tuner.measure.protocol import Precision, measure_energy
    from energy_tuner.measure.runner import MeasureConfig, Runner
    from experiments.cublas_energy import reference_name, to_torch, torch_variants
    from experiments.measure_fidelity import events_batch

    dev = tvm.cuda(0)
    meter = NvmlMeter(0) if args.energy else None
    state = meter.device_state() if meter else {}
    rows = []

    def library(op, runner, round_: str) -> None:
        """cuBLAS (torch) on the runner's inputs, with our energy protocol: a row of `rows`."""
        x = [to_torch(a.numpy()) for a in runner.arg_sets[0]]
        want = reference_name(op)
        fn = torch_variants(op, x).get(want)
        if fn is None:
            return
        run_batch = events_batch(fn, 1)
        run_batch(10)
        lat = statistics.median(run_batch(20) for _ in range(10))
        ref = {"case": case, "op": op.name, "shape": op.shape, "out_dtype": op.output_dtype, "config": want,
               "round": round_, "ms": lat * 1e3, "tflops": op.flops / lat / 1e12}
        if meter:
            e = measure_energy(meter, run_batch, lat, Precision(), state["sm_clock_max_mhz"], state["power_limit_w"])
            ref.update(ms=e.sustained_latency_s * 1e3, burst_ms=lat * 1e3, tflops=op.flops / e.sustained_latency_s / 1e12,
                       mj=e.energy_j * 1e3, w=e.power_w, meta={k: v for k, v in asdict(e).items()})
        print(json.dumps({k: ref.get(k) for k in ("case", "out_dtype", "config", "round", "ms", "tflops", "mj", "w")}), flush=True)
        rows.append(ref)

    for case in args.cases.split(","):
        for accum in args.accum.split(","):
            op = make_case(case, accum, args.dtype)
            runner = Runner(op, dev, meter, MeasureConfig(), seed=0)
            library(op, runner, "before")
            for cname in args.configs.split(","):
                cfg = GemmConfig(**CONFIGS[cname], out_dtype=op.output_dtype, in_dtype=op.dtype)
                row = {"case": case, "op": op.name, "shape": op.shape, "out_dtype": op.output_dtype,
                       "config": cname, "knobs": asdict(cfg)}
                g = op.shape
                if reject(g["m"], g["n"], g["k"], cfg):
                    continue
                try:
                    t = time.time()
                    so = os.path.join(args.out, f"{case}_{accum}_{cname}.so")
                    build(kernel_for(op, cfg)).export_library(so)
                    row["build_s"] = time.time() - t
                    m = runner.run(so)
                except Exception as err:  # a config that fails to build is a row, not a crash
                    row["error"] = str(err).strip().splitlines()[-1][:300]
                    print(case, accum, cname, "ERROR", row["error"], flush=True)
                    rows.append(row)
                    continue
                sustained = m.meta.get("sustained_latency_s") or m.latency_s
                row.update(status=m.status, error=m.error, rel_error=m.rel_error, ms=sustained and sustained * 1e3,
                           burst_ms=m.latency_s and m.latency_s * 1e3,
                           mj=m.energy_j and m.energy_j * 1e3, w=m.power_w, meta=m.meta)
                if m.latency_s:
                    row["tflops"] = op.flops / sustained / 1e12
                    g = op.shape
                    fresh = subprocess.run([sys.executable, "-c", FRESH_CHECK, so, str(g["m"]), str(g["n"]), str(g["k"]),
                                            str(g.get("b", 0)), op.output_dtype, op.dtype],
                                           capture_output=True, text=True)
                    row["fresh_process"] = (fresh.stdout + fresh.stderr).strip().splitlines()[-1:]
                print(json.dumps({k: row.get(k) for k in ("case", "out_dtype", "config", "status", "rel_error", "ms", "tflops", "mj", "w", "error")}), flush=True)
                rows.append(row)
            library(op, runner, "after")
            with open(os.path.join(args.out, "rows.json"), "w") as f:
                json.dump(rows, f, indent=1, default=str)
    with open(os.path.join(args.out, "rows.json"), "w") as f:
        json.dump(rows, f, indent=1, default=str)
    if meter:
        with open(os.path.join(args.out, "summary.json"), "w") as f:
            json.dump(summary(rows, state, args), f, indent=1)
    print("\n%-20s %-8s %-18s %9s %8s %8s %6s %9s" % ("case", "out", "kernel", "ms", "TFLOP/s", "mJ", "W", "rel_err"))
    for r in rows:
        print("%-20s %-8s %-18s %9s %8s %8s %6s %9s" % (r["case"], r["out_dtype"], r["config"],
              "%.4f" % r["ms"] if r.get("ms") else "-", "%.0f" % r["tflops"] if r.get("tflops") else "-",
              "%.1f" % r["mj"] if r.get("mj") else "-", "%.0f" % r["w"] if r.get("w") else "-",
              "%.2e" % r["rel_error"] if r.get("rel_error") is not None else (r.get("error") or "")[:40]))


if __name__ == "__main__":
    main()
