"""Posterior predictive at new inputs: the law's mean (parameter uncertainty only) and a new run (with
observation noise), as draws and as quantiles."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from bayescale.posterior import draws
from bayescale.runs import points_from_mapping


@dataclass(frozen=True)
class Prediction:
    """`points`: the inputs (with derived ones); `mean`, `new_run`: draws of shape (draws, points)."""

    points: pd.DataFrame
    mean: np.ndarray
    new_run: np.ndarray
    output: str = "loss"

    def quantiles(self, q: Sequence[float] = (0.05, 0.5, 0.95)) -> pd.DataFrame:
        table = self.points.copy()
        for name, values in (("mean", self.mean), ("new_run", self.new_run)):
            for level in q:
                table[f"{name}_q{100 * level:g}"] = np.quantile(values, level, axis=0)
        return table

    def to_dict(self, q: Sequence[float] = (0.05, 0.5, 0.95)) -> dict:
        return {"output": self.output, "points": self.quantiles(q).to_dict(orient="records")}


def law_mean_draws(law, params: Mapping[str, np.ndarray], x: Mapping[str, np.ndarray]) -> np.ndarray:
    """The law's mean for every posterior draw at every point: (draws, points)."""
    x = {k: jnp.asarray(v) for k, v in x.items()}
    names = list(law.params)
    stacked = {k: jnp.asarray(params[k]) for k in names}
    return np.asarray(jax.vmap(lambda p: law.mean(p, x))(stacked))


def predict(fit, at: Mapping[str, float | Sequence[float]] | pd.DataFrame, *, seed: int = 0) -> Prediction:
    """Predictions at `at`, e.g. {"N": 70e9, "D": 1.4e12} or a DataFrame of input columns. Inputs the law
    needs are derived when possible (D from C and N)."""
    points = points_from_mapping(at, fit.law)
    samples = draws(fit)
    if fit.law.numpyro_model is not None:
        return _predict_raw_model(fit, points, samples, seed)
    mean = law_mean_draws(fit.law, samples, points.x)
    noise = {k: samples[k] for k in fit.likelihood.param_names}
    new_run = np.asarray(fit.likelihood.sample_new(jax.random.PRNGKey(seed), jnp.asarray(mean), noise))
    return Prediction(points=points.to_frame().reset_index(drop=True), mean=mean, new_run=new_run, output=fit.runs.output)


def _predict_raw_model(fit, points, samples, seed) -> Prediction:
    """A raw NumPyro model exposes its mean as a deterministic site "mean"; new runs come from site "y"."""
    from numpyro.infer import Predictive

    model = fit.law.numpyro_model
    stats = {"y_min": jnp.min(jnp.asarray(fit.runs.y)), "y_max": jnp.max(jnp.asarray(fit.runs.y))}
    x = {k: jnp.asarray(v) for k, v in points.x.items()}
    latent = {k: v for k, v in samples.items()}
    out = Predictive(model, latent, return_sites=["mean", "y"])(jax.random.PRNGKey(seed), x, stats)
    if "mean" not in out:
        raise KeyError("a raw NumPyro model must record its mean as numpyro.deterministic('mean', ...)")
    return Prediction(
        points=points.to_frame().reset_index(drop=True),
        mean=np.asarray(out["mean"]),
        new_run=np.asarray(out["y"]),
        output=fit.runs.output,
    )
