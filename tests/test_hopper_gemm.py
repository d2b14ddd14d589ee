"""The Hopper GEMM family (schedules/hopper_gemm.py): validity rules, lowering, and on a GPU the
building blocks (TMA into 128B-swizzled shared memory on an mbarrier; wgmma from descriptors) and
the full kernels against numpy.

CPU: every config below lowers for sm_90a to CUDA source with wgmma and cp.async.bulk.tensor, and
where nvcc is on PATH that source compiles for sm_90a. GPU tests need an sm_90 device and driver.
"""
from __future__ import annotations

import itertools
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tvm
from tvm.script import tirx as T
from tvm.target import Target

from energy_tuner.schedules import make_op
from energy_tuner.schedules.hopper_gemm import (CLUSTERS, SMEM_LIMIT, GemmConfig, HopperGemmSpace, build,
                                                cuda_source, gemm_func, reject)
from energy_tuner.schedules.knobs import knob_spaces

H100 = Target({"kind": "cuda", "arch": "sm_90", "max_threads_per_block": 1024})
BEST = dict(block_n=256, consumers=2, stages=4, warp_specialized=True, persistent=True, group_m=8,
            l2_promotion=2, epilogue="direct")
TMA_EPILOGUE = dict(BEST, stages=3, epilogue="tma")
HALF_EPILOGUE = dict(BEST, stages=3, epilogue="tma_half")   # fp32: 3 x 48 KB + 64 KB staged
CLUSTER = dict(HALF_EPILOGUE, group_m=16, cluster_m=2)      # 2x1 clusters multicasting B


def _has_sm90_gpu() -> bool:
    try:
        dev = tvm.cuda(0)
        return dev.exist and dev.compute_version.startswith("9.")
    except Exception:  # no driver or no CUDA runtime: no GPU
        return False


def _op(shape="4096,4096,4096", name="matmul", accum=None, dtype="float16"):
    return make_op(name, shape, dtype, {"accum": accum} if accum else None)


# -- which ops and targets the family takes ----------------------------------------------------
def test_applies_to_fp16_products_on_sm90_only():
    assert HopperGemmSpace.applies(_op(), H100)
    assert HopperGemmSpace.applies(_op(accum="float16"), H100)
    assert HopperGemmSpace.applies(_op("b=8,m=1024,n=1024,k=1024", "batch_matmul"), H100)
    assert HopperGemmSpace.applies(_op(dtype="bfloat16"), H100)
    assert not HopperGemmSpace.applies(make_op("matmul", "256,256,256", "float32"), H100)
    assert not HopperGemmSpace.applies(_op("100,256,256"), H100)          # m not a multiple of 64
    assert not HopperGemmSpace.applies(make_op("gemv", "4096,4096", "float16"), H100)
    ampere = Target({"kind": "cuda", "arch": "sm_80", "max_threads_per_block": 1024})
    assert not HopperGemmSpace.applies(_op(), ampere)
    assert not HopperGemmSpace.applies(_op(), Target("llvm"))


@pytest.mark.parametrize("op,target,reason", [
    (_op(), Target({"kind": "cuda", "arch": "sm_80", "max_threads_per_block": 1024}),
     "needs a Hopper GPU (sm_90: wgmma and TMA), the target is sm_80"),
    (_op(), Target("llvm"), "the target is llvm"),
    (_op("4000,4096,4096"), H100, "multiples of 64"),
    (make_op("matmul", "256,256,256", "float32"), H100, "float16 or bfloat16 inputs, not float32"),
    (make_op("gemv", "4096,4096", "float16"), H100, "matmul and batch_matmul only"),
])
def test_asking_for_the_family_where_it_cannot_run_says_why(op, target, reason):
    from energy_tuner.compiler.spaces import SpaceError, choose_space

    with pytest.raises(SpaceError) as error:
        choose_space(op, target, "hopper_gemm")
    message = str(error.value)
    assert reason in message and "\n" not in message
    assert message.endswith("trace")   # what does apply is listed last


def test_registered_and_builds_for_sm90a():
    (space,) = [s for s in knob_spaces(_op(), H100) if s.name == "hopper_gemm"]
    assert str(space.target.attrs["arch"]) == "sm_90a"
    assert space.compile_options == {"tir_pipeline": "tirx"}


# -- validity rules ----------------------------------------------------------------------------
@pytest.mark.parametrize("config, shape, reason", [
    (dict(BEST, stages=5), "4096,4096,4096", "shared memory"),             # 5 x 48 KB > 227 KB
    (dict(BEST, block_n=192), "4096,4096,4096", "does not divide"),
    (dict(BEST, consumers=2), "192,256,256", "does not divide"),           # block_m 128 vs m 192
    (dict(BEST, warp_specialized=False), "4096,4096,4096", "persistent needs"),
    (TMA_EPILOGUE, "4096,4096,4096", "shared memory"),                    # 3 x 48 KB + 128 KB fp32
    (dict(HALF_EPILOGUE, stages=4), "4096,4096,4096", "shared memory"),   # 4 x 48 KB + 64 KB
    (dict(HALF_EPILOGUE, persistent=False, warp_specialized=False), "4096,4096,4096", "warp-specialized"),
    (dict(BEST, persistent=False, warp_specialized=False, cluster_m=2), "4096,4096,4096",
     "clusters (cluster_m > 1) are written for the warp-specialized body"),
    (dict(CLUSTER, consumers=1), "192,256,256", "3 tile rows are not a whole number of clusters"),
    (dict(CLUSTER, cluster_m=4), "4096,4096,4096", "cluster_m 4 is not one of (1, 2)"),
])
def test_reject_names_the_reason(config, shape, reason):
    got = HopperGemmSpace(_op(shape), H100).reject(config)
    assert got is not None and reason in got and "\n" not in got


def test_half_epilogue_passes_are_whole_tma_boxes():
    """A pass of block_n / 2 columns must be whole 128-byte boxes: 32 fp32 or 64 fp16 columns."""
    half_64 = dict(HALF_EPILOGUE, block_n=64, stages=2)
    assert HopperGemmSpace(_op("4096,4096,4096"), H100).reject(half_64) is None
    why = HopperGemmSpace(_op("4096,4096,4096", accum="float16"), H100).reject(half_64)
    assert why is not None and "128-byte TMA boxes" in why


def test_reject_passes_what_runs_and_holds_the_limits():
    space = HopperGemmSpace(_op(), H100)
    assert space.reject(BEST) is None
    names = [k.name for k in space.knobs]
    for values, cluster_m in itertools.product(itertools.product(*(k.values for k in space.knobs)),
                                               CLUSTERS):  # cluster_m = 2 too, though not searched
        config = dict(zip(names, values), cluster_m=cluster_m)
        cfg = space.gemm_config(config)
        if space.reject(config) is None:
            assert cfg.smem_bytes <= SMEM_LIMIT
            assert 4096 % cfg.block_m == 0 and 4096 % cfg.block_n == 0
            assert cfg.regs_per_cta <= 65536 and cfg.acc_regs + 40 <= cfg.consumer_regs <= 255


def test_features_of_the_best_config():
    f = HopperGemmSpace(_op(), H100).features(BEST)
    assert (f["block_m"], f["block_n"], f["tiles"], f["threads"]) == (128, 256, 512, 384)
    assert f["smem_bytes"] == 4 * (128 + 256) * 64 * 2 + 1024
    assert f["waves"] == pytest.approx(512 / 132)
    assert f["l2_bytes_per_flop"] == pytest.approx((128 + 256) / (128 * 256))
    assert f["cluster_m"] == 1
    pair = HopperGemmSpace(_op(), H100).features(dict(BEST, cluster_m=2))
    assert pair["l2_bytes_per_flop"] == pytest.approx((128 + 256 / 2) / (128 * 256))   # B shared
    small = HopperGemmSpace(_op(), H100).features(dict(BEST, block_n=128, stages=3, persistent=False,
                                                        warp_specialized=False))
    assert small["ctas_per_sm"] == 2                   # 97 KB of shared memory, 90-register threads


def test_sample_and_mutate_stay_in_the_knob_space():
    space = HopperGemmSpace(_op(), H100)
    rng = np.random.default_rng(0)
    a = space.sample(rng)
    assert set(a) == {k.name for k in space.knobs}
    b = space.mutate(a, rng)
    assert sum(a[k] != b[k] for k in a) == 1


def test_configs_recorded_before_clusters_complete_to_cluster_m_1():
    space = HopperGemmSpace(_op(), H100)
    old = {k: v for k, v in BEST.items() if k != "cluster_m"}
    assert space.complete(old) == {**BEST, "cluster_m": 1}
    assert space.complete(dict(BEST, cluster_m=2))["cluster_m"] == 2


# -- lowering to Hopper instructions -----------------------------------------------------------
LOWERED = [
    ("4096,4096,4096", None, "matmul", BEST),
    ("4096,4096,4096", "float16", "matmul", dict(BEST, group_m=16)),
    ("4096,4096,4096", "float16", "matmul", TMA_EPILOGUE),
    ("4096,4096,4096", None, "matmul", HALF_EPILOGUE),
    ("512,768,1024", None, "matmul", dict(BEST, block_n=128, consumers=1, stages=3,
                                          warp_specialized=False, persistent=False)),
    ("b=4,m=256,n=256,k=512", None, "batch_matmul", dict(BEST, block_n=64, persistent=False)),
    ("b=4,m=256,n=256,k=512", "float16", "batch_matmul", dict(TMA_EPILOGUE, block_n=64)),
    ("4096,4096,4096", None, "matmul", CLUSTER),
    ("4096,4096,4096", "float16", "matmul", dict(TMA_EPILOGUE, cluster_m=2)),
    ("512,768,1024", None, "matmul", dict(BEST, block_n=192, consumers=1, stages=5, persistent=False,
                                          cluster_m=2)),
    ("b=4,m=256,n=256,k=512", None, "batch_matmul", dict(BEST, block_n=64, cluster_m=2)),
]


@pytest.fixture(scope="module")
def lowered_sources():
    out = []
    for shape, accum, name, config in LOWERED:
        space = HopperGemmSpace(_op(shape, name, accum), H100)
        assert space.reject(config) is None
        ex = tvm.compile(space.module(config), target=space.target, **space.compile_options)
        out.append((config, cuda_source(ex)))
    return out


def test_lowers_to_wgmma_and_tma(lowered_sources):
    for config, src in lowered_sources:
        assert "wgmma.mma_async.sync.aligned.m64n%dk16.f32.f16.f16" % config["block_n"] in src
        assert "cp.async.bulk.tensor" in src and "mbarrier.try_wait.parity" in src
        assert "const __grid_constant__ CUtensorMap" in src
        assert ("setmaxnreg" in src) == config["warp_specialized"]
        assert ("global.shared::cta.tile.bulk_group" in src) == (config["epilogue"] != "direct")
        clustered = config.get("cluster_m", 1) > 1
        for cluster_only in ("multicast::cluster", "mapa.shared::cluster", "barrier.cluster.arrive",
                             "fence.mbarrier_init.release.cluster", "%cluster_ctarank"):
            assert (cluster_only in src) == clustered, cluster_only
        assert "arrive.release.cluster" not in src     # a stage is released at CTA scope


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not on PATH")
def test_bfloat16_inputs_lower_to_bf16_wgmma_and_bf16_tma_maps(tmp_path):
    for name, shape in (("matmul", "4096,4096,4096"), ("batch_matmul", "b=4,m=256,n=256,k=512")):
        space = HopperGemmSpace(_op(shape, name, dtype="bfloat16"), H100)
        config = dict(HALF_EPILOGUE, block_n=64, persistent=False) if name == "batch_matmul" \
            else HALF_EPILOGUE
        ex = tvm.compile(space.module(config), target=space.target, **space.compile_options)
        src = cuda_source(ex)
        assert "wgmma.mma_async.sync.aligned.m64n%dk16.f32.bf16.bf16" % config["block_n"] in src
        assert "f16.f16" not in src and "half" not in src.split("extern \"C\" __global__")[-1]
        if shutil.which("nvcc"):
            cu = tmp_path / f"{name}.cu"
            cu.write_text(src)
            res = subprocess.run(["nvcc", "-gencode=arch=compute_90a,code=sm_90a", "-cubin", "-o",
                                  str(tmp_path / f"{name}.cubin"), str(cu)], capture_output=True, text=True)
            assert res.returncode == 0, res.stderr[-2000:]


def test_sources_compile_for_sm90a(lowered_sources, tmp_path):
    for i, (_, src) in enumerate(lowered_sources):
        cu = tmp_path / f"k{i}.cu"
        cu.write_text(src)
        res = subprocess.run(["nvcc", "-gencode=arch=compute_90a,code=sm_90a", "-cubin", "-o",
                              str(tmp_path / f"k{i}.cubin"), str(cu)], capture_output=True, text=True)
        assert res.returncode == 0, res.stderr[-2000:]


# -- GPU: building blocks ----------------------------------------------------------------------
def _tma_swizzle_probe():
    """TMA-load a 64 x 64 fp16 tile with the 128B swizzle into shared memory, completing on an
    mbarrier (expect_tx); then every thread copies shared memory out linearly."""
    rows, cols = 64, 64

    # fmt: off
    @T.prim_func
    def main(A_ptr: T.handle, B_ptr: T.handle):
        A = T.match_buffer(A_ptr, (rows, cols), "float16", align=16)
        B = T.match_buffer(B_ptr, (rows * cols,), "float16", align=16)
        A_map: T.let[T.handle("tensormap")] = T.tvm_stack_alloca("tensormap", 1)
        T.call_packed("runtime.cuTensorMapEncodeTiled", A_map, "float16", 2, A.data,
                      cols, rows, cols * 2, cols, rows, 1, 1, 0, 3, 0, 0)
        T.device_entry()
        bid = T.cta_id([1])
        tid = T.thread_id([128])
        smem = T.alloc_buffer((rows * cols,), "float16", scope="shared.dyn", align=1024)
        bar = T.alloc_shared((1,), "uint64")
        if tid == 0:
            T.ptx.mbarrier.init.shared.b64(T.address_of(bar[0]), T.uint32(1))
            T.ptx.fence.proxy.async_.shared__cta()
        T.cuda.cta_sync()
        if tid == 0:
            T.ptx.mbarrier.arrive.expect_tx.shared.b64(T.address_of(bar[0]), T.uint32(rows * cols * 2))
            T.ptx["cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes"](
                smem.ptr_to([0]), T.address_of(A_map), 0, 0, T.address_of(bar[0]))
        T.cuda.mbarrier_wait(T.address_of(bar[0]), 0)
        for i in T.serial(rows * cols // 128):
            B[i * 128 + tid] = smem[i * 128 + tid]
    # fmt: on
    return main


def _swizzle128(r: int, c: int) -> int:
    """Element offset of A[r, c] (fp16, 128-byte rows) in 128B-swizzled shared memory."""
    chunk, within = divmod(c, 8)                     # 16-byte chunks of 8 halves
    return r * 64 + ((chunk ^ (r % 8)) * 8) + within


@pytest.mark.gpu
@pytest.mark.skipif(not _has_sm90_gpu(), reason="needs an sm_90 GPU")
def test_tma_128b_swizzled_load_completes_on_mbarrier():
    ex = build(_tma_swizzle_probe())
    dev = tvm.cuda(0)
    a = np.random.default_rng(0).standard_normal((64, 64)).astype("float16")
    out = tvm.runtime.tensor(np.full(64 * 64, np.nan, "float16"), dev)
    ex["main"](tvm.runtime.tensor(a, dev), out)
    got = out.numpy()
    want = np.empty(64 * 64, "float16")
    for r, c in itertools.product(range(64), range(64)):
        want[_swizzle128(r, c)] = a[r, c]
    np.testing.assert_array_equal(got, want)


def _run(op, config) -> float:
    """Relative error of the family's kernel for op under config against the op's reference."""
    space = HopperGemmSpace(op, Target.from_device(tvm.cuda(0)))
    assert space.reject(config) is None
    ex = tvm.compile(space.module(config), target=space.target, **space.compile_options)
    dev = tvm.cuda(0)
    host = op.inputs(np.random.default_rng(1))
    out = tvm.runtime.tensor(np.full(op.output_shape, np.nan, op.output_dtype), dev)
    ex["main"](*[tvm.runtime.tensor(x, dev) for x in host], out)
    got, ref = out.numpy().astype("float64"), op.reference(host).astype("float64")
    assert np.isfinite(got).all(), "unwritten (NaN) output elements"
    return float(np.linalg.norm(got - ref) / np.linalg.norm(ref))


def _matches_reference(shape: str, accum: str | None, name: str, config: dict) -> None:
    """The family's kernel for (shape, accum: None, "float16" out or "bf16" in) within tolerance."""
    op = _op(shape, name, dtype="bfloat16") if accum == "bf16" else _op(shape, name, accum)
    assert _run(op, config) <= op.tolerance


@pytest.mark.parametrize("block_n, consumers", [(64, 1), (256, 1), (256, 2)])
@pytest.mark.gpu
@pytest.mark.skipif(not _has_sm90_gpu(), reason="needs an sm_90 GPU")
def test_wgmma_one_k_tile(block_n, consumers):
    """k = 64: one stage, BK/16 wgmmas from descriptors (block_n > 64 exercises the B chunk stride)."""
    op = _op(f"{64 * consumers},{block_n},64")
    config = dict(BEST, block_n=block_n, consumers=consumers, warp_specialized=False,
                  persistent=False, stages=2)
    assert _run(op, config) < 1e-5


CORRECT = [
    ("1024,768,2048", None, "matmul", dict(BEST, block_n=128)),
    ("1024,1024,1024", "float16", "matmul", dict(BEST, group_m=4)),
    ("512,768,1024", None, "matmul", dict(BEST, block_n=192, consumers=1, warp_specialized=True,
                                          persistent=False, stages=5)),
    ("640,512,4096", None, "matmul", dict(BEST, block_n=64, consumers=2, warp_specialized=False,
                                          persistent=False, stages=3, l2_promotion=0)),
    ("b=3,m=256,n=512,k=512", None, "batch_matmul", BEST),
    ("1024,1024,2048", "float16", "matmul", TMA_EPILOGUE),
    ("768,512,1024", "float16", "matmul", dict(TMA_EPILOGUE, block_n=128, group_m=1)),
    ("1024,1024,2048", None, "matmul", HALF_EPILOGUE),
    ("1024,768,1024", None, "matmul", dict(BEST, stages=2, epilogue="tma")),
    ("768,512,1024", None, "matmul", dict(HALF_EPILOGUE, block_n=128, group_m=1, consumers=1)),
    ("1024,1024,1024", "float16", "matmul", dict(HALF_EPILOGUE, stages=4)),
    ("b=3,m=256,n=512,k=512", None, "batch_matmul", HALF_EPILOGUE),
    ("1024,1024,2048", "bf16", "matmul", HALF_EPILOGUE),                    # bfloat16 inputs
    ("b=3,m=256,n=512,k=512", "bf16", "batch_matmul", BEST),
    ("b=3,m=256,n=512,k=512", "float16", "batch_matmul", BEST),             # float16 output
    ("b=3,m=256,n=512,k=512", "float16", "batch_matmul", TMA_EPILOGUE),
]


# 2x1 clusters multicasting B: persistent (fewer tiles than SMs; several tiles per cluster and a
# last group of 2 tile-row pairs at 2560 x 2816) and not, fp32 and fp16 out, 3 B chunks, batched
CLUSTER_CORRECT = [
    ("1024,1024,2048", None, "matmul", CLUSTER),
    ("2560,2816,512", None, "matmul", CLUSTER),
    ("4096,4096,1024", None, "matmul", dict(BEST, cluster_m=2)),
    ("1024,1024,1024", "float16", "matmul", dict(TMA_EPILOGUE, cluster_m=2)),
    ("768,512,1024", None, "matmul", dict(BEST, block_n=128, consumers=1, persistent=False,
                                          group_m=1, cluster_m=2)),
    ("512,768,1024", None, "matmul", dict(BEST, block_n=192, consumers=1, persistent=False,
                                          stages=5, cluster_m=2)),
    ("b=3,m=256,n=512,k=512", None, "batch_matmul", dict(BEST, cluster_m=2)),
    ("b=3,m=256,n=512,k=512", "float16", "batch_matmul", dict(TMA_EPILOGUE, cluster_m=2)),
    ("1024,1024,2048", "bf16", "matmul", CLUSTER),
]


@pytest.mark.parametrize("shape, accum, name, config", [
    *CORRECT, *(pytest.param(*case, id=f"clusters{i}") for i, case in enumerate(CLUSTER_CORRECT))])
@pytest.mark.gpu
@pytest.mark.skipif(not _has_sm90_gpu(), reason="needs an sm_90 GPU")
def test_family_matches_numpy(shape, accum, name, config):
    """Against numpy; `-k clusters` selects the cluster cases."""
    _matches_reference(shape, accum, name, config)


FRESH = """
import sys, numpy as np, tvm
f = tvm.runtime.load_module(sys.argv[1])["main"]
dev, rng = tvm.cuda(0), np.random.default_rng(2)
a = rng.uniform(-1, 1, (256, 512)).astype("float16"); b = rng.uniform(-1, 1, (512, 512)).astype("float16")
c = tvm.runtime.tensor(np.full((256, 512), np.nan, "float32"), dev)
f(tvm.runtime.tensor(a, dev), tvm.runtime.tensor(b, dev), c)
ref = a.astype("float32") @ b.astype("float32")
print(np.linalg.norm(c.numpy() - ref) / np.linalg.norm(ref))
"""


@pytest.mark.gpu
@pytest.mark.skipif(not _has_sm90_gpu(), reason="needs an sm_90 GPU")
def test_exported_kernel_runs_in_a_fresh_process(tmp_path):
    so = str(tmp_path / "k.so")
    build(gemm_func(256, 512, 512, GemmConfig(**BEST))).export_library(so)
    res = subprocess.run([sys.executable, "-c", FRESH, so], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    assert float(res.stdout.strip().splitlines()[-1]) < 1e-5


def test_module_reject_is_the_same_rule():
    assert reject(4096, 4096, 4096, GemmConfig(**BEST)) is None
    assert "divide" in reject(4096, 4096, 4000, GemmConfig(**BEST))


def test_recorded_gpu_measurements_replay_in_the_space():
    """The configs measured on the H200 are points of the space today (same knobs, accepted by
    reject), so a search over the space can replay them; their best is the one the table reports."""
    import json
    from pathlib import Path
    records = json.loads((Path(__file__).parent / "data" / "h200_hopper_gemm_measured.json").read_text())
    assert len(records) >= 20
    for r in records:
        g = r["shape"]
        name = "batch_matmul" if "b" in g else "matmul"
        shape = ",".join(f"{k}={g[k]}" for k in ("b", "m", "n", "k") if k in g)
        op = _op(shape, name, r["out_dtype"] if r["out_dtype"] == "float16" else None)
        space = HopperGemmSpace(op, H100)
        assert set(r["config"]) == {k.name for k in space.knobs}
        assert space.reject(r["config"]) is None
        assert r["rel_error"] <= op.tolerance and r["mj"] > 0
    fp16_4096 = [r for r in records if r["shape"] == {"m": 4096, "n": 4096, "k": 4096}
                 and r["out_dtype"] == "float16"]
    assert min(fp16_4096, key=lambda r: r["mj"])["config"]["epilogue"] == "tma"
    fp32_4096 = [r for r in records if r["shape"] == {"m": 4096, "n": 4096, "k": 4096}
                 and r["out_dtype"] == "float32"]
    best = min(fp32_4096, key=lambda r: r["mj"])["config"]
    assert best["epilogue"] == "tma_half"
    assert HopperGemmSpace(_op(), H100).seeds()[0] == best    # the space's first seed is it
