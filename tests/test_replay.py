"""Objectives, selection and the cost model on 128 candidates measured on an H200."""
import numpy as np
import pytest
import tvm
from tvm.s_tir import meta_schedule as ms

from energy_tuner.compiler.database import Record
from energy_tuner.compiler.objective import Objective
from energy_tuner.costmodel import KernelModel, candidate_features
from energy_tuner.schedules import make_op


def as_records(rows):
    fields = ("id", "objective", "status", "latency_s", "energy_j", "power_w", "trace")
    return [Record(workload_key="k", workload=r["workload"], target="", device=r["device"],
                   mod_hash="",
                   **{f: r[f] for f in fields}) for r in rows]


def test_best_follows_the_objective(gpu_records):
    for run in ("latency", "energy"):
        records = as_records([r for r in gpu_records if r["run"] == run])
        ok = [r for r in records if r.status == "ok"]
        for kind in ("latency", "energy", "edp"):
            objective = Objective(kind)
            chosen = objective.choose(records)
            values = [objective.value(r.latency_s, r.energy_j) for r in ok]
            assert objective.value(chosen.latency_s, chosen.energy_j) == min(values)
    # the energy-objective tune's summary on the H200 (tune_energy.log): ids 28 and 35
    energy_run = as_records([r for r in gpu_records if r["run"] == "energy"])
    assert Objective("energy").choose(energy_run).id == 28
    assert Objective("latency").choose(energy_run).id == 35


def test_objective_values():
    assert Objective("latency").value(2e-3, None) == 2e-3
    assert Objective("energy").value(2e-3, None) is None
    assert Objective("edp").value(2e-3, 0.5) == pytest.approx(1e-3)
    lat, energy = np.log([1e-3, 2e-3]), np.log([0.3, 0.1])
    assert Objective("energy").log_score(lat, None, None) is None
    np.testing.assert_allclose(Objective("edp").log_score(lat, energy, None), lat + energy)
    bounded = Objective("energy", max_slowdown=1.5).log_score(lat, energy, best_latency_s=1e-3)
    assert bounded[0] == pytest.approx(energy[0])               # within 1.5x: energy alone
    assert bounded[1] > energy[1] + 1.0                          # 2x slower: penalized


def spearman(a, b):
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def test_cost_model_ranks_held_out_gpu_candidates(gpu_records):
    """Features from the real traces (replayed on CPU), trained on 3/4, ranked on the rest."""
    import tvm.s_tir.tensor_intrin  # noqa: F401  the traces use the WMMA intrinsics

    op = make_op("matmul", "4096,4096,4096", "float16")
    mod = tvm.IRModule({"main": op.prim_func()})
    target = tvm.target.Target("nvidia/nvidia-h100")
    ctx = ms.TuneContext(mod=mod, target=target, num_threads=2)
    args = ms.arg_info.ArgInfo.from_prim_func(mod["main"])
    rows = [r for r in gpu_records if r["status"] == "ok"]
    cands = []
    for r in rows:
        sch = tvm.s_tir.Schedule(mod)
        tvm.s_tir.schedule.Trace.apply_json_to_schedule(r["trace"], sch)
        cands.append(ms.MeasureCandidate(sch, args))
    x = candidate_features(ctx, cands, op)
    lat = np.array([r["latency_s"] for r in rows])
    energy = np.array([r["energy_j"] for r in rows])
    order = np.random.default_rng(0).permutation(len(rows))
    train, test = order[: 3 * len(rows) // 4], order[3 * len(rows) // 4:]
    model = KernelModel(seed=0)
    model.fit(x[train], lat[train], energy[train])
    pred = model.predict_log(x[test])
    log_power = pred["power"]
    assert spearman(pred["latency"], lat[test]) > 0.8
    assert spearman(pred["energy"], energy[test]) > 0.8
    # with the latency measured, predicted power x latency is within a few percent
    mape = np.mean(np.abs(np.exp(log_power) * lat[test] - energy[test]) / energy[test])
    assert mape < 0.10


def test_untrained_model_predicts_nothing():
    model = KernelModel()
    model.fit(np.zeros((2, 3)), np.array([1.0, 2.0]), np.array([np.nan, np.nan]))
    assert model.predict_log(np.zeros((1, 3)))["energy"] is None
    assert model.predict_log(np.zeros((1, 3)))["power"] is None
