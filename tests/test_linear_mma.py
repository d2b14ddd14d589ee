"""The tensor-core skinny GEMM space for `linear` (schedules/linear_mma.py): where it applies, reject
reasons, features, mutators, the CPU emulation of its mma fragments against numpy on llvm for
m = 2, 5, 8, 9, 16 (and that a wrong row or column mapping fails it), CUDA source with mma.sync
that nvcc compiles, and on a GPU the kernel itself."""
from __future__ import annotations

import numpy as np
import pytest
import tvm
from tvm.target import Target

from energy_tuner.schedules import make_op
from energy_tuner.schedules.knobs import knob_spaces
from energy_tuner.schedules.linear_mma import LinearMmaKnobs, _LinearWriter
from tests.gemv_helpers import (MMA_BASE, SM90, check_emulation, check_on_gpu, cuda_source,
                                has_gpu, mutated_knobs, nvcc, op_inputs, run_emulated)

PATHS = {
    "a warp per 16 rows": {},
    "k-warps through shared": {"warps": 8, "warps_k": 4, "unroll": 1},
    "persistent, grid does not divide": {"ctas_per_sm": 4, "warps": 2},   # 8 CTAs, 10 blocks
    "split-k atomics, unroll 4": {"split_k": 2, "unroll": 4, "warps": 2, "warps_k": 2},
    "split-k two passes, persistent": {"split_k": 2, "split_reduce": "two_pass", "ctas_per_sm": 2},
    "evict-first PTX path": {"load": "nc_evict_first", "prefetch": "L2::256B"},
}
# every path at m = 9 (two tiles, the second partial); two paths at each other m
CASES = [(9, name) for name in PATHS] + [
    (m, name) for m, names in ((2, ("a warp per 16 rows", "split-k two passes, persistent")),
                               (5, ("k-warps through shared", "evict-first PTX path")),
                               (8, ("persistent, grid does not divide", "a warp per 16 rows")),
                               (16, ("split-k atomics, unroll 4", "k-warps through shared")))
    for name in names]


def space(m=9, n=320, k=1024, sms=2, target=SM90) -> LinearMmaKnobs:
    return LinearMmaKnobs(make_op("linear", f"{m},{n},{k}", "float16"), target, sms=sms)


def config(**changes) -> dict:
    return {**MMA_BASE, **changes}


def test_registered_for_fp16_linear_up_to_16_rows_on_sm80_plus_only():
    for m in (1, 2, 16):
        op = make_op("linear", f"{m},4096,4096", "float16")
        assert LinearMmaKnobs in [type(s) for s in knob_spaces(op, SM90)]
    assert not LinearMmaKnobs.applies(make_op("linear", "8,4096,4096", "float16"), Target("llvm"))
    assert not LinearMmaKnobs.applies(make_op("linear", "8,4096,4096", "float32"), SM90)
    assert not LinearMmaKnobs.applies(make_op("gemv", "4096,4096", "float16"), SM90)
    wide = make_op("linear", "17,4096,4096", "float16")
    assert LinearMmaKnobs.why_not(wide, SM90).startswith("m=17 > 16")
    assert not LinearMmaKnobs.auto and space().seeds() == []


def test_reject_applies_gemv_mmas_rules_to_the_weights():
    """Rows per CTA must divide n and steps the k slice, whatever m is."""
    s = space(m=5, n=4112, k=4096)
    assert s.reject(config(warps=1)) is None
    assert s.reject(config(warps=8)).startswith("128 rows per CTA (16 x warps / warps_k) do not "
                                                "divide n=4112")
    assert s.reject(config(warps=8, warps_k=8, split_k=8, unroll=8)).startswith(
        "a step of 2048 columns")


def test_shared_memory_holds_the_k_warps_sums_of_every_tile():
    cfg = config(warps=8, warps_k=4)            # 32 rows x 4 k-warps
    assert space(m=5).shared_bytes(cfg) == 8 * 32 * 4 * 4
    assert space(m=9).shared_bytes(cfg) == 16 * 32 * 4 * 4
    assert space(m=9).shared_bytes(config()) == 0


def test_features_and_mutators():
    one, two = space(m=8, n=14336, k=4096, sms=132), space(m=16, n=14336, k=4096, sms=132)
    f = one.features(config())
    assert f["threads"] == 128 and f["ctas"] == 14336 // 64 and f["bytes_in_flight_per_thread"] == 64
    assert two.features(config())["instructions_per_byte"] > f["instructions_per_byte"]
    assert one.features(config(unroll=8))["instructions_per_byte"] < f["instructions_per_byte"]
    changed = mutated_knobs(one, one.sample(np.random.default_rng(1)), np.random.default_rng(0), 300)
    assert all(len(names) == 1 for names in changed)
    assert set().union(*changed) == {k.name for k in one.knobs} - {"x_stage"}   # global only


@pytest.mark.parametrize("m, name", CASES)
def test_emulated_kernel_matches_numpy(m, name):
    s = space(m=m)
    check_emulation(s, config(**PATHS[name]), op_inputs(s, seed=m))


@pytest.mark.parametrize("wrong", ["x rows", "output columns"])
def test_a_wrong_fragment_mapping_fails_the_emulation(monkeypatch, wrong):
    """B column g fed from row g + 1 of x, or accumulators 2c and 2c + 1 written to each other's
    activation rows: the outputs are wrong."""
    if wrong == "x rows":
        right = _LinearWriter.x_row
        monkeypatch.setattr(_LinearWriter, "x_row",
                            lambda self, t, tile: tvm.tirx.min(right(self, t, tile) + 1, self.m - 1))
    else:
        right = _LinearWriter.accumulators

        def swapped(self, t):
            for at, act, row in right(self, t):
                yield at ^ 1, act, row
        monkeypatch.setattr(_LinearWriter, "accumulators", swapped)
    s = space(m=9)
    assert run_emulated(s, config(), op_inputs(s)) > 1e-2


@pytest.mark.parametrize("m, changes", [
    (5, {}), (9, {"load": "nc_no_allocate", "prefetch": "L2::128B", "warps": 8, "warps_k": 2,
                  "unroll": 4}),
    (16, {"split_k": 2, "ctas_per_sm": 2, "load": "nc_evict_first"})])
def test_cuda_source_has_mma_and_compiles(m, changes, tmp_path):
    s = space(m=m, n=4096, k=4096, sms=132)
    source = cuda_source(s, config(**changes))
    assert "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32" in source
    calls = source.count("tvm_builtin_ptx_mma_sync_aligned_m16n8k16_row_col_f32_f16_f16_f32(")
    assert calls - 1 == 2 * s.tiles * int(config(**changes)["unroll"])   # besides its definition
    nvcc(source, tmp_path, "cubin")


@pytest.mark.gpu
@pytest.mark.skipif(not has_gpu(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("m", [2, 5, 8, 9, 16])
@pytest.mark.parametrize("changes", [{}, {"warps": 8, "warps_k": 4, "unroll": 1, "load": "nc"},
                                     {"split_k": 4, "ctas_per_sm": 2},
                                     {"split_k": 2, "split_reduce": "two_pass", "unroll": 8,
                                      "load": "nc_evict_first"}])
def test_kernel_on_the_gpu_matches_numpy(m, changes):
    s = LinearMmaKnobs(make_op("linear", f"{m},4096,4096", "float16"),
                       Target.from_device(tvm.cuda(0)))
    check_on_gpu(s, config(**changes), op_inputs(s))
