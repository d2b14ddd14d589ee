"""The dequant twin's knob space (lut_mpgemm impl=dequant, m = 1): registry, reject reasons,
mutators, emulated numerics on llvm for W1-W4 with and without zero points, CUDA source."""
from __future__ import annotations

import re
from itertools import islice

import numpy as np
import pytest
from tvm.target import Target

from energy_tuner.schedules import make_op
from energy_tuner.schedules.dequant_gemv_knobs import DequantGemvKnobs
from energy_tuner.schedules.knobs import knob_spaces
from tests.gemv_helpers import (SM90, check_emulation, cuda_source, mutated_knobs, op_inputs, ptx,
                                valid_samples)

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
    changed = mutated_knobs(s, s.sample(rng), rng, 400)
    assert set().union(*changed) == {k.name for k in s.knobs}


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
    check_emulation(s, {**BASE, **changes}, op_inputs(s))


def test_random_valid_configs_match_numpy():
    s = space(bits=3, zero_points=True)
    for seed, cfg in enumerate(islice(valid_samples(s, np.random.default_rng(3)), 6)):
        check_emulation(s, cfg, op_inputs(s, seed))


def test_cuda_source_has_one_wide_load_per_plane(tmp_path):
    s = DequantGemvKnobs(op(bits=4, zero_points=True, n=4096, k=4096), SM90, sms=132)
    cfg = {**BASE, "weights_per_load": 128, "load": "nc_no_allocate", "scale_apply": "chunk"}
    code = ptx(cuda_source(s, cfg), tmp_path)
    assert len(re.findall(r"ld\.global\.nc\.L1::no_allocate\.v4\.b32", code)) == 4   # 4 planes
