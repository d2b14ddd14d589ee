"""Where does a Hopper GEMM config lose time? Times configs on several shapes (time_evaluator),
writes each kernel's CUDA source and SASS (nvcc + cuobjdump), for profiling with ncu.

    python -m experiments.hopper_gemm_probe OUT [config=knobs ...]
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import tvm

from energy_tuner.schedules.hopper_gemm import GemmConfig, build, cuda_source, gemm_func


def main() -> None:
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    specs = [a.split("=", 1) for a in sys.argv[2:]]
    dev = tvm.cuda(0)
    for name, knobs in specs:
        cfg = GemmConfig(**eval(f"dict({knobs})"))
        for m, n, k in [(4096, 4096, 4096), (4096, 4096, 16384), (8192, 8192, 8192)]:
            ex = build(gemm_func(m, n, k, cfg))
            if (m, n, k) == (4096, 4096, 4096):
                src = os.path.join(out, f"{name}.cu")
                open(src, "w").write(cuda_source(ex))
                cubin = src[:-3] + ".cubin"
                subprocess.run(["nvcc", "-gencode=arch=compute_90a,code=sm_90a", "-cubin", "-o", cubin, src],
                               capture_output=True)
                sass = subprocess.run(["cuobjdump", "-sass", cubin], capture_output=True, text=True).stdout
                open(src[:-3] + ".sass", "w").write(sass)
                so = os.path.join(out, f"{name}.so")
                ex.export_library(so)
            rng = np.random.default_rng(0)
            a = tvm.runtime.tensor(rng.uniform(-1, 1, (m, k)).astype("float16"), dev)
            b = tvm.runtime.tensor(rng.uniform(-1, 1, (k, n)).astype("float16"), dev)
            c = tvm.runtime.tensor(np.zeros((m, n), cfg.out_dtype), dev)
            t = ex.mod.time_evaluator("main", dev, number=20, repeat=5)(a, b, c)
            med = float(np.median(t.results))
            print(json.dumps({"config": name, "shape": [m, n, k], "ms": med * 1e3,
                              "tflops": 2 * m * n * k / med / 1e12}), flush=True)


if __name__ == "__main__":
    main()
