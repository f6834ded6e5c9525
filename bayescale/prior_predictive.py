"""Prior predictive check: what a law and its priors say about the runs before seeing their outputs.

`prior_predictive(law, table)` draws the parameters from the prior (the jitted `bayescale.model.prior_draws`,
the same draws `fit` stores in its DataTree) and evaluates, at every run's inputs, the law's mean and a new run
(mean plus observation noise). `PriorPredictive.quantiles()` tabulates them next to the observed outputs, and
`PriorPredictive.verdict()` flags the two ways a prior goes wrong:

- too tight: some observed runs lie outside the central 99% prior predictive band (the prior rules out data
  that was actually measured);
- too loose: the 99% band is more than 10x wider than the whole observed range of the output (the prior
  barely says what a loss looks like; with few runs the posterior will then lean on it in unexpected ways).

`plot_prior_predictive` (in `bayescale.plots`) draws prior curves against the data. CLI:
`bayescale prior-check DATA --law NAME --column N=... [--json]`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import jax
import numpy as np
import pandas as pd

from bayescale.fit import _check_prior_names, model_inputs
from bayescale.law import Law, PriorSpec, get_law
from bayescale.likelihood import Likelihood, as_likelihood
from bayescale.model import law_model, prior_draws
from bayescale.predictive import law_mean_draws
from bayescale.runs import Runs, runs_from_table

BAND = (0.005, 0.995)   # the central 99% band the verdict is judged on
LOOSE_RATIO = 10.0      # band width / observed range above which a prior counts as too loose




class PriorWarning(UserWarning):
    """Observed data lie outside what the priors can produce: the priors likely assume other units or scales."""

@dataclass(frozen=True)
class PriorPredictive:
    """Prior draws at the runs' inputs: `mean` (law mean) and `new_run` (with noise), each (draws, runs);
    `params`: prior draws of each parameter, (draws,)."""

    law: Law
    runs: Runs
    mean: np.ndarray
    new_run: np.ndarray
    params: dict[str, np.ndarray]

    def quantiles(self, q=(BAND[0], 0.05, 0.5, 0.95, BAND[1])) -> pd.DataFrame:
        """Per run: inputs, observed output, and quantiles of the prior mean and new run (non-finite draws,
        from extreme prior corners, are left out and counted in `nonfinite`)."""
        table = self.runs.to_frame().reset_index(drop=True)
        for name, values in (("mean", self.mean), ("new_run", self.new_run)):
            finite = np.where(np.isfinite(values), values, np.nan)
            for level in q:
                table[f"{name}_q{100 * level:g}"] = np.nanquantile(finite, level, axis=0)
        table["nonfinite"] = (~np.isfinite(self.new_run)).sum(axis=0)
        return table

    def verdict(self, band=BAND, loose_ratio: float = LOOSE_RATIO) -> dict:
        """Numbers and flags: `outside` (labels of runs outside the band), `too_tight`, `band_to_range`
        (median over runs of band width / observed range), `decades` (median log10 of band hi / lo),
        `too_loose`, and a one-line `message`."""
        y = np.asarray(self.runs.y, float)
        finite = np.where(np.isfinite(self.new_run), self.new_run, np.nan)
        lo, hi = np.nanquantile(finite, band[0], axis=0), np.nanquantile(finite, band[1], axis=0)
        outside = (y < lo) | (y > hi)
        spread = float(np.ptp(y)) or float(np.abs(y).max()) or 1.0
        band_to_range = float(np.median((hi - lo) / spread))
        with np.errstate(divide="ignore", invalid="ignore"):
            decades = float(np.median(np.log10(hi / lo)))
        too_tight, too_loose = bool(outside.any()), band_to_range > loose_ratio
        level = f"{100 * (band[1] - band[0]):g}%"
        if too_tight:
            message = (f"prior too tight: {int(outside.sum())} of {len(y)} observed runs lie outside the {level} prior "
                       f"predictive band (rows {', '.join(map(str, self.runs.labels[outside][:8]))})")
        elif too_loose:
            message = (f"prior too loose: the {level} prior predictive band is {band_to_range:.3g}x the observed range "
                       f"of {self.runs.output} ({decades:.2g} decades)")
        else:
            message = f"prior plausible: every run inside the {level} band, band {band_to_range:.3g}x the observed range"
        return {"too_tight": too_tight, "too_loose": too_loose, "outside": self.runs.labels[outside].tolist(),
                "band_to_range": band_to_range, "decades": decades, "band": list(band), "message": message}


def prior_predictive(
    law: str | Law,
    data: pd.DataFrame | str | Path | Runs,
    *,
    columns: Mapping[str, str] | None = None,
    y: str = "loss",
    se: str | None = None,
    likelihood: str | Likelihood = "normal",
    priors: Mapping[str, PriorSpec] | None = None,
    num_draws: int = 1000,
    seed: int = 0,
    allow_repeats: bool = False,
) -> PriorPredictive:
    """Draw `num_draws` times from the prior of `law` (with `priors` overrides, as in `fit`) at the inputs of
    the runs in `data`. The observed outputs are read for the data-dependent priors (E below the smallest loss)
    and for the verdict, never conditioned on."""
    law = get_law(law)
    likelihood = as_likelihood(likelihood, law=law)
    priors = dict(priors or {})
    _check_prior_names(priors, law, likelihood)
    law, likelihood = law.with_priors(priors), likelihood.with_priors(priors)
    runs = data if isinstance(data, Runs) else runs_from_table(
        data, law, columns=columns, y=y, se=se, allow_repeats=allow_repeats
    )
    model = law_model(law, likelihood)
    args, kwargs = model_inputs(runs)
    sampled = {k: np.asarray(v) for k, v in prior_draws(model, jax.random.PRNGKey(seed), args, kwargs, num_draws).items()}
    if law.numpyro_model is not None:
        if "mean" not in sampled:
            raise KeyError("a raw NumPyro model must record its mean as numpyro.deterministic('mean', ...)")
        mean = sampled["mean"]
    else:
        with np.errstate(all="ignore"):
            mean = law_mean_draws(law, {k: sampled[k] for k in law.params}, runs.x)
    params = {k: v for k, v in sampled.items() if np.ndim(v) == 1 and not k.startswith("_")}
    return PriorPredictive(law=law, runs=runs, mean=mean, new_run=sampled["y"], params=params)
