"""The cost model's warm start: another workload's model is kept as a prior, not discarded."""
import numpy as np

from energy_tuner.costmodel import KernelModel
from energy_tuner.costmodel.model import MIN_TRAIN_SAMPLES, PRIOR_ROUNDS, ROUNDS


def data(rng, n, shift=0.0):
    x = rng.uniform(-1, 1, (n, 5))
    latency = np.exp(x[:, 0] + 0.5 * x[:, 1] + shift)
    return x, latency, latency * np.exp(0.3 * x[:, 2])


def test_warm_start_predicts_alone_then_is_kept_under_new_trees():
    rng = np.random.default_rng(0)
    prior = KernelModel(seed=0)
    prior.fit(*data(rng, 200))
    x, lat, energy = data(rng, 3, shift=0.2)
    warm = KernelModel(seed=0)
    warm.load_bytes(prior.to_bytes())
    warm.fit(x, lat, energy)                          # too few samples: the prior alone
    assert MIN_TRAIN_SAMPLES > 3 and warm.energy.num_boosted_rounds() == ROUNDS
    np.testing.assert_allclose(warm.predict_log(x)["energy"], prior.predict_log(x)["energy"])
    x, lat, energy = data(rng, 12, shift=0.2)
    warm.fit(x, lat, energy)                          # enough: new trees on top of the prior
    assert warm.energy.num_boosted_rounds() == ROUNDS + PRIOR_ROUNDS
    assert warm.latency.num_boosted_rounds() == ROUNDS + PRIOR_ROUNDS
    warm.fit(x, lat, energy)                          # retrains build on the prior, not on
    assert warm.energy.num_boosted_rounds() == ROUNDS + PRIOR_ROUNDS   # the last fit
    assert prior.energy.num_boosted_rounds() == ROUNDS                  # the prior is untouched
    test_x, test_lat, _ = data(rng, 100, shift=0.2)
    err = np.abs(warm.predict_log(test_x)["latency"] - np.log(test_lat)).mean()
    assert err < np.abs(prior.predict_log(test_x)["latency"] - np.log(test_lat)).mean()
