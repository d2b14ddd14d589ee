"""Scores are positive and unit-free: a real TVM EvolutionarySearch on llvm with a fixed scorer."""
import math

import numpy as np
import pytest
import tvm
import tvm_ffi
from tvm.s_tir import meta_schedule as ms

from energy_tuner.compiler.database import Record
from energy_tuner.compiler.objective import Objective
from energy_tuner.compiler.scoring import Scorer, relative_scores
from energy_tuner.compiler.strategies.evolutionary import ObjectiveCostModel
from energy_tuner.costmodel import candidate_features
from energy_tuner.schedules import design_space, make_op

LLVM = tvm.target.Target({"kind": "llvm", "num-cores": 2})
OP = make_op("matmul", "64,64,64", "float32")


class FixedModel:
    """A fixed 'model': log latency and log energy are fixed projections of the features, in
    units scaled by `scale` (1: seconds and joules; 1000: milliseconds and millijoules)."""

    def __init__(self, scale: float = 1.0, trained: bool = True) -> None:
        self.scale, self.trained = scale, trained

    @staticmethod
    def quality(features: np.ndarray) -> np.ndarray:
        """Higher is better; a fixed function of the candidate (seconds, before scaling)."""
        w = np.random.default_rng(42).standard_normal(features.shape[1])
        return np.tanh(np.log1p(np.abs(features)) @ w / math.sqrt(features.shape[1]))

    def predict_log(self, features):
        if not self.trained:
            return {"latency": None, "energy": None, "power": None}
        q = self.quality(features)
        latency = np.log(self.scale * 1e-3) - q          # 1 ms scaled by exp(-quality)
        return {"latency": latency, "energy": latency + math.log(300.0), "power": None}


def picks(model: FixedModel, measured: list[Record], objective=Objective("energy"), seed=3):
    """One generation of TVM's EvolutionarySearch; the picks and their features."""
    mod = tvm.IRModule({"main": OP.prim_func()})
    ctx = ms.TuneContext(mod=mod, target=LLVM,
                         space_generator=design_space(OP, LLVM),
                         search_strategy=ms.search_strategy.EvolutionarySearch(population_size=64),
                         rand_state=seed, num_threads=1)
    scorer = Scorer(objective, model, seed)
    scorer.begin(measured)
    ctx.pre_tuning(max_trials=16, num_trials_per_iter=16, database=ms.database.MemoryDatabase(),
                   cost_model=ObjectiveCostModel(scorer, lambda c, cands: candidate_features(
                       c, cands, OP)))
    cands = list(ctx.generate_measure_candidates())
    ctx.post_tuning()
    hashes = [f"{tvm_ffi.structural_hash(c.sch.mod):016x}" for c in cands]
    return hashes, candidate_features(ctx, cands, OP)


def measured(scale: float) -> list[Record]:
    """One measured candidate in the same units as the model."""
    return [Record(id=1, workload_key="k", workload={}, target="", device="", objective="energy",
                   mod_hash="", trace=[], status="ok", latency_s=2e-3 * scale,
                   energy_j=0.6 * scale)]


def test_relative_scores_are_positive_and_ratio_of_objectives():
    s = relative_scores(np.log([0.45e-3, 0.9e-3, 2.9]), math.log(0.45e-3))
    assert np.all(s > 0)
    assert s[0] == pytest.approx(1.0) and s[1] == pytest.approx(0.5)
    assert relative_scores(np.array([-1e6, 1e6]), 0.0).tolist()[0] < np.inf


def test_rescaled_units_give_the_same_picks():
    for history in (measured, lambda scale: []):  # reference: best measured / best predicted
        seconds, _ = picks(FixedModel(1.0), history(1.0))
        millis, _ = picks(FixedModel(1000.0), history(1000.0))
        assert len(seconds) == 16
        assert seconds == millis


def test_selection_pressure_is_real():
    """Picks of the fixed scorer are clearly better than those of a random scorer (the search's
    random population): measured in the scorer's own quality."""
    _, chosen = picks(FixedModel(1.0), measured(1.0))
    _, population = picks(FixedModel(trained=False), [])
    q_chosen, q_population = FixedModel.quality(chosen), FixedModel.quality(population)
    pooled = np.sort(np.concatenate([q_chosen, q_population]))
    rank = lambda q: np.searchsorted(pooled, q).mean() / len(pooled)  # noqa: E731
    # measured: 0.73 vs 0.23; with -log(objective) scores in milliseconds 0.54 vs 0.43
    assert rank(q_chosen) > rank(q_population) + 0.3
