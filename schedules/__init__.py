"""Operators and their TVM schedule spaces.

`make_op` turns CLI input (op name, shape text, dtype) into an `Op`; `design_space` gives the
MetaSchedule space generator for an op on a target.
"""
from . import conv2d, lut_mpgemm, matmul  # noqa: F401  registers the ops
from . import lut, lut_intrin, lut_space  # noqa: F401
from . import hopper_gemm  # noqa: F401  registers the Hopper GEMM knob space
from . import gemv_wgmma  # noqa: F401  the TMA + wgmma GEMV space, before the SIMT one (auto's order)
from . import dequant_gemv_knobs, gemv_knobs, gemv_mma  # noqa: F401  registers the GEMV knob spaces
from . import cpu_matmul  # noqa: F401  registers its knob space
from . import dequant_gemv_mma  # noqa: F401  registers the tensor-core dequant GEMV space
from . import dequant_gemv_tma  # noqa: F401  and its TMA-ring twin (sm_90)
from . import linear_mma  # noqa: F401  registers the tensor-core skinny GEMM space
from .op import Op, OpError, make_op, op_from_description, OPS
from .space import design_space

__all__ = ["Op", "OpError", "make_op", "op_from_description", "OPS", "design_space"]
