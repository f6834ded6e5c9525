"""Simulation-based calibration: draw parameters from the prior, simulate runs, fit, and count how often
the 90% posterior intervals cover the truth. For a correct sampler and model the rate is 90%.

The one-variable saturating power law with data-independent priors (SBC needs a prior that does not look
at the data): 20 replications x 4 parameters = 80 interval checks in the default run (binomial sd ~2.7
checks around 72), 100 replications in the slow run.
"""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pandas as pd
import pytest
from scipy import stats

import bayescale as bs
from bayescale.model import law_model, prior_draws
from conftest import kaplan_law_ladders

PRIORS = {
    "E": dist.LogNormal(jnp.log(2.0), 0.2),
    "A": dist.LogNormal(jnp.log(20.0), 0.5),
    "alpha": dist.LogNormal(jnp.log(0.3), 0.3),
    "sigma": dist.LogNormal(jnp.log(0.02), 0.3),
}
X = np.geomspace(1e4, 1e8, 16)


# Built once, so every fit reuses one model and its compiled sampler.
LAW = bs.get_law("power_law").with_priors(PRIORS)
LIKELIHOOD = bs.Likelihood().with_priors(PRIORS)


def simulate(replications: int, seed: int):
    model = law_model(LAW, LIKELIHOOD)
    draws = prior_draws(model, jax.random.PRNGKey(seed), ({"x": jnp.asarray(X)}, {"y_min": 1.0}), {"y": None}, replications)
    return {k: np.asarray(v) for k, v in draws.items()}


def coverage(replications: int, seed: int, level: float = 0.9):
    sims = simulate(replications, seed)
    hits, ranks = [], []
    for i in range(replications):
        table = pd.DataFrame({"x": X, "loss": sims["y"][i]})
        fit = bs.fit(table, LAW, likelihood=LIKELIHOOD, num_warmup=400, num_samples=400, num_chains=2, seed=i)
        posterior = bs.draws(fit)
        for name in PRIORS:
            truth = sims[name][i]
            low, high = np.quantile(posterior[name], [(1 - level) / 2, (1 + level) / 2])
            hits.append(low <= truth <= high)
            ranks.append(np.mean(posterior[name] < truth))
    return np.array(hits), np.array(ranks)


def test_90_percent_intervals_cover_at_a_rate_consistent_with_90_percent():
    hits, ranks = coverage(replications=20, seed=0)
    n, k = hits.size, int(hits.sum())
    p_value = stats.binomtest(k, n, 0.9).pvalue
    print(f"\nSBC: {k}/{n} = {k / n:.3f} of 90% intervals cover the truth (binomial p = {p_value:.3f})")
    assert p_value > 0.01
    # Ranks of the truth within the posterior are uniform when calibrated (Talts et al. 2018).
    assert stats.kstest(ranks, "uniform").pvalue > 0.01


@pytest.mark.slow
def test_calibration_with_100_replications():
    hits, ranks = coverage(replications=100, seed=1)
    print(f"\nSBC (100 replications): {hits.mean():.3f} coverage; KS p = {stats.kstest(ranks, 'uniform').pvalue:.3f}")
    assert stats.binomtest(int(hits.sum()), hits.size, 0.9).pvalue > 0.01
    assert stats.kstest(ranks, "uniform").pvalue > 0.01


@pytest.mark.slow
def test_walk_intervals_cover_larger_runs_of_a_misspecified_family():
    # benchmarks/results/calibration_backtest.md at 8 ladders: independent noise 0.40, the walk 1.00.
    table = kaplan_law_ladders(6, seed=21)
    coverage = {}
    for name, discrepancy in (("none", None), ("walk", "random_walk")):
        result = bs.backtest(table, "chinchilla", discrepancy=discrepancy, datasets="ladder", cuts=(0.4, 0.25, 0.15),
                             num_warmup=500, num_samples=500, seed=0)
        coverage[name] = result.scores().loc["chinchilla", "coverage90"]
    print(f"\n90% coverage of held-out Kaplan-law runs: {coverage}")
    assert coverage["none"] < 0.7
    assert coverage["walk"] >= 0.85
