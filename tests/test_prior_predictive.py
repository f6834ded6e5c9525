"""Prior predictive check: draws, quantile table, verdict (too tight / too loose), CLI verb, plot."""

import json

import numpy as np
import numpyro.distributions as dist
import pandas as pd
import pytest

from bayescale.cli import main
from bayescale.law import Law, Param
from bayescale.prior_predictive import prior_predictive
from bayescale.runs import DataError
from conftest import BESIROGLU, simulate_chinchilla

COLUMNS = {"N": "Model Size", "C": "Training FLOP"}

# Priors centred on Besiroglu et al.'s fit, moderately wide: a prior that knows the answer roughly.
INFORMED = {
    "E": dist.LogNormal(np.log(BESIROGLU["E"]), 0.1),
    "A": dist.LogNormal(np.log(BESIROGLU["A"]), 0.3),
    "B": dist.LogNormal(np.log(BESIROGLU["B"]), 0.3),
    "alpha": dist.LogNormal(np.log(BESIROGLU["alpha"]), 0.05),
    "beta": dist.LogNormal(np.log(BESIROGLU["beta"]), 0.05),
    "sigma": dist.HalfNormal(0.05),
}


@pytest.fixture(scope="module")
def simulated():
    return simulate_chinchilla(num_runs=40, sigma=0.01, seed=3)


@pytest.fixture(scope="module")
def default_check(simulated):
    return prior_predictive("chinchilla", simulated, num_draws=400, seed=0)


def test_draws_have_the_runs_shape_and_respect_the_prior(default_check, simulated):
    assert default_check.mean.shape == (400, len(simulated)) == default_check.new_run.shape
    # E ~ Uniform(0, min loss): every prior draw of E lies below the smallest observed loss.
    assert default_check.params["E"].max() < simulated["loss"].min()
    assert default_check.params["E"].min() > 0
    # The law's mean is at least E, run by run and draw by draw.
    assert np.all(default_check.mean >= default_check.params["E"][:, None] - 1e-12)


def test_same_seed_same_draws(simulated, default_check):
    again = prior_predictive("chinchilla", simulated, num_draws=400, seed=0)
    np.testing.assert_array_equal(again.new_run, default_check.new_run)
    other = prior_predictive("chinchilla", simulated, num_draws=400, seed=1)
    assert not np.allclose(other.new_run, default_check.new_run)


def test_quantile_table(default_check, simulated):
    table = default_check.quantiles()
    assert len(table) == len(simulated)
    assert {"N", "D", "loss", "mean_q50", "new_run_q0.5", "new_run_q99.5", "nonfinite"} <= set(table.columns)
    assert (table["new_run_q0.5"] <= table["new_run_q50"]).all() and (table["new_run_q50"] <= table["new_run_q99.5"]).all()


def test_catalogue_default_priors_are_flagged_loose(default_check):
    verdict = default_check.verdict()
    assert not verdict["too_tight"] and verdict["too_loose"]
    assert verdict["band_to_range"] > 10 and "too loose" in verdict["message"]


def test_informed_prior_is_plausible(simulated):
    verdict = prior_predictive("chinchilla", simulated, priors=INFORMED, num_draws=400).verdict()
    assert not verdict["too_tight"] and not verdict["too_loose"], verdict
    assert verdict["band_to_range"] < 10


def test_prior_that_excludes_the_data_is_flagged_tight(simulated):
    # E near 1 with tiny reducible terms: every simulated loss (~2-3) lies above the band.
    tight = {"E": dist.Uniform(0.9, 1.0), "A": dist.LogNormal(0.0, 0.1), "B": dist.LogNormal(0.0, 0.1),
             "sigma": dist.HalfNormal(0.01)}
    verdict = prior_predictive("chinchilla", simulated, priors=tight, num_draws=200).verdict()
    assert verdict["too_tight"]
    assert len(verdict["outside"]) == len(simulated)
    assert "too tight" in verdict["message"]


def test_user_law_and_errors(simulated):
    law = Law("d_only", ("D",), {"E": Param(dist.Uniform(0.0, 2.0)), "B": Param(dist.LogNormal(7.0, 1.0)),
                                 "beta": Param(dist.LogNormal(np.log(0.3), 0.2))},
              mean=lambda p, x: p["E"] + p["B"] * x["D"] ** -p["beta"])
    check = prior_predictive(law, simulated, num_draws=100)
    assert check.mean.shape == (100, len(simulated))
    with pytest.raises(KeyError, match="unknown parameters"):
        prior_predictive("chinchilla", simulated, priors={"gamma": dist.Normal(0, 1)})
    with pytest.raises(DataError, match="loss"):
        prior_predictive("chinchilla", simulated.drop(columns="loss"))


def test_cli_prior_check(tmp_path, simulated, capsys):
    path = tmp_path / "runs.csv"
    simulated.to_csv(path, index=False)
    assert main(["prior-check", str(path), "--law", "chinchilla", "--draws", "200", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["law"] == "chinchilla" and out["verdict"]["too_loose"] is True
    assert len(out["points"]) == len(simulated)
    assert main(["prior-check", str(path), "--law", "chinchilla", "--column", "N=missing"]) == 2


def test_plot_prior_predictive(default_check):
    """A law of several inputs: no line joins runs that differ in other inputs (the saw-tooth of joining an
    IsoFLOP ladder in N order); each run's band is a vertical bar from the verdict's quantiles."""
    pytest.importorskip("matplotlib")
    from bayescale.plots import plot_prior_predictive

    ax = plot_prior_predictive(default_check, num_curves=10)
    assert not ax.get_lines()
    assert [c.get_gid() for c in ax.collections].count("prior:curve") == 10
    assert any(c.get_gid() == "observed" for c in ax.collections)
    (bars,) = [c for c in ax.collections if c.get_gid() == "prior:band"]
    table = default_check.quantiles()
    order = np.argsort(default_check.runs.x["N"])
    segments = np.array([s[:, 1] for s in bars.get_segments()])
    np.testing.assert_allclose(segments[:, 0], table["new_run_q0.5"].to_numpy()[order], rtol=1e-9)
    np.testing.assert_allclose(segments[:, 1], table["new_run_q99.5"].to_numpy()[order], rtol=1e-9)
    assert ax.get_xlabel() == "N (parameters)"


def test_plot_prior_predictive_of_a_one_input_law_draws_curves():
    pytest.importorskip("matplotlib")
    from bayescale.plots import plot_prior_predictive

    x = np.geomspace(1e6, 1e9, 12)
    table = pd.DataFrame({"x": x, "loss": 2.0 + 30.0 * x**-0.3})
    check = prior_predictive("power_law", table, num_draws=50, seed=0)
    ax = plot_prior_predictive(check, num_curves=8)
    curves = [line for line in ax.get_lines() if line.get_gid() == "prior:curve"]
    assert len(curves) == 8 and np.all(np.diff(curves[0].get_xdata()) > 0)
