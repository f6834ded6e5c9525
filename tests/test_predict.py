"""Posterior predictive, compute-optimal allocation, save/load, and user-defined laws."""

import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pandas as pd
import pytest

import bayescale as bs
from conftest import BESIROGLU, chinchilla_loss, simulate_chinchilla


@pytest.fixture(scope="module")
def fit():
    table = simulate_chinchilla(BESIROGLU, num_runs=60, sigma=0.01, seed=11)
    # Independent noise, so that a prediction's mean draws are exactly the law's (the default walk shifts them).
    return bs.fit(table, "chinchilla", discrepancy=None, num_warmup=500, num_samples=500, seed=0)


def test_mean_draws_are_the_law_at_each_posterior_draw(fit):
    prediction = bs.predict(fit, {"N": [1e9, 70e9], "D": [2e10, 1.4e12]})
    d = bs.draws(fit)
    expected = chinchilla_loss({k: v[:, None] for k, v in d.items()}, np.array([1e9, 70e9]), np.array([2e10, 1.4e12]))
    np.testing.assert_allclose(prediction.mean, expected, rtol=1e-10)
    assert prediction.mean.shape == prediction.new_run.shape == (2000, 2)


def test_a_forecast_is_an_arviz_predictions_group_that_arviz_can_mix(fit):
    import arviz as az

    at = {"N": [1e9, 7e10], "D": [2e10, 1.4e12]}
    prediction = bs.predict(fit, at)
    tree = prediction.to_datatree()
    chains = fit.data.posterior.sizes["chain"]
    assert tree.predictions["loss"].dims == ("chain", "draw", "point")
    assert tree.predictions["loss"].shape == (chains, fit.data.posterior.sizes["draw"], 2)
    # chain by chain, the draws are the prediction's own, and the inputs come along
    np.testing.assert_array_equal(np.asarray(tree.predictions["loss"]).reshape(-1, 2), prediction.new_run)
    np.testing.assert_array_equal(np.asarray(tree.predictions["loss_mean"]).reshape(-1, 2), prediction.mean)
    np.testing.assert_array_equal(tree.predictions_constant_data["N"], at["N"])
    # beside the fit's own groups (ArviZ's layout), two forecasts mix by weights
    first, second = (bs.predict(fit, at, seed=seed).to_datatree(fit) for seed in (0, 1))
    assert {"posterior", "observed_data", "predictions", "predictions_constant_data"} <= set(first.children)
    assert "predictions" not in fit.data.children  # the fit's tree is left as it was
    mixed = az.weight_predictions([first, second], weights=[0.5, 0.5], group="predictions")
    assert np.isfinite(np.asarray(mixed["predictions"]["loss"])).all()


def test_new_run_interval_is_wider_than_the_mean_interval(fit):
    q = bs.predict(fit, {"N": 70e9, "D": 1.4e12}).quantiles((0.05, 0.5, 0.95)).iloc[0]
    assert q.new_run_q5 < q.mean_q5 < q.mean_q50 < q.mean_q95 < q.new_run_q95


def test_derived_inputs_give_the_same_prediction(fit):
    by_tokens = bs.predict(fit, {"N": 70e9, "D": 1.4e12}, seed=1)
    by_compute = bs.predict(fit, {"N": 70e9, "C": 6 * 70e9 * 1.4e12}, seed=1)
    np.testing.assert_allclose(by_tokens.mean, by_compute.mean, rtol=1e-12)


def test_prediction_input_is_validated(fit):
    with pytest.raises(bs.DataError, match=r"input N .*non-positive at rows 1"):
        bs.predict(fit, {"N": [1e9, -1.0], "D": [1e10, 1e10]})
    with pytest.raises(bs.DataError, match=r"law inputs \['D'\] are neither columns nor derivable"):
        bs.predict(fit, {"N": 1e9})


@pytest.mark.slow  # slow tier: the default run's 10-minute budget (2026-12-02 clean-clone runs: 15:09 for 208 tests, 11:57 for 202)
def test_a_table_like_the_fitted_one_is_predicted_at_as_is():
    """Columns mapped at fit time (N -> "params") are found again; other columns (names, the output) are
    left alone instead of being read as inputs."""
    table = simulate_chinchilla(BESIROGLU, num_runs=20, sigma=0.01, seed=3).rename(columns={"N": "params", "D": "toks"})
    table["name"] = [f"run-{i}" for i in range(len(table))]
    fit = bs.fit(table, "chinchilla", columns={"N": "params", "D": "toks"}, num_warmup=200, num_samples=200,
                 num_chains=2, seed=0, misfit_checks=False)
    again = bs.predict(fit, table, seed=1)
    direct = bs.predict(fit, {"N": table.params.values, "D": table.toks.values}, seed=1)
    np.testing.assert_allclose(again.mean, direct.mean, rtol=1e-12)
    with pytest.raises(bs.DataError, match=r"law inputs \['D'\] are neither columns nor derivable"):
        bs.predict(fit, table.drop(columns=["toks"]))


@pytest.mark.slow  # five fits (~30 s); the default suite checks calibration by SBC and by a backtest
def test_new_run_intervals_cover_held_out_runs_at_their_nominal_rate():
    """Coverage given one training set varies with how well it pins sigma (0.82-0.96 seen for single sets of
    60 runs), so average over five training sets; the sd of that average is about 0.02."""
    held_out = simulate_chinchilla(BESIROGLU, num_runs=300, sigma=0.01, seed=99)
    rates = []
    for seed in range(20, 25):
        training = simulate_chinchilla(BESIROGLU, num_runs=60, sigma=0.01, seed=seed)
        fit = bs.fit(training, "chinchilla", num_warmup=500, num_samples=500, seed=0)
        q = bs.predict(fit, held_out[["N", "D"]]).quantiles((0.05, 0.95))
        rates.append(np.mean((held_out.loss.values >= q.new_run_q5) & (held_out.loss.values <= q.new_run_q95)))
    print(f"90% new-run interval coverage of 300 held-out runs, per training set: {np.round(rates, 3)}")
    assert 0.84 <= np.mean(rates) <= 0.96


def test_optimal_allocation_matches_chinchillas_closed_form(fit):
    budgets = np.array([1e21, 5.76e23, 1e26])
    allocation = bs.optimal_allocation(fit, budgets)
    d = bs.draws(fit)
    a, b = d["alpha"][:, None], d["beta"][:, None]
    G = (a * d["A"][:, None] / (b * d["B"][:, None])) ** (1 / (a + b))
    n_closed = G * (budgets[None, :] / 6) ** (b / (a + b))
    np.testing.assert_allclose(allocation.N, n_closed, rtol=1e-6)
    np.testing.assert_allclose(allocation.D * allocation.N * 6, np.broadcast_to(budgets, allocation.N.shape), rtol=1e-10)
    assert (allocation.at_bound == 0).all()
    table = allocation.quantiles()
    assert list(table.compute) == list(budgets)
    assert (table.N_q5 < table.N_q50).all() and (table.N_q50 < table.N_q95).all()


@pytest.mark.slow  # a whole fit (~13 s) for one error message
def test_optimal_allocation_needs_a_law_of_parameters_and_tokens():
    table = pd.DataFrame({"x": np.geomspace(1e3, 1e6, 12)})
    table["loss"] = (2 + 30 * table.x**-0.3) * np.exp(0.01 * np.random.default_rng(0).standard_normal(12))
    fit = bs.fit(table, "power_law", num_warmup=500, num_samples=500, seed=0)
    with pytest.raises(ValueError, match="not a law of parameters and tokens"):
        bs.optimal_allocation(fit, 1e21)


def test_save_and_load_round_trip(fit, tmp_path):
    path = fit.save(tmp_path / "fit.nc")
    loaded = bs.load(path)
    pd.testing.assert_frame_equal(loaded.summary(), fit.summary())
    np.testing.assert_allclose(bs.predict(loaded, {"N": 1e10, "D": 2e11}).mean, bs.predict(fit, {"N": 1e10, "D": 2e11}).mean)
    assert loaded.settings == fit.settings and loaded.seed == fit.seed and loaded.map == fit.map
    assert not (tmp_path / "fit.nc.tmp").exists()


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no fit file"):
        bs.load(tmp_path / "nothing.nc")


# ---- user-defined laws ----

def _data_law():
    return bs.Law(
        name="test_data_limited",
        inputs=("D",),
        params={
            "E": bs.Param(lambda s: dist.Uniform(0.0, s["y_min"]), "irreducible loss"),
            "B": bs.Param(dist.LogNormal(jnp.log(1000.0), 3.0), "coefficient", pivot=("D", "beta")),
            "beta": bs.Param(dist.LogNormal(jnp.log(0.3), 0.5), "exponent"),
        },
        mean=lambda p, x: p["E"] + p["B"] * x["D"] ** -p["beta"],
    )


def test_a_user_law_in_a_few_lines_fits_saves_and_reloads(tmp_path):
    rng = np.random.default_rng(0)
    D = np.geomspace(1e8, 1e11, 25)
    table = pd.DataFrame({"tokens": D, "loss": (2.0 + 900 * D**-0.3) * np.exp(0.005 * rng.standard_normal(25))})
    law = _data_law()
    fit = bs.fit(table, law, columns={"D": "tokens"}, num_warmup=500, num_samples=500, num_chains=2, seed=0)
    s = fit.summary(quantiles=(0.005, 0.995))
    assert s.loc["beta", "q0.5"] < 0.3 < s.loc["beta", "q99.5"]
    assert s.loc["B", "q0.5"] < 900 < s.loc["B", "q99.5"]
    fit.save(tmp_path / "user.nc")
    with pytest.raises(KeyError, match="not in the catalogue; pass load"):
        bs.load(tmp_path / "user.nc")
    with pytest.raises(ValueError, match="the fit was made with law 'test_data_limited' of inputs \\['D'\\]"):
        bs.load(tmp_path / "user.nc", law=bs.get_law("chinchilla"))
    assert bs.load(tmp_path / "user.nc", law=law).summary().loc["beta", "q50"] == pytest.approx(fit.summary().loc["beta", "q50"])
    # Same name, inputs and parameters, another formula: the posterior would be read against the wrong law.
    import dataclasses

    other = dataclasses.replace(law, mean=lambda p, x: p["E"] + p["B"] * (2 * x["D"]) ** -p["beta"])
    with pytest.raises(ValueError, match="user.nc: the law 'test_data_limited' given now is not the one the fit was "
                                         "made with: its mean function gives"):
        bs.load(tmp_path / "user.nc", law=other)
    with pytest.warns(UserWarning, match="allow_changed_law=True"):
        bs.load(tmp_path / "user.nc", law=other, allow_changed_law=True)
    # A changed derivation of the law's own is caught too.
    from bayescale import persistence

    derived = dataclasses.replace(law, derivations=(bs.Derivation("D", ("T",), lambda T: 2 * T),))
    declaration = persistence.law_declaration(derived, persistence.law_fingerprint(derived, {"E": 1.0, "B": 2.0, "beta": 0.3}, {"D": [1e9]}))
    assert persistence.saved_law("f.nc", declaration, derived) is derived
    with pytest.raises(ValueError, match="f.nc: .* its derivations differ from the saved law's \\(at D<-T@0.37"):
        persistence.saved_law("f.nc", declaration, dataclasses.replace(law, derivations=(bs.Derivation("D", ("T",), lambda T: 3 * T),)))


@pytest.mark.slow  # slow tier: the default run's 10-minute budget (2026-12-02 clean-clone runs: 15:09 for 208 tests, 11:57 for 202)
def test_a_raw_numpyro_model_is_accepted():
    def model(x, stats, y=None, se=None, mask=None):
        E = numpyro.sample("E", dist.Uniform(0.0, stats["y_min"]))
        slope = numpyro.sample("slope", dist.Normal(0.0, 1.0))
        sigma = numpyro.sample("sigma", dist.HalfNormal(0.1))
        mean = numpyro.deterministic("mean", E + jnp.exp(slope * jnp.log(x["x"])))
        numpyro.sample("y", dist.LogNormal(jnp.log(mean), sigma), obs=y)

    law = bs.Law(name="raw", inputs=("x",), numpyro_model=model)
    x = np.geomspace(1, 100, 20)
    table = pd.DataFrame({"x": x, "loss": (1.0 + x**-0.5) * np.exp(0.005 * np.random.default_rng(1).standard_normal(20))})
    fit = bs.fit(table, law, num_warmup=500, num_samples=500, seed=0)
    assert fit.converged, fit.diagnostics.problems
    assert abs(fit.summary().loc["slope", "q50"] + 0.5) < 0.05
    prediction = bs.predict(fit, {"x": [1000.0]})
    assert abs(np.median(prediction.mean) - (1 + 1000**-0.5)) < 0.01


def test_law_declaration_errors():
    with pytest.raises(ValueError, match="give `params` and `mean`"):
        bs.Law(name="empty", inputs=("x",))
    with pytest.raises(ValueError, match="pivot of 'A' must name an input"):
        bs.Law(name="bad", inputs=("x",), params={"A": bs.Param(dist.LogNormal(0, 1), pivot=("N", "alpha"))},
               mean=lambda p, x: p["A"])


def test_summary_has_monte_carlo_errors_and_the_draws_come_as_a_table(fit):
    s = fit.summary()
    assert {"mcse_mean", "mcse_sd"} <= set(s.columns)
    # The mean's MCSE is the sd over the square root of the (bulk) effective sample size, up to estimator noise.
    ratio = s["mcse_mean"] / (s["sd"] / np.sqrt(s["ess_bulk"]))
    assert ((ratio > 0.7) & (ratio < 1.4)).all(), ratio
    frame = fit.to_dataframe()
    chains, draws = fit.data.posterior.sizes["chain"], fit.data.posterior.sizes["draw"]
    assert len(frame) == chains * draws and list(frame.columns[:2]) == ["chain", "draw"]
    assert set(frame.columns[2:]) == set(s.index) and not any(c.startswith("_") for c in frame.columns)
    np.testing.assert_array_equal(frame["alpha"].to_numpy(), bs.draws(fit)["alpha"])
    assert frame.groupby("chain").size().tolist() == [draws] * chains


def test_runs_are_labelled_as_in_the_table_and_the_labels_survive_saving(fit, tmp_path):
    table = simulate_chinchilla(BESIROGLU, num_runs=60, sigma=0.01, seed=12)
    table.index = [f"run-{i}" for i in range(60)]
    labelled = bs.fit(table, "chinchilla", discrepancy=None, num_warmup=500, num_samples=500, seed=0)
    for group in ("observed_data", "log_likelihood", "posterior_predictive"):
        assert list(labelled.data[group].coords["run"].values[:2]) == ["run-0", "run-1"]
    assert float(labelled.data.observed_data["loss"].sel(run="run-5")) == pytest.approx(table.loc["run-5", "loss"])
    again = bs.load(labelled.save(tmp_path / "labelled.nc"))
    assert list(again.data.observed_data.coords["run"].values[:2]) == ["run-0", "run-1"]
    # The default index stays 0..n-1; repeated labels fall back to positions.
    assert list(fit.data.observed_data.coords["run"].values[:3]) == [0, 1, 2]
    from bayescale.fit import run_coordinate

    assert list(run_coordinate(np.array(["a", "a", "b"]))) == [0, 1, 2]


def test_log_prior_group_feeds_arviz_prior_sensitivity(fit):
    import arviz as az

    law_params = {"E", "alpha", "beta", "sigma"}
    assert law_params <= set(fit.data.log_prior.data_vars)
    # The log prior of a draw is the prior's density there: alpha's term is its LogNormal log density.
    prior = fit.law.params["alpha"].prior
    alpha = np.asarray(fit.data.posterior["alpha"])
    np.testing.assert_allclose(np.asarray(fit.data.log_prior["alpha"]), np.asarray(prior.log_prob(alpha)), rtol=1e-10)
    sensitivity = az.psense_summary(fit.data, var_names=["E", "alpha", "beta"])
    assert (sensitivity["diagnosis"] == "✓").all(), sensitivity


@pytest.mark.slow  # a second compile (~15 s): the conflicting prior changes the model
def test_prior_sensitivity_flags_a_prior_that_conflicts_with_the_data():
    import arviz as az
    import numpyro.distributions as dist

    table = simulate_chinchilla(BESIROGLU, num_runs=60, sigma=0.01, seed=11)
    tight = bs.fit(table, "chinchilla", discrepancy=None, num_warmup=500, num_samples=500, seed=0,
                   priors={"alpha": dist.LogNormal(jnp.log(0.2), 0.03)})        # the data say 0.35
    sensitivity = az.psense_summary(tight.data, var_names=["alpha", "beta"])
    assert sensitivity.loc["alpha", "diagnosis"] == "potential prior-data conflict"
    assert sensitivity.loc["beta", "diagnosis"] == "✓"


def test_a_fit_works_when_arviz_was_imported_before_numpyro_and_bayescale():
    # ArviZ registers numpyro as a lazy module; a numpyro submodule imported before it loads lost its binding
    # and numpyro.factor (which the walk and pivots use) crashed inside NumPyro.
    import subprocess
    import sys

    code = ("import arviz, numpyro.distributions, numpyro\n"
            "import bayescale.law\n"
            "from numpyro.handlers import seed, trace\n"
            "tr = trace(seed(lambda: numpyro.factor('f', 1.0), 0)).get_trace()\n"
            "print(hasattr(numpyro.distributions, 'distribution'), float(tr['f']['fn'].log_prob(None)))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["True", "1.0"]
