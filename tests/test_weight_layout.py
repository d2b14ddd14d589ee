"""lut_mpgemm's weight layouts (schedules/weight_layout.py): the fields packing round-trips for
every width it supports (property test, groups 64 and 128, with and without zero points), puts
each column where the A fragment's pair wants it, the op refuses what the layout cannot hold,
its identity is unchanged without the option, and its TE definition reads the fields layout."""
from __future__ import annotations

import numpy as np
import pytest
import tvm
from hypothesis import given, settings
from hypothesis import strategies as st

from energy_tuner.schedules import OpError, lut, make_op, weight_layout
from energy_tuner.schedules.dequant_gemv_mma import pair_columns


def dequant_op(bits=2, layout=None, zero_points=False, group=128, shape="m=1,n=16,k=256",
               impl="dequant"):
    params = {"wbits": bits, "group_size": group, "zero_points": zero_points, "impl": impl}
    return make_op("lut_mpgemm", shape, "float16",
                   params if layout is None else {**params, "layout": layout})


@settings(max_examples=40, deadline=None)
@given(bits=st.sampled_from(weight_layout.FIELD_BITS), group=st.sampled_from((64, 128)),
       zero_points=st.booleans(), n=st.integers(1, 5), groups=st.integers(1, 3),
       seed=st.integers(0, 2 ** 32 - 1))
def test_fields_round_trip_the_quantized_codes(bits, group, zero_points, n, groups, seed):
    k = group * groups
    w = np.random.default_rng(seed).normal(size=(n, k))
    codes = lut.unpack_bitplanes(lut.quantize(w, bits, group, zero_points).planes)
    packed = weight_layout.pack_fields(codes, bits)
    assert packed.shape == (bits, n, k // 8) and packed.dtype == np.uint8
    np.testing.assert_array_equal(weight_layout.unpack_fields(packed), codes)


@given(bits=st.sampled_from(weight_layout.FIELD_BITS), seed=st.integers(0, 2 ** 32 - 1))
def test_planes_round_trip_through_either_layout(bits, seed):
    planes = lut.pack_bitplanes(np.random.default_rng(seed).integers(0, 2 ** bits, (3, 64),
                                                                     dtype="uint8"), bits)
    for layout in weight_layout.LAYOUTS:
        packed = weight_layout.pack_planes(planes, layout)
        np.testing.assert_array_equal(weight_layout.unpack_planes(packed, layout), planes)
    np.testing.assert_array_equal(weight_layout.pack_planes(planes, "planes"), lut.pack_bytes(planes))


@pytest.mark.parametrize("bits", weight_layout.FIELD_BITS)
def test_a_word_holds_the_fp16_pair_of_columns_h_and_h_plus_16(bits):
    """Field f of word e, low and high half, is the pair h = F e + f of the A fragment: one
    weight of value 1 at column c lands in word e at bit 16 s + bits f."""
    per = weight_layout.fields_per_half(bits)
    for h in range(16):
        e, f = divmod(h, per)
        for half, col in enumerate(pair_columns(h)):
            codes = np.zeros((1, 32), dtype="uint8")
            codes[0, col] = 1
            words = weight_layout.pack_fields(codes, bits).view("<u4")[:, 0, 0]
            expected = np.zeros(bits, dtype="uint32")
            expected[e] = 1 << (16 * half + bits * f)
            np.testing.assert_array_equal(words, expected)


@pytest.mark.parametrize("params, fragment", [
    ({"bits": 3}, "layout=fields packs 1, 2 or 4 bits"),
    ({"impl": "lut"}, "layout=fields is for --impl dequant"),
    ({"shape": "m=1,n=16,k=48", "group": 8}, "chunks of 32 columns, k=48"),
    ({"layout": "nibbles"}, "layout must be one of planes, fields"),
])
def test_the_op_refuses_what_the_layout_cannot_hold(params, fragment):
    with pytest.raises(OpError, match=fragment):
        dequant_op(**{"layout": "fields", **params})


def test_identity_and_inputs_unchanged_without_the_option():
    plain, fields = dequant_op(), dequant_op(layout="fields")
    assert "layout" not in plain.describe()["params"] and plain.layout == "planes"
    assert fields.describe()["params"]["layout"] == "fields"
    a, b = (op.inputs(np.random.default_rng(3)) for op in (plain, fields))
    np.testing.assert_array_equal(lut.unpack_bytes(a[1]),
                                  lut.pack_bitplanes(weight_layout.unpack_fields(b[1]), 2))
    np.testing.assert_array_equal(plain.reference(a), fields.reference(b))


@pytest.mark.parametrize("bits, zero_points", [(1, False), (2, True), (4, False)])
def test_te_definition_reads_the_fields_layout(bits, zero_points):
    op = dequant_op(bits, "fields", zero_points, group=64, shape="m=2,n=8,k=128")
    ins = op.inputs(np.random.default_rng(1))
    dev = tvm.cpu()
    out = tvm.runtime.tensor(np.zeros(op.output_shape, "float32"), dev)
    tvm.compile(tvm.IRModule({"main": op.prim_func()}), target="llvm")["main"](
        *[tvm.runtime.tensor(a, dev) for a in ins], out)
    ref = op.reference(ins)
    assert np.linalg.norm(out.numpy() - ref) / np.linalg.norm(ref) < op.tolerance
