"""Objectives, selection and the cost model on 128 candidates measured on an H200."""
import numpy as np
import pytest
import tvm
from tvm.s_tir import meta_schedule as ms

from compiler.database import Record
from compiler.objective import objective_value, predicted_log_objective
from compiler.search import best
from costmodel import LatencyEnergyModel, candidate_features
from schedules import make_op


def as_records(rows):
    fields = ("id", "objective", "status", "latency_s", "energy_j", "power_w", "trace")
    return [Record(workload_key="k", workload={}, target="", device=r["device"], mod_hash="",
                   **{f: r[f] for f in fields}) for r in rows]


def test_best_follows_the_objective(gpu_records):
    for run in ("latency", "energy"):
        records = as_records([r for r in gpu_records if r["run"] == run])
        ok = [r for r in records if r.status == "ok"]
        for objective in ("latency", "energy", "edp"):
            chosen = best(records, objective)
            values = [objective_value(objective, r.latency_s, r.energy_j) for r in ok]
            assert objective_value(objective, chosen.latency_s, chosen.energy_j) == min(values)
    # the energy-objective tune's summary on the H200 (tune_energy.log): ids 28 and 35
    energy_run = as_records([r for r in gpu_records if r["run"] == "energy"])
    assert best(energy_run, "energy").id == 28 and best(energy_run, "latency").id == 35


def test_objective_values():
    assert objective_value("latency", 2e-3, None) == 2e-3
    assert objective_value("energy", 2e-3, None) is None
    assert objective_value("edp", 2e-3, 0.5) == pytest.approx(1e-3)
    lat, energy = np.log([1e-3, 2e-3]), np.log([0.3, 0.1])
    assert predicted_log_objective("energy", lat, None) is None
    np.testing.assert_allclose(predicted_log_objective("edp", lat, energy), lat + energy)


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
    x = candidate_features(ctx, cands)
    lat = np.array([r["latency_s"] for r in rows])
    energy = np.array([r["energy_j"] for r in rows])
    order = np.random.default_rng(0).permutation(len(rows))
    train, test = order[: 3 * len(rows) // 4], order[3 * len(rows) // 4:]
    model = LatencyEnergyModel(seed=0)
    model.fit(x[train], lat[train], energy[train])
    log_lat, log_energy = model.predict_log(x[test])
    assert spearman(log_lat, lat[test]) > 0.8
    assert spearman(log_energy, energy[test]) > 0.8


def test_untrained_model_predicts_nothing():
    model = LatencyEnergyModel()
    model.fit(np.zeros((2, 3)), np.array([1.0, 2.0]), np.array([np.nan, np.nan]))
    assert model.predict_log(np.zeros((1, 3))) == (None, None)
