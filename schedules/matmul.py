"""Dense products: matmul C[m, n] = A[m, k] @ B[k, n], batch_matmul, gemv y[n] = W[n, k] @ x[k] and
linear y[m, n] = x[m, k] @ W[n, k]^T (W as nn.Linear stores it; decode's skinny GEMM at m <= 16).

float16 means float16 inputs with float32 accumulation and output (what tensor cores do natively
and what MetaSchedule's WMMA rules match); float32 means float32 throughout. matmul and
batch_matmul (and gemv) also take float16 inputs with float16 accumulation and output (option
accum=float16), as cuBLAS's CUBLAS_COMPUTE_16F does: tensor cores accumulate in float16 at up to
twice the rate. They also take bfloat16 inputs (float32 accumulation and output), the format
most LLM weights ship in.
"""
from __future__ import annotations

import math

import numpy as np
from tvm import te

from .op import FEW_ROWS, Op, OpError, register


def _f32(x: te.Tensor, *idx) -> te.Expr:
    return x[idx].astype("float32")


class Product(Op):
    """An m x n output of k products each: the output shape and FLOPs of matmul, linear and
    lut_mpgemm."""
    shape_keys = ("m", "n", "k")

    @property
    def output_shape(self):
        return (self.shape["m"], self.shape["n"])

    @property
    def flops(self) -> int:
        return 2 * self.shape["m"] * self.shape["n"] * self.shape["k"]

    @property
    def reduction_length(self) -> int:
        return self.shape["k"]

    @property
    def streams_weights(self) -> bool:
        return self.shape["m"] <= FEW_ROWS


class Accumulation(Op):
    """The accum option of matmul and batch_matmul: float32 accumulation and output, or float16
    (from float16 inputs) as cuBLAS's CUBLAS_COMPUTE_16F and torch's float16 products give."""
    options = ("accum",)

    @property
    def output_dtype(self) -> str:
        """The accumulation and output dtype: float32 unless accum=float16 was asked for."""
        return self.params.get("accum", "float32")

    @property
    def tolerance(self) -> float:
        """float16 accumulation: eps16 * sqrt(k), about 3x the error of summing k products of
        uniform inputs one by one in float16 (numpy: 0.0093 at k = 4096, 0.016 at k = 11008);
        a kernel that drops 1/64 of the products errs by about 0.12."""
        if self.output_dtype == "float16":
            return max(1e-3, 2.0 ** -11 * math.sqrt(self.shape["k"]))
        return 1e-4

    def validate(self) -> None:
        if self.output_dtype not in ("float32", "float16"):
            raise OpError(f"accum must be float32 or float16, got {self.output_dtype!r}")
        if self.output_dtype == "float16" and self.dtype != "float16":
            raise OpError("float16 accumulation needs float16 inputs (--dtype float16)")

    def product(self, a: te.Expr, b: te.Expr) -> te.Expr:
        """One term of the sum, in the accumulation dtype."""
        if self.output_dtype == "float16":
            return a * b
        return a.astype("float32") * b.astype("float32")


@register
class Matmul(Accumulation, Product):
    name = "matmul"
    dtypes = ("float16", "bfloat16", "float32")
    positional = True
    default_shape = {"cuda": "4096,4096,4096", "llvm": "256,256,256"}

    @property
    def input_shapes(self):
        m, n, k = (self.shape[key] for key in self.shape_keys)
        return [(m, k), (k, n)]

    def compute(self, a, b):
        r = te.reduce_axis((0, self.shape["k"]), name="k")
        return te.compute(self.output_shape,
                          lambda i, j: te.sum(self.product(a[i, r], b[r, j]), axis=r), name="C")

    def reference(self, inputs):
        a, b = inputs
        return a.astype("float32") @ b.astype("float32")


@register
class BatchMatmul(Accumulation):
    name = "batch_matmul"
    dtypes = ("float16", "bfloat16", "float32")
    shape_keys = ("b", "m", "n", "k")
    default_shape = {"cuda": "b=8,m=1024,n=1024,k=1024", "llvm": "b=4,m=64,n=64,k=64"}

    @property
    def input_shapes(self):
        b, m, n, k = (self.shape[key] for key in self.shape_keys)
        return [(b, m, k), (b, k, n)]

    @property
    def output_shape(self):
        return (self.shape["b"], self.shape["m"], self.shape["n"])

    @property
    def streams_weights(self) -> bool:
        return self.shape["m"] <= FEW_ROWS

    @property
    def flops(self) -> int:
        return 2 * self.shape["b"] * self.shape["m"] * self.shape["n"] * self.shape["k"]

    @property
    def reduction_length(self) -> int:
        return self.shape["k"]

    def compute(self, a, b):
        r = te.reduce_axis((0, self.shape["k"]), name="k")
        return te.compute(self.output_shape,
                          lambda p, i, j: te.sum(self.product(a[p, i, r], b[p, r, j]), axis=r),
                          name="C")

    def reference(self, inputs):
        a, b = inputs
        return np.matmul(a.astype("float32"), b.astype("float32"))


@register
class Gemv(Accumulation):
    """y[n] = W[n, k] x[k]; accum=float16 gives a float16 y (nn.Linear's output at one row of
    decode), which the knob kernels sum in float32 and round once."""
    name = "gemv"
    shape_keys = ("n", "k")
    positional = True
    default_shape = {"cuda": "16384,4096", "llvm": "1024,1024"}

    @property
    def input_shapes(self):
        return [(self.shape["n"], self.shape["k"]), (self.shape["k"],)]

    @property
    def output_shape(self):
        return (self.shape["n"],)

    @property
    def streams_weights(self) -> bool:
        return True

    @property
    def flops(self) -> int:
        return 2 * self.shape["n"] * self.shape["k"]

    @property
    def reduction_length(self) -> int:
        return self.shape["k"]

    def compute(self, w, x):
        r = te.reduce_axis((0, self.shape["k"]), name="k")
        return te.compute(self.output_shape, lambda i: te.sum(self.product(w[i, r], x[r]), axis=r),
                          name="y")

    def reference(self, inputs):
        w, x = inputs
        return w.astype("float32") @ x.astype("float32")


@register
class Linear(Product):
    """A linear layer without bias, y = x W^T, on W as stored (n x k, k contiguous), so that a
    kernel streams the weights row by row as a GEMV does. float32 accumulation and output."""
    name = "linear"
    positional = True
    default_shape = {"cuda": "16,14336,4096", "llvm": "8,256,256"}

    @property
    def input_shapes(self):
        """x (m x k) and W (n x k)."""
        return [(self.shape["m"], self.shape["k"]), (self.shape["n"], self.shape["k"])]

    def compute(self, x, w):
        r = te.reduce_axis((0, self.shape["k"]), name="k")
        return te.compute(self.output_shape,
                          lambda i, j: te.sum(_f32(x, i, r) * _f32(w, j, r), axis=r), name="y")

    def reference(self, inputs):
        x, w = inputs
        return x.astype("float32") @ w.astype("float32").T
