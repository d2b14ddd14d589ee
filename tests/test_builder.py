"""The Builder's pool on llvm: results in submission order; close neither waits for a build nor
runs the queued ones."""
import numpy as np
import psutil
import tvm

from energy_tuner.compiler.target import resolve
from energy_tuner.schedules import make_op
from tests.gated_builder import GatedBuilder, lines, wait_for

ROWS = (8, 16, 24)


def modules(count):
    return [tvm.IRModule({"main": make_op("matmul", f"{m},8,8", "float32").prim_func()})
            for m in ROWS[:count]]


def test_results_come_in_submission_order_when_builds_finish_out_of_order(tmp_path):
    log = tmp_path / "log"
    builder = GatedBuilder(resolve("llvm").target, str(tmp_path), workers=2, log=log,
                           gates={1: "end 2"})          # build 1 finishes after build 2
    try:
        results = builder.build(modules(2))
    finally:
        builder.close()
    assert [line for line in lines(log) if line.startswith("end")] == ["end 2", "end 1"]
    for built, m in zip(results, ROWS):                 # each result is its own module's kernel
        a, b = np.ones((m, 8), "float32"), np.ones((8, 8), "float32")
        c = tvm.runtime.tensor(np.zeros((m, 8), "float32"))
        tvm.runtime.load_module(built.artifact)["main"](tvm.runtime.tensor(a),
                                                        tvm.runtime.tensor(b), c)
        assert np.allclose(c.numpy(), a @ b)


def test_close_cancels_queued_builds_and_kills_the_running_one(tmp_path):
    log = tmp_path / "log"
    builder = GatedBuilder(resolve("llvm").target, str(tmp_path), workers=1, log=log,
                           gates={1: "never"})          # build 1 runs until it is killed
    futures = builder.submit(modules(3))
    pid = int(wait_for(log, "start 1 ").split()[2])
    builder.close()
    assert not psutil.pid_exists(pid)                   # killed and reaped, not waited for
    assert lines(log) == [f"start 1 {pid}"]             # never finished; 2 and 3 never started
    assert futures[1].cancelled() and futures[2].cancelled()
    assert futures[0].result().artifact is None         # the killed build is a build error
