"""Plots: the bands drawn are the predictive quantiles, the frontier is optimal_allocation's, and a missing
matplotlib gives a clear ImportError.

The fits here are built from fixed posterior draws (scattered around Besiroglu et al.'s values) rather than
sampled, so the tests check the plotting layer within seconds; notebooks/01_chinchilla.ipynb (run by
tests/test_notebooks.py) draws the same plots from a real NUTS fit.
"""

import importlib
import sys

import matplotlib

matplotlib.use("Agg")

import arviz as az  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

import bayescale as bs  # noqa: E402
from bayescale import plots  # noqa: E402
from bayescale.diagnostics import Diagnostics  # noqa: E402
from conftest import BESIROGLU, simulate_chinchilla  # noqa: E402

CHAINS, DRAWS = 2, 150


def fixed_draws_fit(law_name, table, centre, columns=None, seed=0):
    """A Fit whose posterior is fixed log-normal scatter (0.5%) around `centre`, with a 3% noise scale: no sampler involved."""
    law = bs.get_law(law_name)
    likelihood = bs.Likelihood("normal")
    runs = bs.runs_from_table(table, law, columns=columns)
    rng = np.random.default_rng(seed)
    posterior = {
        name: centre[name] * np.exp(0.005 * rng.standard_normal((CHAINS, DRAWS))) for name in law.param_names
    }
    posterior["sigma"] = 0.03 * np.exp(0.1 * rng.standard_normal((CHAINS, DRAWS)))
    data = az.from_dict(
        {
            "posterior": posterior,
            "posterior_predictive": {"y": runs.y * np.exp(0.01 * rng.standard_normal((CHAINS, DRAWS, len(runs))))},
            "observed_data": {"y": runs.y},
        },
        coords={"run": np.arange(len(runs))},
        dims={"y": ["run"]},
    )
    names = list(posterior)
    diagnostics = Diagnostics(
        table=pd.DataFrame({"rhat": 1.0, "ess_bulk": 300.0, "ess_tail": 300.0}, index=names),
        divergences=0, num_draws=CHAINS * DRAWS, bfmi=np.ones(CHAINS),
    )
    return bs.Fit(law=law, likelihood=likelihood, data=data, runs=runs, diagnostics=diagnostics,
                  settings=bs.SamplerSettings(num_samples=DRAWS, num_chains=CHAINS), seed=seed)


@pytest.fixture(scope="module")
def chinchilla_fit():
    return fixed_draws_fit("chinchilla", simulate_chinchilla(BESIROGLU, num_runs=40, seed=7), BESIROGLU)


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def artist(ax, gid):
    found = [a for a in [*ax.lines, *ax.collections] if a.get_gid() == gid]
    assert len(found) == 1, f"expected one artist with gid {gid!r}, found {len(found)}"
    return found[0]


def band_limits(band, xs):
    """Lower and upper edge of a fill_between polygon at each x."""
    vertices = band.get_paths()[0].vertices
    lower, upper = [], []
    for x in xs:
        ys = vertices[np.isclose(vertices[:, 0], x, rtol=1e-12), 1]
        lower.append(ys.min())
        upper.append(ys.max())
    return np.array(lower), np.array(upper)


@pytest.mark.parametrize("interval, levels", [(0.9, (0.05, 0.5, 0.95)), (0.5, (0.25, 0.5, 0.75))])
def test_fit_bands_are_the_predictive_quantiles(chinchilla_fit, interval, levels):
    ax = plots.plot_fit_bands(chinchilla_fit, groups=3, interval=interval, num_points=25, seed=5)
    grid, runs = plots.band_grid(chinchilla_fit, groups=3, num_points=25)
    assert list(grid.columns[:2]) == ["N", "C"]  # IsoFLOP profiles: loss against N at fixed compute
    expected = bs.predict(chinchilla_fit, grid[["N", "C"]], seed=5).quantiles(levels)
    low, mid, high = (f"q{100 * level:g}" for level in levels)
    assert sorted(grid["group"].unique()) == [0, 1, 2]
    for group in range(3):
        rows = (grid["group"] == group).to_numpy()
        xs = grid.loc[rows, "N"].to_numpy()
        want = expected.loc[rows]
        line = artist(ax, f"median:{group}").get_xydata()
        np.testing.assert_allclose(line[:, 0], xs)
        np.testing.assert_allclose(line[:, 1], want[f"mean_{mid}"])
        for name in ("mean", "new_run"):
            lower, upper = band_limits(artist(ax, f"{name}:{group}"), xs)
            np.testing.assert_allclose(lower, want[f"{name}_{low}"])
            np.testing.assert_allclose(upper, want[f"{name}_{high}"])
        # The new-run band adds observation noise to the law's uncertainty: it is the wider one.
        mean_width = np.subtract(*band_limits(artist(ax, f"mean:{group}"), xs)[::-1])
        new_width = np.subtract(*band_limits(artist(ax, f"new_run:{group}"), xs)[::-1])
        assert np.all(new_width > mean_width)
    # Every fitted run is drawn, none dropped.
    dots = artist(ax, "observed").get_offsets()
    np.testing.assert_allclose(dots[:, 0], chinchilla_fit.runs.x["N"])
    np.testing.assert_allclose(dots[:, 1], chinchilla_fit.runs.y)
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log"


def test_groups_from_bin_edges_hold_their_runs(chinchilla_fit):
    compute = 6 * chinchilla_fit.runs.x["N"] * chinchilla_fit.runs.x["D"]
    edges = np.geomspace(compute.min() * 0.99, compute.max() * 1.01, 5)
    grid, runs = plots.band_grid(chinchilla_fit, groups=edges, num_points=10)
    np.testing.assert_allclose(runs["C"], compute)
    for group, members in runs.groupby("group"):
        assert ((members["C"] >= edges[group]) & (members["C"] <= edges[group + 1])).all()
        curve_compute = grid.loc[grid["group"] == group, "C"].unique()
        np.testing.assert_allclose(curve_compute, np.exp(np.log(members["C"]).mean()))
        curve_n = grid.loc[grid["group"] == group, "N"]
        assert curve_n.min() < members["N"].min() and curve_n.max() > members["N"].max()
    with pytest.raises(ValueError, match="outside the bin edges"):
        plots.band_grid(chinchilla_fit, groups=edges[1:])


def test_one_input_law_gets_one_band():
    rng = np.random.default_rng(3)
    x = np.geomspace(1e3, 1e6, 20)
    truth = {"E": 1.5, "A": 30.0, "alpha": 0.4}
    table = pd.DataFrame({"x": x, "loss": (1.5 + 30.0 * x**-0.4) * np.exp(0.01 * rng.standard_normal(20))})
    fit = fixed_draws_fit("power_law", table, truth)
    ax = plots.plot_fit_bands(fit, num_points=15)
    grid, _ = plots.band_grid(fit, num_points=15)
    assert list(grid.columns) == ["x", "group"]
    want = bs.predict(fit, grid[["x"]]).quantiles()
    np.testing.assert_allclose(artist(ax, "median:0").get_xydata()[:, 1], want["mean_q50"])
    assert not [a for a in ax.lines if a.get_gid() == "median:1"]


def test_frontier_is_optimal_allocations_quantiles(chinchilla_fit):
    ax = plots.plot_optimal_frontier(chinchilla_fit, (1e19, 1e25), num_points=12,
                                     quantities=("N", "D", "tokens_per_param"))
    budgets = np.geomspace(1e19, 1e25, 12)
    want = bs.optimal_allocation(chinchilla_fit, budgets).quantiles()
    for name in ("N", "D", "tokens_per_param"):
        line = artist(ax, f"{name}:median").get_xydata()
        np.testing.assert_allclose(line[:, 0], budgets)
        np.testing.assert_allclose(line[:, 1], want[f"{name}_q50"])
        lower, upper = band_limits(artist(ax, f"{name}:band"), budgets)
        np.testing.assert_allclose(lower, want[f"{name}_q5"])
        np.testing.assert_allclose(upper, want[f"{name}_q95"])
    runs = artist(ax, "N:runs").get_offsets()
    np.testing.assert_allclose(runs[:, 1], chinchilla_fit.runs.x["N"])
    # A list of budgets is used as given.
    ax = plots.plot_optimal_frontier(chinchilla_fit, [1e20, 1e22, 5.76e23], quantities=("N",), show_runs=False)
    np.testing.assert_allclose(artist(ax, "N:median").get_xdata(), [1e20, 1e22, 5.76e23])


def test_bad_arguments_are_named(chinchilla_fit):
    with pytest.raises(ValueError, match="interval must be between 0 and 1"):
        plots.plot_fit_bands(chinchilla_fit, interval=90)
    with pytest.raises(ValueError, match="quantities must be among"):
        plots.plot_optimal_frontier(chinchilla_fit, quantities=("params",))
    with pytest.raises(ValueError, match="compute_range must be positive"):
        plots.plot_optimal_frontier(chinchilla_fit, (0.0, 1e20))
    with pytest.raises(ValueError, match="kind must be one of"):
        plots.plot_diagnostics(chinchilla_fit, "traces")
    with pytest.raises(bs.DataError, match="law inputs"):
        plots.plot_fit_bands(chinchilla_fit, x="steps")


def test_diagnostics_wrapper_returns_arviz_plot_collection(chinchilla_fit):
    collection = plots.plot_diagnostics(chinchilla_fit, "trace")
    assert type(collection).__name__ == "PlotCollection"
    traces = collection.viz["trace"]
    assert set(traces.data_vars) == {"E", "A", "alpha", "B", "beta", "sigma"}
    for chain in range(CHAINS):  # the trace drawn is the fit's own chain
        line = traces["alpha"].values[chain]
        np.testing.assert_allclose(line.get_ydata(), chinchilla_fit.data.posterior["alpha"].values[chain])


def test_missing_matplotlib_gives_install_hint(chinchilla_fit, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    monkeypatch.delitem(sys.modules, "bayescale.plots")
    fresh = importlib.import_module("bayescale.plots")  # importing the module itself needs no matplotlib
    for call in (lambda: fresh.plot_fit_bands(chinchilla_fit), lambda: fresh.plot_optimal_frontier(chinchilla_fit),
                 lambda: fresh.plot_diagnostics(chinchilla_fit)):
        with pytest.raises(ImportError, match=r'pip install "bayescale\[plots\]"'):
            call()


def test_calibration_plot_reads_coverage_from_the_pit():
    from bayescale.plots import empirical_coverage, plot_calibration

    rng = np.random.default_rng(0)
    table = pd.concat([pd.DataFrame({"pit": rng.uniform(size=400), "law": "calibrated"}),
                       pd.DataFrame({"pit": rng.choice([0.01, 0.99], size=400), "law": "too narrow"})])
    # A run is inside the central p interval when its PIT is within p / 2 of 0.5.
    np.testing.assert_allclose(empirical_coverage(np.array([0.5, 0.04, 0.96]), [0.9, 0.95]), [1 / 3, 1.0])
    cover_ax, pit_ax = plot_calibration(table)
    lines = {line.get_gid(): line for line in cover_ax.get_lines() if line.get_gid()}
    assert set(lines) == {"coverage:calibrated", "coverage:too narrow"}
    nominal, calibrated = lines["coverage:calibrated"].get_data()
    assert np.max(np.abs(calibrated - nominal)) < 0.08
    assert lines["coverage:too narrow"].get_data()[1][nominal < 0.9].max() == 0.0
    assert {p.get_gid() for p in pit_ax.patches} == {"pit:calibrated", "pit:too narrow"}
    with pytest.raises(KeyError, match="no column 'variant'"):
        plot_calibration(table, by="variant")
