"""compare(fits): which law family do the data support, by evidence and by predictive criteria.

One table, one row per fit (all fitted to the same runs):

- Evidence: log marginal likelihood +- its numerical error (bridge sampling, `bayescale.evidence`), the
  Laplace cross-check, the evidence with every prior's spread doubled (prior sensitivity), log Bayes factor
  against the best, and posterior model probabilities from user prior weights (and with widened priors).
- PSIS-LOO (ArviZ `az.loo`): expected log predictive density for a new run like the observed ones, with
  its standard error and the worst Pareto k (above `good_k` the estimate is unreliable for that run).
- WAIC: ArviZ 1.x dropped `waic`; it is computed here from the fit's pointwise log-likelihood
  (Watanabe 2010; Gelman, Hwang & Vehtari 2014: elpd_waic = sum_i [lppd_i - var_s log p(y_i | theta_s)]).
- Stacking weights (Yao et al. 2018, `az.compare`): the mixture of families that predicts left-out runs best.
- Extrapolation score (optional, refits every family through `bayescale.backtest`): hold out the largest
  runs (by compute, or any input), fit the rest, and score the held-out runs: log predictive density, median
  relative error, 50% and 90% interval coverage, interval score. For
  scaling laws this is the question that matters: does the law forecast the bigger runs?

`table.attrs["notes"]` explains every column in plain language; `table.attrs["warnings"]` lists what makes
a number unreliable (non-converged fits, high Pareto k, large evidence error, a ranking that flips when the
priors are widened, a Laplace estimate far from the bridge one).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import arviz as az
import numpy as np
import pandas as pd
from scipy.special import logsumexp

from bayescale.evidence import evidence_report
from bayescale.posterior import observed_var
from bayescale.runs import DataError

NOTES = {
    "log_z": "log evidence p(data | family), nats: how well the family with its priors predicted the data "
             "before seeing them. Higher is better. Depends on the priors (see log_z_wide_priors).",
    "log_z_error": "numerical standard error of log_z (bridge sampling); differences smaller than ~2x the "
                   "combined errors are noise.",
    "log_z_laplace": "normal approximation to log_z at the mode: a cross-check. A gap of more than ~1 nat "
                     "from log_z means a non-Gaussian posterior; trust log_z.",
    "log_z_wide_priors": "log_z with every prior's spread doubled (physical bounds such as 0 < E < min loss "
                         "kept). It drops by ~0.7 nats per well-constrained parameter; if the ranking changes, "
                         "the verdict rests on the priors.",
    "log_bf_vs_best": "log Bayes factor against the family with the highest log_z: -1 is 'barely worth "
                      "mentioning', below -3 strong, below -5 decisive evidence against (Kass & Raftery 1995, "
                      "on the natural-log scale: 1.1, 3.0, 5.0).",
    "prior_weight": "your prior probability of each family (normalised).",
    "posterior_prob": "posterior probability of each family among those compared, from log_z and the prior "
                      "weights. Only meaningful if one of the families is close to true.",
    "posterior_prob_wide_priors": "the same with widened priors.",
    "elpd_loo": "PSIS-LOO expected log predictive density of a new run like the observed ones (higher is "
                "better), +- elpd_loo_se. Differences within ~2 se are not meaningful.",
    "pareto_k_max": "worst Pareto k of PSIS-LOO; above good_k (~0.7) LOO is unreliable for those runs "
                    "(n_bad_k of them): refit without them or use k-fold cross-validation.",
    "elpd_waic": "WAIC's estimate of the same quantity (computed here; ArviZ 1.x dropped it). Unreliable when "
                 "p_waic of any run exceeds 0.4; prefer elpd_loo.",
    "stacking_weight": "weight of the family in the mixture that best predicts left-out runs (stacking). "
                       "Unlike posterior_prob it does not assume any family is true.",
    "extrap_elpd": "log predictive density of the held-out largest-compute runs after refitting on the rest "
                   "(higher is better): the forecasting score that matters for scaling.",
    "extrap_rel_error": "median |predicted / observed - 1| on the held-out runs (posterior median forecast).",
    "extrap_coverage90": "fraction of held-out runs inside the 90% predictive interval of a new run "
                         "(about 0.9 if the uncertainty is honest; with few held-out runs this is coarse).",
    "extrap_coverage50": "the same for the central 50% interval (about 0.5 if honest).",
    "extrap_interval_score90": "mean interval score of the 90% interval on log loss (Gneiting and Raftery 2007): "
                               "its width plus 20x any miss; lower is better. Rewards narrow intervals that hold.",
    "converged": "whether the fit passed its convergence checks; if not, every number in the row is suspect.",
}


def _named(fits) -> dict[str, Any]:
    if isinstance(fits, Mapping):
        named = dict(fits)
    else:
        named = {}
        for fit in fits:
            name, k = fit.law.name, 2
            while name in named:
                name, k = f"{fit.law.name}_{k}", k + 1
            named[name] = fit
    if len(named) < 2:
        raise ValueError(f"compare needs at least two fits, got {len(named)}")
    return named


def _check_same_data(named: Mapping[str, Any]) -> None:
    names = list(named)
    first = named[names[0]].runs.y
    for name in names[1:]:
        y = named[name].runs.y
        if y is None or first is None or len(y) != len(first) or not np.allclose(y, first, rtol=0, atol=0):
            raise ValueError(
                f"fits {names[0]!r} and {name!r} were fitted to different runs ({len(first)} vs {len(y)} "
                f"observations, or different values): evidence and LOO are only comparable on the same data"
            )


def _normalised_log_weights(names, prior_weights) -> np.ndarray:
    if prior_weights is None:
        w = np.ones(len(names))
    else:
        unknown = sorted(set(prior_weights) - set(names))
        if unknown:
            raise KeyError(f"prior_weights name unknown fits {unknown}; fits are {names}")
        w = np.array([float(prior_weights.get(n, 0.0)) for n in names])
        if np.any(w < 0) or not np.any(w > 0) or not np.all(np.isfinite(w)):
            raise ValueError(f"prior_weights must be non-negative, finite and not all zero; got {dict(zip(names, w))}")
    with np.errstate(divide="ignore"):
        return np.log(w / w.sum())


def _softmax(log_values) -> np.ndarray:
    log_values = np.asarray(log_values, float)
    return np.exp(log_values - logsumexp(log_values))


def waic(fit) -> dict[str, float]:
    """WAIC from the fit's pointwise log-likelihood (draws x runs)."""
    ll = np.asarray(fit.data.log_likelihood[observed_var(fit.data)])
    ll = ll.reshape(-1, ll.shape[-1])
    lppd_i = logsumexp(ll, axis=0) - np.log(ll.shape[0])
    p_i = np.var(ll, axis=0, ddof=1)
    elpd_i = lppd_i - p_i
    return {"elpd_waic": float(elpd_i.sum()), "elpd_waic_se": float(np.sqrt(len(elpd_i) * np.var(elpd_i))),
            "p_waic": float(p_i.sum()), "p_waic_max": float(p_i.max())}


def loo(fit) -> dict[str, float]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # reported as a column and in the warnings instead
        result = az.loo(fit.data)
    k = np.asarray(result.pareto_k)
    return {"elpd_loo": float(result.elpd), "elpd_loo_se": float(result.se), "p_loo": float(result.p),
            "pareto_k_max": float(np.max(k)), "n_bad_k": int(np.sum(k > result.good_k)), "good_k": float(result.good_k)}


def stacking_weights(named: Mapping[str, Any]) -> dict[str, float]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        table = az.compare({name: fit.data for name, fit in named.items()}, method="stacking", round_to="none")  # "none": raw weights (None means the 2-digit display rounding)
    return {name: float(table.loc[name, "weight"]) for name in named}


# ---- extrapolation ----

def holdout_mask(named: Mapping[str, Any], holdout: float | int, by: str | None = None) -> np.ndarray:
    """The runs held out for the extrapolation score: the largest `holdout` share (or count) by input `by`
    (default: the first law's scaling axis, compute C where its inputs give it), ties at the cut held out
    too (`bayescale.backtest.largest`). The first fit whose law can rank its runs by `by` decides; all fits
    share the runs, so they share the mask."""
    from bayescale.backtest import largest, ranking_values, scaling_axis

    first = next(iter(named.values()))
    by = by or scaling_axis(first.law)
    for fit in named.values():
        try:
            values = ranking_values(fit.runs, fit.law, by)
        except DataError:
            continue
        mask, _ = largest(values, holdout)
        if len(values) - mask.sum() < 3:
            raise ValueError(f"holdout {holdout!r} leaves {len(values) - int(mask.sum())} of {len(values)} runs to fit; hold out fewer")
        return mask
    raise DataError(f"no fit's law can rank its runs by {by!r}; pass by= one of their inputs")


def extrapolation_score(fit, held_out: np.ndarray, *, seed: int = 0, settings=None) -> dict[str, float]:
    """Refit `fit`'s law, likelihood and priors on the runs not `held_out`, and score the held-out runs
    (`bayescale.backtest`)."""
    from bayescale.backtest import backtest

    if fit.law.numpyro_model is not None:
        raise ValueError(f"law {fit.law.name!r} is a raw NumPyro model: the extrapolation score needs a declared mean")
    result = backtest(fit, mask=held_out, settings=settings or fit.settings, seed=seed)
    row = result.scores().iloc[0]
    return {
        "extrap_elpd": float(row["elpd"]),
        "extrap_rel_error": float(row["median_rel_error"]),
        "extrap_coverage50": float(row["coverage50"]),
        "extrap_coverage90": float(row["coverage90"]),
        "extrap_interval_score90": float(row["interval_score90"]),
        "extrap_runs": int(held_out.sum()),
        "extrap_converged": bool(result.refits["converged"].all()),
    }


# ---- the table ----

def compare(
    fits: Mapping[str, Any] | Sequence[Any],
    prior_weights: Mapping[str, float] | None = None,
    *,
    extrapolation: bool = False,
    holdout: float | int = 0.2,
    by: str | None = None,
    widen_factor: float | None = 2.0,
    cross_check: bool = True,
    seed: int = 0,
) -> pd.DataFrame:
    """Compare fits of different law families to the same runs; see the module docstring for the columns.

    `fits`: a dict name -> Fit, or a list (named by law). `prior_weights`: prior model weights by name
    (default equal; missing names get 0). `extrapolation=True` refits each family without the `holdout`
    largest runs by `by` (a fraction, or a count; default by compute C, or the first law's input) and scores
    them with `bayescale.backtest`. `widen_factor=None` skips the prior
    sensitivity, `cross_check=False` the Laplace estimate. Rows are sorted by log evidence.
    """
    named = _named(fits)
    _check_same_data(named)
    names = list(named)
    log_prior = _normalised_log_weights(names, prior_weights)  # bad weights fail before any work
    rows: dict[str, dict[str, Any]] = {}
    for name, fit in named.items():
        report = evidence_report(fit, seed=seed, widen_factor=widen_factor, cross_check=cross_check)
        row = {"law": fit.law.name, "log_z": report.primary.log_z, "log_z_error": report.primary.error}
        row["log_z_laplace"] = report.cross_check.log_z if report.cross_check is not None else np.nan
        row["log_z_wide_priors"] = report.widened.log_z if report.widened is not None else np.nan
        row.update(loo(fit))
        row.update(waic(fit))
        row["converged"] = bool(fit.converged)
        rows[name] = row
    table = pd.DataFrame.from_dict(rows, orient="index")

    table["prior_weight"] = np.exp(log_prior)
    table["log_bf_vs_best"] = table["log_z"] - table["log_z"].max()
    table["posterior_prob"] = _softmax(table["log_z"].to_numpy() + log_prior)
    if table["log_z_wide_priors"].notna().all():
        table["posterior_prob_wide_priors"] = _softmax(table["log_z_wide_priors"].to_numpy() + log_prior)
    for name, weight in stacking_weights(named).items():
        table.loc[name, "stacking_weight"] = weight

    if extrapolation:
        held_out = holdout_mask(named, holdout, by)
        for name, fit in named.items():
            for key, value in extrapolation_score(fit, held_out, seed=seed).items():
                table.loc[name, key] = value

    table = table.sort_values("log_z", ascending=False)
    table.attrs["notes"] = {k: v for k, v in NOTES.items() if k in table.columns}
    table.attrs["warnings"] = reliability_warnings(table)
    return table


def reliability_warnings(table: pd.DataFrame) -> list[str]:
    out = []
    for name, row in table.iterrows():
        if not row["converged"]:
            out.append(f"{name}: the fit did not converge; its evidence, LOO and weights are not trustworthy")
        if row["log_z_error"] > 0.5 or not np.isfinite(row["log_z_error"]):
            out.append(f"{name}: the evidence has a large numerical error ({row['log_z_error']:.2f} nats); "
                       f"draw more posterior samples")
        if np.isfinite(row["log_z_laplace"]) and abs(row["log_z_laplace"] - row["log_z"]) > 1.0:
            out.append(f"{name}: Laplace and bridge evidence differ by {row['log_z_laplace'] - row['log_z']:+.1f} "
                       f"nats: the posterior is far from Gaussian (bridge is the estimate to use; if the gap is "
                       f"large, check for several modes)")
        if row["n_bad_k"] > 0:
            out.append(f"{name}: PSIS-LOO unreliable for {int(row['n_bad_k'])} run(s) (Pareto k up to "
                       f"{row['pareto_k_max']:.2f} > {row['good_k']:.2f}): influential runs; elpd_loo is optimistic")
        if row["p_waic_max"] > 0.4:
            out.append(f"{name}: WAIC unreliable (a run has p_waic {row['p_waic_max']:.2f} > 0.4); use elpd_loo")
        if "extrap_converged" in row and row.get("extrap_converged") is False:
            out.append(f"{name}: the refit for the extrapolation score did not converge")
    if "log_z_wide_priors" in table and table["log_z_wide_priors"].notna().all():
        if table["log_z"].idxmax() != table["log_z_wide_priors"].idxmax():
            out.append(f"the evidence ranking depends on the priors: best is {table['log_z'].idxmax()} with the "
                       f"given priors, {table['log_z_wide_priors'].idxmax()} with widened ones")
    if len(table) > 1:
        top = table.sort_values("log_z", ascending=False).iloc[:2]
        gap = top["log_z"].iloc[0] - top["log_z"].iloc[1]
        noise = float(np.hypot(*top["log_z_error"].to_numpy()))
        if gap < 2 * noise:
            out.append(f"the two best families by evidence ({', '.join(top.index)}) differ by {gap:.2f} nats, "
                       f"within twice the numerical error ({noise:.2f}): a tie")
    if "extrap_runs" in table and table["extrap_runs"].max() < 5:
        out.append(f"the extrapolation score rests on {int(table['extrap_runs'].max())} held-out run(s): coarse")
    return out


def format_notes(table: pd.DataFrame) -> str:
    """The plain-language notes and warnings of a comparison, as text."""
    lines = ["What the columns mean:"]
    lines += [f"  {k}: {v}" for k, v in table.attrs.get("notes", {}).items()]
    warn = table.attrs.get("warnings", [])
    if warn:
        lines.append("Reliability warnings:")
        lines += [f"  - {w}" for w in warn]
    return "\n".join(lines)
