"""The dequant twin of the GEMV knob space: lut_mpgemm with `impl=dequant` at m = 1 on CUDA sm_80+.

out[0, c] = sum_j x[0, j] * s[c, g] * (q[c, j] - z[c, g]), g = j // group_size, with the weights
as schedules/lut_mpgemm.py packs them: uint8 [bits, n, k/8], bit j%8 of byte j//8 of row c in
plane b is bit b of q[c, j]. The kernel is schedules/gemv_knobs.py's (rows per CTA, threads per
row, persistent grids, split-k, x in registers or shared memory, the same load paths except bulk
copies), with the weight load and the multiply replaced: a thread's load unit is a chunk of
`weights_per_load` consecutive weights of its row, read as weights_per_load/8 bytes per bit plane
(4, 8 or 16 bytes: one ld.global(.nc) per plane), decoded by shifts and masks
(q = sum_b ((byte_b >> j%8) & 1) << b), and either dequantized weight by weight
(`scale_apply=weight`: s (q - z) x) or, since a chunk lies inside one group, summed as
s (sum q x - z sum x) once per chunk (`chunk`: two multiplies per chunk instead of per weight).

What this space leaves out (issue 10): a lop3-based decode (one `lop3.b32` merges a masked plane
into the assembled word, then the magic-number conversion `(q | 0x6400) - 1024.0` turns two
values into two halves at once), which needs the planes interleaved offline so that one 32-bit
word holds the bits of consecutive weights in the order the decode wants (a packing change, done
once and tested for round trips); the zero point folded into a precomputed activation sum; bulk
copies of the packed planes. The shift-and decode here costs ~3 instructions per weight and
plane, which is what a lop3 decode would cut.
"""
from __future__ import annotations


import tvm
from tvm import tirx
from tvm.script import tirx as TS
from tvm.script.ir_builder import tirx as T
from tvm.target import Target

from .gemv_knobs import LOADS, PREFETCH, GemvKnobs, _ld_chain, _Writer, sm_arch
from .knobs import Config, Knob, register
from .lut_mpgemm import K_PER_BYTE
from .op import Op
from .simt import prim_func, ramp

X_VECTOR = 8                    # fp16 activations per x load (16 bytes)


@register
class DequantGemvKnobs(GemvKnobs):
    """lut_mpgemm dequant kernels at m = 1 (see the module docstring)."""

    name = "lut-dequant-gemv-simt"

    def __init__(self, op: Op, target: Target, sms: int | None = None) -> None:
        super().__init__(op, target, sms)
        self.bits, self.group = op.bits, op.group_size

    @classmethod
    def applies(cls, op: Op, target: Target) -> bool:
        return (op.name == "lut_mpgemm" and op.params["impl"] == "dequant" and op.shape["m"] == 1
                and op.dtype == "float16" and target.kind.name == "cuda" and sm_arch(target) >= 80)

    @property
    def knobs(self) -> tuple[Knob, ...]:
        return (Knob("threads_per_row", (4, 8, 16, 32, 64, 128, 256)),
                Knob("rows_per_cta", (1, 2, 4, 8, 16)),
                Knob("weights_per_load", (32, 64, 128)),
                Knob("unroll", (1, 2)),
                Knob("ctas_per_sm", (0, 1, 2, 4, 8)),
                Knob("load", tuple(v for v in LOADS if not v.startswith("bulk"))),
                Knob("prefetch", PREFETCH),
                Knob("x_stage", ("global", "shared")),
                Knob("split_k", (1, 2, 4, 8)),
                Knob("split_reduce", ("atomic", "two_pass")),
                Knob("scale_apply", ("weight", "chunk")))

    def lanes(self, config: Config) -> int:
        """Weights per load unit (a chunk)."""
        return int(config["weights_per_load"])

    def reject(self, config: Config) -> str | None:
        chunk = self.lanes(config)
        if self.group % chunk:
            return f"a chunk of {chunk} weights must lie inside a group of {self.group}"
        return super().reject(config)

    def bytes_per_thread_step(self, config: Config) -> int:
        return int(config["unroll"]) * self.bits * self.lanes(config) // K_PER_BYTE

    def step_instructions(self, config: Config) -> float:
        """Per chunk: a load per plane and x load; per weight 3 per plane (shift, and, or),
        a convert of q and of x, and an FMA (plus 2 when dequantized per weight)."""
        chunk, unroll = self.lanes(config), int(config["unroll"])
        per_weight = 3 * self.bits + 3 + (2 if config["scale_apply"] == "weight" else 0)
        return unroll * (self.bits + chunk // X_VECTOR + 4 + chunk * per_weight) + 3

    def module(self, config: Config, emulate: bool = False) -> tvm.IRModule:
        why = self.reject(config)
        if why:
            raise ValueError(f"config cannot run: {why}")
        return tvm.IRModule({"main": prim_func("main", _DequantWriter(self, config, emulate).body)})


class _DequantWriter(_Writer):
    def __init__(self, space: DequantGemvKnobs, config: Config, emulate: bool) -> None:
        super().__init__(space, config, emulate)
        self.bits, self.group = space.bits, space.group
        self.per_chunk = self.lanes // K_PER_BYTE          # bytes per plane and chunk
        self.per_chunk_dot = config["scale_apply"] == "chunk"

    def declare(self) -> None:
        n, k, groups = self.n, self.k, self.k // self.group
        x = T.arg("x", T.buffer((1, k), "float16"))
        self.packed = T.arg("packed", T.buffer((self.bits, n, k // K_PER_BYTE), "uint8"))
        self.scales = T.arg("scales", T.buffer((n, groups), "float32"))
        self.zeros = T.arg("zeros", T.buffer((n, groups), "float32"))
        y = T.arg("out", T.buffer((1, n), "float32"))
        self.x = T.decl_buffer((k,), "float16", data=x.data)      # m = 1: seen as vectors
        self.y = T.decl_buffer((n,), "float32", data=y.data)

    def registers(self) -> None:
        simt = self.simt
        self.w_reg = simt.reg((self.unroll * self.bits * self.per_chunk,), "uint8")
        self.x_reg = simt.reg((self.unroll * self.lanes,), "float16")
        self.dot = simt.reg((2,), "float32") if self.per_chunk_dot else None

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
            for piece in range(chunk // X_VECTOR):
                self.x_reg.store(t, self.x_src[ramp(col + piece * X_VECTOR, X_VECTOR)],
                                 ramp(u * chunk + piece * X_VECTOR, X_VECTOR))
        for u in range(self.unroll):
            group = (self.ks * self.k_slice + s * self.k_step + self.column(t, u)) // self.group
            scale, zero = self.scales[row, group], self.zeros[row, group]
            if self.dot is not None:
                for i in range(2):
                    self.dot.store(t, tirx.const(0.0, "float32"), i)
            for j in range(chunk):
                q = tirx.const(0, "int32")
                for b in range(bits):
                    byte = self.w_reg.load(t, (u * bits + b) * per + j // K_PER_BYTE).astype("int32")
                    q = q | (((byte >> (j % K_PER_BYTE)) & 1) << b)
                xf = self.x_reg.load(t, u * chunk + j).astype("float32")
                if self.dot is None:
                    self.acc.store(t, self.acc.load(t, u) + scale * (q.astype("float32") - zero) * xf, u)
                else:
                    self.dot.store(t, self.dot.load(t, 0) + q.astype("float32") * xf, 0)
                    self.dot.store(t, self.dot.load(t, 1) + xf, 1)
            if self.dot is not None:
                self.acc.store(t, self.acc.load(t, u)
                               + scale * (self.dot.load(t, 0) - zero * self.dot.load(t, 1)), u)
