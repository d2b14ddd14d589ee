"""TVM's C++ EvolutionarySearch over a MetaSchedule trace space, driven by hand.

Why drive it (TuneContext.generate_measure_candidates / notify_runner_results) rather than
`ms.tune_tir`: TVM's strategy already does what a genetic search over traces needs (sampling of
the design space, mutators, postprocessor validation, epsilon-greedy picks, multithreaded, in C++
without the GIL so that it can search while the device measures), and ranks its population with
whatever `CostModel` it is given: ours (`ObjectiveCostModel`) follows the user's objective.
`tune_tir`'s task scheduler would own the build/run/database loop and hide energy.
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
import tvm
import tvm_ffi
from tvm.ir.utils import derived_object
from tvm.s_tir import meta_schedule as ms
from tvm.s_tir.meta_schedule.cost_model import PyCostModel

from .base import Candidate, SearchSetup, Strategy
from ..database import Record
from ..scoring import Scorer
from ..spaces import TraceSpace
from ...costmodel import candidate_features

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


class EvolutionaryStrategy(Strategy):
    name = "evolutionary"
    space_type = TraceSpace

    def __init__(self, setup: SearchSetup) -> None:
        super().__init__(setup)
        space: TraceSpace = setup.space
        self.space = space
        self.args_info = ms.arg_info.ArgInfo.from_prim_func(space.mod["main"])
        self.ctx = ms.TuneContext(
            mod=space.mod, target=setup.target, space_generator=space.generator(),
            search_strategy=ms.search_strategy.EvolutionarySearch(population_size=setup.population),
            task_name=setup.op.name, rand_state=setup.seed, num_threads=setup.threads)
        self.db = ms.database.MemoryDatabase()
        self.workload = self.db.commit_workload(space.mod)
        self.started = False

    @staticmethod
    def _candidate(measure: ms.MeasureCandidate) -> Candidate:
        sch = measure.sch
        return Candidate(module_hash(sch.mod), plain_json(sch.trace.as_json()), measure,
                         make=lambda: sch.mod)

    def candidate(self, record: Record) -> Candidate | None:
        if not isinstance(record.trace, list):
            return None
        return self._candidate(ms.MeasureCandidate(self.space.schedule(record.trace),
                                                   self.args_info))

    def features(self, candidates: list[Candidate]) -> np.ndarray:
        return candidate_features(self.ctx, [c.handle for c in candidates], self.setup.op)

    def propose(self) -> list[Candidate]:
        if not self.started:  # the strategy reads its database's best records when it starts
            self.ctx.pre_tuning(
                max_trials=self.setup.max_trials, num_trials_per_iter=self.setup.batch,
                database=self.db,
                cost_model=ObjectiveCostModel(self.setup.scorer, lambda ctx, cands:
                                              candidate_features(ctx, cands, self.setup.op)))
            self.started = True
        return [self._candidate(c) for c in self.ctx.generate_measure_candidates() or []]

    def _run_secs(self, record: Record) -> float:
        cost = self.setup.value(record)
        return cost if math.isfinite(cost) else FAILED_RUN_SECS

    def learn(self, candidate: Candidate, record: Record) -> None:
        self.db.commit_tuning_record(ms.database.TuningRecord(
            candidate.handle.sch.trace, self.workload, [self._run_secs(record)],
            self.setup.target, self.args_info))

    def end_batch(self, proposed: list[Candidate], known: dict[str, Record]) -> None:
        done = [c for c in proposed if c.mod_hash in known]
        self.ctx.notify_runner_results(
            [c.handle for c in done],
            [ms.runner.RunnerResult([self._run_secs(known[c.mod_hash])], None) for c in done])

    def close(self) -> None:
        if self.started:
            self.ctx.post_tuning()
