"""fp16 GEMV on tensor cores: y[n] = W[n, k] x[k] (float32 out) by mma.sync, for CUDA sm_80+.

Why: at a given bandwidth a GEMV's board power follows the instructions spent per byte moved
(schedules/gemv_knobs.py's docstring; its SIMT kernels stream as fast as cuBLAS at 11-18% more
power, experiments/results/gemv_h200_2026-12-01). A SIMT fp16 GEMV spends a convert per weight,
a convert per activation and an FFMA per weight, ~1.5 instructions per byte. Here one
`mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32` (simt.mma_m16n8k16) multiplies 16 rows by 16
columns (512 bytes of weights) and accumulates in float32: with the loads, ~0.1 instructions per
byte a thread moves, about a tenth.

The GEMV's single column is the mma's N = 8: every B column holds the same x, so all columns of
the accumulator hold the same sums. A warp owns 16 rows. In the fragments of m16n8k16, thread
t = 4g + c holds A at rows g and g + 8 and k-slots {2c, 2c+1, 8+2c, 9+2c}, and B at the same
k-slots; since a dot product does not care about the order of k, the slots may stand for any
columns as long as A and B agree. Here thread c of a row group owns 16-byte chunks of 8
consecutive columns (`unroll` of them per step, the bytes in flight), loaded straight into the A
registers (rows g and g + 8) and, for x, into the B registers: chunk halves (4j .. 4j + 3) feed
mma j (j = 0, 1) as slots (2c, 2c+1) <- columns 4j, 4j+1 and (8+2c, 9+2c) <- 4j+2, 4j+3, with
no permutes. Thread c = 0 ends with its rows' sums in accumulator registers 0 and 2 (no shuffle
reduction). `warps_k` warps of a CTA split each step's columns; their sums meet in shared
memory. The grid, split-k and load paths are those of the SIMT space (schedules/gemv_knobs.py).

The CPU emulation (`emulate=True`, run on llvm by tests/test_gemv_mma.py) computes each mma from
the same fragment registers (simt.mma_m16n8k16 reads the warp's other threads' A and B registers
as the PTX fragment layout places them), so a wrong column mapping gives wrong sums on the CPU
too.

Left out: bulk (TMA) copies; fp16 accumulation; a column owned by fewer than 4 threads.
"""
from __future__ import annotations

from tvm import tirx
from tvm.script import tirx as TS
from tvm.script.ir_builder import tirx as T

from .gemv_knobs import (LOADS, STATIC_SHARED, GemvKnobs, _ld_chain, _SplitKWriter, _UniformIf,
                         _Writer, grid_and_load_knobs, tiling_reject)
from .knobs import Config, Knob, register
from .simt import WARP, mma_m16n8k16, ramp

ROWS_PER_WARP = 16
CHUNK = 8                          # fp16 columns per 16-byte chunk
THREADS_PER_ROW_GROUP = 4          # threads c = 0..3 share a row pair's columns


@register
class GemvMmaKnobs(GemvKnobs):
    """fp16 GEMV on tensor cores (see the module docstring); the op, the grid and split-k are the
    SIMT space's."""

    name = "gemv-mma"
    # measured on an H200 (experiments/results/tensor_core_gemv_h200_2026-12-01): slower than
    # cuBLAS and the SIMT space at as much power, so it is tuned only when named (--space gemv-mma)
    auto = False

    @property
    def knobs(self) -> tuple[Knob, ...]:
        return (Knob("warps", (1, 2, 4, 8)),
                Knob("warps_k", (1, 2, 4, 8)),
                Knob("unroll", (1, 2, 4, 8)),
                *grid_and_load_knobs(tuple(v for v in LOADS if not v.startswith("bulk"))))

    # -- derived sizes -----------------------------------------------------------------------
    @staticmethod
    def threads(config: Config) -> int:
        return WARP * int(config["warps"])

    def rows_per_block(self, config: Config) -> int:
        return ROWS_PER_WARP * int(config["warps"]) // int(config["warps_k"])

    @staticmethod
    def k_per_step(config: Config) -> int:
        """Columns a CTA reads per step: 4 threads x 8 columns x unroll, per k-warp."""
        return THREADS_PER_ROW_GROUP * CHUNK * int(config["unroll"]) * int(config["warps_k"])

    def shared_bytes(self, config: Config) -> int:
        x_bytes = self.k_slice(config) * 2 if config["x_stage"] == "shared" else 0
        warps_k = int(config["warps_k"])
        red = self.rows_per_block(config) * warps_k * 4 if warps_k > 1 else 0
        return x_bytes + red

    def reject(self, config: Config) -> str | None:
        warps, warps_k = int(config["warps"]), int(config["warps_k"])
        if warps % warps_k:
            return f"warps_k {warps_k} does not divide warps {warps}"
        why = tiling_reject(self, config, "16 x warps / warps_k", "columns (32 x unroll x warps_k)")
        if why:
            return why
        if config["load"] == "plain" and config["prefetch"] != "none":
            return "prefetch qualifiers apply to the ld.global.nc loads only"
        if self.shared_bytes(config) > STATIC_SHARED:
            return f"{self.shared_bytes(config)} B of shared memory > {STATIC_SHARED} B"
        return None

    def seeds(self) -> list[Config]:
        """None: the SIMT space's seeds are not configs of this one."""
        return []

    @staticmethod
    def bytes_per_thread_step(config: Config) -> int:
        """Weight bytes one thread loads per step: a 16-byte chunk of each of its two rows per
        unrolled chunk."""
        return 2 * int(config["unroll"]) * 16

    def step_instructions(self, config: Config) -> float:
        """Per thread and step: 3 loads per chunk (2 rows, x), 2 mmas per chunk, ~3 for the loop."""
        return 5 * int(config["unroll"]) + 3

    def features(self, config: Config) -> dict[str, float]:
        return {**self.launch_features(config), "warps_k": int(config["warps_k"]),
                "instructions_per_byte": self.step_instructions(config)
                / self.bytes_per_thread_step(config),
                "x_shared": float(config["x_stage"] == "shared")}

    def writer(self, config: Config, emulate: bool) -> _MmaWriter:
        return _MmaWriter(self, config, emulate)


class _MmaWriter(_Writer):
    """Writes the kernel of one config (see the module docstring for its structure); the split-k
    launch, the arguments, x staging, the evict-first policy and the result write are the SIMT
    writer's. `tiles` n8 tiles of B (x columns) share each A fragment: 1 for a GEMV."""

    tiles = 1

    def __init__(self, space: GemvMmaKnobs, config: Config, emulate: bool) -> None:
        _SplitKWriter.__init__(self, space, config, emulate)   # not _Writer's SIMT geometry
        self.warps, self.warps_k = int(config["warps"]), int(config["warps_k"])
        self.unroll, self.rows = int(config["unroll"]), space.rows_per_block(config)
        self.k_step = space.k_per_step(config)
        self.steps = self.k_slice // self.k_step
        self.x_shared, self.lanes = config["x_stage"] == "shared", CHUNK

    # -- thread geometry -------------------------------------------------------------------------
    def row(self, t, half: int):
        """Row (within the row block) of thread t's A rows g (half 0) and g + 8 (half 1)."""
        warp_row = t // WARP // self.warps_k
        return warp_row * ROWS_PER_WARP + t % WARP // 4 + 8 * half

    def column(self, t, s, u: int):
        """First column of thread t's u-th chunk in step s (within the split's k slice)."""
        wk, c = t // WARP % self.warps_k, t % WARP % 4
        return s * self.k_step + ((u * self.warps_k + wk) * 4 + c) * CHUNK

    # -- the CTA's program -----------------------------------------------------------------------
    def block(self) -> None:
        simt = self.simt
        # per tile the C fragment: rows g, g + 8 x 2 columns
        self.acc = simt.reg((4 * self.tiles,), "float32")
        self.w_reg = simt.reg((2 * self.unroll * CHUNK,), "float16")
        self.x_reg = simt.reg((self.tiles * self.unroll * CHUNK,), "float16")
        self.stage_x()
        self.red = self.reduction_buffer() if self.warps_k > 1 else None
        policy = self.evict_first_policy()
        with T.serial(0, self.visits) as visit:
            rb = self.bx + visit * self.grid_x
            guard = _UniformIf(rb < self.blocks) if self.blocks % self.grid_x else None
            with simt.threads() as t:
                for i in range(4 * self.tiles):
                    self.acc.store(t, tirx.const(0.0, "float32"), i)
            with T.serial(0, self.steps) as s:
                with simt.threads() as t:
                    self.load_step(t, rb, s, policy)
                    if not self.emulate:
                        self.mmas(t)
                if self.emulate:           # the mma reads other threads' registers: a phase later
                    with simt.threads() as t:
                        self.mmas(t)
            self.reduce_and_write(rb)
            if guard is not None:
                guard.close()

    def reduction_buffer(self) -> tirx.Buffer:
        """Shared memory where the k-warps' sums meet: (rows, warps_k)."""
        return self.simt.shared((self.rows, self.warps_k), "float32")

    def load_step(self, t, rb, s, policy) -> None:
        """Every chunk of step s: the two rows' weights, then x (all loads before any mma)."""
        for half in range(2):
            row = rb * self.rows + self.row(t, half)
            for u in range(self.unroll):
                col = self.ks * self.k_slice + self.column(t, s, u)
                self.load_w(t, (half * self.unroll + u) * CHUNK, row, col, policy)
        self.load_x(t, s)

    def load_x(self, t, s) -> None:
        """x_reg[u * 8 : u * 8 + 8] = x at the columns of thread t's u-th chunk of step s."""
        for u in range(self.unroll):
            self.x_reg.store(t, self.x_src[ramp(self.x_base + self.column(t, s, u), CHUNK)],
                             ramp(u * CHUNK, CHUNK))

    def load_w(self, t, at: int, row, col, policy) -> None:
        """w_reg[at : at + 8] = W[row, col : col + 8] through the configured load path."""
        if self.load == "plain" or self.emulate:
            self.w_reg.store(t, self.W[row, ramp(col, CHUNK)], ramp(at, CHUNK))
            return
        words = self.w_reg.view("uint32")
        dst = [words.load(t, at // 2 + i) for i in range(CHUNK // 2)]
        extra = [policy.load(t, 0)] if self.load == "nc_evict_first" else []
        T.evaluate(TS.ptx[_ld_chain(self.load, self.prefetch, CHUNK // 2)](
            *dst, self.W.ptr_to([row, col]), *extra))

    def fragments(self, u: int, j: int) -> tuple[list[int], list[int]]:
        """Indices into w_reg (a0..a7) and x_reg (b0..b3) of mma j of chunk u, in fragment order:
        a0a1 row g / a2a3 row g+8 at slots (2c, 2c+1) <- chunk halves 4j, 4j+1; a4a5 / a6a7 at
        (8+2c, 9+2c) <- 4j+2, 4j+3; b0b1 and b2b3 the same halves of x."""
        row_g, row_g8 = u * CHUNK, (self.unroll + u) * CHUNK
        lo, hi = 4 * j, 4 * j + 2
        a = [row_g + lo, row_g + lo + 1, row_g8 + lo, row_g8 + lo + 1,
             row_g + hi, row_g + hi + 1, row_g8 + hi, row_g8 + hi + 1]
        b = [u * CHUNK + lo, u * CHUNK + lo + 1, u * CHUNK + hi, u * CHUNK + hi + 1]
        return a, b

    def mmas(self, t) -> None:
        """The step's mmas: two per chunk and tile, into the tile's accumulators (tile i's x
        registers follow tile i - 1's)."""
        aw, bw = self.w_reg.view("uint32"), self.x_reg.view("uint32")
        tile_words = self.unroll * CHUNK // 2
        for u in range(self.unroll):
            for j in range(2):
                a, b = self.fragments(u, j)
                for i in range(self.tiles):
                    mma_m16n8k16(self.simt, t, aw, tuple(v // 2 for v in a[::2]),
                                 bw, tuple(v // 2 + i * tile_words for v in b[::2]),
                                 self.acc, tuple(range(4 * i, 4 * i + 4)))

    def reduce_and_write(self, rb) -> None:
        """Thread c = 0 of each warp holds its rows' sums (accumulators 0 and 2); with k-warps
        they meet in shared memory first."""
        simt = self.simt
        if self.red is None:
            with simt.threads() as t:
                with T.If(t % 4 == 0):
                    with T.Then():
                        for half in range(2):
                            self.write(rb * self.rows + self.row(t, half), self.acc.load(t, 2 * half))
            return
        with simt.threads() as t:
            with T.If(t % 4 == 0):
                with T.Then():
                    for half in range(2):
                        T.buffer_store(self.red, self.acc.load(t, 2 * half),
                                       [self.row(t, half), t // WARP % self.warps_k])
        simt.sync()
        with simt.threads() as t:
            with T.If(t < self.rows):
                with T.Then():
                    total = self.red[t, 0]
                    for w in range(1, self.warps_k):
                        total = total + self.red[t, w]
                    self.write(rb * self.rows + t, total)
        simt.sync()       # red is written again by the next row block
