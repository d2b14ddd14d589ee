"""The LUT-mpGEMM schedule space: a MetaSchedule ScheduleFn that tiles lut_mpgemm and tensorizes its
lookup-accumulate block with the LUT-mpGEMM instruction (schedules/lut_intrin.py).

Decisions that change the instruction or the loop structure are enumerated as separate design
spaces (the search samples all of them):
- cols: output columns per thread sharing one table (the instruction's width),
- rows: activation rows per thread block (their tables live together),
- table placement:
  - "shared.dyn": built by each thread block from the activations, in (dynamic) shared memory;
  - "global": built once for all thread blocks by a kernel of its own (T-MAC's precompute), each
    thread block copying the part it needs into dynamic shared memory with 16-byte loads. Copying
    costs one load per 8 entries where building costs 4 loads and 3 adds per entry (the fastest
    W2 kernel of the H200 run of 2026-11-21, 8 columns per block, spent twice as many loads on
    building its tables as on its lookups);
  - "local": per thread in local memory/registers (recomputed per group; offered only when a
    group's table is small),
- whether threads split the weight groups (threadIdx.x: split-K inside the thread block, per-lane
  partial sums via rfactor, then a cross-thread reduction). Lanes of one warp that work on
  different groups read tables 512 bytes apart, i.e. the same shared-memory banks (up to 8-way
  conflicts); without the split a warp's lanes are columns reading the same table slice, which
  is conflict-free. The search weighs that against parallelism.
Within a space, sampled decisions (categorical, so replayed and re-sampled by the search):
- threads over columns (threadIdx.y) and, where groups are split, over groups (threadIdx.x),
- unrolling of the per-group loop.
On llvm the structure is the same without threads, parallel over column tiles.
"""
from __future__ import annotations

from itertools import product

from tvm.s_tir import Schedule
from tvm.s_tir import meta_schedule as ms
from tvm.target import Target

from . import lut_intrin
from .lut_mpgemm import ENTRIES, K_PER_BYTE, RUNS_PER_BYTE, LutMpGemm

COLS = (1, 2, 4, 8)
ROWS = (1, 2, 4, 8, 16)
THREADS_Y = (1, 2, 4, 8, 16, 32)
THREADS_X = (2, 4, 8, 16, 32)
UNROLL = (0, 16, 64)
LOCAL_TABLE_MAX = 128  # table entries per thread for the "local" placement


def _divisors(n: int, options: tuple[int, ...]) -> list[int]:
    return [v for v in options if n % v == 0] or [1]


def _sample(sch: Schedule, options: list[int]):
    """A uniform categorical decision, as a random variable the trace keeps."""
    return sch.sample_categorical(options, [1.0 / len(options)] * len(options))


def _pairs(op: LutMpGemm) -> int:
    return op.group_size // K_PER_BYTE


def _word(op: LutMpGemm) -> int:
    """Bytes per weight load in the CUDA instruction: 4 when every group start is 4-aligned."""
    return 4 if _pairs(op) % 4 == 0 and (op.shape["k"] // K_PER_BYTE) % 4 == 0 else 1


def _placements(op: LutMpGemm) -> list[str]:
    local_ok = _pairs(op) * RUNS_PER_BYTE * ENTRIES <= LOCAL_TABLE_MAX
    return ["shared.dyn", "global", "local"] if local_ok else ["shared.dyn", "global"]


def _table_scope(placement: str) -> str:
    """Where the instruction reads the table from, for a placement."""
    return "local" if placement == "local" else "shared.dyn"


def register_intrinsics(op: LutMpGemm, kind: str) -> None:
    """Register every instruction variant the space can name (trace replay needs them)."""
    for cols in COLS:
        if kind == "cuda":
            for scope in ("shared.dyn", "local"):
                lut_intrin.register("cuda", cols, _pairs(op), op.dtype, scope, "local", _word(op))
        else:
            lut_intrin.register("llvm", cols, _pairs(op), op.dtype, "global", "global")


def _tensorize_sums(sch: Schedule, sums, depth: int, name: str) -> None:
    """Split off the zero init and replace the (cols, pairs, halves, entries) nest below the
    outer `depth` loops by the instruction."""
    nest = sch.get_loops(sums)[depth]
    sch.decompose_reduction(sums, nest)
    sch.tensorize(nest, name)


def schedule_cuda(op: LutMpGemm, sch: Schedule, cols: int, rows: int, placement: str,
                  split_groups: bool = True) -> None:
    lanes_options = _divisors(op.groups, THREADS_X) if split_groups else [1]
    ty = _sample(sch, _divisors(op.shape["n"] // cols, THREADS_Y))
    tx = _sample(sch, lanes_options)
    unroll = _sample(sch, list(UNROLL))

    out, sums = sch.get_sblock("out"), sch.get_sblock("lut_sums")
    tables, xsum = sch.get_sblock("tables"), sch.get_sblock("xsum")
    g_o, g_x = sch.split(sch.get_loops(out)[2], [None, tx])  # lanes take interleaved groups
    partial = sch.rfactor(g_x, 0)                           # per-lane partial sums, then a
    i, c, g_o, g_x, b = sch.get_loops(partial)              # cross-thread reduction in `out`
    i_o, i_i = sch.split(i, [None, rows])
    c_o, c_y, c_c = sch.split(c, [None, ty, cols])
    sch.reorder(i_o, c_o, c_y, g_x, g_o, i_i, b, c_c)
    block_x = sch.fuse(i_o, c_o)
    sch.bind(block_x, "blockIdx.x")
    sch.bind(c_y, "threadIdx.y")
    sch.bind(g_x, "threadIdx.x")
    sch.annotate(g_o, "pragma_auto_unroll_max_step", unroll)
    sch.annotate(g_o, "pragma_unroll_explicit", 1)
    sch.set_scope(partial, 0, "local")
    sch.reverse_compute_at(out, c_y)
    if lanes_options != [1]:  # the lanes' loop comes first (as out's iteration variables)
        lanes, *rest = sch.get_loops(out)[2:]
        sch.reorder(*rest, lanes)
        sch.bind(lanes, "threadIdx.x")

    sch.compute_at(sums, b)
    sch.set_scope(sums, 0, "local")
    sch.compute_at(xsum, i_i)
    sch.set_scope(xsum, 0, "local")
    if placement == "shared.dyn":
        _cooperative(sch, tables, block_x, ty, tx)
    elif placement == "global":
        index = [region.source.name for region in sch.get(sums).reads].index("tables")
        copy = sch.cache_read(sums, index, "shared.dyn", consumer_blocks=[sums, xsum])
        _cooperative(sch, copy, block_x, ty, tx, vector=16 // 2)  # fp16 entries: 16 bytes
        _own_kernel(sch, tables)
    else:
        sch.compute_at(tables, i_i)
        sch.set_scope(tables, 0, "local")
    _tensorize_sums(sch, sums, 6, lut_intrin.intrin_name(
        "cuda", cols, _pairs(op), op.dtype, _table_scope(placement), "local", _word(op)))


def _cooperative(sch: Schedule, block, at, ty, tx, vector: int = 1) -> None:
    """Compute `block` in (dynamic, so beyond 48 KB) shared memory per thread block, its loops
    spread over all threads, `vector` consecutive elements per thread and step."""
    sch.compute_at(block, at)
    sch.set_scope(block, 0, "shared.dyn")
    fused = sch.fuse(*sch.get_loops(block)[1:])  # `at` is the outermost loop
    if vector == 1:
        _, y, x = sch.split(fused, [None, ty, tx])
    else:
        _, y, x, v = sch.split(fused, [None, ty, tx, vector])
        sch.vectorize(v)
    sch.bind(y, "threadIdx.y")
    sch.bind(x, "threadIdx.x")


def _own_kernel(sch: Schedule, block, threads: int = 256) -> None:
    """Leave `block` at the root, a kernel of its own: one element per thread."""
    fused = sch.fuse(*sch.get_loops(block))
    bx, x = sch.split(fused, [None, threads])
    sch.bind(bx, "blockIdx.x")
    sch.bind(x, "threadIdx.x")


def schedule_llvm(op: LutMpGemm, sch: Schedule, cols: int) -> None:
    out, sums = sch.get_sblock("out"), sch.get_sblock("lut_sums")
    i, c, g, b = sch.get_loops(out)
    c_o, c_c = sch.split(c, [None, cols])
    sch.reorder(c_o, i, g, b, c_c)
    sch.parallel(c_o)
    sch.compute_at(sums, b)
    _tensorize_sums(sch, sums, 4, lut_intrin.intrin_name(
        "llvm", cols, _pairs(op), op.dtype, "global", "global", 1))


def lut_space(op: LutMpGemm, target: Target) -> ms.space_generator.ScheduleFn:
    """One design space per (cols, rows, table placement, group split) on CUDA, per cols on llvm."""
    kind = "cuda" if target.kind.name == "cuda" else "llvm"
    register_intrinsics(op, kind)
    cols = _divisors(op.shape["n"], COLS)
    if kind == "cuda":
        split = [False, True] if _divisors(op.groups, THREADS_X) != [1] else [False]
        variants = list(product(cols, _divisors(op.shape["m"], ROWS), _placements(op), split))
        apply = lambda sch, v: schedule_cuda(op, sch, *v)  # noqa: E731
        postprocs = [ms.postproc.DisallowDynamicLoop(), ms.postproc.RewriteUnboundBlock(),
                     ms.postproc.RewriteReductionBlock(), ms.postproc.VerifyGPUCode()]
    else:
        variants = [(c,) for c in cols]
        apply = lambda sch, v: schedule_llvm(op, sch, *v)  # noqa: E731
        postprocs = [ms.postproc.DisallowDynamicLoop(), ms.postproc.RewriteReductionBlock()]

    def spaces(sch: Schedule) -> list[Schedule]:
        out = []
        for variant in variants:
            space = sch.copy()
            apply(space, variant)
            out.append(space)
        return out

    return ms.space_generator.ScheduleFn(spaces, sch_rules=[], postprocs=postprocs,
                                         mutator_probs={ms.mutator.MutateThreadBinding(): 1.0})
