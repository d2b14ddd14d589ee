"""The correctness check: planted wrong outputs must fail, correct low-precision outputs must pass.

The large cases are the ones a relative norm alone let through (issue 12): at fp16 accumulation,
4096x512x4096, a zeroed output row and a sign-flipped 16x16 tile; in an fp32 8192x8192 output,
one element 50% off. Outputs are numpy arrays fed to the checker; the last test is a real llvm
kernel that is right on its first call only.
"""
import numpy as np
import pytest
import tvm
from tvm.script import tirx as T

from energy_tuner.compiler.builder import build_to_file
from energy_tuner.measure.correctness import Expected, judge
from energy_tuner.measure.runner import MeasureConfig, Runner
from energy_tuner.schedules import make_op


@pytest.fixture(scope="module")
def fp16_accum():
    op = make_op("matmul", "4096,512,4096", "float16", {"accum": "float16"})
    return op, Expected.draw(op, np.random.default_rng(0))


def test_zeroed_row_fails_though_the_norm_passes(fp16_accum):
    op, expected = fp16_accum
    got = expected.output.astype("float16")
    got[1234] = 0
    verdict = judge(op, expected, got)
    assert verdict.rel_error < op.tolerance                 # the norm alone would pass it
    assert not verdict.ok and "element-wise bound" in verdict.problem


def test_sign_flipped_tile_fails_though_the_norm_passes(fp16_accum):
    op, expected = fp16_accum
    got = expected.output.astype("float16")
    got[512:528, 256:272] *= -1
    verdict = judge(op, expected, got)
    assert verdict.rel_error < op.tolerance
    assert not verdict.ok and "element-wise bound" in verdict.problem


def test_fp16_accumulation_in_tensor_core_steps_passes(fp16_accum):
    """float16 accumulator, 16 products summed exactly per step (as an mma.sync k-step)."""
    op, expected = fp16_accum
    a, b = (x.astype("float32") for x in expected.inputs)
    acc = np.zeros(op.output_shape, "float16")
    for k in range(0, a.shape[1], 16):
        acc = (acc.astype("float32") + a[:, k:k + 16] @ b[k:k + 16]).astype("float16")
    verdict = judge(op, expected, acc)
    assert verdict.ok, verdict.problem
    assert verdict.bound_ratio < 0.1


def test_fp16_accumulation_one_product_at_a_time_passes(fp16_accum):
    """The least accurate order: every product rounded into a float16 accumulator (64 rows)."""
    op, expected = fp16_accum
    rows = slice(0, 64)
    a, b = expected.inputs[0][rows].astype("float32"), expected.inputs[1].astype("float32")
    acc = np.zeros((64, op.output_shape[1]), "float16")
    for k in range(a.shape[1]):
        acc = (acc.astype("float32") + np.outer(a[:, k], b[k])).astype("float16")
    part = Expected([], expected.output[rows], expected.bound[rows])
    verdict = judge(op, part, acc)
    assert verdict.ok, verdict.problem


def test_one_element_off_in_a_large_fp32_output_fails():
    op = make_op("matmul", "8192,8192,16", "float32")
    expected = Expected.draw(op, np.random.default_rng(1))
    got = expected.output.copy()
    assert judge(op, expected, got).ok
    row = expected.output[4321]
    col = int(np.argmin(np.abs(np.abs(row) - np.sqrt(np.mean(row ** 2)))))  # a typical element
    got[4321, col] *= 1.5
    verdict = judge(op, expected, got)
    assert verdict.rel_error < op.tolerance
    assert not verdict.ok and "(4321, " in verdict.problem


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_elements_fail(bad):
    op = make_op("matmul", "32,32,32", "float32")
    expected = Expected.draw(op, np.random.default_rng(2))
    got = expected.output.copy()
    got[3, 4] = bad
    verdict = judge(op, expected, got)
    assert not verdict.ok and "NaN or Inf (first at (3, 4))" in verdict.problem


@pytest.mark.parametrize("name,shape,params", [
    ("gemv", "64,256", None), ("batch_matmul", "b=2,m=8,n=8,k=64", None),
    ("conv2d", "n=1,h=6,w=6,c=8,k=4,r=3,s=3,pad=1", None),
    ("lut_mpgemm", "m=2,n=16,k=128", {"wbits": 2, "group_size": 32, "zero_points": True,
                                      "impl": "dequant"})])
def test_every_op_has_a_bound_that_a_zeroed_element_breaks(name, shape, params):
    op = make_op(name, shape, "float32", params)
    expected = Expected.draw(op, np.random.default_rng(3))
    assert expected.bound.shape == expected.output.shape and (expected.bound > 0).all()
    assert judge(op, expected, expected.output.copy()).ok
    got = expected.output.copy()
    flat = got.reshape(-1)
    flat[int(np.argmax(np.abs(flat)))] = 0.0
    assert not judge(op, expected, got).ok


@T.prim_func(s_tir=True)
def right_once(A: T.Buffer((16, 16), "float32"), B: T.Buffer((16, 16), "float32"),
               C: T.Buffer((16, 16), "float32")):
    """C = A @ B when C arrives poisoned (NaN), as for the first check; zeros on later calls."""
    if T.reinterpret("uint32", C[0, 0]) == T.uint32(0x7FC00000):  # numpy's NaN (not folded away)
        for i, j in T.grid(16, 16):
            C[i, j] = T.float32(0)
            for k in range(16):
                C[i, j] = C[i, j] + A[i, k] * B[k, j]
    else:
        for i, j in T.grid(16, 16):
            C[i, j] = T.float32(0)


def test_a_kernel_right_only_on_its_first_call_is_caught_after_timing(tmp_path):
    op = make_op("matmul", "16,16,16", "float32")
    lib = build_to_file(tvm.IRModule({"main": right_once.with_attr("global_symbol", "main")}),
                        tvm.target.Target("llvm"), str(tmp_path / "right_once.so"))
    runner = Runner(op, tvm.cpu(0), None, MeasureConfig(latency_repeats=2, latency_min_repeat_ms=1))
    assert runner.check(tvm.runtime.load_module(lib)["main"]).ok      # passes the first check
    result = runner.run(lib)
    assert result.status == "wrong" and result.error.startswith("after timing:")
