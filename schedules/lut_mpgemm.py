"""lut_mpgemm: fp16 (or fp32) activations X[m, k] times low-bit weights W[n, k] (1-4 bits, per-group scales,
optional zero points), out[m, n] = X @ W^T in float32, in two implementations of one op:

- `lut` (T-MAC / LUT Tensor Core): a precompute stage builds, per run of G = 4 activations, the
  symmetric half table of signed sums (schedules/lut.py); the lookup-accumulate stage reads each
  bit plane's 4-bit index, looks it up (negating mirrored entries) and sums a group; the epilogue
  applies the per-plane factor 2^(b-1), the group scale and the offset correction. The
  lookup-accumulate block is what the LUT-mpGEMM tensor intrinsic (schedules/lut_intrin.py) replaces.
- `dequant`: unpack, dequantize to fp16, multiply-accumulate in float32.

Weights arrive packed for the kernel: uint8 [bits, n, k / 8], two 4-bit run indices per byte
(`lut.pack_bytes`), so a W2 weight costs 2 bits of memory traffic and a W4 weight 4 bits. The
option `layout=fields` (dequant only, W1/W2/W4) packs the same bytes as fp16-pair fields instead
(schedules/weight_layout.py), the layout the tensor-core dequant GEMV decodes with the fewest
instructions; without the option the layout is `planes` (and the op's identity unchanged).
"""
from __future__ import annotations

import numpy as np
from tvm import te, tirx

from . import lut, weight_layout
from .matmul import Product
from .op import OpError, register

IMPLS = ("lut", "dequant")
RUNS_PER_BYTE = 2
K_PER_BYTE = lut.G * RUNS_PER_BYTE  # activations covered by one packed byte
ENTRIES = 2 ** (lut.G - 1)         # stored half table per run
# the instruction's description loops over a group's packed bytes; TE drops a loop of extent 1,
# so the LUT implementation needs at least two bytes (16 activations) per group
LUT_MIN_GROUP = 2 * K_PER_BYTE


def lookup_term(table, prefix: tuple, byte: tirx.PrimExpr, half: tirx.PrimExpr,
                entry: tirx.PrimExpr) -> tirx.PrimExpr:
    """Entry `entry` of the table's stored half, signed, if it is the one the 4-bit index in nibble
    `half` of `byte` selects (T[idx] for idx < 8, else -T[15 - idx]), else 0. Summed over the 8
    entries this is the lookup, written as a one-hot reduction because tensorize matches affine
    indices only; `table[(*prefix, e)]` is entry e. Shared by the op's TE definition and the
    instruction's description, so the two match structurally.
    """
    idx = (byte.astype("int32") >> (half * 4)) & 15
    top = idx >> 3
    value = table[(*prefix, entry)].astype("float32") * (1 - top * 2).astype("float32")
    return tirx.Select(idx ^ (top * 15) == entry, value, tirx.const(0.0, "float32"))


@register
class LutMpGemm(Product):
    """FLOPs are those of the dense product it replaces (so TFLOP/s compare with fp16 GEMM)."""
    name = "lut_mpgemm"
    default_shape = {"cuda": "m=1,n=4096,k=4096", "llvm": "m=4,n=128,k=512"}
    param_defaults = {"wbits": 2, "group_size": 128, "zero_points": False, "impl": "lut"}
    options = ("layout",)
    tolerance = 2e-3  # fp16 tables: each entry rounded once

    @property
    def bits(self) -> int:
        return int(self.params["wbits"])

    @property
    def group_size(self) -> int:
        return int(self.params["group_size"])

    @property
    def layout(self) -> str:
        """How the weights are packed (schedules/weight_layout.py): `planes` unless given."""
        return str(self.params.get("layout", "planes"))

    @property
    def groups(self) -> int:
        return self.shape["k"] // self.group_size

    def validate(self) -> None:
        m, k = self.shape["m"], self.shape["k"]
        if self.params["impl"] not in IMPLS:
            raise OpError(f"lut_mpgemm impl must be one of {', '.join(IMPLS)}, "
                          f"got {self.params['impl']!r}")
        if self.bits not in (1, 2, 3, 4):
            raise OpError(f"--wbits must be 1, 2, 3 or 4, got {self.bits}")
        if self.group_size < 1 or self.group_size % K_PER_BYTE or k % self.group_size:
            raise OpError(f"--group-size {self.group_size} must be a positive multiple of "
                          f"{K_PER_BYTE} that divides k={k}")
        if self.params["impl"] == "lut" and self.group_size < LUT_MIN_GROUP:
            raise OpError(f"the LUT implementation needs --group-size >= {LUT_MIN_GROUP}, got "
                          f"{self.group_size} (--impl dequant supports it)")
        if self.layout not in weight_layout.LAYOUTS:
            raise OpError(f"lut_mpgemm layout must be one of {', '.join(weight_layout.LAYOUTS)}, "
                          f"got {self.layout!r}")
        if self.layout == "fields" and self.params["impl"] != "dequant":
            raise OpError("layout=fields is for --impl dequant (the LUT implementation looks up "
                          "bit-plane indices)")
        if self.layout == "fields" and self.bits not in weight_layout.FIELD_BITS:
            raise OpError(f"layout=fields packs 1, 2 or 4 bits (fields that tile a 16-bit fp16 "
                          f"half), got --wbits {self.bits}")
        if self.layout == "fields" and k % weight_layout.CHUNK:
            raise OpError(f"layout=fields packs chunks of {weight_layout.CHUNK} columns, k={k}")
        if m > 256:
            raise OpError(f"lut_mpgemm is for m <= 256 (decoding to small batches), got m={m}")

    @property
    def input_shapes(self):
        m, n, k = (self.shape[key] for key in self.shape_keys)
        return [(m, k), (self.bits, n, k // K_PER_BYTE), (n, self.groups), (n, self.groups)]

    @property
    def input_dtypes(self):
        return [self.dtype, "uint8", "float32", "float32"]

    def quantized(self, packed: np.ndarray, scales: np.ndarray, zeros: np.ndarray) -> lut.QuantizedWeights:
        return lut.QuantizedWeights(weight_layout.unpack_planes(packed, self.layout), scales, zeros,
                                    self.bits, self.group_size)

    def inputs(self, rng: np.random.Generator) -> list[np.ndarray]:
        """Random activations and random weights quantized and packed for the kernel."""
        m, n, k = (self.shape[key] for key in self.shape_keys)
        x = rng.uniform(-1.0, 1.0, (m, k)).astype(self.dtype)
        w = lut.quantize(rng.normal(0.0, 1.0, (n, k)), self.bits, self.group_size,
                         bool(self.params["zero_points"]))
        return [x, weight_layout.pack_planes(w.planes, self.layout), w.scales, w.zeros]

    def reference(self, inputs):
        x, packed, scales, zeros = inputs
        return x.astype("float32") @ self.quantized(packed, scales, zeros).dequantize().T

    @property
    def accumulation_dtype(self) -> str:
        """The dtype whose rounding dominates: the tables' (LUT) or dequantized weights' (op.dtype);
        sums are float32."""
        return self.dtype

    def magnitude(self, inputs):
        """|X| times the largest magnitude each weight's term can take in either implementation:
        scale * ((2^bits - 1) / 2 + |midpoint - zero|) (the bit planes' table lookups plus the offset
        correction), per weight."""
        x, _, scales, zeros = inputs
        midpoint = (2 ** self.bits - 1) / 2
        reach = np.repeat(np.abs(scales) * (midpoint + np.abs(midpoint - zeros)), self.group_size,
                          axis=1)
        return np.abs(x.astype("float32")) @ reach.T.astype("float32")

    def compute(self, x, packed, scales, zeros):
        if self.params["impl"] == "lut":
            return self._lut(x, packed, scales, zeros)
        return self._dequant(x, packed, scales, zeros)

    def _lut(self, x, packed, scales, zeros):
        m, n, k = (self.shape[key] for key in self.shape_keys)
        gs, bits, pairs = self.group_size, self.bits, self.group_size // K_PER_BYTE

        def entry(i, r, h, t):
            base = r * K_PER_BYTE + h * lut.G
            signs = [((t >> j) & 1) * 2 - 1 for j in range(lut.G)]
            return sum(x[i, base + j].astype("float32") * signs[j].astype("float32")
                       for j in range(lut.G)).astype(self.dtype)

        tables = te.compute((m, k // K_PER_BYTE, RUNS_PER_BYTE, ENTRIES), entry,
                            name="tables")
        r2 = te.reduce_axis((0, pairs), name="r2")
        h = te.reduce_axis((0, RUNS_PER_BYTE), name="h")
        xsum = te.compute(  # entry 0 of a run's table is minus the run's sum
            (m, self.groups),
            lambda i, g: te.sum(-tables[i, g * pairs + r2, h, 0].astype("float32"), axis=[r2, h]),
            name="xsum")
        r2 = te.reduce_axis((0, pairs), name="r2")
        h = te.reduce_axis((0, RUNS_PER_BYTE), name="h")
        e = te.reduce_axis((0, ENTRIES), name="e")
        sums = te.compute(
            (m, self.groups, bits, n),
            lambda i, g, b, c: te.sum(lookup_term(tables, (i, g * pairs + r2, h),
                                                  packed[b, c, g * pairs + r2], h, e),
                                      axis=[r2, h, e]),
            name="lut_sums")
        g = te.reduce_axis((0, self.groups), name="g")
        b = te.reduce_axis((0, bits), name="b")
        midpoint = (2 ** bits - 1) / 2

        def out(i, c):
            plane = sums[i, g, b, c] * (tirx.const(1, "int32") << b).astype("float32") * 0.5
            offset = tirx.Select(b == 0, xsum[i, g] * (midpoint - zeros[c, g]), tirx.const(0.0))
            return te.sum(scales[c, g] * (plane + offset), axis=[g, b])

        return te.compute((m, n), out, name="out")

    def _dequant(self, x, packed, scales, zeros):
        m, n, k = (self.shape[key] for key in self.shape_keys)
        gs = self.group_size

        def code(c, j):
            if self.layout == "fields":
                chunk = j // weight_layout.CHUNK
                e, pos = weight_layout.field_place(j % weight_layout.CHUNK, self.bits)
                byte = packed[e, c, chunk * 4 + pos // 8].astype("int32")
                return (byte >> (pos % 8)) & (2 ** self.bits - 1)
            byte = packed[0, c, j // K_PER_BYTE].astype("int32")
            q = (byte >> (j % K_PER_BYTE)) & 1
            for b in range(1, self.bits):
                q = q + (((packed[b, c, j // K_PER_BYTE].astype("int32") >> (j % K_PER_BYTE)) & 1) << b)
            return q

        def weight(c, j):
            q = code(c, j)
            return (scales[c, j // gs] * (q.astype("float32") - zeros[c, j // gs])).astype(self.dtype)

        w = te.compute((n, k), weight, name="weights")
        r = te.reduce_axis((0, k), name="k")
        return te.compute((m, n), lambda i, c: te.sum(
            x[i, r].astype("float32") * w[c, r].astype("float32"), axis=r), name="out")
