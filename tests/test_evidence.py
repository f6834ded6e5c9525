"""Evidence estimators against closed-form and grid-integrated log marginal likelihoods.

- Bayesian linear regression, known noise, Normal prior: y ~ N(0, s^2 I + t^2 X X^T) exactly.
- Bayesian linear regression with a conjugate Normal-Inverse-Gamma prior: a multivariate Student-t.
- A power law y = A x^-alpha with log-normal noise through the full `bayescale.fit` path (pivoted A, sigma
  fitted): log A integrated in closed form, (alpha, sigma) on a fine grid.
Each checks |estimate - truth| < 0.1 nats and that the reported error covers the truth (within 3 errors,
plus a small floor for the deterministic grid).
"""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from scipy.special import gammaln, logsumexp
from scipy.stats import multivariate_normal

import bayescale as bs
from bayescale.evidence import bridge_sampling, density, evidence_report, laplace, widen_prior
from bayescale.inference import SamplerSettings, program_for, sample_posterior

SETTINGS = SamplerSettings(num_warmup=500, num_samples=1000, num_chains=4)


def _nuts_unconstrained(model, args, kwargs, seed):
    from bayescale.evidence import unconstrained_draws

    draws = sample_posterior(program_for(model, args, kwargs), SETTINGS, jax.random.PRNGKey(seed), args, kwargs)
    target = density(model, args, kwargs)
    samples = draws["samples"]
    return target, unconstrained_draws(target, samples)


# ---- known-noise linear regression ----
NOISE, PRIOR_SD = 0.5, 2.0


def known_noise_model(X, y=None):
    beta = numpyro.sample("beta", dist.Normal(0.0, PRIOR_SD).expand([X.shape[1]]).to_event(1))
    numpyro.sample("y", dist.Normal(X @ beta, NOISE), obs=y)


def known_noise_data(seed, n=50, p=4):
    rng = np.random.default_rng(seed)
    X = np.column_stack([np.ones(n), rng.standard_normal((n, p - 1))])
    y = X @ rng.normal(0, 1.5, p) + NOISE * rng.standard_normal(n)
    exact = multivariate_normal(np.zeros(n), NOISE**2 * np.eye(n) + PRIOR_SD**2 * X @ X.T).logpdf(y)
    return jnp.asarray(X), jnp.asarray(y), exact


# ---- Normal-Inverse-Gamma linear regression ----
A0, B0, V0 = 3.0, 2.0, 4.0


def nig_model(X, y=None):
    s2 = numpyro.sample("s2", dist.InverseGamma(A0, B0))
    beta = numpyro.sample("beta", dist.Normal(0.0, jnp.sqrt(s2 * V0)).expand([X.shape[1]]).to_event(1))
    numpyro.sample("y", dist.Normal(X @ beta, jnp.sqrt(s2)), obs=y)


def nig_data(seed, n=50, p=4):
    rng = np.random.default_rng(seed)
    X = np.column_stack([np.ones(n), rng.standard_normal((n, p - 1))])
    y = X @ rng.normal(0, 1.0, p) + 0.8 * rng.standard_normal(n)
    precision_n = np.eye(p) / V0 + X.T @ X
    mean_n = np.linalg.solve(precision_n, X.T @ y)
    a_n = A0 + n / 2
    b_n = B0 + 0.5 * (y @ y - mean_n @ precision_n @ mean_n)
    exact = (gammaln(a_n) - gammaln(A0) + A0 * np.log(B0) - a_n * np.log(b_n)
             - 0.5 * np.linalg.slogdet(precision_n)[1] - 0.5 * p * np.log(V0) - 0.5 * n * np.log(2 * np.pi))
    return jnp.asarray(X), jnp.asarray(y), exact


@pytest.mark.parametrize("case", ["known_noise", "normal_inverse_gamma"])
def test_bridge_matches_closed_form_linear_regression(case):
    model, data = {"known_noise": (known_noise_model, known_noise_data),
                   "normal_inverse_gamma": (nig_model, nig_data)}[case]
    X, y, exact = data(seed=1)
    target, posterior = _nuts_unconstrained(model, (X,), {"y": y}, seed=2)
    estimate = bridge_sampling(target, posterior, jax.random.PRNGKey(3))
    print(f"\n{case}: bridge {estimate.log_z:.4f} +- {estimate.error:.4f}, exact {exact:.4f}")
    assert abs(estimate.log_z - exact) < 0.1, (estimate, exact)
    assert abs(estimate.log_z - exact) < 3 * estimate.error + 0.01, (estimate, exact)
    assert 0 < estimate.error < 0.1
    # The Laplace cross-check is exact for the Gaussian posterior of the known-noise case.
    check = laplace(model, (X,), {"y": y}, jax.random.PRNGKey(4), num_starts=4)
    assert abs(check.log_z - exact) < (1e-4 if case == "known_noise" else 0.3)


# ---- a power law through the whole bayescale.fit path ----
LOG_A_PRIOR = (np.log(10.0), 2.0)


def pure_power_law():
    return bs.Law(
        name="test_pure_power_law",
        inputs=("x",),
        params={
            "A": bs.Param(dist.LogNormal(*LOG_A_PRIOR), "coefficient", pivot=("x", "alpha")),
            "alpha": bs.Param(dist.LogNormal(np.log(0.3), 0.5), "exponent"),
        },
        mean=lambda p, x: p["A"] * x["x"] ** -p["alpha"],
    )


def power_law_table(seed=0, n=30, sigma=0.03):
    import pandas as pd

    rng = np.random.default_rng(seed)
    x = np.exp(rng.uniform(np.log(1e6), np.log(1e9), n))
    y = 20.0 * x**-0.15 * np.exp(sigma * rng.standard_normal(n))
    return pd.DataFrame({"x": x, "loss": y})


def grid_log_evidence(x, y, sigma_scale=0.1):
    """log A integrated exactly (Gaussian in log A given alpha, sigma), (alpha, sigma) on a fine grid."""
    lx, ly, n = np.log(x), np.log(y), len(x)
    mu0, s0 = LOG_A_PRIOR
    slope = np.polyfit(lx, ly, 1)[0]
    resid_sd = np.std(ly - np.polyval(np.polyfit(lx, ly, 1), lx))
    alpha = np.linspace(-slope - 0.05, -slope + 0.05, 1201)
    log_sigma = np.linspace(np.log(resid_sd / 4), np.log(resid_sd * 4), 1201)
    sigma = np.exp(log_sigma)
    z = ly[None, :] + alpha[:, None] * lx[None, :] - mu0                      # (alpha, n)
    # N(z; 0, sigma^2 I + s0^2 1 1^T) via Sherman-Morrison, vectorised over the grid.
    s2 = sigma[None, :] ** 2
    zz = np.sum(z**2, axis=1)[:, None]
    zs = np.sum(z, axis=1)[:, None]
    quad = zz / s2 - (s0**2 / (s2 * (s2 + n * s0**2))) * zs**2
    logdet = (n - 1) * np.log(s2) + np.log(s2 + n * s0**2)
    log_lik = -0.5 * (quad + logdet + n * np.log(2 * np.pi)) - np.sum(ly)  # LogNormal: 1/y Jacobian
    log_prior_alpha = dist.LogNormal(np.log(0.3), 0.5).log_prob(jnp.asarray(alpha))
    log_prior_sigma = dist.HalfNormal(sigma_scale).log_prob(jnp.asarray(sigma))
    integrand = log_lik + np.asarray(log_prior_alpha)[:, None] + (np.asarray(log_prior_sigma) + log_sigma)[None, :]
    # The grid must hold the whole posterior: negligible mass on its edges.
    edge = max(integrand[[0, -1], :].max(), integrand[:, [0, -1]].max())
    assert edge < integrand.max() - 20
    cell = (alpha[1] - alpha[0]) * (log_sigma[1] - log_sigma[0])
    return float(logsumexp(integrand) + np.log(cell))


@pytest.fixture(scope="module")
def power_law_fit():
    table = power_law_table()
    # Independent noise: the grid integral is of the model without the default discrepancy walk.
    return table, bs.fit(table, pure_power_law(), discrepancy=None, num_warmup=500, num_samples=1000, seed=1)


def test_bridge_matches_grid_for_a_power_law_fit(power_law_fit):
    table, fitted = power_law_fit
    exact = grid_log_evidence(table["x"].to_numpy(), table["loss"].to_numpy())
    report = evidence_report(fitted, seed=0)
    estimate = report.primary
    print(f"\npower law: bridge {estimate.log_z:.4f} +- {estimate.error:.4f}, Laplace {report.cross_check.log_z:.4f}, "
          f"grid {exact:.4f}")
    assert abs(estimate.log_z - exact) < 0.1, (estimate, exact)
    assert abs(estimate.log_z - exact) < 3 * estimate.error + 0.01, (estimate, exact)
    assert abs(report.cross_check.log_z - exact) < 0.3
    # Widened priors: the grid integral with sigma's prior scale doubled is the truth for the sigma part;
    # every spread doubled costs about log 2 per parameter when the posterior is narrow.
    assert report.widened is not None
    assert -3 * np.log(2) - 0.7 < report.widened.log_z - estimate.log_z < 0


def test_widened_sigma_prior_matches_grid(power_law_fit):
    table, fitted = power_law_fit
    from bayescale.evidence import fit_unconstrained_draws, reweighted_log_z
    from bayescale.fit import model_inputs
    from bayescale.model import law_model

    target, posterior = fit_unconstrained_draws(fitted)
    base = bridge_sampling(target, posterior, jax.random.PRNGKey(0))
    wide = bs.Likelihood(sigma_prior=dist.HalfNormal(0.2))
    wide_target = density(law_model(fitted.law, wide), *model_inputs(fitted.runs))
    estimate = reweighted_log_z(target, wide_target, posterior, base.log_z, base.error)
    exact = grid_log_evidence(table["x"].to_numpy(), table["loss"].to_numpy(), sigma_scale=0.2)
    assert abs(estimate.log_z - exact) < 0.1
    assert abs(estimate.log_z - exact) < 3 * estimate.error + 0.01


def test_widen_prior_doubles_spreads_and_keeps_physical_bounds():
    wide, changed = widen_prior(dist.LogNormal(1.0, 0.5))
    assert changed and float(wide.scale) == 1.0 and float(wide.loc) == 1.0
    wide, changed = widen_prior(dist.HalfNormal(0.1))
    assert changed and float(wide.scale) == pytest.approx(0.2)
    gamma, _ = widen_prior(dist.Gamma(2.0, 0.1))
    assert float(gamma.mean) == pytest.approx(20.0) and float(gamma.variance) == pytest.approx(4 * 200.0)
    uniform, changed = widen_prior(dist.Uniform(0.0, 1.7))
    assert not changed and float(uniform.high) == 1.7
    data_dependent, changed = widen_prior(lambda s: dist.LogNormal(0.0, s["spread"]))
    assert changed and float(data_dependent({"spread": 0.3}).scale) == pytest.approx(0.6)
