"""The tensor-core fp16 GEMV space (schedules/gemv_mma.py): reject reasons, features, mutators,
the CPU emulation of its mma fragments against numpy on llvm (and that a wrong column mapping
fails it), CUDA source with mma.sync that nvcc compiles, and on a GPU the kernel itself."""
from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest
import tvm
from tvm.target import Target

from energy_tuner.schedules import make_op
from energy_tuner.schedules.gemv_mma import GemvMmaKnobs, _MmaWriter
from energy_tuner.schedules.knobs import knob_spaces
from tests.test_gemv_knobs import _run_emulated   # the same check: emulated on llvm vs numpy

SM90 = Target({"kind": "cuda", "arch": "sm_90a", "max_threads_per_block": 1024,
               "max_shared_memory_per_block": 232448, "thread_warp_size": 32})
BASE = {"warps": 4, "warps_k": 1, "unroll": 2, "ctas_per_sm": 0, "load": "plain",
        "prefetch": "none", "x_stage": "global", "split_k": 1, "split_reduce": "atomic"}
PATHS = {
    "a warp per 16 rows": {},
    "k-warps through shared": {"warps": 8, "warps_k": 4, "unroll": 1},
    "persistent, grid does not divide": {"ctas_per_sm": 4, "warps": 2},   # 8 CTAs, 10 blocks
    "x in shared, unroll 4": {"x_stage": "shared", "unroll": 4, "warps": 2, "warps_k": 2},
    "split-k atomics": {"split_k": 4, "unroll": 1},
    "split-k two passes, persistent": {"split_k": 2, "split_reduce": "two_pass", "ctas_per_sm": 2},
    "evict-first PTX path": {"load": "nc_evict_first", "prefetch": "L2::256B"},
}


def space(n=320, k=1024, sms=2, target=SM90) -> GemvMmaKnobs:
    return GemvMmaKnobs(make_op("gemv", f"{n},{k}", "float16"), target, sms=sms)


def config(**changes) -> dict:
    return {**BASE, **changes}


def test_registered_for_fp16_gemv_on_sm80_plus_only():
    gemv16 = make_op("gemv", "4096,4096", "float16")
    assert GemvMmaKnobs in [type(s) for s in knob_spaces(gemv16, SM90)]
    assert not GemvMmaKnobs.applies(gemv16, Target("llvm"))
    assert not GemvMmaKnobs.applies(make_op("gemv", "4096,4096", "float32"), SM90)
    assert not GemvMmaKnobs.auto


@pytest.mark.parametrize("changes, reason", [
    ({"warps": 2, "warps_k": 4}, "warps_k 4 does not divide warps 2"),
    ({"warps": 8}, "128 rows per CTA (16 x warps / warps_k) do not divide n=4112"),
    ({"split_k": 8, "unroll": 8, "warps": 8, "warps_k": 8}, "a step of 2048 columns"),
    ({"split_reduce": "two_pass"}, "split_reduce only matters with split_k > 1"),
    ({"prefetch": "L2::128B"}, "prefetch qualifiers apply to the ld.global.nc loads only"),
])
def test_reject_says_why(changes, reason):
    got = space(n=4112, k=4096).reject(config(**{"warps": 1, **changes}))
    assert got is not None and got.startswith(reason), got


def test_features_and_mutators():
    s = space(n=14336, k=4096, sms=132)
    f = s.features(config())
    assert f["threads"] == 128 and f["ctas"] == 14336 // 64 and f["bytes_in_flight_per_thread"] == 64
    assert s.features(config(unroll=8))["instructions_per_byte"] < f["instructions_per_byte"]
    rng, base, changed = np.random.default_rng(0), s.sample(np.random.default_rng(1)), set()
    for _ in range(300):
        child = s.mutate(base, rng)
        diff = [name for name in base if child[name] != base[name]]
        assert len(diff) == 1
        changed.update(diff)
    assert changed == {k.name for k in s.knobs}


@pytest.mark.parametrize("name", list(PATHS))
def test_emulated_kernel_matches_numpy(name):
    s, cfg = space(), config(**PATHS[name])
    assert s.reject(cfg) is None
    assert _run_emulated(s, cfg) <= s.op.tolerance


def test_random_valid_configs_match_numpy():
    s, rng, checked = space(), np.random.default_rng(5), 0
    while checked < 6:
        cfg = s.sample(rng)
        if s.reject(cfg) is None:
            assert _run_emulated(s, cfg, seed=checked) <= s.op.tolerance, cfg
            checked += 1


def test_a_wrong_fragment_mapping_fails_the_emulation(monkeypatch):
    """B fed from other halves than A's (x columns 4j+2, 4j+3 first): the sums are wrong."""
    right = _MmaWriter.fragments

    def swapped(self, u, j):
        a, b = right(self, u, j)
        return a, b[2:] + b[:2]
    monkeypatch.setattr(_MmaWriter, "fragments", swapped)
    assert _run_emulated(space(), config()) > 1e-2


@pytest.mark.parametrize("changes", [{}, {"load": "nc_no_allocate", "prefetch": "L2::128B",
                                          "warps": 8, "warps_k": 2, "unroll": 4},
                                     {"split_k": 2, "x_stage": "shared", "ctas_per_sm": 2}])
def test_cuda_source_has_mma_and_compiles(changes, tmp_path):
    s = space(n=4096, k=4096, sms=132)
    ex = tvm.compile(s.module(config(**changes)), target=SM90, **s.compile_options)
    sources = [m.inspect_source() for m in ex.mod.imports if m.kind == "cuda"]
    if not sources or "__global__" not in sources[0]:
        pytest.skip("TVM compiled the CUDA module to a binary here (a driver is present)")
    assert "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32" in sources[0]
    if shutil.which("nvcc") is None:
        pytest.skip("nvcc is not installed")
    cu = tmp_path / "k.cu"
    cu.write_text(sources[0])
    subprocess.run(["nvcc", "-gencode=arch=compute_90a,code=sm_90a", "-cubin", "-o",
                    str(tmp_path / "k.cubin"), str(cu)], check=True, capture_output=True)


def _gpu() -> bool:
    try:
        return tvm.cuda(0).exist
    except Exception:
        return False


@pytest.mark.gpu
@pytest.mark.skipif(not _gpu(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("changes", [{}, {"warps": 8, "warps_k": 4, "unroll": 1, "load": "nc"},
                                     {"split_k": 4, "ctas_per_sm": 2, "x_stage": "shared"},
                                     {"split_k": 2, "split_reduce": "two_pass", "unroll": 8,
                                      "load": "nc_evict_first"}])
def test_kernel_on_the_gpu_matches_numpy(changes):
    s = GemvMmaKnobs(make_op("gemv", "4096,4096", "float16"), Target.from_device(tvm.cuda(0)))
    ex = tvm.compile(s.module(config(**changes)), target=s.target, **s.compile_options)
    rng, dev = np.random.default_rng(0), tvm.cuda(0)
    w = rng.standard_normal((4096, 4096)).astype("float16")
    x = rng.standard_normal(4096).astype("float16")
    y = tvm.runtime.tensor(np.full(4096, np.nan, "float32"), dev)
    ex["main"](tvm.runtime.tensor(w, dev), tvm.runtime.tensor(x, dev), y)
    ref = s.op.reference([w, x])
    assert np.linalg.norm(y.numpy() - ref) / np.linalg.norm(ref) <= s.op.tolerance
