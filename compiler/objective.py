"""What the search minimizes: latency (s), energy per call (J), or EDP (J x s)."""
from __future__ import annotations

import math

import numpy as np

OBJECTIVES = ("latency", "energy", "edp")


def needs_energy(objective: str) -> bool:
    return objective in ("energy", "edp")


def objective_value(objective: str, latency_s: float | None, energy_j: float | None) -> float | None:
    """The objective of one measured kernel; None when a quantity it needs was not measured."""
    if latency_s is None or (needs_energy(objective) and energy_j is None):
        return None
    return {"latency": latency_s, "energy": energy_j,
            "edp": (energy_j or math.nan) * latency_s}[objective]


def predicted_log_objective(objective: str, log_latency: np.ndarray | None,
                            log_energy: np.ndarray | None) -> np.ndarray | None:
    """log of the objective from the models' log predictions; None if a needed model is missing."""
    if log_latency is None or (needs_energy(objective) and log_energy is None):
        return None
    return {"latency": lambda: log_latency, "energy": lambda: log_energy,
            "edp": lambda: log_latency + log_energy}[objective]()
