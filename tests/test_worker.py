"""The measurement worker survives kernels that crash or hang, for real, on llvm."""
import pytest
import tvm
from tvm.script import tirx as T

from energy_tuner.compiler.builder import build_to_file
from energy_tuner.measure.runner import MeasureConfig
from energy_tuner.measure.worker import IsolatedRunner, WorkerError, WorkerSpec
from energy_tuner.schedules import make_op

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


def artifact(func, path):
    return build_to_file(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}),
                         tvm.target.Target("llvm"), str(path))


@pytest.fixture(scope="module")
def kernels(tmp_path_factory):
    d = tmp_path_factory.mktemp("kernels")
    return {"good": artifact(OP.prim_func(), d / "good.so"),
            "crash": artifact(crashes, d / "crash.so"),
            "spin": artifact(spins, d / "spin.so")}


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
