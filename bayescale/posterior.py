"""The posterior in the user's units: draws and a summary table."""

from __future__ import annotations

import numpy as np
import pandas as pd


def draws(fit, names=None) -> dict[str, np.ndarray]:
    """Posterior draws flattened over chains: {name: array of shape (chains * draws, ...)}. By default the
    parameters in the user's units (internal sampling sites, named with a leading underscore, are left out)."""
    posterior = fit.data.posterior
    names = list(names) if names is not None else [n for n in posterior.data_vars if not str(n).startswith("_")]
    out = {}
    for name in names:
        values = np.asarray(posterior[name])
        out[name] = values.reshape(-1, *values.shape[2:])
    return out


def summary(fit, quantiles=(0.05, 0.5, 0.95)) -> pd.DataFrame:
    """Per parameter: mean, sd, quantiles (default: the 90% equal-tailed interval and median), MAP,
    R-hat and bulk/tail ESS."""
    samples = draws(fit)
    rows = {}
    for name, values in samples.items():
        row = {"mean": float(np.mean(values)), "sd": float(np.std(values, ddof=1))}
        for q in quantiles:
            row[f"q{100 * q:g}"] = float(np.quantile(values, q))
        row["map"] = fit.map.get(name, np.nan)
        rows[name] = row
    table = pd.DataFrame(rows).T
    return table.join(fit.diagnostics.table)
