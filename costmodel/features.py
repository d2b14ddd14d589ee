"""Fixed-length feature vectors for schedule candidates.

Knob-space candidates (schedules/knobs.py): the space's own `features` of a config (tile sizes,
working set, ...) plus the op's log FLOPs, bytes and intensity (`knob_features`).

Trace-space candidates, two parts:
- TVM's PerStoreFeature: one 164-wide row per buffer store, aggregated by sum, max and mean so
  that candidates with different numbers of stores compare;
- kernel-level quantities that drive power: log FLOPs, log bytes moved, log arithmetic intensity
  (from the op), log grid size and log threads per block (from the schedule's thread bindings),
  and whether tensor cores are used (WMMA/MMA buffer scopes). Shared memory and registers per
  thread are only known after lowering and compiling, so they are not in the vector yet.
"""
from __future__ import annotations

import math

import numpy as np
import tvm_ffi
from tvm import tirx
from tvm.s_tir import meta_schedule as ms
from tvm.s_tir.stmt import SBlock

from ..schedules import Op

KERNEL_FEATURES = ("log_flops", "log_bytes", "log_intensity", "log_grid", "log_block",
                   "tensor_cores")
_EXTRACTOR = None


def _extractor() -> ms.feature_extractor.PerStoreFeature:
    global _EXTRACTOR
    if _EXTRACTOR is None:
        _EXTRACTOR = ms.feature_extractor.PerStoreFeature(extract_workload=True)
    return _EXTRACTOR


def aggregate(rows: np.ndarray) -> np.ndarray:
    """[n_stores, d] -> [3 d]: sum, max and mean over stores (zeros when there are none)."""
    if rows.shape[0] == 0:
        return np.zeros(3 * rows.shape[1], dtype=np.float32)
    return np.concatenate([rows.sum(0), rows.max(0), rows.mean(0)]).astype(np.float32)


def launch_shape(func: tirx.PrimFunc) -> tuple[int, int, bool]:
    """(blocks in the grid, threads per block, uses tensor cores) read off a scheduled PrimFunc."""
    extents: dict[str, int] = {}
    scopes: set[str] = set()

    def on_for(loop: tirx.For) -> None:
        if loop.thread_binding is not None:
            tag = loop.thread_binding.thread_tag
            extents[tag] = max(extents.get(tag, 1), int(loop.extent))

    def on_block(block: SBlock) -> None:
        scopes.update(buf.scope() for buf in block.alloc_buffers)

    tvm_ffi.structural_walk(func.body, [(tirx.For, on_for), (SBlock, on_block)])
    grid = math.prod(v for k, v in extents.items() if k.startswith("blockIdx"))
    block = math.prod(v for k, v in extents.items() if k.startswith("threadIdx"))
    return grid, block, any(s.startswith(("wmma", "m16n8k8")) for s in scopes)


def kernel_features(op: Op, func: tirx.PrimFunc) -> np.ndarray:
    grid, block, tensor_cores = launch_shape(func)
    return np.array(op_features(op) + [math.log(grid), math.log(block), float(tensor_cores)],
                    dtype=np.float32)


def candidate_features(context: ms.TuneContext, candidates: list[ms.MeasureCandidate],
                       op: Op) -> np.ndarray:
    """One row per candidate; PerStoreFeature extraction runs on the context's threads."""
    if not candidates:
        return np.zeros((0, 0), dtype=np.float32)
    matrices = _extractor().extract_from(context, candidates)
    return np.stack([np.concatenate([aggregate(m.numpy()), kernel_features(op, c.sch.mod["main"])])
                     for m, c in zip(matrices, candidates)])


def op_features(op: Op) -> list[float]:
    """What the op alone fixes: log FLOPs, log bytes moved, log arithmetic intensity."""
    return [math.log(op.flops), math.log(op.bytes_moved), math.log(op.flops / op.bytes_moved)]


def knob_features(op: Op, rows: list[dict[str, float]]) -> np.ndarray:
    """One row per knob config from its space's `features` dict (in name order), plus the op's."""
    if not rows:
        return np.zeros((0, 0), dtype=np.float32)
    names = sorted(rows[0])
    return np.array([[row[n] for n in names] + op_features(op) for row in rows], dtype=np.float32)
