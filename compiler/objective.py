"""What the search optimizes, and which measured kernel that objective picks.

- latency: seconds per call; energy: joules per call; edp: energy x delay (J*s);
- energy with a slowdown bound (`--max-slowdown X`): least energy among kernels within X times
  the best latency measured for the workload;
- pareto: the latency-energy Pareto front is reported; the search itself ranks by EDP, a
  scalarization that rewards moving along the front in both directions.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .database import Record

KINDS = ("latency", "energy", "edp", "pareto")
SLOWDOWN_PENALTY = 10.0  # log-score penalty per unit of log latency beyond the bound
# Screening: a candidate whose first latency samples exceed this factor x the best latency is not
# timed fully and its energy is not measured. For latency, 1.5x is far beyond timing noise (< 1%
# on an H200, ~10% on a busy CPU). For energy objectives a slower kernel can still win on energy,
# but only by drawing proportionally less power: at 3x slower it would need a third of the power
# of the best kernel (under 240 W against the ~700 W of a fast H200 GEMM, with ~100 W idle);
# the slowest energy winner seen so far was 17% slower (README, objective table).
SCREEN_FACTOR = {"latency": 1.5}
DEFAULT_SCREEN_FACTOR = 3.0
SLOWDOWN_SCREEN_MARGIN = 1.1  # beyond the slowdown bound (plus noise) a kernel cannot be chosen
# Energy windows stop early for a candidate clearly above this factor x the pick's energy
# (measure/protocol.py step 5 adds its own 3 standard errors): it cannot be chosen, so a rough
# figure is enough. The margin covers the pick's own error (re-measured within 1-4%, GUIDE).
ENERGY_STOP_FACTOR = 1.05


@dataclass(frozen=True)
class Objective:
    kind: str
    max_slowdown: float | None = None

    @property
    def key(self) -> str:
        """How the database names it (trial budgets are counted per key)."""
        return f"energy@{self.max_slowdown:g}x" if self.max_slowdown else self.kind

    @classmethod
    def from_key(cls, key: str) -> Objective:
        """The objective a database `key` names (the inverse of `key`)."""
        kind, _, bound = key.partition("@")
        return cls(kind, float(bound.removesuffix("x")) if bound else None)

    @property
    def label(self) -> str:
        return (f"energy within {self.max_slowdown:g}x of fastest" if self.max_slowdown
                else self.kind)

    @property
    def needs_energy(self) -> bool:
        return self.kind != "latency"

    def screen_bound(self, records: list[Record]) -> float | None:
        """Latency beyond which a candidate is clearly not worth full timing or energy, from the
        fully timed correct records (None before there is one)."""
        timed = [r.latency_s for r in records if r.status == "ok" and r.latency_s
                 and not (r.meta or {}).get("screened_out")]
        if not timed:
            return None
        best_latency_s = min(timed)
        if self.max_slowdown:
            return SLOWDOWN_SCREEN_MARGIN * self.max_slowdown * best_latency_s
        return SCREEN_FACTOR.get(self.kind, DEFAULT_SCREEN_FACTOR) * best_latency_s

    def energy_bound(self, records: list[Record]) -> float | None:
        """Energy per call beyond which a candidate cannot be the pick of an energy objective:
        ENERGY_STOP_FACTOR x the current pick's (None for the other objectives, or before a pick)."""
        pick = self.choose(records) if self.kind == "energy" else None
        if pick is None or pick.energy_j is None:
            return None
        return ENERGY_STOP_FACTOR * pick.energy_j

    def value(self, latency_s: float | None, energy_j: float | None) -> float | None:
        """The scalar this objective minimizes; None when a quantity it needs was not measured."""
        if latency_s is None or (self.needs_energy and energy_j is None):
            return None
        if self.kind == "latency":
            return latency_s
        return energy_j if self.kind == "energy" else energy_j * latency_s

    def log_score(self, log_latency: np.ndarray | None, log_energy: np.ndarray | None,
                  best_latency_s: float | None) -> np.ndarray | None:
        """Predicted log objective (lower is better); None if a needed prediction is missing."""
        if log_latency is None or (self.needs_energy and log_energy is None):
            return None
        if self.kind == "latency":
            return log_latency
        if self.kind == "energy":
            score = np.array(log_energy, dtype="float64")
            if self.max_slowdown and best_latency_s:
                bound = math.log(self.max_slowdown * best_latency_s)
                score += SLOWDOWN_PENALTY * np.maximum(0.0, log_latency - bound)
            return score
        return log_latency + log_energy

    def choose(self, records: list[Record]) -> Record | None:
        """The correct, fully measured record this objective prefers (None if there is none)."""
        ok = [r for r in records if r.status == "ok" and r.latency_s is not None]
        if self.max_slowdown and ok:
            fastest = min(r.latency_s for r in ok)
            ok = [r for r in ok if r.latency_s <= self.max_slowdown * fastest]
        scored = [(self.value(r.latency_s, r.energy_j), r.id or 0, r) for r in ok]
        scored = [s for s in scored if s[0] is not None]
        return min(scored, key=lambda s: (s[0], s[1]))[2] if scored else None

    def near_front(self, latency_s: float, energy_j: float, records: list[Record],
                   margin: float) -> bool:
        """Could a kernel with this (measured) latency and (predicted) energy be chosen, give or
        take `margin`? The dynamic energy policy measures energy only where it could."""
        done = [r for r in records if r.status == "ok" and r.latency_s is not None]
        measured = [r for r in done if r.energy_j is not None]
        grow = 1.0 + margin
        if self.kind == "latency":
            return not done or latency_s <= grow * min(r.latency_s for r in done)
        if self.kind == "pareto":
            return not any(r.latency_s * grow <= latency_s and r.energy_j * grow <= energy_j
                           for r in measured)
        if self.max_slowdown and done:
            bound = self.max_slowdown * min(r.latency_s for r in done)
            if latency_s > grow * bound:
                return False
            measured = [r for r in measured if r.latency_s <= bound]
        values = [self.value(r.latency_s, r.energy_j) for r in measured]
        return not values or self.value(latency_s, energy_j) <= grow * min(values)


def pareto_front(records: list[Record]) -> list[Record]:
    """Correct records with measured energy that no other record beats in both latency and
    energy, fastest first."""
    pts = sorted((r for r in records if r.status == "ok" and r.energy_j is not None
                  and r.latency_s is not None), key=lambda r: (r.latency_s, r.energy_j))
    front: list[Record] = []
    for r in pts:
        if not front or r.energy_j < front[-1].energy_j:
            front.append(r)
    return front
