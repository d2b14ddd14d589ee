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
  model be retrained on energy as results arrive, and lets the dynamic energy policy
  (compiler/policy.py) skip energy measurements of candidates that cannot matter.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import tvm
import tvm_ffi
from tvm.s_tir import meta_schedule as ms
from tvm.s_tir.meta_schedule.cost_model import PyCostModel
from tvm.ir.utils import derived_object

from .builder import Builder
from .database import Record, TuningDatabase
from .objective import Objective
from .policy import EnergyPolicy
from .scoring import Scorer
from .target import Platform
from ..costmodel import KernelModel, candidate_features
from ..measure.runner import CandidateRunner
from ..schedules import Op, design_space

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
    """Scores candidates for TVM's strategy with a `Scorer` (positive, unit-free; random until
    the models have enough data, i.e. the search then samples uniformly). Training happens in the
    tuning loop, which sees energy; `update` is therefore a no-op."""

    def __init__(self, scorer: Scorer,
                 featurize: Callable[[ms.TuneContext, list[ms.MeasureCandidate]], np.ndarray]
                 ) -> None:
        super().__init__()
        self.scorer, self.featurize = scorer, featurize

    def load(self, path: str) -> None:
        pass

    def save(self, path: str) -> None:
        pass

    def update(self, context, candidates, results) -> None:
        pass

    def predict(self, context: ms.TuneContext, candidates: list[ms.MeasureCandidate]) -> np.ndarray:
        return self.scorer(self.featurize(context, list(candidates)))


@dataclass
class TuneStats:
    previous: int = 0           # candidates of this objective already in the database
    measured: int = 0           # measured in this run
    build_errors: int = 0
    run_errors: int = 0
    wrong: int = 0
    energy_measured: int = 0    # correct candidates whose energy was measured in this run
    energy_skipped: int = 0     # ... and whose energy the dynamic policy left to the model
    proposal_s: list[float] = field(default_factory=list)  # per generation, search + scoring
    search_wait_s: float = 0.0  # of which the loop spent waiting (the rest overlapped measuring)
    warm_start: str | None = None  # workload key whose saved model started this tune
    exhausted: bool = False     # the strategy found no new candidates before the budget was spent


@dataclass
class TuneResult:
    records: list[Record]       # every record of this workload, all runs and objectives
    stats: TuneStats = field(default_factory=TuneStats)


def in_background(fn: Callable[[], object]) -> Future:
    """fn() on a daemon thread (a second Ctrl-C does not wait for it); its result as a Future."""
    future: Future = Future()

    def run() -> None:
        try:
            future.set_result(fn())
        except BaseException as error:  # handed to whoever waits on the future
            future.set_exception(error)

    threading.Thread(target=run, daemon=True, name="search").start()
    return future


def at_once(fn: Callable[[], object]) -> Future:
    future: Future = Future()
    future.set_result(fn())
    return future


class Tuner:
    """overlap: propose the next batch while the current one is measured (TVM's strategy runs in
    C++ without the GIL). Worth it only when the device is not the CPU that searches; the search
    then leaves one core to the measuring worker. The next batch is proposed with the model and
    strategy state of the batch before: they are updated only when no proposal is running."""

    def __init__(self, op: Op, plat: Platform, runner: CandidateRunner, db: TuningDatabase,
                 objective: Objective, seed: int = 0, batch: int = 16, population: int = 512,
                 energy_policy: str = "all", overlap: bool = False) -> None:
        self.op, self.plat, self.runner, self.db = op, plat, runner, db
        self.objective, self.seed, self.batch, self.population = objective, seed, batch, population
        self.overlap = overlap
        self.mod = tvm.IRModule({"main": op.prim_func()})
        self.key = workload_key(op, plat)
        self.family = f"{op.name}/{op.dtype}/{plat.device_name}"
        self.args_info = ms.arg_info.ArgInfo.from_prim_func(self.mod["main"])
        self.model = KernelModel(seed)
        self.policy = EnergyPolicy(objective, energy_policy)
        self.scorer = Scorer(objective, self.model, seed)
        self.records: list[Record] = []

    def _record(self, sch: tvm.s_tir.Schedule, status: str, **fields) -> Record:
        return Record(id=None, workload_key=self.key, workload=self.op.describe(),
                      target=str(self.plat.target.export()), device=self.plat.device_name,
                      objective=self.objective.key, mod_hash=module_hash(sch.mod),
                      trace=plain_json(sch.trace.as_json()), status=status, **fields)

    def schedule(self, record: Record) -> tvm.s_tir.Schedule:
        sch = tvm.s_tir.Schedule(self.mod)
        tvm.s_tir.schedule.Trace.apply_json_to_schedule(record.trace, sch)
        return sch

    def _run_secs(self, record: Record) -> float:
        """What the strategy's database ranks by: the objective, with the model's energy for a
        candidate whose energy the policy did not measure (so it can still seed the search)."""
        energy = record.energy_j
        if energy is None and record.meta:
            energy = record.meta.get("energy_predicted_j")
        value = self.objective.value(record.latency_s, energy)
        return FAILED_RUN_SECS if record.status != "ok" or value is None else value

    def tune(self, trials: int, on_record: Callable[[Record], None] = lambda r: None) -> TuneResult:
        """Measure until this objective has `trials` candidates for the workload in the database."""
        self.records = records = self.db.records(self.key)
        stats = TuneStats(previous=sum(r.objective == self.objective.key for r in records))
        remaining = trials - stats.previous
        if remaining <= 0:
            return TuneResult(records, stats)

        threads = len(os.sched_getaffinity(0))  # the CPUs we may use (taskset, cpuset)
        ctx = ms.TuneContext(mod=self.mod, target=self.plat.target,
                             space_generator=design_space(self.op, self.plat.target),
                             search_strategy=ms.search_strategy.EvolutionarySearch(
                                 population_size=self.population),
                             task_name=self.op.name, rand_state=self.seed,
                             num_threads=max(1, threads - 1) if self.overlap else threads)
        strategy_db = ms.database.MemoryDatabase()
        workload = strategy_db.commit_workload(self.mod)
        known: dict[str, Record] = {}
        train: list[tuple[ms.MeasureCandidate, float, float]] = []

        def learn(record: Record, sch: tvm.s_tir.Schedule) -> None:
            known[record.mod_hash] = record
            strategy_db.commit_tuning_record(ms.database.TuningRecord(
                sch.trace, workload, [self._run_secs(record)], self.plat.target, self.args_info))
            if record.status == "ok":
                energy = math.nan if record.energy_j is None else record.energy_j
                train.append((ms.MeasureCandidate(sch, self.args_info), record.latency_s, energy))

        def retrain() -> None:
            if train:
                cands, lat, energy = zip(*train)
                self.model.fit(candidate_features(ctx, list(cands), self.op), np.array(lat),
                               np.array(energy, dtype="float64"))
                self.db.save_model(self.key, self.family, self.model.to_bytes(), len(train))

        def propose() -> list[ms.MeasureCandidate]:
            started = time.perf_counter()
            candidates = ctx.generate_measure_candidates()
            stats.proposal_s.append(time.perf_counter() - started)
            return list(candidates or [])

        def start_proposal(run: Callable[[Callable[[], object]], Future]) -> Future:
            self.scorer.begin(self.records)
            return run(propose)

        def wait(proposal: Future) -> list[ms.MeasureCandidate]:
            started = time.perf_counter()
            candidates = proposal.result()
            stats.search_wait_s += time.perf_counter() - started
            return candidates

        for record in records:
            learn(record, self.schedule(record))
        retrain()
        if not train and (saved := self.db.load_model(self.family, self.key)) is not None:
            stats.warm_start, blobs = saved
            self.model.load_bytes(blobs)

        ctx.pre_tuning(max_trials=trials + len(records), num_trials_per_iter=self.batch,
                       database=strategy_db,
                       cost_model=ObjectiveCostModel(
                           self.scorer, lambda c, cands: candidate_features(c, cands, self.op)))
        with tempfile.TemporaryDirectory(prefix="tune-artifacts-") as out_dir:
            builder = Builder(self.plat.target, out_dir, workers=threads)
            proposal: Future | None = None
            try:
                candidates = wait(start_proposal(at_once))
                while candidates:
                    hashes = [module_hash(c.sch.mod) for c in candidates]
                    fresh = [c for c, h in zip(candidates, hashes) if h not in known]
                    fresh = fresh[: remaining - stats.measured]
                    builds = builder.build([c.sch.mod for c in fresh])
                    power = self._predicted_power(ctx, fresh)
                    more = stats.measured + len(fresh) < remaining
                    if more and self.overlap:  # search on while the device measures
                        proposal = start_proposal(in_background)
                    measured = []
                    for cand, built, watts in zip(fresh, builds, power):
                        record = self._measure(cand.sch, built.artifact, built.error, watts, stats)
                        record.id = self.db.add(record)
                        records.append(record)
                        measured.append((record, cand.sch))
                        on_record(record)
                    if proposal is not None:  # the strategy and model are not thread-safe
                        next_candidates = wait(proposal)
                        proposal = None
                    for record, sch in measured:
                        learn(record, sch)
                    # measured now, or in an earlier run (answered from the database)
                    done = [(c, known[h]) for c, h in zip(candidates, hashes) if h in known]
                    ctx.notify_runner_results(
                        [c for c, _ in done],
                        [ms.runner.RunnerResult([self._run_secs(r)], None) for _, r in done])
                    retrain()
                    if not more:
                        break
                    candidates = next_candidates if self.overlap else wait(start_proposal(at_once))
                else:
                    stats.exhausted = True
            finally:
                builder.close()
                if proposal is not None:  # interrupted while searching: let the search end
                    proposal.exception()
                ctx.post_tuning()
        return TuneResult(records, stats)

    def _predicted_power(self, ctx: ms.TuneContext,
                         candidates: list[ms.MeasureCandidate]) -> list[float | None]:
        """Predicted energy per second of (burst) latency, per candidate; None untrained."""
        if not candidates or self.model.power is None:
            return [None] * len(candidates)
        log_power = self.model.predict_log(candidate_features(ctx, candidates, self.op))["power"]
        return [float(math.exp(p)) for p in log_power]

    def _measure(self, sch: tvm.s_tir.Schedule, artifact: str | None, build_error: str | None,
                 predicted_power_w: float | None, stats: TuneStats) -> Record:
        stats.measured += 1
        if artifact is None:
            stats.build_errors += 1
            return self._record(sch, "build_error", error=build_error)
        m = self.runner.run(artifact, lambda partial: self.policy.decide(
            partial.latency_s, predicted_power_w, self.records))
        stats.run_errors += m.status == "run_error"
        stats.wrong += m.status == "wrong"
        if m.status == "ok" and predicted_power_w is not None:
            m.meta["energy_predicted_j"] = predicted_power_w * m.latency_s
        if m.energy_j is not None:
            stats.energy_measured += 1
            self.policy.observe(predicted_power_w, m.latency_s, m.energy_j)
        stats.energy_skipped += bool(m.meta.get("energy_skipped"))
        return self._record(sch, m.status, error=m.error, rel_error=m.rel_error,
                            latency_s=m.latency_s, latency_samples=m.latency_samples,
                            energy_j=m.energy_j, power_w=m.power_w, meta=m.meta)
