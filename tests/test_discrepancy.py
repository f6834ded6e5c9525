"""The random-walk discrepancy (bayescale.discrepancy): its geometry, its predictive, and a fit with it."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import bayescale as bs
from scipy import stats

from bayescale.discrepancy import (DEFAULT_DRIFT_PRIOR, Discrepancy, axis_name, discrepancy_draws, interpolation, knot_grid, log_axis,
                                   marginal_normal, walk_factor)
from conftest import simulate_chinchilla


def test_the_walk_integrated_out_is_the_joint_normal_and_its_leave_one_out_conditionals():
    rng = np.random.default_rng(0)
    spec = Discrepancy(knots=6)
    z = np.sort(rng.uniform(0.0, 5.0, 30))
    A, spacing = interpolation(spec, jnp.asarray(z), 0.0, 5.0)
    # Interpolation weights: each run sits between two knots; the pinned (last) knot has no column.
    assert A.shape == (30, 5) and np.all(np.asarray(A).sum(axis=1) <= 1.0 + 1e-12)
    F = np.asarray(A @ walk_factor(0.05, spacing, 5))
    variance = rng.uniform(0.5, 2.0, 30) * 1e-4
    residual = rng.normal(0.0, 0.02, 30)
    weight = np.ones(30)
    weight[-3:] = 0.0                                    # padding: left out of everything
    log_joint, loo_mean, loo_sd = marginal_normal(jnp.asarray(residual), jnp.asarray(variance), jnp.asarray(weight),
                                                  jnp.asarray(F))
    keep = weight > 0
    cov = (np.diag(variance) + F @ F.T)[np.ix_(keep, keep)]
    exact = stats.multivariate_normal(np.zeros(keep.sum()), cov).logpdf(residual[keep])
    assert float(log_joint) == pytest.approx(exact, abs=1e-9)
    precision = np.linalg.inv(cov)
    r = residual[keep]
    np.testing.assert_allclose(np.asarray(loo_mean)[keep], r - precision @ r / np.diag(precision), atol=1e-12)
    np.testing.assert_allclose(np.asarray(loo_sd)[keep], 1 / np.sqrt(np.diag(precision)), rtol=1e-10)


def test_axis_is_compute_where_derivable_else_the_first_input():
    spec = Discrepancy()
    assert axis_name(bs.get_law("chinchilla"), spec) == "C"
    assert axis_name(bs.get_law("overtrain"), spec) == "C"
    assert axis_name(bs.get_law("power_law"), spec) == "x"
    assert axis_name(bs.get_law("chinchilla"), Discrepancy(axis="N")) == "N"
    x = {"N": np.array([1e8, 1e9]), "D": np.array([2e9, 2e10])}
    np.testing.assert_allclose(log_axis(bs.get_law("chinchilla"), spec, x), np.log(6 * x["N"] * x["D"]))
    with pytest.raises(ValueError, match="neither an input"):
        log_axis(bs.get_law("chinchilla"), Discrepancy(axis="steps"), x)


def test_forecast_variance_grows_linearly_beyond_the_data_and_is_the_walk_inside():
    spec = Discrepancy(knots=5)
    z_fitted = np.linspace(0.0, 4.0, 20)
    count = 40_000
    drift = np.full(count, 0.02)
    knots = np.zeros((count, 5))
    knots[:, 0] = 0.02                                  # the walk at the knots z = 0, 1, 2, 3, 4 (pinned at 4)
    z_new = np.array([0.5, 2.0, 5.0, 8.0, -1.0])
    out = discrepancy_draws(spec, jax.random.PRNGKey(0), drift, knots, z_fitted, z_new)
    np.testing.assert_allclose(out[:, 0], 0.01)         # halfway between the first two knots
    np.testing.assert_allclose(out[:, 1], 0.0)
    # Beyond the largest fitted z: a Brownian continuation from 0, variance drift^2 x distance.
    np.testing.assert_allclose(np.var(out[:, 2]), 0.02**2 * 1.0, rtol=0.05)
    np.testing.assert_allclose(np.var(out[:, 3]), 0.02**2 * 4.0, rtol=0.05)
    # One path through both points: the increment from z = 5 to z = 8 is independent of the first leg.
    np.testing.assert_allclose(np.cov(out[:, 2], out[:, 3])[0, 1], 0.02**2 * 1.0, rtol=0.1)
    # Below the data: from the first knot's value.
    np.testing.assert_allclose(np.mean(out[:, 4]), 0.02, atol=1e-3)
    np.testing.assert_allclose(np.var(out[:, 4]), 0.02**2, rtol=0.05)
    grid, spacing = knot_grid(spec, 0.0, 4.0)
    assert float(spacing) == 1.0 and np.allclose(grid, [0, 1, 2, 3, 4])


def test_likelihood_carries_the_discrepancy_through_priors_and_its_saved_form():
    import numpyro.distributions as dist

    lik = bs.Likelihood(discrepancy="random_walk")
    assert lik.param_names == ("sigma", "drift") and lik.noise_names == ("sigma",)
    wide = lik.with_priors({"drift": dist.HalfNormal(0.05)})
    assert float(wide.discrepancy.drift_prior.scale) == 0.05
    back = bs.Likelihood(**wide.to_dict())
    assert back.discrepancy.knots == wide.discrepancy.knots
    assert float(back.discrepancy.drift_prior.scale) == 0.05
    with pytest.raises(KeyError, match="discrepancy"):
        bs.Likelihood().with_priors({"drift": dist.HalfNormal(0.05)})
    with pytest.raises(ValueError, match="unknown discrepancy"):
        bs.Likelihood(discrepancy="gaussian_process")
    with pytest.raises(ValueError, match="ar1 likelihood"):
        bs.Likelihood("ar1", discrepancy="random_walk")
    assert bs.Likelihood("student_t", discrepancy="random_walk").param_names == ("sigma", "drift")


@pytest.mark.slow  # Student-t with the walk samples a weight per run: ~35 s here
def test_student_t_noise_with_the_walk_gives_an_outlier_a_small_weight_instead_of_a_large_sigma():
    """Student-t noise as a scale mixture keeps the walk integrated out: one run 15% off the law gets the
    smallest precision weight, and sigma stays near the 1% of the other runs (the normal likelihood's sigma
    absorbs the outlier)."""
    from bayescale.discrepancy import NOISE_WEIGHT_SITE

    table = simulate_chinchilla(num_runs=30, sigma=0.01, seed=8)
    table.loc[7, "loss"] *= 1.15
    fits = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for family in ("normal", "student_t"):
            fits[family] = bs.fit(table, "chinchilla", likelihood=family, discrepancy="random_walk", num_warmup=300,
                                  num_samples=300, num_chains=2, seed=0, misfit_checks=False, retries=0)
    sigma = {k: float(np.median(bs.draws(f)["sigma"])) for k, f in fits.items()}
    assert sigma["student_t"] < 0.02 < sigma["normal"]
    weights = np.asarray(fits["student_t"].data.posterior[NOISE_WEIGHT_SITE]).reshape(-1, len(table)).mean(axis=0)
    assert weights.shape == (30,) and int(np.argmin(weights)) == 7
    beyond = bs.predict(fits["student_t"], {"N": [3e11], "D": [6e12]}).new_run
    assert np.isfinite(beyond).all()


@pytest.fixture(scope="module")
def walk_fit():
    table = simulate_chinchilla(num_runs=40, sigma=0.01, seed=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return bs.fit(table, "chinchilla", discrepancy="random_walk", num_warmup=300, num_samples=300, num_chains=2,
                      seed=1)


def test_drift_under_a_half_normal_prior_is_sampled_through_a_signed_normal_coordinate():
    import numpyro.distributions as dist
    from numpyro.handlers import seed, trace

    from bayescale.discrepancy import DRIFT_Z_SITE, sample_drift

    draws = []
    for i in range(4000):
        tr = trace(seed(lambda: sample_drift(dist.HalfNormal(0.03)), i)).get_trace()
        assert tr[DRIFT_Z_SITE]["type"] == "sample" and tr["drift"]["type"] == "deterministic"
        draws.append(float(tr["drift"]["value"]))
        assert float(tr["drift"]["value"]) == pytest.approx(0.03 * abs(float(tr[DRIFT_Z_SITE]["value"])))
    # The same prior as HalfNormal(0.03) on drift itself.
    assert stats.kstest(draws, stats.halfnorm(scale=0.03).cdf).pvalue > 0.01
    # Any other prior is sampled as declared.
    tr = trace(seed(lambda: sample_drift(dist.LogNormal(-4.0, 1.0)), 0)).get_trace()
    assert tr["drift"]["type"] == "sample" and DRIFT_Z_SITE not in tr


def test_fit_with_a_discrepancy_widens_forecasts_with_the_distance_and_saves(walk_fit, tmp_path):
    assert "drift" in walk_fit.summary().index and "_walk_marginal" not in walk_fit.data.posterior
    # Well-specified data (no discrepancy to find): drift's posterior sits near 0, where sampling log(drift)
    # diverged (2-70 of 4,000 on such ladders); through the signed coordinate there are none.
    assert walk_fit.diagnostics.divergences == 0
    np.testing.assert_allclose(np.asarray(walk_fit.data.posterior["drift"]),
                               float(DEFAULT_DRIFT_PRIOR.scale) * np.abs(np.asarray(walk_fit.data.posterior["_drift_z"])))
    # The pointwise log-likelihood holds each run's leave-one-out conditional: finite, one per run.
    loglik = np.asarray(walk_fit.data.log_likelihood["loss"])
    assert loglik.shape[-1] == 40 and np.isfinite(loglik).all()
    near = {"N": 3e9, "D": 1e11}       # inside the fitted compute range
    far = {"N": 3e11, "D": 1e13}       # 10,000x the compute of the near point
    widths = {}
    for name, at in (("near", near), ("far", far)):
        q = bs.predict(walk_fit, at).quantiles((0.05, 0.95))
        widths[name] = float(np.log(q["new_run_q95"] / q["new_run_q5"]).iloc[0])
    assert widths["far"] > 1.5 * widths["near"]
    # Saved and loaded, the fit predicts the same draws.
    path = walk_fit.save(tmp_path / "walk.fit")
    again = bs.load(path)
    assert again.likelihood.to_dict() == walk_fit.likelihood.to_dict()
    np.testing.assert_allclose(bs.predict(again, far).new_run, bs.predict(walk_fit, far).new_run)
    with pytest.raises(ValueError, match="grouped fits"):
        bs.fit(simulate_chinchilla(num_runs=20, seed=1).assign(g=["a", "b"] * 10), "chinchilla", group="g",
               discrepancy="random_walk")


def test_walk_posterior_draws_match_the_conditional_gaussian():
    from bayescale.discrepancy import walk_draws

    rng = np.random.default_rng(2)
    spec = Discrepancy(knots=4)
    z = np.sort(rng.uniform(0.0, 3.0, 25))
    residual = 0.01 * np.sin(z) + 0.003 * rng.standard_normal(25)
    count = 20_000
    knots = walk_draws(spec, jax.random.PRNGKey(1), np.full(count, 0.02), np.full((count, 25), 0.003**2),
                       np.tile(residual, (count, 1)), z)
    assert knots.shape == (count, 4) and np.all(knots[:, -1] == 0.0)
    A, spacing = interpolation(spec, jnp.asarray(z), z.min(), z.max())
    A = np.asarray(A)
    G = np.asarray(walk_factor(0.02, spacing, 3))
    S = G @ G.T
    K = A @ S @ A.T + np.eye(25) * 0.003**2
    mean = S @ A.T @ np.linalg.solve(K, residual)
    cov = S - S @ A.T @ np.linalg.solve(K, A @ S)
    w = knots[:, :-1][:, ::-1]                            # w_m: m + 1 knots below the pin
    np.testing.assert_allclose(w.mean(axis=0), mean, atol=4 * np.sqrt(np.diag(cov).max() / count))
    scale = np.sqrt(np.outer(np.diag(cov), np.diag(cov)) / count)    # Monte Carlo sd of each covariance
    np.testing.assert_allclose(np.cov(w.T), cov, rtol=0, atol=5 * scale.max())


def test_the_default_is_the_walk_for_ungrouped_normal_fits_of_declared_laws(package_defaults):
    from bayescale.cli import _discrepancy
    from bayescale.discrepancy import Discrepancy
    from bayescale.likelihood import as_likelihood

    chinchilla = bs.get_law("chinchilla")
    assert isinstance(as_likelihood("normal", law=chinchilla).discrepancy, Discrepancy)
    assert isinstance(as_likelihood(None).discrepancy, Discrepancy)
    assert as_likelihood("student_t", law=chinchilla).discrepancy is None
    assert as_likelihood("ar1", law=chinchilla).discrepancy is None
    assert as_likelihood("normal", grouped=True, law=chinchilla).discrepancy is None
    assert as_likelihood("normal", law=bs.get_law("lr_annealing")).discrepancy is not None  # axis S1 > 0
    assert as_likelihood("normal", "default", law=chinchilla).param_names == ("sigma", "drift")
    assert as_likelihood("normal", None, law=chinchilla).discrepancy is None
    assert as_likelihood(bs.Likelihood(), law=chinchilla).discrepancy is None  # an object keeps its own
    assert _discrepancy("default", "normal", False, chinchilla) == "random_walk"
    assert _discrepancy("default", "normal", True, chinchilla) is None


@pytest.mark.slow  # ~15 s; the default's resolution is checked without fitting above
def test_a_default_fit_carries_the_walk(package_defaults):
    table = simulate_chinchilla(num_runs=24, sigma=0.01, seed=4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = bs.fit(table, "chinchilla", num_warmup=150, num_samples=150, num_chains=2, seed=0, retries=0,
                     misfit_checks=False)
    assert fit.likelihood.discrepancy is not None and "drift" in fit.data.posterior
