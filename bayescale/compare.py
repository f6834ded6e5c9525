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
- Extrapolation score (optional, refits every family): hold out the largest-compute runs, fit the rest,
  and score the held-out runs: log predictive density, median relative error, 90% interval coverage. For
  scaling laws this is the question that matters: does the law forecast the bigger runs?

`table.attrs["notes"]` explains every column in plain language; `table.attrs["warnings"]` lists what makes
a number unreliable (non-converged fits, high Pareto k, large evidence error, a ranking that flips when the
priors are widened, a Laplace estimate far from the bridge one).
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import arviz as az
import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
from scipy.special import logsumexp

from bayescale.evidence import evidence_report
from bayescale.runs import DataError, Runs, resolve_inputs

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
    ll = np.asarray(fit.data.log_likelihood["y"])
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
        table = az.compare({name: fit.data for name, fit in named.items()}, method="stacking", round_to=None)
    return {name: float(table.loc[name, "weight"]) for name in named}


# ---- extrapolation ----

def compute_of_runs(runs: Runs, law) -> np.ndarray:
    """Training compute of each run (C, or 6 N D, derived where possible); for a law of one input that is
    not N, D or C, that input (the scaling axis)."""
    try:
        values, _ = resolve_inputs(runs.x, ["C"], law.all_derivations())
        return np.asarray(values["C"], float)
    except DataError:
        if len(runs.x) == 1:
            return np.asarray(next(iter(runs.x.values())), float)
        raise DataError(
            f"law {law.name!r}: cannot rank runs by compute from inputs {sorted(runs.x)}; give C, or N and D"
        ) from None


def holdout_split(compute: np.ndarray, holdout: float | int) -> np.ndarray:
    """Boolean mask of the held-out runs: the `holdout` largest-compute ones (a fraction if < 1)."""
    n = len(compute)
    count = int(holdout) if holdout >= 1 else max(1, int(round(holdout * n)))
    if not 0 < count < n - 2:
        raise ValueError(f"holdout {holdout!r} leaves {n - count} of {n} runs to fit; hold out fewer")
    order = np.argsort(compute, kind="stable")
    mask = np.zeros(n, bool)
    mask[order[-count:]] = True
    return mask


def _subset(runs: Runs, keep: np.ndarray) -> Runs:
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


def extrapolation_score(fit, held_out: np.ndarray, *, seed: int = 0, settings=None) -> dict[str, float]:
    """Refit `fit`'s law, likelihood and priors on the runs not `held_out`, and score the held-out runs."""
    from bayescale.fit import fit as run_fit
    from bayescale.posterior import draws
    from bayescale.predictive import law_mean_draws

    if fit.law.numpyro_model is not None:
        raise ValueError(f"law {fit.law.name!r} is a raw NumPyro model: the extrapolation score needs a declared mean")
    train, test = _subset(fit.runs, ~held_out), _subset(fit.runs, held_out)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        grouped = {} if fit.grouping is None else {"pooling": fit.grouping.level, "group_scale": fit.grouping.scale}
        refit = run_fit(train, fit.law, likelihood=fit.likelihood, settings=settings or fit.settings, seed=seed,
                        **grouped)
    samples = draws(refit)
    if refit.grouping is not None:  # each held-out run at its own group's parameters
        from bayescale.grouping import group_params

        samples = {**samples, **group_params(refit.law, refit.grouping, samples, {}, test.groups, jax.random.PRNGKey(seed))}
    mean = law_mean_draws(refit.law, samples, test.x)                       # (draws, held-out runs)
    noise = {k: jnp.asarray(samples[k])[:, None] for k in refit.likelihood.param_names}
    se = None if test.se is None else jnp.asarray(test.se)[None, :]
    log_p = np.asarray(refit.likelihood.distribution(jnp.asarray(mean), noise, se).log_prob(jnp.asarray(test.y)[None, :]))
    lpd_i = logsumexp(log_p, axis=0) - np.log(log_p.shape[0])
    new_run = np.asarray(refit.likelihood.sample_new(jax.random.PRNGKey(seed), jnp.asarray(mean),
                                                     {k: samples[k] for k in refit.likelihood.param_names}))
    low, median, high = np.quantile(new_run, [0.05, 0.5, 0.95], axis=0)
    return {
        "extrap_elpd": float(lpd_i.sum()),
        "extrap_rel_error": float(np.median(np.abs(median / test.y - 1))),
        "extrap_coverage90": float(np.mean((test.y >= low) & (test.y <= high))),
        "extrap_runs": int(held_out.sum()),
        "extrap_converged": bool(refit.converged),
    }


# ---- the table ----

def compare(
    fits: Mapping[str, Any] | Sequence[Any],
    prior_weights: Mapping[str, float] | None = None,
    *,
    extrapolation: bool = False,
    holdout: float | int = 0.2,
    widen_factor: float | None = 2.0,
    cross_check: bool = True,
    seed: int = 0,
) -> pd.DataFrame:
    """Compare fits of different law families to the same runs; see the module docstring for the columns.

    `fits`: a dict name -> Fit, or a list (named by law). `prior_weights`: prior model weights by name
    (default equal; missing names get 0). `extrapolation=True` refits each family without its `holdout`
    largest-compute runs (a fraction, or a count) and scores them. `widen_factor=None` skips the prior
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
        first = named[names[0]]
        held_out = holdout_split(compute_of_runs(first.runs, first.law), holdout)
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
