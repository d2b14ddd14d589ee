"""cuBLAS (through torch) matmul latency and energy, measured with the same method as `tune`.

    python experiments/cublas_energy.py --shape 4096,4096,4096 --out cublas.json [--ticks ticks.json]

Two variants: fp16 in/fp16 out (the usual torch.matmul) and fp16 in/fp32 out (what our float16
matmul computes), when this torch supports `out_dtype`. Energy per call = average NVML power over
back-to-back windows x the per-call time of those windows (measure/energy.py).
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import time

import torch

from measure.energy import measure_energy
from measure.meters import NvmlMeter


def events_time(fn, calls: int) -> float:
    """Seconds per call of `calls` back-to-back launches, timed with CUDA events."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(calls):
        fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / 1e3 / calls


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="4096,4096,4096")
    ap.add_argument("--out", required=True)
    ap.add_argument("--ticks", help="also save raw NVML ticks around one idle-busy-idle cuBLAS batch here")
    args = ap.parse_args()
    m, n, k = (int(x) for x in args.shape.split(","))
    gen = torch.Generator(device="cuda").manual_seed(0)
    a = torch.rand((m, k), device="cuda", dtype=torch.float16, generator=gen) * 2 - 1
    b = torch.rand((k, n), device="cuda", dtype=torch.float16, generator=gen) * 2 - 1
    ref = a.double() @ b.double()
    variants = {"cublas fp16->fp16": lambda: torch.matmul(a, b)}
    try:
        torch.mm(a, b, out_dtype=torch.float32)
        variants["cublas fp16->fp32"] = lambda: torch.mm(a, b, out_dtype=torch.float32)
    except (TypeError, RuntimeError) as err:
        print(f"fp32-out variant not available: {err}")
    meter = NvmlMeter(torch.cuda.current_device())
    results = []
    for name, fn in variants.items():
        out = fn()
        rel = float(torch.linalg.norm(out.double() - ref) / torch.linalg.norm(ref))
        for _ in range(10):
            fn()
        samples = [events_time(fn, 20) for _ in range(10)]
        latency = statistics.median(samples)

        def run_batch(calls: int) -> float:
            return events_time(fn, calls)

        energy = measure_energy(meter, run_batch, latency, window_s=0.5, windows=3)
        flops = 2 * m * n * k
        results.append({
            "kernel": name, "shape": [m, n, k], "rel_error": rel, "latency_s": latency,
            "latency_samples": samples, "energy_j": energy.energy_j, "power_w": energy.power_w,
            "power_cv": energy.power_cv, "sustained_latency_s": energy.sustained_latency_s,
            "tflops": flops / latency / 1e12, "gflop_per_j": flops / energy.energy_j / 1e9,
            "windows": energy.windows, **meter.device_state(),
            "gpu": torch.cuda.get_device_name(), "torch": torch.__version__,
        })
        print(f"{name}: {latency * 1e3:.4f} ms, {energy.energy_j * 1e3:.2f} mJ, "
              f"{energy.power_w:.0f} W, {flops / latency / 1e12:.0f} TFLOP/s, "
              f"{flops / energy.energy_j / 1e9:.0f} GFLOP/J, rel err {rel:.2e}", flush=True)
    if args.ticks:  # a raw trace for tests/data: idle, busy, idle
        fn = variants["cublas fp16->fp16"]
        start = time.monotonic()
        time.sleep(0.4)
        busy_start = time.monotonic()
        per_call = events_time(fn, math.ceil(0.6 / latency))
        busy_end = time.monotonic()
        time.sleep(0.4)
        trace = {"gpu": torch.cuda.get_device_name(), "kernel": "cublas fp16->fp16",
                 "shape": [m, n, k], "per_call_s": per_call, "busy_start": busy_start,
                 "busy_end": busy_end, "ticks": meter.ticks_between(start, time.monotonic())}
        json.dump(trace, open(args.ticks, "w"), indent=1)
    meter.close()
    json.dump(results, open(args.out, "w"), indent=1)


if __name__ == "__main__":
    main()
