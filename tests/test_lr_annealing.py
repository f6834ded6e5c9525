"""Learning-rate annealing law (Tissue et al. 2024) with AR(1) residuals within each training curve."""

import numpy as np
import pandas as pd
import pytest

import bayescale as bs
from bayescale.models.lr_annealing import schedule_areas, schedule_areas_of_run
from bayescale.runs import DataError

TRUTH = {"L0": 2.0, "A": 0.8, "alpha": 0.5, "C": 0.15}
PEAK, STEPS, WARMUP = 1e-3, 3000, 100


def schedule(kind: str, steps: np.ndarray) -> np.ndarray:
    warm = np.minimum(steps / WARMUP, 1.0) * PEAK
    progress = np.clip((steps - WARMUP) / (STEPS - WARMUP), 0, 1)
    if kind == "constant":
        return warm
    if kind == "cosine":
        return np.where(steps < WARMUP, warm, 1e-4 + 0.5 * (PEAK - 1e-4) * (1 + np.cos(np.pi * progress)))
    if kind == "linear":
        return np.where(steps < WARMUP, warm, PEAK - (PEAK - 1e-4) * progress)
    if kind == "wsd":  # warmup-stable-decay: the last 20% decays linearly
        decay = np.clip((steps - 0.8 * STEPS) / (0.2 * STEPS), 0, 1)
        return np.where(steps < WARMUP, warm, PEAK - (PEAK - 1e-5) * decay)
    raise ValueError(kind)


KINDS = ("constant", "cosine", "linear", "wsd")


def schedules(kinds=KINDS) -> pd.DataFrame:
    every = np.arange(1, STEPS + 1)
    return pd.concat([pd.DataFrame({"run": k, "step": every, "lr": schedule(k, every.astype(float))}) for k in kinds],
                     ignore_index=True)


def simulate_curves(rho=0.7, sigma=0.01, seed=0, kinds=KINDS) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    every = np.arange(1, STEPS + 1)
    logged = np.arange(200, STEPS + 1, 60)
    frames = []
    for kind in kinds:
        s1, s2 = schedule_areas_of_run(every, schedule(kind, every))
        s1, s2 = s1[logged - 1], s2[logged - 1]
        mean = TRUTH["L0"] + TRUTH["A"] * s1 ** -TRUTH["alpha"] - TRUTH["C"] * s2
        residual = np.empty(len(logged))
        residual[0] = sigma * rng.standard_normal()
        for i in range(1, len(logged)):
            residual[i] = rho * residual[i - 1] + sigma * np.sqrt(1 - rho**2) * rng.standard_normal()
        frames.append(pd.DataFrame({"run": kind, "step": logged, "lr": schedule(kind, logged.astype(float)),
                                    "loss": mean * np.exp(residual)}))
    return pd.concat(frames, ignore_index=True)


def test_schedule_areas_follow_the_definitions():
    steps = np.arange(1, 501)
    eta = np.full(500, 2e-3)
    s1, s2 = schedule_areas_of_run(steps, eta)
    np.testing.assert_allclose(s1, 2e-3 * steps)
    np.testing.assert_array_equal(s2, 0.0)  # constant rate: no annealing
    # One drop of 1e-3 at step 101: m decays as 0.999^k, S2 is its running sum.
    eta = np.where(steps <= 100, 2e-3, 1e-3)
    _, s2 = schedule_areas_of_run(steps, eta)
    k = np.arange(0, 400)
    np.testing.assert_allclose(s2[100:], 1e-3 * np.cumsum(0.999**k), rtol=1e-12)
    assert (s2[:100] == 0).all()
    # Logged every 10 steps of a linear schedule: interpolation is exact.
    linear = np.linspace(2e-3, 1e-4, 500)
    full1, full2 = schedule_areas_of_run(steps, linear)
    part1, part2 = schedule_areas_of_run(steps[::10], linear[::10])
    np.testing.assert_allclose(part1, full1[::10], rtol=1e-12)
    np.testing.assert_allclose(part2, full2[::10], rtol=1e-12)


def test_table_errors_name_the_column():
    table = simulate_curves()
    with pytest.raises(DataError, match="'learning_rate'"):
        schedule_areas(table, lr="learning_rate")
    bad = table.copy()
    bad.loc[5, "lr"] = -1.0
    with pytest.raises(DataError, match="'lr'"):
        schedule_areas(bad)
    with pytest.warns(UserWarning, match="warm-up"):  # logged from step 200: the warm-up is unknown
        schedule_areas(table)
    with pytest.raises(DataError, match="'wsd'"):
        schedule_areas(table, schedule=schedules(KINDS[:3]))
    areas = schedule_areas(table, schedule=schedules())
    with pytest.raises(DataError, match="sequence"):
        bs.fit(areas, "lr_annealing", likelihood="ar1")
    twice = pd.concat([areas, areas.iloc[[3]]], ignore_index=True)
    with pytest.raises(DataError, match="steps repeat"):
        bs.fit(twice, "lr_annealing", likelihood="ar1", sequence=("run", "step"))


def test_schedule_areas_do_not_depend_on_the_tables_index():
    """Per-run frames joined by pd.concat keep their own 0..n-1 index; the areas must not mix runs up."""
    table, schedule = simulate_curves(), schedules()
    expected = schedule_areas(table, schedule=schedule)
    repeated = pd.concat([frame.reset_index(drop=True) for _, frame in table.groupby("run", sort=False)])
    assert repeated.index.has_duplicates
    got = schedule_areas(repeated, schedule=schedule)
    np.testing.assert_array_equal(got[["S1", "S2"]].to_numpy(), expected[["S1", "S2"]].to_numpy())
    assert (got.index == repeated.index).all()


@pytest.fixture(scope="module")
def annealing_fit():
    table = schedule_areas(simulate_curves(), schedule=schedules())
    return bs.fit(table, "lr_annealing", likelihood="ar1", sequence=("run", "step"), seed=0)


def test_ar1_fit_recovers_the_law_and_the_correlation(annealing_fit):
    fit = annealing_fit
    assert fit.converged, fit.diagnostics.problems
    assert fit.diagnostics.divergences == 0
    table = fit.summary(quantiles=(0.005, 0.5, 0.995))
    for name, value in {**TRUTH, "rho": 0.7, "sigma": 0.01}.items():
        assert table.loc[name, "q0.5"] <= value <= table.loc[name, "q99.5"], (name, value, table.loc[name].to_dict())
    assert table.loc["rho", "q0.5"] > 0.4  # the correlation is found, not assumed away


def test_ar1_posterior_predictive_replicates_curves(annealing_fit):
    ppc = np.asarray(annealing_fit.data.posterior_predictive["loss"])
    observed = np.asarray(annealing_fit.data.observed_data["loss"])
    assert ppc.shape[-1] == observed.shape[0] and np.isfinite(ppc).all()
    # Replicated residuals are correlated along a run, as the data are.
    residual = np.log(ppc[0, :200]) - np.log(np.median(ppc[0], axis=0))
    prev = annealing_fit.runs.prev
    has = prev >= 0
    corr = np.mean([np.corrcoef(r[has], r[prev[has]])[0, 1] for r in residual])
    assert corr > 0.3


@pytest.mark.slow
def test_iid_likelihood_is_overconfident_on_correlated_curves():
    # The point of ar1: with correlated residuals, an iid Normal fit's intervals are too narrow.
    table = schedule_areas(simulate_curves(rho=0.9, seed=3), schedule=schedules())
    iid = bs.fit(table, "lr_annealing", sequence=("run", "step"), discrepancy=None, seed=0)  # sequence: runs share early points
    ar1 = bs.fit(table, "lr_annealing", likelihood="ar1", sequence=("run", "step"), seed=0)
    width = lambda f: np.diff(np.quantile(bs.draws(f)["alpha"], [0.05, 0.95]))[0]  # noqa: E731
    assert ar1.converged
    lo, hi = np.quantile(bs.draws(ar1)["alpha"], [0.05, 0.95])
    assert lo <= TRUTH["alpha"] <= hi
    assert width(ar1) > 1.5 * width(iid), (width(ar1), width(iid))  # measured 0.083 against 0.047
