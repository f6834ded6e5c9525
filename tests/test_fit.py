"""fit(): real data against published numbers, recovery on simulated data, reproducibility, loud failures."""

import warnings

import numpy as np
import numpyro.distributions as dist
import pytest

import bayescale as bs
from conftest import BESIROGLU, BESIROGLU_95, simulate_chinchilla

LAW_PARAMS = ("E", "A", "alpha", "B", "beta")


@pytest.fixture(scope="module")
def besiroglu_fit(besiroglu_table):
    """The issue's acceptance fit: Besiroglu's 240 points, Student-t, 4 chains x 1000 after 1000 warm-up."""
    return bs.fit(
        besiroglu_table, "chinchilla", columns={"N": "Model Size", "C": "Training FLOP"},
        likelihood="student_t", seed=0,
    )


def test_real_data_medians_inside_besiroglu_bootstrap_intervals(besiroglu_fit):
    table = besiroglu_fit.summary(quantiles=(0.05, 0.5, 0.95))
    print("\n" + table.to_string())
    for name in LAW_PARAMS:
        low, high = BESIROGLU_95[name]
        assert low <= table.loc[name, "q50"] <= high, f"{name}: median {table.loc[name, 'q50']} not in [{low}, {high}]"


def test_real_data_fit_converged_by_the_issues_standard(besiroglu_fit):
    diagnostics = besiroglu_fit.diagnostics
    assert diagnostics.converged, diagnostics.problems
    assert diagnostics.divergences == 0
    law_rows = diagnostics.table.loc[list(LAW_PARAMS)]
    assert (law_rows.rhat < 1.01).all()
    assert (law_rows.ess_bulk > 400).all()


def test_real_data_fit_is_a_full_datatree(besiroglu_fit):
    dt = besiroglu_fit.data
    for group in ("posterior", "sample_stats", "log_likelihood", "observed_data", "constant_data",
                  "posterior_predictive", "prior", "prior_predictive"):
        assert group in dt.children, group
    assert dt.posterior.sizes["chain"] == 4 and dt.posterior.sizes["draw"] == 1000
    assert dt.log_likelihood["loss"].shape == (4, 1000, 240)
    np.testing.assert_allclose(np.asarray(dt.observed_data["loss"]), besiroglu_fit.runs.y)
    # Parameters are in the user's (published) units, not the sampler's.
    assert 100 < float(dt.posterior["A"].median()) < 2000


def test_the_observed_variable_is_named_after_the_output_unless_that_name_is_taken():
    from bayescale.posterior import observed_name

    assert observed_name("loss", ["E", "A", "alpha", "N", "D"]) == "loss"
    assert observed_name("E", ["E", "A", "alpha", "N", "D"]) == "y"      # a parameter's name
    assert observed_name("N", ["E", "A", "alpha", "N", "D"]) == "y"      # an input's name
    assert observed_name("", []) == "y" and observed_name(None, []) == "y"


@pytest.fixture(scope="module")
def simulated():
    truth = dict(BESIROGLU)
    table = simulate_chinchilla(truth, num_runs=60, sigma=0.01, seed=1)
    return truth, table, bs.fit(table, "chinchilla", seed=3)  # default settings: 4 chains x 1000 + 1000


def test_recovers_simulated_parameters(simulated):
    truth, _, fit = simulated
    assert fit.converged, fit.diagnostics.problems
    summary = fit.summary(quantiles=(0.005, 0.5, 0.995))
    for name in LAW_PARAMS:
        assert summary.loc[name, "q0.5"] <= truth[name] <= summary.loc[name, "q99.5"], name
    # Informative, not just wide: the 99% interval of each exponent and of E spans under half its value.
    for name in ("E", "alpha", "beta"):
        assert summary.loc[name, "q99.5"] - summary.loc[name, "q0.5"] < 0.5 * truth[name], name
    assert 0.005 < summary.loc["sigma", "q50"] < 0.02


def test_same_seed_same_draws_other_seed_other_draws(simulated):
    _, table, fit = simulated
    again = bs.fit(table, "chinchilla", seed=3)
    other = bs.fit(table, "chinchilla", seed=4)
    np.testing.assert_array_equal(np.asarray(fit.data.posterior["alpha"]), np.asarray(again.data.posterior["alpha"]))
    assert not np.array_equal(np.asarray(fit.data.posterior["alpha"]), np.asarray(other.data.posterior["alpha"]))


def test_map_is_near_the_posterior_median(simulated):
    _, _, fit = simulated
    summary = fit.summary()
    for name in ("E", "alpha", "beta"):
        assert abs(fit.map[name] - summary.loc[name, "q50"]) < 3 * summary.loc[name, "sd"], name


@pytest.mark.slow  # ~17 s; the Student-t fits of test_misfit.py run in the default suite
def test_student_t_resists_outliers():
    truth = dict(BESIROGLU)
    table = simulate_chinchilla(truth, num_runs=60, sigma=0.005, seed=5)
    table.loc[table.index[:4], "loss"] *= 1.5  # four diverged runs
    robust = bs.fit(table, "chinchilla", likelihood="student_t", num_warmup=500, num_samples=500, seed=0)
    normal = bs.fit(table, "chinchilla", likelihood="normal", num_warmup=500, num_samples=500, seed=0)
    error = lambda f: abs(f.summary().loc["alpha", "q50"] - truth["alpha"])  # noqa: E731
    assert error(robust) < 0.03
    assert error(robust) < error(normal)


@pytest.mark.slow  # slow tier: the default run's 10-minute budget (2026-12-02 clean-clone run: 15:09 for 208 tests)
def test_known_standard_errors_enter_the_likelihood():
    truth = dict(BESIROGLU)
    table = simulate_chinchilla(truth, num_runs=40, sigma=0.02, seed=2)
    table["se"] = 0.02 * table["loss"]
    fit = bs.fit(table, "chinchilla", se="se", num_warmup=400, num_samples=400, num_chains=2, seed=0)
    # The known errors explain the scatter, so the extra noise scale shrinks toward zero.
    assert fit.summary().loc["sigma", "q50"] < 0.01
    np.testing.assert_allclose(fit.runs.se, table["se"])


@pytest.mark.slow  # slow tier: the default run's 10-minute budget (2026-12-02 clean-clone runs: 15:09 for 208 tests, 11:57 for 202)
def test_prior_override_changes_the_posterior(simulated):
    _, table, _ = simulated
    tight = bs.fit(
        table, "chinchilla", priors={"alpha": dist.TruncatedNormal(0.6, 0.005, low=0.0)},
        num_warmup=300, num_samples=300, num_chains=2, seed=0,
    )
    assert abs(tight.summary().loc["alpha", "q50"] - 0.6) < 0.03
    assert tight.priors.keys() == {"alpha"}


def test_unknown_prior_name_is_an_error():
    with pytest.raises(KeyError, match=r"priors given for unknown parameters \['gamma'\]"):
        bs.fit(simulate_chinchilla(num_runs=20), "chinchilla", priors={"gamma": dist.Normal(0, 1)})


def test_unknown_law_lists_the_catalogue():
    with pytest.raises(KeyError, match="unknown law 'chinchila'; available: .*chinchilla"):
        bs.fit(simulate_chinchilla(num_runs=20), "chinchila")


@pytest.mark.slow  # ~15 s; non-convergence reports are also checked in test_retries.py and test_cli.py
def test_a_fit_that_did_not_converge_says_so_loudly():
    table = simulate_chinchilla(num_runs=30, seed=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit = bs.fit(table, "chinchilla", num_warmup=10, num_samples=30, num_chains=2, seed=0)
    assert not fit.converged
    messages = [str(w.message) for w in caught if issubclass(w.category, bs.ConvergenceWarning)]
    assert messages and "DID NOT CONVERGE" in messages[0]
    assert "ESS" in messages[0] and "draw more samples" in messages[0]
    assert "NOT CONVERGED" in repr(fit)


def test_fast_student_t_sampler_has_the_student_t_distribution():
    import jax
    import numpyro.distributions as nd
    from scipy import stats

    from bayescale.likelihood import IntegerStudentT

    draws = np.concatenate(
        [np.asarray(IntegerStudentT(4, 0.5, 2.0).sample(jax.random.PRNGKey(k), (200_000,))) for k in range(5)]
    )
    assert stats.kstest(draws, stats.t(df=4, loc=0.5, scale=2.0).cdf).pvalue > 0.01
    x = np.linspace(-5, 5, 7)
    np.testing.assert_allclose(IntegerStudentT(4, 0.5, 2.0).log_prob(x), nd.StudentT(4.0, 0.5, 2.0).log_prob(x))
