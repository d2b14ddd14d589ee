"""The Builder's pool on llvm: results in submission order; close neither waits for a build nor
runs the queued ones."""
import os
import shutil
import subprocess
import sys

import numpy as np
import psutil
import pytest
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


def test_a_module_maker_is_made_by_the_pool_and_a_failing_one_is_a_build_error(tmp_path):
    def broken():
        raise ValueError("tile does not divide the shape")

    builder = GatedBuilder(resolve("llvm").target, str(tmp_path), workers=1, log=tmp_path / "log",
                           gates={})
    try:
        made, failed = builder.build([lambda: modules(1)[0], broken])
    finally:
        builder.close()
    a, b = np.ones((8, 8), "float32"), np.ones((8, 8), "float32")
    c = tvm.runtime.tensor(np.zeros((8, 8), "float32"))
    tvm.runtime.load_module(made.artifact)["main"](tvm.runtime.tensor(a), tvm.runtime.tensor(b), c)
    assert np.allclose(c.numpy(), a @ b)
    assert failed.artifact is None and "module not made" in failed.error
    assert "tile does not divide the shape" in failed.error


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


LOWERING_IMPORTS = """
import sys, tvm
from tvm.target import Target
from energy_tuner.compiler.builder import compile_module
from energy_tuner.schedules import make_op
from energy_tuner.schedules.hopper_gemm import HopperGemmSpace
target = Target({"kind": "cuda", "arch": "sm_90a", "max_threads_per_block": 1024,
                 "max_shared_memory_per_block": 232448})
space = HopperGemmSpace(make_op("matmul", "256,256,256", "float16"), target)
compile_module(space.module(space.seeds()[0]), space.target, space.compile_options)
print("tensor_intrin" if "tvm.s_tir.tensor_intrin" in sys.modules else "without")
"""


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not installed")
def test_a_tirx_build_does_not_import_the_tensor_intrinsics():
    """TIRx kernels write their own PTX: a build process must not pay tensor_intrin's import
    (20-100 s, in every fresh build worker) for them."""
    out = subprocess.run([sys.executable, "-c", LOWERING_IMPORTS], capture_output=True, text=True,
                         env={**os.environ, "TVM_CUDA_COMPILE_MODE": "nvcc"})
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-1] == "without"
