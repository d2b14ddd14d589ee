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

from dataclasses import dataclass

import numpy as np

from ..schedules import Op


@dataclass
class Expected:
    """One set of inputs with the reference output and the element-wise error bound."""

    inputs: list[np.ndarray]
    output: np.ndarray
    bound: np.ndarray

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


def judge(op: Op, expected: Expected, got: np.ndarray) -> Verdict:
    """The three checks of the module docstring on one output."""
    finite = np.isfinite(got)
    if not finite.all():
        bad = int(finite.size - np.count_nonzero(finite))
        first = tuple(int(i) for i in np.argwhere(~finite)[0])
        return Verdict(float("inf"), float("inf"),
                       f"{bad} elements are NaN or Inf (first at {first})")
    diff = np.abs(got.astype("float32") - expected.output)
    rel = float(np.linalg.norm(diff) / max(float(np.linalg.norm(expected.output)), 1e-30))
    ratio = diff / expected.bound
    worst = np.unravel_index(int(np.argmax(ratio)), ratio.shape)
    worst_ratio = float(ratio[worst])
    if not rel <= op.tolerance:
        return Verdict(rel, worst_ratio, f"relative error {rel:.3g} > {op.tolerance:g}")
    if not worst_ratio <= 1.0:
        beyond = int(np.count_nonzero(ratio > 1.0))
        index = tuple(int(i) for i in worst)
        return Verdict(rel, worst_ratio,
                       f"{beyond} elements beyond the element-wise bound (worst at {index}: "
                       f"{float(got[worst]):.6g} vs {float(expected.output[worst]):.6g}, "
                       f"{worst_ratio:.3g}x the bound)")
    return Verdict(rel, worst_ratio, None)
