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

from dataclasses import dataclass, field

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


def judge(op: Op, expected: Expected, got: np.ndarray) -> Verdict:
    """The three checks of the module docstring on one output. A correct output costs three passes
    over it (difference, its norm, its ratio to the bound): a NaN or Inf in `got` makes the norm
    non-finite, so the element-wise finiteness scan runs only then."""
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
