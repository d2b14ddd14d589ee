"""The measurement worker survives kernels that crash or hang, for real, on llvm."""
import pytest
import tvm
from tvm.script import tirx as T

from energy_tuner.compiler.builder import build_to_file
from energy_tuner.measure.runner import MeasureConfig
from energy_tuner.measure.worker import IsolatedRunner, WorkerError, WorkerSpec
from energy_tuner.schedules import make_op
from tests.fake_powercap import ClockPowercap

OP = make_op("matmul", "16,16,16", "float32")


@T.prim_func(s_tir=True)
def crashes(A: T.Buffer((16, 16), "float32"), B: T.Buffer((16, 16), "float32"),
            C: T.Buffer((16, 16), "float32")):
    T.evaluate(T.call_extern("void", "abort"))


@T.prim_func(s_tir=True)
def spins(A: T.Buffer((16, 16), "float32"), B: T.Buffer((16, 16), "float32"),
          C: T.Buffer((16, 16), "float32")):
    while C[0, 0] == C[0, 0] or C[0, 0] != C[0, 0]:
        C[0, 0] = C[0, 0] + T.float32(1)


@T.prim_func(s_tir=True)
def slow(A: T.Buffer((16, 16), "float32"), B: T.Buffer((16, 16), "float32"),
         C: T.Buffer((16, 16), "float32")):
    """A correct matmul after a long dependent chain of float operations (a fraction of a second); x
    reaches its fixed point 0.5 exactly, which the compiler cannot know."""
    x = T.alloc_buffer((1,), "float32")
    x[0] = A[0, 0]
    for t in range(200000000):
        x[0] = x[0] * T.float32(0.5) + T.float32(0.25)
    for i, j in T.grid(16, 16):
        C[i, j] = x[0] - T.float32(0.5)
        for k in range(16):
            C[i, j] = C[i, j] + A[i, k] * B[k, j]


def artifact(func, path):
    return build_to_file(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}),
                         tvm.target.Target("llvm"), str(path))


@pytest.fixture(scope="module")
def kernels(tmp_path_factory):
    d = tmp_path_factory.mktemp("kernels")
    return {"good": artifact(OP.prim_func(), d / "good.so"),
            "crash": artifact(crashes, d / "crash.so"),
            "spin": artifact(spins, d / "spin.so"),
            "slow": artifact(slow, d / "slow.so")}


def spec(**overrides):
    config = MeasureConfig(latency_repeats=2, latency_min_repeat_ms=1)
    return WorkerSpec(**{"op": OP.describe(), "kind": "llvm", "device_index": 0,
                         "config": config, "seed": 0, "powercap": None, **overrides})


def test_crash_and_hang_are_recorded_and_the_worker_restarts(kernels):
    runner = IsolatedRunner(spec(), timeout_s=10)
    try:
        assert runner.run(kernels["good"]).status == "ok"
        crashed = runner.run(kernels["crash"])
        assert crashed.status == "run_error" and "crashed" in crashed.error
        assert runner.run(kernels["good"]).status == "ok"
        hung = runner.run(kernels["spin"])
        assert hung.status == "run_error" and "timed out" in hung.error
        after = runner.run(kernels["good"])
        assert after.status == "ok" and after.rel_error < OP.tolerance
        assert runner.restarts == 2
    finally:
        runner.close()


def test_worker_setup_failure_is_reported(tmp_path):
    with pytest.raises(WorkerError, match="no RAPL energy counters"):
        IsolatedRunner(spec(powercap=str(tmp_path / "none")))


def test_a_launched_worker_starts_on_its_first_run_and_reports_setup_failures_there(kernels,
                                                                                tmp_path):
    runner = IsolatedRunner(spec(), wait=False)
    try:
        assert runner.measurement == spec().measurement()        # the db key, before it started
        assert runner.run(kernels["good"]).status == "ok"
    finally:
        runner.close()
    failing = IsolatedRunner(spec(powercap=str(tmp_path / "none")), wait=False)
    try:
        with pytest.raises(WorkerError, match="no RAPL energy counters"):
            failing.run(kernels["good"])
    finally:
        failing.close()


def test_a_worker_measuring_otherwise_than_its_spec_says_is_refused(kernels):
    runner = IsolatedRunner(spec(), wait=False)
    try:
        runner.measurement = dict(runner.measurement, l2="rotate")   # what the db key assumed
        with pytest.raises(WorkerError, match="measures as"):
            runner.run(kernels["good"])
    finally:
        runner.close()


def test_timeout_grows_with_the_kernels_latency(kernels):
    """Measuring takes about five calls of the kernel; the base timeout is 2.5 calls (measured
    here first), so without scaling the wait after the first call would time out."""
    import time

    import numpy as np

    func = tvm.runtime.load_module(kernels["slow"])["main"]
    args = [tvm.runtime.tensor(np.zeros(s, "float32")) for s in ((16, 16),) * 3]
    started = time.perf_counter()
    func(*args)
    call_s = time.perf_counter() - started
    runner = IsolatedRunner(spec(), timeout_s=2.5 * call_s)
    try:
        result = runner.run(kernels["slow"])
        assert result.status == "ok", result.error
        assert runner.restarts == 0
    finally:
        runner.close()


def test_meter_failure_stops_with_a_harness_error_not_a_kernel_error(kernels, tmp_path):
    tree = ClockPowercap(tmp_path)
    with tree:
        runner = IsolatedRunner(spec(powercap=str(tmp_path)), timeout_s=60)
        try:
            assert runner.measurement["meter"] == "rapl"
            first = runner.run(kernels["good"])
            assert first.status == "ok" and first.energy_j > 0
            tree.stop()                                  # the counters freeze
            with pytest.raises(WorkerError, match="energy meter failed: RAPL counters .* did not "
                                                  "advance"):
                runner.run(kernels["good"])
        finally:
            runner.close()
