"""Operator definitions and input parsing."""
import numpy as np
import pytest
import tvm

from schedules import OpError, make_op


def test_matmul_te_matches_numpy_on_llvm():
    op = make_op("matmul", "16,24,8", "float32")
    ex = tvm.compile(tvm.IRModule({"main": op.prim_func()}), target="llvm")
    inputs = op.inputs(np.random.default_rng(0))
    out = tvm.runtime.tensor(np.zeros(op.output_shape, op.output_dtype))
    ex["main"](*[tvm.runtime.tensor(x) for x in inputs], out)
    np.testing.assert_allclose(out.numpy(), inputs[0] @ inputs[1], rtol=1e-5, atol=1e-5)


def test_matmul_counts_and_reference():
    op = make_op("matmul", "4,5,6", "float16")
    assert op.flops == 2 * 4 * 5 * 6
    assert op.bytes_moved == (4 * 6 + 6 * 5) * 2 + 4 * 5 * 4
    a, b = op.inputs(np.random.default_rng(1))
    assert a.dtype == np.float16 and not np.all(a == a.flat[0])
    assert op.reference([a, b]).dtype == np.float32


@pytest.mark.parametrize("shape,fragment", [
    ("64,64", "3 comma-separated"), ("64,0,64", "positive"), ("a,b,c", "positive"),
    ("64,-1,64", "positive"), ("", "3 comma-separated")])
def test_bad_shapes_are_rejected(shape, fragment):
    with pytest.raises(OpError, match=fragment):
        make_op("matmul", shape, "float32")


def test_unknown_op_and_dtype():
    with pytest.raises(OpError, match="unknown op"):
        make_op("conv9", "1,1,1", "float32")
    with pytest.raises(OpError, match="dtype"):
        make_op("matmul", "1,1,1", "int8")
