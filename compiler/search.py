"""The tuning loop: propose with TVM's EvolutionarySearch, filter with our model, build, measure, store.

Why drive TVM's `EvolutionarySearch` by hand (TuneContext.generate_measure_candidates /
notify_runner_results) instead of writing our own genetic loop or calling `ms.tune_tir`:
- TVM's C++ strategy already does what a genetic search over this space needs (sampling of the
  design space, mutators, postprocessor validation, epsilon-greedy picks, multithreaded), and it
  ranks its population with whatever `CostModel` it is given. Our `ObjectiveCostModel` makes that
  ranking follow the user's objective (latency, energy or EDP) instead of run time alone.
- `tune_tir`'s task scheduler owns the build/run/database loop, which would hide energy: TVM's
  records carry run times only. Driving the strategy ourselves lets measure/ record energy,
  correctness and metadata for every candidate, lets the SQLite store resume a run, and lets the
  model be retrained on energy as results arrive.
"""
from __future__ import annotations

import hashlib
import json
import math
import tempfile
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import psutil
import tvm
import tvm_ffi
from tvm.s_tir import meta_schedule as ms
from tvm.s_tir.meta_schedule.cost_model import PyCostModel
from tvm.ir.utils import derived_object

from compiler.builder import Builder
from compiler.database import Record, TuningDatabase
from compiler.objective import objective_value, predicted_log_objective
from compiler.target import Platform
from costmodel import LatencyEnergyModel, candidate_features
from measure.runner import CandidateRunner
from schedules import Op, design_space

FAILED_RUN_SECS = 1e10  # what a failed or unmeasurable candidate "costs" in the strategy's database


def plain_json(obj):
    """TVM trace JSON (lists holding IntImm/FloatImm/Array/Map) as plain Python values."""
    if isinstance(obj, (list, tuple, tvm_ffi.Array)):
        return [plain_json(x) for x in obj]
    if isinstance(obj, (dict, tvm_ffi.Map)):
        return {str(k): plain_json(v) for k, v in obj.items()}
    if isinstance(obj, (tvm.tirx.IntImm, tvm.tirx.FloatImm)):
        return obj.value
    return obj


def workload_key(op: Op, plat: Platform) -> str:
    ident = {"workload": op.describe(), "target": str(plat.target.export()), "device": plat.device_name}
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]


def module_hash(mod: tvm.IRModule) -> str:
    return f"{tvm_ffi.structural_hash(mod):016x}"


@derived_object
class ObjectiveCostModel(PyCostModel):
    """Scores candidates for the strategy: minus the predicted log objective (higher is better).

    Until the models have enough data the scores are random, i.e. the search samples uniformly.
    Training happens in the tuning loop, which sees energy; `update` is therefore a no-op.
    """

    def __init__(self, model: LatencyEnergyModel, objective: str, seed: int) -> None:
        super().__init__()
        self.model, self.objective = model, objective
        self.rng = np.random.default_rng(seed)

    def load(self, path: str) -> None:
        pass

    def save(self, path: str) -> None:
        pass

    def update(self, context, candidates, results) -> None:
        pass

    def predict(self, context: ms.TuneContext, candidates: list[ms.MeasureCandidate]) -> np.ndarray:
        log_lat, log_energy = self.model.predict_log(candidate_features(context, candidates))
        log_obj = predicted_log_objective(self.objective, log_lat, log_energy)
        if log_obj is None:
            return self.rng.random(len(candidates))
        return -np.asarray(log_obj, dtype="float64")


@dataclass
class TuneStats:
    previous: int = 0           # candidates of this objective already in the database
    measured: int = 0           # measured in this run
    build_errors: int = 0
    run_errors: int = 0
    wrong: int = 0
    exhausted: bool = False     # the strategy found no new candidates before the budget was spent


@dataclass
class TuneResult:
    records: list[Record]       # every record of this workload, all runs and objectives
    stats: TuneStats = field(default_factory=TuneStats)


class Tuner:
    def __init__(self, op: Op, plat: Platform, runner: CandidateRunner, db: TuningDatabase, objective: str,
                 seed: int = 0, batch: int = 16, population: int = 512) -> None:
        self.op, self.plat, self.runner, self.db = op, plat, runner, db
        self.objective, self.seed, self.batch, self.population = objective, seed, batch, population
        self.mod = tvm.IRModule({"main": op.prim_func()})
        self.key = workload_key(op, plat)
        self.args_info = ms.arg_info.ArgInfo.from_prim_func(self.mod["main"])
        self.model = LatencyEnergyModel(seed)

    def _record(self, sch: tvm.s_tir.Schedule, status: str, **fields) -> Record:
        return Record(id=None, workload_key=self.key, workload=self.op.describe(),
                      target=str(self.plat.target.export()), device=self.plat.device_name,
                      objective=self.objective, mod_hash=module_hash(sch.mod),
                      trace=plain_json(sch.trace.as_json()), status=status, **fields)

    def schedule(self, record: Record) -> tvm.s_tir.Schedule:
        sch = tvm.s_tir.Schedule(self.mod)
        tvm.s_tir.schedule.Trace.apply_json_to_schedule(record.trace, sch)
        return sch

    def _run_secs(self, record: Record) -> float:
        value = objective_value(self.objective, record.latency_s, record.energy_j)
        return FAILED_RUN_SECS if record.status != "ok" or value is None else value

    def tune(self, trials: int, on_record: Callable[[Record], None] = lambda r: None) -> TuneResult:
        """Measure until this objective has `trials` candidates for the workload in the database."""
        records = self.db.records(self.key)
        stats = TuneStats(previous=sum(r.objective == self.objective for r in records))
        remaining = trials - stats.previous
        if remaining <= 0:
            return TuneResult(records, stats)

        threads = psutil.cpu_count(logical=True) or 1
        ctx = ms.TuneContext(mod=self.mod, target=self.plat.target,
                             space_generator=design_space(self.op, self.plat.target),
                             search_strategy=ms.search_strategy.EvolutionarySearch(
                                 population_size=self.population),
                             task_name=self.op.name, rand_state=self.seed, num_threads=threads)
        strategy_db = ms.database.MemoryDatabase()
        workload = strategy_db.commit_workload(self.mod)
        known: dict[str, Record] = {}
        train_cands, train_lat, train_energy = [], [], []

        def learn(record: Record, sch: tvm.s_tir.Schedule) -> None:
            known[record.mod_hash] = record
            strategy_db.commit_tuning_record(ms.database.TuningRecord(
                sch.trace, workload, [self._run_secs(record)], self.plat.target, self.args_info))
            if record.status == "ok":
                train_cands.append(ms.MeasureCandidate(sch, self.args_info))
                train_lat.append(record.latency_s)
                train_energy.append(math.nan if record.energy_j is None else record.energy_j)

        def retrain() -> None:
            if train_cands:
                self.model.fit(candidate_features(ctx, train_cands), np.array(train_lat),
                               np.array(train_energy, dtype="float64"))

        for record in records:
            learn(record, self.schedule(record))
        retrain()

        cost_model = ObjectiveCostModel(self.model, self.objective, self.seed)
        ctx.pre_tuning(max_trials=trials + len(records), num_trials_per_iter=self.batch,
                       database=strategy_db, cost_model=cost_model)
        with tempfile.TemporaryDirectory(prefix="tune-artifacts-") as out_dir:
            builder = Builder(self.plat.target, out_dir, workers=threads)
            try:
                while stats.measured < remaining:
                    candidates = ctx.generate_measure_candidates()
                    if not candidates:
                        stats.exhausted = True
                        break
                    hashes = [module_hash(c.sch.mod) for c in candidates]
                    fresh = [c for c, h in zip(candidates, hashes) if h not in known]
                    fresh = fresh[: remaining - stats.measured]
                    builds = builder.build([c.sch.mod for c in fresh])
                    for cand, built in zip(fresh, builds):
                        record = self._measure(cand.sch, built.artifact, built.error, stats)
                        record.id = self.db.add(record)
                        records.append(record)
                        learn(record, cand.sch)
                        on_record(record)
                    # candidates seen in an earlier run are answered from the database
                    done = [(c, known[h]) for c, h in zip(candidates, hashes) if h in known]
                    ctx.notify_runner_results(
                        [c for c, _ in done],
                        [ms.runner.RunnerResult([self._run_secs(r)], None) for _, r in done])
                    retrain()
            finally:
                builder.close()
                ctx.post_tuning()
        return TuneResult(records, stats)

    def _measure(self, sch: tvm.s_tir.Schedule, artifact: str | None, build_error: str | None,
                 stats: TuneStats) -> Record:
        stats.measured += 1
        if artifact is None:
            stats.build_errors += 1
            return self._record(sch, "build_error", error=build_error)
        m = self.runner.run(artifact)
        stats.run_errors += m.status == "run_error"
        stats.wrong += m.status == "wrong"
        return self._record(sch, m.status, error=m.error, rel_error=m.rel_error,
                            latency_s=m.latency_s, latency_samples=m.latency_samples,
                            energy_j=m.energy_j, power_w=m.power_w, meta=m.meta)


def best(records: list[Record], objective: str) -> Record | None:
    """The correct record with the smallest objective value (None if there is none)."""
    scored = [(objective_value(objective, r.latency_s, r.energy_j), r.id or 0, r)
              for r in records if r.status == "ok"]
    scored = [s for s in scored if s[0] is not None]
    return min(scored, key=lambda s: (s[0], s[1]))[2] if scored else None
