"""Operators and their TVM schedule spaces.

`make_op` turns CLI input (op name, shape text, dtype) into an `Op`; `design_space` gives the
MetaSchedule space generator for an op on a target.
"""
from schedules import conv2d, lut_mpgemm, matmul  # noqa: F401  registers the ops
from schedules import lut, lut_intrin, lut_space  # noqa: F401
from schedules.op import Op, OpError, make_op, op_from_description, OPS
from schedules.space import design_space

__all__ = ["Op", "OpError", "make_op", "op_from_description", "OPS", "design_space"]
