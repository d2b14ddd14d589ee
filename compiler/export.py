"""Export the chosen kernel as a shared library plus a JSON manifest.

The library is rebuilt from the stored trace (the artifact measured during tuning may be from an
earlier run and is not kept), so an export also proves the trace reproduces the kernel. A fresh
process needs only `tvm.runtime.load_module(path)["main"](*inputs, output)`.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import tvm
from tvm.s_tir import meta_schedule as ms

from .builder import build_to_file
from .database import Record
from .report import kernel_figures
from ..schedules import Op


def export_kernel(op: Op, target: tvm.target.Target, sch: tvm.s_tir.Schedule, record: Record,
                  objective: str, out_dir: str | Path) -> Path:
    """Write `<name>.so` and `<name>.json` into out_dir; returns the manifest's path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    name = f"{op.name}_{'x'.join(str(v) for v in op.shape.values())}_{op.dtype}"
    library = out / f"{name}.so"
    build_to_file(sch.mod, target, str(library))
    args = ms.arg_info.ArgInfo.from_prim_func(sch.mod["main"])
    manifest = {
        **op.describe(),
        "library": library.name,
        "function": "main",
        "arguments": [{"shape": [int(d) for d in a.shape], "dtype": str(a.dtype)} for a in args],
        "target": target.export(),
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
