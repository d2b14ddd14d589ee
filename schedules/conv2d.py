"""2-D convolution, NHWC input, RSCK (HWIO) weights, NHWK output, symmetric zero padding.

out[n, y, x, k] = sum_{r, s, c} in[n, y*stride + r - pad, x*stride + s - pad, c] * w[r, s, c, k]
"""
from __future__ import annotations

import numpy as np
from tvm import te, tirx

from .op import Op, OpError, register


@register
class Conv2d(Op):
    name = "conv2d"
    shape_keys = ("n", "h", "w", "c", "k", "r", "s", "stride", "pad")
    shape_defaults = {"stride": 1, "pad": 0}
    may_be_zero = ("pad",)
    default_shape = {"cuda": "n=8,h=56,w=56,c=64,k=64,r=3,s=3,pad=1",
                     "llvm": "n=1,h=14,w=14,c=16,k=16,r=3,s=3,pad=1"}

    def _out(self, size: int, window: int) -> int:
        return (size + 2 * self.shape["pad"] - window) // self.shape["stride"] + 1

    def validate(self) -> None:
        if self._out(self.shape["h"], self.shape["r"]) < 1 or \
                self._out(self.shape["w"], self.shape["s"]) < 1:
            raise OpError(f"conv2d: a {self.shape['r']}x{self.shape['s']} window does not fit "
                          f"a {self.shape['h']}x{self.shape['w']} input with pad {self.shape['pad']}")

    @property
    def input_shapes(self):
        g = self.shape
        return [(g["n"], g["h"], g["w"], g["c"]), (g["r"], g["s"], g["c"], g["k"])]

    @property
    def output_shape(self):
        g = self.shape
        return (g["n"], self._out(g["h"], g["r"]), self._out(g["w"], g["s"]), g["k"])

    @property
    def flops(self) -> int:
        n, oh, ow, k = self.output_shape
        return 2 * n * oh * ow * k * self.shape["r"] * self.shape["s"] * self.shape["c"]

    @property
    def reduction_length(self) -> int:
        return self.shape["r"] * self.shape["s"] * self.shape["c"]

    def compute(self, data, weight):
        g = self.shape
        pad, stride = g["pad"], g["stride"]
        padded = te.compute(
            (g["n"], g["h"] + 2 * pad, g["w"] + 2 * pad, g["c"]),
            lambda n, y, x, c: tirx.if_then_else(
                tirx.all(y >= pad, y < g["h"] + pad, x >= pad, x < g["w"] + pad),
                data[n, y - pad, x - pad, c], tirx.const(0, data.dtype)),
            name="pad")
        r = te.reduce_axis((0, g["r"]), name="r")
        s = te.reduce_axis((0, g["s"]), name="s")
        c = te.reduce_axis((0, g["c"]), name="c")
        return te.compute(
            self.output_shape,
            lambda n, y, x, k: te.sum(
                padded[n, y * stride + r, x * stride + s, c].astype("float32")
                * weight[r, s, c, k].astype("float32"), axis=[r, s, c]),
            name="out")

    def reference(self, inputs):
        data, weight = (x.astype("float32") for x in inputs)
        g, (n, oh, ow, k) = self.shape, self.output_shape
        pad, stride = g["pad"], g["stride"]
        padded = np.pad(data, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
        out = np.zeros((n, oh, ow, k), dtype="float32")
        for r in range(g["r"]):
            for s in range(g["s"]):
                window = padded[:, r:r + stride * (oh - 1) + 1:stride,
                                s:s + stride * (ow - 1) + 1:stride, :]
                out += np.einsum("nyxc,ck->nyxk", window, weight[r, s])
        return out
