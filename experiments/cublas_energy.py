"""cuBLAS (through torch) matmul latency and energy, measured with the same protocol as `tune`.

    python -m experiments.cublas_energy --shape 4096,4096,4096 --out cublas.json

Two variants: fp16 in/fp16 out (the usual torch.matmul) and fp16 in/fp32 out (what our float16
matmul computes), when this torch supports `out_dtype`. Latency is the median of CUDA-event timed
batches; energy per call comes from measure/protocol.py with its default precision.
"""
from __future__ import annotations

import argparse
import json
import statistics
from dataclasses import asdict

import torch

from experiments.measure_fidelity import events_batch
from measure.meters import NvmlMeter
from measure.protocol import Precision, measure_energy


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="4096,4096,4096")
    ap.add_argument("--out", required=True)
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
    state = meter.device_state()
    flops = 2 * m * n * k
    results = []
    for name, fn in variants.items():
        rel = float(torch.linalg.norm(fn().double() - ref) / torch.linalg.norm(ref))
        run_batch = events_batch(fn, 1)
        run_batch(10)
        samples = [run_batch(20) for _ in range(10)]
        latency = statistics.median(samples)
        energy = measure_energy(meter, run_batch, latency, Precision(),
                                state["sm_clock_max_mhz"], state["power_limit_w"])
        results.append({"kernel": name, "shape": [m, n, k], "rel_error": rel,
                        "latency_s": latency, "latency_samples": samples,
                        "tflops": flops / latency / 1e12,
                        "gflop_per_j": flops / energy.energy_j / 1e9,
                        **asdict(energy), "gpu": torch.cuda.get_device_name(),
                        "torch": torch.__version__})
        print(f"{name}: {latency * 1e3:.4f} ms, {energy.energy_j * 1e3:.2f} mJ, "
              f"{energy.power_w:.0f} W, {flops / latency / 1e12:.0f} TFLOP/s, "
              f"{flops / energy.energy_j / 1e9:.0f} GFLOP/J, rel err {rel:.2e}, "
              f"flags {energy.flags}", flush=True)
    meter.close()
    with open(args.out, "w") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
