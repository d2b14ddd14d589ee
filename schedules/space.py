"""MetaSchedule design spaces per target.

- lut_mpgemm with the LUT implementation: its own space (schedules/lut_space.py).
- llvm: TVM's CPU rules.
- CUDA, GEMV-like ops (gemv; matmul and batch_matmul with m = 1; lut_mpgemm's dequant twin with
  m = 1, dequantizing in registers): a schedule function that splits the reduction over threads
  (vector loads, in-thread sums, then a warp/block reduction). TVM's
  rules fit these badly: MultiLevelTiling rejects ~98% of samples, and CrossThreadReduction skips
  reductions with over 1024 outputs, which leaves one serial dot product per thread.
- CUDA, float16 products: WMMA tensor cores, and on sm_80+ for matmul also ldmatrix + mma.sync
  with an asynchronous software pipeline, in one search (the union of both design spaces).
  Building MMA kernels needs `tvm.s_tir.tensor_intrin` imported (lowering looks up its index
  maps), and the pipeline's copies become cp.async only under PassContext `tirx.use_async_copy`.
  Samples whose shared tiles TVM cannot permute for ldmatrix are rejected by a postprocessor
  (schedules/permuted_layout.py) instead of failing to build.
- CUDA, everything else: TVM's SIMT rules.
All CUDA tiles live in dynamic shared memory, so the target's `max_shared_memory_per_block` may be
the opt-in limit (compiler/target.py) rather than the 48 KB cap on static shared memory.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
from tvm.s_tir import Schedule
from tvm.s_tir import meta_schedule as ms
from tvm.s_tir.meta_schedule import schedule_rule as R
from tvm.target import Target

from .op import Op
from .permuted_layout import PermutedLayoutCheck

Space = ms.space_generator.SpaceGenerator
# activations per thread and step in the dequant GEMV: four 16-byte loads of fp16 activations
# and one 4-byte word per bit plane of the packed weights
DEQUANT_K_STEP = 32



def _mma_f16(accum: str) -> dict[str, str]:
    """mma.sync m16n8k8 on float16 with float32 or float16 accumulation, loaded from dynamic
    shared memory by ldmatrix (tvm.s_tir.tensor_intrin.cuda; the group TVM's own
    cuda-tensorcore rule set names for float32)."""
    bits = accum.removeprefix("float")
    return {"init": f"mma_init_m16n8k8_f{bits}",
            "load_a": "mma_load_m16n8k8_f16_A_shared_dyn",
            "load_b": "mma_load_m16n8k8_f16_B_shared_dyn",
            "compute": f"mma_sync_m16n8k8_f16f16f{bits}",
            "store": f"mma_store_m16n8k8_f{bits}_global"}


def design_space(op: Op, target: Target) -> Space:
    """The space generator (with its postprocessors and mutators) for op on target."""
    if op.name == "lut_mpgemm" and op.params["impl"] == "lut":
        from .lut_space import lut_space
        return lut_space(op, target)
    if target.kind.name != "cuda":
        return _post_order("llvm", "llvm")
    vector = 16 // np.dtype(op.dtype).itemsize
    if op.name == "gemv" or (op.name in ("matmul", "batch_matmul") and op.shape["m"] == 1):
        return _schedule_fn(_gemv_sketch(op.name == "gemv", k_step=vector, vector=vector))
    if op.name == "lut_mpgemm" and op.shape["m"] == 1:  # the dequant twin, decoding
        return _schedule_fn(_gemv_sketch(True, k_step=DEQUANT_K_STEP, vector=vector,
                                         inline=("weights",)))
    if op.dtype != "float16":
        return _post_order(_simt_rules(), "cuda")
    import tvm.s_tir.tensor_intrin  # noqa: F401  registers the intrinsics the rules name
    from tvm.s_tir.tensor_intrin.cuda import get_wmma_intrin_group

    wmma = [get_wmma_intrin_group("shared.dyn", "shared.dyn", "float16", op.output_dtype, trans_b)
            for trans_b in (False, True)]
    spaces = [_post_order([_tensor_core(wmma, write_reuse="must", pipeline=False),
                           *_simt_rules()])]
    # TVM's MMA rule tiles only (i, j, k) loop nests, fails on m or n not multiples of 32, and
    # builds only k tiles of multiples of 32; the WMMA rule would shadow it in a shared rule list.
    postprocs = list(ms.Postproc.create("cuda-tensorcore"))
    if op.name == "matmul" and all(op.shape[d] % 32 == 0 for d in "mnk") and _sm(target) >= 80:
        spaces.append(_post_order([_tensor_core([_mma_f16(op.output_dtype)], write_reuse="no",
                                                pipeline=True),
                                   *_simt_rules()]))
        # before VerifyGPUCode and RewriteTensorize, so that rejected samples skip them
        verify = next(i for i, p in enumerate(postprocs) if isinstance(p, ms.postproc.VerifyGPUCode))
        postprocs.insert(verify, PermutedLayoutCheck())
    return ms.space_generator.SpaceGeneratorUnion(
        spaces, sch_rules=[], postprocs=postprocs, mutator_probs="cuda-tensorcore")


def _schedule_fn(sketch: Callable[[Schedule], None]) -> Space:
    return ms.space_generator.ScheduleFn(sketch, sch_rules=[], postprocs="cuda",
                                         mutator_probs="cuda")


def _sm(target: Target) -> int:
    """Compute capability as a number ("sm_90a" -> 90)."""
    return int("".join(c for c in str(target.attrs.get("arch", "")) if c.isdigit()) or 0)


def _post_order(rules: list[ms.ScheduleRule] | str, kind: str = "cuda-tensorcore") -> Space:
    """Post-order application of rules, with the postprocessors and mutators of rule set kind."""
    return ms.space_generator.PostOrderApply(sch_rules=rules, postprocs=kind, mutator_probs=kind)


def _simt_rules() -> list[ms.ScheduleRule]:
    """TVM's CUDA rules with MultiLevelTiling's thread-block tiles in dynamic shared memory."""
    tiling = R.MultiLevelTiling(
        structure="SSSRRSRS", tile_binds=["blockIdx.x", "vthread.x", "threadIdx.x"],
        max_innermost_factor=64, vector_load_lens=[1, 2, 3, 4, 8, 16],
        reuse_read=R.ReuseType(req="must", levels=[4], scope="shared.dyn"),
        reuse_write=R.ReuseType(req="must", levels=[3], scope="local"))
    return [tiling if isinstance(rule, R.MultiLevelTiling) else rule
            for rule in ms.ScheduleRule.create("cuda")]


def _tensor_core(groups: list[dict[str, str]], write_reuse: str,
                 pipeline: bool) -> ms.ScheduleRule:
    """TVM's tensor-core tiling (as in its cuda-tensorcore rule set) for the given intrinsics."""
    return R.MultiLevelTilingTensorCore(
        intrin_groups=groups, structure="SSSRRSRS",
        tile_binds=["blockIdx.y", "blockIdx.x", "threadIdx.y"], max_innermost_factor=4,
        vector_load_lens=[1, 2, 3, 4, 8, 16],
        reuse_read=R.ReuseType(req="must", levels=[4], scope="shared.dyn"),
        reuse_write=R.ReuseType(req=write_reuse, levels=[2], scope="shared.dyn"),
        use_software_pipeline=pipeline)


def _gemv_sketch(reduce_contiguous: bool, k_step: int, vector: int,
                 inline: tuple[str, ...] = ()) -> Callable[[Schedule], None]:
    """Rows over blockIdx.x and a thread axis, the reduction split (serial, threads, inner).

    reduce_contiguous (y = W @ x with W row-major, buffers A = W-like and B = x-like, in either
    order): reduction threads on threadIdx.x, each reading `k_step` contiguous elements of both
    per step into registers, in loads of up to `vector` elements (16 bytes), when k is a
    multiple of `k_step` (otherwise steps are sampled and read without staging).
    Otherwise (x @ B, B row-major) output columns go on threadIdx.x, so that neighbouring threads
    read neighbouring elements. Blocks in `inline` (e.g. a dequantization) are computed inside
    the reduction, in registers.
    """
    def sketch(sch: Schedule) -> None:
        for name in inline:
            sch.compute_inline(sch.get_sblock(name))
        block = sch.get_child_blocks(sch.get_sblock("root"))[-1]
        *spatial, k = sch.get_loops(block)
        rows = sch.fuse(*spatial)
        block_x, t_rows = sch.split(
            rows, sch.sample_perfect_tile(rows, n=2, max_innermost_factor=64))
        in_registers = reduce_contiguous and sch.get(k).extent.value % k_step == 0
        if in_registers:
            k_outer, k_inner = sch.split(k, [None, k_step])
            k_serial, t_k = sch.split(k_outer, sch.sample_perfect_tile(k_outer, n=2))
        else:
            k_serial, t_k, k_inner = sch.split(
                k, sch.sample_perfect_tile(k, n=3, max_innermost_factor=k_step))
        sch.reorder(block_x, t_rows, t_k, k_serial, k_inner)
        sch.bind(block_x, "blockIdx.x")
        sch.bind(t_rows, "threadIdx.y" if reduce_contiguous else "threadIdx.x")
        sch.bind(t_k, "threadIdx.x" if reduce_contiguous else "threadIdx.y")
        if in_registers:  # fixed steps: static, aligned regions (also of packed weights)
            reads = [region.source.name for region in sch.get(block).reads]
            for name in ("A", "B"):
                cache = sch.cache_read(block, reads.index(name), "local")
                sch.compute_at(cache, k_serial, preserve_unit_loops=True)
                inner = sch.get_loops(cache)[-1]
                if sch.get(inner).extent.value > vector:
                    inner = sch.split(inner, [None, vector])[-1]
                sch.vectorize(inner)
        unroll = sch.sample_categorical([0, 16, 64, 512, 1024], [0.2] * 5)
        sch.annotate(sch.get_sblock("root"), "meta_schedule.unroll_explicit", unroll)
    return sketch
