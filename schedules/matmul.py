"""Dense matmul C[m, n] = A[m, k] @ B[k, n], accumulated and stored in float32.

float16 means float16 inputs with float32 accumulation and output (what tensor cores do natively
and what MetaSchedule's WMMA rules match); float32 means float32 throughout.
"""
from __future__ import annotations

import numpy as np
from tvm import te, tirx

from schedules.op import Op, register


@register
class Matmul(Op):
    name = "matmul"
    dtypes = ("float16", "float32")
    shape_keys = ("m", "n", "k")

    def prim_func(self) -> tirx.PrimFunc:
        m, n, k = (self.shape[key] for key in self.shape_keys)
        a = te.placeholder((m, k), self.dtype, name="A")
        b = te.placeholder((k, n), self.dtype, name="B")
        r = te.reduce_axis((0, k), name="k")
        c = te.compute(
            (m, n),
            lambda i, j: te.sum(a[i, r].astype("float32") * b[r, j].astype("float32"), axis=r),
            name="C",
        )
        return te.create_prim_func([a, b, c]).with_attr("global_symbol", "main")

    def inputs(self, rng: np.random.Generator) -> list[np.ndarray]:
        m, n, k = (self.shape[key] for key in self.shape_keys)
        a = rng.uniform(-1.0, 1.0, (m, k)).astype(self.dtype)
        b = rng.uniform(-1.0, 1.0, (k, n)).astype(self.dtype)
        return [a, b]

    def reference(self, inputs: list[np.ndarray]) -> np.ndarray:
        a, b = inputs
        return a.astype("float32") @ b.astype("float32")

    @property
    def output_shape(self) -> tuple[int, ...]:
        return (self.shape["m"], self.shape["n"])

    @property
    def output_dtype(self) -> str:
        return "float32"

    @property
    def flops(self) -> int:
        return 2 * self.shape["m"] * self.shape["n"] * self.shape["k"]

    @property
    def bytes_moved(self) -> int:
        m, n, k = (self.shape[key] for key in self.shape_keys)
        in_size = np.dtype(self.dtype).itemsize
        return (m * k + k * n) * in_size + m * n * 4

    @property
    def tolerance(self) -> float:
        # float32 accumulation in another order than numpy's: error grows like sqrt(k) * eps32.
        return 1e-4
