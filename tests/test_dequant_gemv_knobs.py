"""The dequant twin's knob space (lut_mpgemm impl=dequant, m = 1): registry, reject reasons,
mutators, emulated numerics on llvm for W1-W4 with and without zero points, CUDA source."""
from __future__ import annotations

import re
import shutil
import subprocess

import numpy as np
import pytest
import tvm
from tvm.target import Target

from energy_tuner.schedules import make_op
from energy_tuner.schedules.dequant_gemv_knobs import DequantGemvKnobs
from energy_tuner.schedules.knobs import knob_spaces

SM90 = Target({"kind": "cuda", "arch": "sm_90a", "max_threads_per_block": 1024,
               "max_shared_memory_per_block": 232448, "thread_warp_size": 32})
BASE = {"threads_per_row": 32, "rows_per_cta": 4, "weights_per_load": 32, "unroll": 1,
        "ctas_per_sm": 0, "load": "plain", "prefetch": "none", "x_stage": "global",
        "split_k": 1, "split_reduce": "atomic", "scale_apply": "weight", "decode": "shift"}


def op(bits=2, zero_points=False, n=64, k=2048, group=128, m=1, impl="dequant"):
    return make_op("lut_mpgemm", f"m={m},n={n},k={k}", "float16",
                   {"wbits": bits, "group_size": group, "zero_points": zero_points, "impl": impl})


def space(**kw) -> DequantGemvKnobs:
    return DequantGemvKnobs(op(**kw), SM90, sms=2)


def test_applies_to_the_dequant_twin_at_m1_only():
    types = [type(s) for s in knob_spaces(op(), SM90)]
    assert DequantGemvKnobs in types and not any(t.name == "gemv-simt" for t in types)
    assert not DequantGemvKnobs.applies(op(m=2), SM90)
    assert not DequantGemvKnobs.applies(op(impl="lut"), SM90)
    assert not DequantGemvKnobs.applies(op(), Target("llvm"))


def test_reject_chunks_across_groups_and_accept_valid():
    s = space(group=32)
    assert s.reject({**BASE, "weights_per_load": 64}) == \
        "a chunk of 64 weights must lie inside a group of 32"
    assert s.reject(BASE) is None


def test_every_knob_mutates():
    s, rng = space(), np.random.default_rng(0)
    base = s.sample(rng)
    changed = set()
    for _ in range(400):
        child = s.mutate(base, rng)
        changed.update(name for name in base if child[name] != base[name])
    assert changed == {k.name for k in s.knobs}


def test_x_in_float32_counts_its_shared_memory():
    s = space(k=8192)
    assert s.shared_bytes({**BASE, "x_stage": "shared_f32"}) == 8192 * 4
    assert s.shared_bytes({**BASE, "x_stage": "shared"}) == 8192 * 2
    assert "shared memory" in DequantGemvKnobs(op(k=14336), SM90, sms=2).reject(
        {**BASE, "x_stage": "shared_f32"})


def test_features_count_packed_bytes():
    f = space(bits=4).features({**BASE, "weights_per_load": 128, "unroll": 2, "threads_per_row": 8})
    assert f["bytes_in_flight_per_thread"] == 2 * 4 * 16
    assert f["instructions_per_byte"] > 0
    nibble = space(bits=4).features({**BASE, "weights_per_load": 128, "unroll": 2,
                                     "threads_per_row": 8, "decode": "nibble"})
    assert nibble["decode_nibble"] == 1 and f["decode_nibble"] == 0
    assert nibble["instructions_per_byte"] < f["instructions_per_byte"]


def _run_emulated(s: DequantGemvKnobs, cfg: dict, seed: int = 0) -> float:
    ex = tvm.compile(s.module(cfg, emulate=True), target="llvm", **s.compile_options)
    inputs = s.op.inputs(np.random.default_rng(seed))
    out = tvm.runtime.tensor(np.full(s.op.output_shape, np.nan, "float32"))
    ex["main"](*[tvm.runtime.tensor(a) for a in inputs], out)
    ref, got = s.op.reference(inputs), out.numpy()
    return float(np.linalg.norm(got - ref) / np.linalg.norm(ref)) if np.isfinite(got).all() else np.inf


@pytest.mark.parametrize("bits, zero_points, changes", [
    (2, False, {}),
    (4, True, {"scale_apply": "chunk"}),
    (3, True, {"weights_per_load": 128, "threads_per_row": 8, "x_stage": "shared", "unroll": 2}),
    (1, False, {"weights_per_load": 64, "threads_per_row": 16, "split_k": 2,
                "split_reduce": "two_pass", "ctas_per_sm": 4, "scale_apply": "chunk"}),
    (2, True, {"threads_per_row": 32, "rows_per_cta": 1, "split_k": 2, "load": "nc"}),
    (4, True, {"decode": "nibble"}),
    (4, False, {"decode": "nibble", "scale_apply": "chunk", "weights_per_load": 128,
                "threads_per_row": 8, "unroll": 2}),
    (3, True, {"decode": "nibble", "weights_per_load": 64, "threads_per_row": 16}),
    (2, False, {"decode": "nibble", "scale_apply": "chunk", "split_k": 2}),
    (1, True, {"decode": "nibble", "weights_per_load": 64, "threads_per_row": 16}),
    (4, True, {"decode": "nibble", "x_stage": "shared_f32", "scale_apply": "chunk"}),
    (3, False, {"x_stage": "shared_f32", "split_k": 2, "split_reduce": "two_pass",
                "weights_per_load": 64, "threads_per_row": 8, "unroll": 2}),
])
def test_emulated_kernel_matches_numpy(bits, zero_points, changes):
    s = space(bits=bits, zero_points=zero_points)
    cfg = {**BASE, **changes}
    assert s.reject(cfg) is None
    assert _run_emulated(s, cfg) <= s.op.tolerance


def test_random_valid_configs_match_numpy():
    s, rng = space(bits=3, zero_points=True), np.random.default_rng(3)
    checked = 0
    while checked < 6:
        cfg = s.sample(rng)
        if s.reject(cfg) is None:
            assert _run_emulated(s, cfg, seed=checked) <= s.op.tolerance, cfg
            checked += 1


def test_cuda_source_has_one_wide_load_per_plane(tmp_path):
    s = DequantGemvKnobs(op(bits=4, zero_points=True, n=4096, k=4096), SM90, sms=132)
    cfg = {**BASE, "weights_per_load": 128, "load": "nc_no_allocate", "scale_apply": "chunk"}
    ex = tvm.compile(s.module(cfg), target=SM90, **s.compile_options)
    sources = [m.inspect_source() for m in ex.mod.imports if m.kind == "cuda"]
    if not sources or "__global__" not in sources[0]:
        pytest.skip("TVM compiled the CUDA module to a binary here (a driver is present)")
    if shutil.which("nvcc") is None:
        pytest.skip("nvcc is not installed")
    (tmp_path / "k.cu").write_text(sources[0])
    subprocess.run(["nvcc", "-gencode=arch=compute_90a,code=sm_90a", "-ptx", "-o",
                    str(tmp_path / "k.ptx"), str(tmp_path / "k.cu")], check=True, capture_output=True)
    ptx = (tmp_path / "k.ptx").read_text()
    assert len(re.findall(r"ld\.global\.nc\.L1::no_allocate\.v4\.b32", ptx)) == 4   # 4 planes
