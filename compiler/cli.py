"""`tune`: search a TVM schedule space for the kernel that is best for latency, energy or EDP."""
from __future__ import annotations

import argparse
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import numpy as np

from ..measure.l2_policy import L2_CHOICES, l2_policy
from ..measure.rpc_server import parse_address
from .objective import KINDS, Objective
from .policy import AUTO, CHOICES

if TYPE_CHECKING:
    from .database import TuningDatabase
    from .target import Platform

DTYPES_FOR_TARGET = {"cuda": ("float16", "bfloat16", "float32"), "llvm": ("float32",)}
DEFAULT_DTYPE = {"cuda": "float16", "llvm": "float32"}


class UsageError(Exception):
    """Bad input: reported as one line on stderr with exit code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def default_db() -> Path:
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "energy-tuner" / "tuning.sqlite"


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="tune", description=__doc__)
    p.add_argument("--op", required=True,
                   help="operator to tune: matmul, batch_matmul, gemv, conv2d or lut_mpgemm")
    p.add_argument("--shape", help="lowercase key=value pairs: matmul m,n,k; batch_matmul "
                                   "b,m,n,k; gemv n,k; conv2d n,h,w,c,k,r,s[,stride=1][,pad=0] "
                                   "(NHWC); lut_mpgemm m,n,k (weights n x k). matmul and gemv also take plain values in that "
                                   "order, e.g. 4096,4096,4096. Default: a per-op, per-target "
                                   "shape")
    p.add_argument("--dtype", choices=("float16", "bfloat16", "float32"),
                   help="input dtype; accumulation and output are float32 (default: float16 on "
                        "cuda, float32 on llvm; llvm supports float32 only; bfloat16: matmul and "
                        "batch_matmul)")
    p.add_argument("--accum", choices=("float32", "float16"),
                   help="matmul, batch_matmul with --dtype float16: accumulate and write the "
                        "output in float32 (default) or float16 (as cuBLAS's CUBLAS_COMPUTE_16F; the correctness "
                        "check then allows a relative error of 2^-11 * sqrt(k))")
    p.add_argument("--target", choices=("auto", "cuda", "llvm"), default="auto",
                   help="auto: the first NVIDIA GPU that NVML and TVM see, else the CPU (llvm)")
    p.add_argument("--objective", choices=KINDS,
                   help="minimize latency (s, the default), energy per call (J) or energy x "
                        "delay (J*s), or report the latency-energy Pareto front (pareto); "
                        "energy needs NVML on a GPU or readable RAPL counters on the CPU")
    p.add_argument("--max-slowdown", type=float, metavar="X",
                   help="least energy among kernels within X times the best latency found "
                        "(X >= 1; implies --objective energy)")
    p.add_argument("--energy-policy", choices=CHOICES, default=AUTO,
                   help="all: measure every correct candidate's energy; dynamic: only those the "
                        "model places near the objective's front (skips are counted and "
                        "reported); auto (default): dynamic on a knob space whose model quality "
                        "was measured (hopper_gemm), else all (on MetaSchedule traces dynamic "
                        "missed a low-power kernel, experiments/results/energy_policy_h200_2026-11-21)")
    p.add_argument("--trials", type=int, default=64,
                   help="candidates to measure for this workload and objective, counting those "
                        "already in --db (re-running continues an interrupted tune)")
    p.add_argument("--db", type=Path, default=default_db(),
                   help=f"SQLite database of every measured candidate (default: {default_db()})")
    p.add_argument("--export", type=Path, metavar="DIR",
                   help="write the best kernel as a shared library and a JSON manifest here")
    p.add_argument("--l2", choices=L2_CHOICES, default="auto",
                   help="auto (default): rotate for ops that stream their weights (gemv, and "
                        "products of at most 16 rows, as in decoding), else "
                        "resident; resident: every call reads the same inputs, which stay in L2 "
                        "where they fit (as cuBLAS is usually timed); rotate: calls cycle through "
                        "input copies totalling 256 MiB, so inputs come from DRAM")
    p.add_argument("--space", default="auto", metavar="NAME",
                   help="the space to search: a registered knob space (template family) that "
                        "applies, or trace (TVM MetaSchedule traces); auto (default): a knob "
                        "space that applies, else trace")
    p.add_argument("--seed", type=int, default=0, help="seed of the search and of the test inputs")
    p.add_argument("--no-seeds", action="store_true",
                   help="start a knob space's search from samples, not from its seed configs "
                        "(the measured bests it starts from by default): to measure the search "
                        "itself, e.g. a warm start's effect")
    p.add_argument("--no-overlap", action="store_true",
                   help="on a GPU, search, build and measure in turns (by default the next "
                        "batch is searched for and built on all CPUs but one while the current "
                        "batch is measured)")
    remote = p.add_argument_group("measuring on RPC workers (README: Measuring on many GPUs)")
    remote.add_argument("--tracker", metavar="HOST:PORT",
                        help="measure on the servers registered with this TVM RPC tracker "
                             "(`python -m energy_tuner.measure.rpc_server`), one candidate per "
                             "free server at a time; default: one local worker")
    remote.add_argument("--key", help="the servers' key at the tracker, e.g. h200")
    remote.add_argument("--tracker-wait", type=float, default=60.0, metavar="S",
                        help="seconds to wait for a free server under --key (default 60)")
    low = p.add_argument_group("lut_mpgemm (low-bit weights)")
    low.add_argument("--wbits", type=int, help="weight bits: 1, 2, 3 or 4 (default 2)")
    low.add_argument("--group-size", type=int, help="weights per scale along k (default 128)")
    low.add_argument("--zero-points", action="store_true",
                     help="asymmetric quantization with a zero point per group (default: symmetric)")
    low.add_argument("--impl", choices=("lut", "dequant", "both"),
                     help="table lookups (LUT-mpGEMM instruction), dequantize-then-multiply, or "
                          "both, splitting the trials and choosing by measurement (default)")
    low.add_argument("--weight-layout", choices=("planes", "fields"),
                     help="how the weights are packed, offline: bit planes (default), or fp16-pair "
                          "fields that the tensor-core dequant kernels decode with one lop3 per "
                          "two weights (implies --impl dequant; W1, W2, W4)")
    return p


def op_params(args: argparse.Namespace) -> list[dict] | None:
    """The op's options: for lut_mpgemm one dict per implementation to tune; None for none."""
    if args.accum is not None and args.op not in ("matmul", "batch_matmul"):
        raise UsageError("--accum applies to --op matmul and batch_matmul only")
    given = [f for f in ("wbits", "group_size", "impl", "weight_layout")
             if getattr(args, f) is not None]
    if args.op != "lut_mpgemm":
        if given or args.zero_points:
            flag = given[0] if given else "zero_points"
            raise UsageError(f"--{flag.replace('_', '-')} applies to --op lut_mpgemm only")
        return [{"accum": args.accum}] if args.accum == "float16" else None
    base = {"zero_points": args.zero_points}
    base.update({f: getattr(args, f) for f in ("wbits", "group_size") if getattr(args, f) is not None})
    from ..schedules.lut_mpgemm import LUT_MIN_GROUP

    if args.weight_layout is not None:
        if args.impl in ("lut", "both"):
            raise UsageError(f"--weight-layout {args.weight_layout} applies to --impl dequant only "
                             "(the LUT implementation reads bit planes)")
        if args.weight_layout == "fields":
            base["layout"] = "fields"
        args.impl = "dequant"
    impls = ("lut", "dequant") if args.impl in (None, "both") else (args.impl,)
    if len(impls) == 2 and args.group_size is not None and 0 < args.group_size < LUT_MIN_GROUP:
        print(f"tune: --group-size {args.group_size}: the LUT implementation needs "
              f">= {LUT_MIN_GROUP}; tuning dequant only", file=sys.stderr)
        impls = ("dequant",)
    return [{**base, "impl": impl} for impl in impls]


def fail(message: str, code: int = 2) -> NoReturn:
    print(f"tune: error: {message}", file=sys.stderr)
    sys.exit(code)


def check_arguments(args: argparse.Namespace) -> Objective:
    """Checks that need no TVM; the objective the arguments ask for."""
    if args.trials < 1:
        raise UsageError(f"--trials must be at least 1, got {args.trials}")
    if not 0 <= args.seed < 2 ** 31:
        raise UsageError(f"--seed must be in [0, 2^31), got {args.seed}")
    if args.shape is not None and not args.shape.strip():
        raise UsageError("--shape is empty (leave it out for the default shape)")
    if (args.tracker is None) != (args.key is None):
        raise UsageError("--tracker needs --key (the servers' key at the tracker)"
                         if args.key is None else "--key needs --tracker HOST:PORT")
    if args.tracker is not None:
        try:
            parse_address(args.tracker)
        except ValueError as err:
            raise UsageError(f"--tracker: {err}") from None
    if not (math.isfinite(args.tracker_wait) and args.tracker_wait >= 0):
        raise UsageError(f"--tracker-wait must be a number of seconds, got {args.tracker_wait:g}")
    return make_objective(args.objective, args.max_slowdown)


def make_objective(kind: str | None = None, max_slowdown: float | None = None) -> Objective:
    """--objective and --max-slowdown as one Objective (a bound implies energy)."""
    if kind is not None and kind not in KINDS:
        raise UsageError(f"unknown objective {kind!r} (known: {', '.join(KINDS)})")
    if max_slowdown is not None:
        if not (math.isfinite(max_slowdown) and max_slowdown >= 1):
            raise UsageError(f"--max-slowdown must be at least 1, got {max_slowdown:g}")
        if kind not in (None, "energy"):
            raise UsageError(f"--max-slowdown bounds the energy objective, not --objective {kind}")
    return Objective(kind or ("energy" if max_slowdown else "latency"), max_slowdown)


# Host memory a tune needs besides the inputs: two output-sized float32 arrays (reference and
# bound) per input set, and about four for checking an output.
HOST_OUTPUTS = 8


def memory_problem(op, plat, l2: str) -> str | None:
    """Why the op's data does not fit (the device's memory for inputs and output, the host's for
    the numpy reference and the checks, two input sets each), or None if it fits."""
    import psutil

    from ..measure.runner import ROTATE_BYTES

    inputs = sum(math.prod(s) * np.dtype(d).itemsize
                 for s, d in zip(op.input_shapes, op.input_dtypes))
    output = math.prod(op.output_shape) * np.dtype(op.output_dtype).itemsize
    host = 2 * inputs + HOST_OUTPUTS * math.prod(op.output_shape) * 4
    device = 2 * inputs + output + (ROTATE_BYTES if l2 == "rotate" else 0)
    available = psutil.virtual_memory().available
    if plat.kind == "cuda":
        memory = plat.device.total_global_memory
        if device > memory:
            return (f"--shape {op.shape_text()}: needs about {device / 2**30:.3g} GiB of GPU memory, "
                    f"{plat.device_name} has {memory / 2**30:.3g} GiB")
    else:
        host += device
    if host > available:
        return (f"--shape {op.shape_text()}: needs about {host / 2**30:.3g} GiB of host memory, "
                f"{available / 2**30:.3g} GiB is available")
    return None


@dataclass
class Plan:
    """A validated `tune` invocation."""
    args: argparse.Namespace
    objective: Objective
    plat: "Platform"
    ops: list
    no_meter: str | None
    db: "TuningDatabase"


def prepare(argv: list[str] | None = None) -> Plan:
    """Parse and validate everything before tuning; raises one of BAD_INPUT on bad input."""
    args = build_parser().parse_args(argv)
    objective = check_arguments(args)
    # TVM is imported only after the arguments are known to be sane: it takes seconds.
    from .database import TuningDatabase
    from .export import check_export_dir
    from .target import resolve
    from ..measure.meters import meter_problem, powercap_root
    from ..schedules import OPS, make_op
    from .spaces import choose_space

    if args.export is not None and (problem := check_export_dir(args.export)):
        raise UsageError(problem)
    plat = resolve(args.target)
    dtype = args.dtype or DEFAULT_DTYPE[plat.kind]
    if dtype not in DTYPES_FOR_TARGET[plat.kind]:
        raise UsageError(f"dtype {dtype} is not supported on target {plat.kind} "
                         f"(supported: {', '.join(DTYPES_FOR_TARGET[plat.kind])})")
    if args.op not in OPS:
        raise UsageError(f"unknown op {args.op!r} (known: {', '.join(sorted(OPS))})")
    shape = args.shape if args.shape is not None else OPS[args.op].default_shape[plat.kind]
    ops = [make_op(args.op, shape, dtype, params) for params in op_params(args) or [None]]
    for op in ops:
        if problem := memory_problem(op, plat, l2_policy(args.l2, op)):
            raise UsageError(problem)
        choose_space(op, plat.target, args.space)
    if args.tracker is not None:  # the servers measure energy where they have a meter
        from ..measure.rpc import NoWorkers, free_servers

        try:
            free_servers(parse_address(args.tracker), args.key, args.tracker_wait)
        except NoWorkers as err:
            raise UsageError(str(err)) from None
        no_meter = None
    else:
        no_meter = meter_problem(plat.kind, plat.device.index, powercap_root())
    if no_meter and objective.needs_energy:
        raise UsageError(f"--objective {objective.kind} needs an energy meter, but "
                         f"{no_meter}; use --objective latency")
    return Plan(args, objective, plat, ops, no_meter, TuningDatabase(args.db))


def bad_input() -> tuple[type[Exception], ...]:
    """The exceptions that mean bad input (one line, exit code 2)."""
    from .database import DatabaseError
    from .target import TargetError
    from ..schedules import OpError
    from .spaces import SpaceError

    return UsageError, OpError, TargetError, DatabaseError, SpaceError


def main(argv: list[str] | None = None) -> int:
    started = time.monotonic()
    try:
        try:
            plan = prepare(argv)
        except UsageError as err:
            fail(str(err))
        except bad_input() as err:
            fail(str(err))
        from .session import run_session
        from .workdir import run_folder

        with run_folder(plan.db.path):
            return run_session(plan.args, plan.objective, plan.plat, plan.ops, plan.no_meter,
                               plan.db, started)
    except KeyboardInterrupt:
        print("tune: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
