"""A Hopper (sm_90a) GEMM kernel family written in TVM's TIRx: TMA + mbarrier pipeline + wgmma.

C[m, n] = A[m, k] @ B[k, n] (all row-major, as schedules/matmul.py defines the op), fp16 or bf16
inputs, fp32 accumulators in registers, fp32 or fp16 output; batch_matmul adds a leading batch
axis.

The kernel, for one output tile of BM x BN per CTA:
- A tile (BM x BK, K-major) and B tile (BK x BN, N-major, so wgmma reads it transposed) are loaded by
  TMA (`cp.async.bulk.tensor`) into 128-byte-swizzled shared memory, `stages` deep; each stage
  completes on a "full" mbarrier (expect_tx bytes) and is released on an "empty" mbarrier;
- each consumer warpgroup owns 64 rows of the tile and issues `wgmma.mma_async.m64n{BN}k16` with both
  operands named by shared-memory matrix descriptors, keeping one k-step of wgmmas in flight
  (`wait_group 1`) before it releases the previous stage;
- `warp_specialized`: one extra producer warpgroup issues the TMA loads (`setmaxnreg` gives its
  registers to the consumers); otherwise thread 0 of the first consumer also issues them;
- `persistent`: a grid of at most one CTA per SM walks the tiles (the pipeline runs on across tiles,
  so the producer loads the next tile while the consumers store this one); the tile order is
  grouped by `group_m` rows of tiles (raster along n inside a group), for L2 reuse;
- `epilogue`: `direct` stores the accumulators from registers with 8-byte (fp32) / 4-byte (fp16)
  vector stores; `tma` (warp-specialized) writes them into 128B-swizzled shared memory and one
  thread TMA-stores the tile, which drains while the next tile's mainloop runs; `tma_half` stages
  the tile in two passes of BN/2 columns through half the shared memory (an fp32 128 x 256 tile is
  128 KB: whole, it leaves room for 2 stages only), the second pass waiting until the first
  store has read its half;
- `cluster_m` = 2 (warp-specialized): a thread-block cluster of two CTAs computes the vertically
  adjacent tiles (2i, j) and (2i + 1, j), which need the same B tile: each CTA loads its own A box
  and the rows rank * BK/2 .. of every B chunk, multicast (`.multicast::cluster`, cta mask 0b11)
  into the same shared-memory offset of both CTAs, so B crosses L2 -> SM once per pair. Each
  CTA's full barrier still expects the whole stage's bytes (its A, its half of B and the peer's);
  a stage's slot is written by both producers, so consumers release it on the empty barriers of
  both CTAs (a remote `mbarrier.arrive.shared::cluster` through `mapa`; the empty barrier expects
  2 x consumers arrivals); a cluster barrier after the barriers' init (before any multicast) and
  one before exit (no CTA leaves while its peer may still write into it or arrive on it). The
  tile walk is over cluster units (pairs of tile rows), so both CTAs walk the same tiles and
  k-steps; the persistent grid is a whole number of clusters.

Shared-memory layouts (CUTLASS's canonical GMMA layouts, 128B swizzle):
- A, K-major: rows of BK = 64 fp16 = 128 bytes, 8-row atoms of 1024 bytes (SBO = 1024 B, LBO unused);
  the k16 slice kk starts 32*kk bytes into the row.
- B, N-major: chunks of 64 columns (128 bytes) x BK rows, one TMA box each; within a chunk 8-row atoms
  of 1024 B along k (SBO), chunks BK * 128 bytes apart along n (LBO); the k16 slice kk starts
  kk * 16 rows = 2048 bytes into each chunk.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import tvm
from tvm.script import tirx as T
from tvm.target import Target

from .knobs import Config, Knob, KnobSpace, register
from .op import Op

BK = 64                       # 64 fp16 / bf16 = 128 bytes: one 128B-swizzle row
WGMMA_TYPE = {"float16": "f16", "bfloat16": "bf16"}  # input dtype -> wgmma's A/B type
SWIZZLE_128B = 3              # CUtensorMapSwizzle / descriptor swizzle code
SMEM_LIMIT = 232448           # sm_90 opt-in shared memory per block (227 KB), static included
SMEM_PER_SM = 233472          # shared memory of one SM (228 KB)
STATIC_SMEM = 1024            # the mbarriers (ptxas reports 1 KB of static shared memory)
REGS_PER_SM = 65536
NUM_SMS = 132                 # H100 SXM / H200
OVERHEAD_REGS = 40            # registers a consumer thread needs beside its accumulators (ptxas: ~154 - 128)
PRODUCER_REGS = 40            # setmaxnreg.dec target of the producer warpgroup
CLUSTERS = (1, 2)             # cluster_m: CTAs of a cluster along m (they share the B tile)
# what the search proposes: cluster_m = 2 took 1.5x the time at 4096^3 on an H200 until its
# stage release became CTA-scope; now it is 1.02x the time and 1.01x the energy of the same
# kernel without clusters (experiments/results/hopper_cluster_stalls_h200_2026-12-03), so still
# not searched (in an earlier default tune 26 of 64 trials went to such configs); buildable
SEARCHED_CLUSTERS = (1,)

# an arrival on the mbarrier at the same shared-memory offset in CTA `rank` of the cluster. It
# releases at CTA scope (the default): the stage's reads are wgmma's, complete once its
# wait_group returned, and a cluster-scope release put a fence on every stage: Nsight Compute
# saw membar stalls (3.2 of 28.3 cycles per issue) in the clustered kernel only
# (experiments/results/hopper_cluster_stalls_h200_2026-12-03)
CLUSTER_ARRIVE = """
__forceinline__ __device__ void cluster_arrive(void* bar, int rank) {
  unsigned local = (unsigned)__cvta_generic_to_shared(bar), remote;
  asm volatile("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(remote) : "r"(local), "r"(rank));
  asm volatile("mbarrier.arrive.shared::cluster.b64 _, [%0];" : : "r"(remote) : "memory");
}
"""


@dataclass(frozen=True)
class GemmConfig:
    """One point of the family. block_m = 64 * consumers (each consumer warpgroup owns 64 rows)."""
    block_n: int = 256
    consumers: int = 2
    stages: int = 4
    warp_specialized: bool = False
    persistent: bool = False
    group_m: int = 8
    out_dtype: str = "float32"
    in_dtype: str = "float16"  # or bfloat16 (same 2-byte layouts and swizzles; wgmma .bf16)
    l2_promotion: int = 2      # CUtensorMapL2promotion: 0 none, 1 64B, 2 128B, 3 256B
    epilogue: str = "direct"   # direct: registers -> global; tma / tma_half: -> swizzled smem -> TMA store
    cluster_m: int = 1         # CTAs of a cluster along m, sharing (multicasting) the B tile

    @property
    def block_m(self) -> int:
        return 64 * self.consumers

    @property
    def threads(self) -> int:
        return 128 * (self.consumers + int(self.warp_specialized))

    @property
    def stage_bytes(self) -> int:
        return (self.block_m + self.block_n) * BK * 2

    @property
    def out_bytes(self) -> int:
        return 4 if self.out_dtype == "float32" else 2

    @property
    def epilogue_passes(self) -> int:
        """Passes of the TMA-store epilogue over the tile's columns (0: direct stores)."""
        return {"direct": 0, "tma": 1, "tma_half": 2}[self.epilogue]

    @property
    def c_tile_bytes(self) -> int:
        """The part of the output tile staged in shared memory at once by a tma epilogue."""
        passes = self.epilogue_passes
        return self.block_m * self.block_n * self.out_bytes // passes if passes else 0

    @property
    def smem_bytes(self) -> int:
        """Dynamic (the stages, the staged output tile) plus static (the mbarriers) shared memory."""
        return self.stages * self.stage_bytes + self.c_tile_bytes + STATIC_SMEM

    @property
    def consumer_regs(self) -> int:
        """Registers of a consumer thread: setmaxnreg's target when warp specialized, else the
        accumulators plus what ptxas needed beside them (154 at block_n = 256)."""
        if self.warp_specialized:
            return 232 if self.consumers == 2 else 240
        return min(255, self.acc_regs + OVERHEAD_REGS)

    @property
    def regs_per_cta(self) -> int:
        producer = 128 * PRODUCER_REGS if self.warp_specialized else 0
        return producer + 128 * self.consumers * self.consumer_regs

    @property
    def acc_regs(self) -> int:
        """fp32 accumulator registers per consumer thread (64 x block_n per 128 threads)."""
        return self.block_n // 2


def reject(m: int, n: int, k: int, cfg: GemmConfig) -> str | None:
    """Why the hardware (or this template) cannot run cfg on an m x n x k product, else None."""
    if cfg.block_n % 64 or not 64 <= cfg.block_n <= 256:
        return f"block_n {cfg.block_n} is not a multiple of 64 in [64, 256] (wgmma N, 128-byte B boxes)"
    if m % cfg.block_m or n % cfg.block_n or k % BK:
        return (f"tile {cfg.block_m}x{cfg.block_n}x{BK} does not divide the shape {m}x{n}x{k} "
                "(no boundary handling)")
    if cfg.smem_bytes > SMEM_LIMIT:
        return f"shared memory {cfg.smem_bytes} B over the {SMEM_LIMIT} B a block can have"
    if cfg.persistent and not cfg.warp_specialized:
        return "persistent needs warp_specialized (the simple body computes one tile per CTA)"
    if cfg.epilogue_passes and not cfg.warp_specialized:
        return "the tma epilogues are written for the warp-specialized body"
    if cfg.cluster_m not in CLUSTERS:
        return f"cluster_m {cfg.cluster_m} is not one of {CLUSTERS}"
    if cfg.cluster_m > 1 and not cfg.warp_specialized:
        return "clusters (cluster_m > 1) are written for the warp-specialized body"
    if (m // cfg.block_m) % cfg.cluster_m:
        return (f"the {m // cfg.block_m} tile rows are not a whole number of clusters of "
                f"cluster_m {cfg.cluster_m} (both CTAs of a cluster need a tile)")
    if cfg.epilogue_passes and (cfg.block_n // cfg.epilogue_passes) % (128 // cfg.out_bytes):
        return (f"a {cfg.epilogue} pass of {cfg.block_n // cfg.epilogue_passes} columns is not a "
                f"whole number of 128-byte TMA boxes")
    return None


# The ring of stages, shared by the wgmma kernels of this module and schedules/gemv_wgmma.py;
# `cluster` > 1: the ring of a cluster's CTAs whose stages both CTAs' producers write (cluster_m).
@T.macro
def init_ring(full, empty, tid, stages, consumers, cluster=1):
    """Thread 0: each stage's full barrier waits for one arrival (the TMA bytes), its empty
    barrier for one per consumer warpgroup of each CTA of the cluster; then every thread (of the
    cluster) may use them."""
    if tid == 0:
        for s in T.unroll(stages):
            T.ptx.mbarrier.init.shared.b64(T.address_of(full[s]), T.uint32(1))
            T.ptx.mbarrier.init.shared.b64(T.address_of(empty[s]), T.uint32(consumers * cluster))
        T.ptx.fence.proxy.async_.shared__cta()
        if cluster > 1:
            T.ptx["fence.mbarrier_init.release.cluster"]()
    if cluster > 1:
        T.cuda.cluster_sync()
    else:
        T.cuda.cta_sync()


@T.macro
def release(empty, s, cluster):
    """One thread of a consumer warpgroup: stage s is read; with a cluster, on the empty barrier
    of every CTA of it (each one's producer multicasts into this CTA's stage)."""
    if cluster > 1:
        for r in T.unroll(cluster):
            T.cuda.func_call("cluster_arrive", T.address_of(empty[s]), r, source_code=CLUSTER_ARRIVE)
    else:
        T.ptx.mbarrier.arrive.shared.b64(T.address_of(empty[s]))


# The consumer side of the ring: after issuing a k-step's wgmmas, keep one step in flight and release the stage
# of the step before; after a tile's last step, drain and release its stage.
@T.macro
def release_previous(empty, it, kt, stages, tid, cluster=1):
    T.ptx.wgmma.wait_group.sync.aligned(1)
    if kt > 0:
        if tid % 128 == 0:
            release(empty, (it - 1) % stages, cluster)


@T.macro
def release_last(empty, it, stages, tid, cluster=1):
    T.ptx.wgmma.wait_group.sync.aligned(0)
    if tid % 128 == 0:
        release(empty, (it - 1) % stages, cluster)


def gemm_func(m: int, n: int, k: int, cfg: GemmConfig, batch: int = 0) -> tvm.tirx.PrimFunc:
    """The TIRx PrimFunc main(A, B, C) for C = A @ B; batch > 0 makes it batched (b, m, k) x (b, k, n)."""
    BM, BN, S, WG = cfg.block_m, cfg.block_n, cfg.stages, cfg.consumers
    nb = max(batch, 1)
    CL = cfg.cluster_m
    mcast = CL > 1
    tiles_m, tiles_n, k_tiles = m // BM, n // BN, k // BK
    # the tile walk is over units of CL vertically adjacent tiles, one cluster each
    units_m = tiles_m // CL
    num_units = nb * units_m * tiles_n
    grid = (min(nb * tiles_m * tiles_n, NUM_SMS) // CL * CL if cfg.persistent
            else nb * tiles_m * tiles_n)
    clusters = grid // CL
    units_per_batch = units_m * tiles_n
    group = max(1, min(cfg.group_m // CL, units_m))
    stage_elems = cfg.stage_bytes // 2
    n_chunks = BN // 64
    acc_n = cfg.acc_regs
    out = cfg.out_dtype
    ws = cfg.warp_specialized
    threads = cfg.threads
    l2p = cfg.l2_promotion
    shape_a = (batch, m, k) if batch else (m, k)
    shape_b = (batch, k, n) if batch else (k, n)
    shape_c = (batch, m, n) if batch else (m, n)
    rank = 3 if batch else 2
    # TMA maps: dims innermost first, strides in bytes of the outer dims
    a_map_args = ([k, m, nb, k * 2, m * k * 2, BK, BM, 1, 1, 1, 1] if batch
                  else [k, m, k * 2, BK, BM, 1, 1])
    b_rows = BK // CL                             # rows of a B box: each CTA of a cluster loads its share
    b_map_args = ([n, k, nb, n * 2, k * n * 2, 64, b_rows, 1, 1, 1, 1] if batch
                  else [n, k, n * 2, 64, b_rows, 1, 1])
    tail = [0, SWIZZLE_128B, l2p, 0]
    a_map_args, b_map_args = a_map_args + tail, b_map_args + tail
    # the tma epilogues store C in boxes of 128 bytes of columns (64 fp16 / 32 fp32) x BM rows
    ob = cfg.out_bytes
    box_cols, vec = 128 // ob, 16 // ob          # columns per box, per 16-byte swizzle chunk
    c_map_args = ([n, m, nb, n * ob, m * n * ob, box_cols, BM, 1, 1, 1, 1] if batch
                  else [n, m, n * ob, box_cols, BM, 1, 1]) + [0, SWIZZLE_128B, 0, 0]
    passes = cfg.epilogue_passes
    tma_epi = passes > 0
    pass_cols = BN // max(passes, 1)
    c_off = S * stage_elems * 2 // ob            # the staged C, after the stages (1024 B aligned), in C elements
    smem_elems = S * stage_elems + cfg.c_tile_bytes // 2
    consumer_threads = 128 * WG
    tma_store = f"cp.async.bulk.tensor.{rank}d.global.shared::cta.tile.bulk_group"
    n_pro = min(S, k_tiles)
    a_elems, chunk_elems = BM * BK, BK * 64
    stage_bytes = cfg.stage_bytes
    tma = f"cp.async.bulk.tensor.{rank}d.shared::cluster.global.mbarrier::complete_tx::bytes"
    tma_multicast = tma + ".multicast::cluster"
    cta_mask = (1 << CL) - 1

    def a_coords(kt, tm, bi):
        return (kt * BK, tm * BM, bi) if batch else (kt * BK, tm * BM)

    def b_coords(row, col, bi):
        return (col, row, bi) if batch else (col, row)

    def c_batch(bi):
        return (bi,) if batch else ()

    def c_coords(col, row, bi):
        return (col, row, bi) if batch else (col, row)

    in_dtype = cfg.in_dtype
    ab = WGMMA_TYPE[in_dtype]
    wgmma = f"wgmma.mma_async.sync.aligned.m64n{BN}k16.f32.{ab}.{ab}"
    b_ldo = BK * 128 // 16          # chunk stride (LBO), 16-byte units
    sdo = 1024 // 16                # 8-row atom stride (SBO), 16-byte units
    max_units_per_cluster = (num_units + clusters - 1) // clusters

    nreg_producer, nreg_consumer = PRODUCER_REGS, cfg.consumer_regs

    # fmt: off
    @T.macro
    def tile_coords(unit, cta_rank, tm, tn, bi):
        """unit -> (tm, tn, bi): groups of `group` unit rows, raster along n inside a group; a
        unit is CL vertically adjacent tiles, CTA cta_rank of the cluster computing one."""
        grp: T.let[T.int32] = (unit % units_per_batch) // (group * tiles_n)
        first_m: T.let[T.int32] = grp * group
        gsize: T.let[T.int32] = T.min(units_m - first_m, group)
        in_grp: T.let[T.int32] = (unit % units_per_batch) % (group * tiles_n)
        if mcast:
            tm = (first_m + in_grp % gsize) * CL + cta_rank
        else:
            tm = first_m + in_grp % gsize
        tn = in_grp // gsize
        bi = unit // units_per_batch

    @T.macro
    def load_stage(smem, full, A_map, B_map, s, kt, tm, tn, bi, cta_rank):
        """One elected thread: expect the stage's bytes on full[s], then issue its TMA copies; in
        a cluster, its share of B's rows goes to the same offset of every CTA's stage (whose
        full barrier counts those bytes too)."""
        T.ptx.mbarrier.arrive.expect_tx.shared.b64(T.address_of(full[s]), T.uint32(stage_bytes))
        T.ptx[tma](smem.ptr_to([s * stage_elems]), T.address_of(A_map), *a_coords(kt, tm, bi), T.address_of(full[s]))
        for j in T.unroll(n_chunks):
            if mcast:
                T.ptx[tma_multicast](smem.ptr_to([s * stage_elems + a_elems + j * chunk_elems + cta_rank * b_rows * 64]), T.address_of(B_map), *b_coords(kt * BK + cta_rank * b_rows, tn * BN + j * 64, bi), T.address_of(full[s]), T.uint16(cta_mask))
            else:
                T.ptx[tma](smem.ptr_to([s * stage_elems + a_elems + j * chunk_elems]), T.address_of(B_map), *b_coords(kt * BK, tn * BN + j * 64, bi), T.address_of(full[s]))

    @T.macro
    def mma_stage(smem, acc, desc_a, desc_b, s, cwg):
        """Consumer warpgroup cwg: BK/16 wgmmas over stage s into acc, committed as one group."""
        T.ptx.wgmma.fence.sync.aligned()
        for kk in T.unroll(BK // 16):
            T.cuda.wgmma.encode_matrix_descriptor(T.address_of(desc_a), smem.ptr_to([s * stage_elems + cwg * 64 * BK + kk * 16]), 1, sdo, SWIZZLE_128B)
            T.cuda.wgmma.encode_matrix_descriptor(T.address_of(desc_b), smem.ptr_to([s * stage_elems + a_elems + kk * 16 * 64]), b_ldo, sdo, SWIZZLE_128B)
            T.ptx[wgmma](*[acc[i] for i in range(acc_n)], desc_a, desc_b, True, 1, 1, 0, 1)
        T.ptx.wgmma.commit_group.sync.aligned()

    @T.macro
    def store_tile(C, acc, tm, tn, bi, ctid):
        """The wgmma accumulator fragment of consumer thread ctid (0 .. 128 * consumers) to C."""
        for i in T.unroll(BN // 8):
            for h in T.unroll(2):
                for c in T.vectorized(2):
                    C[(*c_batch(bi), tm * BM + ctid // 32 * 16 + ctid % 32 // 4 + h * 8, tn * BN + i * 8 + ctid % 4 * 2 + c)] = T.Cast(out, acc[i * 4 + h * 2 + c])

    @T.macro
    def store_tile_tma(C_map, c_smem, acc, tm, tn, bi, ctid):
        """In `passes` passes over the tile's columns: consumers write the pass's columns into
        128B-swizzled smem boxes (box_cols columns x BM rows, conflict-free for the fragment
        layout: a warp's 8-byte / 4-byte stores fill each bank twice / once), then one thread
        TMA-stores the boxes. The last store drains while the next tile's mainloop runs; each pass
        first waits until the previous store has read the staging smem."""
        for p in T.unroll(passes):
            if ctid == 0:
                T.ptx["cp.async.bulk.wait_group.read"](0)
            T.ptx.bar.sync(1, consumer_threads)
            for i in T.unroll(pass_cols // 8):
                for h in T.unroll(2):
                    for c in T.vectorized(2):
                        c_smem[c_off + (i * 8 // box_cols) * (BM * box_cols) + (ctid // 32 * 16 + ctid % 32 // 4 + h * 8) * box_cols + (i * 8 % box_cols // vec + ctid % 4 * 2 // vec ^ ctid % 32 // 4) * vec + ctid % 4 * 2 % vec + c] = T.Cast(out, acc[(p * pass_cols // 8 + i) * 4 + h * 2 + c])
            T.ptx.fence.proxy.async_.shared__cta()
            T.ptx.bar.sync(1, consumer_threads)
            if ctid == 0:
                for j in T.unroll(pass_cols // box_cols):
                    T.ptx[tma_store](T.address_of(C_map), *c_coords(tn * BN + p * pass_cols + j * box_cols, tm * BM, bi), c_smem.ptr_to([c_off + j * BM * box_cols]))
                T.ptx.cp.async_.bulk.commit_group()

    # One prologue (TMA maps, shared memory, barriers), then the warp-specialized or the simple body:
    # `if ws` / `if tma_epi` test Python values, so only the chosen code is emitted.
    @T.prim_func
    def gemm(A_ptr: T.handle, B_ptr: T.handle, C_ptr: T.handle):
        A = T.match_buffer(A_ptr, shape_a, in_dtype, align=16)
        B = T.match_buffer(B_ptr, shape_b, in_dtype, align=16)
        C = T.match_buffer(C_ptr, shape_c, out, align=16)
        A_map: T.let[T.handle("tensormap")] = T.tvm_stack_alloca("tensormap", 1)
        T.call_packed("runtime.cuTensorMapEncodeTiled", A_map, in_dtype, rank, A.data, *a_map_args)
        B_map: T.let[T.handle("tensormap")] = T.tvm_stack_alloca("tensormap", 1)
        T.call_packed("runtime.cuTensorMapEncodeTiled", B_map, in_dtype, rank, B.data, *b_map_args)
        if tma_epi:
            C_map: T.let[T.handle("tensormap")] = T.tvm_stack_alloca("tensormap", 1)
            T.call_packed("runtime.cuTensorMapEncodeTiled", C_map, out, rank, C.data, *c_map_args)

        T.device_entry()
        bid = T.cta_id([grid])
        if mcast:
            cta_rank = T.cta_id_in_cluster([CL])    # the cluster's CTAs: consecutive bids
        else:
            cta_rank = T.meta_var(0)
        tid = T.thread_id([threads])
        smem = T.alloc_buffer((smem_elems,), in_dtype, scope="shared.dyn", align=1024)
        c_smem = T.decl_buffer((smem_elems * 2 // ob,), out, data=smem.data, scope="shared.dyn")
        full = T.alloc_shared((S,), "uint64")
        empty = T.alloc_shared((S,), "uint64")
        acc = T.alloc_local((acc_n,), "float32")
        desc_a: T.uint64
        desc_b: T.uint64
        tm: T.int32
        tn: T.int32
        bi: T.int32
        if ws:
            it: T.int32   # k-steps through the pipeline so far, across this CTA's tiles

        init_ring(full, empty, tid, S, WG, CL)
        if ws:
            it = 0
            if tid < 128:
                # producer warpgroup: one thread streams every k-tile of every tile of this CTA
                T.ptx["setmaxnreg.dec.sync.aligned.u32"](nreg_producer)
                if tid == 0:
                    for t in T.serial(max_units_per_cluster):
                        if bid // CL + t * clusters < num_units:
                            tile_coords(bid // CL + t * clusters, cta_rank, tm, tn, bi)
                            for kt in T.serial(k_tiles):
                                T.cuda.mbarrier_wait(T.address_of(empty[it % S]), it // S % 2 ^ 1)
                                load_stage(smem, full, A_map, B_map, it % S, kt, tm, tn, bi, cta_rank)
                                it = it + 1
            else:
                T.ptx["setmaxnreg.inc.sync.aligned.u32"](nreg_consumer)
                for t in T.serial(max_units_per_cluster):
                    if bid // CL + t * clusters < num_units:
                        tile_coords(bid // CL + t * clusters, cta_rank, tm, tn, bi)
                        for i in T.unroll(acc_n):
                            acc[i] = T.float32(0)
                        for kt in T.serial(k_tiles):
                            T.cuda.mbarrier_wait(T.address_of(full[it % S]), it // S % 2)
                            mma_stage(smem, acc, desc_a, desc_b, it % S, tid // 128 - 1)
                            release_previous(empty, it, kt, S, tid, CL)
                            it = it + 1
                        release_last(empty, it, S, tid, CL)
                        if tma_epi:
                            store_tile_tma(C_map, c_smem, acc, tm, tn, bi, tid - 128)
                        else:
                            store_tile(C, acc, tm, tn, bi, tid - 128)
                if tma_epi:
                    if tid == 128:
                        T.ptx.cp.async_.bulk.wait_group(0)
            if mcast:
                # no CTA exits while its peer may still multicast into it or arrive on its barriers
                T.cuda.cluster_sync()
        else:
            # one tile per CTA; thread 0 also issues the TMA loads
            tile_coords(bid, cta_rank, tm, tn, bi)
            if tid == 0:
                for s in T.unroll(n_pro):
                    load_stage(smem, full, A_map, B_map, s, s, tm, tn, bi, cta_rank)
            for i in T.unroll(acc_n):
                acc[i] = T.float32(0)
            for kt in T.serial(k_tiles):
                T.cuda.mbarrier_wait(T.address_of(full[kt % S]), kt // S % 2)
                mma_stage(smem, acc, desc_a, desc_b, kt % S, tid // 128)
                T.ptx.wgmma.wait_group.sync.aligned(1)
                if kt > 0:
                    # the wgmmas of kt - 1 are done: release its stage and refill it with kt - 1 + S
                    if tid % 128 == 0:
                        T.ptx.mbarrier.arrive.shared.b64(T.address_of(empty[(kt - 1) % S]))
                    if tid == 0:
                        if kt - 1 + S < k_tiles:
                            T.cuda.mbarrier_wait(T.address_of(empty[(kt - 1) % S]), (kt - 1) // S % 2)
                            load_stage(smem, full, A_map, B_map, (kt - 1) % S, kt - 1 + S, tm, tn, bi, cta_rank)
            T.ptx.wgmma.wait_group.sync.aligned(0)
            store_tile(C, acc, tm, tn, bi, tid)
    # fmt: on
    return gemm.with_attr("global_symbol", "specialized" if ws else "simple")  # kernel name in profiles


def sm90a(target: tvm.target.Target | None = None) -> tvm.target.Target:
    """The CUDA target with arch sm_90a (wgmma and setmaxnreg need the `a` target) and the opt-in
    shared-memory limit; other attributes are kept from `target`."""
    base = target.export() if target is not None else {"kind": "cuda", "max_threads_per_block": 1024}
    return tvm.target.Target({**base, "arch": "sm_90a", "max_shared_memory_per_block": SMEM_LIMIT})


def build(func: tvm.tirx.PrimFunc, target: tvm.target.Target | None = None) -> tvm.runtime.Executable:
    """Compile one kernel of the family through the TIRx pipeline."""
    return tvm.compile(tvm.IRModule({"main": func}), target=sm90a(target), tir_pipeline="tirx")


def cuda_source(ex: tvm.runtime.Executable) -> str:
    """The generated CUDA source of a built kernel (kept as source where no driver is present)."""
    return ex.mod.imports[0].inspect_source()


def _product_shape(op: Op) -> tuple[int, int, int, int]:
    g = op.shape
    return g["m"], g["n"], g["k"], g.get("b", 0)


@register
class HopperGemmSpace(KnobSpace):
    """The TIRx wgmma + TMA GEMM family for matmul / batch_matmul with float16 or bfloat16 inputs
    on sm_90.

    The builder compiles `module(config)` with `target=self.target` (sm_90a, which wgmma and
    setmaxnreg need; `main` also carries it as its "target" attribute) and `**compile_options`.
    """

    name = "hopper_gemm"
    compile_options = {"tir_pipeline": "tirx"}
    # 110 candidates of three H200 tunes of matmul 4096^3 fp16 (one workload, one GPU): energy
    # MAPE 7.4%, power x measured latency 2.0%
    model_quality = "experiments/results/model_quality_hopper_h200_2026-12-01"

    def __init__(self, op: Op, target: Target) -> None:
        super().__init__(op, sm90a(target))

    @classmethod
    def applies(cls, op: Op, target: Target) -> bool:
        return cls.why_not(op, target) is None

    @classmethod
    def why_not(cls, op: Op, target: Target) -> str | None:
        if op.name not in ("matmul", "batch_matmul"):
            return "it computes matmul and batch_matmul only"
        if op.dtype not in WGMMA_TYPE:
            return f"it takes float16 or bfloat16 inputs, not {op.dtype}"
        arch = str(target.attrs.get("arch", "")) if target.kind.name == "cuda" else ""
        if not arch.startswith("sm_90"):
            return (f"it needs a Hopper GPU (sm_90: wgmma and TMA), the target is "
                    f"{arch or target.kind.name}")
        m, n, k, _ = _product_shape(op)
        if m % 64 or n % 64 or k % BK:
            return f"m, n and k must be multiples of 64 (tiles of 64 rows, {BK}-wide k steps)"
        return None

    @property
    def knobs(self) -> tuple[Knob, ...]:
        return (Knob("block_n", (64, 128, 192, 256)), Knob("consumers", (1, 2)),
                Knob("stages", (2, 3, 4, 5, 6)), Knob("warp_specialized", (False, True)),
                Knob("persistent", (False, True)), Knob("group_m", (1, 4, 8, 16)),
                Knob("l2_promotion", (0, 2, 3)),
                Knob("epilogue", ("direct", "tma", "tma_half")), Knob("cluster_m", SEARCHED_CLUSTERS, default=1))

    def seeds(self) -> list[Config]:
        """The least-energy configs of the H200 tables (experiments/results/hopper_epilogue_h200_
        2026-12-01 for fp32 output, hopper_gemm_h200_2026-12-01 for fp16), then their direct-store
        and block_n = 128 twins for shapes or GPUs where those do not run or win. All without
        clusters (cluster_m = 2 measured 1.5x slower; not searched, see SEARCHED_CLUSTERS)."""
        best = dict(block_n=256, consumers=2, stages=3, warp_specialized=True, persistent=True,
                    group_m=16, l2_promotion=2, epilogue="tma_half", cluster_m=1)
        if self.op.output_dtype == "float16":
            best["epilogue"] = "tma"
        direct = dict(best, stages=4, group_m=8, epilogue="direct")
        return [best, direct, dict(best, block_n=128), dict(direct, block_n=128)]

    def gemm_config(self, config: Config) -> GemmConfig:
        return GemmConfig(**config, out_dtype=self.op.output_dtype, in_dtype=self.op.dtype)

    def reject(self, config: Config) -> str | None:
        m, n, k, _ = _product_shape(self.op)
        return reject(m, n, k, self.gemm_config(config))

    def module(self, config: Config) -> tvm.IRModule:
        m, n, k, b = _product_shape(self.op)
        func = gemm_func(m, n, k, self.gemm_config(config), batch=b)
        return tvm.IRModule({"main": func.with_attr("target", self.target)})

    def features(self, config: Config) -> dict[str, float]:
        cfg = self.gemm_config(config)
        m, n, k, b = _product_shape(self.op)
        tiles = max(b, 1) * (m // cfg.block_m) * (n // cfg.block_n)
        ctas_per_sm = 1 if cfg.persistent else max(1, min(
            SMEM_PER_SM // cfg.smem_bytes, REGS_PER_SM // cfg.regs_per_cta, 2048 // cfg.threads))
        slots = NUM_SMS * ctas_per_sm
        waves = tiles / slots
        return {
            "block_m": cfg.block_m, "block_n": cfg.block_n, "block_k": BK, "stages": cfg.stages,
            "consumers": cfg.consumers, "warp_specialized": float(cfg.warp_specialized),
            "persistent": float(cfg.persistent), "group_m": cfg.group_m, "l2_promotion": cfg.l2_promotion,
            "threads": cfg.threads, "smem_bytes": cfg.smem_bytes, "acc_regs": cfg.acc_regs,
            "tiles": tiles, "k_tiles": k // BK, "ctas_per_sm": ctas_per_sm, "waves": waves,
            "wave_efficiency": waves / math.ceil(waves), "occupancy_warps": ctas_per_sm * cfg.threads / 32,
            # bytes moved from L2 into shared memory per FLOP (a cluster's CTAs share B's), and
            # the output bytes per FLOP
            "l2_bytes_per_flop": (cfg.block_m + cfg.block_n / cfg.cluster_m) / (cfg.block_m * cfg.block_n),
            "out_bytes_per_flop": cfg.out_bytes / (2 * k),
            "epilogue_passes": cfg.epilogue_passes, "cluster_m": cfg.cluster_m,
        }
