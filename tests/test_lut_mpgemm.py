"""lut_mpgemm: both implementations against a dequantized-weights numpy matmul, the LUT-mpGEMM
instruction tensorized on llvm (run) and on CUDA (source; compiled when nvcc is present)."""
import json
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tvm
from tvm.s_tir import Schedule

from energy_tuner.compiler.builder import compile_module
from energy_tuner.schedules import OpError, lut, lut_intrin, lut_space, make_op
from tests.test_cli_errors import assert_one_line_error, run_tune

CUDA_SPEC = {"kind": "cuda", "arch": "sm_90", "max_threads_per_block": 1024,
             "max_shared_memory_per_block": 232448, "thread_warp_size": 32}
CUDA = tvm.target.Target(CUDA_SPEC)
MODES = [(bits, gs, zp) for bits in (1, 2, 3, 4) for gs, zp in ((16, False), (32, True))]


def lut_op(bits, gs, zp, impl="lut", shape="m=3,n=16,k=64", dtype="float32"):
    return make_op("lut_mpgemm", shape, dtype,
                   {"wbits": bits, "group_size": gs, "zero_points": zp, "impl": impl})


def run_llvm(op, mod):
    ins = op.inputs(np.random.default_rng(1))
    dev = tvm.cpu()
    args = [tvm.runtime.tensor(a, dev) for a in ins]
    args.append(tvm.runtime.tensor(np.zeros(op.output_shape, "float32"), dev))
    tvm.compile(mod, target="llvm")["main"](*args)
    expected = ins[0].astype("float32") @ op.quantized(*ins[1:]).dequantize().T
    return np.linalg.norm(args[-1].numpy() - expected) / np.linalg.norm(expected)


@pytest.mark.parametrize("impl", ["lut", "dequant"])
@pytest.mark.parametrize("bits,gs,zp", MODES)
def test_definition_matches_dequantized_matmul(impl, bits, gs, zp):
    op = lut_op(bits, gs, zp, impl, dtype="float16")
    assert run_llvm(op, tvm.IRModule({"main": op.prim_func()})) < op.tolerance


@pytest.mark.parametrize("bits,gs,zp", MODES)
def test_llvm_instruction_tensorized(bits, gs, zp):
    op = lut_op(bits, gs, zp)
    lut_space.register_intrinsics(op, "llvm")
    sch = Schedule(tvm.IRModule({"main": op.prim_func()}), seed=bits)
    lut_space.schedule_llvm(op, sch, cols=4)
    assert any(inst.kind.name == "Tensorize" for inst in sch.trace.insts)
    assert run_llvm(op, sch.mod) < 1e-5  # fp32 tables: only summation order differs


def test_weight_bytes_round_trip():
    rng = np.random.default_rng(0)
    planes = rng.integers(0, 16, (3, 5, 32), dtype="uint8")
    packed = lut.pack_bytes(planes)
    assert packed.shape == (3, 5, 16)
    np.testing.assert_array_equal(lut.unpack_bytes(packed), planes)


def cuda_sources(op, count):
    """CUDA source of `count` candidates sampled by the search from the space's design spaces."""
    ctx = tvm.s_tir.meta_schedule.TuneContext(
        mod=tvm.IRModule({"main": op.prim_func()}), target=CUDA,
        space_generator=lut_space.lut_space(op, CUDA),
        search_strategy=tvm.s_tir.meta_schedule.search_strategy.EvolutionarySearch(
            population_size=16, init_measured_ratio=0.0), num_threads=2, rand_state=1)
    ctx.pre_tuning(max_trials=count, num_trials_per_iter=count,
                   design_spaces=ctx.generate_design_space(),
                   database=tvm.s_tir.meta_schedule.database.MemoryDatabase(),
                   cost_model=tvm.s_tir.meta_schedule.cost_model.RandomModel())
    candidates = ctx.generate_measure_candidates()
    return [m.inspect_source() for c in candidates
            for m in tvm.compile(c.sch.mod, target=CUDA).mod.imports]


def test_cuda_space_calls_the_instruction_and_compiles(tmp_path):
    op = lut_op(2, 32, True, shape="m=4,n=64,k=256", dtype="float16")
    sources = cuda_sources(op, 6)
    assert len(sources) == 6
    for src in sources:
        assert "tvm_lut_acc<" in src and src.count("void tvm_lut_acc") == 1
    assert_nvcc_compiles(sources, tmp_path)


@pytest.mark.parametrize("shape,rows", [("m=1,n=64,k=256", 1), ("m=4,n=64,k=256", 2)])
def test_precomputed_tables_are_built_once_and_copied_with_vector_loads(shape, rows, tmp_path):
    op = lut_op(2, 32, True, shape=shape, dtype="float16")
    lut_space.register_intrinsics(op, "cuda")
    sch = Schedule(tvm.IRModule({"main": op.prim_func()}), seed=1)
    lut_space.schedule_cuda(op, sch, cols=2, rows=rows, placement="global")
    source = compile_module(sch.mod, CUDA).mod.imports[0].inspect_source()
    kernels = set(re.findall(r"__global__ void __launch_bounds__\(\d+\) (\w+)\(", source))
    assert len(kernels) == 2  # the tables, then the lookups
    assert "*(uint4*)(tables_shared_dyn_ptr" in source and "tvm_lut_acc<2, 4, 4, half>" in source
    assert_nvcc_compiles([source], tmp_path)


def test_unsplit_groups_make_warps_of_columns(tmp_path):
    """Without the group split the lookup kernel's threads (if more than one was sampled) are all
    columns (threadIdx.y) sharing one table slice, and no cross-thread reduction is needed."""
    op = lut_op(2, 32, True, shape="m=1,n=64,k=256", dtype="float16")
    lut_space.register_intrinsics(op, "cuda")
    sch = Schedule(tvm.IRModule({"main": op.prim_func()}), seed=1)
    lut_space.schedule_cuda(op, sch, cols=2, rows=1, placement="global", split_groups=False)
    source = compile_module(sch.mod, CUDA).mod.imports[0].inspect_source()
    lookups = source[source.rindex("__global__"):]
    assert "tvm_lut_acc<2" in lookups
    assert "threadIdx.x" not in lookups and "__shfl" not in lookups
    assert_nvcc_compiles([source], tmp_path)


def assert_nvcc_compiles(sources, tmp_path):
    if shutil.which("nvcc") is None:
        pytest.skip("nvcc not installed: CUDA source checked, not compiled")
    for i, src in enumerate(sources):
        path = tmp_path / f"kernel_{i}.cu"
        path.write_text(src)
        proc = subprocess.run(["nvcc", "-arch=sm_90", "-std=c++17", "-c", str(path), "-o",
                               str(path.with_suffix(".o"))], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr[-2000:]


def test_splice_leaves_other_kernels_alone():
    assert lut_intrin.splice_cuda_source('extern "C" __global__ void k() {}') \
        == 'extern "C" __global__ void k() {}'


@pytest.mark.parametrize("params,fragment", [
    ({"wbits": 5}, "--wbits must be 1, 2, 3 or 4"),
    ({"group_size": 12}, "must be a positive multiple of 8"),
    ({"impl": "fast"}, "impl must be one of"),
    ({"bits": 2}, "has no option bits"),
    ({"group_size": 8, "impl": "lut"}, "LUT implementation needs --group-size >= 16"),
])
def test_bad_options(params, fragment):
    with pytest.raises(OpError, match=fragment):
        make_op("lut_mpgemm", "m=1,n=64,k=256", "float32", params)


@pytest.mark.parametrize("args,fragment", [
    (["--op", "lut_mpgemm", "--wbits", "8"], "--wbits must be 1, 2, 3 or 4"),
    (["--op", "lut_mpgemm", "--group-size", "100"], "multiple of 8"),
    (["--op", "lut_mpgemm", "--shape", "m=1,n=64,k=100"], "divides k=100"),
    (["--op", "matmul", "--wbits", "2"], "--wbits applies to --op lut_mpgemm only"),
    (["--op", "lut_mpgemm", "--impl", "fast"], "invalid choice"),
    (["--op", "lut_mpgemm", "--impl", "lut", "--group-size", "8"], "--group-size >= 16"),
])
def test_bad_cli_options(args, fragment, tmp_path):
    assert_one_line_error(run_tune(args + ["--target", "llvm", "--db", str(tmp_path / "d.sqlite")]),
                          fragment)


def test_group_of_8_tunes_the_dequant_twin_only(tmp_path, capsys):
    from energy_tuner.compiler.cli import main

    db = tmp_path / "lut.sqlite"
    assert main(["--op", "lut_mpgemm", "--shape", "m=1,n=16,k=64", "--group-size", "8",
                 "--target", "llvm", "--trials", "1", "--db", str(db)]) == 0
    assert "tuning dequant only" in capsys.readouterr().err
    from experiments import lut_table
    assert [r.workload["params"]["impl"] for r in lut_table.lut_records(db)] == ["dequant"]


def test_tune_both_implementations_and_tabulate(tmp_path):
    """`tune --impl both` measures each implementation; lut_table pairs them with cuBLAS figures."""
    from energy_tuner.compiler.cli import main
    from experiments import lut_table

    shape = ["--shape", "m=1,n=32,k=64", "--group-size", "32", "--wbits", "2"]
    assert main(["--op", "lut_mpgemm", *shape, "--target", "llvm", "--trials", "2",
                 "--db", str(tmp_path / "lut.sqlite")]) == 0
    records = lut_table.lut_records(tmp_path / "lut.sqlite")
    assert sorted(r.workload["params"]["impl"] for r in records) == ["dequant", "lut"]
    assert all(r.status == "ok" and r.rel_error < 2e-3 for r in records)
    lut_rec = next(r for r in records if r.workload["params"]["impl"] == "lut")
    # cuBLAS figures as experiments/cublas_energy.py writes them (values chosen for the check)
    cublas = {"kernel": "cublas fp16->fp16", "latency_s": 3 * lut_rec.latency_s, "energy_j": 1e-3}
    (tmp_path / "cublas_1_32_64.json").write_text(json.dumps([cublas]))
    [row] = lut_table.rows(tmp_path)
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[:3] == ["32x64", "1", "W2"]
    best = min(records, key=lambda r: r.latency_s)
    assert cells[9] == best.workload["params"]["impl"]
    assert cells[10] == f"{3 * lut_rec.latency_s / best.latency_s:.2f}x"
    assert cells[11] == "-"  # no energy meter on this machine: no energy ratio, no verdict


def test_builder_splices_the_instruction_in_a_fresh_process(tmp_path):
    """Builds happen in worker processes that never imported schedules/: the builder itself must
    make the instruction's device code part of the CUDA source."""
    op = lut_op(2, 32, False, shape="m=1,n=64,k=256", dtype="float16")
    sch = Schedule(tvm.IRModule({"main": op.prim_func()}), seed=1)
    lut_space.register_intrinsics(op, "cuda")
    lut_space.schedule_cuda(op, sch, cols=2, rows=1, placement="shared.dyn")
    (tmp_path / "mod.json").write_text(tvm.ir.save_json(sch.mod))
    code = (f"import tvm; from energy_tuner.compiler.builder import compile_module; "
            f"mod = tvm.ir.load_json(open({str(tmp_path / 'mod.json')!r}).read()); "
            f"target = tvm.target.Target({json.dumps(CUDA_SPEC)}); "
            "print(compile_module(mod, target).mod.imports[0].inspect_source())")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "void tvm_lut_acc" in proc.stdout and "tvm_lut_acc<2, 4, 4, half>" in proc.stdout
