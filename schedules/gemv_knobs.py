"""A knob space of hand-written fp16 GEMV kernels, y[n] = W[n, k] x[k] (float32 out), for CUDA sm_80+.

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

Not (yet) in the space: bulk asynchronous copies (cp.async.bulk into shared memory, completed
on an mbarrier, sm_90): one elected thread would move a CTA's whole tile per instruction, the
fewest instructions per byte there are; it needs a multi-stage ring of shared tiles with
mbarrier arrive/expect-tx/try-wait parity per stage, which `T.ptx` has (cp.async.bulk,
mbarrier_*), but it is not written here. Products in fp16 (HFMA2, half the FMAs) are left out
because their rounding (2^-11 per product) exceeds the op's float32 tolerance of 1e-4.

The dequant twin (lut_mpgemm at m = 1, `--impl dequant`), design note: the same kernel with W
replaced by its packed form, uint8 [bits, n, k/8] (schedules/lut_mpgemm.py: bit b of weight j
of row c is bit j%8 of packed[b, c, j//8]), scales and zero points [n, k/group]. A thread's step
then loads, per bit plane, `vector_bytes` of packed bytes (128 weights per 16-byte load), so
the bytes in flight shrink by 16/bits for the same k per step, and decode becomes the cost:
extracting bit j of each plane and assembling q costs ~2 instructions per weight and plane with
shifts and ands; a lop3-based decode (one `lop3.b32` merges a masked plane into the assembled
word, then a magic-number fp16 conversion `(q | 0x6400) - 1024.0` turns 2 nibbles into 2 halves)
needs the planes pre-interleaved offline so that one 32-bit word holds the bits of 8 (or 16)
consecutive weights, which is a packing change (done once, offline, tested for round trips).
Knobs beyond this space's: decode (shift-and vs lop3 with interleaved packing), scale application
(per weight vs once per group on the partial sum: k/group multiplies per row instead of k),
whether the zero point is folded into an activation-sum correction (one multiply per group), and
how many groups a thread covers per step (a group of 128 at 16-byte loads is one load per plane).
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

LOADS = ("plain", "nc", "nc_no_allocate", "nc_evict_first")
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


@register
class GemvKnobs(KnobSpace):
    """fp16 GEMV kernels on CUDA sm_80+ (see the module docstring for what each knob does)."""

    name = "gemv-simt"
    compile_options = {"tir_pipeline": "tirx"}

    def __init__(self, op: Op, target: Target, sms: int | None = None) -> None:
        super().__init__(op, target)
        self.n, self.k = op.shape["n"], op.shape["k"]
        self.sms = sms or sm_count(target)

    @classmethod
    def applies(cls, op: Op, target: Target) -> bool:
        return (op.name == "gemv" and op.dtype == "float16" and target.kind.name == "cuda"
                and sm_arch(target) >= 80)

    @property
    def knobs(self) -> tuple[Knob, ...]:
        return (Knob("threads_per_row", (4, 8, 16, 32, 64, 128, 256)),
                Knob("rows_per_cta", (1, 2, 4, 8, 16)),
                Knob("vector_bytes", (8, 16)),
                Knob("unroll", (1, 2, 4)),
                Knob("ctas_per_sm", (0, 1, 2, 4, 8)),
                Knob("load", LOADS),
                Knob("prefetch", PREFETCH),
                Knob("x_stage", ("global", "shared")),
                Knob("split_k", (1, 2, 4, 8)),
                Knob("split_reduce", ("atomic", "two_pass")))

    # -- derived sizes -----------------------------------------------------------------------
    @staticmethod
    def threads(config: Config) -> int:
        return int(config["threads_per_row"]) * int(config["rows_per_cta"])

    @staticmethod
    def lanes(config: Config) -> int:
        """fp16 elements per vector load."""
        return int(config["vector_bytes"]) // 2

    def k_slice(self, config: Config) -> int:
        return self.k // int(config["split_k"])

    def k_per_step(self, config: Config) -> int:
        """Elements of a row the row's threads read per step."""
        return int(config["threads_per_row"]) * self.lanes(config) * int(config["unroll"])

    def row_blocks(self, config: Config) -> int:
        return self.n // int(config["rows_per_cta"])

    def grid_x(self, config: Config) -> int:
        per_sm = int(config["ctas_per_sm"])
        blocks = self.row_blocks(config)
        return blocks if per_sm == 0 else min(blocks, per_sm * self.sms)

    def shared_bytes(self, config: Config) -> int:
        x_bytes = self.k_slice(config) * 2 if config["x_stage"] == "shared" else 0
        tpr = int(config["threads_per_row"])
        red = int(config["rows_per_cta"]) * (tpr // WARP) * 4 if tpr > WARP else 0
        return x_bytes + red

    def reject(self, config: Config) -> str | None:
        threads, split = self.threads(config), int(config["split_k"])
        if threads > MAX_THREADS:
            return f"{threads} threads per CTA > {MAX_THREADS}"
        if threads < WARP:
            return f"{threads} threads per CTA < one warp"
        if self.n % int(config["rows_per_cta"]):
            return f"rows_per_cta {config['rows_per_cta']} does not divide n={self.n}"
        if self.k % split:
            return f"split_k {split} does not divide k={self.k}"
        if self.k_slice(config) % self.k_per_step(config):
            return (f"a step of {self.k_per_step(config)} elements (threads_per_row x lanes x "
                    f"unroll) does not divide k/split_k={self.k_slice(config)}")
        if split == 1 and config["split_reduce"] != "atomic":
            return "split_reduce only matters with split_k > 1 (its canonical value is atomic)"
        if config["load"] == "plain" and config["prefetch"] != "none":
            return "prefetch qualifiers apply to the PTX loads only"
        if self.shared_bytes(config) > STATIC_SHARED:
            return f"{self.shared_bytes(config)} B of shared memory > {STATIC_SHARED} B"
        return None

    def features(self, config: Config) -> dict[str, float]:
        threads, unroll, lanes = self.threads(config), int(config["unroll"]), self.lanes(config)
        ctas = self.grid_x(config) * int(config["split_k"])
        resident = min(CTAS_PER_SM, THREADS_PER_SM // threads)
        steps = self.k_slice(config) // self.k_per_step(config)
        tpr = int(config["threads_per_row"])
        # per thread and step: unroll W loads + unroll x loads + 2 converts and 1 FMA per element
        # + ~3 address/loop instructions; per row: the shuffle tree and the store
        step_instr = 2 * unroll + 3 * unroll * lanes + 3
        row_instr = tpr * (steps * step_instr + 2 * math.log2(min(tpr, WARP)) + 2)
        w_bytes_per_row = self.k_slice(config) * 2
        return {"threads": threads, "ctas": ctas, "waves": ctas / (resident * self.sms),
                "rows_per_thread_block_visit": int(config["rows_per_cta"]),
                "bytes_in_flight_per_thread": unroll * int(config["vector_bytes"]),
                "bytes_in_flight_per_sm": unroll * int(config["vector_bytes"]) * threads
                * min(resident, math.ceil(ctas / self.sms)),
                "instructions_per_byte": row_instr / w_bytes_per_row,
                "steps": steps, "shared_bytes": self.shared_bytes(config),
                "split_k": int(config["split_k"]),
                "persistent": float(int(config["ctas_per_sm"]) > 0),
                "load_" + str(config["load"]): 1.0, "x_shared": float(config["x_stage"] == "shared")}

    def module(self, config: Config, emulate: bool = False) -> tvm.IRModule:
        """The kernel for config (a CUDA kernel; `emulate=True`: its serial CPU emulation)."""
        why = self.reject(config)
        if why:
            raise ValueError(f"config cannot run: {why}")
        return tvm.IRModule({"main": gemv_kernel(self, config, emulate)})


def gemv_kernel(space: GemvKnobs, config: Config, emulate: bool) -> tirx.PrimFunc:
    n, k = space.n, space.k
    tpr, rows, unroll = int(config["threads_per_row"]), int(config["rows_per_cta"]), int(config["unroll"])
    lanes, split, threads = space.lanes(config), int(config["split_k"]), space.threads(config)
    k_slice, k_step = space.k_slice(config), space.k_per_step(config)
    grid_x, blocks = space.grid_x(config), space.row_blocks(config)
    visits = math.ceil(blocks / grid_x)
    load, x_shared = str(config["load"]), config["x_stage"] == "shared"
    two_pass = split > 1 and config["split_reduce"] == "two_pass"
    atomic = split > 1 and not two_pass

    def body() -> None:
        W = T.arg("W", T.buffer((n, k), "float16"))
        x = T.arg("x", T.buffer((k,), "float16"))
        y = T.arg("y", T.buffer((n,), "float32"))
        if atomic:
            _elementwise(emulate, n, lambda i: T.buffer_store(y, tirx.const(0.0, "float32"), [i]))
        part = T.alloc_buffer((split, n), "float32") if two_pass else None
        simt = Simt(threads, emulate)
        with simt.launch([("blockIdx.x", grid_x), ("blockIdx.y", split)]) as (bx, ks):
            acc = simt.reg((unroll,), "float32")
            w_reg = simt.reg((unroll * lanes,), "float16")
            x_reg = simt.reg((unroll * lanes,), "float16")
            policy = simt.reg((1,), "uint64") if load == "nc_evict_first" and not emulate else None
            x_src, x_base = x, ks * k_slice
            if x_shared:
                x_src, x_base = simt.shared((k_slice,), "float16"), 0
                chunks = math.ceil(k_slice / (threads * lanes))
                with simt.threads() as t:
                    with T.serial(0, chunks) as c:
                        at = (c * threads + t) * lanes
                        with T.If(at < k_slice):
                            with T.Then():
                                T.buffer_store(x_src, x[ramp(ks * k_slice + at, lanes)],
                                               [ramp(at, lanes)])
                simt.sync()
            red = simt.shared((rows, tpr // WARP), "float32") if tpr > WARP else None
            if policy is not None:
                with simt.threads() as t:
                    T.evaluate(TS.ptx["createpolicy.fractional.L2::evict_first.b64"](
                        policy.load(t, 0), tirx.const(1.0, "float32")))
            with T.serial(0, visits) as visit:
                rb = bx + visit * grid_x
                guard = T.If(rb < blocks) if blocks % grid_x else None
                if guard is not None:
                    guard.__enter__()
                    then = T.Then()
                    then.__enter__()
                with simt.threads() as t:
                    row, lane = rb * rows + t // tpr, t % tpr
                    for u in range(unroll):
                        acc.store(t, tirx.const(0.0, "float32"), u)
                    with T.serial(0, k_slice // k_step) as s:
                        for u in range(unroll):   # every load of the step before any arithmetic
                            col = ks * k_slice + s * k_step + (u * tpr + lane) * lanes
                            _load_w(W, w_reg, t, u * lanes, row, col, lanes, load,
                                    str(config["prefetch"]), policy, emulate)
                        for u in range(unroll):
                            col = x_base + s * k_step + (u * tpr + lane) * lanes
                            x_reg.store(t, x_src[ramp(col, lanes)], ramp(u * lanes, lanes))
                        for u in range(unroll):
                            for v in range(lanes):
                                e = u * lanes + v
                                acc.store(t, acc.load(t, u) + w_reg.load(t, e).astype("float32")
                                          * x_reg.load(t, e).astype("float32"), u)
                    for u in range(1, unroll):
                        acc.store(t, acc.load(t, 0) + acc.load(t, u), 0)
                simt.xor_sum(acc, min(tpr, WARP))
                if red is not None:
                    with simt.threads() as t:
                        with T.If(t % WARP == 0):
                            with T.Then():
                                T.buffer_store(red, acc.load(t, 0), [t // tpr, (t % tpr) // WARP])
                    simt.sync()
                    with simt.threads() as t:
                        lane = t % tpr
                        acc.store(t, tirx.Select(lane < tpr // WARP,
                                                 red[t // tpr, tirx.min(lane, tpr // WARP - 1)],
                                                 tirx.const(0.0, "float32")), 0)
                    simt.xor_sum(acc, tpr // WARP)
                    simt.sync()       # red is written again by the next visit
                with simt.threads() as t:
                    row = rb * rows + t // tpr
                    with T.If(t % tpr == 0):
                        with T.Then():
                            if two_pass:
                                T.buffer_store(part, acc.load(t, 0), [ks, row])
                            elif atomic and not emulate:
                                T.evaluate(tirx.call_extern("float32", "atomicAdd",
                                                            y.access_ptr("rw", offset=row),
                                                            acc.load(t, 0)))
                            elif atomic:
                                T.buffer_store(y, y[row] + acc.load(t, 0), [row])
                            else:
                                T.buffer_store(y, acc.load(t, 0), [row])
                if guard is not None:
                    then.__exit__(None, None, None)
                    guard.__exit__(None, None, None)
        if two_pass:
            def reduce(i):
                total = part[0, i]
                for s in range(1, split):
                    total = total + part[s, i]
                T.buffer_store(y, total, [i])
            _elementwise(emulate, n, reduce)

    return prim_func("main", body)


def _elementwise(emulate: bool, n: int, write) -> None:
    """A kernel of its own running write(i) for i in 0..n-1 (ZERO_THREADS threads per block)."""
    simt = Simt(ZERO_THREADS, emulate)
    with simt.launch([("blockIdx.x", math.ceil(n / ZERO_THREADS))]) as (bx,):
        with simt.threads() as t:
            i = bx * ZERO_THREADS + t
            with T.If(i < n):
                with T.Then():
                    write(i)


def _load_w(W, w_reg, t, at: int, row, col, lanes: int, load: str, prefetch: str, policy,
            emulate: bool) -> None:
    """w_reg[at : at + lanes] = W[row, col : col + lanes] through the configured load path."""
    if load == "plain" or emulate:
        w_reg.store(t, W[row, ramp(col, lanes)], ramp(at, lanes))
        return
    words = T.decl_buffer((w_reg.buffer.shape[-1] // 2,), "uint32", data=w_reg.buffer.data,
                          scope="local")
    dst = [words[at // 2 + i] for i in range(lanes // 2)]
    extra = [policy.load(t, 0)] if load == "nc_evict_first" else []
    T.evaluate(TS.ptx[_ld_chain(load, prefetch, lanes // 2)](*dst, W.ptr_to([row, col]), *extra))
