"""Operator definitions and input parsing."""
import numpy as np
import pytest
import tvm

from energy_tuner.schedules import OpError, make_op


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


CASES = [("matmul", "16,24,8"), ("linear", "5,24,40"), ("linear", "m=1,n=8,k=16"), ("batch_matmul", "b=2,m=8,n=12,k=5"), ("gemv", "24,40"),
         ("gemv", "n=24,k=40"), ("conv2d", "n=2,h=9,w=7,c=3,k=5,r=3,s=2,stride=2,pad=1"),
         ("conv2d", "n=1,h=6,w=6,c=4,k=3,r=1,s=1"), ("conv2d", "n=1,h=6,w=6,c=4,k=3,r=1,s=1,pad=0")]


@pytest.mark.parametrize("name,shape", CASES)
def test_every_op_matches_its_numpy_reference_on_llvm(name, shape):
    op = make_op(name, shape, "float32")
    ex = tvm.compile(tvm.IRModule({"main": op.prim_func()}), target="llvm")
    inputs = op.inputs(np.random.default_rng(0))
    out = tvm.runtime.tensor(np.full(op.output_shape, np.nan, op.output_dtype))
    ex["main"](*[tvm.runtime.tensor(x) for x in inputs], out)
    ref = op.reference(inputs)
    assert np.linalg.norm(out.numpy() - ref) / np.linalg.norm(ref) < op.tolerance


def test_conv2d_reference_against_a_direct_loop():
    op = make_op("conv2d", "n=1,h=5,w=4,c=2,k=3,r=3,s=2,stride=2,pad=1", "float32")
    data, weight = op.inputs(np.random.default_rng(3))
    padded = np.pad(data, ((0, 0), (1, 1), (1, 1), (0, 0)))
    _, oh, ow, k = op.output_shape
    direct = np.zeros(op.output_shape, "float32")
    for y in range(oh):
        for x in range(ow):
            patch = padded[0, 2 * y:2 * y + 3, 2 * x:2 * x + 2, :]
            direct[0, y, x] = np.einsum("rsc,rsck->k", patch, weight)
    np.testing.assert_allclose(op.reference([data, weight]), direct, rtol=1e-5, atol=1e-5)
    assert op.flops == 2 * oh * ow * k * 3 * 2 * 2


@pytest.mark.parametrize("name,shape,fragment", [
    ("batch_matmul", "2,8,12,5", "key=value"),
    ("batch_matmul", "b=2,m=8,n=12", "lacks k"),
    ("batch_matmul", "b=2,m=8,n=12,k=5,z=1", "key=value"),
    ("conv2d", "n=1,h=2,w=2,c=1,k=1,r=3,s=3", "does not fit"),
    ("conv2d", "n=1,h=8,w=8,c=1,k=1,r=3,s=3,stride=0", "positive"),
    ("gemv", "n=0,k=4", "positive"),
    ("conv2d", "n=1,h=8,w=8,c=1,k=1,r=3,s=3,pad=-1", "non-negative"),
])
def test_bad_key_value_shapes(name, shape, fragment):
    with pytest.raises(OpError, match=fragment):
        make_op(name, shape, "float32")


def test_key_value_and_positional_shapes_agree():
    assert make_op("matmul", "m=4,n=5,k=6", "float32").shape == \
        make_op("matmul", "4,5,6", "float32").shape == {"m": 4, "n": 5, "k": 6}
    conv = make_op("conv2d", "n=1,h=8,w=8,c=2,k=2,r=3,s=3", "float32")
    assert conv.shape["stride"] == 1 and conv.shape["pad"] == 0


@pytest.mark.parametrize("name, shape, batch", [("matmul", "16,24,512", 1),
                                                ("batch_matmul", "b=3,m=16,n=24,k=512", 3)])
def test_float16_accumulation_matches_numpy_within_its_bound_on_llvm(name, shape, batch):
    op = make_op(name, shape, "float16", {"accum": "float16"})
    assert op.output_dtype == "float16"
    assert op.bytes_moved == batch * (16 * 512 + 512 * 24 + 16 * 24) * 2
    ex = tvm.compile(tvm.IRModule({"main": op.prim_func()}), target="llvm")
    inputs = op.inputs(np.random.default_rng(0))
    out = tvm.runtime.tensor(np.full(op.output_shape, np.nan, "float16"))
    ex["main"](*[tvm.runtime.tensor(x) for x in inputs], out)
    ref = op.reference(inputs)
    assert np.linalg.norm(out.numpy() - ref) / np.linalg.norm(ref) < op.tolerance
    # the default (float32 accumulation) keeps the workload identity it always had
    assert "params" not in make_op(name, shape, "float16").describe()


def test_float16_accumulation_bound_passes_rounding_and_fails_dropped_products():
    k = 4096
    op = make_op("matmul", f"32,32,{k}", "float16", {"accum": "float16"})
    a, b = op.inputs(np.random.default_rng(1))
    ref = op.reference([a, b])
    rel = lambda out: np.linalg.norm(out.astype(np.float64) - ref) / np.linalg.norm(ref)  # noqa: E731
    acc = np.zeros((32, 32), np.float16)       # one product at a time, rounded to float16
    for i in range(k):
        acc = (acc + np.outer(a[:, i], b[i]).astype(np.float16)).astype(np.float16)
    assert rel(acc) < op.tolerance / 2
    dropped = a[:, : k - k // 64].astype(np.float32) @ b[: k - k // 64].astype(np.float32)
    assert rel(dropped) > 2 * op.tolerance


def test_bfloat16_inputs_for_the_dense_products_only():
    for name, shape in (("matmul", "64,32,128"), ("batch_matmul", "b=2,m=16,n=8,k=32")):
        op = make_op(name, shape, "bfloat16")
        a, b = op.inputs(np.random.default_rng(0))
        assert str(a.dtype) == "bfloat16" and op.output_dtype == "float32"
        exact = a.astype("float64") @ b.astype("float64")
        assert np.allclose(op.reference([a, b]), exact, rtol=1e-5, atol=1e-5)
        assert op.bytes_moved == 2 * (a.size + b.size) + 4 * exact.size
    for name, shape in (("gemv", "64,64"), ("conv2d", "1,8,8,4,4,3,3")):
        with pytest.raises(OpError, match="does not support dtype 'bfloat16'"):
            make_op(name, shape, "bfloat16")
    with pytest.raises(OpError, match="float16 accumulation needs float16 inputs"):
        make_op("matmul", "64,64,64", "bfloat16", {"accum": "float16"})


def test_linear_is_x_times_w_transposed_with_matmul_bounds():
    """linear y = x W^T on W as nn.Linear stores it (n x k); float16 in, float32 out, and the
    element-wise bound catches one element off that the norm alone would let through."""
    from energy_tuner.measure.correctness import Expected, judge

    op = make_op("linear", "9,64,512", "float16")
    assert op.input_shapes == [(9, 512), (64, 512)] and op.output_shape == (9, 64)
    assert op.flops == 2 * 9 * 64 * 512 and op.output_dtype == "float32"
    assert op.bytes_moved == (9 * 512 + 64 * 512) * 2 + 9 * 64 * 4
    x, w = op.inputs(np.random.default_rng(2))
    exact = x.astype("float64") @ w.astype("float64").T
    np.testing.assert_allclose(op.reference([x, w]), exact, rtol=1e-5, atol=1e-5)
    ex = tvm.compile(tvm.IRModule({"main": op.prim_func()}), target="llvm")
    out = tvm.runtime.tensor(np.full(op.output_shape, np.nan, "float32"))
    ex["main"](tvm.runtime.tensor(x), tvm.runtime.tensor(w), out)
    expected = Expected([x, w], op.reference([x, w]), op.error_bound([x, w]))
    assert judge(op, expected, out.numpy()).ok
    wrong = out.numpy().copy()
    wrong[4, 7] += 3 * expected.bound[4, 7]         # one element off by 3x its bound
    assert "beyond the element-wise bound" in judge(op, expected, wrong).problem
    with pytest.raises(OpError, match="does not support dtype 'bfloat16'"):
        make_op("linear", "2,8,8", "bfloat16")
