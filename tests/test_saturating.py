"""Level-and-slope coordinates of a saturating term (bayescale.saturating): the density NUTS samples is the
declared prior carried exactly through the change of variables, and the posterior it gives is the declared
model's, without the divergences of the floor-exponent ridge."""

import dataclasses
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pandas as pd
import pytest
from numpyro.distributions.transforms import ExpTransform

import bayescale as bs
from bayescale.diagnostics import ConvergenceWarning
from bayescale.model import saturating_sites
from bayescale.saturating import SaturatingTermPrior, applies
from test_catalogue import PARSCALE_TRUTH, parscale_table

@pytest.fixture(autouse=True)
def level_and_slope(monkeypatch):
    """The coordinates under test (tests/conftest.py switches them off for the rest of the suite)."""
    import bayescale.saturating

    monkeypatch.setattr(bayescale.saturating, "ENABLED", True)


COEFFICIENT = dist.LogNormal(jnp.log(50.0), 3.0)
EXPONENT = dist.LogNormal(jnp.log(0.3), 0.5)


# (coefficient priors, exponent priors, each term's exponent, log pivot references): one term (power_law), two
# terms with their own exponents (Chinchilla), two terms sharing one exponent (the over-training law), three
# terms (the vocabulary law).
SHAPES = {
    "one term": ([COEFFICIENT], [EXPONENT], [0], [np.log(1e9)]),
    "two exponents": ([COEFFICIENT, dist.LogNormal(jnp.log(1000.0), 3.0)], [EXPONENT, dist.LogNormal(jnp.log(0.35), 0.5)],
                      [0, 1], [np.log(1e9), np.log(2e10)]),
    "shared exponent": ([COEFFICIENT, dist.LogNormal(jnp.log(300.0), 4.0)], [dist.LogNormal(jnp.log(0.15), 0.5)],
                        [0, 0], [np.log(1e20), np.log(1e20)]),
    "three exponents": ([COEFFICIENT, dist.LogNormal(jnp.log(10.0), 2.0), dist.LogNormal(jnp.log(1000.0), 3.0)],
                        [EXPONENT, dist.LogNormal(jnp.log(0.2), 0.5), dist.LogNormal(jnp.log(0.35), 0.5)],
                        [0, 1, 2], [np.log(3e8), np.log(5e7), np.log(2e10)]),
}


@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("floor_prior", [dist.Uniform(0.0, 2.1), dist.HalfNormal(3.0)], ids=["interval", "positive"])
def test_density_is_the_declared_prior_through_the_inverse_map(floor_prior, shape):
    """log q(u) (from the forward map's Jacobian) must equal log p(theta) - log|det du/dtheta| computed through
    the inverse map, independently written: a wrong Jacobian, bound or inverse fails here."""
    coefficients, exponents, term_exponents, log_refs = SHAPES[shape]
    prior = SaturatingTermPrior(floor_prior, coefficients, exponents, term_exponents, jnp.asarray(log_refs))
    u = prior.sample(jax.random.PRNGKey(1), (300,))
    assert u.shape == (300, 1 + len(coefficients) + len(exponents))
    floor, log_coefficient, exponent = jax.vmap(prior.to_params)(u)
    key_floor = jax.random.split(jax.random.PRNGKey(1), prior.size)[0]
    np.testing.assert_allclose(floor, floor_prior.sample(key_floor, (300,)), rtol=1e-10)  # the round trip
    log_priors = [dist.TransformedDistribution(p, ExpTransform().inv) for p in coefficients]

    def through_inverse(theta):
        n = len(coefficients)
        jacobian = jax.jacfwd(lambda t: prior.from_params(t[0], t[1:1 + n], t[1 + n:]))(theta)
        return (floor_prior.log_prob(theta[0]) + sum(p.log_prob(c) for p, c in zip(log_priors, theta[1:1 + n]))
                + sum(p.log_prob(a) for p, a in zip(exponents, theta[1 + n:])) - jnp.linalg.slogdet(jacobian)[1])

    expected = jax.vmap(through_inverse)(jnp.concatenate([floor[:, None], log_coefficient, exponent], -1))
    np.testing.assert_allclose(prior.log_prob(u), expected, rtol=1e-9, atol=1e-9)


def test_priors_outside_the_coordinates_fall_back_to_the_declared_sites():
    assert applies(dist.Uniform(0.0, 2.0), EXPONENT) and applies(dist.HalfNormal(1.0), EXPONENT)
    assert not applies(dist.Normal(1.5, 0.3), EXPONENT)        # a floor that may be negative
    assert not applies(dist.Uniform(0.0, 2.0), dist.Normal(0.3, 0.1))  # an exponent that may be negative
    law = bs.get_law("power_law")
    stats = {"y_min": 2.0}
    assert saturating_sites(law, stats) == ("E", ("A",), ("alpha",), (0,))
    assert saturating_sites(bs.get_law("overtrain"), stats) == ("E", ("a", "b"), ("eta",), (0, 0))
    assert saturating_sites(bs.get_law("vocabulary"), stats) == ("E", ("A1", "A2", "B"), ("alpha1", "alpha2", "beta"),
                                                                (0, 1, 2))
    assert saturating_sites(bs.get_law("offset_power_law"), stats) == ("d", ("a",), ("c",), (0,))
    assert saturating_sites(law.with_priors({"E": dist.Normal(1.5, 0.3)}), stats) is None
    with pytest.raises(ValueError, match="saturating_term"):
        dataclasses.replace(law, saturating_term=("E", "alpha"))


def test_a_fit_saved_before_the_saturating_term_loads_with_its_site(tmp_path):
    """A power_law fit saved when E, A and alpha were sampled directly (posterior without the level-and-slope
    site) gains the site on load, computed exactly from its draws: evidence and prior terms then evaluate the
    model as it is now instead of failing on a missing site."""
    import arviz as az

    from bayescale.diagnostics import Diagnostics

    rng = np.random.default_rng(0)
    x = np.geomspace(1e6, 1e8, 12)
    table = pd.DataFrame({"x": x, "loss": 2.0 + 40.0 * x**-0.25})
    law = bs.get_law("power_law")
    runs = bs.runs_from_table(table, law)
    shape = (2, 50)
    posterior = {"E": rng.uniform(1.5, 1.9, shape), "A": 40.0 * np.exp(0.1 * rng.standard_normal(shape)),
                 "alpha": 0.25 * np.exp(0.05 * rng.standard_normal(shape)), "sigma": np.full(shape, 0.01)}
    data = az.from_dict({"posterior": posterior, "observed_data": {"loss": runs.y}, "constant_data": {"x": x},
                         "sample_stats": {"diverging": np.zeros(shape, bool), "energy": rng.standard_normal(shape)}},
                        coords={"run": np.arange(len(runs))}, dims={"loss": ["run"], "x": ["run"]})
    diagnostics = Diagnostics(table=pd.DataFrame({"rhat": 1.0, "ess_bulk": 400.0, "ess_tail": 400.0}, index=list(posterior)),
                              divergences=0, num_draws=100, bfmi=np.ones(2))
    old = bs.Fit(law=law, likelihood=bs.Likelihood("normal"), data=data, runs=runs, diagnostics=diagnostics,
                 settings=bs.SamplerSettings(num_samples=50, num_chains=2), seed=0)
    bs.save(old, tmp_path / "old.nc")
    loaded = bs.load(tmp_path / "old.nc")
    site = loaded.data.posterior["_E_A_level_slope"].values
    assert site.shape == (2, 50, 3)
    prior = SaturatingTermPrior(dist.Uniform(0.0, table["loss"].min()), [law.params["A"].prior],
                                [law.params["alpha"].prior], [0], [np.mean(np.log(x))])
    floor, log_coefficient, exponent = jax.vmap(prior.to_params)(jnp.asarray(site).reshape(-1, 3))
    np.testing.assert_allclose(floor, posterior["E"].reshape(-1), rtol=1e-10)
    np.testing.assert_allclose(np.exp(log_coefficient[:, 0]), posterior["A"].reshape(-1), rtol=1e-9)
    np.testing.assert_allclose(exponent[:, 0], posterior["alpha"].reshape(-1), rtol=1e-9)


@pytest.mark.slow
def test_parscale_posterior_matches_the_declared_parametrisation_without_divergences():
    """Seed 1, 1% noise: the data set whose divergences were diagnosed (10 of 4,000 with E, log c_ref, alpha
    sampled directly). Through the level and slope: none, and the same posterior (means within 3 Monte Carlo
    standard errors plus a tenth of a posterior sd, sds within a third: the declared sampling loses some of
    the ridge's tail to its divergences)."""
    table = parscale_table(seed=1, sigma=0.01)
    law = bs.get_law("parscale")
    declared = dataclasses.replace(law, saturating_term=None, name="parscale_declared")
    settings = dict(num_warmup=1000, num_samples=2000, num_chains=4, discrepancy=None, retries=False, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        new = bs.fit(table, law, **settings)
        old = bs.fit(table, declared, **settings)
    assert new.diagnostics.divergences == 0
    assert new.diagnostics.table["rhat"].max() < 1.01
    for name in ("E", "alpha", "k"):
        a, b = new.summary().loc[name], old.summary().loc[name]
        assert abs(a["mean"] - b["mean"]) < 3 * np.hypot(a["mcse_mean"], b["mcse_mean"]) + 0.1 * b["sd"], name
        assert 0.75 < a["sd"] / b["sd"] < 1.33, name
    assert abs(new.summary().loc["E", "mean"] - PARSCALE_TRUTH["E"]) < 3 * new.summary().loc["E", "sd"]


@pytest.mark.slow
def test_evidence_is_the_same_in_both_coordinates():
    """log Z does not depend on the coordinates NUTS samples in: bridge sampling over the level-and-slope
    coordinates and over the declared ones must agree within their stated errors (a Jacobian term missing
    from the density would shift one of them by its posterior mean)."""
    rng = np.random.default_rng(3)
    x = np.geomspace(1e6, 1e8, 15)
    table = {"x": x, "loss": (2.0 + 40.0 * x**-0.25) * np.exp(0.01 * rng.standard_normal(x.size))}
    law = bs.get_law("power_law")
    declared = dataclasses.replace(law, saturating_term=None, name="power_law_declared")
    settings = dict(num_warmup=1000, num_samples=2000, num_chains=4, discrepancy=None, retries=False, seed=0)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        z_new = bs.log_evidence(bs.fit(pd.DataFrame(table), law, **settings))
        z_old = bs.log_evidence(bs.fit(pd.DataFrame(table), declared, **settings))
    assert abs(z_new.log_z - z_old.log_z) < 3 * np.hypot(z_new.error, z_old.error) + 0.05, (z_new, z_old)


@pytest.mark.slow
@pytest.mark.parametrize("law_name", ["chinchilla", "overtrain"])
def test_several_terms_give_the_declared_posterior(law_name):
    """Two terms above one floor (Chinchilla's two exponents, the over-training law's shared one): on simulated
    Chinchilla ladders, where sampling the declared parameters converges, both coordinates give the same
    posterior (means within 3 Monte Carlo standard errors plus a tenth of a posterior sd)."""
    from conftest import BESIROGLU, simulate_chinchilla

    table = simulate_chinchilla(BESIROGLU, num_runs=40, sigma=0.01, seed=4)
    law = bs.get_law(law_name)
    declared = dataclasses.replace(law, saturating_term=None, name=f"{law_name}_declared")
    settings = dict(num_warmup=1000, num_samples=2000, num_chains=4, discrepancy=None, retries=False, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        new = bs.fit(table, law, **settings)
        old = bs.fit(table, declared, **settings)
    assert new.diagnostics.divergences == 0 and new.diagnostics.table["rhat"].max() < 1.01
    for name in law.params:
        a, b = new.summary().loc[name], old.summary().loc[name]
        assert abs(a["mean"] - b["mean"]) < 3 * np.hypot(a["mcse_mean"], b["mcse_mean"]) + 0.1 * b["sd"], name


@pytest.mark.parametrize("floor_prior", [dist.Uniform(0.0, 2.1), dist.HalfNormal(3.0)], ids=["interval", "positive"])
def test_the_density_has_finite_gradients_on_both_sides_of_the_floor_bound(floor_prior):
    """NUTS needs the gradient: finite at levels below and above the floor's upper bound, for a bounded and an
    unbounded floor prior (the closed-form Jacobian has a branch per side)."""
    prior = SaturatingTermPrior(floor_prior, *SHAPES["two exponents"][:2], [0, 1], jnp.asarray(SHAPES["two exponents"][3]))
    for log_level_gap in (np.log(1.5), np.log(4.0)):  # level 1.5 (below 2.1) and 4.0 (above)
        u = jnp.array([0.3, log_level_gap, 0.2, -1.0, -1.5])
        grad = jax.grad(lambda v: prior.log_prob(v))(u)
        assert np.all(np.isfinite(np.asarray(grad))), (floor_prior, log_level_gap, grad)


# ---- grouped fits: one level-and-slope site per group ----

def _grouped_chinchilla(pooling):
    from bayescale.fit import model_inputs
    from bayescale.grouping import grouped_law_model, make_grouping
    from bayescale.likelihood import as_likelihood
    from test_grouping import grouped_table

    law = bs.get_law("chinchilla")
    runs = bs.runs_from_table(grouped_table(runs_per_group=12), law, group="corpus")
    grouping = make_grouping(law, "corpus", pooling=pooling, centering="centered")
    return law, runs, grouping, grouped_law_model(law, as_likelihood("normal"), grouping), model_inputs(runs)


@pytest.mark.parametrize("pooling", ["partial", "independent"])
def test_grouped_density_is_each_groups_hierarchical_prior_through_the_inverse_map(pooling):
    """Each group's level-and-slope density equals the hierarchical prior of its (E, A, B, alpha, beta) given
    the centres and spreads (written out here independently: log(E) truncated normal below the group's smallest
    loss, log A - alpha log N_ref and log B - beta log D_ref normal, log alpha and log beta normal; or the
    declared priors for independent groups) times |det d(E, log A, log B, alpha, beta) / du| by forward-mode
    differentiation."""
    from numpyro import handlers
    from numpyro.distributions.transforms import ExpTransform

    from bayescale.saturating import GroupedSaturatingTermPrior

    law, runs, grouping, model, ((x, stats), kwargs) = _grouped_chinchilla(pooling)
    trace = handlers.trace(handlers.seed(model, 3)).get_trace(x, stats, **kwargs)
    site = trace["_E_A_B_level_slope"]
    prior, u = site["fn"], site["value"]
    assert isinstance(prior, GroupedSaturatingTermPrior) and u.shape == (3, 5)
    log_q = prior.log_prob(u)
    log_refs = jnp.array([np.mean(np.log(runs.x["N"])), np.mean(np.log(runs.x["D"]))])
    y_min = np.asarray(stats["group_y_min"])
    for g in range(3):
        to_params = lambda v, g=g: jnp.concatenate([jnp.atleast_1d(a) for a in prior.make(  # noqa: E731
            {k: val[g] for k, val in prior.params.items()}).to_params(v)])
        theta = to_params(u[g])  # E, log A, log B, alpha, beta
        jacobian = jax.jacfwd(to_params)(u[g])
        E, log_a, log_b, alpha, beta = theta
        if pooling == "partial":
            value = lambda name: trace[name]["value"]  # noqa: E731
            lp = (dist.TruncatedNormal(jnp.log(value("E_mu")), value("E_tau"), high=jnp.log(y_min[g])).log_prob(jnp.log(E))
                  - jnp.log(E)
                  + dist.Normal(jnp.log(value("A_mu")) - value("alpha_mu") * log_refs[0], value("A_tau")).log_prob(
                      log_a - alpha * log_refs[0])
                  + dist.Normal(jnp.log(value("B_mu")) - value("beta_mu") * log_refs[1], value("B_tau")).log_prob(
                      log_b - beta * log_refs[1])
                  + dist.LogNormal(jnp.log(value("alpha_mu")), value("alpha_tau")).log_prob(alpha)
                  + dist.LogNormal(jnp.log(value("beta_mu")), value("beta_tau")).log_prob(beta))
        else:
            from bayescale.law import resolve_prior

            declared = {n: resolve_prior(law.params[n].prior, {"y_min": y_min[g]}) for n in law.params}
            lp = (declared["E"].log_prob(E)
                  + dist.TransformedDistribution(declared["A"], ExpTransform().inv).log_prob(log_a)
                  + dist.TransformedDistribution(declared["B"], ExpTransform().inv).log_prob(log_b)
                  + declared["alpha"].log_prob(alpha) + declared["beta"].log_prob(beta))
        expected = lp + jnp.linalg.slogdet(jacobian)[1]
        np.testing.assert_allclose(log_q[g], expected, rtol=1e-9, atol=1e-9)
        assert E < y_min[g]
    # The deterministic sites are the parameters of each group's u.
    np.testing.assert_allclose(trace["E"]["value"], jax.vmap(lambda v, g: prior.make(
        {k: val[g] for k, val in prior.params.items()}).to_params(v)[0])(u, jnp.arange(3)), rtol=1e-12)


@pytest.mark.slow  # two grouped models' prior draws (~17 s of compilation); the density test above is in the default run
def test_grouped_level_and_slope_prior_draws_match_the_declared_grouped_model():
    """Prior draws through the per-group coordinates have the declared grouped model's distribution (the
    same model sampled without them): sampling, like the density, is the hierarchical prior."""
    from scipy import stats as scipy_stats

    import bayescale.saturating
    from bayescale.model import prior_draws

    draws = {}
    for enabled in (True, False):
        bayescale.saturating.ENABLED = enabled
        law, runs, grouping, model, (args, kwargs) = _grouped_chinchilla("partial")
        draws[enabled] = prior_draws(model, jax.random.PRNGKey(4), args, kwargs, 3000)
    for name in ("E", "A", "B", "alpha", "beta"):
        for g in range(3):
            a, b = (np.asarray(draws[e][name])[:, g] for e in (True, False))
            assert scipy_stats.ks_2samp(a, b).pvalue > 1e-3, (name, g)
