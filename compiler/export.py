"""Export the chosen kernel as a shared library plus a JSON manifest.

The library is rebuilt from the stored trace (or knob config) (the artifact measured during tuning may be from an
earlier run and is not kept), so an export also proves the trace reproduces the kernel. A fresh
process needs only `tvm.runtime.load_module(path)["main"](*inputs, output)`.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import tvm
from tvm.s_tir import meta_schedule as ms

from .builder import build_to_file
from .database import Record
from .identity import target_json
from .report import kernel_figures, param_tags
from .spaces import choose_space, stored_module
from ..schedules import Op, design_space


def export_name(op: Op) -> str:
    """File name stem: op, shape, dtype and the op's parameters (e.g. wbits, group size, zero
    points, implementation, accumulation), so that differently parameterized kernels of one shape
    do not overwrite each other."""
    shape = "x".join(str(v) for v in op.shape.values())
    return "_".join([op.name, shape, op.dtype, *param_tags(op)])


def check_export_dir(path: Path) -> str | None:
    """Why `path` cannot be (made) a writable folder, or None if it can (nothing is created)."""
    path = Path(path)
    if path.exists():
        if not path.is_dir():
            return f"--export {path}: exists and is not a folder"
        return None if os.access(path, os.W_OK | os.X_OK) else f"--export {path}: not writable"
    parent = path.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        return f"--export {path}: cannot be a folder, {parent} is a file"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"--export {path}: cannot create it, {parent} is not writable"
    return None


def stored_kernel(op: Op, target: tvm.target.Target, trace
                  ) -> tuple[tvm.IRModule, tvm.target.Target, dict]:
    """The module a stored trace column describes, and the target and options to compile it with.

    A knob-space record names its space (`{"space", "config"}`); anything else is a MetaSchedule
    trace, replayed after the op's design space is built: building it registers the tensor
    intrinsics its traces name (the LUT-mpGEMM instruction), which a fresh process that measured
    nothing has not done."""
    if isinstance(trace, dict) and "space" in trace:
        space = choose_space(op, target, trace["space"])
        return stored_module(space, trace), space.target, space.compile_options
    design_space(op, target)
    sch = tvm.s_tir.Schedule(tvm.IRModule({"main": op.prim_func()}))
    tvm.s_tir.schedule.Trace.apply_json_to_schedule(trace, sch)
    return sch.mod, target, {}


def export_kernel(op: Op, target: tvm.target.Target, record: Record, objective: str,
                  out_dir: str | Path) -> Path:
    """Write `<export_name>.so` and `.json` into out_dir; returns the manifest's path."""
    mod, build_target, options = stored_kernel(op, target, record.trace)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    name = export_name(op)
    library = out / f"{name}.so"
    build_to_file(mod, build_target, str(library), options)
    args = ms.arg_info.ArgInfo.from_prim_func(op.prim_func())  # a knob module's main takes these too
    manifest = {
        **op.describe(),
        "library": library.name,
        "function": "main",
        "arguments": [{"shape": [int(d) for d in a.shape], "dtype": str(a.dtype)} for a in args],
        "target": json.loads(target_json(build_target)),
        "device": record.device,
        "objective": objective,
        "measured": {**kernel_figures(op, record), "rel_error": record.rel_error,
                     "latency_samples_s": record.latency_samples},
        "db_record_id": record.id,
        "exported_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    path = out / f"{name}.json"
    path.write_text(json.dumps(manifest, indent=2, default=str))
    return path
