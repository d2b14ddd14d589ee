"""Is a kernel's output right? Three checks against the op's numpy reference, all of which must pass:

1. every element is finite (the output buffer is poisoned with NaN first, so an element the
   kernel never writes is caught);
2. the relative Frobenius error ||out - ref|| / ||ref|| is within the op's `tolerance` (catches
   errors spread thinly over the whole output, e.g. dropped products);
3. every element is within the op's element-wise bound `Op.error_bound` (c * u * sqrt(k) *
   (|A||B|)ij for a product), which the norm alone misses: a zeroed row, a sign-flipped tile or
   one element far off in a large output move the norm by little.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cache

import numpy as np

from ..schedules import Op


@dataclass
class Expected:
    """One set of inputs with the reference output and the element-wise error bound."""

    inputs: list[np.ndarray]
    output: np.ndarray
    bound: np.ndarray
    norm: float = field(init=False)  # ||output||, computed once

    def __post_init__(self) -> None:
        flat = self.output.reshape(-1).astype("float32", copy=False)
        self.norm = float(np.sqrt(np.dot(flat, flat)))

    @classmethod
    def draw(cls, op: Op, rng: np.random.Generator) -> "Expected":
        inputs = op.inputs(rng)
        return cls(inputs, op.reference(inputs).astype("float32"), op.error_bound(inputs))


@dataclass
class Verdict:
    rel_error: float            # inf when an element is not finite
    bound_ratio: float          # largest |out - ref| / bound over the elements (inf: not finite)
    problem: str | None         # None: correct; else one line saying what is wrong

    @property
    def ok(self) -> bool:
        return self.problem is None


CHUNK = 1 << 20   # elements a thread judges at once: large outputs are judged by several threads


@cache
def _pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max(1, min(4, len(os.sched_getaffinity(0)))),
                              thread_name_prefix="judge")


def _chunk(got: np.ndarray, expected: Expected, lo: int, hi: int) -> tuple[float, float]:
    """(sum of squared errors, largest error / bound) over flat elements lo..hi."""
    diff = got[lo:hi].astype("float32")
    np.subtract(diff, expected.output.reshape(-1)[lo:hi], out=diff)
    np.abs(diff, out=diff)
    sq = float(np.dot(diff, diff))
    return sq, float(np.divide(diff, expected.bound.reshape(-1)[lo:hi], out=diff).max())


def judge(op: Op, expected: Expected, got: np.ndarray) -> Verdict:
    """The three checks of the module docstring on one output. A correct output costs three passes
    over it (difference, its norm, its ratio to the bound), in chunks on a few threads (numpy
    releases the GIL); a wrong one (NaN or Inf make the norm non-finite) is judged again in one
    piece, to say where it is wrong."""
    flat = np.ascontiguousarray(got).reshape(-1)
    parts = list(_pool().map(lambda lo: _chunk(flat, expected, lo, lo + CHUNK),
                             range(0, flat.size, CHUNK)))
    rel = float(np.sqrt(sum(sq for sq, _ in parts))) / max(expected.norm, 1e-30)
    worst_ratio = max(ratio for _, ratio in parts)
    if rel <= op.tolerance and worst_ratio <= 1.0:
        return Verdict(rel, worst_ratio, None)
    return _diagnose(op, expected, got)


def _diagnose(op: Op, expected: Expected, got: np.ndarray) -> Verdict:
    """The verdict on a wrong output, with the line that says what is wrong."""
    diff = got.astype("float32")  # a copy (got may be a view of the device buffer's copy)
    np.subtract(diff, expected.output, out=diff)
    np.abs(diff, out=diff)
    flat = diff.reshape(-1)
    rel = float(np.sqrt(np.dot(flat, flat))) / max(expected.norm, 1e-30)
    if not np.isfinite(rel):
        finite = np.isfinite(got)
        if not finite.all():
            bad = int(finite.size - np.count_nonzero(finite))
            first = tuple(int(i) for i in np.argwhere(~finite)[0])
            return Verdict(float("inf"), float("inf"),
                           f"{bad} elements are NaN or Inf (first at {first})")
    ratio = np.divide(diff, expected.bound, out=diff)
    worst_ratio = float(ratio.max())
    if rel <= op.tolerance and worst_ratio <= 1.0:
        return Verdict(rel, worst_ratio, None)
    worst = np.unravel_index(int(np.argmax(ratio)), ratio.shape)
    if not rel <= op.tolerance:
        return Verdict(rel, worst_ratio, f"relative error {rel:.3g} > {op.tolerance:g}")
    beyond = int(np.count_nonzero(ratio > 1.0))
    index = tuple(int(i) for i in worst)
    return Verdict(rel, worst_ratio,
                   f"{beyond} elements beyond the element-wise bound (worst at {index}: "
                   f"{float(got[worst]):.6g} vs {float(expected.output[worst]):.6g}, "
                   f"{worst_ratio:.3g}x the bound)")
