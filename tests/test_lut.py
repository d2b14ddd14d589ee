"""LUT-mpGEMM building blocks: packing round trips and the LUT computation against dequant+matmul."""
import numpy as np
import pytest

from energy_tuner.schedules.lut import (G, build_tables, lookup, lut_matmul, pack_bitplanes, quantize,
                           unpack_bitplanes)


@pytest.mark.parametrize("bits", [1, 2, 3, 4])
def test_bitplane_packing_round_trips(bits):
    q = np.random.default_rng(bits).integers(0, 2 ** bits, (6, 32)).astype("uint8")
    planes = pack_bitplanes(q, bits)
    assert planes.shape == (bits, 6, 32 // G) and planes.max() < 2 ** G
    np.testing.assert_array_equal(unpack_bitplanes(planes), q)


def test_tables_are_symmetric_and_exact():
    x = np.random.default_rng(0).uniform(-1, 1, (2, 8)).astype("float32")
    tables = build_tables(x)
    full = lookup(tables[:, :, None, :].repeat(2 ** G, 2).reshape(2, 2, 2 ** G, -1),
                  np.arange(2 ** G).reshape(1, 1, -1).repeat(2, 0).repeat(2, 1))
    for i in range(2 ** G):
        signs = np.where((i >> np.arange(G)) & 1, 1.0, -1.0)
        np.testing.assert_allclose(full[..., i], x.reshape(2, 2, G) @ signs, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(full[..., i], -full[..., ~i & (2 ** G - 1)], atol=1e-6)


@pytest.mark.parametrize("bits", [1, 2, 3, 4])
@pytest.mark.parametrize("group_size", [32, 128])
@pytest.mark.parametrize("zero_points", [False, True])
def test_lut_matmul_equals_dequantized_matmul(bits, group_size, zero_points):
    rng = np.random.default_rng(bits * 100 + group_size)
    w = rng.normal(0, 1, (24, 256)).astype("float32")
    x = rng.uniform(-1, 1, (3, 256)).astype("float32")
    qw = quantize(w, bits, group_size, zero_points)
    expected = x.astype("float64") @ qw.dequantize().astype("float64").T
    got = lut_matmul(x, qw)
    assert np.linalg.norm(got - expected) / np.linalg.norm(expected) < 1e-5
    # and the quantization itself is sane: error shrinks with more bits
    rel = np.linalg.norm(qw.dequantize() - w) / np.linalg.norm(w)
    assert rel < {1: 1.0, 2: 0.6, 3: 0.3, 4: 0.15}[bits]   # 1 bit min-max: ~0.95


@pytest.mark.parametrize("bits,group_size,message", [(5, 32, "1, 2, 3 or 4"),
                                                     (2, 30, "multiple of 4"),
                                                     (2, 96, "dividing k")])
def test_bad_layouts_are_rejected(bits, group_size, message):
    with pytest.raises(ValueError, match=message):
        quantize(np.zeros((4, 256), "float32"), bits, group_size, False)
