"""A postprocessor that rejects MMA schedules TVM cannot lower.

TVM's ldmatrix path swizzles ("permutes") the layout of shared-memory tiles; its
InjectPermutedLayout pass fails when a compacted tile's rows are not a multiple of 32 elements
(e.g. an fp16 k-tile of 16). The MMA design space samples such tiles (~40% of its otherwise valid
samples on 4096^3), and they would each cost a build in a worker. This check runs TVM's own
lowering up to that pass on the scheduled module, so the search never proposes them.
"""
from __future__ import annotations

import tvm
import tvm_ffi
from tvm import s_tir
from tvm.s_tir import Schedule
from tvm.s_tir.stmt import SBlock
from tvm.s_tir.meta_schedule.postproc import PyPostproc
from tvm.ir.utils import derived_object

# s_tir/pipeline.py's default passes, in order, up to InjectPermutedLayout
_UP_TO_PERMUTE = tvm.transform.Sequential([
    s_tir.transform.CanonicalizeLoop(),
    s_tir.transform.LowerCrossThreadReduction(),
    s_tir.transform.LowerInitBlock(),
    s_tir.transform.PlanAndUpdateBufferAllocationLocation(),
    s_tir.transform.ConvertBlocksToOpaque(),
    s_tir.transform.LiftThreadBinding(),
    s_tir.transform.ManifestSharedMemoryLocalStage(),
    s_tir.transform.CompactBufferAllocation(),
    s_tir.transform.LowerAutoCopy(),
    s_tir.transform.UnifyThreadBinding(),
    s_tir.transform.LowerMatchBuffer(),
    s_tir.transform.StmtSimplify(),
    s_tir.transform.InjectPermutedLayout(),
])


def _annotated(mod: tvm.IRModule) -> bool:
    """Whether any block asks for a permuted layout (the MMA rule's copies and ldmatrix loads)."""
    found = []
    for func in mod.functions.values():
        tvm_ffi.structural_walk(func.body, [(SBlock, lambda block: found.append(
            "permuted_layout" in block.annotations))])
    return any(found)


def permutable(mod: tvm.IRModule) -> bool:
    """Whether TVM's lowering gets through InjectPermutedLayout on a scheduled module."""
    if not _annotated(mod):
        return True
    try:
        _UP_TO_PERMUTE(mod)
    except tvm.error.InternalError as error:
        if "Permuted SLayout" in str(error):
            return False
        raise
    return True


@derived_object
class PermutedLayoutCheck(PyPostproc):
    """Rejects schedules whose permuted shared-memory tiles TVM's lowering cannot build."""

    def _initialize_with_tune_context(self, context) -> None:
        pass

    def apply(self, sch: Schedule) -> bool:
        return permutable(sch.mod)

    def clone(self) -> PermutedLayoutCheck:
        return PermutedLayoutCheck()
