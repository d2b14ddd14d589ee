"""Each bad input gives one line on stderr, exit code 2, and no traceback.

Most cases run `main` in this process (validation needs no subprocess); two run the real command
line to show that a process prints the same single line. A hypothesis test fuzzes the arguments.
"""
import os
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from energy_tuner.compiler.cli import bad_input, main, prepare
from energy_tuner.compiler.target import nvidia_gpu_name

BASE = [sys.executable, "-m", "energy_tuner.compiler.cli"]


def run_tune(args, env=None):
    return subprocess.run(BASE + args, capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})})


def assert_one_line(returncode, stderr, fragment):
    assert returncode == 2, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("tune: error:") and fragment in lines[0], lines[0]
    assert "Traceback" not in stderr


def assert_one_line_error(proc, fragment):
    """`assert_one_line` for a finished subprocess."""
    assert_one_line(proc.returncode, proc.stderr, fragment)


def tune_in_process(args, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    return exit_info.value.code, capsys.readouterr().err


@pytest.mark.parametrize("args,fragment", [
    (["--op", "conv9"], "unknown op"),
    (["--op", "matmul", "--shape", "64,64"], "3 comma-separated"),
    (["--op", "matmul", "--shape", "64,0,64"], "positive"),
    (["--op", "matmul", "--shape", "x,y,z"], "positive"),
    (["--op", "matmul", "--shape", ""], "--shape is empty"),
    (["--op", "matmul", "--shape", "1000000,1000000,1000000"], "GiB of host memory"),
    (["--op", "matmul", "--dtype", "float16"], "not supported on target llvm"),
    (["--op", "matmul", "--trials", "0"], "--trials must be at least 1"),
    (["--op", "matmul", "--seed", "-3"], "--seed must be in"),
    (["--op", "matmul", "--objective", "speed"], "invalid choice"),
    (["--shape", "1,1,1"], "--op"),
    (["--op", "matmul", "--max-slowdown", "0.5"], "--max-slowdown must be at least 1"),
    (["--op", "matmul", "--max-slowdown", "nan"], "--max-slowdown must be at least 1"),
    (["--op", "matmul", "--max-slowdown", "1.1", "--objective", "edp"], "bounds the energy"),
    (["--op", "matmul", "--energy-policy", "never"], "invalid choice"),
    (["--op", "gemv", "--accum", "float16"], "--accum applies to --op matmul and batch_matmul only"),
    (["--op", "matmul", "--accum", "float16"], "float16 accumulation needs float16 inputs"),
    (["--op", "matmul", "--accum", "int8"], "invalid choice"),
    (["--op", "lut_mpgemm", "--group-size", "0"], "--group-size 0 must be a positive multiple"),
    (["--op", "lut_mpgemm", "--group-size", "-16", "--impl", "dequant"],
     "--group-size -16 must be a positive multiple"),
    (["--op", "lut_mpgemm", "--wbits", "5"], "--wbits must be 1, 2, 3 or 4"),
    (["--op", "matmul", "--weight-layout", "fields"], "--weight-layout applies to --op lut_mpgemm"),
    (["--op", "lut_mpgemm", "--weight-layout", "fields", "--impl", "lut"],
     "applies to --impl dequant only"),
    (["--op", "lut_mpgemm", "--weight-layout", "fields", "--wbits", "3"],
     "layout=fields packs 1, 2 or 4 bits"),
])
def test_bad_input(args, fragment, tmp_path, capsys):
    code, err = tune_in_process(args + ["--target", "llvm", "--db", str(tmp_path / "d.sqlite")],
                                capsys)
    assert_one_line(code, err, fragment)


def test_unwritable_db(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    code, err = tune_in_process(["--op", "matmul", "--target", "llvm",
                                 "--db", str(blocker / "db.sqlite")], capsys)
    assert_one_line(code, err, "cannot write tuning database")


def test_db_that_is_a_directory(tmp_path, capsys):
    code, err = tune_in_process(["--op", "matmul", "--target", "llvm", "--db", str(tmp_path)],
                                capsys)
    assert_one_line(code, err, "cannot write tuning database")


def test_db_that_is_not_a_database_is_kept(tmp_path, capsys):
    notes = tmp_path / "notes.txt"
    notes.write_text("important notes\n" * 100)
    code, err = tune_in_process(["--op", "matmul", "--target", "llvm", "--db", str(notes)], capsys)
    assert_one_line(code, err, "is not an SQLite database")
    assert notes.read_text() == "important notes\n" * 100


@pytest.mark.parametrize("make,fragment", [
    (lambda d: (d / "file").write_text("x") and d / "file", "exists and is not a folder"),
    (lambda d: (d / "file").write_text("x") and d / "file" / "sub", "cannot be a folder"),
])
def test_export_path_that_cannot_be_a_folder_is_refused_before_tuning(tmp_path, capsys, make,
                                                                       fragment):
    code, err = tune_in_process(["--op", "matmul", "--target", "llvm", "--db",
                                 str(tmp_path / "d.sqlite"), "--export", str(make(tmp_path))],
                                capsys)
    assert_one_line(code, err, fragment)
    assert not (tmp_path / "d.sqlite").exists()          # refused before anything was opened


@pytest.mark.parametrize("objective", [["--objective", "energy"], ["--max-slowdown", "1.05"]])
def test_energy_objective_without_meter(tmp_path, objective, capsys, monkeypatch):
    monkeypatch.setenv("ENERGY_TUNER_POWERCAP", str(tmp_path / "no-powercap"))
    code, err = tune_in_process(["--op", "matmul", "--target", "llvm", *objective,
                                 "--db", str(tmp_path / "d.sqlite")], capsys)
    assert_one_line(code, err, "use --objective latency")


@pytest.mark.parametrize("args,fragment", [
    (["--op", "matmul", "--objective", "speed"], "invalid choice"),            # before TVM
    (["--op", "lut_mpgemm", "--group-size", "0"], "--group-size 0 must be"),  # after TVM
])
def test_a_real_process_prints_one_line(args, fragment, tmp_path):
    assert_one_line_error(run_tune(args + ["--target", "llvm", "--db", str(tmp_path / "d.sqlite")]),
                          fragment)


@pytest.mark.skipif(nvidia_gpu_name() is not None, reason="this machine has a GPU")
def test_cuda_target_without_gpu(tmp_path, capsys):
    code, err = tune_in_process(["--op", "matmul", "--target", "cuda",
                                 "--db", str(tmp_path / "d.sqlite")], capsys)
    assert_one_line(code, err, "no NVIDIA GPU")


# ---------------------------------------------------------------- fuzzing
TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
               max_size=12)
SIZE = st.one_of(st.integers(-3, 300), st.integers(10 ** 5, 10 ** 13)).map(str)
SHAPE = st.one_of(
    st.lists(SIZE, min_size=0, max_size=9).map(",".join),
    st.lists(st.tuples(st.sampled_from("bmnkhwcrs") | TEXT, SIZE).map("=".join),
             max_size=9).map(",".join),
    TEXT)
FLAGS = {
    "--op": st.sampled_from(["matmul", "batch_matmul", "gemv", "conv2d", "lut_mpgemm"]) | TEXT,
    "--shape": SHAPE,
    "--dtype": st.sampled_from(["float16", "float32"]) | TEXT,
    "--accum": st.sampled_from(["float16", "float32"]) | TEXT,
    "--objective": st.sampled_from(["latency", "energy", "edp", "pareto"]) | TEXT,
    "--max-slowdown": st.floats(allow_nan=True).map(str) | TEXT,
    "--energy-policy": st.sampled_from(["auto", "all", "dynamic"]) | TEXT,
    "--trials": st.integers(-5, 10 ** 6).map(str) | TEXT,
    "--l2": st.sampled_from(["resident", "rotate"]) | TEXT,
    "--seed": st.integers(-5, 2 ** 40).map(str) | TEXT,
    "--wbits": st.integers(-2, 9).map(str) | TEXT,
    "--group-size": st.integers(-64, 1024).map(str) | TEXT,
    "--impl": st.sampled_from(["lut", "dequant", "both"]) | TEXT,
    "--export": st.sampled_from(["out", "blocker", "blocker/sub", ""]) | TEXT,
}
SWITCHES = ["--zero-points", "--no-overlap"]


@st.composite
def arguments(draw):
    flags = draw(st.lists(st.sampled_from(sorted(FLAGS)), unique=True, max_size=6))
    argv = []
    for flag in flags:
        argv += [flag, draw(FLAGS[flag])]
    argv += draw(st.lists(st.sampled_from(SWITCHES), unique=True, max_size=2))
    return argv


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("fuzz")
    (d / "blocker").write_text("a file")
    return d


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(argv=arguments())
def test_fuzzed_arguments_are_accepted_or_refused_in_one_line(argv, fuzz_dir, capsys,
                                                              monkeypatch):
    monkeypatch.chdir(fuzz_dir)                         # relative --export paths land here
    argv = argv + ["--target", "llvm", "--db", str(fuzz_dir / "d.sqlite")]
    try:
        plan = prepare(argv)
    except bad_input():
        code, err = tune_in_process(argv, capsys)
        assert code == 2 and len(err.strip().splitlines()) == 1, err
        assert err.startswith("tune: error:") and "Traceback" not in err
        return
    plan.db.close()                                     # valid: tuning would start here


def test_sizes_beyond_the_gpus_memory_are_refused():
    """The GPU branch of the memory check with a device that reports 1 GiB (no GPU needed)."""
    from types import SimpleNamespace

    from energy_tuner.compiler.cli import memory_problem
    from energy_tuner.schedules import make_op

    gpu = SimpleNamespace(kind="cuda", device=SimpleNamespace(total_global_memory=2 ** 30),
                          device_name="a 1 GiB GPU")
    big = make_op("matmul", "16384,16384,16384", "float16")
    assert "GiB of GPU memory, a 1 GiB GPU has 1 GiB" in memory_problem(big, gpu, "resident")
    assert memory_problem(make_op("matmul", "1024,1024,1024", "float16"), gpu, "resident") is None


def test_weight_layout_fields_selects_the_dequant_implementation():
    from energy_tuner.compiler.cli import build_parser, op_params

    parse = build_parser().parse_args
    fields = op_params(parse(["--op", "lut_mpgemm", "--weight-layout", "fields"]))
    assert fields == [{"zero_points": False, "layout": "fields", "impl": "dequant"}]
    planes = op_params(parse(["--op", "lut_mpgemm", "--weight-layout", "planes"]))
    assert planes == [{"zero_points": False, "impl": "dequant"}]  # the op's default: identity kept
