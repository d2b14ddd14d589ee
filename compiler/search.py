"""The tuning loop: a strategy proposes candidates from a space, we build, measure, store, learn.

The space and the strategy are chosen by name (compiler/spaces.py, compiler/strategies): TVM's
EvolutionarySearch over MetaSchedule trace spaces, our genetic search over knob spaces. The loop
itself knows neither: it dedupes proposals against the database, builds them in parallel
(compiler/builder.py; with `overlap`, while the batch before is measured), measures them
(measure/; on several workers at once where the runner has several slots), stores every result
as it arrives
(compiler/database.py), retrains the cost model, and tells the strategy. Driving the strategy
ourselves (not `ms.tune_tir`) lets measure/ record energy, correctness and metadata for every
candidate, lets the SQLite store resume a run, lets the model learn energy, and lets the dynamic
energy policy (compiler/policy.py) skip energy measurements of candidates that cannot matter.
"""
from __future__ import annotations

import math
import os
import queue
import tempfile
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

import numpy as np
import tvm

from .builder import Builder, BuildResult
from .database import Record, TuningDatabase
from .identity import measurement_config, target_json, workload_key
from .objective import Objective
from .policy import AUTO as POLICY_AUTO, policy_for
from .scoring import Scorer
from .spaces import AUTO, choose_space, stored_module
from .strategies import Candidate, SearchSetup, strategy_for
from .target import Platform
from ..costmodel import KernelModel
from ..measure.runner import CandidateRunner, Measurement
from ..schedules import Op


@dataclass
class TuneStats:
    previous: int = 0           # candidates of this objective already in the database
    measured: int = 0           # measured in this run
    build_errors: int = 0
    run_errors: int = 0
    wrong: int = 0
    energy_measured: int = 0    # correct candidates whose energy was measured in this run
    energy_skipped: int = 0     # ... and whose energy the policy left to the model
    screened: int = 0           # correct candidates screened out: clearly slower than the best
    proposal_s: list[float] = field(default_factory=list)  # per generation, search + scoring
    build_wait_s: float = 0.0   # the loop waited for builds
    first_build_wait_s: float = 0.0  # ... of which for the first batch (worker start-up included)
    wall_s: float = 0.0         # the whole tune of this run
    first_record_s: float | None = None  # ... until its first measured record (start-up)
    search_wait_s: float = 0.0  # of which the loop spent waiting (the rest overlapped measuring)
    warm_start: str | None = None  # workload key whose saved model started this tune
    exhausted: bool = False     # the strategy found no new candidates before the budget was spent
    space: str = ""             # the space searched and the strategy that searched it
    strategy: str = ""
    strategy_report: str | None = None  # the strategy's own line (e.g. rejected settings)


@dataclass
class Batch:
    """A proposed batch as the loop measures it."""
    candidates: list[Candidate]     # as proposed: the strategy is told about all of them
    fresh: list[Candidate]          # those to measure: new, within the budget
    builds: list[Future]            # their BuildResults, started when the batch was planned


@dataclass
class TuneResult:
    records: list[Record]       # every record of this workload, all runs and objectives
    stats: TuneStats = field(default_factory=TuneStats)


def usable_cpus(overlap: bool) -> int:
    """Threads for a tune's search and build processes: the CPUs we may use (taskset, cpuset),
    one left to the measuring worker when they overlap measuring."""
    threads = len(os.sched_getaffinity(0))
    return max(1, threads - 1) if overlap else threads


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
    """space: a registered knob space's name, `trace` or `auto` (compiler/spaces.py); strategy:
    a registered strategy's name, or None for the space's default (compiler/strategies).

    overlap: propose the next batch while the current one is measured (TVM's strategy runs in
    C++ without the GIL), start its builds as soon as it is proposed, and measure each candidate
    as soon as its build is done. Worth it only when the device is not the CPU that searches and
    builds (on the CPU they would disturb the timings); search and builds then leave one core to
    the measuring worker. The next batch is proposed with the model and strategy state of the
    batch before: they are updated only when no proposal is running, so batch i+1 is proposed
    from the results up to batch i-1 (without overlap: up to batch i). With one measurement slot
    the records are stored in the order proposed, whatever order the builds finish in.

    energy_policy: `auto` (the space's default), `dynamic` or `all` (compiler/policy.py).

    measurement: how candidates will be measured (`measure.runner.measurement_identity`), for a
    tuner whose runner is attached later (runner None); otherwise the runner's.

    builder: a build pool shared with other tuners (a model's tasks), which `tune` leaves open;
    None: each `tune` starts its own and closes it."""

    def __init__(self, op: Op, plat: Platform, runner: CandidateRunner, db: TuningDatabase,
                 objective: Objective, seed: int = 0, batch: int = 16, population: int = 512,
                 energy_policy: str = POLICY_AUTO, overlap: bool = False, space: str = AUTO,
                 strategy: str | None = None, screen: bool = True,
                 measurement: dict | None = None, builder: Builder | None = None,
                 seeds: bool = True) -> None:
        self.op, self.plat, self.runner, self.db, self.builder = op, plat, runner, db, builder
        self.objective, self.seed, self.batch, self.population = objective, seed, batch, population
        self.overlap, self.screen, self.seeds = overlap, screen, seeds
        self.space = choose_space(op, plat.target, space)
        self.strategy_cls = strategy_for(self.space, strategy)
        self.policy = policy_for(objective, energy_policy, self.space, seeds)
        measurement = runner.measurement if measurement is None else measurement
        self.key = workload_key(op, plat, measurement_config(measurement, self.policy.mode))
        # workloads whose models can share weights: same op, dtype, device and space (features)
        self.family = f"{op.name}/{op.dtype}/{plat.device_name}/{self.space.name}"
        self.model = KernelModel(seed)
        # the energy policy's power model until `model` has one (its first batch): refit after
        # each measured energy, so the policy can skip energies within that batch; the search's
        # `model` changes only between batches, so proposals stay reproducible
        self.early = KernelModel(seed)
        self.scorer = Scorer(objective, self.model, seed)
        self.records: list[Record] = []
        self.features: dict[str, np.ndarray] = {}  # feature row per mod_hash, computed once

    def _record(self, cand: Candidate, status: str, **fields) -> Record:
        return Record(id=None, workload_key=self.key, workload=self.op.describe(),
                      target=target_json(self.plat.target), device=self.plat.device_name,
                      objective=self.objective.key, mod_hash=cand.mod_hash, trace=cand.trace,
                      status=status, **fields)

    def module(self, record: Record) -> tvm.IRModule:
        """The module a stored record describes (to export or rebuild it)."""
        return stored_module(self.space, record.trace)

    def _setup(self, trials: int) -> SearchSetup:
        return SearchSetup(self.op, self.plat.target, self.space, self.scorer, self._cost,
                           seed=self.seed, batch=self.batch, population=self.population,
                           threads=usable_cpus(self.overlap), max_trials=trials,
                           seeds=self.seeds)

    def _cost(self, record: Record) -> float:
        """What a strategy ranks a record by: the objective, with the model's energy for a
        candidate whose energy the policy did not measure (so it can still seed the search);
        inf for a failed or unmeasurable one."""
        energy = record.energy_j
        if energy is None and record.meta:
            energy = record.meta.get("energy_predicted_j")
        value = self.objective.value(record.latency_s, energy)
        return math.inf if record.status != "ok" or value is None else value

    def _features(self, strategy, cands: list[Candidate]) -> np.ndarray:
        new = [c for c in cands if c.mod_hash not in self.features]
        if new:
            self.features.update(zip((c.mod_hash for c in new), strategy.features(new)))
        return np.stack([self.features[c.mod_hash] for c in cands])

    def tune(self, trials: int, on_record: Callable[[Record], None] = lambda r: None) -> TuneResult:
        """Measure until this objective has `trials` candidates for the workload in the database."""
        self.records = records = self.db.records(self.key)
        stats = TuneStats(previous=sum(r.objective == self.objective.key for r in records),
                          space=self.space.name, strategy=self.strategy_cls.name)
        remaining = trials - stats.previous
        if remaining <= 0:
            return TuneResult(records, stats)

        started = time.perf_counter()
        strategy = self.strategy_cls(self._setup(trials + len(records)))
        known: dict[str, Record] = {}
        train: list[tuple[Candidate, float, float]] = []

        def learn(record: Record, cand: Candidate | None) -> None:
            known[record.mod_hash] = record
            if cand is None:  # a candidate of another space: chosen from, not learned from
                return
            strategy.learn(cand, record)
            if record.status == "ok":
                energy = math.nan if record.energy_j is None else record.energy_j
                train.append((cand, record.latency_s, energy))

        early: list[tuple[Candidate, float, float]] = []   # this batch's energies, for `early`

        def learn_early(record: Record, cand: Candidate) -> None:
            """While `model` has no power model, refit `early` on every energy measured so far."""
            if self.model.power is not None or record.energy_j is None:
                return
            early.append((cand, record.latency_s, record.energy_j))
            rows = [(c, lat, e) for c, lat, e in train + early if not math.isnan(e)]
            cands, lat, energy = zip(*rows)
            self.early.fit(self._features(strategy, list(cands)), np.array(lat), np.array(energy))

        def retrain() -> None:
            early.clear()
            if train:
                cands, lat, energy = zip(*train)
                self.model.fit(self._features(strategy, list(cands)), np.array(lat),
                               np.array(energy, dtype="float64"))
                self.db.save_model(self.key, self.family, self.model.to_bytes(), len(train))

        def propose() -> list[Candidate]:
            started = time.perf_counter()
            candidates = strategy.propose()
            stats.proposal_s.append(time.perf_counter() - started)
            return candidates

        def start_proposal(run: Callable[[Callable[[], object]], Future]) -> Future:
            self.scorer.begin(self.records)
            return run(propose)

        def wait(proposal: Future) -> list[Candidate]:
            started = time.perf_counter()
            candidates = proposal.result()
            stats.search_wait_s += time.perf_counter() - started
            return candidates

        if (saved := self.db.load_model(self.family, self.key)) is not None:
            stats.warm_start, blobs = saved  # a prior that every retrain builds on
            self.model.load_bytes(blobs)
        for record in records:
            learn(record, strategy.candidate(record))
        retrain()

        with tempfile.TemporaryDirectory(prefix="tune-artifacts-") as out_dir:
            builder = self.builder or Builder(self.space.target, out_dir,
                                              workers=usable_cpus(self.overlap))
            submitted: list[Future] = []

            def plan(candidates: list[Candidate], planned: int,
                     in_flight: Sequence[Candidate] = ()) -> Batch:
                """The new ones among `candidates` (neither known nor `in_flight`), as many as
                the budget takes after `planned` measurements, their builds started."""
                taken = known.keys() | {c.mod_hash for c in in_flight}
                new = {c.mod_hash: c for c in candidates if c.mod_hash not in taken}
                fresh = list(new.values())[: remaining - planned]
                # each module is written by the build thread that takes it, not by this loop
                builds = builder.submit([lambda c=c: c.mod for c in fresh], self.space.target,
                                        self.space.compile_options)
                submitted.extend(builds)
                return Batch(candidates, fresh, builds)

            proposal: Future | None = None
            try:
                batch = plan(wait(start_proposal(at_once)), 0)
                while batch.candidates:
                    planned = stats.measured + len(batch.fresh)
                    more = planned < remaining
                    # predicted as each candidate is taken to be measured (see `early`)
                    power = (self._predicted_power(strategy, [c])[0] for c in batch.fresh)
                    builds = self._waited(batch.builds, stats, first=not stats.measured)
                    if not self.overlap:  # measure once every build is done (building while
                        builds = iter(list(builds))  # measuring on the CPU disturbs its timing)
                    elif more:  # search on while the device measures
                        proposal = start_proposal(in_background)
                    measured, upcoming = [], None
                    for cand, built, watts, m in self._measured(zip(batch.fresh, builds, power)):
                        record = self._book(cand, built, watts, m, stats)
                        record.id = self.db.add(record)
                        if stats.first_record_s is None:
                            stats.first_record_s = time.perf_counter() - started
                        records.append(record)
                        measured.append((record, cand))
                        learn_early(record, cand)
                        on_record(record)
                        if proposal is not None and proposal.done():  # build it while measuring
                            upcoming, proposal = plan(wait(proposal), planned, batch.fresh), None
                    if proposal is not None:  # the strategy and model are not thread-safe
                        upcoming, proposal = plan(wait(proposal), planned, batch.fresh), None
                    for record, cand in measured:
                        learn(record, cand)
                    # measured now, or in an earlier run (answered from the database)
                    strategy.end_batch(batch.candidates, known)
                    retrain()
                    if not more:
                        break
                    batch = upcoming or plan(wait(start_proposal(at_once)), stats.measured)
                else:
                    stats.exhausted = True
            finally:
                for build in submitted:  # queued for this tune and not measured: dropped
                    build.cancel()
                if builder is not self.builder:
                    builder.close()  # cancels queued builds, kills running ones: nothing waits
                if proposal is not None:  # interrupted while searching: let the search end
                    proposal.exception()
                strategy.close()
        stats.strategy_report = strategy.report()
        stats.wall_s = time.perf_counter() - started
        return TuneResult(records, stats)

    @staticmethod
    def _waited(builds: list[Future], stats: TuneStats, first: bool = False
                ) -> Iterator[BuildResult]:
        """The builds' results in order, the time spent waiting for each added to
        stats.build_wait_s (with several measurement slots: the time a free slot waited), and to
        stats.first_build_wait_s for the `first` batch."""
        for build in builds:
            started = time.perf_counter()
            built = build.result()
            waited = time.perf_counter() - started
            stats.build_wait_s += waited
            stats.first_build_wait_s += waited if first else 0.0
            yield built

    def _predicted_power(self, strategy, candidates: list[Candidate]) -> list[float | None]:
        """Predicted energy per second of (burst) latency, per candidate, by `model`, else by
        `early`; None while neither has a power model."""
        model = self.model if self.model.power is not None else self.early
        if not candidates or model.power is None:
            return [None] * len(candidates)
        log_power = model.predict_log(self._features(strategy, candidates))["power"]
        return [float(math.exp(p)) for p in log_power]

    def _measured(self, jobs: Iterator[tuple[Candidate, BuildResult, float | None]]
                  ) -> Iterator[tuple[Candidate, BuildResult, float | None, Measurement | None]]:
        """Measure each (candidate, build, predicted power), on as many
        measurement slots at once as the runner has (`slots`: one per worker, e.g. per GPU);
        with one slot in order, with several in the order they finish."""
        slots = getattr(self.runner, "slots", 1)
        if slots == 1:
            for job in jobs:
                yield (*job, self._run(*job))
            return
        take, done, stop = threading.Lock(), queue.Queue(), threading.Event()

        def slot() -> None:
            while not stop.is_set():
                with take:  # the jobs are a zip iterator: one reader at a time
                    job = next(jobs, None)
                if job is None:
                    break
                try:
                    done.put((*job, self._run(*job)))
                except BaseException as error:  # the harness failed: handed to the loop
                    done.put(error)
                    break
            done.put(None)

        for _ in range(slots):
            threading.Thread(target=slot, daemon=True, name="measure").start()
        try:
            for _ in range(slots):
                while (item := done.get()) is not None:
                    if isinstance(item, BaseException):
                        raise item
                    yield item
        finally:
            stop.set()

    def _run(self, cand: Candidate, built: BuildResult, predicted_power_w: float | None
             ) -> Measurement | None:
        """The runner's measurement of a built candidate (None if it did not build); safe to
        call from several threads when the runner has several slots."""
        if built.artifact is None:
            return None
        return self.runner.run(built.artifact, lambda partial: self.policy.decide(
            partial.latency_s, predicted_power_w, self.records),
            latency_bound_s=self.objective.screen_bound(self.records) if self.screen else None,
            energy_bound_j=self.objective.energy_bound(self.records) if self.screen else None)

    def _book(self, cand: Candidate, built: BuildResult, predicted_power_w: float | None,
              m: Measurement | None, stats: TuneStats) -> Record:
        """Count a measurement in the statistics and the energy policy; its record."""
        stats.measured += 1
        if m is None:
            stats.build_errors += 1
            return self._record(cand, "build_error", error=built.error)
        stats.run_errors += m.status == "run_error"
        stats.wrong += m.status == "wrong"
        if m.status == "ok" and predicted_power_w is not None:
            m.meta["energy_predicted_j"] = predicted_power_w * m.latency_s
        if m.energy_j is not None:
            stats.energy_measured += 1
            self.policy.observe(predicted_power_w, m.latency_s, m.energy_j)
        stats.energy_skipped += bool(m.meta.get("energy_skipped"))
        stats.screened += bool(m.meta.get("screened_out"))
        return self._record(cand, m.status, error=m.error, rel_error=m.rel_error,
                            latency_s=m.latency_s, latency_samples=m.latency_samples,
                            energy_j=m.energy_j, power_w=m.power_w, meta=m.meta)
