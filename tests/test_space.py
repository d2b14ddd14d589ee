"""CUDA design spaces, checked on the CPU: sampling, tensor-core intrinsics, CUDA source."""
import re

import pytest
import tvm
from tvm.s_tir import meta_schedule as ms
from tvm.target import Target

from energy_tuner.compiler.builder import compile_module
from energy_tuner.compiler.target import opt_in_shared_memory
from energy_tuner.schedules import design_space, make_op
from energy_tuner.schedules.permuted_layout import PermutedLayoutCheck

H100 = Target({"kind": "cuda", "arch": "sm_90", "max_shared_memory_per_block": 232448,
               "max_threads_per_block": 1024, "thread_warp_size": 32})


def context(name: str, shape: str, dtype: str = "float16",
            params: dict | None = None) -> ms.TuneContext:
    op = make_op(name, shape, dtype, params)
    return ms.TuneContext(mod=tvm.IRModule({"main": op.prim_func()}), target=H100,
                          space_generator=design_space(op, H100), num_threads=2, rand_state=0,
                          search_strategy=ms.search_strategy.EvolutionarySearch(population_size=64))


def proposals(ctx: ms.TuneContext, n: int) -> list[tvm.s_tir.Schedule]:
    """What the tuner's strategy proposes first: random valid samples of the space."""
    ctx.pre_tuning(max_trials=n, num_trials_per_iter=n, design_spaces=ctx.generate_design_space(),
                   database=ms.database.MemoryDatabase(), cost_model=ms.cost_model.RandomModel())
    return [c.sch for c in ctx.generate_measure_candidates()]


def tensorized_with(sch: tvm.s_tir.Schedule) -> str:
    return re.search(r'auto_tensorize", ann_val="(\w+)"', str(sch.trace)).group(1)


def sample(ctx: ms.TuneContext, space: tvm.s_tir.Schedule, seed: int) -> tvm.s_tir.Schedule:
    """A design space replayed with fresh random decisions, ready for the postprocessors."""
    sch = tvm.s_tir.Schedule(ctx.mod, seed=seed)
    tvm.s_tir.Trace(space.trace.insts, {}).apply_to_schedule(sch, remove_postproc=True)
    sch.enter_postproc()
    return sch


def valid_sample(ctx: ms.TuneContext, space: tvm.s_tir.Schedule,
                 tries: int = 200) -> tvm.s_tir.Schedule:
    """Replay a design space with fresh random decisions until the postprocessors accept one."""
    for seed in range(1, tries + 1):
        sch = sample(ctx, space, seed)
        if all(p.apply(sch) for p in ctx.space_generator.postprocs):
            return sch
    raise AssertionError(f"no valid sample in {tries} tries")


def cuda_source(mod: tvm.IRModule, **config) -> str:
    """CUDA source of a module (without a GPU the build keeps the source)."""
    with tvm.transform.PassContext(config=config):
        return compile_module(mod, H100).mod.imports[0].inspect_source()


@pytest.mark.parametrize("name,shape,threads_over_k",
                         [("gemv", "16384,4096", True), ("matmul", "1,4096,4096", False),
                          ("batch_matmul", "b=2,m=1,n=512,k=256", False)])
def test_gemv_like_space_proposes_cross_thread_reductions(name, shape, threads_over_k):
    ctx = context(name, shape)
    candidates = proposals(ctx, 16)  # (MultiLevelTiling rejects ~98% of samples for these)
    assert len(candidates) == 16
    mods = [str(c.mod) for c in candidates]
    axis = "threadIdx.x" if threads_over_k else "threadIdx.y"
    assert all(re.search(rf'for k_\w+ in T.thread_binding\(\d+, thread="{axis}"\)', m) for m in mods)
    split_k = next(c for c, m in zip(candidates, mods)
                   if not re.search(r"k_\w+ in T.thread_binding\(1,", m))
    source = cuda_source(split_k.mod)
    assert "__shfl_down_sync" in source or "red_buf" in source
    if threads_over_k:  # every candidate: 16-byte loads, a thread reads 8 halves of a row per step
        assert "uint4" in source


@pytest.mark.parametrize("bits", [1, 4])
def test_dequant_twin_at_m1_dequantizes_in_registers_of_a_gemv(bits):
    ctx = context("lut_mpgemm", "m=1,n=4096,k=4096", params={"impl": "dequant", "wbits": bits})
    candidates = proposals(ctx, 8)
    mods = [str(c.mod) for c in candidates]
    assert len(candidates) == 8 and not any('T.sblock("weights")' in m for m in mods)
    split_k = next(c for c, m in zip(candidates, mods)  # threads over k: sampled, 1 to 16
                   if not re.search(r"k_\w+ in T.thread_binding\(1,", m))
    source = cuda_source(split_k.mod)
    assert "__shfl_down_sync" in source or "red_buf" in source
    # per thread and step: 32 activations in 16-byte loads, one 4-byte word per bit plane
    assert re.search(r"\*\(uint4\*\)\(A_local_ptr", source)
    assert re.search(r"\*\(uint\*\)\(B_local_ptr", source)
    assert f"B_local_ptr[{4 * bits}]" in source


@pytest.mark.parametrize("name,shape,params", [
    ("gemv", "100,36", None),  # k not a multiple of 8 halves
    ("lut_mpgemm", "m=1,n=64,k=24", {"impl": "dequant", "wbits": 3, "group_size": 8}),
])
def test_gemv_like_spaces_build_where_k_does_not_fit_the_step(name, shape, params):
    candidates = proposals(context(name, shape, params=params), 4)
    assert len(candidates) == 4
    for c in candidates:
        assert "main_kernel" in cuda_source(c.mod)


def test_fp16_matmul_space_has_wmma_and_mma_pipelines():
    ctx = context("matmul", "4096,4096,4096")
    spaces = ctx.generate_design_space()
    intrinsics = [tensorized_with(s) for s in spaces]
    assert "mma_sync_m16n8k8_f16f16f32" in intrinsics
    assert {"wmma_sync_16x16x16_f16f16f32", "wmma_sync_16x16x16_f16f16f32_trans"} <= set(intrinsics)
    mma = spaces[intrinsics.index("mma_sync_m16n8k8_f16f16f32")]
    assert "software_pipeline_async_stages" in str(mma.trace) and "shared.dyn" in str(mma.trace)

    sch = valid_sample(ctx, mma)
    source = cuda_source(sch.mod, **{"tirx.use_async_copy": True})
    for instruction in ("mma.sync.aligned.m16n8k8", "ldmatrix.sync", "cp.async.cg.shared.global",
                        "cp.async.commit_group", "extern __shared__"):
        assert instruction in source, instruction

    wmma = valid_sample(ctx, spaces[intrinsics.index("wmma_sync_16x16x16_f16f16f32")])
    assert "nvcuda::wmma::mma_sync" in cuda_source(wmma.mod)


def test_float16_accumulation_uses_float16_tensor_core_instructions():
    ctx = context("matmul", "4096,4096,4096", params={"accum": "float16"})
    spaces = ctx.generate_design_space()
    intrinsics = [tensorized_with(s) for s in spaces]
    assert set(intrinsics) == {"mma_sync_m16n8k8_f16f16f16", "wmma_sync_16x16x16_f16f16f16",
                               "wmma_sync_16x16x16_f16f16f16_trans"}
    mma = valid_sample(ctx, spaces[intrinsics.index("mma_sync_m16n8k8_f16f16f16")])
    source = cuda_source(mma.mod, **{"tirx.use_async_copy": True})
    assert "mma.sync.aligned.m16n8k8.row.col.f16.f16.f16.f16" in source
    assert "half* __restrict__ C" in source
    wmma = valid_sample(ctx, spaces[intrinsics.index("wmma_sync_16x16x16_f16f16f16")])
    assert "wmma::fragment<nvcuda::wmma::accumulator, 16, 16, 16, half>" in cuda_source(wmma.mod)


@pytest.mark.parametrize("seed,accepted", [(11, True), (44, True), (98, False), (102, False)])
def test_mma_tiles_tvm_cannot_permute_are_rejected_before_building(seed, accepted):
    """Seeds found by replaying the MMA space: each passes every other postprocessor."""
    ctx = context("matmul", "4096,4096,4096")
    spaces = ctx.generate_design_space()
    mma = spaces[[tensorized_with(s) for s in spaces].index("mma_sync_m16n8k8_f16f16f32")]
    names = [type(p).__name__ for p in ctx.space_generator.postprocs]
    assert names.index("_PyPostproc") < names.index("VerifyGPUCode")  # ours, checked first
    others = [p for p, name in zip(ctx.space_generator.postprocs, names) if name != "_PyPostproc"]
    sch = sample(ctx, mma, seed)
    assert all(p.apply(sch) for p in others)
    assert PermutedLayoutCheck().apply(sch) == accepted
    if accepted:
        assert "mma.sync" in cuda_source(sch.mod, **{"tirx.use_async_copy": True})
    else:
        with pytest.raises(Exception, match="Permuted SLayout"):
            cuda_source(sch.mod, **{"tirx.use_async_copy": True})


def test_mma_only_where_the_rule_can_tile():
    for shape in ("1000,1024,1024", "1024,1024,1000"):  # not multiples of 32
        assert "mma_sync_m16n8k8_f16f16f32" not in [
            tensorized_with(s) for s in context("matmul", shape).generate_design_space()]
    batched = context("batch_matmul", "b=2,m=256,n=256,k=256").generate_design_space()
    assert {tensorized_with(s) for s in batched} == {"wmma_sync_16x16x16_f16f16f32",
                                                     "wmma_sync_16x16x16_f16f16f32_trans"}


def test_simt_tiles_use_dynamic_shared_memory():
    ctx = context("matmul", "1024,1024,1024", "float32")
    sch = valid_sample(ctx, ctx.generate_design_space()[0])
    assert 'scope="shared.dyn"' in str(sch.mod) and 'scope="shared"' not in str(sch.mod)


def test_opt_in_shared_memory_limit():
    def target(arch):
        return Target({"kind": "cuda", "arch": arch, "max_shared_memory_per_block": 49152,
                       "max_threads_per_block": 1024, "thread_warp_size": 32})
    assert opt_in_shared_memory(target("sm_90")).attrs["max_shared_memory_per_block"] == 232448
    assert opt_in_shared_memory(target("sm_80")).attrs["max_shared_memory_per_block"] == 166912
    assert opt_in_shared_memory(target("sm_70")).attrs["max_shared_memory_per_block"] == 49152
