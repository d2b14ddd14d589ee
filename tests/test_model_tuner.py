"""tune-model: budget sharing (predicted, then measured), a real tiny tune on llvm, resume, errors."""
import json
import os
import sqlite3
import subprocess
import sys

import numpy as np
import pytest

from energy_tuner.compiler.database import Record, TuningDatabase
from energy_tuner.compiler.graph import Task
from energy_tuner.compiler.model_cli import main
from energy_tuner.compiler.model_tuner import (ModelTuner, Settings, allocate, launcher, prior_cost,
                                               torch_baseline)
from energy_tuner.compiler.objective import Objective
from energy_tuner.compiler.target import resolve
from energy_tuner.schedules import make_op
from tests.conftest import DATA

TINY_MODULE = ["--module", f"{DATA / 'tiny_model.py'}:build", "--target", "llvm",
               "--first-trials", "2", "--round-trials", "2"]


def rows(db):
    con = sqlite3.connect(db)
    con.row_factory = sqlite3.Row
    return [dict(r) for r in con.execute("SELECT * FROM candidates ORDER BY id")]


def test_allocate_splits_by_weight_and_spends_exactly():
    assert allocate({0: 3.0, 1: 1.0}, 8) == {0: 6, 1: 2}
    assert allocate({0: 1.0, 1: 1.0, 2: 1.0}, 4) == {0: 2, 1: 1, 2: 1}   # ties: lower index
    assert allocate({0: 0.0, 1: 0.0}, 3) == {0: 2, 1: 1}                 # no information: even
    assert sum(allocate({0: 0.7, 1: 0.2, 2: 0.1}, 5).values()) == 5
    assert allocate({0: 1.0}, 0) == {0: 0}


def test_prior_cost_follows_flops_and_bytes():
    big, small = make_op("matmul", "512,512,512", "float32"), make_op("matmul", "64,64,64", "float32")
    assert prior_cost(big, "llvm", "latency") > 100 * prior_cost(small, "llvm", "latency")
    gemv = make_op("gemv", "4096,4096", "float16")
    mm = make_op("matmul", "4096,4096,4096", "float16")
    # a GEMV moves the same weights for 1/4096 of the FLOPs: its bytes dominate the prior
    assert prior_cost(gemv, "cuda", "energy") == pytest.approx(gemv.bytes_moved * 16.7e-3 / 117e6,
                                                               rel=0.02)
    assert prior_cost(mm, "cuda", "energy") == pytest.approx(149e-3, rel=0.2)  # cuBLAS on an H200


def fake_record(key, latency_s, objective="latency", status="ok"):
    return Record(id=None, workload_key=key, workload={}, target="", device="", objective=objective,
                  mod_hash=f"{key}{latency_s}", trace=[], status=status, latency_s=latency_s)


def test_shares_are_predicted_first_then_measured(tmp_path):
    """The prior puts the 128^3 matmul first; measured figures that say the 32^3 one (run 4x
    per pass) costs more move the budget to it."""
    plat = resolve("llvm")
    db = TuningDatabase(tmp_path / "t.sqlite")
    found = [Task("matmul", {"m": 128, "n": 128, "k": 128}, "float32", 1),
             Task("matmul", {"m": 32, "n": 32, "k": 32}, "float32", 4)]
    cfg = Settings(Objective("latency"), trials=20, first_trials=2, round_trials=8)
    tuner = ModelTuner(found, plat, db, cfg, None)
    assert tuner.plan() == {0: 2, 1: 2}                  # every task first gets a few trials
    assert list(tuner.plan()) == [0, 1]                  # ... the larger predicted share first
    big, small = (s.tuner.key for s in tuner.states)
    for key, latencies in ((big, (2e-3, 1e-3)), (small, (1e-3, 1.5e-3))):
        for lat in latencies:
            db.add(fake_record(key, lat))
    db.add(fake_record(small, 5e-3, objective="energy"))  # another objective's trial: not counted
    db.add(fake_record(small, 1e-9, status="wrong"))      # a wrong kernel: a trial, never chosen
    resumed = ModelTuner(found, plat, db, cfg, None)      # the state is read from the db
    assert resumed.spent() == 5
    # measured per pass: 1 x 1 ms vs 4 x 1 ms (best kernels): shares 20% / 80% of 8 trials
    assert resumed.plan() == {0: 2, 1: 6}
    db.close()


def test_prior_is_scaled_to_measured_units(tmp_path):
    """A task without a kernel yet gets the median measured/predicted ratio of those with one."""
    from energy_tuner.compiler.model_tuner import weights

    plat = resolve("llvm")
    db = TuningDatabase(tmp_path / "t.sqlite")
    found = [Task("matmul", {"m": 64, "n": 64, "k": 64}, "float32", 1),
             Task("matmul", {"m": 64, "n": 64, "k": 64}, "float32", 1, params={"accum": "float32"})]
    cfg = Settings(Objective("latency"), trials=8)
    tuner = ModelTuner(found, plat, db, cfg, None)
    measured = 3.0 * tuner.states[0].prior
    db.add(fake_record(tuner.states[0].tuner.key, measured))
    tuner = ModelTuner(found, plat, db, cfg, None)
    assert weights(tuner.states, cfg) == pytest.approx([0.5, 0.5])
    db.close()


def test_one_build_pool_serves_every_task_and_round(tmp_path, monkeypatch):
    """A model tune builds all its tasks' candidates, round after round, in one pool (each fresh
    build process pays TVM's import), and closes it at the end."""
    from energy_tuner.compiler import builder, model_tuner, search

    made = []

    class Counted(builder.Builder):
        def __init__(self, *args, **kwargs) -> None:
            made.append(self)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(model_tuner, "Builder", Counted)
    monkeypatch.setattr(search, "Builder", Counted)
    db = TuningDatabase(tmp_path / "t.sqlite")
    found = [Task("matmul", {"m": 32, "n": 32, "k": 32}, "float32", 1),
             Task("matmul", {"m": 16, "n": 32, "k": 32}, "float32", 1)]
    cfg = Settings(Objective("latency"), trials=6, first_trials=2, round_trials=2)
    tuner = ModelTuner(found, resolve("llvm"), db, cfg, "latency only")
    tuner.run()
    assert tuner.spent() == 6 and all(s.done(cfg.objective) >= 2 for s in tuner.states)
    assert len(made) == 1 and made[0].closed and tuner.builder is None
    db.close()


def test_tiny_model_tune(model_tune):
    db, lib, report, rc = model_tune
    assert rc == 0
    run = json.loads(report.read_text())
    assert sum(t["trials"] for t in run["tasks"]) == 6 == len(rows(db))
    counts = {tuple(t["task"]["shape"].values()): t["task"]["count"] for t in run["tasks"]}
    assert counts == {(4, 32, 16): 2, (4, 16, 32): 1}
    assert {t["task"]["op"] for t in run["tasks"]} == {"linear"}     # 4 rows: x W^T on W as stored
    assert all(t["trials"] >= 2 for t in run["tasks"])     # the first round reached every task
    for t in run["tasks"]:
        assert t["ours"]["latency_s"] > 0 and t["ours"]["energy_j"] is None  # no RAPL: not guessed
        assert "cpu" in t["torch"]["name"] and t["torch"]["latency_s"] > 0
    ours = sum(t["task"]["count"] * t["ours"]["latency_s"] for t in run["tasks"])
    assert run["per_pass"]["ours"]["latency_s"] == pytest.approx(ours)
    assert run["per_pass"]["ours"]["energy_j"] is None
    ids = {r["id"]: r for r in rows(db)}
    assert all(ids[t["ours"]["db_record"]]["status"] == "ok" for t in run["tasks"])


def test_rerun_resumes_and_extends(model_tune, tmp_path):
    db, _, _, _ = model_tune
    copy = tmp_path / "resume.sqlite"
    copy.write_bytes(db.read_bytes())
    before = rows(copy)
    assert main([*TINY_MODULE, "--trials", "6", "--db", str(copy), "--no-baseline"]) == 0
    assert rows(copy) == before                           # budget spent: nothing new
    assert main([*TINY_MODULE, "--trials", "8", "--db", str(copy), "--no-baseline",
                 "--json", str(tmp_path / "r.json")]) == 0
    after = rows(copy)
    assert after[:6] == before and len(after) == 8
    assert len({r["mod_hash"] for r in after if r["workload_key"] == after[-1]["workload_key"]}) \
        == sum(r["workload_key"] == after[-1]["workload_key"] for r in after)
    run = json.loads((tmp_path / "r.json").read_text())
    assert all(t["torch"] is None for t in run["tasks"])  # --no-baseline
    assert run["per_pass"]["torch"]["latency_s"] is None


def run_cli(args, cwd=None):
    return subprocess.run([sys.executable, "-m", "energy_tuner.compiler.model_cli", *args],
                          capture_output=True, text=True, timeout=300, cwd=cwd,
                          env={**os.environ, "PYTHONPATH": os.getcwd()})


@pytest.mark.parametrize("args,fragment", [
    ([], "give --model or --module"),
    (["--model", "gpt9:layers=2"], "unknown model 'gpt9'"),
    (["--model", "decoder_layer:hidden=64"], "missing keys"),
    (["--model", "decoder_layer:hidden=64,ffn=64,heads=4,kv_heads=4,batch=1,seq=4", "--trials", "0"],
     "--trials must be at least 1"),
    (["--module", "nowhere.py:build"], "expected FILE.py:FUNC"),
    (["--module", f"{DATA / 'tiny_model.py'}:missing"], "AttributeError"),
    (["--model", "decoder_layer:hidden=64,ffn=64,heads=4,kv_heads=4,batch=1,seq=4",
      "--dtype", "float16"], "not supported on target llvm"),
])
def test_bad_input_is_one_line(args, fragment, tmp_path):
    proc = run_cli([*args, "--target", "llvm", "--db", str(tmp_path / "d.sqlite")])
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tune-model: error:"), proc.stderr
    assert fragment in lines[0]


def test_api_tunes_one_op_and_reads_the_db(tmp_path):
    from energy_tuner.compiler import api

    db = tmp_path / "op.sqlite"
    run = api.tune_op("gemv", "32,32", target="llvm", trials=2, db=db, baseline=False,
                      population=32, batch=2)
    [result] = run.results
    assert result.trials == 2 and result.task.count == 1 and result.torch is None
    found = api.records(db)
    assert [r.id for r in found] == [1, 2] and api.records(db, op="matmul") == []
    assert result.ours.id in {r.id for r in found if r.status == "ok"}
    assert run.per_pass("ours", "latency_s") == pytest.approx(result.ours.latency_s)
    with pytest.raises(api.ERRORS, match="unknown op"):
        api.tune_op("conv9", target="llvm")
    with pytest.raises(api.ERRORS, match="--max-slowdown must be at least 1"):
        api.make_objective("energy", 0.5)


def test_tune_model_can_keep_to_some_ops():
    """`ops` keeps the tasks of those ops (a decode layer's linears are gemvs, its attention
    products batch_matmuls); none left is the one-line 'nothing to do', an unknown name one line."""
    from energy_tuner.compiler import api
    from energy_tuner.compiler.graph import spec_graph, tasks

    spec = {"model": "decoder_layer", "hidden": 256, "ffn": 512, "heads": 4, "kv_heads": 2,
            "batch": 1, "seq": 64, "phase": "decode"}
    found = tasks(spec_graph(spec, "float32"))
    assert {t.op for t in found} == {"gemv", "batch_matmul"}
    assert {t.op for t in api.only_ops(found, ("gemv", "linear", "matmul"))} == {"gemv"}
    assert api.only_ops(found, None) == found
    with pytest.raises(api.ERRORS, match="unknown op 'gemm' in ops"):
        api.only_ops(found, ("gemm",))
    with pytest.raises(api.ERRORS, match="nothing to do"):
        api.tune_model(spec, target="llvm", ops=("conv2d",))


def test_torch_falls_back_to_python_launches_where_capture_fails():
    import torch

    def python_batch(calls: int) -> float:
        return 1e-5

    # not capturable anywhere: no CUDA here; on a GPU a sync inside capture is refused
    run_batch, launch = launcher(torch.cuda.synchronize, python_batch, 1e-5)
    assert run_batch is python_batch
    assert launch.startswith("python-launched (cuda graph failed: ") and "\n" not in launch


def test_torch_baseline_rotates_its_inputs_like_our_measurements():
    """With l2=rotate torch's calls cycle through as many input copies as our runner's."""
    from energy_tuner.measure.runner import rotation_sets

    op = make_op("gemv", "1024,1024", "float32")
    base = torch_baseline(op, resolve("llvm"), "no meter", l2="rotate")
    copies = rotation_sets(sum(x.nbytes for x in op.inputs(np.random.default_rng(0))))
    assert base.name.endswith(f", inputs rotated over {copies} copies") and base.latency_s > 0
    assert "rotated" not in torch_baseline(op, resolve("llvm"), "no meter").name


def _torch_gpu() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


@pytest.mark.gpu
@pytest.mark.skipif(not _torch_gpu(), reason="needs torch with a CUDA GPU")
def test_torch_baseline_on_cuda_replays_a_graph():
    base = torch_baseline(make_op("gemv", "4096,4096", "float16"), resolve("cuda"), "no meter")
    assert base.name.endswith(", cuda graph") and base.latency_s > 0 and base.energy_j is None
