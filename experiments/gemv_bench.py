"""fp16 GEMV knob configs (schedules/gemv_knobs.py) against cuBLAS, weights from DRAM, no launch gaps.

    PYTHONPATH=/tmp/site:$PWD python3 experiments/gemv_bench.py --out OUT      (on the GPU)
    PYTHONPATH=/tmp/site:$PWD python3 experiments/gemv_bench.py --op dequant --wbits 4 --out OUT
    python3 experiments/gemv_bench.py --dry-run --out OUT                      (CPU: plan only)

For each issue-10 shape (n x k = 4096x4096, 14336x4096, 4096x14336, 28672x8192): random normal
fp16 W and x (torch, seeded), copied into R sets that together exceed 3x the L2
(measure/l2.py `rotation_count`), and knob configs: a fixed list of hand-picked ones that are
valid for the shape, then seeded random valid samples. Each config is built, checked against
torch's product in float64 (output poisoned with NaN; once called directly, once through the
rotated launcher), and timed and metered with the project's energy protocol
(measure/protocol.py, NVML) through `l2.rotated_timer`: one compiled call runs the kernel over
all R sets, round after round. cuBLAS (torch.mv fp16 out, and torch.mm with fp32 out where this
torch has `out_dtype`) runs over the same R sets, captured in a CUDA graph, measured with the
same protocol in the same process: before the first config of a shape, after every
`--ref-every` configs, and after the last; its figure in the summary is the median of those.
Two passes: first `--configs` per shape with ld loads, then `--bulk-configs` per shape with
bulk copies (the newest, least proven path: a kernel whose mbarrier never completes would hang,
so it comes last and a watchdog process kills the run after `--hang-s` without progress,
noting where in OUT/watchdog.txt). Writes OUT/results.json (every measurement, rewritten as it
goes) and OUT/summary.json (GUIDE §6, rewritten after every shape): per shape the least-energy
config within 1.03x cuBLAS's time, else the least-energy one. `--budget-s` bounds the whole run
(default 480 s, under the 9 minutes one device call allows; `--bulk-share` of it for the bulk
pass): each shape gets an equal share of what is left, and configs that do not fit are skipped.

`--op dequant` measures lut_mpgemm's dequant twin at m = 1 instead (schedules/dequant_gemv_knobs.py;
`--wbits`, `--group-size`, `--zero-points`, `--layout fields` for the fp16-pair weight layout of
schedules/weight_layout.py (tensor-core spaces only); default shapes issue 10's three W4/W2 ones), with
random normal weights quantized and packed as the op does, its output checked against the
float64 product with the dequantized weights, and cuBLAS fp16 GEMV on those dequantized weights
(fp16, in their own rotated sets) as the reference: the comparison issue 10 asks for.
`--space lut-dequant-gemv-mma` measures the tensor-core dequant kernels
(schedules/dequant_gemv_mma.py, their hand-picked CURATED_MMA first) instead of the SIMT ones;
`--space gemv-mma` the tensor-core fp16 GEMV (schedules/gemv_mma.py, CURATED_GEMV_MMA first);
`--space gemv-wgmma` the TMA + wgmma fp16 GEMV (schedules/gemv_wgmma.py, CURATED_WGMMA first).
`--op linear --rows M` measures y = x W^T for M <= 16 rows of x (decode at batch M) through
gemv-wgmma (default) or linear-mma, against cuBLAS through torch's F.linear and an fp32-out mm.

--dry-run needs no GPU: it writes OUT/plan.json with the configs per shape, the reasons why
random samples were rejected (counts), and whether each config builds to CUDA source.
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import re
import signal
import statistics
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import tvm
from tvm.target import Target

from energy_tuner.measure import cuda_graph, l2
from energy_tuner.schedules import OpError, make_op
from energy_tuner.schedules.dequant_gemv_knobs import DequantGemvKnobs
from energy_tuner.schedules.dequant_gemv_mma import DequantGemvMma
from energy_tuner.schedules.dequant_gemv_tma import DequantGemvTma
from energy_tuner.schedules.gemv_knobs import GemvKnobs
from energy_tuner.schedules.gemv_mma import GemvMmaKnobs
from energy_tuner.schedules.gemv_wgmma import GemvWgmmaSpace
from energy_tuner.schedules.linear_mma import LinearMmaKnobs

SHAPES = [(4096, 4096), (14336, 4096), (4096, 14336), (28672, 8192)]
DEQUANT_SHAPES = SHAPES[1:]          # issue 10's W4/W2 table
MAX_SLOWDOWN = 1.03
ROUGH_CALL_S = 10e-6    # a GEMV call's time, to size cuBLAS's CUDA-graph replays (~2 ms each)
PROGRESS = "progress.txt"
BASE = {"threads_per_row": 32, "rows_per_cta": 4, "rows_per_thread": 1, "vector_bytes": 16,
        "unroll": 2, "ctas_per_sm": 0, "load": "plain", "prefetch": "none", "x_stage": "global",
        "split_k": 1, "split_reduce": "atomic"}
CURATED = [  # changes to BASE: the load paths, rows per thread, then grid, tile and split-k
    {},
    {"load": "nc"},
    {"load": "nc_no_allocate"},
    {"load": "nc_evict_first"},
    {"rows_per_thread": 2, "load": "nc_no_allocate"},          # x loaded once per 2 or 4 rows
    {"rows_per_thread": 4, "rows_per_cta": 2, "unroll": 1, "load": "nc_no_allocate"},
    {"rows_per_thread": 2, "threads_per_row": 64, "rows_per_cta": 4, "ctas_per_sm": 2,
     "load": "nc"},
    {"load": "nc_no_allocate", "prefetch": "L2::256B"},
    {"unroll": 4, "load": "nc_no_allocate"},
    {"threads_per_row": 64, "rows_per_cta": 2, "unroll": 4, "load": "nc"},
    {"threads_per_row": 128, "rows_per_cta": 1, "load": "nc_no_allocate"},
    {"threads_per_row": 16, "rows_per_cta": 8, "unroll": 4, "load": "nc"},
    {"rows_per_cta": 8, "unroll": 4, "ctas_per_sm": 4, "load": "nc_evict_first", "x_stage": "shared"},
    {"threads_per_row": 64, "rows_per_cta": 8, "ctas_per_sm": 2, "load": "nc_no_allocate"},
    {"threads_per_row": 64, "rows_per_cta": 16, "ctas_per_sm": 1, "x_stage": "shared", "load": "nc"},
    {"split_k": 2, "load": "nc_no_allocate"},
    {"split_k": 4, "split_reduce": "two_pass", "load": "nc"},
]
CURATED_BULK = [  # the bulk-copy path: ring depth, tile size, grid
    {"load": "bulk2"},
    {"load": "bulk3", "unroll": 4},
    {"load": "bulk4", "threads_per_row": 64, "rows_per_cta": 2},
    {"load": "bulk3", "rows_per_cta": 8, "ctas_per_sm": 4, "x_stage": "shared"},
    {"load": "bulk4", "threads_per_row": 64, "rows_per_cta": 8, "ctas_per_sm": 2, "unroll": 4},
    {"load": "bulk2", "threads_per_row": 128, "rows_per_cta": 4, "ctas_per_sm": 1,
     "x_stage": "shared"},
    {"load": "bulk3", "rows_per_thread": 2, "rows_per_cta": 2},
]
BASE_DEQUANT = {"threads_per_row": 32, "rows_per_cta": 4, "weights_per_load": 32, "unroll": 1,
                "ctas_per_sm": 0, "load": "plain", "prefetch": "none", "x_stage": "global",
                "split_k": 1, "split_reduce": "atomic", "scale_apply": "chunk", "decode": "shift"}
BEST_W4_2026_12_01 = {"threads_per_row": 16, "weights_per_load": 128, "load": "nc_evict_first",
                      "x_stage": "shared"}    # gemv_h200_2026-12-01: W4 14336x4096's best
CURATED_DEQUANT = [  # the nibble decode first, each against a shift-decode twin measured before
    {**BEST_W4_2026_12_01, "decode": "nibble"},
    {**BEST_W4_2026_12_01, "decode": "nibble", "x_stage": "shared_f32"},
    BEST_W4_2026_12_01,
    {"threads_per_row": 8, "rows_per_cta": 8, "weights_per_load": 128, "load": "nc_no_allocate",
     "decode": "nibble"},
    {"threads_per_row": 16, "rows_per_cta": 16, "unroll": 2, "load": "nc_no_allocate",
     "prefetch": "L2::128B", "x_stage": "shared", "split_k": 2, "split_reduce": "two_pass",
     "decode": "nibble"},
    {},
    {"scale_apply": "weight"},
    {"load": "nc_no_allocate"},
    {"weights_per_load": 64, "threads_per_row": 16, "load": "nc"},
    {"weights_per_load": 128, "threads_per_row": 8, "rows_per_cta": 8, "load": "nc_no_allocate"},
    {"weights_per_load": 128, "threads_per_row": 16, "rows_per_cta": 4, "load": "nc_evict_first",
     "x_stage": "shared"},
    {"unroll": 2, "load": "nc_no_allocate", "ctas_per_sm": 4},
    {"split_k": 2, "load": "nc"},
]
BASE_MMA = {"row_warps": 4, "k_warps": 1, "thread_cols": 128, "unroll": 1, "mma_chains": 2,
            "fragment": "thread", "offset": "hsub2", "decode": "scaled", "ctas_per_sm": 0,
            "load": "nc_no_allocate", "prefetch": "none", "split_k": 1, "split_reduce": "atomic"}
CURATED_MMA = [  # tensor-core dequant: offsets and decodes first, then bytes in flight, grid, split-k
    {},
    {"offset": "fold"},                      # 0.5 instruction per weight less; float32 sums ~140x
    {"decode": "shift"},                     # larger than the dot product (see the space's doc)
    {"unroll": 2},
    {"mma_chains": 4, "unroll": 2, "load": "nc"},
    {"row_warps": 2, "k_warps": 2},
    {"row_warps": 8, "ctas_per_sm": 2},
    {"ctas_per_sm": 4, "unroll": 2, "load": "nc_evict_first"},
    {"split_k": 2, "split_reduce": "two_pass"},
    {"prefetch": "L2::256B", "unroll": 2},
    {"thread_cols": 32, "fragment": "quad", "unroll": 2, "mma_chains": 1},
    {"thread_cols": 32, "unroll": 2, "row_warps": 8},
    {"row_warps": 1, "k_warps": 4},
    {"offset": "fold", "unroll": 2, "mma_chains": 4},
]
BASE_GEMV_MMA = {"warps": 4, "warps_k": 1, "unroll": 4, "ctas_per_sm": 0, "load": "nc_no_allocate",
                 "prefetch": "none", "x_stage": "global", "split_k": 1, "split_reduce": "atomic"}
CURATED_GEMV_MMA = [  # fp16 on tensor cores: bytes in flight, then rows per CTA and k-warps, grid
    {},
    {"unroll": 8},
    {"unroll": 2},
    {"load": "nc"},
    {"load": "nc_evict_first"},
    {"prefetch": "L2::256B"},
    {"warps": 4, "warps_k": 4},              # 16 rows per CTA: enough CTAs for n = 4096
    {"warps": 8, "warps_k": 2, "unroll": 2},
    {"warps": 8, "warps_k": 8, "unroll": 1},
    {"ctas_per_sm": 4},
    {"ctas_per_sm": 2, "warps": 8, "warps_k": 2},
    {"x_stage": "shared", "warps": 8, "warps_k": 4},
    {"split_k": 2, "split_reduce": "two_pass"},
    {"split_k": 4, "warps": 2},
    {"warps": 2, "unroll": 8},
    {"warps": 1, "unroll": 8},
]
BASE_WGMMA = {"consumers": 2, "stages": 12, "persistent": False, "l2_promotion": 2, "split_k": 1,
              "sm_share": 1.0}
CURATED_WGMMA = [  # TMA + wgmma: cuBLAS's 128-row tile and 12 stages, the table's least-energy
    {},            # configs, then the grid: persistent on a share of the SMs, split-k clusters
    {"stages": 8},
    {"consumers": 1, "stages": 6},
    {"stages": 8, "persistent": True, "sm_share": 0.75},
    {"stages": 8, "persistent": True, "sm_share": 0.5},
    {"consumers": 1, "stages": 6, "persistent": True, "sm_share": 0.75},
    {"consumers": 1, "stages": 12, "persistent": True, "sm_share": 0.5},
    {"consumers": 1, "stages": 12, "split_k": 2},
    {"consumers": 1, "stages": 16, "split_k": 4},
    {"stages": 8, "split_k": 2},
    {"stages": 8, "split_k": 4},
    {"persistent": True},
    {"stages": 4},
    {"consumers": 4, "stages": 6},
    {"l2_promotion": 0},
    {"l2_promotion": 3},
    {"consumers": 1, "stages": 24},
]
BASE_TMA = {"row_warps": 4, "k_warps": 1, "thread_cols": 128, "k_step": 1024, "stages": 4,
            "mma_chains": 2, "fragment": "thread", "offset": "hsub2", "decode": "scaled",
            "ctas_per_sm": 2, "l2_promotion": 2, "box": "quad", "scale_load": "late"}
RING = {"row_warps": 2, "k_warps": 4, "k_step": 2048, "ctas_per_sm": 1, "offset": "fold",
        "scale_load": "ring"}
CURATED_TMA = [  # TMA ring + mma on an H200 (2026-12-03): the scales in the ring, best at
    {**RING, "stages": 8},                                      # W2 (28672x8192: 26.1 us)
    {**RING, "stages": 4, "mma_chains": 4},                     # W4 (36.5 us)
    {**RING, "stages": 6},                                      # W2 4096x14336
    {**RING, "row_warps": 4, "k_warps": 2, "k_step": 1024, "stages": 4},   # W4 14336x4096
    # (2026-12-02): the fields layout's best at W2 and W4
    {"k_warps": 2, "offset": "fold", "scale_load": "early"},    # (28672x8192: 29.8 and 41.1 us)
    {"k_step": 512, "offset": "fold", "scale_load": "early"},   # with the scales loaded early,
    {"k_warps": 2, "offset": "fold"},                           # then as measured, then the
    {"k_step": 512, "offset": "fold"},                          # planes' W2 best two and
    {"row_warps": 2, "k_warps": 2, "offset": "fold", "ctas_per_sm": 1, "stages": 6},  # W4 4096x14336
    {"k_warps": 2},                          # variants; ~43.7 us (16 consumer warps per SM)
    {"k_warps": 2, "mma_chains": 4},
    {"row_warps": 8, "k_step": 512},         # ~44.5 us
    {"row_warps": 2, "k_warps": 2, "ctas_per_sm": 4, "stages": 3},
    {"row_warps": 8, "k_step": 512, "offset": "fold"},
    {"k_step": 512},                         # W4's best (55.7 us), then its variants
    {"k_step": 512, "mma_chains": 4},
    {"k_step": 512, "ctas_per_sm": 3, "stages": 3},
    {"row_warps": 8, "k_step": 512, "ctas_per_sm": 1, "stages": 6},  # W4: 56.2 us
    {"k_warps": 2, "ctas_per_sm": 1, "stages": 6},                   # W4: 61.0 us
    {},                                      # W2: 46.4 us
    {"box": "row"},                          # W2: 47.0 us
    {"k_warps": 2, "box": "row"},            # W2: 47.7 us
    {"k_step": 512, "stages": 6},            # W2: 48.6 us
    {"ctas_per_sm": 0},                      # W4: 66.9 us
    {"thread_cols": 32, "fragment": "quad", "mma_chains": 1, "k_step": 512},
    {"l2_promotion": 3},
    {"k_step": 2048, "stages": 2, "box": "row"},
]
# --space: the spaces the bench can measure per --op, the first the default, with the base and the
# hand-picked changes of their ld pass and their bulk pass
BENCH_SPACES = {"gemv": {GemvKnobs.name: (GemvKnobs, BASE, CURATED, CURATED_BULK),
                         GemvMmaKnobs.name: (GemvMmaKnobs, BASE_GEMV_MMA, CURATED_GEMV_MMA, []),
                         GemvWgmmaSpace.name: (GemvWgmmaSpace, BASE_WGMMA, CURATED_WGMMA, [])},
                "linear": {GemvWgmmaSpace.name: (GemvWgmmaSpace, BASE_WGMMA, CURATED_WGMMA, []),
                           LinearMmaKnobs.name: (LinearMmaKnobs, BASE_GEMV_MMA, CURATED_GEMV_MMA, [])},
                "dequant": {DequantGemvKnobs.name: (DequantGemvKnobs, BASE_DEQUANT, CURATED_DEQUANT, []),
                            DequantGemvMma.name: (DequantGemvMma, BASE_MMA, CURATED_MMA, []),
                            DequantGemvTma.name: (DequantGemvTma, BASE_TMA, CURATED_TMA, [])}}
SM90 = Target({"kind": "cuda", "arch": "sm_90a", "max_threads_per_block": 1024,
               "max_shared_memory_per_block": 232448, "thread_warp_size": 32})


# ---------------------------------------------------------------- the plan (CPU)
def case_name(args, n: int, k: int) -> str:
    if args.op == "linear":
        return f"linear{args.rows}x{n}x{k}"
    return f"gemv{n}x{k}" if args.op == "gemv" else \
        f"dequant{n}x{k}_w{args.wbits}g{args.group_size}" + ("z" if args.zero_points else "") \
        + ("_fields" if args.layout == "fields" else "")


def make_op_for(args, n: int, k: int):
    if args.op == "gemv":
        return make_op("gemv", f"{n},{k}", "float16")
    if args.op == "linear":
        return make_op("linear", f"{args.rows},{n},{k}", "float16")
    layout = {"layout": args.layout} if args.layout == "fields" else {}    # planes: the op's default
    return make_op("lut_mpgemm", f"m=1,n={n},k={k}", "float16",
                   {"wbits": args.wbits, "group_size": args.group_size,
                    "zero_points": args.zero_points, "impl": "dequant", **layout})


def space_name(args) -> str:
    """The --space to measure (default: the op's first)."""
    return args.space or next(iter(BENCH_SPACES[args.op]))


def make_space(args, n: int, k: int, target: Target, sms: int) -> GemvKnobs:
    cls, op = BENCH_SPACES[args.op][space_name(args)][0], make_op_for(args, n, k)
    if args.op == "dequant" and args.layout == "fields" and cls.why_not(op, target):
        raise SystemExit(f"--space {cls.name}: {cls.why_not(op, target)}")
    return cls(op, target, sms=sms)


def bench_configs(space: GemvKnobs, count: int, seed: int, bulk: bool = False,
                  changes: list[dict] | None = None) -> tuple[list[dict], Counter]:
    """`count` distinct valid configs of one pass (bulk copies or the others; curated first, or
    the base with each of `changes` where given, then random samples) and, over 2000 random
    samples, how often each reject reason (numbers blanked) came up."""
    configs, keys = [], set()

    def take(cfg: dict) -> None:
        if (space.reject(cfg) is None and space.key(cfg) not in keys and len(configs) < count
                and str(cfg.get("load", "")).startswith("bulk") == bulk):
            configs.append(cfg)
            keys.add(space.key(cfg))

    _, base, curated, curated_bulk = next(v for spaces in BENCH_SPACES.values()
                                          for v in spaces.values() if type(space) is v[0])
    for change in (curated_bulk if bulk else curated) if changes is None else changes:
        take({**base, **change})
    rng, reasons = np.random.default_rng(seed), Counter()
    for _ in range(2000):
        cfg = space.sample(rng)
        why = space.reject(cfg)
        reasons[re.sub(r"\d+", "N", why) if why else "valid"] += 1
        take(cfg)
    return configs, reasons


def dry_run(args) -> int:
    plan = []
    for n, k in args.shapes:
        space = make_space(args, n, k, SM90, sms=132)
        configs, reasons = bench_configs(space, args.configs, args.seed, changes=args.changes)
        configs += bench_configs(space, args.bulk_configs, args.seed, bulk=True)[0]
        built = []
        for cfg in configs:
            try:
                ex = tvm.compile(space.module(cfg), target=SM90, **space.compile_options)
                src = next(m.inspect_source() for m in ex.mod.imports if m.kind == "cuda")
                built.append("__global__" in src or "binary")
            except Exception as err:  # a build failure is a finding of the plan, not a crash
                built.append(f"build error: {str(err).strip().splitlines()[-1][:200]}")
        set_bytes = sum(math.prod(s) * np.dtype(d).itemsize
                        for s, d in zip(space.op.input_shapes, space.op.input_dtypes))
        plan.append({"case": case_name(args, n, k), "shape": {"n": n, "k": k}, "configs": configs,
                     "builds": built, "sample_rejects": dict(reasons),
                     "rotation_sets_h200": l2.rotation_count(set_bytes, 60 << 20)})
        print(f"{n}x{k}: {len(configs)} configs, {sum(b is True for b in built)} build to CUDA "
              f"source; random samples valid {reasons['valid']}/2000", flush=True)
    (args.out / "plan.json").write_text(json.dumps(plan, indent=1))
    return 0 if all(b is True for p in plan for b in p["builds"]) else 1


# ---------------------------------------------------------------- measuring (GPU)
class Bench:
    def __init__(self, args) -> None:
        import torch

        from energy_tuner.compiler.target import opt_in_shared_memory
        from energy_tuner.measure.meters import NvmlMeter
        from energy_tuner.measure.protocol import Precision, idle_power

        self.torch, self.args = torch, args
        self.dev = tvm.cuda(0)
        self.target = opt_in_shared_memory(Target.from_device(self.dev))
        self.sms = int(self.dev.multi_processor_count)
        self.l2 = l2.l2_bytes(self.dev, default=torch.cuda.get_device_properties(0).L2_cache_size)
        self.meter = NvmlMeter(0)
        self.state = self.meter.device_state()
        self.precision = Precision()
        self.idle_w = idle_power(self.meter)
        self.results: list[dict] = []

    def save(self) -> None:
        (self.args.out / "results.json").write_text(json.dumps(self.results, indent=1))

    def measure(self, run_batch) -> dict:
        """Sustained latency samples and the energy protocol's figures for run_batch."""
        from energy_tuner.measure.protocol import measure_energy

        calls = 1
        while run_batch(calls) * calls < 0.02 and calls < 1 << 20:
            calls *= 2
        samples = [run_batch(calls) for _ in range(5)]
        latency = statistics.median(samples)
        energy = measure_energy(self.meter, run_batch, latency, self.precision,
                                self.state["sm_clock_max_mhz"], self.state["power_limit_w"])
        return {"latency_s": latency, "latency_samples": samples,
                **{k: v for k, v in asdict(energy).items() if k != "windows"},
                "windows": energy.windows}

    def rel_error(self, y, ref) -> float:
        torch = self.torch
        if not bool(torch.isfinite(y).all()):
            return math.inf
        return float(torch.linalg.norm(y.reshape(-1).double() - ref) / torch.linalg.norm(ref))

    def cublas(self, case: str, problem: "Problem") -> list[dict]:
        torch, ref = self.torch, problem.ref
        ws, xs = [w for w, _ in problem.dense_sets], [x for _, x in problem.dense_sets]
        if self.args.op == "linear":   # y = x W^T, as nn.Linear calls it
            variants = {"cublas fp16->fp16": lambda w, x: torch.nn.functional.linear(x, w)}
            fp32 = lambda w, x: torch.mm(x, w.t(), out_dtype=torch.float32)  # noqa: E731
        else:
            variants = {"cublas fp16->fp16": lambda w, x: torch.mv(w, x)}
            fp32 = lambda w, x: torch.mm(w, x[:, None], out_dtype=torch.float32)  # noqa: E731
        try:
            fp32(ws[0], xs[0])
            variants["cublas fp16->fp32"] = fp32
        except (TypeError, RuntimeError) as err:
            print(f"fp32-out cuBLAS not available: {err}", flush=True)
        rows = []
        self.progress(f"{case} cuBLAS")
        for name, fn in variants.items():
            rel = self.rel_error(fn(ws[0], xs[0]).reshape(-1).float(), ref)
            rows.append({"case": case, "kind": "ref", "name": name, "rel_error": rel,
                         **self.measure(self._graph_batch(fn, ws, xs))})
            self.results.append(rows[-1])
            print(f"  {name}: {rows[-1]['sustained_latency_s'] * 1e6:.1f} us, "
                  f"{(rows[-1]['energy_j'] or math.nan) * 1e3:.2f} mJ, "
                  f"{rows[-1]['power_w'] or math.nan:.0f} W", flush=True)
        return rows

    def _graph_batch(self, fn, ws, xs):
        """run_batch for a torch call over the rotated sets: rounds over every set captured in a
        CUDA graph and replayed back to back (measure/cuda_graph.py); seconds per call."""
        sets = len(ws)
        rounds = cuda_graph.graph_batch(lambda: [fn(w, x) for w, x in zip(ws, xs)],
                                        latency_s=sets * ROUGH_CALL_S)

        def run_batch(calls: int) -> float:
            return rounds(math.ceil(calls / sets)) / sets
        run_batch.rounds = rounds   # keep the graph alive as long as the closure
        return run_batch

    def ours(self, case: str, space: GemvKnobs, cfg: dict, problem: "Problem") -> dict:
        torch, out = self.torch, problem.out
        row = {"case": case, "kind": "ours", "name": space.name, "config": cfg,
               "features": space.features(cfg)}
        try:
            ex = tvm.compile(space.module(cfg), target=self.target, **space.compile_options)
        except Exception as err:  # a config that does not build is a result
            return {**row, "status": "build_error", "error": str(err).strip().splitlines()[-1][:300]}
        to_tvm = tvm.runtime.from_dlpack
        t_out = to_tvm(out)
        arg_sets = [[to_tvm(a) for a in args] + [t_out] for args in problem.ours_sets]
        out.fill_(math.nan)
        torch.cuda.synchronize()
        ex["main"](*arg_sets[0])
        self.dev.sync()
        direct = self.rel_error(out, problem.ref)
        launcher = l2.rotated_timer(ex.mod, arg_sets, self.dev)
        out.fill_(math.nan)
        torch.cuda.synchronize()
        launcher(1)
        rotated = self.rel_error(out, problem.ref)
        row.update(rel_error=max(direct, rotated), rel_error_direct=direct,
                   rel_error_rotated=rotated)
        if not row["rel_error"] <= space.op.tolerance:
            return {**row, "status": "wrong"}
        return {**row, "status": "ok", **self.measure(launcher)}

    def progress(self, text: str) -> None:
        """What runs now, for the watchdog (its file's age is the time since progress)."""
        (self.args.out / PROGRESS).write_text(text)

    def problem(self, n: int, k: int) -> "Problem":
        """Inputs in rotated sets (> 3x L2 each for ours and for cuBLAS), output and reference."""
        torch, args = self.torch, self.args
        gen = torch.Generator(device="cuda").manual_seed(args.seed)
        if args.op == "gemv":
            op = make_op_for(args, n, k)
            w = torch.randn((n, k), device="cuda", dtype=torch.float16, generator=gen)
            x = torch.randn((k,), device="cuda", dtype=torch.float16, generator=gen)
            sets = l2.rotation_count(n * k * 2 + k * 2, self.l2)
            dense = [(w, x)] + [(w.clone(), x.clone()) for _ in range(sets - 1)]
            return Problem(op, [list(s) for s in dense], dense, torch.empty((n,), device="cuda"),
                           w.double() @ x.double())
        if args.op == "linear":       # ours take (x, W); cuBLAS's calls below take (W, x)
            op = make_op_for(args, n, k)
            w = torch.randn((n, k), device="cuda", dtype=torch.float16, generator=gen)
            x = torch.randn((args.rows, k), device="cuda", dtype=torch.float16, generator=gen)
            sets = l2.rotation_count(n * k * 2 + args.rows * k * 2, self.l2)
            dense = [(w, x)] + [(w.clone(), x.clone()) for _ in range(sets - 1)]
            return Problem(op, [[x, w] for w, x in dense], dense,
                           torch.empty((args.rows, n), device="cuda"),
                           (x.double() @ w.double().T).reshape(-1))
        op = make_op_for(args, n, k)
        host = op.inputs(np.random.default_rng(args.seed))     # x, packed planes, scales, zeros
        inputs = [torch.from_numpy(a).cuda() for a in host]
        w = torch.from_numpy(op.quantized(*host[1:]).dequantize()).cuda()   # float32 [n, k]
        ref = w.double() @ inputs[0].reshape(-1).double()
        sets = l2.rotation_count(sum(a.nbytes for a in host), self.l2)
        ours = [inputs] + [[a.clone() for a in inputs] for _ in range(sets - 1)]
        w16, x = w.half(), inputs[0].reshape(-1)
        dense_sets = l2.rotation_count(n * k * 2 + k * 2, self.l2)
        dense = [(w16, x)] + [(w16.clone(), x.clone()) for _ in range(dense_sets - 1)]
        return Problem(op, ours, dense, torch.empty((1, n), device="cuda"), ref)

    def case(self, n: int, k: int, deadline: float, bulk: bool) -> None:
        torch, args = self.torch, self.args
        case = case_name(args, n, k)
        space = make_space(args, n, k, self.target, self.sms)
        count = args.bulk_configs if bulk else args.configs
        configs, reasons = bench_configs(space, count, args.seed, bulk,
                                         changes=None if bulk else args.changes)
        if not configs:
            return
        self.progress(f"{case}: preparing inputs")
        problem = self.problem(n, k)
        sets = len(problem.ours_sets)
        set_bytes = sum(a.nbytes for a in problem.ours_sets[0])
        print(f"{case} ({'bulk' if bulk else 'ld'} pass): {len(configs)} configs, {sets} rotated "
              f"sets ({sets * set_bytes / 1e6:.0f} MB, L2 {self.l2 / 1e6:.0f} MB)", flush=True)
        self.results.append({"case": case, "kind": "plan", "pass": "bulk" if bulk else "ld",
                             "op": problem.op.describe(), "sets": sets,
                             "ref_sets": len(problem.dense_sets), "configs": len(configs),
                             "sample_rejects": dict(reasons)})
        self.cublas(case, problem)
        for i, cfg in enumerate(configs):
            if time.monotonic() > deadline:
                self.results.append({"case": case, "kind": "skipped", "configs_left": len(configs) - i,
                                     "why": "time budget"})
                break
            self.progress(f"{case} config {i}: {space.key(cfg)}")
            try:
                row = self.ours(case, space, cfg, problem)
            except Exception as err:  # a kernel that fails on the GPU may poison the context
                row = {"case": case, "kind": "ours", "config": cfg, "status": "run_error",
                       "error": str(err).strip().splitlines()[-1][:300]}
                self.results.append(row)
                self.save()
                torch.cuda.synchronize()  # raises if the context is gone: the run ends here
                continue
            self.results.append(row)
            self.save()
            print(f"  [{i}] {row['status']} {space.key(cfg)}" + (
                f": {row['sustained_latency_s'] * 1e6:.1f} us, {(row['energy_j'] or math.nan) * 1e3:.2f} mJ, "
                f"{row['power_w'] or math.nan:.0f} W" if row["status"] == "ok" else
                f": {row.get('error') or row.get('rel_error')}"), flush=True)
            if (i + 1) % args.ref_every == 0 and i + 1 < len(configs):
                self.cublas(case, problem)
        self.cublas(case, problem)
        self.save()
        del problem
        torch.cuda.empty_cache()


@dataclass
class Problem:
    op: object                       # the Op (gemv, or lut_mpgemm dequant at m = 1)
    ours_sets: list[list]            # per rotated set: our kernel's inputs (torch, on the GPU)
    dense_sets: list[tuple]          # per rotated set: (fp16 W, x) for cuBLAS
    out: object                      # our kernel's output (poisoned before each check)
    ref: object                      # float64 reference of the output, flattened


def summary(results: list[dict], state: dict, args, gpu: str, driver: str) -> dict:
    """GUIDE §6 rows for the shapes that have results."""
    rows = []
    for n, k in args.shapes:
        case = case_name(args, n, k)
        if not any(r["case"] == case for r in results):
            continue
        ours = [r for r in results if r["case"] == case and r["kind"] == "ours"
                and r.get("status") == "ok" and r.get("energy_j")]
        refs = [r for r in results if r["case"] == case and r["kind"] == "ref" and r.get("energy_j")]
        ref_name = "cublas fp16->fp32" if any(r["name"] == "cublas fp16->fp32" for r in refs) \
            else "cublas fp16->fp16"
        refs = [r for r in refs if r["name"] == ref_name]
        desc = make_op_for(args, n, k).describe()
        row = {"case": case, "op": desc["op"], "shape": desc["shape"], "dtype": "float16",
               "out_dtype": "float32", "params": desc.get("params", {})}
        if refs:
            row["ref"] = {"name": ref_name + ("" if args.op != "dequant" else
                                              " on the dequantized weights"), "repeats": len(refs),
                          "ms": statistics.median(r["sustained_latency_s"] for r in refs) * 1e3,
                          "mj": statistics.median(r["energy_j"] for r in refs) * 1e3,
                          "w": statistics.median(r["power_w"] for r in refs)}
        if ours:
            bound = row["ref"]["ms"] / 1e3 * MAX_SLOWDOWN if refs else math.inf
            within = [r for r in ours if r["sustained_latency_s"] <= bound]
            best = min(within or ours, key=lambda r: r["energy_j"])
            row["ours"] = {"ms": best["sustained_latency_s"] * 1e3, "mj": best["energy_j"] * 1e3,
                           "w": best["power_w"], "rel_error": best["rel_error"],
                           "objective": f"energy, latency <= {MAX_SLOWDOWN}x ref" if within
                           else "energy (none within 1.03x ref latency)",
                           "trials": len(ours), "config": best["config"], "space": best["name"]}
        rows.append(row)
    return {"gpu": gpu, "driver": driver, "date": datetime.date.today().isoformat(),
            "commit": args.commit, "command": " ".join(["python3", *sys.argv]), "l2": "rotate",
            "l2_note": "inputs rotated over sets totalling > 3x L2; launches from compiled code "
                       "(ours) or CUDA graphs (cuBLAS); no launch gaps",
            "idle_w": state.get("idle_w"), "rows": rows}


def _watchdog(parent: int, out: Path, hang_s: float) -> None:
    """Kill the bench if it makes no progress for hang_s (a kernel that never finishes, e.g. a
    bulk copy whose mbarrier never completes), noting where in OUT/watchdog.txt."""
    progress = out / PROGRESS
    while True:
        time.sleep(1.0)
        try:
            os.kill(parent, 0)
        except OSError:
            return                       # the bench has ended
        try:
            age = time.time() - progress.stat().st_mtime
        except OSError:
            continue
        if age > hang_s:
            (out / "watchdog.txt").write_text(
                f"no progress for {age:.0f} s; killed the bench during: {progress.read_text()}\n")
            os.kill(parent, signal.SIGKILL)
            return


def gpu_run(args) -> int:
    import multiprocessing as mp

    mp.get_context("fork").Process(target=_watchdog, args=(os.getpid(), args.out, args.hang_s),
                                   daemon=True).start()   # forked before CUDA starts here
    import pynvml

    bench = Bench(args)
    gpu, driver = bench.torch.cuda.get_device_name(), pynvml.nvmlSystemGetDriverVersion()
    state = {**bench.state, "idle_w": bench.idle_w}
    # the ld pass over every shape first, then the bulk pass: a bulk kernel that hangs (killed
    # by the watchdog) costs only what comes after it
    bulk_pass = args.op == "gemv" and args.bulk_configs > 0   # the dequant twin has no bulk path
    passes = [(False, args.budget_s * (1 - args.bulk_share)), (True, args.budget_s)] if bulk_pass \
        else [(False, args.budget_s)]
    for bulk, pass_end in passes:
        for i, (n, k) in enumerate(args.shapes):
            left = pass_end - (time.monotonic() - args.t0)
            bench.case(n, k, time.monotonic() + left / (len(args.shapes) - i), bulk)
            # after every shape, so that a run cut short still leaves what it finished
            (args.out / "summary.json").write_text(
                json.dumps(summary(bench.results, state, args, gpu, driver), indent=1))
    bench.meter.close()
    print(f"done in {time.monotonic() - args.t0:.0f} s; {args.out / 'summary.json'}", flush=True)
    return 0


def changes_list(text: str) -> list[dict]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"not JSON: {err}") from None
    if not (isinstance(value, list) and all(isinstance(c, dict) for c in value)):
        raise argparse.ArgumentTypeError("a JSON list of objects, e.g. '[{\"k_warps\": 2}]'")
    return value


def shapes(text: str) -> list[tuple[int, int]]:
    try:
        out = [tuple(int(v) for v in part.split("x")) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"shapes must look like 4096x4096,14336x4096, got {text!r}")
    if any(len(s) != 2 or min(s) < 1 for s in out):
        raise argparse.ArgumentTypeError(f"shapes must look like 4096x4096,14336x4096, got {text!r}")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--op", choices=("gemv", "linear", "dequant"), default="gemv",
                    help="fp16 GEMV, fp16 linear of --rows rows (x W^T), or lut_mpgemm's dequant "
                         "twin at m = 1 (low-bit weights)")
    ap.add_argument("--rows", type=int, default=16, help="--op linear: rows of x (1..16)")
    ap.add_argument("--wbits", type=int, choices=(1, 2, 3, 4), default=4)
    ap.add_argument("--group-size", type=int, default=128)
    ap.add_argument("--zero-points", action="store_true")
    ap.add_argument("--layout", choices=("planes", "fields"), default="planes",
                    help="packed weight layout of --op dequant (fields: tensor-core spaces only)")
    ap.add_argument("--space", help="knob space to measure (gemv: gemv-simt; dequant: "
                    "lut-dequant-gemv-simt, the default, or lut-dequant-gemv-mma)")
    ap.add_argument("--shapes", type=shapes, help="NxK,NxK,... (default: issue 10's for --op)")
    ap.add_argument("--configs", type=int, default=16, help="configs per shape, ld loads")
    ap.add_argument("--changes", type=changes_list, help="JSON list of changes to the space's "
                    "base config, measured instead of the curated list (invalid ones skipped)")
    ap.add_argument("--bulk-configs", type=int, default=5, help="configs per shape, bulk copies")
    ap.add_argument("--bulk-share", type=float, default=0.3, help="of the budget, for bulk copies")
    ap.add_argument("--hang-s", type=float, default=90.0, help="watchdog: kill after this long "
                    "without progress")
    ap.add_argument("--ref-every", type=int, default=5, help="re-measure cuBLAS after this many configs")
    ap.add_argument("--budget-s", type=float, default=480.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--commit", default=os.environ.get("COMMIT", "unknown"))
    ap.add_argument("--dry-run", action="store_true", help="plan and build to CUDA source only (no GPU)")
    args = ap.parse_args(argv)
    args.t0 = time.monotonic()
    args.shapes = args.shapes or (DEQUANT_SHAPES if args.op == "dequant" else SHAPES)
    if args.space is not None and args.space not in BENCH_SPACES[args.op]:
        print(f"--space for --op {args.op} must be one of {', '.join(BENCH_SPACES[args.op])}, "
              f"got {args.space!r}", file=sys.stderr)
        return 2
    if args.op == "linear" and not 1 <= args.rows <= 16:
        print(f"--rows must be 1..16, got {args.rows}", file=sys.stderr)
        return 2
    if args.configs < 1 or args.ref_every < 1 or args.bulk_configs < 0 \
            or not 0 <= args.bulk_share < 1:
        print("--configs and --ref-every must be >= 1, --bulk-configs >= 0, "
              "--bulk-share in [0, 1)", file=sys.stderr)
        return 2
    try:
        for n, k in args.shapes:
            make_op_for(args, n, k)
    except OpError as err:
        print(f"bad problem: {err}", file=sys.stderr)
        return 2
    try:
        args.out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        print(f"cannot create --out {args.out}: {err.strerror}", file=sys.stderr)
        return 2
    if args.dry_run:
        return dry_run(args)
    if not tvm.cuda(0).exist:
        print("no CUDA device visible to TVM (use --dry-run on a CPU)", file=sys.stderr)
        return 2
    return gpu_run(args)


if __name__ == "__main__":
    sys.exit(main())
