"""A real tiny tune on the llvm target: search, correctness, database, resume, export."""
import json
import sqlite3
import subprocess
import sys
import threading

import numpy as np
import psutil
import pytest
import tvm

from energy_tuner.compiler.cli import main
from energy_tuner.compiler.objective import Objective
from energy_tuner.compiler import search
from energy_tuner.compiler.search import Tuner, in_background
from energy_tuner.compiler.session import time_split
from energy_tuner.compiler.target import resolve
from energy_tuner.measure.runner import MeasureConfig, Runner
from energy_tuner.compiler.database import TuningDatabase
from energy_tuner.schedules import design_space, make_op
from tests.conftest import TINY
from tests.gated_builder import gated, lines, wait_for


def rows(db):
    con = sqlite3.connect(db)
    con.row_factory = sqlite3.Row
    return [dict(r) for r in con.execute("SELECT * FROM candidates ORDER BY id")]


def test_space_samples_valid_candidates():
    op = make_op("matmul", "32,32,32", "float32")
    plat = resolve("llvm")
    mod = tvm.IRModule({"main": op.prim_func()})
    ctx = tvm.s_tir.meta_schedule.TuneContext(
        mod=mod, target=plat.target, space_generator=design_space(op, plat.target), num_threads=2)
    spaces = ctx.generate_design_space()
    assert spaces
    runner = Runner(op, plat.device, None, MeasureConfig(latency_repeats=2, latency_min_repeat_ms=1))
    for sch in spaces:
        ex = tvm.compile(sch.mod, target=plat.target)
        assert runner.check(ex["main"]).ok


def test_tiny_tune_finds_a_correct_kernel(tiny_tune):
    db, _, rc = tiny_tune
    assert rc == 0
    records = rows(db)
    assert len(records) == 8
    assert len({r["mod_hash"] for r in records}) == 8          # no candidate measured twice
    ok = [r for r in records if r["status"] == "ok"]
    assert ok and all(r["rel_error"] < 1e-4 for r in ok)
    for r in ok:
        samples = json.loads(r["latency_samples"])
        assert r["latency_s"] == np.median(samples) and r["latency_s"] > 0
    assert all(r["energy_j"] is None for r in records)         # no RAPL here: not guessed
    assert {r["objective"] for r in records} == {"latency"}
    # the default space of a float32 matmul on llvm is the registered knob space, searched by
    # the genetic strategy: records hold the space's name and the config
    traces = [json.loads(r["trace"]) for r in records]
    assert all(t["space"] == "cpu_matmul" and set(t["config"]) >= {"tile_i", "vectorize"}
               for t in traces)


def test_export_loads_in_a_fresh_process(tiny_tune, tmp_path):
    db, export, _ = tiny_tune
    manifest_path = next(export.glob("*.json"))
    manifest = json.loads(manifest_path.read_text())
    assert manifest["op"] == "matmul" and manifest["objective"] == "latency"
    chosen = min((r for r in rows(db) if r["status"] == "ok"), key=lambda r: r["latency_s"])
    assert manifest["db_record_id"] == chosen["id"]
    script = f"""
import json, sys, numpy as np
import tvm.runtime as rt
m = json.load(open({str(manifest_path)!r}))
lib = rt.load_module({str(export / manifest["library"])!r})
rng = np.random.default_rng(7)
a, b, c = m["arguments"]
A = rng.uniform(-1, 1, a["shape"]).astype(a["dtype"]); B = rng.uniform(-1, 1, b["shape"]).astype(b["dtype"])
C = rt.tensor(np.full(c["shape"], np.nan, c["dtype"]))
lib[m["function"]](rt.tensor(A), rt.tensor(B), C)
print(float(np.abs(C.numpy() - A @ B).max()))
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=120, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert float(out.stdout.strip().splitlines()[-1]) < 1e-4


def test_rerun_resumes_from_the_database(tiny_tune, tmp_path):
    db, _, _ = tiny_tune
    copy = tmp_path / "resume.sqlite"
    copy.write_bytes(db.read_bytes())
    before = rows(copy)
    assert main([*TINY, "--trials", "10", "--db", str(copy)]) == 0
    after = rows(copy)
    assert after[:8] == before                      # nothing lost or rewritten
    assert len(after) == 10                         # only the 2 missing trials were measured
    assert len({r["mod_hash"] for r in after}) == 10
    assert main([*TINY, "--trials", "10", "--db", str(copy)]) == 0
    assert len(rows(copy)) == 10                    # budget already spent: nothing new


def test_tuner_reports_the_same_best_as_the_database(tiny_tune):
    db, _, _ = tiny_tune
    op = make_op("matmul", "64,64,64", "float32")
    plat = resolve("llvm")
    database = TuningDatabase(db)
    tuner = Tuner(op, plat, Runner(op, plat.device, None, MeasureConfig()), database,
                  Objective("latency"))
    records = database.records(tuner.key)
    chosen = Objective("latency").choose(records)
    assert chosen.latency_s == min(r.latency_s for r in records if r.status == "ok")
    # the stored trace rebuilds the same kernel
    ex = tvm.compile(tuner.module(chosen), target=plat.target)
    assert tuner.runner.check(ex["main"]).ok
    database.close()


@pytest.mark.parametrize("space,overlap", [("trace", False), ("trace", True),
                                           ("cpu_matmul", True)])
def test_interrupted_tune_keeps_every_result_and_resumes(tmp_path, monkeypatch, space, overlap):
    """Ctrl-C during measuring (with overlap: while the next batch is being searched for)."""
    op = make_op("matmul", "32,32,32", "float32")
    plat = resolve("llvm")
    config = MeasureConfig(latency_repeats=2, latency_min_repeat_ms=1)
    db = TuningDatabase(tmp_path / "t.sqlite")
    seen, backgrounded, gate = [], [], threading.Event()

    def gated_in_background(fn):   # the real search, held until the interrupt has been raised
        backgrounded.append(fn)
        return in_background(lambda: gate.wait() and fn())

    monkeypatch.setattr(search, "in_background", gated_in_background)

    def interrupt_after_two(record):
        seen.append(record)
        if len(seen) == 2:
            threading.Timer(0.5, gate.set).start()
            raise KeyboardInterrupt

    tuner = Tuner(op, plat, Runner(op, plat.device, None, config), db, Objective("latency"),
                  batch=3, overlap=overlap, population=64, space=space)
    try:
        tuner.tune(6, on_record=interrupt_after_two)
    except KeyboardInterrupt:
        pass
    assert len(backgrounded) == overlap    # the next batch was being searched for meanwhile
    assert [r["id"] for r in rows(tmp_path / "t.sqlite")] == [r.id for r in seen]
    resumed = Tuner(op, plat, Runner(op, plat.device, None, config), db, Objective("latency"),
                    batch=3, overlap=overlap, population=64, space=space)
    result = resumed.tune(6)
    assert result.stats.previous == 2 and result.stats.measured == 4
    assert len(result.stats.proposal_s) >= 2
    assert result.stats.search_wait_s <= sum(result.stats.proposal_s)
    assert len({r["mod_hash"] for r in rows(tmp_path / "t.sqlite")}) == 6
    db.close()


def small_tuner(db, space="cpu_matmul", runner=None, overlap=True):
    op = make_op("matmul", "32,32,32", "float32")
    plat = resolve("llvm")
    runner = runner or Runner(op, plat.device, None,
                              MeasureConfig(latency_repeats=2, latency_min_repeat_ms=1))
    return Tuner(op, plat, runner, db, Objective("latency"), batch=3, overlap=overlap,
                 population=64, space=space)


def test_an_interrupt_does_not_wait_for_a_running_build(tmp_path, monkeypatch):
    """Ctrl-C while build 2 runs (it waits for an event that never comes) and build 3 is queued:
    the tune stops at once, build 2 is killed, build 3 never starts, the result is stored."""
    log = tmp_path / "builds.log"
    monkeypatch.setattr(search, "Builder", gated(log, {2: "never"}, workers=1))
    db = TuningDatabase(tmp_path / "t.sqlite")
    seen = []

    def interrupt_while_building(record):
        seen.append(record)
        wait_for(log, "start 2 ")   # candidate 1 is measured while build 2 runs ...
        raise KeyboardInterrupt     # ... when Ctrl-C comes

    with pytest.raises(KeyboardInterrupt):
        small_tuner(db).tune(6, on_record=interrupt_while_building)
    pid = int(wait_for(log, "start 2 ").split()[2])
    assert not psutil.pid_exists(pid)
    assert [line.split()[:2] for line in lines(log)] == [["start", "1"], ["end", "1"],
                                                         ["start", "2"]]
    assert [r["id"] for r in rows(tmp_path / "t.sqlite")] == [r.id for r in seen] == [1]
    monkeypatch.undo()
    result = small_tuner(db).tune(6)
    assert result.stats.previous == 1 and result.stats.measured == 5
    assert len({r["mod_hash"] for r in rows(tmp_path / "t.sqlite")}) == 6
    db.close()


@pytest.mark.parametrize("space", ["cpu_matmul", "trace"])
def test_an_overlapped_tune_is_the_same_for_the_same_seed(tmp_path, monkeypatch, space):
    """The same tune twice, builds 1 and 2 finishing in one order, then in the other: the same
    candidates in the same order. With overlap batch 2 is proposed from the results up to batch 0
    (none), so both batches are set by the seed alone, whatever latencies were measured."""
    tunes = []
    for run, (first, second) in enumerate([(2, 1), (1, 2)]):
        log = tmp_path / f"builds{run}.log"
        monkeypatch.setattr(search, "Builder", gated(log, {second: f"end {first}"}, workers=2))
        db = TuningDatabase(tmp_path / f"t{run}.sqlite")
        result = small_tuner(db, space).tune(6)
        db.close()
        ends = [line for line in lines(log) if line.startswith("end")]
        assert ends.index(f"end {first}") < ends.index(f"end {second}")
        assert result.stats.measured == 6 and len(result.stats.proposal_s) == 2
        tunes.append([(r.mod_hash, json.dumps(r.trace)) for r in result.records])
    assert tunes[0] == tunes[1] and len(set(tunes[0])) == 6


def test_model_is_saved_and_warm_starts_a_similar_workload(tmp_path):
    plat = resolve("llvm")
    config = MeasureConfig(latency_repeats=2, latency_min_repeat_ms=1)
    db = TuningDatabase(tmp_path / "t.sqlite")
    first_op = make_op("matmul", "32,32,32", "float32")
    first = Tuner(first_op, plat, Runner(first_op, plat.device, None, config), db,
                  Objective("latency"), batch=6)
    assert first.tune(6).stats.warm_start is None
    saved = db.conn.execute("SELECT quantity, samples FROM models").fetchall()
    assert dict(saved).get("latency", 0) >= 4      # trained on the correct candidates
    other_op = make_op("matmul", "48,48,48", "float32")
    second = Tuner(other_op, plat, Runner(other_op, plat.device, None, config), db,
                   Objective("latency"), batch=4)
    stats = second.tune(4).stats
    assert stats.warm_start == first.key
    db.close()


def test_strategy_ranks_skipped_candidates_by_predicted_energy(tmp_path):
    from energy_tuner.compiler.database import Record

    op = make_op("matmul", "16,16,16", "float32")
    plat = resolve("llvm")
    tuner = Tuner(op, plat, Runner(op, plat.device, None, MeasureConfig()),
                  TuningDatabase(tmp_path / "t.sqlite"), Objective("energy"))
    base = dict(id=1, workload_key="k", workload={}, target="", device="", objective="energy",
                mod_hash="", trace=[], latency_s=1e-3)
    skipped = Record(status="ok", meta={"energy_skipped": True, "energy_predicted_j": 0.2}, **base)
    measured = Record(status="ok", energy_j=0.3, meta={"energy_predicted_j": 0.2}, **base)
    unknown = Record(status="ok", meta={}, **base)
    failed = Record(status="wrong", energy_j=0.1, **base)
    assert tuner._cost(skipped) == 0.2
    assert tuner._cost(measured) == 0.3          # a measurement beats a prediction
    assert tuner._cost(unknown) == tuner._cost(failed) == float("inf")


@pytest.mark.parametrize("name,shape", [("gemv", "64,64"), ("batch_matmul", "b=2,m=16,n=16,k=16"),
                                        ("conv2d", "n=1,h=8,w=8,c=4,k=4,r=3,s=3,pad=1")])
def test_every_op_tunes_on_llvm(name, shape, tmp_path):
    db = tmp_path / "d.sqlite"
    assert main(["--op", name, "--shape", shape, "--target", "llvm", "--trials", "3",
                 "--db", str(db)]) == 0
    records = rows(db)
    assert len(records) == 3
    ok = [r for r in records if r["status"] == "ok"]
    assert ok and all(r["rel_error"] < 1e-4 for r in ok)
    assert json.loads(records[0]["workload"])["op"] == name


class TwoRunners:
    """Two real llvm Runners behind one runner with two slots: `run` is called from two threads
    at once and takes whichever Runner is free (what a pool of remote workers does)."""

    slots = 2

    def __init__(self, op, plat, config):
        import queue

        self.free = queue.Queue()
        self.used = {}
        for i in range(2):
            self.free.put((i, Runner(op, plat.device, None, config)))
        self.measurement = Runner(op, plat.device, None, config).measurement
        self.lock = threading.Lock()

    def run(self, artifact, decide=lambda m: True, latency_bound_s=None, energy_bound_j=None):
        index, runner = self.free.get()
        try:
            m = runner.run(artifact, decide, latency_bound_s=latency_bound_s,
                           energy_bound_j=energy_bound_j)
            m.meta["worker"] = index
            return m
        finally:
            with self.lock:
                self.used[index] = self.used.get(index, 0) + 1
            self.free.put((index, runner))


@pytest.mark.parametrize("overlap", [False, True])
def test_a_runner_with_two_slots_measures_every_candidate_once(tmp_path, overlap):
    op = make_op("matmul", "32,32,32", "float32")
    plat = resolve("llvm")
    runner = TwoRunners(op, plat, MeasureConfig(latency_repeats=2, latency_min_repeat_ms=1))
    db = TuningDatabase(tmp_path / "t.sqlite")
    result = Tuner(op, plat, runner, db, Objective("latency"), batch=4, population=64,
                   overlap=overlap).tune(8)
    records = db.records(result.records[0].workload_key)
    assert len(records) == 8 == result.stats.measured
    assert len({r.mod_hash for r in records}) == 8
    assert all(r.status == "ok" and r.latency_s > 0 for r in records)
    assert sum(runner.used.values()) == 8
    assert {r.meta["worker"] for r in records} <= {0, 1}
    # where the time went: the worker's steps per record, and the loop's own accounting
    assert all(set(r.meta["phase_s"]) == {"load_s", "check_s", "latency_s", "recheck_s"}
               for r in records)
    stats = result.stats
    assert 0 <= stats.first_build_wait_s <= stats.build_wait_s <= stats.wall_s
    line = time_split(stats, records)
    assert line.startswith("time per candidate: ") and "waiting for builds" in line
    db.close()


def test_the_dynamic_policy_skips_energies_within_the_first_batch(tmp_path):
    """Before the search's model has a power model (its first batch), the policy predicts power
    with a model refit after every measured energy: past the warmup it skips candidates whose
    predicted energy is clearly off the front, instead of measuring the whole batch. Real llvm
    kernels, energy from a fake powercap tree (constant power, so energy follows latency)."""
    from energy_tuner.measure.meters import RaplMeter
    from tests.fake_powercap import ClockPowercap

    op = make_op("matmul", "64,64,64", "float32")
    plat = resolve("llvm")
    db = TuningDatabase(tmp_path / "p.sqlite")
    with ClockPowercap(tmp_path / "powercap"):
        runner = Runner(op, plat.device, RaplMeter(str(tmp_path / "powercap")),
                        MeasureConfig(latency_repeats=3, latency_min_repeat_ms=2))
        tuner = Tuner(op, plat, runner, db, Objective("energy"), batch=16, population=64,
                      energy_policy="dynamic", screen=False)
        result = tuner.tune(16)
    records = sorted(db.records(result.records[0].workload_key), key=lambda r: r.id)
    db.close()
    ok = [r for r in records if r.status == "ok"]
    assert len(records) == 16 and len(ok) >= 12
    warmup = tuner.policy.warmup
    assert all(r.energy_j is not None for r in ok[:warmup])      # the warmup is measured
    skipped = [r for r in ok[warmup:] if r.meta.get("energy_skipped")]
    assert skipped, "the whole first batch was measured"
    assert all(r.energy_j is None and r.meta["energy_predicted_j"] > 0 for r in skipped)
    assert result.stats.energy_skipped == len(skipped)
    assert Objective("energy").choose(records).energy_j is not None
