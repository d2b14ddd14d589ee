"""A knob space of hand-written fp16 GEMV kernels, y[n] = W[n, k] x[k] (float32 out, or float16 with
accum=float16: summed in float32, rounded once), for CUDA sm_80+.

Why a template and not a MetaSchedule trace: what sets a GEMV's board power at a given
bandwidth is the instructions and threads spent per byte moved (GUIDE §2: cuBLAS streams the
same bytes with ~13% less power; fewer CTAs save power only by running slower), and those are
decisions a trace space does not expose: cache-qualified PTX loads, persistent grids, the split
of the reduction. The kernel is plain (non-s_tir) TIR written with TVM's IR builder through
schedules/simt.py, compiled with `tir_pipeline="tirx"` (no schedule primitives, no passes that
rewrite the loop nest: what the knobs say is what runs). It uses `T.ptx` from the TIRx dialect
for the load instructions; the same builder emits a CPU emulation of the kernel, so the index
arithmetic of every config is checked for real on llvm (tests/test_gemv_knobs.py).

The kernel: a CTA owns `rows_per_cta` rows at a time, `threads_per_row` threads each; a thread
loads `unroll` vectors of `vector_bytes` of its row per step (all loads issued before any
arithmetic: the bytes in flight), the matching pieces of x (from global memory, L1-cached, or
from a copy of the CTA's slice of x in shared memory), and accumulates in float32 into `unroll`
independent sums. The row's threads then reduce by xor shuffles (and through shared memory
across warps when a row has more than 32 threads). `ctas_per_sm` = 0 launches one CTA per row
block; otherwise a persistent grid of ctas_per_sm × SMs CTAs walks the row blocks in a
grid-stride loop. `split_k` > 1 splits k across CTAs (blockIdx.y); the partial sums are added
by float32 atomics into a zeroed y (a zeroing kernel first) or written to a workspace that a
second kernel reduces (`two_pass`). Load paths: `plain` (TVM's vector load; nvcc picks the
instruction), `nc` (ld.global.nc, the read-only path), `nc_no_allocate` (ld.global.nc with
L1::no_allocate: streamed weights do not displace x in L1), `nc_evict_first` (ld.global.nc
with an L2::cache_hint policy from createpolicy evict_first: weights leave L2 first).
`prefetch` adds the L2::128B/256B prefetch-size qualifier to the PTX loads.

`bulk2`/`bulk3`/`bulk4` (sm_90): each step's tile (rows_per_cta row segments of a step's
columns) is moved into a ring of 2-4 shared tiles by one thread's cp.async.bulk copies, one
instruction per row segment instead of one load per 16 bytes per thread, completing on an
mbarrier per stage that all threads wait on; they then read the tile with shared vector loads.
The ring runs across row blocks (one sequence of steps per CTA), so the grid must divide them.

Left out: products in fp16 (HFMA2, half the FMAs), because their rounding (2^-11 per product)
exceeds the op's float32 tolerance of 1e-4; tiles in dynamic shared memory (static shared
memory caps x in shared memory plus the bulk ring at 48 KB). The dequant twin of this space is
schedules/dequant_gemv_knobs.py.
"""
from __future__ import annotations

import math

import tvm
from tvm import tirx
from tvm.script import tirx as TS
from tvm.script.ir_builder import tirx as T
from tvm.target import Target

from .knobs import Config, Knob, KnobSpace, register
from .op import Op
from .simt import WARP, Simt, prim_func, ramp

LOADS = ("plain", "nc", "nc_no_allocate", "nc_evict_first", "bulk2", "bulk3", "bulk4")
PREFETCH = ("none", "L2::128B", "L2::256B")
MAX_THREADS = 1024
STATIC_SHARED = 48 * 1024            # static shared memory per block
THREADS_PER_SM = 2048                # sm_80 / sm_90
CTAS_PER_SM = 32
SM_COUNT_BY_ARCH = {"sm_80": 108, "sm_86": 84, "sm_89": 128, "sm_90": 132}  # A100, A40, L40, H100/H200 SXM
ZERO_THREADS = 256                   # threads per block of the zeroing and split-k reduce kernels


def sm_arch(target: Target) -> int:
    """Compute capability as a number ("sm_90a" -> 90)."""
    return int("".join(c for c in str(target.attrs.get("arch", "")) if c.isdigit()) or 0)


def sm_count(target: Target) -> int:
    """SMs of the target's GPU: the device's own count where a CUDA device is visible, else the
    usual part of that architecture."""
    dev = tvm.cuda(0)
    if dev.exist:
        return int(dev.multi_processor_count)
    return SM_COUNT_BY_ARCH.get(str(target.attrs.get("arch", "")).rstrip("af"), 132)


def bulk_stages(load: str) -> int:
    """Shared tiles in the ring of a bulk-copy load path ("bulk3" -> 3); 0 for the others."""
    return int(load.removeprefix("bulk")) if load.startswith("bulk") else 0


def load_features(load: str) -> dict[str, float]:
    """The load path one-hot, with the same keys for every config (the cost model's feature
    rows are read by the first row's names)."""
    return {"load_" + v: float(v == load) for v in LOADS}


def _ld_chain(load: str, prefetch: str, lanes32: int) -> str:
    """The PTX load for `lanes32` 32-bit words under a load-path knob value."""
    parts = ["ld", "global", "nc"]
    if load == "nc_no_allocate":
        parts.append("L1::no_allocate")
    if load == "nc_evict_first":
        parts.append("L2::cache_hint")
    if prefetch != "none":
        parts.append(prefetch)
    parts += [f"v{lanes32}", "b32"] if lanes32 > 1 else ["b32"]
    return ".".join(parts)


def grid_and_load_knobs(loads: tuple[str, ...]) -> tuple[Knob, ...]:
    """The knobs every GEMV space shares: the grid, the load path, x's staging and split-k."""
    return (Knob("ctas_per_sm", (0, 1, 2, 4, 8)), Knob("load", loads), Knob("prefetch", PREFETCH),
            Knob("x_stage", ("global", "shared")), Knob("split_k", (1, 2, 4, 8)),
            Knob("split_reduce", ("atomic", "two_pass")))


def tiling_reject(space, config: Config, rows_are: str, step_is: str) -> str | None:
    """The tiling rules of every GEMV space: rows per CTA divide n, split_k divides k, a step
    divides the split's slice, and split_reduce keeps its canonical value without split-k.
    `rows_are` and `step_is` say how the space makes its rows per CTA and its step."""
    rows, split = space.rows_per_block(config), int(config["split_k"])
    if space.n % rows:
        return f"{rows} rows per CTA ({rows_are}) do not divide n={space.n}"
    if space.k % split:
        return f"split_k {split} does not divide k={space.k}"
    if space.k_slice(config) % space.k_per_step(config):
        return (f"a step of {space.k_per_step(config)} {step_is} does not divide "
                f"k/split_k={space.k_slice(config)}")
    if split == 1 and config["split_reduce"] != "atomic":
        return "split_reduce only matters with split_k > 1 (its canonical value is atomic)"
    if split > 1 and config["split_reduce"] == "atomic" and space.op.output_dtype != "float32":
        return (f"a {space.op.output_dtype} output takes split-k partial sums by two_pass only "
                "(float32 atomics add into float32)")
    return None


@register
class GemvKnobs(KnobSpace):
    """fp16 GEMV kernels on CUDA sm_80+ (see the module docstring for what each knob does)."""

    name = "gemv-simt"
    compile_options = {"tir_pipeline": "tirx"}
    auto = True   # measured on an H200 (gemv_h200_2026-12-01): 0.91-0.98x cuBLAS's time from DRAM

    def __init__(self, op: Op, target: Target, sms: int | None = None) -> None:
        super().__init__(op, target)
        self.n, self.k = op.shape["n"], op.shape["k"]
        self.sms = sms or sm_count(target)

    @classmethod
    def applies(cls, op: Op, target: Target) -> bool:
        return (op.name == "gemv" and op.dtype == "float16" and target.kind.name == "cuda"
                and sm_arch(target) >= 80)

    def seeds(self) -> list[Config]:
        """The least-energy configs within 1.03x of cuBLAS's time of the H200 table
        (experiments/results/gemv_h200_2026-12-01), each the best of one of its four shapes."""
        base = {"threads_per_row": 32, "rows_per_cta": 2, "rows_per_thread": 2, "vector_bytes": 16,
                "unroll": 2, "ctas_per_sm": 0, "load": "bulk3", "prefetch": "none",
                "x_stage": "global", "split_k": 1, "split_reduce": "atomic"}
        return [base, dict(base, rows_per_thread=4, unroll=1, load="nc_no_allocate"),
                dict(base, threads_per_row=128, rows_per_cta=1, rows_per_thread=1,
                     load="nc_no_allocate")]

    @property
    def knobs(self) -> tuple[Knob, ...]:
        return (Knob("threads_per_row", (4, 8, 16, 32, 64, 128, 256)),
                Knob("rows_per_cta", (1, 2, 4, 8, 16)),
                Knob("rows_per_thread", (1, 2, 4)),
                Knob("vector_bytes", (8, 16)),
                Knob("unroll", (1, 2, 4)),
                *grid_and_load_knobs(LOADS))

    # -- derived sizes -----------------------------------------------------------------------
    @staticmethod
    def threads(config: Config) -> int:
        return int(config["threads_per_row"]) * int(config["rows_per_cta"])

    def lanes(self, config: Config) -> int:
        """fp16 elements per vector load."""
        return int(config["vector_bytes"]) // 2

    def k_slice(self, config: Config) -> int:
        return self.k // int(config["split_k"])

    def k_per_step(self, config: Config) -> int:
        """Elements of a row the row's threads read per step."""
        return int(config["threads_per_row"]) * self.lanes(config) * int(config["unroll"])

    def steps(self, config: Config) -> int:
        """Steps through a split's k slice."""
        return self.k_slice(config) // self.k_per_step(config)

    @staticmethod
    def rows_per_thread(config: Config) -> int:
        return int(config.get("rows_per_thread", 1))

    def rows_per_block(self, config: Config) -> int:
        """Rows a CTA computes at a time: rows_per_cta thread groups x rows_per_thread."""
        return int(config["rows_per_cta"]) * self.rows_per_thread(config)

    def row_blocks(self, config: Config) -> int:
        return self.n // self.rows_per_block(config)

    def grid_x(self, config: Config) -> int:
        per_sm = int(config["ctas_per_sm"])
        blocks = self.row_blocks(config)
        return blocks if per_sm == 0 else min(blocks, per_sm * self.sms)

    def shared_bytes(self, config: Config) -> int:
        x_bytes = self.k_slice(config) * 2 if config["x_stage"] == "shared" else 0
        tpr, rows = int(config["threads_per_row"]), self.rows_per_block(config)
        red = rows * (tpr // WARP) * 4 if tpr > WARP else 0
        stages = bulk_stages(str(config["load"]))
        ring = stages * (rows * self.k_per_step(config) * 2 + 8)
        return x_bytes + red + ring

    def reject(self, config: Config) -> str | None:
        threads = self.threads(config)
        if threads > MAX_THREADS:
            return f"{threads} threads per CTA > {MAX_THREADS}"
        if threads < WARP:
            return f"{threads} threads per CTA < one warp"
        why = tiling_reject(self, config, "rows_per_cta x rows_per_thread",
                            "elements (threads_per_row x lanes x unroll)")
        if why:
            return why
        if (config["load"] == "plain" or bulk_stages(str(config["load"]))) \
                and config["prefetch"] != "none":
            return "prefetch qualifiers apply to the ld.global.nc loads only"
        if bulk_stages(str(config["load"])):
            if sm_arch(self.target) < 90:
                return "bulk copies (cp.async.bulk) need sm_90"
            if self.row_blocks(config) % self.grid_x(config):
                return (f"the bulk path needs the grid ({self.grid_x(config)} CTAs) to divide the "
                        f"{self.row_blocks(config)} row blocks")
        if self.shared_bytes(config) > STATIC_SHARED:
            return f"{self.shared_bytes(config)} B of shared memory > {STATIC_SHARED} B"
        return None

    def bytes_per_thread_step(self, config: Config) -> int:
        """Weight bytes one thread loads per step (its bytes in flight)."""
        return self.rows_per_thread(config) * int(config["unroll"]) * int(config["vector_bytes"])

    def step_instructions(self, config: Config) -> float:
        """Estimated instructions per thread and step: a W load per row and vector and an x load
        per vector; a convert per x element, and per row a convert and an FMA per element; ~3
        for addresses and the loop."""
        unroll, lanes, rpt = int(config["unroll"]), self.lanes(config), self.rows_per_thread(config)
        return (rpt + 1) * unroll + unroll * lanes * (1 + 2 * rpt) + 3

    def launch_features(self, config: Config) -> dict[str, float]:
        """The features every GEMV space has, from its geometry and the knobs they all share
        (grid_and_load_knobs): CTA size, grid and waves, bytes in flight per thread and per SM,
        steps, shared memory, split-k, persistence and the load path."""
        threads, per_thread = self.threads(config), self.bytes_per_thread_step(config)
        ctas = self.grid_x(config) * int(config["split_k"])
        resident = min(CTAS_PER_SM, THREADS_PER_SM // threads)
        return {"threads": threads, "ctas": ctas, "waves": ctas / (resident * self.sms),
                "rows_per_block": self.rows_per_block(config),
                "bytes_in_flight_per_thread": per_thread,
                "bytes_in_flight_per_sm": per_thread * threads * min(resident, math.ceil(ctas / self.sms)),
                "steps": self.steps(config), "shared_bytes": self.shared_bytes(config),
                "split_k": int(config["split_k"]),
                "persistent": float(int(config["ctas_per_sm"]) > 0),
                **load_features(str(config["load"]))}

    def features(self, config: Config) -> dict[str, float]:
        steps, tpr = self.steps(config), int(config["threads_per_row"])
        # per row: its threads' steps, the shuffle tree and the store, over its weight bytes
        row_instr = tpr * (steps * self.step_instructions(config)
                           + self.rows_per_thread(config) * (2 * math.log2(min(tpr, WARP)) + 2))
        return {**self.launch_features(config), "rows_per_thread": self.rows_per_thread(config),
                "instructions_per_byte": row_instr / (steps * tpr * self.bytes_per_thread_step(config)),
                "bulk_stages": bulk_stages(str(config["load"])),
                "x_shared": float(config["x_stage"] == "shared")}

    def module(self, config: Config, emulate: bool = False) -> tvm.IRModule:
        """The kernel for config (a CUDA kernel; `emulate=True`: its serial CPU emulation)."""
        why = self.reject(config)
        if why:
            raise ValueError(f"config cannot run: {why}")
        return tvm.IRModule({"main": prim_func("main", self.writer(config, emulate).body)})

    def writer(self, config: Config, emulate: bool) -> _SplitKWriter:
        """What writes config's kernel (each space has its own)."""
        return _Writer(self, config, emulate)


class _SplitKWriter:
    """A kernel of (grid_x, split_k) CTAs whose partial sums of y are added by float32 atomics
    into a zeroed y (a zeroing kernel first) or written to a workspace that a second kernel
    reduces (`two_pass`); subclasses write the CTA's program (`block`)."""

    def __init__(self, space: GemvKnobs, config: Config, emulate: bool) -> None:
        self.n, self.k, self.emulate = space.n, space.k, emulate
        self.out_dtype = space.op.output_dtype
        self.outputs = space.n           # elements of y, as zeroed, split and reduced here
        self.split, self.threads = int(config["split_k"]), space.threads(config)
        self.k_slice = space.k_slice(config)
        self.grid_x, self.blocks = space.grid_x(config), space.row_blocks(config)
        self.visits = math.ceil(self.blocks / self.grid_x)
        self.load, self.prefetch = str(config["load"]), str(config["prefetch"])
        self.two_pass = self.split > 1 and config["split_reduce"] == "two_pass"
        self.atomic = self.split > 1 and not self.two_pass

    def declare(self) -> None:
        """The kernel's arguments: self.x and self.y (`outputs` elements) as the kernel indexes
        them."""
        raise NotImplementedError

    def block(self) -> None:
        """The program of CTA (self.bx, self.ks)."""
        raise NotImplementedError

    def body(self) -> None:
        self.declare()
        if self.atomic:
            _elementwise(self.emulate, self.outputs,
                         lambda i: T.buffer_store(self.y, tirx.const(0.0, "float32"), [i]))
        self.part = T.alloc_buffer((self.split, self.outputs), "float32") if self.two_pass else None
        self.simt = Simt(self.threads, self.emulate)
        with self.simt.launch([("blockIdx.x", self.grid_x), ("blockIdx.y", self.split)]) as (bx, ks):
            self.bx, self.ks = bx, ks
            self.block()
        if self.two_pass:
            def reduce(i):
                total = self.part[0, i]
                for s in range(1, self.split):
                    total = total + self.part[s, i]
                T.buffer_store(self.y, total.astype(self.y.dtype), [i])
            _elementwise(self.emulate, self.outputs, reduce)

    def evict_first_policy(self):
        """`nc_evict_first` on CUDA: a register holding an L2 evict_first cache policy."""
        if self.load != "nc_evict_first" or self.emulate:
            return None
        policy = self.simt.reg((1,), "uint64")
        with self.simt.threads() as t:
            T.evaluate(TS.ptx["createpolicy.fractional.L2::evict_first.b64"](
                policy.load(t, 0), tirx.const(1.0, "float32")))
        return policy

    def write(self, row, value) -> None:
        y = self.y
        if self.two_pass:
            T.buffer_store(self.part, value, [self.ks, row])
        elif self.atomic and not self.emulate:
            T.evaluate(tirx.call_extern("float32", "atomicAdd", y.access_ptr("rw", offset=row), value))
        elif self.atomic:
            T.buffer_store(y, y[row] + value, [row])
        else:
            T.buffer_store(y, value.astype(y.dtype), [row])


class _Writer(_SplitKWriter):
    """Writes the kernel of one config (see the module docstring for its structure)."""

    def __init__(self, space: GemvKnobs, config: Config, emulate: bool) -> None:
        super().__init__(space, config, emulate)
        self.tpr, self.rpt = int(config["threads_per_row"]), space.rows_per_thread(config)
        self.rows = space.rows_per_block(config)             # rows per row block
        self.unroll, self.lanes = int(config["unroll"]), space.lanes(config)
        self.k_step = space.k_per_step(config)
        self.steps = self.k_slice // self.k_step
        self.stages = bulk_stages(self.load)
        self.x_shared = config["x_stage"] == "shared"

    def declare(self) -> None:
        self.W = T.arg("W", T.buffer((self.n, self.k), "float16"))
        self.x = T.arg("x", T.buffer((self.k,), "float16"))
        self.y = T.arg("y", T.buffer((self.n,), self.out_dtype))

    def registers(self) -> None:
        self.w_reg = self.simt.reg((self.rpt * self.unroll * self.lanes,), "float16")
        self.x_reg = self.simt.reg((self.unroll * self.lanes,), "float16")

    def block(self) -> None:
        simt = self.simt
        self.acc = simt.reg((self.rpt * self.unroll,), "float32")
        self.registers()
        self.stage_x()
        self.red = simt.shared((self.rows, self.tpr // WARP), "float32") \
            if self.tpr > WARP else None
        if self.stages:
            self.bulk_loop()
        else:
            self.register_loop()

    # -- pieces ---------------------------------------------------------------------------------
    def stage_x(self) -> None:
        """x_src[x_base + j] is x[ks * k_slice + j]: x itself, or the CTA's copy in shared memory."""
        self.x_src, self.x_base = self.x, self.ks * self.k_slice
        if self.x_shared:
            self.copy_x_to_shared("float16", min(self.lanes, 8))   # 16-byte copies

    def copy_x_to_shared(self, dtype: str, lanes: int) -> None:
        """x_src becomes the CTA's x slice in shared memory, as `dtype`, copied `lanes` at a time."""
        simt, k_slice = self.simt, self.k_slice
        self.x_src, self.x_base = simt.shared((k_slice,), dtype), 0
        with simt.threads() as t:
            with T.serial(0, math.ceil(k_slice / (self.threads * lanes))) as c:
                at = (c * self.threads + t) * lanes
                with T.If(at < k_slice):
                    with T.Then():
                        value = self.x[ramp(self.ks * k_slice + at, lanes)]
                        if dtype != self.x.dtype:
                            value = value.astype(dtype if lanes == 1 else f"{dtype}x{lanes}")
                        T.buffer_store(self.x_src, value, [ramp(at, lanes)])
        simt.sync()

    def column(self, t, u: int):
        """First column (within a step) of thread t's u-th vector: neighbouring lanes read
        neighbouring vectors, and the u-th vectors of a row's lanes follow each other."""
        return (u * self.tpr + t % self.tpr) * self.lanes

    def slot(self, t, i: int = 0):
        """Row (within the row block) of thread t's i-th row."""
        return t // self.tpr * self.rpt + i

    def accumulate(self, t, s) -> None:
        """acc[i, u] += w_reg[i, u] . x_reg[u] for step s (w_reg already loaded): x is loaded and
        converted once for the thread's rows_per_thread rows."""
        lanes, unroll = self.lanes, self.unroll
        for u in range(unroll):
            col = self.x_base + s * self.k_step + self.column(t, u)
            self.x_reg.store(t, self.x_src[ramp(col, lanes)], ramp(u * lanes, lanes))
        for u in range(unroll):
            for v in range(lanes):
                xf = self.x_reg.load(t, u * lanes + v).astype("float32")
                for i in range(self.rpt):
                    a = i * unroll + u
                    w = self.w_reg.load(t, a * lanes + v).astype("float32")
                    self.acc.store(t, self.acc.load(t, a) + w * xf, a)

    def zero(self, t) -> None:
        for a in range(self.rpt * self.unroll):
            self.acc.store(t, tirx.const(0.0, "float32"), a)

    def reduce_and_write(self, rb) -> None:
        """Sum acc over each row's threads and write (or add, or keep) the rows' results."""
        simt, tpr, acc, unroll = self.simt, self.tpr, self.acc, self.unroll
        sums = [i * unroll for i in range(self.rpt)]      # acc slot of row i's sum
        with simt.threads() as t:
            for at in sums:
                for u in range(1, unroll):
                    acc.store(t, acc.load(t, at) + acc.load(t, at + u), at)
        for at in sums:
            simt.xor_sum(acc, min(tpr, WARP), at)
        if self.red is not None:
            warps = tpr // WARP
            with simt.threads() as t:
                with T.If(t % WARP == 0):
                    with T.Then():
                        for i, at in enumerate(sums):
                            T.buffer_store(self.red, acc.load(t, at),
                                           [self.slot(t, i), (t % tpr) // WARP])
            simt.sync()
            with simt.threads() as t:
                for i, at in enumerate(sums):
                    # if_then_else, not Select: Select reads both sides, and the simplifier drops
                    # the clamp of an index under the condition (an out-of-bounds read otherwise)
                    acc.store(t, tirx.if_then_else(t % tpr < warps, self.red[self.slot(t, i), t % tpr],
                                                   tirx.const(0.0, "float32")), at)
            for at in sums:
                simt.xor_sum(acc, warps, at)
            simt.sync()       # red is written again by the next row block
        with simt.threads() as t:
            with T.If(t % tpr == 0):
                with T.Then():
                    for i, at in enumerate(sums):
                        self.write(rb * self.rows + self.slot(t, i), acc.load(t, at))

    # -- register path: every thread loads its own weights ---------------------------------------
    def register_loop(self) -> None:
        simt = self.simt
        policy = self.evict_first_policy()
        with T.serial(0, self.visits) as visit:
            rb = self.bx + visit * self.grid_x
            guard = _UniformIf(rb < self.blocks) if self.blocks % self.grid_x else None
            self.rb = rb
            with simt.threads() as t:
                self.zero(t)
                with T.serial(0, self.steps) as s:
                    for i in range(self.rpt):      # every load of the step before any arithmetic
                        for u in range(self.unroll):
                            col = self.ks * self.k_slice + s * self.k_step + self.column(t, u)
                            self.load_w(t, (i * self.unroll + u) * self.lanes,
                                        rb * self.rows + self.slot(t, i), col, policy)
                    self.accumulate(t, s)
            self.reduce_and_write(rb)
            if guard is not None:
                guard.close()

    def load_w(self, t, at: int, row, col, policy) -> None:
        """w_reg[at : at + lanes] = W[row, col : col + lanes] through the configured load path."""
        lanes = self.lanes
        if self.load == "plain" or self.emulate:
            self.w_reg.store(t, self.W[row, ramp(col, lanes)], ramp(at, lanes))
            return
        words = T.decl_buffer((self.rpt * self.unroll * lanes // 2,), "uint32",
                              data=self.w_reg.buffer.data, scope="local")
        dst = [words[at // 2 + i] for i in range(lanes // 2)]
        extra = [policy.load(t, 0)] if self.load == "nc_evict_first" else []
        chain = _ld_chain(self.load, self.prefetch, lanes // 2)
        T.evaluate(TS.ptx[chain](*dst, self.W.ptr_to([row, col]), *extra))

    # -- bulk path: one thread moves each step's tile into shared memory -----------------------
    def bulk_loop(self) -> None:
        """Steps g = 0 .. visits * steps - 1 of all row blocks in one sequence, so that the ring
        of `stages` shared tiles stays full across row blocks: thread 0 issues the copies of step
        g + stages once every thread has read step g's tile (a barrier), and each step's tile
        arrives on that stage's mbarrier (expect-tx bytes), which all threads wait on with the
        parity of the step's round through the ring."""
        simt, stages, rows, k_step = self.simt, self.stages, self.rows, self.k_step
        tile = simt.shared((stages, rows, k_step), "float16")
        full = None if self.emulate else simt.shared((stages,), "uint64")
        total = self.visits * self.steps
        if full is not None:
            with simt.threads() as t:
                with T.If(t == 0):
                    with T.Then():
                        for i in range(stages):
                            T.evaluate(TS.ptx["mbarrier.init.shared.b64"](
                                full.ptr_to([i]), tirx.const(1, "uint32")))
                        T.evaluate(TS.ptx["fence.proxy.async.shared::cta"]())
            simt.sync()
        with simt.threads() as t:
            with T.If(t == 0):
                with T.Then():
                    for i in range(min(stages, total)):
                        self.issue(tile, full, i)
        with T.serial(0, total) as g:
            visit, s = g // self.steps, g % self.steps
            rb = self.bx + visit * self.grid_x
            stage = g % stages
            with simt.threads() as t:
                with T.If(s == 0):
                    with T.Then():
                        self.zero(t)
                if full is not None:
                    T.evaluate(TS.cuda.mbarrier_wait(full.ptr_to([stage]), (g // stages) % 2))
                for i in range(self.rpt):
                    for u in range(self.unroll):
                        at = ramp((i * self.unroll + u) * self.lanes, self.lanes)
                        self.w_reg.store(t, tile[stage, self.slot(t, i),
                                                 ramp(self.column(t, u), self.lanes)], at)
                self.accumulate(t, s)
            simt.sync()        # every thread is done with this stage's tile
            with simt.threads() as t:
                with T.If(tirx.all(t == 0, g + stages < total)):
                    with T.Then():
                        self.issue(tile, full, g + stages)
            with T.If(s == self.steps - 1):
                with T.Then():
                    self.reduce_and_write(rb)

    def issue(self, tile, full, g) -> None:
        """Thread 0: start the copies of step g's tile (rows_per_cta row segments of k_step)."""
        stage, visit, s = g % self.stages, g // self.steps, g % self.steps
        rb = self.bx + visit * self.grid_x
        col = self.ks * self.k_slice + s * self.k_step
        nbytes = self.k_step * 2
        if full is not None:
            T.evaluate(TS.ptx["mbarrier.arrive.expect_tx.shared.b64"](
                full.ptr_to([stage]), tirx.const(self.rows * nbytes, "uint32")))
        for r in range(self.rows):
            row = rb * self.rows + r
            if full is None:
                with T.serial(0, self.k_step // self.lanes) as c:
                    at = c * self.lanes
                    T.buffer_store(tile, self.W[row, ramp(col + at, self.lanes)],
                                   [stage, r, ramp(at, self.lanes)])
            else:
                T.evaluate(TS.ptx["cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes"](
                    tile.ptr_to([stage, r, 0]), self.W.ptr_to([row, col]),
                    tirx.const(nbytes, "uint32"), full.ptr_to([stage])))


class _UniformIf:
    """`if cond:` around phases (cond the same for every thread of the block)."""

    def __init__(self, cond) -> None:
        self.frames = [T.If(cond)]
        self.frames[0].__enter__()
        self.frames.append(T.Then())
        self.frames[1].__enter__()

    def close(self) -> None:
        for frame in reversed(self.frames):
            frame.__exit__(None, None, None)


def _elementwise(emulate: bool, n: int, write) -> None:
    """A kernel of its own running write(i) for i in 0..n-1 (ZERO_THREADS threads per block)."""
    simt = Simt(ZERO_THREADS, emulate)
    with simt.launch([("blockIdx.x", math.ceil(n / ZERO_THREADS))]) as (bx,):
        with simt.threads() as t:
            i = bx * ZERO_THREADS + t
            with T.If(i < n):
                with T.Then():
                    write(i)
