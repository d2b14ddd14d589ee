"""cuBLAS/cuDNN (through torch) latency and energy of an op, measured as `tune` measures.

    python -m experiments.cublas_energy --op matmul --shape 4096,4096,4096 --out cublas.json

`--op` and `--shape` are read as `tune` reads them, with float16 inputs in the op's layouts and
the same random inputs as the tune's correctness check. Variants: fp16 out (the usual torch call)
and, for matmul, batch_matmul and gemv, fp16 in/fp32 out (what our float16 ops compute) when this
torch supports `out_dtype`; conv2d runs cuDNN on the NHWC data (channels_last), fp16 out only.
Latency is the median of CUDA-event timed batches (CUDA-graph launched below 50 µs, or as
`--graph-calls` says, so the GPU stays busy); energy per call comes from measure/protocol.py
with its default precision.
"""
from __future__ import annotations

import argparse
import json
import statistics
from dataclasses import asdict
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from experiments.measure_fidelity import events_batch
from energy_tuner.measure.meters import NvmlMeter
from energy_tuner.measure.protocol import Precision, measure_energy
from energy_tuner.schedules import Op, make_op


def to_torch(array: np.ndarray) -> torch.Tensor:
    """A host array as a CUDA tensor; bfloat16 (numpy's, from ml_dtypes) through its bits."""
    if str(array.dtype) == "bfloat16":
        return torch.from_numpy(array.view(np.int16)).view(torch.bfloat16).cuda()
    return torch.from_numpy(np.ascontiguousarray(array)).cuda()


def reference_name(op: Op) -> str:
    """The library call an op's kernels are compared with: e.g. "cublas fp16->fp32"."""
    tag = "bf16" if op.dtype == "bfloat16" else "fp16"
    return f"cublas {tag}->{'fp32' if op.output_dtype == 'float32' else tag}"


def torch_variants(op: Op, x: list[torch.Tensor]) -> dict[str, Callable[[], torch.Tensor]]:
    """Library calls computing `op` from its inputs `x`, by name; each returns the op's output
    shape (possibly as a view)."""
    if op.name == "conv2d":
        data = x[0].permute(0, 3, 1, 2)  # NHWC memory seen as NCHW: channels_last, no copy
        weight = x[1].permute(3, 2, 0, 1).contiguous(memory_format=torch.channels_last)
        g = op.shape
        return {"cudnn fp16->fp16": lambda: F.conv2d(data, weight, stride=g["stride"],
                                                     padding=g["pad"]).permute(0, 2, 3, 1)}
    a, b = x
    if op.name == "gemv":
        b = b[:, None]                   # y = W x as an (n, k) @ (k, 1) product
    mm = torch.bmm if op.name == "batch_matmul" else torch.mm
    tag = "bf16" if op.dtype == "bfloat16" else "fp16"
    variants = {f"cublas {tag}->{tag}": lambda: mm(a, b).reshape(op.output_shape)}
    try:
        mm(a, b, out_dtype=torch.float32)
        variants[f"cublas {tag}->fp32"] = \
            lambda: mm(a, b, out_dtype=torch.float32).reshape(op.output_shape)
    except (TypeError, RuntimeError) as err:
        print(f"fp32-out variant not available: {err}")
    return variants


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--op", default="matmul")
    ap.add_argument("--shape", default="4096,4096,4096")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--graph-calls", type=int,
                    help="calls per CUDA-graph launch (default: 20 below 50 µs per call, else 1)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    op = make_op(args.op, args.shape, "float16")
    host = op.inputs(np.random.default_rng(args.seed))
    ref = op.reference(host).astype("float64")
    x = [torch.from_numpy(a).cuda() for a in host]
    meter = NvmlMeter(torch.cuda.current_device())
    state = meter.device_state()
    results = []
    for name, fn in torch_variants(op, x).items():
        out = fn().double().cpu().numpy()
        rel = float(np.linalg.norm(out - ref) / np.linalg.norm(ref))
        graph_calls = args.graph_calls or (20 if events_batch(fn, 1)(200) < 50e-6 else 1)
        run_batch = events_batch(fn, graph_calls)
        run_batch(10)
        samples = [run_batch(20) for _ in range(10)]
        latency = statistics.median(samples)
        energy = measure_energy(meter, run_batch, latency, Precision(),
                                state["sm_clock_max_mhz"], state["power_limit_w"])
        results.append({"kernel": name, "op": op.name, "shape": op.shape, "rel_error": rel,
                        "latency_s": latency, "latency_samples": samples,
                        "graph_calls": graph_calls,
                        "tflops": op.flops / latency / 1e12,
                        "gflop_per_j": op.flops / energy.energy_j / 1e9,
                        **asdict(energy), "gpu": torch.cuda.get_device_name(),
                        "torch": torch.__version__})
        print(f"{name}: {latency * 1e3:.4f} ms, {energy.energy_j * 1e3:.2f} mJ, "
              f"{energy.power_w:.0f} W, {op.flops / latency / 1e12:.1f} TFLOP/s, "
              f"{op.flops / energy.energy_j / 1e9:.0f} GFLOP/J, rel err {rel:.2e}, "
              f"flags {energy.flags}", flush=True)
    meter.close()
    with open(args.out, "w") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
