"""XGBoost models of log latency and log energy per call, retrained as measurements arrive.

Logs make the regression scale-free (candidates span orders of magnitude) and turn the EDP
objective into a sum of the two predictions. The energy model exists only where energy was measured.
"""
from __future__ import annotations

import numpy as np
import xgboost as xgb

MIN_TRAIN_SAMPLES = 4

_ROUNDS = 150
_PARAMS = {"objective": "reg:squarederror", "max_depth": 6, "eta": 0.1, "subsample": 0.9,
           "colsample_bytree": 0.8, "min_child_weight": 1.0}


class LatencyEnergyModel:
    def __init__(self, seed: int = 0) -> None:
        self.seed = seed
        self.latency: xgb.Booster | None = None
        self.energy: xgb.Booster | None = None

    def _train(self, features: np.ndarray, values: np.ndarray) -> xgb.Booster | None:
        keep = np.isfinite(values) & (values > 0)
        if keep.sum() < MIN_TRAIN_SAMPLES:
            return None
        data = xgb.DMatrix(features[keep], label=np.log(values[keep]))
        return xgb.train({**_PARAMS, "seed": self.seed}, data, num_boost_round=_ROUNDS)

    def fit(self, features: np.ndarray, latency_s: np.ndarray, energy_j: np.ndarray) -> None:
        """Retrain both models from scratch on all measured candidates (NaN = not measured)."""
        self.latency = self._train(features, latency_s)
        self.energy = self._train(features, energy_j)

    def predict_log(self, features: np.ndarray) -> tuple[np.ndarray | None, np.ndarray | None]:
        """Predicted log latency and log energy; None for a model that is not trained yet."""
        data = xgb.DMatrix(features)
        lat = self.latency.predict(data) if self.latency is not None else None
        energy = self.energy.predict(data) if self.energy is not None else None
        return lat, energy
