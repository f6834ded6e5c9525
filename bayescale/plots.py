"""Plots of a fit: posterior predictive bands against the runs, the compute-optimal frontier, diagnostics.

Thin layers over the numbers the rest of bayescale computes: every band is a column of
`bayescale.predict(...).quantiles()` or `bayescale.optimal_allocation(...).quantiles()`, never a second
implementation. matplotlib (and arviz-plots for the diagnostics) come with the `plots` extra and are imported
only when a plot is asked for: `pip install "bayescale[plots]"`.

Every drawn band and line carries a `gid` ("median:<group>", "mean:<group>", "new_run:<group>",
"observed"; "<quantity>:median", "<quantity>:band") so scripts and tests can find it again.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from bayescale.optimal import optimal_allocation
from bayescale.predictive import predict
from bayescale.runs import resolve_inputs

_INSTALL_HINT = 'bayescale plots need matplotlib and arviz-plots: pip install "bayescale[plots]"'


def _pyplot():
    try:
        import matplotlib.pyplot as plt
    except ImportError as err:
        raise ImportError(_INSTALL_HINT) from err
    return plt


def interval_levels(interval: float = 0.9) -> tuple[float, float, float]:
    """Lower tail, median, upper tail of an equal-tailed interval: 0.9 -> (0.05, 0.5, 0.95)."""
    if not 0.0 < interval < 1.0:
        raise ValueError(f"interval must be between 0 and 1 (e.g. 0.9 for 90%), got {interval}")
    tail = round((1.0 - interval) / 2.0, 12)
    return tail, 0.5, round(1.0 - tail, 12)


# Units of the inputs that the catalogue's laws share (bayescale.law.STANDARD_DERIVATIONS); other names are
# shown as they are.
_INPUT_UNITS = {"N": "parameters", "D": "tokens", "C": "training compute, FLOP", "M": "tokens per parameter"}


def axis_label(name: str) -> str:
    """An input's name with its unit where the catalogue fixes one: "N" -> "N (parameters)"."""
    return f"{name} ({_INPUT_UNITS[name]})" if name in _INPUT_UNITS else name


def _column(name: str, level: float) -> str:
    # The naming of Prediction.quantiles / Allocation.quantiles.
    return f"{name}_q{100 * level:g}"


def _axes(ax):
    plt = _pyplot()
    if ax is None:
        _, ax = plt.subplots(figsize=(7, 4.5))
    return ax


def default_band_axes(law) -> tuple[str, str | None]:
    """(x, by) that read well for a law: N against compute slices for a law of N and D (IsoFLOP profiles,
    as in Chinchilla's Figure 3), the only input for a one-input law, else the first input by the second."""
    inputs = tuple(law.inputs)
    if len(inputs) == 1:
        return inputs[0], None
    if set(inputs) <= {"N", "D", "C", "M"} and "N" in inputs:
        return "N", "C"
    if len(inputs) == 2:
        return inputs[0], inputs[1]
    raise ValueError(f"law {law.name!r} has inputs {inputs}; say which to plot with x= and by=")


def observed_inputs(fit, names: Sequence[str]) -> pd.DataFrame:
    """The fitted runs' values of `names` (law inputs or inputs derived from them, e.g. C = 6 N D)."""
    values, _ = resolve_inputs(fit.runs.x, list(names), fit.law.all_derivations())
    return pd.DataFrame({k: np.asarray(v, dtype=float) for k, v in values.items()})


def _group_runs(by_values: np.ndarray, groups: int | Sequence[float]) -> np.ndarray:
    """Group index per run: `groups` equal-count bins of log(by), or bins between the given edges."""
    if np.ndim(groups) == 0:
        count = int(groups)
        if count < 1:
            raise ValueError(f"groups must be a positive count or a sequence of bin edges, got {groups}")
        count = min(count, len(np.unique(by_values)))
        return np.asarray(pd.qcut(np.log(by_values), count, labels=False, duplicates="drop"), dtype=int)
    edges = np.sort(np.asarray(groups, dtype=float))
    if edges.size < 2 or np.any(edges <= 0):
        raise ValueError(f"bin edges must be at least two positive values, got {list(groups)}")
    index = np.searchsorted(edges, by_values, side="right") - 1
    index[by_values == edges[-1]] = edges.size - 2
    outside = (index < 0) | (index >= edges.size - 1)
    if outside.any():
        raise ValueError(
            f"{int(outside.sum())} runs lie outside the bin edges [{edges[0]:.3g}, {edges[-1]:.3g}]; "
            "widen the edges so that every run is shown"
        )
    return index


def band_axes(fit, x: str | None = None, by: str | None = None) -> tuple[str, str | None]:
    """The (x, by) that `plot_fit_bands` uses: the given ones, else `default_band_axes` of the law."""
    default_x, default_by = default_band_axes(fit.law)
    x = x or default_x
    by = by if by is not None else (default_by if x == default_x else None)
    if by == x:
        raise ValueError(f"x and by must differ, both are {x!r}")
    return x, by


def band_grid(
    fit, x: str | None = None, by: str | None = None, *, groups: int | Sequence[float] = 6, num_points: int = 60,
    widen: float = 1.5,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Where `plot_fit_bands` predicts, and which run goes with which curve.

    Returns (grid, runs). `runs`: the fitted runs' x, by, output and "group". `grid`: per group, `num_points`
    log-spaced values of x over the group's range widened by the factor `widen` each side, at the group's
    geometric-mean `by`; columns x, by, "group". Without `by` (a one-input law) there is one group.
    """
    x, by = band_axes(fit, x, by)
    runs = observed_inputs(fit, [x] if by is None else [x, by])
    runs[fit.runs.output] = fit.runs.y
    runs["group"] = 0 if by is None else _group_runs(runs[by].to_numpy(), groups)
    pieces = []
    for group, rows in runs.groupby("group", sort=True):
        piece = pd.DataFrame({x: np.geomspace(rows[x].min() / widen, rows[x].max() * widen, num_points)})
        if by is not None:
            piece[by] = float(np.exp(np.log(rows[by]).mean()))
        piece["group"] = group
        pieces.append(piece)
    return pd.concat(pieces, ignore_index=True), runs


def plot_fit_bands(
    fit,
    x: str | None = None,
    by: str | None = None,
    *,
    groups: int | Sequence[float] = 6,
    interval: float = 0.9,
    num_points: int = 60,
    ax=None,
    cmap: str = "viridis",
    seed: int = 0,
):
    """Posterior predictive bands against the observed runs, on log axes; returns the matplotlib Axes.

    The runs are grouped on log `by` (`groups`: a count of equal-count bins, or a sequence of bin edges such
    as midpoints between a study's compute budgets). Per group, one curve over `x` at the group's
    geometric-mean `by`: the law's median (line), its `interval` band from parameter uncertainty (dark) and
    the band for a new run with observation noise (light). Curves and runs are coloured by `by` on one log
    colour scale (a colour bar), so a run between two curves has a colour between theirs. For a law of N
    and D the default is loss against N with one curve per compute slice (`by="C"`): IsoFLOP profiles, as
    in Chinchilla's Figure 3. A one-input law gets one curve. The numbers are
    `predict(fit, grid, seed=seed).quantiles(...)` on the grid of `band_grid`, in one call.
    """
    plt = _pyplot()
    from matplotlib.colors import LogNorm
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    x, by = band_axes(fit, x, by)
    grid, runs = band_grid(fit, x, by, groups=groups, num_points=num_points)
    levels = interval_levels(interval)
    table = predict(fit, grid[[x] if by is None else [x, by]], seed=seed).quantiles(levels)
    lo, mid, hi = levels
    ax = _axes(ax)
    output = fit.runs.output
    colours = plt.get_cmap(cmap)
    norm = LogNorm(runs[by].min(), runs[by].max()) if by is not None else None
    colour_of = (lambda value: colours(norm(value))) if by is not None else (lambda value: "C0")  # noqa: E731
    for group in sorted(grid["group"].unique()):
        rows = grid["group"].to_numpy() == group
        xs = grid.loc[rows, x].to_numpy()
        band = table.loc[rows]
        colour = colour_of(grid.loc[rows, by].iloc[0] if by is not None else None)
        ax.fill_between(xs, band[_column("new_run", lo)], band[_column("new_run", hi)], color=colour, alpha=0.15,
                        linewidth=0, gid=f"new_run:{group}")
        ax.fill_between(xs, band[_column("mean", lo)], band[_column("mean", hi)], color=colour, alpha=0.4,
                        linewidth=0, gid=f"mean:{group}")
        ax.plot(xs, band[_column("mean", mid)], color=colour, linewidth=1.5, gid=f"median:{group}")
    dot_colours = [colour_of(v) for v in runs[by]] if by is not None else "C0"
    ax.scatter(runs[x], runs[output], c=dot_colours, s=14, edgecolors="black", linewidths=0.3, zorder=3,
               gid="observed")
    ax.set_xscale("log")
    if fit.law.output_scale == "log":  # a signed output (output_scale="raw") is drawn on a linear axis
        ax.set_yscale("log")
        _plain_log_ticks(ax.yaxis)
    ax.set_xlabel(axis_label(x))
    ax.set_ylabel(output)
    percent = f"{100 * interval:g}%"
    ax.set_title(f"{fit.law.name}: posterior predictive" + (f", one curve per {by} slice" if by else ""),
                 fontsize=10)
    grey = "0.35"
    ax.legend(handles=[
        Line2D([], [], color=grey, label="law, median"),
        Patch(color=grey, alpha=0.5, label=f"law, {percent} (parameter uncertainty)"),
        Patch(color=grey, alpha=0.2, label=f"new run, {percent} (with noise)"),
        Line2D([], [], color=grey, marker="o", linestyle="", markeredgecolor="black", label="fitted runs"),
    ], fontsize=8)
    if by is not None:
        from matplotlib.cm import ScalarMappable

        ax.figure.colorbar(ScalarMappable(norm=norm, cmap=colours), ax=ax, label=axis_label(by))
    return ax


def _plain_log_ticks(axis) -> None:
    """Losses span less than a decade: label the log axis with plain numbers, not powers of ten."""
    from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

    axis.set_major_locator(LogLocator(base=10, subs=(1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0)))
    axis.set_major_formatter(ScalarFormatter())
    axis.set_minor_formatter(NullFormatter())


def compute_grid(compute_range: Sequence[float], num_points: int = 50) -> np.ndarray:
    """(low, high) -> `num_points` log-spaced budgets; a longer sequence is used as it is."""
    budgets = np.asarray(compute_range, dtype=float).ravel()
    if budgets.size < 2 or np.any(~np.isfinite(budgets)) or np.any(budgets <= 0):
        raise ValueError(f"compute_range must be positive budgets, (low, high) or a list; got {list(compute_range)}")
    return np.geomspace(budgets[0], budgets[1], num_points) if budgets.size == 2 else budgets


_QUANTITY_LABELS = {"N": "N* (parameters)", "D": "D* (tokens)", "tokens_per_param": "D*/N* (tokens per parameter)",
                    "loss": "loss at the optimum"}


def plot_optimal_frontier(
    fit,
    compute_range: Sequence[float] = (1e18, 1e26),
    *,
    quantities: Sequence[str] = ("N", "D"),
    interval: float = 0.9,
    num_points: int = 50,
    show_runs: bool = True,
    ax=None,
):
    """The compute-optimal frontier on log axes: median and `interval` band of each of `quantities` (from
    "N", "D", "tokens_per_param", "loss") against compute C, from `optimal_allocation(fit, budgets)`.
    `compute_range` is (low, high), spread over `num_points` log-spaced budgets, or a list of budgets.
    `show_runs` adds the fitted runs' N and D against their C, to show how far the frontier extrapolates.
    Returns the matplotlib Axes."""
    _pyplot()  # fail before the computation when matplotlib is missing
    unknown = [q for q in quantities if q not in _QUANTITY_LABELS]
    if unknown or not quantities:
        raise ValueError(f"quantities must be among {list(_QUANTITY_LABELS)}, got {list(quantities)}")
    budgets = compute_grid(compute_range, num_points)
    levels = interval_levels(interval)
    table = optimal_allocation(fit, budgets).quantiles(levels)
    lo, mid, hi = levels
    ax = _axes(ax)
    for i, name in enumerate(quantities):
        colour = f"C{i}"
        ax.fill_between(table["compute"], table[_column(name, lo)], table[_column(name, hi)], color=colour,
                        alpha=0.3, linewidth=0, gid=f"{name}:band")
        ax.plot(table["compute"], table[_column(name, mid)], color=colour, label=_QUANTITY_LABELS[name],
                gid=f"{name}:median")
        if show_runs and name in ("N", "D"):
            runs = observed_inputs(fit, ["C", name])
            # Hollow: these are the ladder's runs, optimal or not, drawn to show how far the frontier reaches.
            ax.scatter(runs["C"], runs[name], facecolors="none", edgecolors=colour, s=10, linewidths=0.7, alpha=0.7,
                       gid=f"{name}:runs", label=f"{name} of every fitted run (not only optimal ones)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("compute C (FLOP)")
    ax.set_ylabel(" / ".join(_QUANTITY_LABELS[q].split(" (")[0] for q in quantities))
    ax.set_title(f"{fit.law.name}: compute-optimal allocation, median and {100 * interval:g}% band", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(True, which="major", alpha=0.3)
    return ax


_DIAGNOSTIC_PLOTS = {"trace": "plot_trace_dist", "rank": "plot_rank", "pair": "plot_pair", "ppc": "plot_ppc_dist"}


def plot_diagnostics(fit, kind: str = "trace", var_names: Sequence[str] | None = None, **kwargs):
    """ArviZ's diagnostic plot of the fit's DataTree: "trace" (`plot_trace_dist`), "rank" (`plot_rank`),
    "pair" (`plot_pair`) or "ppc" (`plot_ppc_dist`, posterior predictive of the observed y). Parameters
    default to the law's and the likelihood's (the sampler's internal sites are left out). Returns ArviZ's
    PlotCollection (`.savefig(path)`); `kwargs` go to the ArviZ function."""
    if kind not in _DIAGNOSTIC_PLOTS:
        raise ValueError(f"kind must be one of {list(_DIAGNOSTIC_PLOTS)}, got {kind!r}")
    _pyplot()
    try:
        import arviz_plots
    except ImportError as err:
        raise ImportError(_INSTALL_HINT) from err
    plot = getattr(arviz_plots, _DIAGNOSTIC_PLOTS[kind])
    if kind == "ppc":
        return plot(fit.data, backend="matplotlib", **kwargs)
    names = list(var_names) if var_names is not None else [
        n for n in fit.param_names if n in fit.data.posterior.data_vars
    ]
    return plot(fit.data, var_names=names, backend="matplotlib", **kwargs)


def plot_prior_predictive(check, x: str | None = None, num_curves: int = 50, band=(0.005, 0.995), ax=None):
    """Prior draws against the data, from a `bayescale.prior_predictive.PriorPredictive`, on log `x` (default
    the law's first input).

    A one-input law: `num_curves` prior draws of the law's mean as curves through the runs, and the band of
    new runs (default the verdict's 99%) as a shaded area. A law of several inputs: runs that are neighbours
    in `x` differ in the other inputs (an IsoFLOP ladder jumps in D as N grows), so joining them would draw
    saw-teeth; each run gets its band as a vertical bar and each prior draw its means as faint dots.
    gids: "prior:curve" (one line, or one set of dots, per draw), "prior:band", "observed"."""
    ax = _axes(ax)
    x = x or check.law.inputs[0]
    order = np.argsort(check.runs.x[x])
    xs = np.asarray(check.runs.x[x])[order]
    finite = np.where(np.isfinite(check.new_run), check.new_run, np.nan)[:, order]
    lo, hi = np.nanquantile(finite, band[0], axis=0), np.nanquantile(finite, band[1], axis=0)
    band_label = f"{100 * (band[1] - band[0]):g}% prior predictive (new run)"
    if len(check.law.inputs) == 1:
        for i, curve in enumerate(check.mean[:num_curves, order]):
            ax.plot(xs, curve, color="tab:blue", alpha=0.15, lw=0.8, gid="prior:curve",
                    label="prior draws of the law" if i == 0 else None)
        ax.fill_between(xs, lo, hi, color="tab:blue", alpha=0.15, gid="prior:band", label=band_label)
    else:
        for i, means in enumerate(check.mean[:num_curves, order]):
            ax.scatter(xs, means, color="tab:blue", alpha=0.3, s=5, linewidths=0, zorder=2, gid="prior:curve",
                       label="prior draws of the law (at each run)" if i == 0 else None)
        ax.vlines(xs, lo, hi, color="0.75", lw=3, zorder=1, gid="prior:band", label=band_label)
    ax.scatter(xs, np.asarray(check.runs.y)[order], color="black", s=12, zorder=3, gid="observed", label="runs")
    ax.set_xscale("log")
    ax.set_yscale("log" if check.law.output_scale == "log" else "linear")
    ax.set_xlabel(axis_label(x))
    ax.set_ylabel(check.runs.output)
    ax.set_title(f"prior predictive: {check.law.name}", fontsize=10)
    ax.legend(fontsize=8)
    return ax


def empirical_coverage(pit: np.ndarray, levels: Sequence[float]) -> np.ndarray:
    """Share of runs inside the central interval of each nominal level, read from their PIT values: a run
    lies inside the central p interval when (1 - p) / 2 <= PIT <= (1 + p) / 2."""
    pit = np.asarray(pit, float)
    return np.array([np.mean((pit >= (1 - p) / 2) & (pit <= (1 + p) / 2)) for p in levels])


def plot_calibration(backtest, by: str = "law", bins: int = 10, axes=None):
    """Calibration of a backtest's forecasts (`bayescale.backtest`): nominal against empirical coverage of
    central intervals (one line per `by` value; the diagonal is perfect calibration, below it the intervals
    are too narrow), with the 90% band that a calibrated forecast's coverage would fall in given the number
    of held-out runs; and the PIT histogram (flat when calibrated; U-shaped when too narrow, piled in one
    tail when biased). `backtest`: a `Backtest`, or its `table` (e.g. several backtests' tables concatenated
    with a column to compare by). Lines have gid "coverage:<value>", bars "pit:<value>". Returns the Axes."""
    plt = _pyplot()
    if axes is None:
        _, axes = plt.subplots(1, 2, figsize=(10, 4.2))
    cover_ax, pit_ax = axes
    nominal = np.linspace(0.02, 0.98, 49)
    table = backtest if isinstance(backtest, pd.DataFrame) else backtest.table
    if by not in table.columns:
        raise KeyError(f"no column {by!r} in the backtest table; columns are {', '.join(map(str, table.columns))}")
    count = len(table) / max(table[by].nunique(), 1)
    spread = 1.645 * np.sqrt(nominal * (1 - nominal) / count)
    cover_ax.fill_between(nominal, nominal - spread, nominal + spread, color="0.85", gid="coverage:calibrated_band",
                          label=f"calibrated, 90% band ({count:.0f} runs)")
    cover_ax.plot([0, 1], [0, 1], color="0.4", lw=1, ls="--")
    edges = np.linspace(0, 1, bins + 1)
    groups = list(table.groupby(by, sort=False))
    width = 1.0 / bins / max(len(groups), 1)
    for i, (value, part) in enumerate(groups):
        line, = cover_ax.plot(nominal, empirical_coverage(part["pit"], nominal), lw=2, gid=f"coverage:{value}",
                              label=f"{value} ({len(part)} runs)")
        counts, _ = np.histogram(part["pit"], bins=edges)
        pit_ax.bar(edges[:-1] + i * width, counts / len(part) * bins, width=width, align="edge",
                   color=line.get_color(), alpha=0.8, gid=f"pit:{value}", label=str(value))
    pit_ax.axhline(1.0, color="0.4", lw=1, ls="--")
    cover_ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="nominal coverage of the central interval",
                 ylabel="share of held-out runs inside", title="Coverage of held-out runs")
    pit_ax.set(xlim=(0, 1), xlabel="PIT (share of forecast draws below the run)", ylabel="density",
               title="PIT of held-out runs (flat = calibrated)")
    cover_ax.legend(loc="upper left", fontsize=8)
    pit_ax.legend(loc="upper center", fontsize=8)
    return axes
