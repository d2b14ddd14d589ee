"""Each bad input gives one line on stderr, exit code 2, and no traceback."""
import os
import subprocess
import sys

import pytest

from energy_tuner.compiler.target import nvidia_gpu_name

BASE = [sys.executable, "-m", "energy_tuner.compiler.cli"]


def run_tune(args, env=None):
    return subprocess.run(BASE + args, capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})})


def assert_one_line_error(proc, fragment):
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("tune: error:") and fragment in lines[0], lines[0]
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("args,fragment", [
    (["--op", "conv9"], "unknown op"),
    (["--op", "matmul", "--shape", "64,64"], "3 comma-separated"),
    (["--op", "matmul", "--shape", "64,0,64"], "positive"),
    (["--op", "matmul", "--shape", "x,y,z"], "positive"),
    (["--op", "matmul", "--dtype", "float16"], "not supported on target llvm"),
    (["--op", "matmul", "--trials", "0"], "--trials must be at least 1"),
    (["--op", "matmul", "--objective", "speed"], "invalid choice"),
    (["--shape", "1,1,1"], "--op"),
    (["--op", "matmul", "--max-slowdown", "0.5"], "--max-slowdown must be at least 1"),
    (["--op", "matmul", "--max-slowdown", "1.1", "--objective", "edp"], "bounds the energy"),
    (["--op", "matmul", "--energy-policy", "never"], "invalid choice"),
    (["--op", "gemv", "--accum", "float16"], "--accum applies to --op matmul only"),
    (["--op", "matmul", "--accum", "float16"], "float16 accumulation needs float16 inputs"),
    (["--op", "matmul", "--accum", "int8"], "invalid choice"),
])
def test_bad_input(args, fragment, tmp_path):
    assert_one_line_error(run_tune(args + ["--target", "llvm", "--db", str(tmp_path / "d.sqlite")]),
                          fragment)


def test_unwritable_db(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    proc = run_tune(["--op", "matmul", "--target", "llvm", "--db", str(blocker / "db.sqlite")])
    assert_one_line_error(proc, "cannot write tuning database")


def test_db_that_is_a_directory(tmp_path):
    proc = run_tune(["--op", "matmul", "--target", "llvm", "--db", str(tmp_path)])
    assert_one_line_error(proc, "cannot write tuning database")


@pytest.mark.parametrize("objective", [["--objective", "energy"], ["--objective", "pareto"],
                                       ["--max-slowdown", "1.05"]])
def test_energy_objective_without_meter(tmp_path, objective):
    proc = run_tune(["--op", "matmul", "--target", "llvm", *objective,
                     "--db", str(tmp_path / "d.sqlite")],
                    env={"ENERGY_TUNER_POWERCAP": str(tmp_path / "no-powercap")})
    assert_one_line_error(proc, "use --objective latency")


@pytest.mark.skipif(nvidia_gpu_name() is not None, reason="this machine has a GPU")
def test_cuda_target_without_gpu(tmp_path):
    proc = run_tune(["--op", "matmul", "--target", "cuda", "--db", str(tmp_path / "d.sqlite")])
    assert_one_line_error(proc, "no NVIDIA GPU")
