"""The fp16 GEMV knob space: registry, reject reasons, features, mutators, numerics of the CPU
emulation on llvm, CUDA source that nvcc compiles with the loads the config asks for, and (on a
GPU) the kernel itself."""
from __future__ import annotations

import re
from itertools import islice

import numpy as np
import pytest
import tvm
from tvm.target import Target

from energy_tuner.schedules import make_op
from energy_tuner.schedules.gemv_knobs import GemvKnobs
from tests.gemv_helpers import (SM90, check_emulation, check_feature_rows, check_fp16_gemv_only,
                                cuda_source, gemv_inputs, mutated_knobs, nvcc, ptx, run_error,
                                run_emulated, valid_samples)

BASE = {"threads_per_row": 32, "rows_per_cta": 4, "rows_per_thread": 1, "vector_bytes": 16,
        "unroll": 1, "ctas_per_sm": 0, "load": "plain", "prefetch": "none", "x_stage": "global",
        "split_k": 1, "split_reduce": "atomic"}
# one config per structural path of the kernel (n = 96, k = 2048, 2 SMs in the emulation)
PATHS = {
    "warp per row": {},
    "sub-warp rows, 8-byte loads": {"threads_per_row": 8, "rows_per_cta": 8, "vector_bytes": 8},
    "rows across warps via shared": {"threads_per_row": 128, "rows_per_cta": 2, "unroll": 2},
    "persistent, grid does not divide": {"ctas_per_sm": 4, "rows_per_cta": 8,
                                         "threads_per_row": 4},
    "x in shared, unroll 4": {"x_stage": "shared", "unroll": 4, "threads_per_row": 16},
    "split-k atomics": {"split_k": 4, "threads_per_row": 16},
    "split-k two passes, persistent": {"split_k": 2, "split_reduce": "two_pass",
                                       "ctas_per_sm": 2, "x_stage": "shared"},
    "evict-first PTX path": {"load": "nc_evict_first", "prefetch": "L2::256B"},
    "one row, 4 warps": {"threads_per_row": 128, "rows_per_cta": 1},   # the clamp bug, see below
    "2 rows per thread": {"rows_per_thread": 2, "unroll": 2},
    "4 rows per thread across warps, persistent": {"rows_per_thread": 4, "threads_per_row": 64,
                                                   "rows_per_cta": 2, "ctas_per_sm": 1},
    "2 rows per thread, bulk": {"rows_per_thread": 2, "load": "bulk2", "rows_per_cta": 2},
    "bulk copies, 2 stages": {"load": "bulk2"},
    "bulk copies, ring across row blocks": {"load": "bulk3", "ctas_per_sm": 4, "rows_per_cta": 2,
                                            "threads_per_row": 64, "x_stage": "shared",
                                            "split_k": 2, "split_reduce": "two_pass"},
    "bulk copies, more stages than steps": {"load": "bulk4", "threads_per_row": 128,
                                            "rows_per_cta": 1, "ctas_per_sm": 8},
}


def space(n=96, k=2048, sms=2, target=SM90) -> GemvKnobs:
    return GemvKnobs(make_op("gemv", f"{n},{k}", "float16"), target, sms=sms)


def config(**changes) -> dict:
    return {**BASE, **changes}


def test_registered_for_fp16_gemv_on_sm80_plus_only():
    check_fp16_gemv_only(GemvKnobs)
    gemv16 = make_op("gemv", "4096,4096", "float16")
    assert not GemvKnobs.applies(gemv16, Target({"kind": "cuda", "arch": "sm_75"}))
    assert not GemvKnobs.applies(make_op("matmul", "64,64,64", "float16"), SM90)


@pytest.mark.parametrize("changes, reason", [
    ({"threads_per_row": 256, "rows_per_cta": 8}, "2048 threads per CTA > 1024"),
    ({"threads_per_row": 4, "rows_per_cta": 4}, "16 threads per CTA < one warp"),
    ({"rows_per_cta": 16, "threads_per_row": 4},
     "16 rows per CTA (rows_per_cta x rows_per_thread) do not divide n=4104"),
    ({"split_k": 8, "threads_per_row": 256, "rows_per_cta": 1, "unroll": 2},
     "a step of 4096 elements"),
    ({"split_reduce": "two_pass"}, "split_reduce only matters with split_k > 1"),
    ({"prefetch": "L2::128B"}, "prefetch qualifiers apply to the ld.global.nc loads only"),
    ({"load": "bulk2", "rows_per_cta": 1, "ctas_per_sm": 8, "threads_per_row": 32},
     "the bulk path needs the grid (16 CTAs) to divide the 4104 row blocks"),
])
def test_reject_says_why(changes, reason):
    got = space(n=4104, k=4096).reject(config(**changes))
    assert got is not None and got.startswith(reason), got


def test_bulk_needs_sm90():
    sm80 = space(n=4096, k=4096, target=Target({"kind": "cuda", "arch": "sm_80"}))
    assert sm80.reject(config(load="bulk3")) == "bulk copies (cp.async.bulk) need sm_90"
    assert space(n=4096, k=4096).reject(config(load="bulk3")) is None


def test_reject_shared_memory_and_accept_valid():
    big = space(n=4096, k=32768)
    assert "shared memory" in big.reject(config(x_stage="shared"))
    assert big.reject(config(x_stage="shared", split_k=2)) is None
    assert space(n=4096, k=4096).reject(config()) is None


def test_features_follow_the_config():
    s = space(n=14336, k=4096, sms=132)
    full = s.features(config())
    assert full["threads"] == 128 and full["ctas"] == 14336 // 4
    assert full["bytes_in_flight_per_thread"] == 16 and full["persistent"] == 0.0
    wide = s.features(config(unroll=4))
    assert wide["bytes_in_flight_per_thread"] == 64
    assert wide["instructions_per_byte"] < full["instructions_per_byte"]  # less loop overhead
    persistent = s.features(config(ctas_per_sm=2, split_k=2))
    assert persistent["ctas"] == 2 * 132 * 2 and persistent["persistent"] == 1.0
    assert persistent["waves"] < full["waves"]


def test_every_knob_mutates_and_one_at_a_time():
    s, rng = space(n=4096, k=4096), np.random.default_rng(0)
    changed = mutated_knobs(s, s.sample(rng), rng, 400)
    assert all(len(names) == 1 for names in changed)
    assert set().union(*changed) == {k.name for k in s.knobs}


def test_samples_on_issue_shapes_are_often_valid():
    rng = np.random.default_rng(1)
    for n, k in [(4096, 4096), (14336, 4096), (4096, 14336), (28672, 8192)]:
        s = space(n=n, k=k, sms=132)
        valid = sum(s.reject(s.sample(rng)) is None for _ in range(300))
        assert valid >= 15, (n, k, valid)


@pytest.mark.parametrize("name", list(PATHS))
def test_emulated_kernel_matches_numpy(name):
    s = space()
    check_emulation(s, config(**PATHS[name]), gemv_inputs(s))


def test_random_valid_configs_match_numpy():
    """A seeded sweep beyond the hand-picked paths (one row with 4 warps read out of bounds
    before the cross-warp step used if_then_else: found this way)."""
    s = space()
    for seed, cfg in enumerate(islice(valid_samples(s, np.random.default_rng(7)), 12)):
        check_emulation(s, cfg, gemv_inputs(s, seed))


@pytest.mark.parametrize("name", ["warp per row", "split-k two passes, persistent",
                                  "bulk copies, ring across row blocks", "2 rows per thread"])
def test_float16_output_rounds_the_float32_sums_once(name):
    """accum=float16 (a float16 model's gemv task): y is float16, each row summed in float32 and
    rounded once, so it is the float32 result to within float16's rounding (not just its
    tolerance); split-k by float32 atomics cannot add into it and is refused."""
    s = GemvKnobs(make_op("gemv", "96,2048", "float16", {"accum": "float16"}), SM90, sms=2)
    cfg, inputs = config(**PATHS[name]), gemv_inputs(s)
    assert s.reject(cfg) is None
    ex = tvm.compile(s.module(cfg, emulate=True), target="llvm", **s.compile_options)
    out = tvm.runtime.tensor(np.full(96, np.nan, "float16"))
    ex["main"](*[tvm.runtime.tensor(a) for a in inputs], out)
    exact = s.op.reference(inputs)
    np.testing.assert_allclose(out.numpy().astype("float32"), exact, rtol=2.0 ** -10, atol=1e-3)
    assert "two_pass only" in s.reject(config(split_k=2))


def test_emulation_catches_a_wrong_kernel(monkeypatch):
    """The check can fail: a kernel that skips the last step of k is caught."""
    s, cfg = space(), config()
    monkeypatch.setattr(GemvKnobs, "k_slice", lambda self, c: self.k // int(c["split_k"]) - 256)
    assert run_emulated(s, cfg, gemv_inputs(s)) > 1e-2


@pytest.mark.parametrize("changes, pattern", [
    ({}, r"ld\.global(\.nc)?\.v4\.(u|b)32"),
    ({"vector_bytes": 8}, r"ld\.global(\.nc)?\.(v2\.(u|b)32|v4\.u16)"),   # 8 bytes either way
    ({"load": "nc"}, r"ld\.global\.nc\.v4\.b32"),
    ({"load": "nc", "rows_per_thread": 4, "threads_per_row": 64}, r"ld\.global\.nc\.v4\.b32"),
    ({"load": "nc_no_allocate", "prefetch": "L2::128B"},
     r"ld\.global\.nc\.L1::no_allocate\.L2::128B\.v4\.b32"),
    ({"load": "nc_evict_first", "split_k": 2, "split_reduce": "two_pass"},
     r"ld\.global\.nc\.L2::cache_hint\.v4\.b32"),
    ({"threads_per_row": 128, "rows_per_cta": 2, "ctas_per_sm": 4, "x_stage": "shared",
      "split_k": 2, "unroll": 2}, r"red\.global\.add\.f32|atom\.global\.add\.f32"),
    ({"load": "bulk3", "ctas_per_sm": 4, "threads_per_row": 64, "rows_per_cta": 8},
     r"cp\.async\.bulk\.shared::cluster\.global\.mbarrier::complete_tx::bytes"),
])
def test_cuda_source_compiles_with_the_requested_loads(changes, pattern, tmp_path):
    source = cuda_source(space(n=4096, k=4096, sms=132), config(**changes))
    nvcc(source, tmp_path, "cubin")
    assert re.search(pattern, ptx(source, tmp_path)), pattern


@pytest.mark.gpu
@pytest.mark.parametrize("name", list(PATHS))
def test_kernel_on_gpu_matches_numpy(name):
    from energy_tuner.compiler.target import nvidia_gpu_name

    if nvidia_gpu_name() is None:
        pytest.skip("no NVIDIA GPU")
    dev = tvm.cuda(0)
    target = Target.from_device(dev)
    # a grid of 128 SMs' worth of CTAs divides the row blocks of every path (the H200's 132 does
    # not for the bulk ring); the grid size does not change what a correct kernel computes
    s = GemvKnobs(make_op("gemv", "4096,4096", "float16"), target, sms=128)
    cfg = config(**PATHS[name])
    assert s.reject(cfg) is None
    ex = tvm.compile(s.module(cfg), target=target, **s.compile_options)
    assert run_error(ex, s, gemv_inputs(s), dev) <= s.op.tolerance


def test_feature_rows_have_the_same_names_for_every_config():
    check_feature_rows(space(n=4096, k=4096, sms=132))


def test_auto_picks_the_simt_space_for_fp16_gemv_and_its_seeds_run_on_issue_shapes():
    """On sm_90 the TMA + wgmma space takes n >= 4096 (tests/test_gemv_wgmma.py); the SIMT
    space takes the rest, and its seeds run on every issue shape (named, as on sm_80)."""
    from energy_tuner.compiler.spaces import choose_space

    for n, k in [(1024, 4096), (2048, 4096), (4096, 4096), (14336, 4096), (4096, 14336), (28672, 8192)]:
        op = make_op("gemv", f"{n},{k}", "float16")
        assert (type(choose_space(op, SM90)) is GemvKnobs) == (n < 4096)
        chosen = choose_space(op, SM90, "gemv-simt")
        assert len(chosen.seeds()) == 3 and all(chosen.reject(c) is None for c in chosen.seeds())
