"""XGBoost models of log latency, log energy per call and log power, retrained as results arrive.

- latency and energy rank candidates before anything about them is measured (the search);
- power (energy per second of latency) predicts a candidate's energy once its latency has been
  measured, which is cheap: predicted power x measured latency. Its error is the power model's
  alone, and power varies far less across candidates than energy does (the dynamic energy
  policy uses this). experiments/model_quality.py compares the two ways of predicting energy.
Logs make the regressions scale-free. Energy and power models exist only where energy was measured.

Weighted loss: the search only needs to tell good candidates apart, so a sample's weight grows
with its closeness to the best measured value: w = 1 + BOOST * exp(-(y - min y) / SCALE) on the
log target y. With BOOST = 4 and SCALE = 0.25, the best candidate counts 5x, one 25% worse (in
log terms) ~2.5x, one 2x worse ~1.2x. experiments/model_quality.py measures its effect.

Warm start (transfer): a model saved for another workload of the same family (op, dtype,
device, space) is kept as a prior. Until this workload has enough data it predicts alone; after
that every retrain boosts PRIOR_ROUNDS further trees on top of it (xgboost's training
continuation: the new trees fit what the prior gets wrong here), instead of discarding it.
"""
from __future__ import annotations

import numpy as np
import xgboost as xgb

MIN_TRAIN_SAMPLES = 4
BOOST, SCALE = 4.0, 0.25
ROUNDS = 150
PRIOR_ROUNDS = 50
PARAMS = {"objective": "reg:squarederror", "max_depth": 6, "eta": 0.1, "subsample": 0.9,
          "colsample_bytree": 0.8, "min_child_weight": 1.0}


def best_weights(y: np.ndarray) -> np.ndarray:
    """Sample weights that emphasize the candidates closest to the best (smallest) log value."""
    return 1.0 + BOOST * np.exp(-(y - y.min()) / SCALE)


class KernelModel:
    def __init__(self, seed: int = 0, weighted: bool = True) -> None:
        self.seed, self.weighted = seed, weighted
        self.latency: xgb.Booster | None = None
        self.energy: xgb.Booster | None = None
        self.power: xgb.Booster | None = None
        self.prior: dict[str, xgb.Booster] = {}  # warm start, per quantity

    def _train(self, name: str, features: np.ndarray, values: np.ndarray) -> xgb.Booster | None:
        prior = self.prior.get(name)
        keep = np.isfinite(values) & (values > 0)
        if keep.sum() < MIN_TRAIN_SAMPLES:
            return prior
        y = np.log(values[keep])
        data = xgb.DMatrix(features[keep], label=y,
                           weight=best_weights(y) if self.weighted else None)
        params = {**PARAMS, "seed": self.seed}
        if prior is not None:
            return xgb.train(params, data, num_boost_round=PRIOR_ROUNDS, xgb_model=prior.copy())
        return xgb.train(params, data, num_boost_round=ROUNDS)

    def fit(self, features: np.ndarray, latency_s: np.ndarray, energy_j: np.ndarray) -> None:
        """Retrain the models on all measured candidates (NaN = not measured): from scratch, or
        on top of the prior."""
        self.latency = self._train("latency", features, latency_s)
        self.energy = self._train("energy", features, energy_j)
        self.power = self._train("power", features, energy_j / latency_s)

    def predict_log(self, features: np.ndarray) -> dict[str, np.ndarray | None]:
        """Predicted log latency, energy and power; None for a model not trained yet."""
        data = xgb.DMatrix(features)
        return {name: None if booster is None else booster.predict(data)
                for name, booster in (("latency", self.latency), ("energy", self.energy),
                                      ("power", self.power))}

    def to_bytes(self) -> dict[str, bytes]:
        """The trained boosters, for the tuning database."""
        return {name: bytes(booster.save_raw()) for name, booster in
                (("latency", self.latency), ("energy", self.energy), ("power", self.power))
                if booster is not None}

    def load_bytes(self, blobs: dict[str, bytes]) -> None:
        """Predict with saved boosters (another workload's) and keep them as the prior."""
        for name, blob in blobs.items():
            booster = xgb.Booster()
            booster.load_model(bytearray(blob))
            setattr(self, name, booster)
            self.prior[name] = booster
