"""MetaSchedule design spaces per target.

The space is TVM's post-order-apply over the target's default rule set: SIMT multi-level tiling on
CUDA for float32, WMMA tensor cores on CUDA for float16, and the CPU rules on llvm.
"""
from __future__ import annotations

from tvm.s_tir import meta_schedule as ms
from tvm.target import Target

from schedules.op import Op


def rule_set(op: Op, target: Target) -> str:
    """Name of the MetaSchedule rule set (schedule rules, postprocs, mutators) for op on target."""
    if target.kind.name == "cuda":
        return "cuda-tensorcore" if op.dtype == "float16" else "cuda"
    return "llvm"


def design_space(op: Op, target: Target) -> ms.space_generator.SpaceGenerator:
    if op.name == "lut_mpgemm" and op.params["impl"] == "lut":
        from schedules.lut_space import lut_space
        return lut_space(op, target)
    rules = rule_set(op, target)
    if rules == "cuda-tensorcore":
        import tvm.s_tir.tensor_intrin  # noqa: F401  registers the WMMA intrinsics the rules name
    return ms.space_generator.PostOrderApply(sch_rules=rules, postprocs=rules, mutator_probs=rules)
