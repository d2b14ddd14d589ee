"""Our own evolutionary (genetic) search over a knob space, with the cost model as the filter.

The seed paper (arXiv 2411.18873) names a genetic algorithm with a learned energy model; its
details are not available to us, so this is our design. Each generation:
1. parents are the measured correct configs, picked by tournaments of TOURNAMENT on their
   measured cost (the objective); until two exist every child is a fresh sample;
2. a child is a crossover of two parents (probability CROSSOVER, else a copy of one), mutated
   with probability MUTATE (always when it equals a known config); a FRESH share of children are
   new samples, for diversity;
3. settings the hardware cannot run (`KnobSpace.reject`) are dropped and counted by reason, and
   known settings (measured, in the database, proposed before) are skipped, until the pool holds
   `population` children or the space yields no more;
4. the model scores the pool (positive, unit-free scores) and the batch is its best
   (1 - EXPLORE) share plus EXPLORE picked at random from the rest: exploration, and data where
   the model is unsure. Untrained, the scores are random, so the first batches sample uniformly.
The space's seeds (`KnobSpace.seeds`: settings measured to run well) lead the first batch, so a
short tune starts from the best known kernels and the search works around them as parents.
"""
from __future__ import annotations

import hashlib
import math
from collections import defaultdict

import numpy as np

from .base import Candidate, SearchSetup, Strategy
from ..database import Record
from ...costmodel import knob_features
from ...schedules.knobs import Config, KnobSpace

TOURNAMENT, CROSSOVER, MUTATE, FRESH, EXPLORE = 3, 0.7, 0.5, 0.2, 0.25
TRIES_PER_CHILD = 20


class GeneticStrategy(Strategy):
    name = "genetic"
    space_type = KnobSpace

    def __init__(self, setup: SearchSetup) -> None:
        super().__init__(setup)
        self.space: KnobSpace = setup.space
        self.rng = np.random.default_rng(setup.seed)
        self.known: set[str] = set()                         # keys measured, stored or proposed
        self.parents: list[tuple[Config, float]] = []        # correct configs and their cost
        self.rejected: dict[str, set[str]] = defaultdict(set)  # reason -> rejected keys
        self.seeded = False                                  # the space's seeds were proposed

    def _candidate(self, config: Config) -> Candidate:
        key = self.space.key(config)
        digest = hashlib.sha256(f"{self.space.name}:{key}".encode()).hexdigest()[:16]
        return Candidate(digest, {"space": self.space.name, "config": config}, config,
                         make=lambda: self.space.module(config))

    def candidate(self, record: Record) -> Candidate | None:
        trace = record.trace
        if not (isinstance(trace, dict) and trace.get("space") == self.space.name):
            return None
        return self._candidate(trace["config"])

    def features(self, candidates: list[Candidate]) -> np.ndarray:
        return knob_features(self.setup.op, [self.space.features(c.handle) for c in candidates])

    def learn(self, candidate: Candidate, record: Record) -> None:
        self.known.add(self.space.key(candidate.handle))
        cost = self.setup.value(record)
        if record.status == "ok" and math.isfinite(cost):
            self.parents.append((candidate.handle, cost))

    def _tournament(self) -> Config:
        picks = self.rng.choice(len(self.parents), min(TOURNAMENT, len(self.parents)),
                                replace=False)
        return min((self.parents[i] for i in picks), key=lambda p: p[1])[0]

    def _child(self) -> Config:
        space, rng = self.space, self.rng
        if len(self.parents) < 2 or rng.random() < FRESH:
            return space.sample(rng)
        child = self._tournament()
        if rng.random() < CROSSOVER:
            child = space.crossover(child, self._tournament(), rng)
        if rng.random() < MUTATE or space.key(child) in self.known:
            child = space.mutate(child, rng)
        return child

    def _pool(self) -> list[Config]:
        pool: dict[str, Config] = {}
        rejected = set().union(*self.rejected.values())
        for _ in range(TRIES_PER_CHILD * self.setup.population):
            if len(pool) >= self.setup.population:
                break
            config = self._child()
            key = self.space.key(config)
            if key in self.known or key in pool or key in rejected:
                continue
            if (reason := self.space.reject(config)) is not None:
                self.rejected[reason].add(key)
                rejected.add(key)
                continue
            pool[key] = config
        return list(pool.values())

    def _seeds(self) -> list[Config]:
        """The space's seeds this tune has not measured and the op can run (once per tune)."""
        fresh = self.setup.seeds and not self.seeded
        seeds, self.seeded = (self.space.runnable_seeds() if fresh else []), True
        return [c for c in seeds if self.space.key(c) not in self.known][:self.setup.batch]

    def propose(self) -> list[Candidate]:
        seeds = self._seeds()
        self.known.update(self.space.key(c) for c in seeds)
        chosen = [self._candidate(c) for c in seeds]
        candidates = [self._candidate(c) for c in self._pool()]
        batch = min(self.setup.batch - len(chosen), len(candidates))
        if batch > 0:
            order = np.argsort(-self.setup.scorer(self.features(candidates)), kind="stable")
            best = max(1, batch - round(EXPLORE * batch))
            explore = self.rng.choice(order[best:], batch - best, replace=False)
            chosen += [candidates[i] for i in [*order[:best], *explore]]
        self.known.update(self.space.key(c.handle) for c in chosen)
        return chosen

    def report(self) -> str | None:
        if not self.rejected:
            return None
        top = sorted(self.rejected.items(), key=lambda item: -len(item[1]))[:3]
        total = sum(len(keys) for keys in self.rejected.values())
        return (f"{self.space.name}: {total} settings rejected before building ("
                + "; ".join(f"{len(keys)}: {reason}" for reason, keys in top) + ")")
