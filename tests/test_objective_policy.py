"""Objectives (slowdown bound, Pareto front) and the dynamic energy policy on H200 measurements."""
from pathlib import Path

import pytest

from energy_tuner.compiler.objective import Objective, pareto_front
from energy_tuner.compiler.policy import AUTO, WARMUP, EnergyPolicy, policy_for
from tests.test_replay import as_records

RESULTS = Path(__file__).parent.parent / "experiments" / "results"


@pytest.fixture(scope="module")
def runs(gpu_records):
    return {run: as_records([r for r in gpu_records if r["run"] == run])
            for run in ("latency", "energy")}


def test_max_slowdown_picks_least_energy_within_the_bound(runs):
    for records in runs.values():
        ok = [r for r in records if r.status == "ok"]
        fastest = min(r.latency_s for r in ok)
        for x in (1.0, 1.03, 1.2, 2.0):
            chosen = Objective("energy", x).choose(records)
            allowed = [r for r in ok if r.latency_s <= x * fastest]
            assert chosen.latency_s <= x * fastest
            assert chosen.energy_j == min(r.energy_j for r in allowed)
        assert Objective("energy", 1.0).choose(records).latency_s == fastest


def test_pareto_front(runs):
    for records in runs.values():
        front = pareto_front(records)
        ok = [r for r in records if r.status == "ok"]
        dominates = lambda a, b: (a.latency_s <= b.latency_s and a.energy_j <= b.energy_j  # noqa
                                  and (a.latency_s, a.energy_j) != (b.latency_s, b.energy_j))
        assert not any(dominates(a, b) for a in ok for b in front)
        assert all(any(dominates(a, b) or a is b for a in front) for b in ok)
        assert [r.latency_s for r in front] == sorted(r.latency_s for r in front)


def test_near_front(runs):
    records = runs["latency"]
    best_e = Objective("energy").choose(records).energy_j
    fastest = Objective("latency").choose(records).latency_s
    assert Objective("energy").near_front(1.0, best_e * 1.04, records, margin=0.05)
    assert not Objective("energy").near_front(1.0, best_e * 1.06, records, margin=0.05)
    assert Objective("latency").near_front(fastest * 1.04, 99.0, records, margin=0.05)
    assert not Objective("latency").near_front(fastest * 1.2, 0.0, records, margin=0.05)
    bounded = Objective("energy", 1.03)
    assert not bounded.near_front(fastest * 1.2, 0.0, records, margin=0.05)  # too slow
    front = pareto_front(records)
    assert Objective("pareto").near_front(front[0].latency_s * 0.99, 99.0, records, 0.0)
    assert not Objective("pareto").near_front(front[0].latency_s * 1.5,
                                              front[0].energy_j * 1.5, records, 0.05)


def test_policy_warms_up_then_follows_its_error():
    policy = EnergyPolicy(Objective("energy"), warmup=8)
    assert policy.decide(1e-3, 100.0, []) is True                 # nothing measured yet
    assert policy.margin == policy.base_margin
    for _ in range(5):
        policy.observe(100.0, 1e-3, 0.125)                        # predicted 0.1 J: 20% off
    assert policy.margin == pytest.approx(0.4)
    assert EnergyPolicy(Objective("energy"), mode="all").decide(1.0, 1.0, []) is True
    with pytest.raises(ValueError):
        EnergyPolicy(Objective("energy"), mode="sometimes")


def test_dynamic_policy_replayed_on_the_latency_tune(runs):
    """Fewer energy measurements, same chosen kernel (experiments/policy_replay.py)."""
    from experiments.model_quality import featurize
    from experiments.policy_replay import replay

    records = [r for r in runs["latency"] if r.status == "ok"]
    _, features = featurize(records)
    every = replay(records, features, Objective("energy"), EnergyPolicy(Objective("energy"), "all"))
    dynamic = replay(records, features, Objective("energy"), EnergyPolicy(Objective("energy")))
    assert every["measured"] == len(records) and every["skipped"] == 0
    assert dynamic["measured"] + dynamic["skipped"] == len(records)
    assert dynamic["measured"] < 0.75 * len(records)
    assert dynamic["energy_vs_all"] <= 0.02


def test_auto_is_dynamic_where_the_space_model_was_measured():
    from tvm.target import Target

    from energy_tuner.compiler.spaces import TraceSpace
    from energy_tuner.schedules import make_op
    from energy_tuner.schedules.cpu_matmul import CpuMatmul
    from energy_tuner.schedules.hopper_gemm import HopperGemmSpace

    energy = Objective("energy")
    h100 = Target({"kind": "cuda", "arch": "sm_90", "max_threads_per_block": 1024})
    hopper = HopperGemmSpace(make_op("matmul", "4096,4096,4096", "float16"), h100)
    policy = policy_for(energy, AUTO, hopper)
    assert (policy.mode, policy.warmup) == ("dynamic", len(hopper.runnable_seeds())) == ("dynamic", 4)
    assert policy_for(energy, "all", hopper).mode == "all"
    cpu_op = make_op("matmul", "256,256,256", "float32")
    for space in (CpuMatmul(cpu_op, Target("llvm")), TraceSpace(cpu_op, Target("llvm"))):
        policy = policy_for(energy, AUTO, space)
        assert (policy.mode, policy.warmup) == ("all", WARMUP)
        assert policy_for(energy, "dynamic", space).warmup == WARMUP


@pytest.fixture(scope="module")
def hopper_cases():
    """The committed H200 tunes of the hopper_gemm space (matmul 4096^3 fp16 -> fp32, energy
    policy all), as experiments/results/policy_replay_hopper_2026-12-02 replays them."""
    from experiments.policy_replay import cases

    return cases([str(RESULTS / f"hopper_tune{run}_h200_2026-12-01" / "tune.sqlite")
                  for run in ("_seeded", "", "_seedless")], orders=1, trials=64)


def test_dynamic_policy_meets_issue_11_on_the_hopper_tunes(hopper_cases):
    """Seeds first (as the genetic strategy proposes them): at most 25% of the energies measured,
    final energy within 2% of measuring all; seeds left to the shuffle: within 2%."""
    from experiments.policy_replay import policy, replay

    chosen = [c for c in hopper_cases if "as recorded" not in c.name or c.seeded]
    assert sum(c.seeded for c in chosen) == 2 and len(chosen) == 3
    energy = Objective("energy")
    for case in chosen:
        out = replay(case.records, case.features, energy, policy(energy, case))
        assert out["measured"] + out["skipped"] == sum(r.energy_j is not None for r in case.records)
        assert out["energy_vs_all"] <= 0.02, case.name
        if case.seeded:
            assert out["measured"] <= 0.25 * (out["measured"] + out["skipped"]), case.name
