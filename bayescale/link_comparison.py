"""Choosing a link law for downstream metrics: which curve from loss to accuracy to trust beyond the data.

Two link laws can fit a ladder's accuracies equally well and still part ways beyond it (an exponential
decay of error keeps accelerating; a sigmoid between the chance level and a ceiling saturates). Two scores,
both computed on the fitted runs only, tell them apart:

- `elpd_loo`: PSIS-LOO (ArviZ `az.loo`) over every observed (task, run) accuracy: how well the chain
  predicts one left-out evaluation. It rewards the fit inside the ladder.
- the leave-future-out score (`holdout_score`): the accuracies of the `held_out` runs with the lowest
  measured loss (the largest models) are masked, the chain is refitted on the rest (their losses stay in:
  they inform the loss law), and the masked accuracies are scored exactly: held-out log predictive density
  (`elpd_future`, summed over tasks and runs) and the relative error of the posterior median of the task
  average. It rewards what a scaling forecast needs: extrapolation to lower loss.

`compare_links({name: DownstreamFit})` puts both in one table, best `elpd_future` first, with stacking
weights (`stacking_weights`, Yao et al. 2018: the mixture of the links that best predicts the held-out
accuracies), which `bayescale.averaging.average_downstream` uses to mix the links' forecasts. All fits must be
to the same runs and tasks, under metric likelihoods on the same scale (the Beta likelihood scores a
density of fractions, the Binomial families a probability of counts: their elpds cannot be compared).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import warnings
from collections.abc import Mapping
from pathlib import Path

import arviz as az
import numpy as np
import pandas as pd
from jax.scipy.special import logsumexp

from bayescale.inference import SamplerSettings
from bayescale.model import log_likelihood_in_blocks


def loo_metric(fit) -> dict[str, float]:
    """PSIS-LOO over the observed (task, run) accuracies of a downstream fit (masked cells left out)."""
    observed = np.asarray(fit.runs.metric_mask)
    ll = np.asarray(fit.data.log_likelihood["metric"])  # (chains, draws, tasks, runs)
    ll = ll.reshape(*ll.shape[:2], -1)[..., observed.ravel()]
    # A cell whose log-likelihood is the same in every draw (a count of 0 at a probability clipped to ~0)
    # is predicted exactly without it: its LOO density is that value. PSIS cannot smooth a constant.
    constant = np.ptp(ll, axis=(0, 1)) < 1e-9
    elpd_i = ll[0, 0].copy()
    k = np.zeros(ll.shape[-1])
    good_k = 0.7
    if (~constant).any():
        varying = ll[..., ~constant]
        data = az.from_dict({"posterior": {"_": np.zeros(varying.shape[:2])}, "log_likelihood": {"metric": varying}},
                            dims={"metric": ["observation"]})
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # bad Pareto k are reported as columns instead
            result = az.loo(data, var_name="metric", pointwise=True)
        elpd_i[~constant] = np.asarray(result.elpd_i)
        k[~constant] = np.asarray(result.pareto_k)
        good_k = float(result.good_k)
    return {"elpd_loo": float(elpd_i.sum()), "elpd_loo_se": _se(elpd_i),
            "pareto_k_max": float(np.max(k)), "n_bad_k": int(np.sum(k > good_k)), "observations": int(observed.sum()),
            "pointwise_loo": elpd_i}


def _se(pointwise) -> float:
    """Standard error of a sum of pointwise elpds (as ArviZ reports it)."""
    return float(np.sqrt(len(pointwise)) * np.std(pointwise))


def future_runs(runs, held_out: int) -> np.ndarray:
    """Indices of the `held_out` runs with accuracies and the lowest measured loss (the largest models)."""
    if held_out < 1:
        raise ValueError(f"held_out must be at least 1 run; got {held_out}")
    candidates = np.flatnonzero(runs.law_mask & runs.metric_mask.any(axis=0))  # finished runs, not checkpoints
    if len(candidates) <= held_out + 1:
        raise ValueError(
            f"only {len(candidates)} runs have both a loss and accuracies: holding out {held_out} leaves too few "
            f"to fit the link"
        )
    return candidates[np.argsort(runs.loss[candidates])[:held_out]]


def holdout_score(fit, held_out: int = 1, *, seed: int | None = None, settings: SamplerSettings | None = None) -> dict:
    """Leave-future-out score of a downstream fit's link (see the module docstring). The refit uses the
    fit's laws, likelihoods, pooling and sampler settings unless `settings` is given."""
    from bayescale import downstream as ds

    runs = fit.runs
    future = future_runs(runs, held_out)
    accuracy = runs.accuracy.copy()
    accuracy[:, future] = np.nan
    past = dataclasses.replace(runs, accuracy=accuracy)
    spec = fit.spec
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the refit's convergence is reported in the result
        refit = ds.fit_downstream(
            past, loss_law=spec.loss_law, link=spec.link, likelihood=spec.loss_likelihood,
            metric_likelihood=spec.metric_likelihood, pooling=spec.pooling, shared=spec.shared, run_effect=spec.run_effect,
            settings=settings or fit.settings, seed=fit.seed if seed is None else seed,
        )
    # Exact held-out density: every posterior draw of the refit scores the masked accuracies.
    model = ds.chain_model(refit.spec)
    args, kwargs = ds.model_inputs(runs, refit.spec.metric_likelihood)
    ll = np.asarray(log_likelihood_in_blocks(model, ds.posterior_draws(refit), args, kwargs)["metric"])  # (draws, tasks, runs)
    observed = runs.metric_mask[:, future]
    cells = ll[:, :, future][:, observed]                                       # (draws, observed held-out)
    elpd_cells = np.asarray(logsumexp(cells, axis=0)) - np.log(len(cells))

    at = {k: v[future] for k, v in runs.x.items()}
    prediction = refit.predict(at, loss=runs.loss[future], seed=refit.seed)
    # The task average of each held-out run, over the tasks it has, on the link's output scale.
    values = runs.accuracy[:, future]
    if prediction.output == "error":
        values = 1.0 - values
    measured = np.nanmean(np.where(observed, values, np.nan), axis=0)
    draws = np.stack([prediction.new_run[t] for t in runs.tasks], axis=1)   # (draws, tasks, runs)
    average = np.nanmean(np.where(observed[None], draws, np.nan), axis=1)
    lo, median, hi = np.quantile(average, [0.05, 0.5, 0.95], axis=0)
    return {
        "held_out_runs": [str(runs.labels[r]) for r in future],
        "elpd_future": float(elpd_cells.sum()),
        "elpd_future_se": _se(elpd_cells),
        "future_average_rel_error": float(np.max(np.abs((median - measured) / measured))),
        "future_average_covered_90": bool(np.all((lo <= measured) & (measured <= hi))),
        "future_refit_converged": bool(refit.converged),
        "pointwise_future": elpd_cells,
    }


FUTURE_KEYS = ("held_out_runs", "elpd_future", "elpd_future_se", "future_average_rel_error",
               "future_average_covered_90", "future_refit_converged", "pointwise_future")


def stacking_weights(pointwise: Mapping[str, np.ndarray], *, tol: float = 1e-10, max_iter: int = 100_000) -> dict[str, float]:
    """Stacking weights from pointwise log predictive densities (name -> one value per held-out observation,
    the same observations for every name): the weights w on the simplex that maximise
    sum_i log sum_k w_k exp(elpd_ik) (Yao et al. 2018). Solved by EM over the mixture weights (each step
    raises the objective; the objective is concave, so it converges to the maximum)."""
    names = list(pointwise)
    if not names:
        raise ValueError("give pointwise densities of at least one fit")
    shapes = {np.shape(pointwise[n]) for n in names}
    if len(shapes) != 1 or len(next(iter(shapes))) != 1:
        raise ValueError(f"pointwise densities must be one-dimensional and of the same length for every fit; "
                         f"got shapes {sorted(shapes)}")
    elpd = np.stack([np.asarray(pointwise[n], float) for n in names], axis=1)     # (observations, fits)
    if not np.all(np.isfinite(elpd)):
        raise ValueError("pointwise densities must be finite")
    # Densities relative to each observation's best: the weights do not change, exp no longer underflows.
    density = np.exp(elpd - elpd.max(axis=1, keepdims=True))
    w = np.full(len(names), 1.0 / len(names))
    for _ in range(max_iter):
        responsibility = w * density / (density @ w)[:, None]
        new = responsibility.mean(axis=0)
        done = np.max(np.abs(new - w)) < tol
        w = new
        if done:
            break
    return dict(zip(names, (float(v) for v in w / w.sum())))


def runs_fingerprint(runs) -> str:
    """A digest of what a link score is computed on (tasks, accuracies, losses, which rows inform the loss
    law): scores compare only when it is the same."""
    digest = hashlib.sha256("\x1f".join(map(str, runs.tasks)).encode())
    for values in (runs.accuracy, runs.loss, runs.law_mask):
        array = np.ascontiguousarray(np.asarray(values, dtype=float))
        digest.update(str(array.shape).encode())
        digest.update(np.where(np.isnan(array), -1.2345e300, array).tobytes())
    return digest.hexdigest()[:16]


def link_score(fit, held_out: int = 1, *, future: bool = True) -> dict:
    """One fit's row of `compare_links`, with its pointwise values (`pointwise_loo`, `pointwise_future`) and
    what it was computed on (`runs`: `runs_fingerprint`; `metric_scale`; `held_out`), so that scores computed
    in separate processes (`save_link_score`, CLI `bayescale score-link`) are compared later."""
    score = {"link": fit.link.name, "pooling": fit.spec.pooling, "converged": bool(fit.converged)}
    score.update(loo_metric(fit))
    if future:
        score.update(holdout_score(fit, held_out))
    score.update(runs=runs_fingerprint(fit.runs), held_out=int(held_out) if future else 0,
                 metric_scale="density" if fit.spec.metric_likelihood.family == "beta" else "counts")
    return score


def save_link_score(score: Mapping, path) -> Path:
    """Write a `link_score` as JSON (arrays as lists); read it back with `load_link_score`."""
    path = Path(path)
    data = {k: (np.asarray(v).tolist() if isinstance(v, np.ndarray) else v) for k, v in score.items()}
    path.write_text(json.dumps({"kind": "bayescale link score", **data}, indent=1))
    return path


def load_link_score(path) -> dict:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"{path}: not a readable link score ({err})") from None
    if not isinstance(data, dict) or data.pop("kind", None) != "bayescale link score":
        raise ValueError(f"{path}: not a link score written by `bayescale score-link` / save_link_score")
    return {k: (np.asarray(v, float) if k.startswith("pointwise_") else v) for k, v in data.items()}


def compare_links(fits: Mapping[str, object], held_out: int = 1, *, future: bool = True) -> pd.DataFrame:
    """One row per named downstream fit: PSIS-LOO over the observed accuracies and (when `future`) the
    leave-future-out score of its link. Fits must be to the same runs and tasks. Sorted by `elpd_future`
    (or `elpd_loo`), best first; `elpd_*_diff` is each row minus the best, and `elpd_*_diff_se` the standard
    error of that difference from the paired pointwise values (the same cells score every fit), which is
    what tells a real difference from noise. `stacking_weight`: the stacking weights of the fits on the same
    pointwise scores (`stacking_weights`), for `bayescale.averaging.average_downstream`.

    A value of `fits` may be a score already computed (`link_score`, or `load_link_score` of a file that
    `bayescale score-link` wrote in another process): the leave-future-out refits, the slow part, then run
    wherever and whenever suits. Scores must be of the same runs and, with `future`, of the same `held_out`."""
    if len(fits) < 1:
        raise ValueError("give at least one downstream fit")
    scores = {name: dict(fit) if isinstance(fit, Mapping) else link_score(fit, held_out, future=future)
              for name, fit in fits.items()}
    first_name, first = next(iter(scores.items()))
    for name, score in scores.items():
        if score["runs"] != first["runs"]:
            raise ValueError(f"fit {name!r} is not to the same runs and tasks as {first_name!r}")
        if score["metric_scale"] != first["metric_scale"]:
            raise ValueError(
                f"fit {name!r} and {first_name!r} score accuracies on different scales (a Beta density of "
                f"fractions against probabilities of counts): compare links under the same metric likelihood"
            )
        if future and ("pointwise_future" not in score or score["held_out"] != held_out):
            raise ValueError(f"the score of {name!r} has no leave-future-out part with held_out={held_out} "
                             f"(it was computed with held_out={score['held_out']}; 0 means none)")
    rows, pointwise = {}, {}
    for name, score in scores.items():
        row = {k: v for k, v in score.items() if k not in ("runs", "held_out", "metric_scale")}
        if not future:
            row = {k: v for k, v in row.items() if k not in FUTURE_KEYS}
        pointwise[name] = {k: row.pop(f"pointwise_{k}") for k in ("loo", "future") if f"pointwise_{k}" in row}
        rows[name] = row
    table = pd.DataFrame.from_dict(rows, orient="index")
    key = "elpd_future" if future else "elpd_loo"
    table = table.sort_values(key, ascending=False)
    best = table.index[0]
    for kind in pointwise[best]:
        column = f"elpd_{kind}"
        table[f"{column}_diff"] = table[column] - table.loc[best, column]
        table[f"{column}_diff_se"] = [_se(pointwise[name][kind] - pointwise[best][kind]) for name in table.index]
    kind = "future" if future else "loo"
    weights = stacking_weights({name: pointwise[name][kind] for name in table.index})
    table["stacking_weight"] = [weights[name] for name in table.index]
    return table
