"""Scores a search strategy ranks candidates by: positive and unit-free.

TVM's EvolutionarySearch clamps negative scores to 0 and samples parents in proportion to the
score, so a score must be positive and must not depend on the units of the objective: minus the
log objective is negative for any objective above 1 (2.9 J for an 8192^3 energy tune) and nearly
flat when positive (0.45 vs 0.9 ms score 7.7 vs 7.0). We score a candidate by its predicted
improvement over a reference, exp(reference log objective - predicted log objective) = reference /
predicted objective: 1 for a candidate predicted as good as the reference, 0.5 for one predicted
twice as bad. The reference is the best measured objective of the workload, or, before anything
is measured (a warm-started model), the best prediction of the proposal's first scoring call. It
is fixed for one proposal, since the strategy compares scores across its calls.
"""
from __future__ import annotations

import math
from typing import Protocol

import numpy as np

from .database import Record
from .objective import Objective

LOG_RATIO_LIMIT = 300.0  # keeps exp() finite and positive, and the sum of a population's scores finite


class LogPredictor(Protocol):
    def predict_log(self, features: np.ndarray) -> dict[str, np.ndarray | None]: ...


def relative_scores(log_objective: np.ndarray, reference_log: float) -> np.ndarray:
    """exp(reference_log - log_objective), clipped so that it stays finite and positive."""
    ratio = reference_log - np.asarray(log_objective, dtype="float64")
    return np.exp(np.clip(ratio, -LOG_RATIO_LIMIT, LOG_RATIO_LIMIT))


class Scorer:
    """Scores feature rows for one objective with a model; random scores while it is untrained."""

    def __init__(self, objective: Objective, model: LogPredictor, seed: int = 0) -> None:
        self.objective, self.model = objective, model
        self.rng = np.random.default_rng(seed)
        self.best_latency_s: float | None = None
        self.reference_log: float | None = None

    def begin(self, records: list[Record]) -> None:
        """Fix the reference for the next proposal from the workload's measured records."""
        done = [r.latency_s for r in records if r.status == "ok" and r.latency_s]
        self.best_latency_s = min(done) if done else None
        best = self.objective.choose(records)
        value = self.objective.value(best.latency_s, best.energy_j) if best else None
        self.reference_log = math.log(value) if value else None

    def __call__(self, features: np.ndarray) -> np.ndarray:
        n = len(features)
        if n == 0:
            return np.zeros(0)
        pred = self.model.predict_log(features)
        log_objective = self.objective.log_score(pred["latency"], pred["energy"],
                                                 self.best_latency_s)
        if log_objective is None:
            return self.rng.random(n)
        if self.reference_log is None:
            self.reference_log = float(np.min(log_objective))
        return relative_scores(log_objective, self.reference_log)

