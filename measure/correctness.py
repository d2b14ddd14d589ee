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


def _errors(got: np.ndarray, output: np.ndarray, bound: np.ndarray) -> tuple[float, np.ndarray]:
    """(sum of squared errors, |got - output| / bound element-wise) of matching arrays; the
    ratios are a new float32 array (got may be a view of the device buffer's copy)."""
    diff = got.astype("float32")
    np.subtract(diff, output, out=diff)
    np.abs(diff, out=diff)
    flat = diff.reshape(-1)
    return float(np.dot(flat, flat)), np.divide(diff, bound, out=diff)


def judge(op: Op, expected: Expected, got: np.ndarray) -> Verdict:
    """The three checks of the module docstring on one output. A correct output costs three passes
    over it (difference, its norm, its ratio to the bound), in chunks on a few threads (numpy
    releases the GIL); a wrong one is looked at again in one piece, to say where it is wrong
    (a NaN or Inf makes the norm non-finite, so the finiteness scan runs only then)."""
    flat, out, bound = (np.ascontiguousarray(a).reshape(-1)
                        for a in (got, expected.output, expected.bound))

    def chunk(lo: int) -> tuple[float, float]:
        sq, ratio = _errors(flat[lo:lo + CHUNK], out[lo:lo + CHUNK], bound[lo:lo + CHUNK])
        return sq, float(ratio.max())

    parts = list(_pool().map(chunk, range(0, flat.size, CHUNK)))
    rel = float(np.sqrt(sum(sq for sq, _ in parts))) / max(expected.norm, 1e-30)
    worst_ratio = max(ratio for _, ratio in parts)
    if rel <= op.tolerance and worst_ratio <= 1.0:
        return Verdict(rel, worst_ratio, None)
    if not np.isfinite(rel):
        finite = np.isfinite(got)
        if not finite.all():
            bad = int(finite.size - np.count_nonzero(finite))
            first = tuple(int(i) for i in np.argwhere(~finite)[0])
            return Verdict(float("inf"), float("inf"),
                           f"{bad} elements are NaN or Inf (first at {first})")
    _, ratio = _errors(got, expected.output, expected.bound)
    worst_ratio = float(ratio.max())
    worst = np.unravel_index(int(np.argmax(ratio)), ratio.shape)
    if not rel <= op.tolerance:
        return Verdict(rel, worst_ratio, f"relative error {rel:.3g} > {op.tolerance:g}")
    beyond = int(np.count_nonzero(ratio > 1.0))
    index = tuple(int(i) for i in worst)
    return Verdict(rel, worst_ratio,
                   f"{beyond} elements beyond the element-wise bound (worst at {index}: "
                   f"{float(got[worst]):.6g} vs {float(expected.output[worst]):.6g}, "
                   f"{worst_ratio:.3g}x the bound)")
