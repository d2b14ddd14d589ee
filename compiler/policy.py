"""Dynamic energy-measurement policy: measure energy on the device only where it can matter.

Latency is cheap to measure (tens of ms); energy is not (about a second of windows). For the
latency objective energy is measured only for a candidate that is the fastest so far (so that the
chosen kernel's energy is reported), whatever the mode. Otherwise, after a candidate's latency is
measured, the model predicts its power, and predicted energy = predicted
power x measured latency. Energy is measured when
- the policy is `all`, or fewer than `warmup` candidates have measured energy (the model is not
  trusted yet), or
- the candidate is the fastest so far (so the summary's trade-off against the fastest kernel
  is always measured), or
- the candidate is near the objective's front: it could be chosen if its energy were up to
  `margin` better than predicted (`Objective.near_front`).
The margin follows the model's measured error: max(`base_margin` (3%), `error_factor` (2) x the
median relative energy error over the last `window` candidates whose energy was both predicted
and measured), so it tightens as the model improves and loosens when it drifts. Skipped
measurements are counted. Until the search's model has a power model (it is retrained between
batches), the tuner predicts power with one refit after every measured energy (`Tuner.early`),
so the policy can skip energies within the first batch too (the H200's default tune measured
its whole first batch of 16, experiments/results/hopper_tune_h200_2026-12-02b).

Which policy a tune runs (`policy_for`): `auto` is `dynamic` for a knob space whose cost model's
quality has been measured (`KnobSpace.model_quality`), else `all`. On a space with seeds the
warmup is its runnable seeds: the strategy measures them first and they set the front (energy is
measured anyway until the model has the MIN_TRAIN_SAMPLES it trains on); otherwise WARMUP
candidates. Evidence: H200 Hopper tunes replayed, experiments/results/policy_replay_hopper_2026-12-02.
"""
from __future__ import annotations

import statistics
from collections import deque
from typing import TYPE_CHECKING

from .database import Record
from .objective import Objective

if TYPE_CHECKING:
    from .spaces import Space

AUTO = "auto"
POLICIES = ("dynamic", "all")
CHOICES = (AUTO, *POLICIES)
WARMUP = 8  # energies measured before the model is trusted, on a space without seeds


class EnergyPolicy:
    def __init__(self, objective: Objective, mode: str = "dynamic", warmup: int = WARMUP,
                 base_margin: float = 0.03, window: int = 16, error_factor: float = 2.0) -> None:
        if mode not in POLICIES:
            raise ValueError(f"unknown energy policy {mode!r} (known: {', '.join(POLICIES)})")
        self.objective, self.mode, self.warmup, self.base_margin = objective, mode, warmup, base_margin
        self.error_factor = error_factor
        self.errors: deque[float] = deque(maxlen=window)
        self.measured = self.skipped = 0

    @property
    def margin(self) -> float:
        if not self.errors:
            return self.base_margin
        return max(self.base_margin, self.error_factor * statistics.median(self.errors))

    def decide(self, latency_s: float, predicted_power_w: float | None,
               records: list[Record]) -> bool:
        """Measure this candidate's energy? Counts the answer."""
        with_energy = sum(r.energy_j is not None for r in records)
        latencies = [r.latency_s for r in records if r.status == "ok" and r.latency_s]
        fastest = not latencies or latency_s < min(latencies)
        if not self.objective.needs_energy:
            measure = fastest
        else:
            measure = (self.mode == "all" or predicted_power_w is None
                       or with_energy < self.warmup or fastest
                       or self.objective.near_front(latency_s, predicted_power_w * latency_s,
                                                    records, self.margin))
        if measure:
            self.measured += 1
        else:
            self.skipped += 1
        return measure

    def observe(self, predicted_power_w: float | None, latency_s: float, energy_j: float) -> None:
        """Record how far the prediction was from a measured energy."""
        if predicted_power_w is not None and energy_j > 0:
            self.errors.append(abs(predicted_power_w * latency_s - energy_j) / energy_j)


def policy_for(objective: Objective, mode: str, space: Space, seeds: bool = True) -> EnergyPolicy:
    """The policy a tune of `space` runs under `mode` (one of CHOICES; see the module docstring);
    its warm-up is the space's seeds, if the tune starts from them."""
    if mode == AUTO:
        mode = "dynamic" if space.model_quality else "all"
    return EnergyPolicy(objective, mode,
                        warmup=(len(space.runnable_seeds()) if seeds else 0) or WARMUP)
