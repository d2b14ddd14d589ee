"""The tensor-core dequant GEMV space (lut_mpgemm impl=dequant, m = 1): the emulated mma against
the PTX fragment layout, emulated kernels against numpy on llvm (W1-W4, with and without zero
points), a wrong fragment-to-column mapping caught, rejects, knobs that change the code, CUDA
source with mma.sync compiled by nvcc, and (GPU) configs on the device."""
from __future__ import annotations

import re
from itertools import islice

import numpy as np
import pytest
import tvm
from tvm.script.ir_builder import tirx as T
from tvm.target import Target

from energy_tuner.schedules import dequant_gemv_mma, make_op
from energy_tuner.schedules.dequant_gemv_knobs import DequantGemvKnobs
from energy_tuner.schedules.dequant_gemv_mma import DequantGemvMma
from energy_tuner.schedules.knobs import knob_spaces
from energy_tuner.schedules.simt import Simt, half2_word, mma_m16n8k16, prim_func
from tests.gemv_helpers import (SM90, check_emulation, check_feature_rows, cuda_source, nvcc,
                                op_inputs, ptx, run_error, run_emulated, valid_samples)

BASE = {"row_warps": 2, "k_warps": 1, "thread_cols": 32, "unroll": 1, "mma_chains": 1,
        "fragment": "quad", "offset": "fold", "decode": "shift", "ctas_per_sm": 0, "load": "plain",
        "prefetch": "none", "split_k": 1, "split_reduce": "atomic"}


def op(bits=4, zero_points=False, n=64, k=1024, group=128, m=1, impl="dequant", layout=None):
    params = {"wbits": bits, "group_size": group, "zero_points": zero_points, "impl": impl}
    return make_op("lut_mpgemm", f"m={m},n={n},k={k}", "float16",
                   params if layout is None else {**params, "layout": layout})


def space(**kw) -> DequantGemvMma:
    return DequantGemvMma(op(**kw), SM90, sms=2)


# -- the emulated mma is PTX's m16n8k16 -----------------------------------------------------------
def mma_kernel(emulate: bool) -> tvm.IRModule:
    """One warp: A (16x16) and B (16x8) into fragments as the PTX ISA lays them out, one mma,
    D (16x8) out."""
    def body():
        a_in = T.arg("A", T.buffer((16, 16), "float16"))
        b_in = T.arg("B", T.buffer((16, 8), "float16"))
        d_out = T.arg("D", T.buffer((16, 8), "float32"))
        simt = Simt(32, emulate)
        with simt.launch([("blockIdx.x", 1)]):
            a, b, c = simt.reg((4,), "uint32"), simt.reg((2,), "uint32"), simt.reg((4,), "float32")
            with simt.threads() as t:
                g, q = (t % 32) // 4, t % 4
                for i, (row, col) in enumerate([(g, 2 * q), (g + 8, 2 * q), (g, 2 * q + 8),
                                                (g + 8, 2 * q + 8)]):
                    a.store(t, half2_word(a_in[row, col].astype("float32"),
                                          a_in[row, col + 1].astype("float32")), i)
                for i, k in enumerate([2 * q, 2 * q + 8]):
                    b.store(t, half2_word(b_in[k, g].astype("float32"),
                                          b_in[k + 1, g].astype("float32")), i)
                for i in range(4):
                    c.store(t, tvm.tirx.const(0.0, "float32"), i)
            with simt.threads() as t:
                mma_m16n8k16(simt, t, a, (0, 1, 2, 3), b, (0, 1), c, (0, 1, 2, 3))
            with simt.threads() as t:
                g, q = (t % 32) // 4, t % 4
                for i, (row, col) in enumerate([(g, 2 * q), (g, 2 * q + 1), (g + 8, 2 * q),
                                                (g + 8, 2 * q + 1)]):
                    T.buffer_store(d_out, c.load(t, i), [row, col])
    return tvm.IRModule({"main": prim_func("main", body)})


def _mma_inputs():
    rng = np.random.default_rng(0)
    return rng.integers(-8, 8, (16, 16)).astype("float16"), rng.integers(-8, 8, (16, 8)).astype("float16")


def test_emulated_mma_is_the_ptx_fragment_product():
    a, b = _mma_inputs()
    ex = tvm.compile(mma_kernel(emulate=True), target="llvm", tir_pipeline="tirx")
    d = tvm.runtime.tensor(np.full((16, 8), np.nan, "float32"))
    ex["main"](tvm.runtime.tensor(a), tvm.runtime.tensor(b), d)
    np.testing.assert_array_equal(d.numpy(), a.astype("float32") @ b.astype("float32"))


# -- the space -------------------------------------------------------------------------------------
def test_applies_to_the_dequant_twin_at_m1_only():
    types = [type(s) for s in knob_spaces(op(), SM90)]
    assert DequantGemvMma in types and DequantGemvKnobs in types
    assert not DequantGemvMma.applies(op(m=2), SM90)
    assert not DequantGemvMma.applies(op(impl="lut"), SM90)
    assert not DequantGemvMma.applies(op(), Target("llvm"))
    assert DequantGemvMma.auto and not DequantGemvKnobs.auto


def test_reject_reasons():
    s = space(group=64)
    assert s.reject(BASE) == ("a chain's span of 128 columns (quad x thread_cols) must lie "
                              "inside a group of 64")
    assert s.reject({**BASE, "fragment": "thread"}) is None
    assert "does not divide k/split_k=512" in space(k=1024).reject(
        {**BASE, "thread_cols": 128, "fragment": "thread", "split_k": 2, "k_warps": 2})
    assert "prefetch" in s.reject({**BASE, "fragment": "thread", "prefetch": "L2::128B"})
    assert "shared memory" in DequantGemvMma(op(k=32768), SM90, sms=2).reject(BASE)


def test_every_knob_mutates_and_changes_the_code():
    s, rng = space(k=2048, n=256), np.random.default_rng(0)
    base = {**BASE, "load": "nc", "split_k": 2, "fragment": "thread"}
    assert s.reject(base) is None
    changed = set()
    for _ in range(300):
        child = s.mutate(s.sample(rng), rng)
        changed.update(name for name in base if child[name] != base[name])
    assert changed == {k.name for k in s.knobs}
    text = str(s.module(base))
    for knob in s.knobs:
        other = next(v for v in knob.values if v != base[knob.name]
                     and s.reject({**base, knob.name: v}) is None)
        assert str(s.module({**base, knob.name: other})) != text, knob.name


def test_features_count_packed_bytes_and_fewer_instructions_than_simt():
    s = space(bits=4)
    cfg = {**BASE, "thread_cols": 128, "fragment": "thread", "unroll": 2}
    f = s.features(cfg)
    assert f["bytes_in_flight_per_thread"] == 2 * 2 * 4 * 16      # unroll x rows x planes x 16 B
    assert f["threads"] == 64 and f["rows_per_block"] == 32
    hsub = s.features({**cfg, "offset": "hsub2"})
    assert f["instructions_per_byte"] < hsub["instructions_per_byte"]
    assert s.features({**cfg, "decode": "scaled"})["instructions_per_byte"] < f["instructions_per_byte"]
    simt = DequantGemvKnobs(op(bits=4), SM90, sms=2).features(
        {"threads_per_row": 4, "rows_per_cta": 8, "weights_per_load": 128, "unroll": 2,
         "ctas_per_sm": 0, "load": "nc", "prefetch": "none", "x_stage": "shared", "split_k": 1,
         "split_reduce": "atomic", "scale_apply": "chunk", "decode": "nibble"})
    assert hsub["instructions_per_byte"] < simt["instructions_per_byte"]


# -- emulated numerics ------------------------------------------------------------------------------
def _inputs(s: DequantGemvMma, seed: int = 0, outliers: bool = False) -> list[np.ndarray]:
    """The op's random inputs; `outliers`: every 97th activation 3000 (a span's sum of products
    then overflows fp16, not float32)."""
    inputs = op_inputs(s, seed)
    if outliers:
        inputs[0][:, ::97] = 3000.0
    return inputs


@pytest.mark.parametrize("bits, zero_points, changes", [
    (4, False, {}),
    (4, True, {"offset": "hsub2"}),
    (2, False, {"fragment": "thread", "mma_chains": 4}),
    (2, True, {"k_warps": 2, "row_warps": 1, "unroll": 2, "split_k": 2, "split_reduce": "two_pass"}),
    (3, True, {"fragment": "thread", "ctas_per_sm": 1, "row_warps": 1, "split_k": 2, "load": "nc"}),
    (1, False, {"fragment": "thread", "offset": "hsub2", "k_warps": 4, "row_warps": 1}),
    (4, True, {"thread_cols": 128, "fragment": "thread", "mma_chains": 2, "decode": "scaled"}),
    (4, True, {"decode": "scaled", "offset": "hsub2", "unroll": 2}),
    (2, False, {"decode": "scaled", "fragment": "thread", "k_warps": 2, "split_k": 2}),
    (3, True, {"decode": "scaled", "row_warps": 4, "ctas_per_sm": 1}),
    (1, True, {"decode": "scaled", "mma_chains": 2, "split_k": 4}),
])
def test_emulated_kernel_matches_numpy(bits, zero_points, changes):
    s = space(bits=bits, zero_points=zero_points)
    check_emulation(s, {**BASE, **changes}, _inputs(s))


def test_random_valid_configs_match_numpy():
    s = space(bits=3, zero_points=True, k=512)
    narrow = (c for c in valid_samples(s, np.random.default_rng(5))
              if c["thread_cols"] == 32)                            # 128 columns: slow to emulate
    for seed, cfg in enumerate(islice(narrow, 3)):
        check_emulation(s, cfg, _inputs(s, seed))


@pytest.mark.parametrize("offset", ["fold", "hsub2"])
def test_activation_outliers_stay_accurate(offset):
    s = space(bits=4, zero_points=True)
    cfg = {**BASE, "offset": offset, "decode": "scaled", "fragment": "thread"}
    check_emulation(s, cfg, _inputs(s, outliers=True))


@pytest.mark.parametrize("bits, zero_points, changes", [
    (4, False, {"offset": "hsub2", "decode": "scaled", "unroll": 2}),
    (2, True, {"decode": "scaled", "fragment": "thread", "k_warps": 2, "split_k": 2}),
    (1, False, {"decode": "shift", "mma_chains": 2}),
])
def test_emulated_fields_layout_matches_numpy(bits, zero_points, changes):
    s = space(bits=bits, zero_points=zero_points, layout="fields")
    check_emulation(s, {**BASE, **changes}, _inputs(s))


def test_only_the_tensor_core_spaces_read_fields():
    fields = op(layout="fields")
    assert DequantGemvMma.applies(fields, SM90) and not DequantGemvKnobs.applies(fields, SM90)
    assert "decodes bit planes" in DequantGemvKnobs.why_not(fields, SM90)


@pytest.mark.parametrize("fragment", ["quad", "thread"])
def test_a_wrong_pairing_of_x_and_weights_fails(fragment, monkeypatch):
    """x staged with the pair's halves swapped (planes and fields layouts): B no longer matches
    A, and the emulated mma, which reads every thread's fragments, computes a different product."""
    for s in (space(bits=4), space(bits=2, layout="fields")):
        cfg = {**BASE, "fragment": fragment}
        check_emulation(s, cfg, _inputs(s))
        with monkeypatch.context() as patch:
            patch.setattr(dequant_gemv_mma, "pair_columns", lambda h: (h + 16, h))
            assert run_emulated(s, cfg, _inputs(s)) > 0.1


# -- CUDA ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bits, changes, loads", [
    (4, {"thread_cols": 128, "fragment": "thread", "load": "nc_no_allocate", "mma_chains": 2,
         "decode": "scaled"},
     r"ld\.global\.nc\.L1::no_allocate\.v4\.b32"),
    (2, {"thread_cols": 128, "fragment": "thread", "unroll": 2, "offset": "hsub2", "load": "nc",
         "prefetch": "L2::256B"}, r"ld\.global\.nc\.L2::256B\.v4\.b32"),
    (4, {"unroll": 2, "load": "nc_evict_first", "ctas_per_sm": 2, "k_warps": 2},
     r"ld\.global\.nc\.L2::cache_hint\.b32"),
])
def test_cuda_source_has_mma_and_compiles(bits, changes, loads, tmp_path):
    s = DequantGemvMma(op(bits=bits, n=28672, k=8192), SM90, sms=132)
    cfg = {**BASE, **changes}
    src = cuda_source(s, cfg)
    assert "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32" in src
    code = ptx(src, tmp_path)
    cols, unroll = int(cfg["thread_cols"]), int(cfg["unroll"])
    assert len(re.findall(r"mma\.sync\.aligned\.m16n8k16\.row\.col\.f32\.f16\.f16\.f32", code)) \
        == unroll * cols // 4                     # 8 mmas per 32 columns of a thread's two rows
    assert len(re.findall(loads, code)) == unroll * 2 * bits        # a load per plane and row
    assert ("sub.f16x2" in code) == (cfg["offset"] == "hsub2")


@pytest.mark.parametrize("bits, changes", [
    (4, {"thread_cols": 128, "fragment": "thread", "mma_chains": 4, "unroll": 2, "decode": "scaled",
         "load": "nc", "row_warps": 4}),
    (2, {"thread_cols": 128, "fragment": "thread", "k_warps": 4, "row_warps": 1, "unroll": 2}),
])
def test_registers_without_spills(bits, changes, tmp_path):
    """ptxas -v: the register arrays stay in registers (indices all constant) at the widest
    configs the bench plans."""
    s = DequantGemvMma(op(bits=bits, n=28672, k=8192), SM90, sms=132)
    out = nvcc(cuda_source(s, {**BASE, **changes}), tmp_path, "cubin", "-Xptxas", "-v")
    registers = [int(r) for r in re.findall(r"Used (\d+) registers", out)]
    assert registers and max(registers) <= 128
    assert re.findall(r"(\d+) bytes spill stores", out) == ["0"] * len(registers)
    assert "0 bytes stack frame" in out


# -- GPU ----------------------------------------------------------------------------------------------
GPU_CONFIGS = {
    "w4_fold_128": (4, False, {"thread_cols": 128, "fragment": "thread", "mma_chains": 2, "row_warps": 4,
                               "load": "nc_no_allocate"}),
    "w4_scaled_fold": (4, False, {"thread_cols": 128, "fragment": "thread", "mma_chains": 2,
                                  "row_warps": 4, "load": "nc_no_allocate", "decode": "scaled"}),
    "w4z_scaled_hsub2": (4, True, {"thread_cols": 128, "fragment": "thread", "decode": "scaled",
                                   "offset": "hsub2", "unroll": 2, "load": "nc"}),
    "w4z_hsub2_quad": (4, True, {"offset": "hsub2", "unroll": 2, "load": "nc"}),
    "w2_splitk_kwarps": (2, False, {"thread_cols": 128, "fragment": "thread", "k_warps": 2, "split_k": 2,
                                    "ctas_per_sm": 2, "load": "nc_evict_first"}),
    "w2z_two_pass": (2, True, {"thread_cols": 128, "fragment": "thread", "unroll": 2, "split_k": 2,
                               "split_reduce": "two_pass", "prefetch": "L2::128B", "load": "nc"}),
    "w4_fold_outliers": (4, True, {"thread_cols": 128, "fragment": "thread", "decode": "scaled",
                                   "outliers": True}),
    "w4_hsub2_outliers": (4, True, {"thread_cols": 128, "fragment": "thread", "decode": "scaled",
                                    "offset": "hsub2", "outliers": True}),
}


def _gpu_target() -> tuple:
    from energy_tuner.compiler.target import nvidia_gpu_name

    if nvidia_gpu_name() is None:
        pytest.skip("no NVIDIA GPU")
    dev = tvm.cuda(0)
    return dev, Target.from_device(dev)


@pytest.mark.gpu
def test_mma_on_gpu_is_the_emulated_one():
    dev, target = _gpu_target()
    a, b = _mma_inputs()
    ex = tvm.compile(mma_kernel(emulate=False), target=target, tir_pipeline="tirx")
    d = tvm.runtime.tensor(np.full((16, 8), np.nan, "float32"), dev)
    ex["main"](tvm.runtime.tensor(a, dev), tvm.runtime.tensor(b, dev), d)
    np.testing.assert_array_equal(d.numpy(), a.astype("float32") @ b.astype("float32"))


@pytest.mark.gpu
@pytest.mark.parametrize("name", list(GPU_CONFIGS))
def test_kernel_on_gpu_matches_numpy(name):
    dev, target = _gpu_target()
    bits, zero_points, changes = GPU_CONFIGS[name]
    s = DequantGemvMma(op(bits=bits, zero_points=zero_points, n=4096, k=4096), target)
    outliers = changes.get("outliers", False)
    cfg = {**BASE, **{k: v for k, v in changes.items() if k != "outliers"}}
    assert s.reject(cfg) is None
    ex = tvm.compile(s.module(cfg), target=target, **s.compile_options)
    assert run_error(ex, s, _inputs(s, outliers=outliers), dev) <= s.op.tolerance


def test_feature_rows_have_the_same_names_for_every_config():
    check_feature_rows(space(n=4096, k=4096))


def test_auto_picks_the_tensor_core_space_and_its_seeds_run_on_issue_shapes():
    from energy_tuner.compiler.spaces import choose_space

    for bits in (2, 4):
        for n, k in ((14336, 4096), (4096, 14336), (28672, 8192)):
            chosen = choose_space(op(bits=bits, n=n, k=k), SM90)
            assert isinstance(chosen, DequantGemvMma)
            assert chosen.seeds() and all(chosen.reject(c) is None for c in chosen.seeds())
    assert not isinstance(choose_space(op(impl="lut"), SM90), DequantGemvMma)
