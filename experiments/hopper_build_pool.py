"""How long the tune's build pool takes for 16 Hopper GEMM builds, cold (fresh workers) and warm, on
the GPU host: `python3 experiments/hopper_build_pool.py` (TVM staged; prints completion times).
Written to find the first batch's build wait of the default tune
(experiments/results/hopper_tune_h200_2026-12-02)."""
import os
import tempfile
import time

started = time.perf_counter()
import numpy as np  # noqa: E402
import tvm  # noqa: E402, F401

from energy_tuner.compiler.builder import Builder, compile_module  # noqa: E402
from energy_tuner.compiler.search import usable_cpus  # noqa: E402
from energy_tuner.schedules import make_op  # noqa: E402
from energy_tuner.schedules.hopper_gemm import HopperGemmSpace, sm90a  # noqa: E402


def main() -> None:
    print("import tvm", round(time.perf_counter() - started, 2), "s; cpus",
          len(os.sched_getaffinity(0)), flush=True)
    op = make_op("matmul", "4096,4096,4096", "float16", {"accum": "float32"})
    space = HopperGemmSpace(op, sm90a())
    rng = np.random.default_rng(0)
    configs = list(space.seeds())
    while len(configs) < 16:
        config = space.sample(rng)
        if space.reject(config) is None and config not in configs:
            configs.append(config)
    mods = [space.module(c) for c in configs]
    t = time.perf_counter()
    compile_module(mods[0], space.target, space.compile_options)
    print("one build in this process", round(time.perf_counter() - t, 2), "s", flush=True)
    with tempfile.TemporaryDirectory() as out_dir:
        builder = Builder(space.target, out_dir, workers=usable_cpus(True),
                          compile_options=space.compile_options)
        for pool in ("cold", "warm"):
            t = time.perf_counter()
            done = []
            results = []
            for future in builder.submit(mods):
                results.append(future.result())
                done.append(round(time.perf_counter() - t, 1))
            errors = sum(r.error is not None for r in results)
            print(f"{pool} pool, completions in submit order (s): {done}; {errors} errors",
                  flush=True)
        builder.close()


if __name__ == "__main__":
    main()
