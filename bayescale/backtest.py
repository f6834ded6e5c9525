"""Backtests: refit a law without the larger runs and score its forecasts of them.

A scaling law is used to forecast runs larger than any it was fitted on, so the question that matters is
whether its forecasts, and their intervals, hold up beyond the data. `backtest` answers it on the user's own
runs: for each hold-out rule (a "fold"), it refits the law on the runs kept and forecasts the runs held out,
exactly as a user would have forecast them.

Hold-out rules (`folds_for`):
- the largest `holdout` share (or count) of the runs by any input or derived input (`by`: "C", "N", "D",
  "x", "steps", ...; default the law's scaling axis, compute C where the inputs give it);
- rolling origins (`cuts`): several such shares, each fold fitted on everything below its cut;
- a user mask, or a boolean column of the table (`holdout_column`).
Ties at a cut are handled by value, never by row order: every run whose `by` equals the cut value is held
out with the larger runs (so a fold can hold out a few more runs than asked; the fold's name says how many).

Scores per held-out run (on the log scale of the output, so that data sets with different losses pool):
coverage of the central 50/80/90/95% intervals of a new run, the interval score of each (Gneiting and
Raftery 2007: width + (2 / alpha) x distance outside; lower is better), the CRPS (from draws:
E|X - y| - E|X - X'| / 2), the log predictive density, the PIT (share of forecast draws below the run), the
relative error of the median, and the extrapolation factor (the run's `by` over the largest fitted `by`).
`Backtest.scores()` pools them per law (and per fold with `by=("law", "fold")`);
`Backtest.weights()` gives stacking weights over laws from the held-out log densities (Yao et al. 2018), a
leave-future-out alternative to PSIS-LOO's, which measures interpolation, not extrapolation.

Refits run through the batch engine (`bayescale.batch.fit_batch`): the folds of one law are one padded,
batched program, so a rolling backtest costs about one compilation. Grouped fits and the "ar1" likelihood
refit fold by fold with `bayescale.fit.fit`.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
from scipy.special import logsumexp

from bayescale.inference import SamplerSettings
from bayescale.law import Law, get_law
from bayescale.likelihood import Likelihood, as_likelihood
from bayescale.predictive import predictive_draws
from bayescale.runs import DataError, Runs, boolean_column, read_table, resolve_inputs, runs_from_table, split_datasets

LEVELS = (0.5, 0.8, 0.9, 0.95)


# ---- hold-out rules ----


@dataclass(frozen=True)
class Fold:
    """One hold-out rule applied to the runs: `held_out` marks the runs forecast (True) and not fitted."""

    name: str
    held_out: np.ndarray
    by: str | None = None
    cut: float | None = None


def scaling_axis(law: Law) -> str:
    """The input runs are ranked by when none is named (`Law.scaling_axis`)."""
    return law.scaling_axis()


def ranking_values(runs: Runs, law: Law, by: str | None = None) -> np.ndarray:
    """Each run's value of input `by` (an input of the law or one derivable from them)."""
    by = by or scaling_axis(law)
    try:
        values, _ = resolve_inputs(runs.x, [by], law.all_derivations())
    except DataError:
        raise DataError(f"cannot rank runs by {by!r}: it is neither an input of law {law.name!r} "
                        f"({', '.join(law.inputs)}) nor derivable from them") from None
    return np.asarray(values[by], float)


def largest(values: np.ndarray, holdout: float | int) -> tuple[np.ndarray, float]:
    """The runs with the largest `values`: a share (0 < holdout < 1) or a count (holdout >= 1) of them, and
    every run tied with the smallest of those (ties go to the held-out side, whatever the row order).
    Returns the mask and the cut value."""
    values = np.asarray(values, float)
    n = len(values)
    if not holdout > 0:
        raise ValueError(f"holdout must be a positive share (< 1) or count (>= 1), got {holdout!r}")
    count = int(holdout) if holdout >= 1 else int(np.ceil(holdout * n - 1e-9))
    if not 0 < count < n:
        raise ValueError(f"holdout {holdout!r} of {n} runs holds out {count}: nothing would be fitted or forecast")
    cut = float(np.sort(values)[n - count])
    return values >= cut, cut


def folds_for(runs: Runs, law: Law, *, by: str | None = None, holdout: float | int | None = None,
              cuts: Sequence[float | int] | None = None, mask: Any = None) -> list[Fold]:
    """The folds of a backtest: `mask` (held-out runs, one fold), else `cuts` (rolling origins: one fold per
    share or count held out), else `holdout` (one fold, the largest share; 0.2 when nothing is given)."""
    if mask is not None:
        held = np.asarray(mask)
        if held.dtype != bool or held.shape != (len(runs),):
            raise DataError(f"the hold-out mask must be {len(runs)} booleans (one per run), got {held.dtype} of "
                            f"shape {held.shape}")
        return [Fold(f"mask ({int(held.sum())} held out)", held)]
    name = by or scaling_axis(law)
    values = ranking_values(runs, law, name)
    shares = list(cuts) if cuts is not None else [0.2 if holdout is None else holdout]
    if not shares:
        raise ValueError("cuts is empty: give at least one share or count to hold out")
    folds = []
    for share in shares:
        held, cut = largest(values, share)
        folds.append(Fold(f"{name} >= {cut:.4g} ({int(held.sum())} held out)", held, name, cut))
    return folds


def mask_from_column(table: pd.DataFrame, column: str) -> np.ndarray:
    """A boolean hold-out column (True / 1 = held out); any other value is an error naming the rows."""
    return boolean_column(table, column, "hold-out", "True = held out")


def subset(runs: Runs, keep: np.ndarray) -> Runs:
    """The runs where `keep` is True, with group codes and run-order links (`prev`) carried over."""
    prev = None
    if runs.prev is not None:
        before = np.maximum(runs.prev[keep], 0)  # a run's first point: any valid index, masked below
        prev = np.where((runs.prev[keep] >= 0) & keep[before], (np.cumsum(keep) - 1)[before], -1)
    return dataclasses.replace(
        runs,
        x={k: v[keep] for k, v in runs.x.items()},
        y=None if runs.y is None else runs.y[keep],
        se=None if runs.se is None else runs.se[keep],
        labels=runs.labels[keep] if len(runs.labels) == len(keep) else runs.labels,
        groups=None if runs.groups is None else runs.groups[keep],
        prev=prev,
    )


def split_groups(fitted: Runs, test: Runs) -> tuple[Runs, Runs]:
    """A grouped fold's parts with the fitted part's groups only: a group with no fitted run has no data for
    its bounds (E below its smallest loss), so the refit leaves it out, and its held-out runs get code -1, a
    group the refit has not seen (predicted from the pooled distribution, `bayescale.grouping.group_params`)."""
    if fitted.groups is None:
        return fitted, test
    present = np.unique(fitted.groups)
    code = np.full(len(fitted.group_labels), -1)
    code[present] = np.arange(len(present))
    labels = tuple(fitted.group_labels[i] for i in present)
    return (dataclasses.replace(fitted, groups=code[fitted.groups], group_labels=labels),
            dataclasses.replace(test, groups=code[test.groups], group_labels=labels))


# ---- scores ----


def interval_score(low, high, y, level: float):
    """Gneiting and Raftery (2007)'s interval score of the central `level` interval: its width plus
    2 / alpha times the distance by which y falls outside (alpha = 1 - level). Lower is better; proper."""
    alpha = 1.0 - level
    return (high - low) + (2.0 / alpha) * (np.maximum(low - y, 0.0) + np.maximum(y - high, 0.0))


def crps_from_draws(draws: np.ndarray, y: np.ndarray) -> np.ndarray:
    """CRPS of each point's forecast draws (draws, points) at y (points,): E|X - y| - E|X - X'| / 2, the
    second term from the sorted draws in O(S log S) (Gneiting and Raftery 2007, eq. 21)."""
    draws = np.sort(np.asarray(draws, float), axis=0)
    count = draws.shape[0]
    first = np.mean(np.abs(draws - y[None, :]), axis=0)
    weights = (2.0 * np.arange(1, count + 1) - count - 1)[:, None]
    spread = np.sum(weights * draws, axis=0) / count**2
    return first - spread


def score_draws(new_run: np.ndarray, y: np.ndarray, levels: Sequence[float] = LEVELS, scale: str = "log") -> pd.DataFrame:
    """Scores of forecast draws of a new run (draws, points) against the observed y (points,), on the
    likelihood's scale: log for a positive output, raw (output units) for a signed one (`Law.output_scale`)."""
    if scale == "raw":
        log_draws, log_y = np.asarray(new_run, float), np.asarray(y, float)
    else:
        log_draws, log_y = np.log(new_run), np.log(y)
    median = np.median(new_run, axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        rel_error = np.abs(median - y) / np.abs(y)
    out = {"median": median, "rel_error": rel_error, "pit": np.mean(new_run <= y[None, :], axis=0),
           "crps": crps_from_draws(log_draws, log_y)}
    for level in levels:
        low, high = np.quantile(log_draws, [(1 - level) / 2, (1 + level) / 2], axis=0)
        tag = f"{100 * level:g}"
        out[f"covered{tag}"] = (log_y >= low) & (log_y <= high)
        out[f"width{tag}"] = high - low
        out[f"interval_score{tag}"] = interval_score(low, high, log_y, level)
    return pd.DataFrame(out)


def log_predictive_density(likelihood: Likelihood, mean: np.ndarray, samples: Mapping[str, np.ndarray],
                           y: np.ndarray, se: np.ndarray | None = None) -> np.ndarray:
    """log of the posterior-averaged density of each observed y: log mean_s p(y | mean_s, noise_s)."""
    noise = {k: jnp.asarray(samples[k])[:, None] for k in likelihood.noise_names if k != "rho"}
    se = None if se is None else jnp.asarray(se)[None, :]
    log_p = np.asarray(likelihood.distribution(jnp.asarray(mean), noise, se).log_prob(jnp.asarray(y)[None, :]))
    return logsumexp(log_p, axis=0) - np.log(log_p.shape[0])


# ---- refits ----


def _refit(law: Law, likelihood: Likelihood, priors, train: list[Runs], settings: SamplerSettings, seed: int,
           map_starts: int, grouping=None, retries=None) -> list[tuple[dict[str, np.ndarray], bool, int, dict]]:
    """Posterior draws (every site, flattened over chains), the convergence verdict, the number of automatic
    retries (`bayescale.retries`) and what the checks found (`check_summary`) of each training set."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # each refit's verdict is reported in the backtest's table instead
        if grouping is None and likelihood.family != "ar1" and law.numpyro_model is None:
            from bayescale.batch import fit_batch

            # Padded to a multiple of 32 runs, so backtests of tables of similar size share a compiled program.
            width = -(-max(len(r) for r in train) // 32) * 32
            batch = fit_batch(train, law, likelihood=likelihood, priors=priors, settings=settings,
                              seeds=[seed] * len(train), map_starts=map_starts, num_runs=width, retries=retries)
            flat = lambda a: a.reshape(-1, *a.shape[2:])  # noqa: E731  (chains, draws, ...) -> (chains x draws, ...)
            return [({k: flat(v) for k, v in batch.member_samples(i).items()}, bool(batch.converged[i]),
                     len(batch.attempts[i]), check_summary(batch.diagnostics[i])) for i in range(len(train))]
        from bayescale.fit import fit as run_fit
        from bayescale.posterior import draws

        out = []
        for runs in train:
            grouped = {} if grouping is None else {"pooling": grouping.level, "group_scale": grouping.scale}
            refit = run_fit(runs, law, likelihood=likelihood, priors=priors, settings=settings, seed=seed,
                            map_starts=map_starts, retries=retries, **grouped)
            out.append((draws(refit, list(refit.data.posterior.data_vars)), bool(refit.converged), len(refit.attempts),
                        check_summary(refit.diagnostics)))
        return out


def check_summary(diagnostics) -> dict:
    """What a refit's convergence checks found, for the backtest's refits table: the kinds that failed
    ("rhat", "ess", "divergences", "bfmi"; "" when none), the worst R-hat and bulk ESS over the checked
    parameters and which parameter, and the divergent transitions."""
    table = diagnostics.table
    return {
        "failed": ",".join(sorted(diagnostics.failed)),
        "max_rhat": float(table["rhat"].max()),
        "worst_rhat": str(table["rhat"].idxmax()),
        "min_ess_bulk": float(table["ess_bulk"].min()),
        "worst_ess": str(table["ess_bulk"].idxmin()),
        "divergences": int(diagnostics.divergences),
    }


# ---- the result ----


@dataclass
class Backtest:
    """`table`: one row per (law, fold, held-out run) with the forecast's scores; `refits`: one row per
    (law, fold) with the refit's runs and convergence (which checks failed, the worst R-hat and bulk ESS and
    their parameters, divergences); `levels`: the interval levels scored."""

    table: pd.DataFrame
    refits: pd.DataFrame
    levels: tuple[float, ...] = LEVELS
    folds: list[Fold] = field(default_factory=list)

    def scores(self, by: Sequence[str] = ("law",)) -> pd.DataFrame:
        """Pooled scores per law (or per `by` columns): held-out runs, coverage and mean interval score at each
        level, mean width of the 90% interval (log scale), CRPS, summed and mean log predictive density,
        median relative error, median PIT, largest extrapolation factor and the refits that converged."""
        tags = [f"{100 * level:g}" for level in self.levels]
        grouped = self.table.groupby(list(by), sort=False)
        out = grouped.size().rename("runs").to_frame()
        for tag in tags:
            out[f"coverage{tag}"] = grouped[f"covered{tag}"].mean()
        for tag in tags:
            out[f"interval_score{tag}"] = grouped[f"interval_score{tag}"].mean()
        if "90" in tags:
            out["width90"] = grouped["width90"].mean()
        out["crps"] = grouped["crps"].mean()
        out["elpd"] = grouped["lpd"].sum()
        out["mean_lpd"] = grouped["lpd"].mean()
        out["median_rel_error"] = grouped["rel_error"].median()
        out["max_extrapolation"] = grouped["extrapolation"].max()
        refit_by = [b for b in by if b in self.refits.columns]
        if refit_by:
            out["refits_converged"] = self.refits.groupby(refit_by, sort=False)["converged"].mean()
        return out

    def pointwise_lpd(self) -> pd.DataFrame:
        """Held-out log predictive densities: one row per (fold, run), one column per law."""
        return self.table.pivot_table(index=["fold", "run"], columns="law", values="lpd", sort=False)

    def weights(self) -> dict[str, float]:
        """Stacking weights over the laws from the held-out log densities (pooled over folds): the mixture of
        laws whose forecasts of the held-out runs score best. Usable wherever weights are taken
        (`bayescale.average_predict(fits, at, weights=backtest.weights())`)."""
        from bayescale.link_comparison import stacking_weights

        lpd = self.pointwise_lpd().dropna()
        if lpd.shape[1] < 2:
            return {str(lpd.columns[0]): 1.0}
        return stacking_weights({str(name): lpd[name].to_numpy() for name in lpd.columns})

    def to_dict(self) -> dict:
        return {"scores": self.scores().reset_index().to_dict(orient="records"),
                "refits": self.refits.to_dict(orient="records"),
                "runs": self.table.to_dict(orient="records")}


def _as_laws(laws) -> list[Law]:
    if isinstance(laws, (str, Law)):
        return [get_law(laws)]
    out = [get_law(law) for law in laws]
    if not out:
        raise ValueError("give at least one law to backtest")
    names = [law.name for law in out]
    if len(set(names)) != len(names):
        raise ValueError(f"laws to backtest must have distinct names, got {names}")
    return out


def backtest(
    data,
    laws=None,
    *,
    columns: Mapping[str, str] | None = None,
    y: str = "loss",
    se: str | None = None,
    likelihood: str | Likelihood = "normal",
    discrepancy: Any = "default",
    priors: Mapping[str, Any] | None = None,
    by: str | None = None,
    holdout: float | int | None = None,
    cuts: Sequence[float | int] | None = None,
    mask: Any = None,
    holdout_column: str | None = None,
    datasets: str | None = None,
    levels: Sequence[float] = LEVELS,
    settings: SamplerSettings | None = None,
    num_warmup: int = 1000,
    num_samples: int = 1000,
    num_chains: int = 4,
    seed: int = 0,
    map_starts: int = 32,
    allow_repeats: bool = False,
    retries: Any = None,
) -> Backtest:
    """Refit each law on the runs kept by each hold-out rule and score its forecasts of the runs held out.

    `data`: a table (DataFrame or path) with `laws` (a name, a `Law`, or a list), or a `Fit` (its law,
    likelihood, priors, grouping and runs are reused; `laws` must then be None). Hold-out rules, see the
    module docstring: `mask` or `holdout_column` (one fold), `cuts` (rolling origins: shares or counts of the
    largest runs by `by`), or `holdout` (one fold; default 0.2). `likelihood`, `discrepancy`, `priors`,
    `columns`, `y`, `se`: as in `bayescale.fit`. Sampler: `settings`, or `num_warmup`/`num_samples`/
    `num_chains`; `retries` as in `bayescale.fit` (refits that fail their checks are rerun, in batches together
    in a second batched pass). Every refit uses `seed`. `datasets`: a column naming independent data sets in one table
    (each gets its own folds; all folds of a law are refitted in one batched program).
    """
    from bayescale.fit import Fit, _check_prior_names

    settings = settings or SamplerSettings(num_warmup=num_warmup, num_samples=num_samples, num_chains=num_chains)
    levels = tuple(float(level) for level in levels)
    if not levels or any(not 0 < level < 1 for level in levels):
        raise ValueError(f"interval levels must lie strictly between 0 and 1, got {levels}")
    grouping = None
    if isinstance(data, Fit):
        if laws is not None:
            raise ValueError("backtest(fit) refits the fit's own law: do not pass laws")
        fit = data
        plans = [(fit.law, fit.likelihood, dict(fit.priors))]
        runs_by_law = {fit.law.name: {None: fit.runs}}
        grouping = fit.grouping
        if holdout_column is not None or datasets is not None:
            raise ValueError("holdout_column and datasets need a table; with a fit, pass mask= (one boolean per run)")
        mask = None if mask is None else {None: mask}
    else:
        if laws is None:
            raise ValueError("name the law(s) to backtest")
        table = read_table(data)
        if holdout_column is not None:
            if mask is not None:
                raise ValueError("give mask or holdout_column, not both")
            mask = mask_from_column(table, holdout_column)
        parts = split_datasets(table, datasets)
        if mask is not None:
            mask = np.asarray(mask)
            if mask.shape != (len(table),):
                raise DataError(f"the hold-out mask must have one entry per row of the table ({len(table)}), got shape {mask.shape}")
            positions = pd.Series(np.arange(len(table)), index=table.index)
            mask = {name: mask[positions.loc[part.index].to_numpy()] for name, part in parts.items()}
        plans, runs_by_law = [], {}
        for law in _as_laws(laws):
            base = as_likelihood(likelihood, discrepancy, law=law)
            given = dict(priors or {})
            own = {k: v for k, v in given.items() if k in law.params or k in ("sigma", "nu", "rho", "drift")}
            _check_prior_names(own, law, base)
            plans.append((law, base, own))
            runs_by_law[law.name] = {name: runs_from_table(part, law, columns=columns, y=y, se=se, allow_repeats=allow_repeats)
                                     for name, part in parts.items()}

    rows, refit_rows, all_folds = [], [], []
    for law, lik, own_priors in plans:
        jobs = []  # (data set, fold, all runs, fitted runs, held-out runs)
        for dataset, runs in runs_by_law[law.name].items():
            for fold in folds_for(runs, law, by=by, holdout=holdout, cuts=cuts, mask=None if mask is None else mask[dataset]):
                kept = int((~fold.held_out).sum())
                if kept < law.num_params + 2 or not fold.held_out.any():
                    where = f" of data set {dataset!r}" if dataset is not None else ""
                    raise DataError(f"fold {fold.name!r}{where} keeps {kept} runs and holds out "
                                    f"{int(fold.held_out.sum())}: a backtest of law {law.name!r} needs at least "
                                    f"{law.num_params + 2} fitted runs and one held out")
                jobs.append((dataset, fold, runs, *split_groups(subset(runs, ~fold.held_out), subset(runs, fold.held_out))))
                all_folds.append(fold)
        refits = _refit(law.with_priors(own_priors), lik.with_priors(own_priors), {}, [job[3] for job in jobs], settings,
                        seed, map_starts, grouping, retries)
        for index, ((dataset, fold, runs, fitted, test), (samples, converged, retried, checks)) in enumerate(zip(jobs, refits)):
            key = jax.random.fold_in(jax.random.PRNGKey(seed), index)
            if grouping is not None:
                from bayescale.grouping import group_params
                from bayescale.law import data_stats

                key_group, key = jax.random.split(key)
                # The refits are new fits: pooled as fits are now, whatever the file of a loaded fit said.
                refitted = dataclasses.replace(grouping, pooled_at_reference=True)
                stats = data_stats(jnp.asarray(fitted.y), x={k: jnp.asarray(v) for k, v in fitted.x.items()})
                samples = {**samples, **group_params(law, refitted, samples, stats, test.groups, key_group)}
            mean, new_run = predictive_draws(law, lik, samples, fitted, test.x, key)
            scored = score_draws(new_run, test.y, levels, scale="raw" if lik.raw else "log")
            scored["lpd"] = log_predictive_density(lik, mean, samples, test.y, test.se)
            if fold.by is not None:
                scored["extrapolation"] = ranking_values(test, law, fold.by) / ranking_values(fitted, law, fold.by).max()
            else:
                scored["extrapolation"] = np.nan
            scored.insert(0, "y", test.y)
            scored.insert(0, "run", [str(v) for v in test.labels])
            scored.insert(0, "fold", fold.name)
            if dataset is not None:
                scored.insert(0, "dataset", dataset)
            scored.insert(0, "law", law.name)
            rows.append(scored)
            refit_rows.append({"law": law.name, **({"dataset": dataset} if dataset is not None else {}),
                               "fold": fold.name, "fitted_runs": len(fitted), "held_out_runs": len(test),
                               "converged": converged, "retries": retried, **checks})
    return Backtest(table=pd.concat(rows, ignore_index=True), refits=pd.DataFrame(refit_rows), levels=levels,
                    folds=all_folds)
