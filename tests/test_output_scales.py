"""What a law declares about its output and inputs: signed outputs fitted on the raw scale
(`Law(output_scale="raw")`), and inputs that may be zero (`Law(nonnegative_inputs=...)`)."""

import warnings

import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

import bayescale as bs
from bayescale import Law, Param
from bayescale.diagnostics import ConvergenceWarning
from bayescale.runs import DataError
import numpyro.distributions as dist

SMALL = dict(num_warmup=400, num_samples=600, num_chains=2, map_starts=8)


def _signed_mean(p, x):
    return p["d"] + p["a"] * x["x"] ** -p["c"]


# A signed quantity: e.g. the loss gap between a model and a reference, which crosses zero as x grows.
SIGNED = Law(
    name="signed_power_law_test",
    inputs=("x",),
    params={"d": Param(dist.Normal(0.0, 1.0), "asymptote (may be negative)"),
            "a": Param(dist.LogNormal(0.0, 2.0), "coefficient", pivot=("x", "c")),
            "c": Param(dist.LogNormal(jnp.log(0.3), 0.5), "exponent")},
    mean=_signed_mean,
    output_scale="raw",
    form="y = d + a x^-c",
    reference="test",
)
TRUTH = {"d": -0.2, "a": 3.0, "c": 0.4}


def signed_table(seed=0, sigma=0.01, count=24, noise="normal"):
    rng = np.random.default_rng(seed)
    x = np.geomspace(1.0, 1e4, count)
    draws = rng.standard_normal(count) if noise == "normal" else rng.standard_t(4, count)
    return pd.DataFrame({"x": x, "gap": TRUTH["d"] + TRUTH["a"] * x ** -TRUTH["c"] + sigma * draws})


def _fit(table, law=SIGNED, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return bs.fit(table, law, y="gap", **{**SMALL, **kw})


@pytest.mark.parametrize("likelihood", ["normal", pytest.param("student_t", marks=pytest.mark.slow)])
def test_signed_output_is_fitted_on_the_raw_scale_and_recovers_the_truth(likelihood):
    table = signed_table(noise=likelihood)
    assert (table.gap < 0).any() and (table.gap > 0).any()
    fit = _fit(table, likelihood=likelihood)
    assert fit.likelihood.raw and fit.likelihood.discrepancy is None  # the walk is log-scale only
    summary = fit.summary(quantiles=(0.005, 0.5, 0.995))
    for name, value in TRUTH.items():
        assert summary.loc[name, "q0.5"] <= value <= summary.loc[name, "q99.5"], summary
    # sigma is in output units: the simulated sd 0.01 (log-scale noise would read ~0.01 / |y|, far larger).
    assert 0.005 < summary.loc["sigma", "q50"] < 0.02, summary
    assert fit.diagnostics.divergences == 0
    # Predictions are on the output's own scale and may be negative; their spread is the raw-scale noise.
    p = fit.predict({"x": [1e5]}, seed=1)
    draws = np.asarray(p.new_run)[:, 0]
    assert np.median(draws) < 0
    truth = TRUTH["d"] + TRUTH["a"] * 1e5 ** -TRUTH["c"]
    assert np.quantile(draws, 0.01) < truth < np.quantile(draws, 0.99)


def test_raw_scale_normal_likelihood_is_the_gaussian_density_on_y():
    lik = bs.Likelihood(scale="raw")
    mean, y = jnp.array([-0.5, 0.0, 2.0]), jnp.array([-0.45, 0.1, 1.9])
    got = lik.distribution(mean, {"sigma": 0.1}, se=jnp.array([0.0, 0.1, 0.0])).log_prob(y)
    sd = np.sqrt(np.array([0.0, 0.1, 0.0]) ** 2 + 0.1**2)
    want = -0.5 * ((np.asarray(y) - np.asarray(mean)) / sd) ** 2 - np.log(sd * np.sqrt(2 * np.pi))
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-12)


def test_output_scale_is_declared_by_the_law_and_checked():
    table = signed_table()
    with pytest.raises(DataError, match=r"must be positive.*output_scale='raw'"):
        bs.fit(table, "power_law", columns={"x": "x"}, y="gap", **SMALL)
    with pytest.raises(ValueError, match="log y"):
        bs.fit(table, SIGNED, y="gap", discrepancy="random_walk", **SMALL)
    with pytest.raises(ValueError, match="contradicts"):
        bs.fit(table, SIGNED, y="gap", likelihood=bs.Likelihood(scale="log"), **SMALL)
    with pytest.raises(ValueError, match="output_scale must be one of"):
        Law(name="bad", inputs=("x",), params=SIGNED.params, mean=_signed_mean, output_scale="linear")


@pytest.mark.slow  # slow tier: the default run's 10-minute budget (2026-12-02 clean-clone run: 15:09 for 208 tests)
def test_backtest_scores_a_signed_output_on_its_own_scale():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        bt = bs.backtest(signed_table(), SIGNED, y="gap", holdout=0.25, **SMALL)
    scores = bt.table
    assert len(scores) == 6 and np.isfinite(scores["interval_score90"]).all()
    # Widths in output units: a few times the noise sd of 0.01, not log-ratios of values of either sign.
    assert 0.01 < scores["width90"].median() < 0.2, scores[["y", "median", "width90"]]


# ---- inputs that may be zero ----

FINETUNE_TRUTH = {"B": 40.0, "D_l": 20.0, "beta": 0.5, "E": 1.2}


def test_finetune_law_is_defined_at_zero_data_and_recovers_the_zero_shot_loss():
    law = bs.get_law("finetune")
    assert "D" in law.nonnegative_inputs
    rng = np.random.default_rng(0)
    D = np.concatenate([[0.0, 0.0], np.geomspace(10.0, 1e6, 18)])
    t = FINETUNE_TRUTH
    loss = (t["B"] / (t["D_l"] + D ** t["beta"]) + t["E"]) * np.exp(0.01 * rng.standard_normal(D.size))
    table = pd.DataFrame({"D": D, "loss": loss})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        fit = bs.fit(table, law, allow_repeats=True, **SMALL)
    assert fit.likelihood.discrepancy is None  # the walk's log D has no zero
    assert fit.diagnostics.divergences == 0
    zero_shot = np.asarray(fit.predict({"D": [0.0]}, seed=0).mean)[:, 0]
    truth = t["B"] / t["D_l"] + t["E"]
    assert np.quantile(zero_shot, 0.005) < truth < np.quantile(zero_shot, 0.995)
    with pytest.raises(DataError, match="random-walk discrepancy.*zero at rows 0, 1"):
        bs.fit(table, law, allow_repeats=True, discrepancy="random_walk", **SMALL)


def test_zero_is_refused_for_inputs_a_law_needs_positive():
    table = pd.DataFrame({"x": [0.0, 1.0, 10.0, 100.0, 1000.0], "loss": [3.0, 2.5, 2.2, 2.0, 1.9]})
    with pytest.raises(DataError, match=r"input x .* must be positive; non-positive at rows 0"):
        bs.fit(table, "power_law", **SMALL)
    with pytest.raises(ValueError, match="nonnegative_inputs"):
        Law(name="bad", inputs=("x",), params=SIGNED.params, mean=_signed_mean, nonnegative_inputs=("z",))
