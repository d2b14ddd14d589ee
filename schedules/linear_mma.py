"""fp16 skinny GEMM on tensor cores: y[m, n] = x[m, k] W[n, k]^T (float32 out) for m <= 16, on
the mma.sync of the fp16 GEMV (schedules/gemv_mma.py), for CUDA sm_80+.

Why: decode at a batch of 2..16 is a linear layer with few activation rows; its bytes are the
weights (n x k) and, as in a GEMV, its board power follows the instructions spent per byte
streamed. MetaSchedule's trace space tiles it as a GEMM.

The mapping: W is the mma's A operand (16 rows of n x 16 k, `.row`) and x its B operand (16 k x
8 columns, `.col`: a column's k are contiguous, i.e. one row of x), so one
`mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32` gives 16 outputs of n for 8 activation
rows. The GEMV fills all 8 B columns with the same x; here column g holds row g of x. In the
fragment layout thread t = 4g + c holds B column g at the same k-slots as its A registers, so it
loads its 16-byte chunks of the GEMV's columns from row g of x (row m - 1 where g >= m: those
columns are computed and dropped, no branch around the loads). For 8 < m <= 16 a second n8
tile holds rows g + 8 and shares the A fragment (two mmas per fragment). The weights stream
exactly as in gemv-mma (its loads, grid, k-warps, split-k and load paths). Accumulator i of
tile j of thread 4g + c is y[8j + 2c + i % 2, row g + 8 (i // 2)], so each thread writes its own
outputs (those of activation rows < m), with no shuffle; k-warps add theirs in shared memory
first. Split-k adds or reduces partial sums over all m x n outputs.

The CPU emulation (`emulate=True`, run on llvm by tests/test_linear_mma.py) computes every mma
from the warp's fragment registers as PTX lays them out (simt.mma_m16n8k16), so a wrong row or
column mapping gives wrong outputs on the CPU too.

Left out: x staged in shared memory (x_stage is `global` only: x is m x k, read by every CTA
from L1/L2); m > 16. Compiled for sm_90a and emulated on the CPU; not measured on a GPU.
"""
from __future__ import annotations

import math
from collections.abc import Iterator

from tvm import tirx
from tvm.script.ir_builder import tirx as T
from tvm.target import Target

from .gemv_knobs import sm_arch
from .gemv_mma import CHUNK, GemvMmaKnobs, _MmaWriter
from .knobs import Config, Knob, register
from .op import Op
from .simt import WARP, ramp

N8 = 8                 # activation rows per mma (its N)
MAX_ROWS = 2 * N8      # two n8 tiles share an A fragment at most


@register
class LinearMmaKnobs(GemvMmaKnobs):
    """The `linear` op at m <= 16 on tensor cores (see the module docstring); knobs, grid and
    split-k are gemv-mma's, x is read from global memory."""

    name = "linear-mma"
    auto = False   # compiled and emulated only, not measured on a GPU

    def __init__(self, op: Op, target: Target, sms: int | None = None) -> None:
        super().__init__(op, target, sms)
        self.m = op.shape["m"]
        self.tiles = math.ceil(self.m / N8)      # n8 tiles of activation rows

    @classmethod
    def applies(cls, op: Op, target: Target) -> bool:
        return (op.name == "linear" and op.dtype == "float16" and op.shape["m"] <= MAX_ROWS
                and target.kind.name == "cuda" and sm_arch(target) >= 80)

    @classmethod
    def why_not(cls, op: Op, target: Target) -> str | None:
        if op.name == "linear" and op.shape["m"] > MAX_ROWS:
            return f"m={op.shape['m']} > {MAX_ROWS} (two n8 tiles of activation rows at most)"
        return super().why_not(op, target)

    @property
    def knobs(self) -> tuple[Knob, ...]:
        return tuple(Knob("x_stage", ("global",)) if k.name == "x_stage" else k
                     for k in super().knobs)

    def shared_bytes(self, config: Config) -> int:
        """The k-warps' sums: (activation rows of the tiles, rows, warps_k) float32."""
        warps_k = int(config["warps_k"])
        return N8 * self.tiles * self.rows_per_block(config) * warps_k * 4 if warps_k > 1 else 0

    def step_instructions(self, config: Config) -> float:
        """Per thread and step: per chunk 2 weight loads and per tile an x load and 2 mmas;
        ~3 for the loop."""
        return (2 + 3 * self.tiles) * int(config["unroll"]) + 3

    def writer(self, config: Config, emulate: bool) -> _LinearWriter:
        return _LinearWriter(self, config, emulate)


class _LinearWriter(_MmaWriter):
    """gemv-mma's kernel with B column g holding row g (+ 8 per tile) of x and each thread
    writing its accumulators to y."""

    def __init__(self, space: LinearMmaKnobs, config: Config, emulate: bool) -> None:
        super().__init__(space, config, emulate)
        self.m, self.tiles = space.m, space.tiles
        self.outputs = space.m * space.n

    def declare(self) -> None:
        self.x = T.arg("x", T.buffer((self.m, self.k), "float16"))
        self.W = T.arg("W", T.buffer((self.n, self.k), "float16"))
        y = T.arg("y", T.buffer((self.m, self.n), "float32"))
        self.y = T.decl_buffer((self.outputs,), "float32", data=y.data)   # y[i, j] at i * n + j

    def x_row(self, t, tile: int):
        """The row of x in B column g of `tile` for thread t = 4g + c (m - 1 beyond m)."""
        row = t % WARP // 4 + N8 * tile
        return row if self.m >= N8 * (tile + 1) else tirx.min(row, self.m - 1)

    def load_x(self, t, s) -> None:
        """Per tile, x_reg[(tile * unroll + u) * 8 :][:8] = the x row's chunk u of step s."""
        for tile in range(self.tiles):
            for u in range(self.unroll):
                col = self.ks * self.k_slice + self.column(t, s, u)
                self.x_reg.store(t, self.x[self.x_row(t, tile), ramp(col, CHUNK)],
                                 ramp((tile * self.unroll + u) * CHUNK, CHUNK))

    def reduction_buffer(self) -> tirx.Buffer:
        return self.simt.shared((N8 * self.tiles, self.rows, self.warps_k), "float32")

    def accumulators(self, t) -> Iterator[tuple[int, tirx.PrimExpr, tirx.PrimExpr]]:
        """(accumulator, activation row, row in the row block) of each of thread t's outputs."""
        c = t % WARP % 4
        for tile in range(self.tiles):
            for i in range(4):
                yield 4 * tile + i, N8 * tile + 2 * c + i % 2, self.row(t, i // 2)

    def write_row(self, act, row, value) -> None:
        """y[act, row] (of the whole y) = value, for activation rows act < m."""
        with T.If(act < self.m):
            with T.Then():
                self.write(act * self.n + row, value)

    def reduce_and_write(self, rb) -> None:
        simt, base = self.simt, rb * self.rows
        if self.red is None:
            with simt.threads() as t:
                for at, act, row in self.accumulators(t):
                    self.write_row(act, base + row, self.acc.load(t, at))
            return
        with simt.threads() as t:
            for at, act, row in self.accumulators(t):
                T.buffer_store(self.red, self.acc.load(t, at), [act, row, t // WARP % self.warps_k])
        simt.sync()
        with simt.threads() as t:
            with T.serial(0, math.ceil(self.m * self.rows / self.threads)) as e:
                at = e * self.threads + t
                act, row = at // self.rows, at % self.rows
                with T.If(act < self.m):
                    with T.Then():
                        total = self.red[act, row, 0]
                        for w in range(1, self.warps_k):
                            total = total + self.red[act, row, w]
                        self.write(act * self.n + base + row, total)
        simt.sync()       # red is written again by the next row block
