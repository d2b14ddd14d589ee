"""Which L2 policy a measurement uses (the policies themselves: measure/runner.py, measure/l2.py).

- `resident`: every call reads the same inputs, which stay in L2 where they fit (as cuBLAS is
  usually benchmarked);
- `rotate`: calls cycle through copies of the inputs, so they come from DRAM, as a decoding step
  reads each layer's weights;
- `auto` (the CLI's default): `rotate` for an op that streams its weights (`Op.streams_weights`:
  GEMV, and matmul, batch_matmul, linear and lut_mpgemm of at most 16 rows), else `resident`.
Kept free of TVM so that the CLI's parser can name the choices without importing it.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..schedules import Op

L2_POLICIES = ("resident", "rotate")
L2_CHOICES = ("auto", *L2_POLICIES)


def l2_policy(choice: str, op: "Op") -> str:
    """The policy an `--l2` choice means for op."""
    if choice not in L2_CHOICES:
        raise ValueError(f"unknown L2 policy {choice!r} (known: {', '.join(L2_CHOICES)})")
    if choice != "auto":
        return choice
    return "rotate" if op.streams_weights else "resident"
