"""fp16 GEMV and few-row linear on Hopper's TMA + wgmma, the way cuBLAS's sm90 GEMV runs, in TIRx.

y[n] = W[n, k] x[k] (gemv) or y[m, n] = x[m, k] W[n, k]^T (linear, m <= 16), float32 out (gemv:
float16 with accum=float16, summed in float32 and rounded once).

Why: Nsight Compute (experiments/results/gemv_ncu_h200_2026-12-01) shows cuBLAS's fp16 GEMV on
the H200 is a TMA + wgmma GEMM with a 128 x 8 tile (`nvjet_sm90_hsh_128x8_64x12_...`): 112 CTAs
of 384 threads for 14336 x 4096, no load instruction per byte at all (the copy engine moves the
weights into shared memory), 2.5x fewer warp instructions than our SIMT kernel at the same DRAM
bytes, and it streams them at our speed with 11-18% less board power. This family makes that
kernel a knob space: the bytes move by TMA, the arithmetic is a wgmma per 64 rows x 16 columns.
Measured on the H200 (experiments/results/gemv_wgmma_h200_2026-12-01): cuBLAS's speed or better at
1.01-1.03x its energy for n = 14336 and 28672 (the SIMT space: 1.07-1.12x), so most of the power
gap was this structure; the rest is not found yet.

The product is a GEMM with W as the wgmma A operand (M = rows of W) and x as B (N = 8, or 16 for
9..16 rows of x), both K-major in 128B-swizzled shared memory, as in schedules/hopper_gemm.py:
- a producer warp (the CTA's last: the consumer warpgroups stay warpgroup-aligned) streams, per
  k-step of 64 columns, a TMA box of block_m x 64 of W and one of rows(x) x 64 of x into a ring of
  `stages`; each stage completes on a full mbarrier and is released on an empty one;
- x's box fills only its first rows(x) rows of the B tile: the other rows of every stage are zeroed
  once at the start (TMA never writes them), so the padded columns of the product are zero;
- each consumer warpgroup owns 64 rows of W and issues `wgmma.m64n{8,16}k16` per 16 columns,
  keeping one k-step in flight, and stores its accumulator's real columns (4 or 8 registers);
- `persistent`: a grid of at most one CTA per SM walks the row blocks, the ring running on across
  them; `sm_share` (1, 3/4, 1/2) leaves the other SMs idle, to see whether fewer SMs streaming
  the same bytes draw less power; else one CTA per row block;
- `split_k` (1, 2, 4): a row block's k range is split over a cluster of that many CTAs (for
  n = 4096: 32-64 row blocks for 132 SMs); each sums its slice, rank 0 adds the others' partial
  sums from their shared memory (distributed shared memory: mapa + ld.shared::cluster) between
  two cluster barriers and stores once, so fp16 output and determinism are kept (no atomics).
Left out: bf16. Split-k and `sm_share` are not measured yet.
"""
from __future__ import annotations

import math

import tvm
from tvm.script import tirx as T
from tvm.target import Target

from .hopper_gemm import (BK, NUM_SMS, SMEM_LIMIT, SMEM_PER_SM, STATIC_SMEM, SWIZZLE_128B,
                          init_ring, release_last, release_previous, sm90a)
from .knobs import Config, Knob, KnobSpace, register
from .op import Op

MAX_ROWS = 16          # rows of x: wgmma N of 8 or 16
SPLITS = (1, 2, 4)     # k slices of a row block, one CTA each, in one cluster
SM_SHARES = (1.0, 0.75, 0.5)   # share of the SMs a persistent grid occupies

# a float of another CTA's shared memory in the cluster (distributed shared memory)
CLUSTER_LOAD = """
__forceinline__ __device__ float cluster_load_f32(float* p, int rank) {
  unsigned local = (unsigned)__cvta_generic_to_shared(p), remote;
  float v;
  asm volatile("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(remote) : "r"(local), "r"(rank));
  asm volatile("ld.shared::cluster.f32 %0, [%1];" : "=f"(v) : "r"(remote) : "memory");
  return v;
}
"""


def wgmma_n(rows: int) -> int:
    """The wgmma N that holds rows of x (8 or 16)."""
    return 8 if rows <= 8 else 16


def stage_bytes(block_m: int, rows: int) -> int:
    """Shared memory of one ring stage: the W tile and the (padded) x tile, 64 columns each."""
    return (block_m + wgmma_n(rows)) * BK * 2


def smem_bytes(block_m: int, rows: int, stages: int, split_k: int = 1) -> int:
    """The ring, the barriers and, with split-k, the partial accumulators (fp32, per consumer
    thread)."""
    partials = block_m * wgmma_n(rows) * 4 if split_k > 1 else 0    # 2 threads per row, N/2 each
    return stages * stage_bytes(block_m, rows) + STATIC_SMEM + partials


def persistent_grid(tiles: int, sms: int, sm_share: float) -> int:
    """CTAs of a persistent grid: one per SM of the share used, at most one per row block."""
    return max(1, min(tiles, round(sms * sm_share)))


def gemv_wgmma_func(n: int, k: int, rows: int, consumers: int, stages: int, persistent: bool,
                    l2_promotion: int, w_first: bool, sms: int = NUM_SMS,
                    out_dtype: str = "float32", split_k: int = 1,
                    sm_share: float = 1.0) -> tvm.tirx.PrimFunc:
    """The TIRx PrimFunc main(..., y): (W, x, y) for gemv (w_first, rows = 1, x and y vectors),
    (x, W, y) for linear (x[rows, k], y[rows, n])."""
    BM, BN, S, WG = 64 * consumers, wgmma_n(rows), stages, consumers
    tiles, k_tiles = n // BM, k // BK
    split, k_steps = split_k, k // BK // split_k           # k-steps of one CTA of a split tile
    grid = persistent_grid(tiles, sms, sm_share) if persistent else tiles * split
    max_tiles_per_cta = (tiles + grid - 1) // grid
    threads = 128 * WG + 32                      # consumer warpgroups, then the producer warp
    producer = 128 * WG
    stage_elems = stage_bytes(BM, rows) // 2
    a_elems = BM * BK
    tx_bytes = (BM + rows) * BK * 2
    padded = rows < BN
    pad_elems = max(BN - rows, 1) * BK           # zero rows of each stage's x tile
    zero_elems = S * pad_elems
    zero_steps = (zero_elems + threads - 1) // threads
    acc_n = BN // 2
    red_elems = producer * acc_n                 # split-k: each consumer thread's partial sums
    shape_w, shape_x = (n, k), ((k,) if w_first else (rows, k))
    shape_y = (n,) if w_first else (rows, n)
    shape0, shape1 = (shape_w, shape_x) if w_first else (shape_x, shape_w)
    tail = [0, SWIZZLE_128B, l2_promotion, 0]
    w_map_args = [k, n, k * 2, BK, BM, 1, 1] + tail
    x_map_args = [k, rows, k * 2, BK, rows, 1, 1] + tail
    tma = "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes"
    wgmma = f"wgmma.mma_async.sync.aligned.m64n{BN}k16.f32.f16.f16"
    sdo = 1024 // 16                             # 8-row atom stride (SBO), 16-byte units

    # fmt: off
    @T.macro
    def store(Y, acc, row0, ctid):
        """The accumulator columns that are rows of x: column j of fragment row r is y[j, r]."""
        for i in T.unroll(BN // 8):
            for h in T.unroll(2):
                for c in T.unroll(2):
                    if i * 8 + ctid % 4 * 2 + c < rows:
                        if w_first:
                            Y[row0 + ctid // 32 * 16 + ctid % 32 // 4 + h * 8] = T.Cast(out_dtype, acc[i * 4 + h * 2 + c])
                        else:
                            Y[i * 8 + ctid % 4 * 2 + c, row0 + ctid // 32 * 16 + ctid % 32 // 4 + h * 8] = T.Cast(out_dtype, acc[i * 4 + h * 2 + c])

    @T.prim_func
    def gemv(P0: T.handle, P1: T.handle, Y_ptr: T.handle):
        B0 = T.match_buffer(P0, shape0, "float16", align=16)
        B1 = T.match_buffer(P1, shape1, "float16", align=16)
        Y = T.match_buffer(Y_ptr, shape_y, out_dtype, align=16)
        W_map: T.let[T.handle("tensormap")] = T.tvm_stack_alloca("tensormap", 1)
        X_map: T.let[T.handle("tensormap")] = T.tvm_stack_alloca("tensormap", 1)
        if w_first:
            T.call_packed("runtime.cuTensorMapEncodeTiled", W_map, "float16", 2, B0.data, *w_map_args)
            T.call_packed("runtime.cuTensorMapEncodeTiled", X_map, "float16", 2, B1.data, *x_map_args)
        else:
            T.call_packed("runtime.cuTensorMapEncodeTiled", W_map, "float16", 2, B1.data, *w_map_args)
            T.call_packed("runtime.cuTensorMapEncodeTiled", X_map, "float16", 2, B0.data, *x_map_args)

        T.device_entry()
        bid = T.cta_id([grid])
        if split > 1:
            rank = T.cta_id_in_cluster([split])     # the cluster of a row block: its k slices
        tid = T.thread_id([threads])
        smem = T.alloc_buffer((S * stage_elems,), "float16", scope="shared.dyn", align=1024)
        full = T.alloc_shared((S,), "uint64")
        empty = T.alloc_shared((S,), "uint64")
        if split > 1:
            red = T.alloc_shared((red_elems,), "float32")
        acc = T.alloc_local((acc_n,), "float32")
        desc_a: T.uint64
        desc_b: T.uint64
        it: T.int32   # k-steps through the ring so far, across this CTA's row blocks

        # the x tiles' padding rows: zero once (generic proxy), visible to TMA and wgmma after the fence
        if padded:
            for z in T.serial(zero_steps):
                if z * threads + tid < zero_elems:
                    smem[(z * threads + tid) // pad_elems * stage_elems + a_elems + rows * BK + (z * threads + tid) % pad_elems] = T.float16(0)
        T.ptx.fence.proxy.async_.shared__cta()
        init_ring(full, empty, tid, S, WG)
        it = 0
        if tid >= producer:
            if tid == producer:
                for t in T.serial(max_tiles_per_cta):
                    if bid // split + t * grid < tiles:
                        for kt in T.serial(k_steps):
                            T.cuda.mbarrier_wait(T.address_of(empty[it % S]), it // S % 2 ^ 1)
                            T.ptx.mbarrier.arrive.expect_tx.shared.b64(T.address_of(full[it % S]), T.uint32(tx_bytes))
                            T.ptx[tma](smem.ptr_to([it % S * stage_elems]), T.address_of(W_map), (bid % split * k_steps + kt) * BK, (bid // split + t * grid) * BM, T.address_of(full[it % S]))
                            T.ptx[tma](smem.ptr_to([it % S * stage_elems + a_elems]), T.address_of(X_map), (bid % split * k_steps + kt) * BK, 0, T.address_of(full[it % S]))
                            it = it + 1
        else:
            for t in T.serial(max_tiles_per_cta):
                if bid // split + t * grid < tiles:
                    for i in T.unroll(acc_n):
                        acc[i] = T.float32(0)
                    for kt in T.serial(k_steps):
                        T.cuda.mbarrier_wait(T.address_of(full[it % S]), it // S % 2)
                        T.ptx.wgmma.fence.sync.aligned()
                        for kk in T.unroll(BK // 16):
                            T.cuda.wgmma.encode_matrix_descriptor(T.address_of(desc_a), smem.ptr_to([it % S * stage_elems + tid // 128 * 64 * BK + kk * 16]), 1, sdo, SWIZZLE_128B)
                            T.cuda.wgmma.encode_matrix_descriptor(T.address_of(desc_b), smem.ptr_to([it % S * stage_elems + a_elems + kk * 16]), 1, sdo, SWIZZLE_128B)
                            T.ptx[wgmma](*[acc[i] for i in range(acc_n)], desc_a, desc_b, True, 1, 1, 0, 0)
                        T.ptx.wgmma.commit_group.sync.aligned()
                        release_previous(empty, it, kt, S, tid)
                        it = it + 1
                    release_last(empty, it, S, tid)
                    if split > 1:
                        for i in T.unroll(acc_n):
                            red[tid * acc_n + i] = acc[i]
                    else:
                        store(Y, acc, (bid + t * grid) * BM + tid // 128 * 64, tid % 128)
        if split > 1:
            # rank 0 adds the other slices' partial sums from their shared memory, then stores;
            # the second barrier keeps that memory alive until it has been read
            T.cuda.cluster_sync()
            if rank == 0:
                if tid < producer:
                    for s in T.serial(split - 1):
                        for i in T.unroll(acc_n):
                            acc[i] = acc[i] + T.cuda.func_call("cluster_load_f32", red.ptr_to([tid * acc_n + i]), s + 1, source_code=CLUSTER_LOAD, return_type="float32")
                    store(Y, acc, bid // split * BM + tid // 128 * 64, tid % 128)
            T.cuda.cluster_sync()
    # fmt: on
    return gemv.with_attr("global_symbol", "gemv_wgmma")


def _rows_n_k(op: Op) -> tuple[int, int, int]:
    g = op.shape
    return g.get("m", 1), g["n"], g["k"]


@register
class GemvWgmmaSpace(KnobSpace):
    """The TMA + wgmma GEMV family (module docstring) for float16 gemv and linear (m <= 16) on
    sm_90."""

    name = "gemv-wgmma"
    compile_options = {"tir_pipeline": "tirx"}

    def __init__(self, op: Op, target: Target, sms: int | None = None) -> None:
        super().__init__(op, sm90a(target))
        self.sms = sms or NUM_SMS

    @classmethod
    def applies(cls, op: Op, target: Target) -> bool:
        return cls.why_not(op, target) is None

    def preferred(self) -> bool:
        """`--space auto` picks it for a gemv or a linear (m <= 16) of at least 4096 rows of W:
        measured on an H200 with weights from DRAM at 1.01-1.04x cuBLAS's energy for gemv at
        n = 4096 (split-k), 14336 and 28672 (experiments/results/gemv_wgmma_grid_h200_2026-12-02),
        where the SIMT space's best drew 1.06-1.12x (gemv_h200_2026-12-01), and at 1.04-1.06x
        for linear at 16 rows (linear_wgmma_h200_2026-12-02), where the alternative is the
        MetaSchedule trace space; not measured below n = 4096 (those keep the other spaces)."""
        return self.op.shape["n"] >= 4096

    @classmethod
    def why_not(cls, op: Op, target: Target) -> str | None:
        if op.name not in ("gemv", "linear"):
            return "it computes gemv and linear only"
        if op.dtype != "float16":
            return f"it takes float16 inputs, not {op.dtype}"
        arch = str(target.attrs.get("arch", "")) if target.kind.name == "cuda" else ""
        if not arch.startswith("sm_90"):
            return (f"it needs a Hopper GPU (sm_90: wgmma and TMA), the target is "
                    f"{arch or target.kind.name}")
        rows, n, k = _rows_n_k(op)
        if rows > MAX_ROWS:
            return f"it takes at most {MAX_ROWS} rows of x (wgmma N of 8 or 16), not {rows}"
        if n % 64 or k % BK:
            return f"n and k must be multiples of 64 (row blocks of 64, {BK}-wide k steps)"
        return None

    @property
    def knobs(self) -> tuple[Knob, ...]:
        return (Knob("consumers", (1, 2, 4)), Knob("stages", (4, 6, 8, 12, 16, 24)),
                Knob("persistent", (False, True)), Knob("l2_promotion", (0, 2, 3)),
                Knob("split_k", SPLITS), Knob("sm_share", SM_SHARES))

    def seeds(self) -> list[Config]:
        """The least-energy configs of the H200 tables (gemv_wgmma_h200_2026-12-01: 128-row tiles
        with 8 stages at n = 14336, 64-row tiles with 6 at n = 28672; gemv_wgmma_grid_h200_2026-12-02:
        the same 128-row tile split over a 2-CTA cluster at n = 4096), its fastest (4 stages),
        cuBLAS's own shape (12 stages) and 64-row tiles with a deep ring. Where the 128-row
        blocks fill fewer than half the SMs, the split seeds come first."""
        base = dict(consumers=2, stages=8, persistent=False, l2_promotion=2, split_k=1, sm_share=1.0)
        whole = [base, dict(base, consumers=1, stages=6), dict(base, stages=4),
                 dict(base, stages=12), dict(base, consumers=1, stages=24)]
        split = [dict(base, split_k=2), dict(base, consumers=1, stages=12, split_k=2)]
        _, n, _ = _rows_n_k(self.op)
        return split + whole if n // 128 < self.sms // 2 else whole + split

    def reject(self, config: Config) -> str | None:
        rows, n, k = _rows_n_k(self.op)
        block_m = 64 * int(config["consumers"])
        if n % block_m:
            return f"{block_m}-row blocks do not divide n = {n} (no boundary handling)"
        split, share = int(config["split_k"]), float(config["sm_share"])
        if split > 1 and config["persistent"]:
            return "split-k runs one cluster per row block: not with a persistent grid"
        if share != 1.0 and not config["persistent"]:
            return "sm_share sizes a persistent grid (its canonical value is 1.0 otherwise)"
        if (k // BK) % split:
            return f"split_k {split} does not divide the {k // BK} k-steps of {BK} columns"
        smem = smem_bytes(block_m, rows, int(config["stages"]), split)
        if smem > SMEM_LIMIT:
            return f"shared memory {smem} B over the {SMEM_LIMIT} B a block can have"
        return None

    def module(self, config: Config) -> tvm.IRModule:
        rows, n, k = _rows_n_k(self.op)
        func = gemv_wgmma_func(n, k, rows, int(config["consumers"]), int(config["stages"]),
                               bool(config["persistent"]), int(config["l2_promotion"]),
                               w_first=self.op.name == "gemv", sms=self.sms,
                               out_dtype=self.op.output_dtype, split_k=int(config["split_k"]),
                               sm_share=float(config["sm_share"]))
        return tvm.IRModule({"main": func.with_attr("target", self.target)})

    def features(self, config: Config) -> dict[str, float]:
        rows, n, k = _rows_n_k(self.op)
        consumers, stages = int(config["consumers"]), int(config["stages"])
        split, share = int(config["split_k"]), float(config["sm_share"])
        block_m = 64 * consumers
        smem = smem_bytes(block_m, rows, stages, split)
        tiles = n // block_m
        ctas_per_sm = 1 if config["persistent"] else max(1, min(SMEM_PER_SM // smem, 32))
        ctas = persistent_grid(tiles, self.sms, share) if config["persistent"] else tiles * split
        waves = tiles * split / (self.sms * ctas_per_sm)
        return {"block_m": block_m, "stages": stages, "consumers": consumers,
                "persistent": float(bool(config["persistent"])),
                "l2_promotion": int(config["l2_promotion"]), "threads": 128 * consumers + 32,
                "smem_bytes": smem, "tiles": tiles, "k_tiles": k // BK, "ctas_per_sm": ctas_per_sm,
                "waves": waves, "wave_efficiency": waves / math.ceil(waves),
                "split_k": split, "ctas": ctas, "sms_used": min(ctas, self.sms) / self.sms,
                "bytes_in_flight_per_sm": ctas_per_sm * stages * stage_bytes(block_m, rows),
                "padded_columns": wgmma_n(rows) - rows}
