"""The tensor-core fp16 GEMV space (schedules/gemv_mma.py): reject reasons, features, mutators,
the CPU emulation of its mma fragments against numpy on llvm (and that a wrong column mapping
fails it), CUDA source with mma.sync that nvcc compiles, and on a GPU the kernel itself."""
from __future__ import annotations

from itertools import islice

import numpy as np
import pytest
import tvm
from tvm.target import Target

from energy_tuner.schedules import make_op
from energy_tuner.schedules.gemv_mma import GemvMmaKnobs, _MmaWriter
from tests.gemv_helpers import (MMA_BASE, SM90, check_emulation, check_fp16_gemv_only,
                                check_on_gpu, cuda_source, gemv_inputs, has_gpu, mutated_knobs,
                                nvcc, run_emulated, valid_samples)

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
    return {**MMA_BASE, **changes}


def test_registered_for_fp16_gemv_on_sm80_plus_only():
    check_fp16_gemv_only(GemvMmaKnobs)
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
    changed = mutated_knobs(s, s.sample(np.random.default_rng(1)), np.random.default_rng(0), 300)
    assert all(len(names) == 1 for names in changed)
    assert set().union(*changed) == {k.name for k in s.knobs}


@pytest.mark.parametrize("name", list(PATHS))
def test_emulated_kernel_matches_numpy(name):
    s = space()
    check_emulation(s, config(**PATHS[name]), gemv_inputs(s))


def test_random_valid_configs_match_numpy():
    s = space()
    for seed, cfg in enumerate(islice(valid_samples(s, np.random.default_rng(5)), 6)):
        check_emulation(s, cfg, gemv_inputs(s, seed))


def test_a_wrong_fragment_mapping_fails_the_emulation(monkeypatch):
    """B fed from other halves than A's (x columns 4j+2, 4j+3 first): the sums are wrong."""
    right = _MmaWriter.fragments

    def swapped(self, u, j):
        a, b = right(self, u, j)
        return a, b[2:] + b[:2]
    monkeypatch.setattr(_MmaWriter, "fragments", swapped)
    s = space()
    assert run_emulated(s, config(), gemv_inputs(s)) > 1e-2


@pytest.mark.parametrize("changes", [{}, {"load": "nc_no_allocate", "prefetch": "L2::128B",
                                          "warps": 8, "warps_k": 2, "unroll": 4},
                                     {"split_k": 2, "x_stage": "shared", "ctas_per_sm": 2}])
def test_cuda_source_has_mma_and_compiles(changes, tmp_path):
    source = cuda_source(space(n=4096, k=4096, sms=132), config(**changes))
    assert "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32" in source
    nvcc(source, tmp_path, "cubin")


@pytest.mark.gpu
@pytest.mark.skipif(not has_gpu(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("changes", [{}, {"warps": 8, "warps_k": 4, "unroll": 1, "load": "nc"},
                                     {"split_k": 4, "ctas_per_sm": 2, "x_stage": "shared"},
                                     {"split_k": 2, "split_reduce": "two_pass", "unroll": 8,
                                      "load": "nc_evict_first"}])
def test_kernel_on_the_gpu_matches_numpy(changes):
    s = GemvMmaKnobs(make_op("gemv", "4096,4096", "float16"), Target.from_device(tvm.cuda(0)))
    check_on_gpu(s, config(**changes), gemv_inputs(s))
