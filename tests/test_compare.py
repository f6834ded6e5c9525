"""compare(), model averaging and `bayescale compare` on simulated Chinchilla-law data.

Every test here is in the slow tier (`pytest -m slow`): the fixture's fits and evidence took 73 s of the
default run's 10-minute budget (2026-12-02). One data set from the Chinchilla law, fitted by the Chinchilla
law and two rivals (Kaplan, a power law in N alone); the comparison must prefer the true family by evidence and
LOO, give coherent probabilities and weights, and the averaged prediction must be the weighted mixture.
Slow tier: over 10 seeds, against four rivals (the three and a compute-only power law): the issue asks for
>= 9 of 10 picks of the true family.
"""

import dataclasses
import json
import warnings

import numpy as np
import pandas as pd
import pytest

import bayescale as bs
from bayescale.averaging import average_predict, mixture_counts
from bayescale.backtest import ranking_values
from bayescale.compare import compare, holdout_mask, waic
from conftest import simulate_chinchilla

pytestmark = pytest.mark.slow

FAMILIES = {  # name -> (law, columns)
    "chinchilla": ("chinchilla", {}),
    "kaplan": ("kaplan", {}),
    "params_only": ("power_law", {"x": "N"}),
    "tokens_only": ("power_law", {"x": "D"}),
}


# The selection check pits the true family against four rivals (the issue asks for at least four).
SELECTION_FAMILIES = {**FAMILIES, "compute_only": ("compute_power_law", {})}


def fit_families(table, seed=0, draws=300, warmup=300, families=FAMILIES, discrepancy="default"):
    fits = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", bs.ConvergenceWarning)
        for name, (law, columns) in families.items():
            fits[name] = bs.fit(table, law, columns=columns, num_warmup=warmup, num_samples=draws, seed=seed,
                                discrepancy=discrepancy)
    return fits


@pytest.fixture(scope="module")
def table():
    return simulate_chinchilla(num_runs=50, sigma=0.01, seed=11)


@pytest.fixture(scope="module")
def fits(table):
    # Independent noise: what is tested here is the comparison's arithmetic and choice, and the walk's
    # discrepancy (up to 4x the sampling time, measured 109 s for this fixture on a loaded machine) is
    # checked in tests/test_discrepancy.py; the slow tier's 10-seed selection keeps the default likelihood.
    return fit_families(table, discrepancy=None, families={k: FAMILIES[k] for k in ("chinchilla", "kaplan", "params_only")})


@pytest.fixture(scope="module")
def comparison(fits):
    return compare(fits, extrapolation=False)


def test_compare_prefers_the_true_family(comparison):
    assert comparison.index[0] == "chinchilla"
    assert comparison.loc["chinchilla", "log_bf_vs_best"] == 0
    assert (comparison.drop(index="chinchilla")["log_bf_vs_best"] < -5).all()
    assert comparison["elpd_loo"].idxmax() == "chinchilla"
    assert comparison["elpd_waic"].idxmax() == "chinchilla"
    assert comparison.loc["chinchilla", "posterior_prob"] > 0.99
    assert comparison["stacking_weight"].idxmax() == "chinchilla"
    assert comparison["posterior_prob"].sum() == pytest.approx(1.0)
    assert comparison["stacking_weight"].sum() == pytest.approx(1.0, abs=1e-2)
    assert (comparison["log_z_error"] < 0.5).all()
    # Widening every prior lowers the evidence of a well-constrained law by about log 2 per parameter.
    drop = comparison.loc["chinchilla", "log_z"] - comparison.loc["chinchilla", "log_z_wide_priors"]
    assert 0.5 * 2 * np.log(2) < drop < 6 * np.log(2) + 1
    assert set(comparison.attrs["notes"]) <= set(comparison.columns)
    assert "log_z" in comparison.attrs["notes"]


def test_prior_weights_shift_posterior_probabilities(fits, comparison):
    # With prior weight only on the rivals, the probabilities renormalise over them by their evidence.
    weighted = compare({k: fits[k] for k in ("kaplan", "params_only")}, prior_weights={"kaplan": 1.0, "params_only": 0.0},
                       widen_factor=None, cross_check=False)
    assert weighted.loc["kaplan", "posterior_prob"] == pytest.approx(1.0)
    assert weighted.loc["params_only", "posterior_prob"] == 0.0
    with pytest.raises(KeyError, match="unknown fits"):
        compare(fits, prior_weights={"nonesuch": 1.0})
    with pytest.raises(ValueError, match="non-negative"):
        compare(fits, prior_weights={"kaplan": -1.0})


def test_compare_refuses_fits_to_different_runs(fits):
    runs = fits["kaplan"].runs
    other = dataclasses.replace(fits["kaplan"], runs=dataclasses.replace(runs, y=runs.y * 1.01))
    with pytest.raises(ValueError, match="different runs"):
        compare({"chinchilla": fits["chinchilla"], "other": other})


def test_waic_matches_loo_when_the_posterior_is_well_determined(fits):
    table = waic(fits["chinchilla"])
    import arviz as az

    loo = az.loo(fits["chinchilla"].data)
    assert abs(table["elpd_waic"] - loo.elpd) < 2.0


def test_holdout_is_the_largest_compute(fits):
    runs = fits["chinchilla"].runs
    compute = ranking_values(runs, fits["chinchilla"].law)
    np.testing.assert_allclose(compute, 6 * runs.x["N"] * runs.x["D"])
    held = holdout_mask(fits, 0.2)
    assert held.sum() == 10 and compute[held].min() >= compute[~held].max()
    # Any input ranks the runs, also one a law reads under another name (N here: params_only's input x is N).
    by_n = holdout_mask(fits, 0.2, by="N")
    assert runs.x["N"][by_n].min() >= runs.x["N"][~by_n].max()
    with pytest.raises(ValueError, match="hold out fewer"):
        holdout_mask(fits, 49)


def test_averaged_prediction_is_the_weighted_mixture(fits, comparison):
    at = {"N": 70e9, "D": 1.4e12}
    pair = {k: fits[k] for k in ("chinchilla", "kaplan")}
    averaged = average_predict(pair, at, weights={"chinchilla": 0.75, "kaplan": 0.25}, num_draws=2000)
    assert isinstance(averaged, bs.Prediction) and averaged.mean.shape == (2000, 1)
    single = {k: bs.predict(f, at).mean[:, 0] for k, f in pair.items()}
    # Each mixture draw comes from one family; the share of each matches its weight.
    from_chinchilla = np.isin(averaged.mean[:, 0], single["chinchilla"])
    assert from_chinchilla.mean() == pytest.approx(0.75, abs=1e-3)
    assert np.isin(averaged.mean[~from_chinchilla, 0], single["kaplan"]).all()
    assert "mean_q50" in averaged.quantiles().columns
    # By evidence, the true family carries (almost) all weight: the average is its prediction.
    by_evidence = average_predict(fits, at, weights="evidence", comparison=comparison)
    assert np.median(by_evidence.mean) == pytest.approx(np.median(single["chinchilla"]), rel=1e-3)
    with pytest.raises(ValueError, match="non-negative"):
        average_predict(pair, at, weights={"chinchilla": 0.0})
    assert list(mixture_counts(np.array([0.5, 0.25, 0.25]), 7)) in ([3, 2, 2], [4, 2, 1], [4, 1, 2])


def test_cli_compare_json(fits, tmp_path, capsys):
    from bayescale.cli import main

    paths = []
    for name in ("chinchilla", "kaplan"):
        paths.append(str(bs.save(fits[name], tmp_path / f"{name}.fit")))
    assert main(["compare", *paths, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    rows = pd.DataFrame(result["table"]).T
    assert rows.index[0].startswith("chinchilla") and "log_z" in rows.columns
    assert "notes" in result and "warnings" in result


@pytest.mark.slow
def test_true_family_picked_in_at_least_9_of_10_seeds():
    picked = []
    for seed in range(10):
        # Two sizes (40 and 80 runs) so each law compiles twice, not ten times.
        table = simulate_chinchilla(num_runs=40 if seed % 2 else 80, sigma=0.015, seed=100 + seed)
        fits = fit_families(table, seed=seed, draws=500, warmup=500, families=SELECTION_FAMILIES)
        result = compare(fits, widen_factor=None)
        picked.append(result.index[0])
        print(f"seed {seed}: runs {len(table)}, best {result.index[0]}, "
              f"log BF of runner-up {result['log_bf_vs_best'].iloc[1]:.1f}")
    assert sum(p == "chinchilla" for p in picked) >= 9, picked


@pytest.mark.slow  # two refits on 40 of the 50 runs: new shapes, new compilations
def test_extrapolation_score_refits_without_the_largest_runs(table):
    two = fit_families(table, families={k: FAMILIES[k] for k in ("chinchilla", "params_only")})
    result = compare(two, extrapolation=True, holdout=10, widen_factor=None)
    for column in ("extrap_elpd", "extrap_rel_error", "extrap_coverage90", "extrap_runs"):
        assert np.isfinite(result[column]).all(), column
    assert (result["extrap_runs"] == 10).all()
    # The true law extrapolates to the 10 largest-compute runs within ~1%, and far better than N alone.
    assert result.loc["chinchilla", "extrap_rel_error"] < 0.01
    assert result.loc["chinchilla", "extrap_elpd"] > result.loc["params_only", "extrap_elpd"] + 10
