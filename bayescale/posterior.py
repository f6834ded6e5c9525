"""The posterior in the user's units: draws and a summary table."""

from __future__ import annotations

import numpy as np
import pandas as pd


def observed_var(dt) -> str:
    """The name of a fit's observed variable in its DataTree (observed_data, log_likelihood, posterior and
    prior predictive): the output column's name (e.g. "loss"), or "y" where that name is taken by a parameter
    or an input (and in fits saved before the output named it)."""
    names = [str(n) for n in dt.observed_data.data_vars]
    return names[0] if len(names) == 1 else "y"


def observed_name(output, taken) -> str:
    """The name `datatree_from_draws` gives the observed variable: the output column's name unless it is empty,
    not text, or one of `taken` (parameters, inputs, "se", "group"), then "y"."""
    if isinstance(output, str) and output and output not in set(taken):
        return output
    return "y"


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
    """Per parameter: mean, sd, quantiles (default: the 90% equal-tailed interval and median), MAP, the
    Monte Carlo standard errors of the mean and sd (`az.mcse`), R-hat and bulk/tail ESS."""
    import arviz as az

    samples = draws(fit)
    mcse = {method: az.mcse(fit.data, method=method, var_names=list(samples)) for method in ("mean", "sd")}
    rows = {}
    for name, values in samples.items():
        errors = {f"mcse_{m}": np.asarray(mcse[m][name], float).reshape(-1) for m in mcse}
        if values.ndim == 1:
            rows[name] = {**_row(values, quantiles, fit.map.get(name, np.nan)), **{k: float(v[0]) for k, v in errors.items()}}
            continue
        for i, label in enumerate(_element_labels(fit, name, values.shape[1])):
            rows[f"{name}[{label}]"] = {**_row(values[:, i], quantiles, np.nan), **{k: float(v[i]) for k, v in errors.items()}}
    table = pd.DataFrame(rows).T
    return table.join(_diagnostics_by_row(fit, table.index))


def draws_frame(fit) -> pd.DataFrame:
    """The posterior draws as a table: one row per (chain, draw), one column per parameter (a vector
    parameter's elements as "name[label]"), in the user's units; internal sampling sites left out."""
    posterior = fit.data.posterior
    names = [n for n in posterior.data_vars if not str(n).startswith("_")]
    chains, count = posterior.sizes["chain"], posterior.sizes["draw"]
    columns = {"chain": np.repeat(np.arange(chains), count), "draw": np.tile(np.arange(count), chains)}
    for name in names:
        values = np.asarray(posterior[name]).reshape(chains * count, -1)
        if posterior[name].ndim == 2:
            columns[str(name)] = values[:, 0]
            continue
        for i, label in enumerate(_element_labels(fit, name, values.shape[1])):
            columns[f"{name}[{label}]"] = values[:, i]
    return pd.DataFrame(columns)


def _row(values, quantiles, map_value) -> dict:
    row = {"mean": float(np.mean(values)), "sd": float(np.std(values, ddof=1))}
    for q in quantiles:
        row[f"q{100 * q:g}"] = float(np.quantile(values, q))
    row["map"] = map_value
    return row


def _element_labels(fit, name, count):
    dims = fit.data.posterior[name].dims[2:]
    if dims and dims[0] in fit.data.posterior.coords:
        return [str(v) for v in np.asarray(fit.data.posterior.coords[dims[0]])]
    return [str(i) for i in range(count)]


def _diagnostics_by_row(fit, index) -> pd.DataFrame:
    """The fit's diagnostics per row; a vector parameter's elements get their own R-hat and ESS."""
    import arviz as az

    table = fit.diagnostics.table
    vectors = [n for n in table.index if fit.data.posterior[n].ndim > 2]
    if not vectors:
        return table
    rows = {n: table.loc[n].to_dict() for n in table.index if n not in vectors}
    stats = {k: az.ess(fit.data, method=m, var_names=vectors) for k, m in (("ess_bulk", "bulk"), ("ess_tail", "tail"))}
    stats["rhat"] = az.rhat(fit.data, var_names=vectors)
    for name in vectors:
        labels = _element_labels(fit, name, fit.data.posterior[name].shape[2])
        for i, label in enumerate(labels):
            rows[f"{name}[{label}]"] = {k: float(np.asarray(stats[k][name]).reshape(-1)[i]) for k in ("rhat", "ess_bulk", "ess_tail")}
    return pd.DataFrame(rows).T.reindex(index)
