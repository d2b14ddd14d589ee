"""The dequant twin of the GEMV knob space: lut_mpgemm with `impl=dequant` at m = 1 on CUDA sm_80+.

out[0, c] = sum_j x[0, j] * s[c, g] * (q[c, j] - z[c, g]), g = j // group_size, with the weights
as schedules/lut_mpgemm.py packs them: uint8 [bits, n, k/8], bit j%8 of byte j//8 of row c in
plane b is bit b of q[c, j]. The kernel is schedules/gemv_knobs.py's (rows per CTA, threads per
row, persistent grids, split-k, x in registers or shared memory, the same load paths except bulk
copies), with the weight load and the multiply replaced: a thread's load unit is a chunk of
`weights_per_load` consecutive weights of its row, read as weights_per_load/8 bytes per bit plane
(4, 8 or 16 bytes: one ld.global(.nc) per plane), and decoded in one of two ways (`decode`):
- `shift`: bit by bit, q = sum_b ((byte_b >> j%8) & 1) << b, then an int-to-float convert
  (about 3 instructions per weight and plane, plus the convert);
- `nibble`: 32 weights at a time, straight from the planes' 32-bit words with no change of
  packing. Two instructions per plane assemble the 4-bit fields of 8 weights
  (N_i = OR_b ((P_b >> i) & 0x11111111) << b holds q_(4p+i) in field p). The magic-number
  conversion float(0x4B000000 | field) - 2^23 then turns each field into a float without the
  (quarter-rate) convert instruction.
The product is then taken either weight by weight (`scale_apply=weight`: s (q - z) x) or, since
a chunk lies inside one group, as s (sum q x - z sum x) once per chunk (`chunk`: two multiplies
per chunk instead of per weight). `x_stage=shared_f32` converts the CTA's x slice to float32 in
shared memory once, so that no weight pays for converting its activation (fp16-to-fp32 converts
run at a quarter of the FMA rate on Hopper).

What this space leaves out (issue 10):
- half2 arithmetic (two weights per instruction, with its fp16 rounding);
- the zero point folded into a precomputed activation sum;
- bulk copies of the packed planes.
"""
from __future__ import annotations

from typing import Iterator

from tvm import tirx
from tvm.script import tirx as TS
from tvm.script.ir_builder import tirx as T
from tvm.target import Target

from .gemv_knobs import LOADS, PREFETCH, GemvKnobs, _ld_chain, _Writer, sm_arch
from .knobs import Config, Knob, register
from .lut_mpgemm import K_PER_BYTE
from .op import Op
from .simt import ramp

X_VECTOR = 8                    # fp16 activations per x load (16 bytes)


@register
class DequantGemvKnobs(GemvKnobs):
    """lut_mpgemm dequant kernels at m = 1 (see the module docstring)."""

    name = "lut-dequant-gemv-simt"
    auto = False  # its tensor-core twin (dequant_gemv_mma.py) is 1.5x faster on an H200

    def __init__(self, op: Op, target: Target, sms: int | None = None) -> None:
        super().__init__(op, target, sms)
        self.bits, self.group = op.bits, op.group_size

    @classmethod
    def applies(cls, op: Op, target: Target) -> bool:
        return cls.why_not(op, target) is None

    @classmethod
    def why_not(cls, op: Op, target: Target) -> str | None:
        if not is_dequant_gemv(op, target):
            return "it computes lut_mpgemm impl=dequant at m = 1 in float16 on CUDA sm_80+ only"
        if op.layout != "planes":
            return f"it decodes bit planes, the weights are packed as layout={op.layout}"
        return None

    @property
    def knobs(self) -> tuple[Knob, ...]:
        return (Knob("threads_per_row", (4, 8, 16, 32, 64, 128, 256)),
                Knob("rows_per_cta", (1, 2, 4, 8, 16)),
                Knob("weights_per_load", (32, 64, 128)),
                Knob("unroll", (1, 2)),
                Knob("ctas_per_sm", (0, 1, 2, 4, 8)),
                Knob("load", tuple(v for v in LOADS if not v.startswith("bulk"))),
                Knob("prefetch", PREFETCH),
                Knob("x_stage", ("global", "shared", "shared_f32")),
                Knob("split_k", (1, 2, 4, 8)),
                Knob("split_reduce", ("atomic", "two_pass")),
                Knob("scale_apply", ("weight", "chunk")),
                Knob("decode", ("shift", "nibble")))

    def seeds(self) -> list[Config]:
        """None: the fp16 space's seeds are not configs of this one."""
        return []

    def lanes(self, config: Config) -> int:
        """Weights per load unit (a chunk)."""
        return int(config["weights_per_load"])

    def reject(self, config: Config) -> str | None:
        chunk = self.lanes(config)
        if self.group % chunk:
            return f"a chunk of {chunk} weights must lie inside a group of {self.group}"
        return super().reject(config)

    def shared_bytes(self, config: Config) -> int:
        """As the fp16 kernel's, plus x converted to float32 once per CTA (`shared_f32`)."""
        x_f32 = self.k_slice(config) * 4 if config["x_stage"] == "shared_f32" else 0
        return super().shared_bytes(config) + x_f32

    def features(self, config: Config) -> dict[str, float]:
        return {**super().features(config), "decode_nibble": float(config["decode"] == "nibble"),
                "x_f32": float(config["x_stage"] == "shared_f32"),
                "scale_per_chunk": float(config["scale_apply"] == "chunk")}

    def bytes_per_thread_step(self, config: Config) -> int:
        return int(config["unroll"]) * self.bits * self.lanes(config) // K_PER_BYTE

    def step_instructions(self, config: Config) -> float:
        """Per chunk: a load per plane and x load; per weight: the decode (`shift`: 3 per plane
        (shift, and, or) and a convert; `nibble`: 2 per plane for 4 weights to assemble, then a
        shift, an or and a subtract), a convert of x and an FMA (plus 2 when dequantized per
        weight)."""
        chunk, unroll = self.lanes(config), int(config["unroll"])
        decode = 3 * self.bits + 1 if config["decode"] == "shift" else self.bits / 2 + 3
        per_weight = decode + 2 + (2 if config["scale_apply"] == "weight" else 0)
        return unroll * (self.bits + chunk // X_VECTOR + 4 + chunk * per_weight) + 3

    def writer(self, config: Config, emulate: bool) -> _DequantWriter:
        return _DequantWriter(self, config, emulate)


def is_dequant_gemv(op: Op, target: Target) -> bool:
    """lut_mpgemm's dequant twin at m = 1 in float16 on CUDA sm_80+ (any weight layout)."""
    return (op.name == "lut_mpgemm" and op.params["impl"] == "dequant" and op.shape["m"] == 1
            and op.dtype == "float16" and target.kind.name == "cuda" and sm_arch(target) >= 80)


def declare_dequant_args(writer) -> None:
    """The op's arguments on `writer`: x (k,), packed [bits, n, k/8], scales, zeros, y (n,)."""
    n, k, groups = writer.n, writer.k, writer.k // writer.group
    x = T.arg("x", T.buffer((1, k), "float16"))
    writer.packed = T.arg("packed", T.buffer((writer.bits, n, k // K_PER_BYTE), "uint8"))
    writer.scales = T.arg("scales", T.buffer((n, groups), "float32"))
    writer.zeros = T.arg("zeros", T.buffer((n, groups), "float32"))
    y = T.arg("out", T.buffer((1, n), "float32"))
    writer.x = T.decl_buffer((k,), "float16", data=x.data)      # m = 1: seen as vectors
    writer.y = T.decl_buffer((n,), "float32", data=y.data)


class _DequantWriter(_Writer):
    def __init__(self, space: DequantGemvKnobs, config: Config, emulate: bool) -> None:
        super().__init__(space, config, emulate)
        self.bits, self.group = space.bits, space.group
        self.per_chunk = self.lanes // K_PER_BYTE          # bytes per plane and chunk
        self.per_chunk_dot = config["scale_apply"] == "chunk"
        self.nibbles = config["decode"] == "nibble"
        self.x_f32 = config["x_stage"] == "shared_f32"
        self.x_vector = X_VECTOR // 2 if self.x_f32 else X_VECTOR  # 16-byte x loads either way

    def declare(self) -> None:
        declare_dequant_args(self)

    def registers(self) -> None:
        simt = self.simt
        self.w_reg = simt.reg((self.unroll * self.bits * self.per_chunk,), "uint8")
        self.x_reg = simt.reg((self.unroll * self.lanes,), "float32" if self.x_f32 else "float16")
        self.dot = simt.reg((2,), "float32") if self.per_chunk_dot else None
        self.nibble = simt.reg((1,), "uint32") if self.nibbles else None

    def stage_x(self) -> None:
        """`shared_f32`: the CTA's x slice converted to float32 into shared memory once, so that
        no weight pays for converting its activation; otherwise as the fp16 kernel stages x."""
        if not self.x_f32:
            return super().stage_x()
        self.copy_x_to_shared("float32", self.x_vector)

    def load_w(self, t, at: int, row, col, policy) -> None:
        """Chunk at // lanes: its bytes of every bit plane into w_reg."""
        u, per = at // self.lanes, self.per_chunk
        for b in range(self.bits):
            base, byte = (u * self.bits + b) * per, col // K_PER_BYTE
            if self.load == "plain" or self.emulate:
                self.w_reg.store(t, self.packed[b, row, ramp(byte, per)], ramp(base, per))
                continue
            words = T.decl_buffer((self.unroll * self.bits * per // 4,), "uint32",
                                  data=self.w_reg.buffer.data, scope="local")
            dst = [words[base // 4 + i] for i in range(per // 4)]
            extra = [policy.load(t, 0)] if self.load == "nc_evict_first" else []
            chain = _ld_chain(self.load, self.prefetch, per // 4)
            T.evaluate(TS.ptx[chain](*dst, self.packed.ptr_to([b, row, byte]), *extra))

    def accumulate(self, t, s) -> None:
        chunk, per, bits = self.lanes, self.per_chunk, self.bits
        row = self.rb * self.rows + self.slot(t)
        for u in range(self.unroll):
            col = self.x_base + s * self.k_step + self.column(t, u)
            xv = self.x_vector
            for piece in range(chunk // xv):
                self.x_reg.store(t, self.x_src[ramp(col + piece * xv, xv)],
                                 ramp(u * chunk + piece * xv, xv))
        for u in range(self.unroll):
            group = (self.ks * self.k_slice + s * self.k_step + self.column(t, u)) // self.group
            scale, zero = self.scales[row, group], self.zeros[row, group]
            if self.dot is not None:
                for i in range(2):
                    self.dot.store(t, tirx.const(0.0, "float32"), i)
            for j, q in (self.nibble_weights if self.nibbles else self.shifted_weights)(t, u):
                xf = self.x_reg.load(t, u * chunk + j).astype("float32")
                if self.dot is None:
                    self.acc.store(t, self.acc.load(t, u) + scale * (q - zero) * xf, u)
                else:
                    self.dot.store(t, self.dot.load(t, 0) + q * xf, 0)
                    self.dot.store(t, self.dot.load(t, 1) + xf, 1)
            if self.dot is not None:
                self.acc.store(t, self.acc.load(t, u)
                               + scale * (self.dot.load(t, 0) - zero * self.dot.load(t, 1)), u)

    def shifted_weights(self, t, u: int) -> Iterator[tuple[int, tirx.PrimExpr]]:
        """(j, q_j as float32) of chunk u, each q assembled bit by bit from the planes' bytes."""
        per, bits = self.per_chunk, self.bits
        for j in range(self.lanes):
            q = tirx.const(0, "int32")
            for b in range(bits):
                byte = self.w_reg.load(t, (u * bits + b) * per + j // K_PER_BYTE).astype("int32")
                q = q | (((byte >> (j % K_PER_BYTE)) & 1) << b)
            yield j, q.astype("float32")

    def nibble_weights(self, t, u: int) -> Iterator[tuple[int, tirx.PrimExpr]]:
        """(j, q_j as float32) of chunk u, decoded 32 weights at a time: for each 32-bit word of
        the planes (bit j of plane b's word is bit b of q_j), the words of 4-bit fields
        N_i = OR_b ((P_b >> i) & 0x11111111) << b hold q_(4p+i) in field p (two instructions per
        plane for 8 weights); each field becomes a float by the magic-number conversion
        float(0x4B000000 | q) - 2^23 (no int-to-float convert)."""
        words, bits, per_word = self.w_reg.view("uint32"), self.bits, self.per_chunk // 4
        u32 = lambda v: tirx.const(v, "uint32")  # noqa: E731
        for w in range(per_word):
            planes = [words.load(t, (u * bits + b) * per_word + w) for b in range(bits)]
            for i in range(4):
                fields = u32(0)
                for b, plane in enumerate(planes):
                    fields = fields | (((plane >> u32(i)) & u32(0x11111111)) << u32(b))
                self.nibble.store(t, fields, 0)
                for p in range(8):
                    magic = ((self.nibble.load(t, 0) >> u32(4 * p)) & u32(15)) | u32(0x4B000000)
                    yield 32 * w + 4 * p + i, \
                        tirx.reinterpret("float32", magic) - tirx.const(8388608.0, "float32")
