"""The LUT-mpGEMM schedule space: a MetaSchedule ScheduleFn that samples the tiling and tensorizes
the lookup-accumulate block with the LUT-mpGEMM instruction (schedules/lut_intrin.py).

Sampled decisions (categorical, so the search explores them and replays them from traces):
- cols: output columns per thread sharing one table (the instruction's width),
- threads over columns (threadIdx.y) and over weight groups (threadIdx.x, a cross-thread
  reduction: split-K inside the thread block),
- rows: activation rows per thread block (their tables live together),
- table placement: shared memory per thread block, or per thread in registers/local memory
  (recomputed per group; only offered when a group's table is small),
- unrolling of the epilogue.
On llvm the same structure is parallelized over column tiles instead of bound to threads.
"""
from __future__ import annotations

from tvm.s_tir import Schedule
from tvm.s_tir import meta_schedule as ms
from tvm.target import Target

from schedules import lut_intrin
from schedules.lut_mpgemm import K_PER_BYTE, LutMpGemm

COLS = (1, 2, 4, 8)
THREADS_Y = (1, 2, 4, 8, 16, 32)
THREADS_X = (1, 2, 4, 8, 16, 32)
ROWS = (1, 2, 4, 8, 16)
UNROLL = (0, 16, 64)
LOCAL_TABLE_MAX = 128  # table entries per thread for the "local" placement


def _divisors(n: int, options: tuple[int, ...]) -> list[int]:
    return [v for v in options if n % v == 0] or [1]


def _choose(sch: Schedule, options: list[int]) -> int:
    """A categorical decision (uniform); returns its value in this schedule."""
    return int(sch.get(sch.sample_categorical(options, [1.0 / len(options)] * len(options))))


def _word(op: LutMpGemm, pairs: int) -> int:
    """Bytes per weight load in the CUDA instruction: 4 when every group start is 4-aligned."""
    return 4 if pairs % 4 == 0 and (op.shape["k"] // K_PER_BYTE) % 4 == 0 else 1


def register_intrinsics(op: LutMpGemm, kind: str) -> None:
    """Register every instruction variant the space can name (trace replay needs them)."""
    pairs = op.group_size // K_PER_BYTE
    for cols in COLS:
        if kind == "cuda":
            for scope in ("shared", "local"):
                lut_intrin.register("cuda", cols, pairs, op.dtype, scope, "local", _word(op, pairs))
        else:
            lut_intrin.register("llvm", cols, pairs, op.dtype, "global", "global")


def _tensorize_sums(sch: Schedule, sums, depth: int, name: str) -> None:
    """Split off the zero init and replace the (cols, pairs, halves, entries) nest below the
    outer `depth` loops by the instruction."""
    nest = sch.get_loops(sums)[depth]
    sch.decompose_reduction(sums, nest)
    sch.tensorize(nest, name)


def schedule_cuda(op: LutMpGemm, sch: Schedule) -> None:
    m, n = op.shape["m"], op.shape["n"]
    pairs = op.group_size // K_PER_BYTE
    cols = _choose(sch, _divisors(n, COLS))
    ty = _choose(sch, _divisors(n // cols, THREADS_Y))
    tx = _choose(sch, _divisors(op.groups, THREADS_X))
    rows = _choose(sch, _divisors(m, ROWS))
    table_entries = pairs * K_PER_BYTE * 2
    placement = ("shared", "local")[_choose(sch, [0, 1] if table_entries <= LOCAL_TABLE_MAX else [0])]
    unroll = _choose(sch, list(UNROLL))

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
    if unroll:
        sch.annotate(g_o, "pragma_auto_unroll_max_step", unroll)
        sch.annotate(g_o, "pragma_unroll_explicit", 1)
    sch.set_scope(partial, 0, "local")
    sch.reverse_compute_at(out, c_y)
    if tx > 1:  # the lanes' loop comes first (as out's iteration variables); make it innermost
        lanes, *rest = sch.get_loops(out)[2:]
        sch.reorder(*rest, lanes)
        sch.bind(lanes, "threadIdx.x")

    sch.compute_at(sums, b)
    sch.set_scope(sums, 0, "local")
    sch.compute_at(xsum, i_i)
    sch.set_scope(xsum, 0, "local")
    if placement == "shared":
        _cooperative(sch, tables, block_x, ty, tx)
    else:
        sch.compute_at(tables, i_i)
        sch.set_scope(tables, 0, "local")
    name = lut_intrin.intrin_name("cuda", cols, pairs, op.dtype, placement, "local",
                                  _word(op, pairs))
    _tensorize_sums(sch, sums, 6, name)


def _cooperative(sch: Schedule, block, at, ty: int, tx: int) -> None:
    """Compute `block` in shared memory per thread block, its spatial loops spread over all threads."""
    sch.compute_at(block, at)
    sch.set_scope(block, 0, "shared")
    inner = sch.get_loops(block)[1:]           # `at` is the outermost loop
    reduces = any(iv.iter_type != 0 for iv in sch.get(block).iter_vars)
    fused = sch.fuse(*(inner[:-1] if reduces else inner))
    _, y, x = sch.split(fused, [None, ty, tx])
    sch.bind(y, "threadIdx.y")
    sch.bind(x, "threadIdx.x")


def schedule_llvm(op: LutMpGemm, sch: Schedule) -> None:
    n = op.shape["n"]
    pairs = op.group_size // K_PER_BYTE
    cols = _choose(sch, _divisors(n, COLS))
    out, sums = sch.get_sblock("out"), sch.get_sblock("lut_sums")
    i, c, g, b = sch.get_loops(out)
    c_o, c_c = sch.split(c, [None, cols])
    sch.reorder(c_o, i, g, b, c_c)
    sch.parallel(c_o)
    sch.compute_at(sums, b)
    _tensorize_sums(sch, sums, 4, lut_intrin.intrin_name("llvm", cols, pairs, op.dtype, "global",
                                                      "global", 1))


def lut_space(op: LutMpGemm, target: Target) -> ms.space_generator.ScheduleFn:
    kind = "cuda" if target.kind.name == "cuda" else "llvm"
    register_intrinsics(op, kind)
    schedule = schedule_cuda if kind == "cuda" else schedule_llvm
    return ms.space_generator.ScheduleFn(lambda sch: schedule(op, sch), sch_rules=[],
                                         postprocs=_postprocs(kind), mutator_probs={})


def _postprocs(kind: str) -> list:
    if kind == "cuda":
        return [ms.postproc.DisallowDynamicLoop(), ms.postproc.RewriteUnboundBlock(),
                ms.postproc.RewriteReductionBlock(), ms.postproc.VerifyGPUCode()]
    return [ms.postproc.DisallowDynamicLoop(), ms.postproc.RewriteReductionBlock()]
