"""Cheap screening: a few latency samples first, energy only where the objective needs it."""
import json
import statistics
from pathlib import Path

import numpy as np
import pytest
import tvm

from energy_tuner.compiler.objective import Objective
from energy_tuner.compiler.policy import EnergyPolicy
from energy_tuner.measure.runner import SCREEN_REPEATS, MeasureConfig, Runner, enough_samples
from energy_tuner.schedules import make_op
from tests.test_replay import as_records


def replay_screening(records, objective):
    """The records in measurement order, each screened against those before it."""
    seen, screened = [], []
    for r in records:
        bound = objective.screen_bound(seen)
        out = r.status == "ok" and bound is not None and r.latency_s > bound
        r.meta = {"screened_out": True} if out else {}
        screened.append(out)
        seen.append(r)
    return screened


@pytest.mark.parametrize("kind,bound", [("latency", None), ("energy", None), ("edp", None),
                                        ("energy", 1.03), ("pareto", None)])
def test_screening_never_drops_the_chosen_kernel_on_h200_tunes(gpu_records, kind, bound):
    objective = Objective(kind, bound)
    for run in ("latency", "energy"):
        records = as_records([r for r in gpu_records if r["run"] == run])
        full = objective.choose(records)
        screened = replay_screening(records, objective)
        kept = [r for r, out in zip(records, screened) if not out]
        assert objective.choose(kept) is full
        if kind == "latency":   # 1.5x the best so far: a real share of a tune is screened
            assert sum(screened) >= 10


def test_screening_bound_follows_the_objective(gpu_records):
    records = as_records([r for r in gpu_records if r["run"] == "latency"])
    fastest = min(r.latency_s for r in records if r.status == "ok")
    assert Objective("latency").screen_bound([]) is None
    assert Objective("latency").screen_bound(records) == pytest.approx(1.5 * fastest)
    assert Objective("energy").screen_bound(records) == pytest.approx(3.0 * fastest)
    assert Objective("energy", 1.2).screen_bound(records) == pytest.approx(1.1 * 1.2 * fastest)
    fastest_record = next(r for r in records if r.latency_s == fastest)
    fastest_record.meta = {"screened_out": True}       # a rough latency does not set the bound
    assert Objective("latency").screen_bound(records) > 1.5 * fastest


@pytest.fixture(scope="module")
def built_kernel(tmp_path_factory):
    op = make_op("matmul", "32,32,32", "float32")
    path = tmp_path_factory.mktemp("k") / "k.so"
    tvm.compile(tvm.IRModule({"main": op.prim_func()}), target="llvm").export_library(str(path))
    return op, str(path)


def test_runner_stops_timing_once_the_samples_agree(built_kernel):
    op, path = built_kernel
    agreeing = MeasureConfig(latency_repeats=9, latency_min_repeat_ms=1, latency_stable_cv=10.0)
    stable = Runner(op, tvm.cpu(), None, agreeing).run(path, latency_bound_s=10.0)
    assert len(stable.latency_samples) == 5                # the 3 screening samples are kept
    never = MeasureConfig(latency_repeats=9, latency_min_repeat_ms=1, latency_stable_repeats=9)
    assert len(Runner(op, tvm.cpu(), None, never).run(path).latency_samples) == 9


def test_stable_latency_rule_on_h200_tunes():
    """Stopping at 5 samples that agree within 0.3% leaves each candidate's median within 1% of
    its 10-sample one, over three H200 tunes, and stops early for at least a third of them."""
    runs = json.loads((Path(__file__).parent / "data" / "h200_hopper_tune_latency_samples.json")
                      .read_text())["runs"]
    config = MeasureConfig()
    early = total = 0
    for samples in (s for run in runs.values() for s in run):
        total += 1
        n = 5 if enough_samples(samples[:5], config) else 10   # where the runner asks
        assert enough_samples(samples[:n], config)
        early += n == 5
        assert statistics.median(samples[:n]) == pytest.approx(statistics.median(samples), rel=0.01)
    assert total > 150 and early >= total / 3
    assert not enough_samples([1.0, 1.0, 1.0, 1.0], config)    # never fewer than 5
    assert not enough_samples([1.0, 1.0, 1.0, 1.0, 1.1], config)


def test_runner_screens_out_after_a_few_samples(built_kernel):
    op, path = built_kernel
    config = MeasureConfig(latency_repeats=7, latency_min_repeat_ms=1, latency_stable_repeats=7)
    runner = Runner(op, tvm.cpu(), None, config)
    asked = []
    slow = runner.run(path, lambda m: asked.append(m) or True, latency_bound_s=1e-12)
    assert slow.status == "ok" and slow.meta["screened_out"]
    assert len(slow.latency_samples) == SCREEN_REPEATS and slow.energy_j is None
    assert not asked                                   # energy was not even considered
    fast = runner.run(path, latency_bound_s=10.0)
    assert len(fast.latency_samples) == 7 and "screened_out" not in fast.meta
    assert np.isfinite(fast.latency_s)


def test_latency_objective_measures_energy_only_for_a_new_fastest(gpu_records):
    records = as_records([r for r in gpu_records if r["run"] == "latency"])
    fastest = min(r.latency_s for r in records if r.status == "ok")
    policy = EnergyPolicy(Objective("latency"), mode="all")
    assert policy.decide(fastest * 0.9, None, records) is True
    assert policy.decide(fastest * 1.1, None, records) is False
    assert policy.decide(fastest * 1.1, 500.0, records) is False
    assert (policy.measured, policy.skipped) == (1, 2)
    assert EnergyPolicy(Objective("energy"), mode="all").decide(fastest * 1.1, None, records)


def test_energy_bound_is_the_picks_energy_with_a_margin(gpu_records):
    from energy_tuner.compiler.objective import ENERGY_STOP_FACTOR
    records = as_records([r for r in gpu_records if r["run"] == "energy"])
    pick = Objective("energy").choose(records)
    assert Objective("energy").energy_bound(records) == pytest.approx(ENERGY_STOP_FACTOR * pick.energy_j)
    bounded = Objective("energy", 1.03)
    assert bounded.energy_bound(records) == pytest.approx(
        ENERGY_STOP_FACTOR * bounded.choose(records).energy_j)
    assert Objective("energy").energy_bound([]) is None
    for kind in ("latency", "edp", "pareto"):
        assert Objective(kind).energy_bound(records) is None


def test_stopping_early_never_drops_the_chosen_kernel_on_h200_tunes(gpu_records):
    """Replayed in measurement order: a candidate whose measured energy is above the bound of
    those before it would have stopped early; the pick is never among them."""
    objective = Objective("energy")
    for run in ("latency", "energy"):
        records = as_records([r for r in gpu_records if r["run"] == run])
        pick, seen, stopped = objective.choose(records), [], 0
        for r in records:
            bound = objective.energy_bound(seen)
            if bound is not None and r.energy_j is not None and r.energy_j > bound:
                assert r is not pick
                stopped += 1
            seen.append(r)
        assert stopped >= 10          # a real share of a tune's energy windows is saved
