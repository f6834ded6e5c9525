"""Posterior predictive at new inputs: the law's mean (parameter uncertainty, and the discrepancy's where the
fit has one) and a new run (with observation noise), as draws and as quantiles."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from bayescale.discrepancy import DRIFT_SITE, NOISE_WEIGHT_SITE, discrepancy_draws, log_axis, walk_draws
from bayescale.posterior import draws
from bayescale.runs import points_from_mapping


@dataclass(frozen=True)
class Prediction:
    """`points`: the inputs (with derived ones); `mean`, `new_run`: draws of shape (draws, points), the
    fit's chains one after the other (`chains` of them)."""

    points: pd.DataFrame
    mean: np.ndarray
    new_run: np.ndarray
    output: str = "loss"
    chains: int = 1

    def to_datatree(self, fit=None):
        """The forecast as an ArviZ DataTree, so ArviZ's functions take it: group "predictions" with the new
        run's draws under the output's name (e.g. "loss") and the law's mean under "<output>_mean", dims
        (chain, draw, point); group "predictions_constant_data" with the inputs of each point. With `fit`
        (the fit that made the forecast), the fit's own groups come too, as PyMC's
        `sample_posterior_predictive(predictions=True, extend_inferencedata=True)` lays them out; ArviZ's
        `az.weight_predictions([...], weights, group="predictions")`, which mixes several fits' forecasts,
        needs that (it copies the first tree's observed_data)."""
        import arviz as az

        chains = self.chains if self.chains > 0 and len(self.new_run) % self.chains == 0 else 1
        by_chain = lambda a: np.asarray(a).reshape(chains, -1, np.shape(a)[-1])  # noqa: E731
        inputs = {str(k): self.points[k].to_numpy() for k in self.points.columns
                  if pd.api.types.is_numeric_dtype(self.points[k])}
        point = np.arange(len(self.points))
        tree = az.from_dict(
            {"predictions": {self.output: by_chain(self.new_run), f"{self.output}_mean": by_chain(self.mean)},
             "predictions_constant_data": inputs},
            pred_coords={"point": point},
            pred_dims={self.output: ["point"], f"{self.output}_mean": ["point"], **{k: ["point"] for k in inputs}},
        )
        if fit is None:
            return tree
        combined = fit.data.copy()
        for group in ("predictions", "predictions_constant_data"):
            combined[group] = tree[group]
        return combined

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


def discrepancy_at(law, likelihood, samples: Mapping[str, np.ndarray], fitted, x: Mapping[str, np.ndarray],
                   key) -> np.ndarray | float:
    """Draws of the discrepancy (log scale) at inputs `x`: (draws, points), or 0.0 without one. For each
    posterior draw the walk is drawn from its posterior given the fitted runs (`fitted`, a `Runs`), then
    interpolated or continued beyond them (`bayescale.discrepancy`)."""
    spec = likelihood.discrepancy
    if spec is None:
        return 0.0
    as_jnp = lambda values: {k: jnp.asarray(v) for k, v in values.items()}  # noqa: E731
    z_fitted = np.asarray(log_axis(law, spec, as_jnp(fitted.x)))
    z_new = np.asarray(log_axis(law, spec, as_jnp(x)))
    law_at_fitted = law_mean_draws(law, samples, fitted.x)                          # (draws, runs)
    se = None if fitted.se is None else jnp.asarray(fitted.se)[None, :]
    sigma = jnp.asarray(samples["sigma"])[:, None]
    variance = np.broadcast_to(np.asarray(likelihood.noise_sd(jnp.asarray(law_at_fitted), {"sigma": sigma}, se)) ** 2,
                               law_at_fitted.shape)
    if NOISE_WEIGHT_SITE in samples:  # Student-t noise as a scale mixture: each run's own precision weight
        variance = variance / np.asarray(samples[NOISE_WEIGHT_SITE])
    residual = np.log(np.asarray(fitted.y))[None, :] - np.log(np.maximum(law_at_fitted, 1e-300))
    key_walk, key_beyond = jax.random.split(key)
    knots = walk_draws(spec, key_walk, samples[DRIFT_SITE], variance, residual, z_fitted)
    return discrepancy_draws(spec, key_beyond, samples[DRIFT_SITE], knots, z_fitted, z_new)


def predictive_draws(law, likelihood, samples: Mapping[str, np.ndarray], fitted, x: Mapping[str, np.ndarray],
                     key) -> tuple[np.ndarray, np.ndarray]:
    """The law's mean (with the discrepancy, if any) and a new run's output at inputs `x`, per posterior draw:
    two (draws, points) arrays. `samples` holds the posterior's sites; `fitted` is the `Runs` the posterior
    was fitted to. Shared by `predict` and the backtests."""
    key_walk, key_new = jax.random.split(key)
    mean = law_mean_draws(law, samples, x) * np.exp(discrepancy_at(law, likelihood, samples, fitted, x, key_walk))
    noise = {k: samples[k] for k in likelihood.noise_names}
    return mean, np.asarray(likelihood.sample_new(key_new, jnp.asarray(mean), noise))


def predict(fit, at: Mapping[str, float | Sequence[float]] | pd.DataFrame, *, seed: int = 0) -> Prediction:
    """Predictions at `at`, e.g. {"N": 70e9, "D": 1.4e12} or a DataFrame of input columns. Inputs the law
    needs are derived when possible (D from C and N).

    A grouped fit needs the group of each point in `at` (its group column): a fitted group uses that
    group's parameters; a group the fit has not seen gets parameters drawn from the fitted between-group
    distribution (partial pooling only), so its interval includes the spread between setups. A multi-output
    fit (`fit(y=[...])`) predicts every output at each point when `at` has no "output" column: rows are
    (point, output) pairs, outputs varying fastest, each output's draws from the same posterior draws."""
    key = jax.random.PRNGKey(seed)
    if fit.grouping is None:
        points = points_from_mapping(at, fit.law, fit.runs.sources)
    else:
        frame = at if isinstance(at, pd.DataFrame) else pd.DataFrame({k: np.atleast_1d(v) for k, v in at.items()})
        if fit.grouping.outputs and fit.grouping.column not in frame.columns:
            # A multi-output fit predicts every output at each point (outputs vary fastest), from the same draws.
            frame = frame.merge(pd.DataFrame({fit.grouping.column: list(fit.runs.group_labels)}), how="cross")
        points = points_from_mapping(frame.drop(columns=[fit.grouping.column], errors="ignore"), fit.law, fit.runs.sources)
    samples = draws(fit, list(fit.data.posterior.data_vars))
    if fit.law.numpyro_model is not None:
        return _predict_raw_model(fit, points, samples, seed)
    if fit.grouping is not None:
        key_group, key = jax.random.split(key)
        samples, points = _at_groups(fit, frame, points, samples, key_group)
    mean, new_run = predictive_draws(fit.law, fit.likelihood, samples, fit.runs, points.x, key)
    return Prediction(points=points.to_frame().reset_index(drop=True), mean=mean, new_run=new_run, output=fit.runs.output,
                      chains=fit.data.posterior.sizes["chain"])


def _at_groups(fit, frame: pd.DataFrame, points, samples, key):
    """Each point's parameters in a grouped fit (see `bayescale.grouping.group_params`)."""
    import dataclasses

    from bayescale.grouping import group_params
    from bayescale.law import data_stats
    from bayescale.runs import DataError

    column = fit.grouping.column
    if column not in frame.columns:
        raise DataError(f"this fit is grouped by {column!r}: give each point's group in column {column!r} "
                        f"(fitted groups: {', '.join(map(str, fit.runs.group_labels))}; any other name is a new group)")
    labels = frame[column].to_numpy()
    known = {str(g): i for i, g in enumerate(fit.runs.group_labels)}
    codes = np.array([known.get(str(g), -1) for g in labels])
    stats = data_stats(jnp.asarray(fit.runs.y), x={k: jnp.asarray(v) for k, v in fit.runs.x.items()})
    params = group_params(fit.law, fit.grouping, samples, stats, codes, key)
    points = dataclasses.replace(points, groups=np.arange(len(labels)), group_labels=tuple(labels), group_column=column)
    return {**samples, **params}, points


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
        chains=fit.data.posterior.sizes["chain"],
    )
