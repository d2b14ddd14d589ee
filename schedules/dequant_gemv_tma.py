"""Low-bit GEMV with the weights streamed by TMA: lut_mpgemm `impl=dequant` at m = 1 (fp16, CUDA
sm_90), the decode and the mma.sync m16n8k16 products of schedules/dequant_gemv_mma.py, its bytes
moved the way the fp16 TMA GEMV (schedules/gemv_wgmma.py) moves them.

Why: the mma kernel decodes at ~1.9 instructions per weight (W2) yet runs at ~3.7x the bandwidth
floor on an H200 (experiments/results/tensor_core_gemv_h200_2026-12-01): its plain loads of small
plane words keep too few bytes in flight. Here the copy engine keeps a ring of `stages` k-steps
of the CTA's planes in flight, with no load instruction per byte.

The kernel (one CTA per block of 16 x row_warps rows; `ctas_per_sm` > 0: a persistent grid that
walks the row blocks, the ring running on across them):
- a producer warp (the CTA's last) streams, per k-step of `k_step` columns, the bit planes of the
  block's rows into a ring stage in dynamic shared memory by 3-D TMA boxes of the packed planes
  (uint32 words [bits, n, k/32]), laid out [box][plane][row][word]. `box`: `quad` copies one box
  per quad span (4 x thread_cols columns: 16 or 64 bytes of each row and plane), so the 8 rows a
  warp reads at once are one contiguous run of shared memory (no bank conflicts); `row` copies
  the whole k-step of each row and plane in one box (one TMA per stage, 64-256 bytes per row),
  and a warp's reads of 8 rows then conflict where rows lie 128 bytes apart;
- each stage completes on a full mbarrier (expect_tx bytes) and is released on an empty one by
  every consumer thread once it has read its words;
- the consumer warps (row_warps x k_warps, as in the mma kernel) stage x permuted in shared
  memory and its sums per span (while the first stages arrive), then per sub-step of
  k_warps x 4 x thread_cols columns read their words from the stage and decode, multiply and
  scale them with the mma kernel's own code (`_MmaWriter.decode`, `load_x_pairs`,
  `apply_scales`, `reduce_and_write`); their barriers are a named barrier of the consumer warps
  only (the producer never waits on them).
The CPU emulation (`emulate=True`) copies each stage with plain loads before its consumers run,
so the box layout and the coordinates are checked against the op's numpy reference on llvm.

Measured on an H200 (experiments/results/dequant_gemv_tma_h200_2026-12-02, 28672 x 8192):
W2 43.6 us / 24.6 mJ, W4 55.7 us / 34.7 mJ, against cuBLAS fp16's 109-120 us / 68-71 mJ. That
is 2.5-2.9x (W2) and 2.0x (W4), short of issue 10's 5x and 3x. The mma space's plain loads
measured 47.8 and 53.9 us, so the bytes in flight were not what bounds the kernel; doubling the
consumer warps per SM bought 6%.

With the op's `layout=fields` (schedules/weight_layout.py) the same ring carries the fp16-pair
field words instead of the bit planes (same bytes, same boxes) and `_MmaWriter.decode_fields`
makes each pair in one lop3: the main loop's static SASS falls from 2.5 to 1.5 instructions per
weight at W2 and from 3.0 to 1.6 at W4 (counts in schedules/dequant_gemv_mma.py; not measured
on a GPU yet).

`scale_load`: `late` reads each row's group scale (and zero) from global memory where a sub-step
applies it, right after its mma chain; `early` issues those loads at the start of the sub-step,
before the ring reads and the decode, so their latency hides behind them. Nsight Compute on the
H200 (experiments/results/dequant_fields_shapes_h200_2026-12-02) found waits on global loads the
largest stall of the W4 kernel (4.9 cycles per issued instruction) and DRAM only 55-70% busy,
and `early` changed nothing measurable: a sub-step's work is shorter than a DRAM round trip.
`ring` moves them off the consumers' path: the producer copies each stage's scales (and zeros),
[rows][k_step / group] float32 boxes of the [n, k / group] arrays (2-D TMA), into a region of
the ring after the planes, counted in the stage's expected bytes, and the consumers read them
from shared memory. Without zero points the zero is the op's constant midpoint and is not read
(all three).

`k_warps` 4 splits a row block's sub-step over four warps (a quarter of the columns each), so a
warp's dependent chain of ring reads, decode and mmas is a quarter of the block's k: on the H200
the 16-64-row blocks of 4096x14336 all took 15-16 us at W2 with the same work per warp
(experiments/results/dequant_rowblocks_h200_2026-12-02), which is what a per-warp latency
bound looks like. Eight k-warps (which need 32-column thread spans to fit a k_step) were 1.02-1.6x
slower on the H200 (experiments/results/dequant_kwarps8_h200_2026-12-03), so 4 is the most.

Left out: split-k over CTAs (the persistent grid covers n >= 4096 at 16-128 rows per CTA; more
warps per row block are the k_warps knob), swizzled boxes (the layout above needs none).
"""
from __future__ import annotations

from tvm import tirx
from tvm.script import tirx as TS
from tvm.script.ir_builder import tirx as T
from tvm.target import Target

from .dequant_gemv_mma import MMA_ROWS, PAIRS, WORD, DequantGemvMma, _MmaWriter
from .gemv_knobs import CTAS_PER_SM, STATIC_SHARED, THREADS_PER_SM, _UniformIf, sm_arch
from .hopper_gemm import SMEM_LIMIT, SMEM_PER_SM
from .knobs import Config, Knob, register
from .lut_mpgemm import K_PER_BYTE
from .op import Op
from .simt import WARP, Simt, ramp

TMA = "cp.async.bulk.tensor.3d.shared::cluster.global.mbarrier::complete_tx::bytes"
TMA_2D = "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes"
TMA_MIN_BYTES = 16              # a TMA box's inner extent and a tensor's row stride: multiples of it
CONSUMER_BARRIER = 1            # named barrier id of the consumer warps (0 is __syncthreads)
RING_ALIGN = 128                # bytes: a TMA box's shared-memory destination
DYNAMIC_OPT_IN = 48 * 1024      # dynamic shared memory from which TVM's runtime opts a kernel in
BARRIER_BYTES = 1024            # the ring's mbarriers and what ptxas adds to static shared memory


def quad_words(config: Config) -> int:
    """32-bit words of one row and plane in a quad's span of 4 x thread_cols columns."""
    return 4 * int(config["thread_cols"]) // WORD


def box_words(config: Config) -> int:
    """32-bit words of one row and plane in one TMA box (`box`: a quad span, or the k-step)."""
    return quad_words(config) if config["box"] == "quad" else int(config["k_step"]) // WORD


@register
class DequantGemvTma(DequantGemvMma):
    """lut_mpgemm dequant at m = 1, TMA ring + mma.sync (see the module docstring)."""

    name = "lut-dequant-gemv-tma"
    auto = False            # not measured yet: named only

    @classmethod
    def applies(cls, op: Op, target: Target) -> bool:
        return cls.why_not(op, target) is None

    @classmethod
    def why_not(cls, op: Op, target: Target) -> str | None:
        if not DequantGemvMma.applies(op, target):
            return "it computes lut_mpgemm impl=dequant at m = 1 in float16 on CUDA only"
        if sm_arch(target) < 90:
            return f"it needs a Hopper GPU (sm_90: TMA), the target is {target.attrs['arch']}"
        return None

    def seeds(self) -> list[Config]:
        """The least-energy configs measured on an H200 with the fields layout and the scales in
        the ring (2026-12-03, experiments/results/dequant_ring_h200_2026-12-03): W2's at
        28672x8192 and 14336x4096, W2's at 4096x14336, W4's at 28672x8192 and 4096x14336,
        W4's at 14336x4096."""
        base = {"row_warps": 2, "k_warps": 4, "thread_cols": 128, "k_step": 2048, "stages": 8,
                "mma_chains": 2, "fragment": "thread", "offset": "fold", "decode": "scaled",
                "ctas_per_sm": 1, "l2_promotion": 2, "box": "quad", "scale_load": "ring"}
        return [base, dict(base, stages=6), dict(base, stages=4, mma_chains=4),
                dict(base, row_warps=4, k_warps=2, k_step=1024, stages=4)]

    @property
    def knobs(self) -> tuple[Knob, ...]:
        return (Knob("row_warps", (1, 2, 4, 8)),
                Knob("k_warps", (1, 2, 4)),
                Knob("thread_cols", (32, 128)),
                Knob("k_step", (512, 1024, 2048)),
                Knob("stages", (2, 3, 4, 6, 8)),
                Knob("mma_chains", (1, 2, 4)),
                Knob("fragment", ("quad", "thread")),
                Knob("offset", ("fold", "hsub2")),
                Knob("decode", ("shift", "scaled")),
                Knob("ctas_per_sm", (0, 1, 2, 3, 4)),
                Knob("l2_promotion", (0, 2, 3)),
                Knob("box", ("quad", "row")),
                Knob("scale_load", ("late", "early", "ring")))

    @staticmethod
    def mma_config(config: Config) -> Config:
        """config as the mma space's methods read it: one sub-step per unrolled step, no split-k,
        the weights loaded by TMA."""
        return dict(config, unroll=1, load="tma", prefetch="none", split_k=1,
                    split_reduce="atomic")

    # -- derived sizes -----------------------------------------------------------------------
    def plane_bytes(self, config: Config) -> int:
        """The planes of one ring stage: every plane of the block's rows for k_step columns."""
        return self.bits * self.rows_per_block(config) * int(config["k_step"]) // K_PER_BYTE

    def scale_arrays(self) -> int:
        """Arrays read per group and row: the scales, and the zeros with zero points."""
        return 2 if self.op.params["zero_points"] else 1

    def scale_bytes(self, config: Config) -> int:
        """The scales (and zeros) of one ring stage with scale_load=ring: float32 [rows][groups]."""
        if config["scale_load"] != "ring":
            return 0
        groups = int(config["k_step"]) // self.group
        return self.scale_arrays() * self.rows_per_block(config) * groups * 4

    def stage_bytes(self, config: Config) -> int:
        """One ring stage: its planes, then (scale_load=ring) its scales and zeros."""
        return self.plane_bytes(config) + self.scale_bytes(config)

    def ring_bytes(self, config: Config) -> int:
        return int(config["stages"]) * self.stage_bytes(config)

    def dynamic_bytes(self, config: Config) -> int:
        """The ring's dynamic shared memory, padded to DYNAMIC_OPT_IN where the block needs more
        than STATIC_SHARED in all: TVM's runtime raises a kernel's shared-memory limit only for
        that much dynamic memory, and the launch fails otherwise (seen on an H200: 32 KB of
        ring and 17 KB of x)."""
        ring = self.ring_bytes(config)
        static = self.shared_bytes(self.mma_config(config)) + BARRIER_BYTES
        return max(ring, DYNAMIC_OPT_IN) if ring + static > STATIC_SHARED else ring

    def block_bytes(self, config: Config) -> int:
        """Shared memory of one CTA: the (padded) ring, x and its sums."""
        return self.dynamic_bytes(config) + self.shared_bytes(self.mma_config(config))

    def reject(self, config: Config) -> str | None:
        mma = self.mma_config(config)
        step, substep = int(config["k_step"]), self.substep(mma)
        if step % substep:
            return (f"a k_step of {step} columns is not a multiple of a sub-step of {substep} "
                    f"(k_warps x 4 x thread_cols)")
        if self.k % step:
            return f"a k_step of {step} columns does not divide k={self.k}"
        if config["scale_load"] == "ring":
            groups = self.k // self.group
            if (step // self.group * 4) % TMA_MIN_BYTES or (groups * 4) % TMA_MIN_BYTES:
                return (f"scale_load=ring copies {step // self.group} of a row's {groups} float32 "
                        f"scales per stage, and TMA needs both in multiples of {TMA_MIN_BYTES} B")
        why = super().reject(mma)
        if why:
            return why
        smem, per_sm = self.block_bytes(config), int(config["ctas_per_sm"])
        if smem > SMEM_LIMIT:
            return f"shared memory {smem} B (ring and x) over the {SMEM_LIMIT} B a block can have"
        if per_sm * smem > SMEM_PER_SM:
            return (f"a persistent grid of {per_sm} CTAs per SM of {smem} B of shared memory each "
                    f"does not fit in the {SMEM_PER_SM} B of an SM")
        return None

    def features(self, config: Config) -> dict[str, float]:
        """The mma space's, with the producer warp and the ring: CTAs resident per SM (the
        persistent grid's, else as shared memory allows) times the ring's bytes in flight."""
        mma = self.mma_config(config)
        threads, smem = self.threads(mma) + WARP, self.block_bytes(config)
        resident = int(config["ctas_per_sm"]) or min(SMEM_PER_SM // smem, THREADS_PER_SM // threads,
                                                     CTAS_PER_SM)
        return {**super().features(mma), "bulk_stages": int(config["stages"]), "threads": threads,
                "shared_bytes": smem, "ring_bytes": self.ring_bytes(config),
                "bytes_in_flight_per_sm": resident * self.ring_bytes(config),
                "k_step": int(config["k_step"]), "l2_promotion": int(config["l2_promotion"]),
                "box_row": float(config["box"] == "row"),
                "scales_in_ring": float(config["scale_load"] == "ring")}

    def writer(self, config: Config, emulate: bool) -> _TmaWriter:
        return _TmaWriter(self, self.mma_config(config), emulate)


class _RingSimt(Simt):
    """A CTA of `consumers` threads and, on the GPU, a producer warp after them. `sync()` is a
    barrier of every thread until `consumers_only` is set, then a named barrier of the consumers."""

    def __init__(self, consumers: int, emulate: bool) -> None:
        super().__init__(consumers + (0 if emulate else WARP), emulate)
        self.consumers, self.consumers_only = consumers, False

    def sync(self) -> None:
        if self.emulate or not self.consumers_only:
            super().sync()
            return
        T.evaluate(TS.ptx["bar.sync"](tirx.const(CONSUMER_BARRIER, "uint32"),
                                      tirx.const(self.consumers, "uint32")))


class _TmaWriter(_MmaWriter):
    """Writes one config's kernel (see the module docstring)."""

    def __init__(self, space: DequantGemvTma, config: Config, emulate: bool) -> None:
        super().__init__(space, config, emulate)
        self.consumers = self.threads
        self.stages, self.stage_cols = int(config["stages"]), int(config["k_step"])
        self.per_stage = self.stage_cols // self.substep        # sub-steps per stage
        self.block_steps = self.k // self.stage_cols            # stages per row block
        self.qw, self.bw = quad_words(config), box_words(config)
        self.boxes = self.stage_cols // (WORD * self.bw)        # TMA boxes per stage
        self.tx_bytes = space.stage_bytes(config)
        self.dynamic_bytes = space.dynamic_bytes(config)
        self.l2_promotion = int(config["l2_promotion"])
        self.early_scales = config["scale_load"] == "early"
        self.ring_scales = config["scale_load"] == "ring"
        self.stage_groups = self.stage_cols // self.group       # groups per row and stage
        self.scale_offset = self.stages * space.plane_bytes(config) // 4   # float32 words
        self.arrays = space.scale_arrays()

    def scale_map(self, source):
        """A 2-D tensor map of a float32 [n, k / group] array, boxes [rows][stage_groups]."""
        groups = self.k // self.group
        tensor_map = T.bind(tirx.call_intrin(T.TensorMap().ty, "tirx.tvm_stack_alloca",
                                             "tensormap", 1), var=T.TensorMap())
        T.evaluate(tirx.call_packed(
            "runtime.cuTensorMapEncodeTiled", tensor_map, "float32", 2, source.data, groups,
            self.n, groups * 4, self.stage_groups, self.rows, 1, 1, 0, 0, self.l2_promotion, 0))
        return tensor_map

    def body(self) -> None:
        self.declare()
        if not self.emulate:
            self.tensor_map = T.bind(
                tirx.call_intrin(T.TensorMap().ty, "tirx.tvm_stack_alloca", "tensormap", 1),
                var=T.TensorMap())
            words = self.k // WORD
            T.evaluate(tirx.call_packed(
                "runtime.cuTensorMapEncodeTiled", self.tensor_map, "uint32", 3, self.packed.data,
                words, self.n, self.bits, words * 4, self.n * words * 4,
                self.bw, self.rows, self.bits, 1, 1, 1, 0, 0, self.l2_promotion, 0))
            if self.ring_scales:
                self.scale_maps = [self.scale_map(a) for a in (self.scales, self.zeros)[:self.arrays]]
        self.simt = _RingSimt(self.consumers, self.emulate)
        with self.simt.launch([("blockIdx.x", self.grid_x)]) as (bx,):
            self.bx, self.ks = bx, 0
            self.block()

    # -- the CTA ---------------------------------------------------------------------------------
    def block(self) -> None:
        simt = self.simt
        scope = "global" if self.emulate else "shared.dyn"
        ring = T.alloc_buffer((self.dynamic_bytes // 4,), "uint32", scope=scope,
                              align=RING_ALIGN)
        self.ring = T.decl_buffer((self.stages, self.boxes, self.bits, self.rows, self.bw),
                                  "uint32", data=ring.data, scope=scope)
        self.scale_ring = T.decl_buffer(
            (self.stages, self.arrays, self.rows, self.stage_groups), "float32", data=ring.data,
            scope=scope, elem_offset=self.scale_offset) if self.ring_scales else None
        self.acc = simt.reg((2,), "float32")
        self.w_reg = simt.reg((2 * self.bits * self.words,), "uint32")
        self.nib = simt.reg((2 * 4,), "uint32")
        self.a_reg = simt.reg((2 * PAIRS,), "uint32")
        self.b_reg = simt.reg((PAIRS,), "uint32")
        self.c_reg = simt.reg((self.chains * 4,), "float32")
        self.x_col = simt.reg((1,), "int32")
        self.sz_reg = simt.reg((2 * 2 * self.unroll,), "float32") if self.early_scales else None
        self.red = simt.shared((self.k_warps, self.rows), "float32") if self.k_warps > 1 else None
        full = empty = None
        if not self.emulate:
            full, empty = simt.shared((self.stages,), "uint64"), simt.shared((self.stages,), "uint64")
            self.init_ring(full, empty)
        if self.emulate:
            self.stage_x()
            self.consume(None, None)
            return
        tx = simt._tx
        with T.If(tx < self.consumers):
            with T.Then():
                simt.consumers_only = True     # x staged while the first stages arrive
                self.stage_x()
                self.consume(full, empty)
            with T.Else():
                with T.If(tx == self.consumers):
                    with T.Then():
                        self.produce(full, empty)

    def init_ring(self, full, empty) -> None:
        """Thread 0: a full barrier per stage waits for one arrival (and the TMA bytes), an empty
        one for every consumer thread; then a barrier of the whole CTA."""
        with self.simt.threads() as t:
            with T.If(t == 0):
                with T.Then():
                    for s in range(self.stages):
                        T.evaluate(TS.ptx["mbarrier.init.shared.b64"](
                            full.ptr_to([s]), tirx.const(1, "uint32")))
                        T.evaluate(TS.ptx["mbarrier.init.shared.b64"](
                            empty.ptr_to([s]), tirx.const(self.consumers, "uint32")))
                    T.evaluate(TS.ptx["fence.proxy.async.shared::cta"]())
        self.simt.sync()

    def rounds(self, visit):
        """The row block of `visit`, and a guard where the grid does not divide the blocks."""
        self.rb = self.bx + visit * self.grid_x
        return _UniformIf(self.rb < self.blocks) if self.blocks % self.grid_x else None

    def produce(self, full, empty) -> None:
        """The producer thread: each stage, once free, filled by `boxes` TMA copies."""
        with T.serial(0, self.visits) as visit:
            guard = self.rounds(visit)
            with T.serial(0, self.block_steps) as st:
                g = visit * self.block_steps + st
                stage, parity = g % self.stages, (g // self.stages) % 2
                T.evaluate(TS.cuda.mbarrier_wait(empty.ptr_to([stage]), parity ^ 1))
                T.evaluate(TS.ptx["mbarrier.arrive.expect_tx.shared.b64"](
                    full.ptr_to([stage]), tirx.const(self.tx_bytes, "uint32")))
                for j in range(self.boxes):
                    word = st * self.stage_cols // WORD + j * self.bw
                    T.evaluate(TS.ptx[TMA](self.ring.ptr_to([stage, j, 0, 0, 0]),
                                           tirx.address_of(self.tensor_map), word,
                                           self.rb * self.rows, 0, full.ptr_to([stage])))
                if self.ring_scales:
                    for a, scale_map in enumerate(self.scale_maps):
                        T.evaluate(TS.ptx[TMA_2D](
                            self.scale_ring.ptr_to([stage, a, 0, 0]), tirx.address_of(scale_map),
                            st * self.stage_groups, self.rb * self.rows, full.ptr_to([stage])))
            if guard is not None:
                guard.close()

    def fill(self, st) -> None:
        """Emulated: stage 0 gets step st's boxes by plain copies."""
        with T.serial(0, self.boxes) as j:
            with T.serial(0, self.bits) as b:
                with T.serial(0, self.rows) as r:
                    with T.serial(0, self.bw) as w:
                        word = st * self.stage_cols // WORD + j * self.bw + w
                        T.buffer_store(self.ring, self.planes[b, self.rb * self.rows + r, word],
                                       [0, j, b, r, w])
        if self.ring_scales:
            with T.serial(0, self.rows) as r:
                with T.serial(0, self.stage_groups) as g:
                    for a, source in enumerate((self.scales, self.zeros)[:self.arrays]):
                        T.buffer_store(self.scale_ring,
                                       source[self.rb * self.rows + r, st * self.stage_groups + g],
                                       [0, a, r, g])

    def consume(self, full, empty) -> None:
        """The consumer warps: per stage, its sub-steps as the mma kernel's steps."""
        simt = self.simt
        with T.serial(0, self.visits) as visit:
            guard = self.rounds(visit)
            with simt.threads() as t:
                for r in range(2):
                    self.acc.store(t, tirx.const(0.0, "float32"), r)
            with T.serial(0, self.block_steps) as st:
                g = visit * self.block_steps + st
                stage = g % self.stages
                if self.emulate:
                    self.fill(st)
                    stage = 0
                else:
                    T.evaluate(TS.cuda.mbarrier_wait(full.ptr_to([stage]),
                                                     (g // self.stages) % 2))
                self.stage = stage              # where scale_and_zero reads a ring's scales
                for u in range(self.per_stage):
                    self.substep_product(stage, st * self.per_stage + u, u)
                if empty is not None:
                    T.evaluate(TS.ptx["mbarrier.arrive.shared.b64"](empty.ptr_to([stage])))
            self.reduce_and_write()
            if guard is not None:
                guard.close()

    def substep_product(self, stage, s, u: int) -> None:
        """Sub-step s (the u-th of its stage): words from the ring, then the mma kernel's decode,
        products and scales."""
        simt = self.simt
        with simt.threads() as t:
            for i in range(self.chains * 4):
                self.c_reg.store(t, tirx.const(0.0, "float32"), i)
            if self.early_scales:
                self.load_scales(t, s)
            self.read_planes(t, stage, u)
        for word in range(self.words):
            self.multiply_word(s, 0, word)
        with simt.threads() as t:
            self.apply_scales(t, s)

    def scale_and_zero(self, t, s, u: int, r: int):
        """scale_load=ring: (scale, zero) of row r of thread t in sub-step s from the current
        stage's region of the ring; else the mma kernel's."""
        if not self.ring_scales:
            return super().scale_and_zero(t, s, u, r)
        local = self.row(t, r) - self.rb * self.rows
        group = self.group_of(t, s, u) % self.stage_groups
        scale = self.scale_ring[self.stage, 0, local, group]
        if self.zero is not None:
            return scale, tirx.const(self.zero, "float32")
        return scale, self.scale_ring[self.stage, 1, local, group]

    def read_planes(self, t, stage, u: int) -> None:
        """w_reg as the mma kernel's loads leave it (sub-step 0): the thread's words of every
        plane of its two rows, in quad span u x k_warps + its k warp of the stage."""
        g, q = self.lane(t)
        warp = t // WARP
        span = u * self.k_warps + warp // self.row_warps
        per_box = self.bw // self.qw
        box, at = span // per_box, span % per_box * self.qw + q * self.words
        for r in range(2):
            local = warp % self.row_warps * MMA_ROWS + g + 8 * r
            for b in range(self.bits):
                self.w_reg.store(t, self.ring[stage, box, b, local, ramp(at, self.words)],
                                 ramp((r * self.bits + b) * self.words, self.words))

