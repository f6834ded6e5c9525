"""Model averaging: one forecast that carries the doubt between law families.

`average_predict(fits, at, weights=...)` mixes the posterior predictive draws of several fits: a share
`weight_k` of the returned draws comes from fit k. The weights are posterior model probabilities (Bayesian
model averaging: "evidence"), stacking weights ("stacking", Yao et al. 2018: better when no family is
true), or given by the user. It returns the same `Prediction` as `bayescale.predict`, so quantiles, plots
and anything else that takes a single fit's prediction take the averaged one.

`average_downstream(fits, at, weights="stacking")` does the same for downstream chains with different link
laws (`bayescale.downstream`): the weights are the links' stacking weights on the leave-future-out scores
of `bayescale.link_comparison.compare_links`, and the result is a `DownstreamPrediction`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from bayescale.predictive import Prediction, predict

WEIGHT_COLUMNS = {"evidence": "posterior_prob", "stacking": "stacking_weight"}


def model_weights(comparison: pd.DataFrame, by: str = "evidence") -> dict[str, float]:
    """Weights by fit name from a `bayescale.compare` table: "evidence" (posterior model probabilities) or
    "stacking"."""
    if by not in WEIGHT_COLUMNS:
        raise ValueError(f"weights by {by!r}: choose 'evidence', 'stacking', or give a dict of weights")
    return {str(k): float(v) for k, v in comparison[WEIGHT_COLUMNS[by]].items()}


def _named(fits) -> dict[str, Any]:
    from bayescale.compare import _named as named

    return named(fits)


def mixture_counts(weights: np.ndarray, total: int) -> np.ndarray:
    """Draws per component: `total` split in proportion to `weights` (largest remainders), so the mixture is
    exact up to one draw and does not add multinomial noise."""
    share = weights * total
    counts = np.floor(share).astype(int)
    counts[np.argsort(-(share - counts))[: total - counts.sum()]] += 1
    return counts


def average_predict(
    fits: Mapping[str, Any] | Sequence[Any],
    at,
    weights: str | Mapping[str, float] = "evidence",
    *,
    comparison: pd.DataFrame | None = None,
    num_draws: int | None = None,
    seed: int = 0,
) -> Prediction:
    """Posterior predictive at `at` mixed across `fits` (dict name -> Fit, or a list named by law).

    `weights`: "evidence", "stacking" (read from `comparison`, or computed with `bayescale.compare`), or a
    dict name -> weight (normalised; names left out get 0). `num_draws`: draws in the mixture (default:
    the smallest number of draws among the fits with positive weight).
    """
    named = _named(fits)
    if isinstance(weights, str):
        if comparison is None:
            from bayescale.compare import compare

            comparison = compare(named, seed=seed)
        weights = model_weights(comparison, weights)
    w = normalised_weights(weights, list(named))
    predictions = {name: predict(fit, inputs_for(fit, at), seed=seed) for name, fit in named.items()}
    picks, order = mixture_draws(w, [len(p.mean) for p in predictions.values()], num_draws, np.random.default_rng(seed))
    return Prediction(
        points=_merged_points(predictions.values()),
        mean=np.concatenate([p.mean[index] for p, index in zip(predictions.values(), picks)])[order],
        new_run=np.concatenate([p.new_run[index] for p, index in zip(predictions.values(), picks)])[order],
        output=next(iter(predictions.values())).output,
    )


def normalised_weights(weights: Mapping[str, float], names: Sequence[str]) -> np.ndarray:
    """`weights` (name -> weight; names left out get 0) as an array over `names` that sums to 1."""
    unknown = sorted(set(weights) - set(names))
    if unknown:
        raise KeyError(f"weights name unknown fits {unknown}; fits are {sorted(names)}")
    w = np.array([float(weights.get(name, 0.0)) for name in names])
    if np.any(w < 0) or not np.all(np.isfinite(w)) or w.sum() <= 0:
        raise ValueError(f"model weights must be non-negative, finite and not all zero; got {dict(zip(names, w))}")
    return w / w.sum()


def mixture_draws(w: np.ndarray, available: Sequence[int], num_draws: int | None, rng: np.random.Generator):
    """Which draws of each component make the mixture of `num_draws` draws (default: the fewest any component
    with positive weight has): a share `w[k]` (`mixture_counts`) of component k's `available[k]` draws,
    without replacement when there are enough, and a permutation `order` that shuffles the concatenated
    picks, so any leading slice of the mixture's draws is itself a mixture."""
    total = int(num_draws or min(n for n, weight in zip(available, w) if weight > 0))
    counts = mixture_counts(w, total)
    picks = [rng.choice(n, size=int(c), replace=c > n) for c, n in zip(counts, available)]
    return picks, rng.permutation(total)


def average_downstream(
    fits: Mapping[str, Any],
    at,
    weights: str | Mapping[str, float] = "stacking",
    *,
    comparison: pd.DataFrame | None = None,
    loss: Sequence[float] | None = None,
    held_out: int = 1,
    num_draws: int | None = None,
    seed: int = 0,
    error: bool = False,
):
    """Downstream forecasts at `at` mixed across chains with different links (dict name -> DownstreamFit,
    fitted to the same runs and tasks).

    `weights`: "stacking" (the `stacking_weight` column of `comparison`, a
    `bayescale.link_comparison.compare_links` table, computed with `held_out` when not given) or a dict
    name -> weight. `loss=`: measured losses of the new runs, as in `DownstreamFit.predict`. Metrics are
    accuracies whatever each chain's link, errors with `error=True`. Returns a `DownstreamPrediction`.
    """
    from bayescale.downstream import predict_downstream

    named = dict(fits)
    if not named:
        raise ValueError("give at least one downstream fit")
    tasks = {tuple(fit.runs.tasks) for fit in named.values()}
    if len(tasks) != 1:
        raise ValueError(f"the fits forecast different tasks: {sorted(tasks)}")
    if isinstance(weights, str):
        if weights != "stacking":
            raise ValueError(f"downstream weights {weights!r}: choose 'stacking' or give a dict of weights")
        if comparison is None:
            from bayescale.link_comparison import compare_links

            comparison = compare_links(named, held_out)
        weights = model_weights(comparison, "stacking")
    predictions = {name: predict_downstream(fit, at, seed=seed, loss=loss, error=error) for name, fit in named.items()}
    return mix_downstream(predictions, weights, num_draws=num_draws, seed=seed)


def mix_downstream(predictions: Mapping[str, Any], weights: Mapping[str, float], *, num_draws: int | None = None,
                   seed: int = 0):
    """The mixture of `DownstreamPrediction`s (name -> prediction, same points and tasks) with `weights`
    (name -> weight, normalised; names left out get 0): loss, every task and the task average come from the
    same draws of the same component, so their joint distribution is kept."""
    from bayescale.downstream import DownstreamPrediction, correct_from_output

    names = list(predictions)
    w = normalised_weights(weights, names)
    first = predictions[names[0]]
    for name, p in predictions.items():
        if p.tasks != first.tasks or p.composites != first.composites or len(p.points) != len(first.points):
            raise ValueError(f"prediction {name!r} is not at the same points, tasks and composites as {names[0]!r}")
    outputs = {p.output for p in predictions.values()}
    output = outputs.pop() if len(outputs) == 1 else "accuracy"

    def values(p, table):
        return {t: table[t] if p.output == output else correct_from_output(p.output, table[t])
                for t in (*p.tasks, *p.composites)}

    converted = {name: (values(p, p.metric), values(p, p.new_run)) for name, p in predictions.items()}
    picks, order = mixture_draws(w, [len(predictions[n].loss) for n in names], num_draws, np.random.default_rng(seed))

    def mixed(get):
        return np.concatenate([get(name)[index] for name, index in zip(names, picks)])[order]

    return DownstreamPrediction(
        points=first.points,
        loss=mixed(lambda n: predictions[n].loss),
        metric={t: mixed(lambda n: converted[n][0][t]) for t in (*first.tasks, *first.composites)},
        new_run={t: mixed(lambda n: converted[n][1][t]) for t in (*first.tasks, *first.composites)},
        output=output,
        tasks=first.tasks,
        composites=first.composites,
    )


def inputs_for(fit, at):
    """`at` with the fit's own input names added where the fit mapped a column to an input: a power law in
    x fitted with columns={"x": "N"} is predicted at the N of `at`."""
    renames = {inp: col for inp, col in fit.runs.sources.items() if inp in fit.law.inputs and col != inp}
    if isinstance(at, pd.DataFrame):
        extra = {inp: at[col] for inp, col in renames.items() if inp not in at.columns and col in at.columns}
        return at.assign(**extra) if extra else at
    extra = {inp: at[col] for inp, col in renames.items() if inp not in at and col in at}
    return {**at, **extra} if extra else at


def _merged_points(predictions) -> pd.DataFrame:
    """The points with every input some family used (one family may use C, another N and D)."""
    points = None
    for prediction in predictions:
        frame = prediction.points.reset_index(drop=True)
        if points is None:
            points = frame.copy()
            continue
        if len(frame) != len(points):
            raise ValueError("the fits resolved a different number of points; give the same `at` inputs")
        for column in frame.columns:
            if column not in points.columns:
                points[column] = frame[column].to_numpy()
    return points
