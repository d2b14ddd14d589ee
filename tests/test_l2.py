"""The L2 policy's bookkeeping and the gap-free launchers, run for real on llvm."""
from __future__ import annotations

import numpy as np
import pytest
import tvm
from tvm.script import tirx as T
from tvm.target import Target

from energy_tuner.measure import l2
from energy_tuner.schedules import make_op
from energy_tuner.schedules.gemv_knobs import GemvKnobs

N = 16


@T.prim_func
def accumulate(a: T.Buffer((N,), "float32"), out: T.Buffer((N,), "float32")):
    """out += a: after c calls on a set, its out holds c x a, so calls per set can be counted."""
    T.func_attr({"tir.noalias": True})
    for i in range(N):
        out[i] = out[i] + a[i]


@pytest.fixture(scope="module")
def kernel() -> tvm.runtime.Module:
    return tvm.compile(tvm.IRModule({"main": accumulate}), target="llvm").mod


def sets(count: int) -> list[list[tvm.runtime.Tensor]]:
    return [[tvm.runtime.tensor(np.arange(N, dtype="float32") + 100 * s),
             tvm.runtime.tensor(np.zeros(N, "float32"))] for s in range(count)]


def calls_per_set(arg_sets) -> list[float]:
    return [float(out.numpy()[1] / a.numpy()[1]) for a, out in arg_sets]


@pytest.mark.parametrize("set_bytes, l2_size, factor", [
    (117 << 20, 60 << 20, 3.0), (33 << 20, 60 << 20, 3.0), (1 << 20, 50 << 20, 2.0),
    (60 << 20, 60 << 20, 1.0), (470 << 20, 60 << 20, 3.0)])
def test_rotation_count_is_the_fewest_sets_exceeding_factor_l2(set_bytes, l2_size, factor):
    sets_needed = l2.rotation_count(set_bytes, l2_size, factor)
    assert sets_needed >= l2.MIN_SETS
    assert sets_needed * set_bytes > factor * l2_size
    if sets_needed > l2.MIN_SETS:
        assert (sets_needed - 1) * set_bytes <= factor * l2_size


def test_rotation_count_rejects_what_does_not_fit():
    with pytest.raises(ValueError, match="exceed"):
        l2.rotation_count(1 << 20, 60 << 20, max_bytes=64 << 20)
    with pytest.raises(ValueError):
        l2.rotation_count(0, 60 << 20)


def test_l2_size_from_device_or_default():
    assert l2.l2_bytes(tvm.cpu(), default=123) == 123      # the CPU device reports none
    with pytest.raises(ValueError, match="default"):
        l2.l2_bytes(tvm.cpu())


@pytest.mark.parametrize("count, calls", [(3, 7), (2, 2), (5, 1)])
def test_rotated_launcher_covers_every_set_in_compiled_rounds(kernel, count, calls):
    arg_sets = sets(count)
    timer = l2.rotated_timer(kernel, arg_sets, tvm.cpu())
    per_call = timer(calls)
    rounds = timer.reps(calls)
    assert rounds * count >= calls and (rounds - 1) * count < calls
    assert calls_per_set(arg_sets) == [rounds] * count
    assert per_call > 0


def test_rotated_gemv_kernel_is_correct_for_every_set():
    """The emulated GEMV template over 3 sets of different weights, each with its own output."""
    space = GemvKnobs(make_op("gemv", "64,1024", "float16"), Target({"kind": "cuda", "arch": "sm_90"}),
                      sms=2)
    cfg = {"threads_per_row": 16, "rows_per_cta": 4, "rows_per_thread": 1, "vector_bytes": 16,
           "unroll": 2,
           "ctas_per_sm": 2, "load": "plain", "prefetch": "none", "x_stage": "shared",
           "split_k": 2, "split_reduce": "two_pass"}
    ex = tvm.compile(space.module(cfg, emulate=True), target="llvm", **space.compile_options)
    rng = np.random.default_rng(0)
    host = [space.op.inputs(rng) for _ in range(3)]
    arg_sets = [[tvm.runtime.tensor(a) for a in inputs]
                + [tvm.runtime.tensor(np.full(64, np.nan, "float32"))] for inputs in host]
    l2.rotated_timer(ex.mod, arg_sets, tvm.cpu())(3)
    for inputs, args in zip(host, arg_sets):
        ref = space.op.reference(inputs)
        assert np.linalg.norm(args[-1].numpy() - ref) / np.linalg.norm(ref) <= space.op.tolerance


def test_latency_samples_are_long_enough(kernel):
    timer = l2.rotated_timer(kernel, sets(2), tvm.cpu())
    samples = timer.samples(repeats=3, min_repeat_s=1e-4)
    assert len(samples) == 3 and all(s > 0 for s in samples)


def test_flush_launchers_run_the_kernel_once_per_call_or_not_at_all(kernel):
    (args,) = sets(1)
    pair, flush_only = l2.flush_timer(kernel, args, tvm.cpu(), l2=1 << 16)
    assert int(pair.args[-1].shape[0]) * 4 == l2.FLUSH_FACTOR * (1 << 16)
    pair(4)
    assert calls_per_set([args]) == [4]
    flush_only(4)
    assert calls_per_set([args]) == [4]


def test_net_subtracts_the_flush():
    seconds, joules = l2.net(pair=(30e-6, 500.0), flush=(10e-6, 400.0))
    assert seconds == pytest.approx(20e-6)
    assert joules == pytest.approx(500.0 * 30e-6 - 400.0 * 10e-6)


def test_cuda_wrapper_builds_without_a_gpu():
    """The launcher for CUDA tensors is host code of a CUDA target: it builds without a driver."""
    class Spec:
        def __init__(self, shape, dtype):
            self.shape, self.dtype = shape, dtype

    arg_sets = [[Spec((64, 64), "float16"), Spec((64,), "float16"), Spec((64,), "float32")]] * 2
    target = Target({"kind": "cuda", "arch": "sm_90"}, host="llvm")
    ex = tvm.compile(tvm.IRModule({l2.WRAPPER: l2._wrapper(arg_sets, "main", None)}), target=target)
    assert ex.mod.kind == "llvm" or ex.mod.kind == "library"


def test_rotated_launcher_over_an_exported_library(kernel, tmp_path):
    """The runner loads kernels from exported .so files: the wrapper finds `main` there too."""
    path = str(tmp_path / "kernel.so")
    kernel.export_library(path)
    arg_sets = sets(2)
    l2.rotated_timer(tvm.runtime.load_module(path), arg_sets, tvm.cpu())(4)
    assert calls_per_set(arg_sets) == [2, 2]


@pytest.mark.gpu
def test_rotated_gemv_on_gpu_is_correct_for_every_set():
    from energy_tuner.compiler.target import nvidia_gpu_name

    if nvidia_gpu_name() is None:
        pytest.skip("no NVIDIA GPU")
    dev = tvm.cuda(0)
    target = Target.from_device(dev)
    space = GemvKnobs(make_op("gemv", "4096,4096", "float16"), target)
    cfg = {"threads_per_row": 32, "rows_per_cta": 4, "rows_per_thread": 1, "vector_bytes": 16,
           "unroll": 2,
           "ctas_per_sm": 0, "load": "nc_no_allocate", "prefetch": "none", "x_stage": "global",
           "split_k": 1, "split_reduce": "atomic"}
    ex = tvm.compile(space.module(cfg), target=target, **space.compile_options)
    rng = np.random.default_rng(0)
    host = [space.op.inputs(rng) for _ in range(3)]
    arg_sets = [[tvm.runtime.tensor(a, dev) for a in inputs]
                + [tvm.runtime.tensor(np.full(4096, np.nan, "float32"), dev)] for inputs in host]
    timer = l2.rotated_timer(ex.mod, arg_sets, dev)
    assert timer(30) > 0
    for inputs, args in zip(host, arg_sets):
        ref = space.op.reference(inputs)
        assert np.linalg.norm(args[-1].numpy() - ref) / np.linalg.norm(ref) <= space.op.tolerance


@pytest.mark.parametrize("name, shape, policy", [
    ("gemv", "4096,4096", "rotate"), ("linear", "16,14336,4096", "rotate"),
    ("matmul", "16,4096,4096", "rotate"), ("matmul", "17,4096,4096", "resident"),
    ("matmul", "4096,4096,4096", "resident"), ("lut_mpgemm", "m=1,n=4096,k=4096", "rotate"),
    ("lut_mpgemm", "m=64,n=4096,k=4096", "resident"),
    ("batch_matmul", "b=32,m=1,n=2048,k=128", "rotate"),
    ("conv2d", "n=1,h=56,w=56,c=64,k=64,r=3,s=3", "resident")])
def test_auto_rotates_the_ops_that_stream_their_weights(name, shape, policy):
    from energy_tuner.measure.l2_policy import l2_policy

    op = make_op(name, shape, "float16")
    assert l2_policy("auto", op) == policy
    assert l2_policy("resident", op) == "resident" and l2_policy("rotate", op) == "rotate"
    with pytest.raises(ValueError, match="unknown L2 policy 'dram'"):
        l2_policy("dram", op)


def test_rotated_measurements_are_a_measurement_of_their_own():
    """Rotated timing moved from a Python loop to compiled launches on GPUs: such records do not
    mix with the old ones, and resident records keep their identity."""
    from energy_tuner.measure.runner import MeasureConfig, measurement_identity, rotation_sets

    assert measurement_identity(MeasureConfig(l2="resident"), None) == {"l2": "resident", "meter": None}
    assert measurement_identity(MeasureConfig(l2="rotate"), None) == {
        "l2": "rotate", "meter": None, "rotate": 2}
    assert rotation_sets(1 << 30) == 2 and rotation_sets(33 << 20) == 8


@pytest.mark.gpu
@pytest.mark.skipif(not tvm.cuda(0).exist, reason="needs a CUDA GPU")
def test_rotated_runner_on_the_gpu_launches_from_compiled_code(tmp_path):
    """The runner's rotate policy on a GPU: the compiled, gap-free launcher over its rotated sets
    measures a correct kernel (a 1024 x 1024 GEMV takes a few µs, about a Python launch)."""
    from energy_tuner.measure.runner import MeasureConfig, Runner

    dev = tvm.cuda(0)
    target = Target.from_device(dev)
    space = GemvKnobs(make_op("gemv", "1024,1024", "float16"), target, sms=dev.multi_processor_count)
    path = tmp_path / "k.so"
    config = next(c for c in space.seeds() if space.reject(c) is None)
    tvm.compile(space.module(config), target=target).export_library(path)
    runner = Runner(space.op, dev, None, MeasureConfig(l2="rotate"))
    assert len(runner.arg_sets) > 2
    result = runner.run(str(path))
    assert result.status == "ok" and result.latency_s > 0, result
