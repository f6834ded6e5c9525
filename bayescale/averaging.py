"""Model averaging: one forecast that carries the doubt between law families.

`average_predict(fits, at, weights=...)` mixes the posterior predictive draws of several fits: a share
`weight_k` of the returned draws comes from fit k. The weights are posterior model probabilities (Bayesian
model averaging: "evidence"), stacking weights ("stacking", Yao et al. 2018: better when no family is
true), or given by the user. It returns the same `Prediction` as `bayescale.predict`, so quantiles, plots
and anything else that takes a single fit's prediction take the averaged one.
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
    unknown = sorted(set(weights) - set(named))
    if unknown:
        raise KeyError(f"weights name unknown fits {unknown}; fits are {sorted(named)}")
    w = np.array([float(weights.get(name, 0.0)) for name in named])
    if np.any(w < 0) or not np.all(np.isfinite(w)) or w.sum() <= 0:
        raise ValueError(f"model weights must be non-negative, finite and not all zero; got {dict(zip(named, w))}")
    w = w / w.sum()

    predictions = {name: predict(fit, inputs_for(fit, at), seed=seed) for name, fit in named.items()}
    used = [name for name, weight in zip(named, w) if weight > 0]
    total = int(num_draws or min(len(predictions[name].mean) for name in used))
    counts = mixture_counts(w, total)
    rng = np.random.default_rng(seed)
    means, new_runs = [], []
    for (name, prediction), count in zip(predictions.items(), counts):
        if count == 0:
            continue
        available = len(prediction.mean)
        index = rng.choice(available, size=count, replace=count > available)
        means.append(prediction.mean[index])
        new_runs.append(prediction.new_run[index])
    order = rng.permutation(total)
    return Prediction(
        points=_merged_points(predictions.values()),
        mean=np.concatenate(means)[order],
        new_run=np.concatenate(new_runs)[order],
        output=next(iter(predictions.values())).output,
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
