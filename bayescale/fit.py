"""fit(): a table of runs and a law -> a checked posterior (an ArviZ DataTree plus the law).

Steps: validate the runs (`bayescale.runs`), build the NumPyro model (`bayescale.model`), find the MAP with
L-BFGS from many starts (`bayescale.map_estimate`), run NUTS from around it (`bayescale.inference`), draw
the prior and posterior predictive, and check convergence (`bayescale.diagnostics`), warning loudly when a
check fails. Everything random comes from one `seed`.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import arviz as az
import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from bayescale.diagnostics import Diagnostics, Thresholds, check_convergence, warn_if_not_converged, weakly_identified
from bayescale.inference import SamplerSettings, program_for, sample_posterior, scalar_sites
from bayescale.map_estimate import check_map_values
from bayescale.law import Law, PriorSpec, data_stats, get_law
from bayescale.likelihood import Likelihood, as_likelihood
from bayescale.misfit import Misfit, MisfitWarning, applies as misfit_applies, check_misfit, warn_if_misfit
from bayescale.posterior import observed_name
from bayescale.model import law_model, log_likelihood_in_blocks, log_prior_in_blocks, predictive_in_blocks, prior_draws
from bayescale.grouping import Grouping, group_stats, grouped_law_model, make_grouping
from bayescale.retries import RetryPolicy, as_retry_policy, attempt_record, escalate
from bayescale.runs import DataError, Runs, runs_from_table


@dataclass
class Fit:
    """A fitted law: `data` is the ArviZ DataTree (posterior, sample_stats, log_likelihood, observed_data,
    constant_data, posterior_predictive, prior, prior_predictive)."""

    law: Law
    likelihood: Likelihood
    data: Any
    runs: Runs
    diagnostics: Diagnostics
    settings: SamplerSettings
    seed: int
    map: dict[str, float] = field(default_factory=dict)
    priors: dict[str, Any] = field(default_factory=dict)  # the overrides this fit used, as given
    grouping: Grouping | None = None  # grouped fits: which parameters vary by group, and how
    misfit: Misfit | None = None  # leave-one-out misfit checks (bayescale.misfit); None when not run
    # Earlier attempts that failed their convergence checks and were rerun with escalated settings
    # (`bayescale.retries`): what each ran, what failed, and why the next one changed; [] when none was needed.
    attempts: list[dict] = field(default_factory=list)

    @property
    def converged(self) -> bool:
        return self.diagnostics.converged

    @property
    def param_names(self) -> tuple[str, ...]:
        return tuple(self.law.param_names) + tuple(self.likelihood.param_names)

    @property
    def model(self):
        """The NumPyro model this fit sampled."""
        return model_for(self.law, self.likelihood, self.grouping)

    def summary(self, **kwargs) -> pd.DataFrame:
        from bayescale.posterior import summary

        return summary(self, **kwargs)

    def to_dataframe(self) -> pd.DataFrame:
        """The posterior draws as a DataFrame: columns chain, draw and one per parameter (`posterior.draws_frame`)."""
        from bayescale.posterior import draws_frame

        return draws_frame(self)

    def predict(self, at, **kwargs):
        from bayescale.predictive import predict

        return predict(self, at, **kwargs)

    def save(self, path: str | Path) -> Path:
        from bayescale.persistence import save

        return save(self, path)

    def __repr__(self) -> str:
        state = "converged" if self.converged else "NOT CONVERGED"
        if self.attempts:
            state += f" after {len(self.attempts)} retr{'y' if len(self.attempts) == 1 else 'ies'}"
        return f"Fit(law={self.law.name!r}, likelihood={self.likelihood.family!r}, runs={len(self.runs)}, {state})"


def model_for(law: Law, likelihood: Likelihood, grouping: Grouping | None = None):
    """The NumPyro model of `law` and `likelihood`, grouped by `grouping` when there is one."""
    if grouping is not None:
        return grouped_law_model(law, likelihood, grouping)
    return law_model(law, likelihood)


def model_inputs(runs: Runs, mask=None) -> tuple[tuple, dict]:
    """The model's (args, kwargs) for these runs: x and data stats positionally, observations by name."""
    x = {k: jnp.asarray(v) for k, v in runs.x.items()}
    y = None if runs.y is None else jnp.asarray(runs.y)
    stats = data_stats(y, mask, x) if y is not None else {}
    se = None if runs.se is None else jnp.asarray(runs.se)
    kwargs = {"y": y, "se": se, "mask": mask}
    if runs.prev is not None:
        kwargs["prev"] = jnp.asarray(runs.prev)
    if runs.groups is not None:
        stats.update({k: jnp.asarray(v) for k, v in group_stats(runs.y, runs.groups, len(runs.group_labels)).items()})
        kwargs["group"] = jnp.asarray(runs.groups)
    return (x, stats), kwargs


def _check_prior_names(priors: Mapping[str, PriorSpec], law: Law, likelihood: Likelihood) -> None:
    known = set(law.param_names) | {"sigma", "nu", "rho", "drift"}
    unknown = sorted(set(priors) - known)
    if unknown:
        raise KeyError(f"priors given for unknown parameters {unknown}; law {law.name!r} has {sorted(known)}")


def to_datatree(draws: Mapping[str, Any], model, args, kwargs, runs: Runs, key, prior_draw_count: int = 500,
                conditional: bool = False):
    """Posterior, sample stats, pointwise log-likelihood, posterior and prior predictive, observed and
    constant data of `draws` (from `bayescale.inference.sample_posterior`), as an ArviZ DataTree. The
    predictive draws are made by jitted functions of `bayescale.model` (numpyro's Predictive runs op by op
    and took seconds here)."""
    key_ppc, key_prior = jax.random.split(key)
    posterior = draws["samples"]
    num_chains = next(iter(draws["stats"].values())).shape[0]
    flat = {k: np.asarray(v).reshape(-1, *np.shape(v)[2:]) for k, v in posterior.items()}
    by_chain = lambda a: np.asarray(a).reshape(num_chains, -1, *np.shape(a)[1:])  # noqa: E731
    ppc = predictive_in_blocks(model, key_ppc, flat, args, kwargs, conditional=conditional)
    loglik = log_likelihood_in_blocks(model, flat, args, kwargs)
    log_prior = log_prior_in_blocks(model, flat, args, kwargs)
    prior = prior_draws(model, key_prior, args, kwargs, prior_draw_count)
    return datatree_from_draws(
        posterior=posterior,
        sample_stats=draws["stats"],
        log_likelihood=by_chain(loglik["y"]),
        posterior_predictive=by_chain(ppc["y"]),
        prior=prior,
        runs=runs,
        log_prior={k: by_chain(v) for k, v in log_prior.items()},
    )


def run_coordinate(labels) -> np.ndarray:
    """The "run" coordinate of a fit's DataTree: the table's row labels (its index), as numbers or as text,
    so ArviZ plots and selections name runs as the table does; 0..n-1 when the labels repeat."""
    labels = np.asarray(labels)
    if len(set(labels.tolist())) != len(labels):
        return np.arange(len(labels))
    return labels if np.issubdtype(labels.dtype, np.number) else np.asarray([str(v) for v in labels])


def datatree_from_draws(*, posterior, sample_stats, log_likelihood, posterior_predictive, prior, runs: Runs,
                        log_prior=None):
    """The DataTree of a fit from its draws (arrays shaped (chains, draws, ...); `prior`: (draws, ...) with
    "y" the prior predictive). Shared by `fit()` and the per-data-set fits of `bayescale.batch`. In a grouped
    fit, per-group parameters get dimension "group" labelled by the group names, and constant_data["group"]
    holds each run's group index."""
    constant = {**runs.x, **({"se": runs.se} if runs.se is not None else {})}
    coords = {"run": run_coordinate(runs.labels)}
    param_dims = {}
    if runs.groups is not None:
        constant["group"] = runs.groups
        coords["group"] = np.asarray([str(g) for g in runs.group_labels])
        count = len(runs.group_labels)
        param_dims = {k: ["group"] for k, v in posterior.items() if np.ndim(v) == 3 and np.shape(v)[2] == count}
    as_prior_draws = lambda a: np.asarray(a)[None]  # noqa: E731  one "chain" of prior draws
    # The observed variable carries the output's name ("loss"), as ArviZ users expect from PyMC and Stan.
    name = observed_name(runs.output, [*posterior, *prior, *constant])
    tree = az.from_dict(
        {
            "posterior": {k: np.asarray(v) for k, v in posterior.items()},
            "sample_stats": {k: np.asarray(v) for k, v in sample_stats.items()},
            "log_likelihood": {name: np.asarray(log_likelihood)},
            "posterior_predictive": {name: np.asarray(posterior_predictive)},
            "prior": {k: as_prior_draws(v) for k, v in prior.items() if k != "y"},
            "prior_predictive": {name: as_prior_draws(prior["y"])},
            "observed_data": {name: np.asarray(runs.y)},
            "constant_data": {k: np.asarray(v) for k, v in constant.items()},
        },
        coords=coords,
        dims={name: ["run"], **{k: ["run"] for k in constant}, **param_dims},
    )
    if log_prior:
        # Its own tree: each site's log density is summed over the site's elements, so a per-group parameter
        # has no "group" dimension here, and ArviZ's dims apply to a name in every group of one from_dict.
        tree["log_prior"] = az.from_dict({"log_prior": {k: np.asarray(v) for k, v in log_prior.items()}})["log_prior"]
    return tree


def _check_walk_axis(runs: Runs, law: Law, likelihood) -> None:
    """The walk runs along the log of its axis: runs at zero on it (an input the law allows at 0) cannot be
    placed on it."""
    from bayescale.discrepancy import axis_name, log_axis

    z = np.asarray(log_axis(law, likelihood.discrepancy, runs.x))
    bad = ~np.isfinite(z)
    if bad.any():
        shown = ", ".join(str(v) for v in runs.labels[bad][:8])
        raise DataError(f"the random-walk discrepancy runs along log({axis_name(law, likelihood.discrepancy)}), "
                        f"which is zero at rows {shown}; fit these runs with discrepancy=None")


def fit(
    data: pd.DataFrame | str | Path | Runs,
    law: str | Law,
    *,
    columns: Mapping[str, str] | None = None,
    y: str | Sequence[str] = "loss",
    se: str | None = None,
    likelihood: str | Likelihood = "normal",
    discrepancy: Any = "default",
    priors: Mapping[str, PriorSpec] | None = None,
    num_warmup: int = 1000,
    num_samples: int = 1000,
    num_chains: int = 4,
    seed: int = 0,
    settings: SamplerSettings | None = None,
    map_starts: int = 32,
    allow_repeats: bool = False,
    num_prior_draws: int = 500,
    thresholds: Thresholds = Thresholds(),
    group: str | None = None,
    pooling: str | Mapping[str, str] = "partial",
    shared: tuple[str, ...] | list[str] = (),
    group_scale: float = 0.5,
    centering: str = "auto",
    sequence: tuple[str, str] | None = None,
    misfit_checks: bool = True,
    retries: RetryPolicy | int | bool | None = None,
) -> Fit:
    """Fit `law` to a table of runs with NUTS; see the module docstring.

    `columns` maps law inputs (or inputs they derive from, e.g. C) to table columns; `y` is the output
    column, `se` an optional column of known standard errors. `likelihood`: "normal" (on log y) or
    "student_t" (robust), or a `Likelihood`. `discrepancy`: "random_walk" (or a
    `bayescale.Discrepancy`) adds a model-discrepancy term whose variance grows with the distance from the
    fitted runs (`bayescale.discrepancy`), None for independent noise around the law. `priors` replaces
    priors by parameter name (law parameters, "sigma", "nu", "drift"). A fit that fails its convergence checks emits a `ConvergenceWarning` and has
    `fit.converged == False`.

    Grouped fits (`bayescale.grouping`): `group` names the column of each run's group; `pooling`
    ("partial", the default, "independent" or "shared", or {parameter: level}) and `shared` (parameters
    with one value for all groups) say how each law parameter varies by group; `group_scale` is the prior
    scale of the between-group spread. `centering`: how partially pooled values are sampled, "auto" (centred
    when every group has at least two runs per law parameter, non-centred otherwise), "centered" or
    "noncentered"; the prior is the same (`bayescale.grouping`).

    Several outputs: `y=["loss_web", "loss_code", ...]` fits one law to each output column jointly (a loss per
    domain of a data mixture, a loss per task): the columns are stacked into cells labelled "<row>:<column>"
    (`bayescale.runs.outputs_long`; an empty cell is an output not measured for that run) and grouped by
    output (column "output"), with `pooling`/`shared` saying which parameters are the same for every output.
    The noise scale sigma is shared by the outputs (relative scatter on the log scale). `predict` then returns
    every output at each point from the same posterior draws, unless the points name an "output".

    Training curves: `sequence=(run column, step column)` orders each run's points, for the "ar1"
    likelihood (correlated residuals within a run); the "ar1" likelihood requires it.

    `retries`: a fit that fails its convergence checks is rerun with settings escalated by what failed
    (`bayescale.retries`: smaller steps and a longer warm-up for divergences, more MAP starts for R-hat, more
    draws for a low ESS); None (the default) allows one retry, 0 or False none, an int that many, or a
    `RetryPolicy`. `fit.attempts` records the failed attempts and why each retry changed what it did.

    `misfit_checks`: check each run with PSIS-LOO Pareto k and LOO-PIT (`bayescale.misfit`; not for "ar1",
    whose points are not exchangeable) and emit a `MisfitWarning` naming the runs the model does not describe.
    """
    law = get_law(law)
    multi_output = y is not None and not isinstance(y, str)
    if multi_output:
        from bayescale.runs import OUTPUT_COLUMN, outputs_long

        if isinstance(data, Runs):
            raise TypeError("y=[...] names a table's output columns; give the table, not Runs")
        if group is not None:
            raise ValueError("a multi-output fit groups the cells by output; it cannot also group by "
                             f"{group!r} (fit each {group} separately)")
        data, y, group = outputs_long(data, list(y), law.output), law.output, OUTPUT_COLUMN
    grouped = group is not None or (isinstance(data, Runs) and data.groups is not None)
    likelihood = as_likelihood(likelihood, discrepancy, grouped=grouped, law=law)
    priors = dict(priors or {})
    _check_prior_names(priors, law, likelihood)
    law, likelihood = law.with_priors(priors), likelihood.with_priors(priors)
    if settings is None:
        # Hierarchical priors give NUTS a funnel where the between-group spread is small; a smaller step
        # size (acceptance 0.99) removed the divergences that 0.95 left on simulated three-group data.
        settings = SamplerSettings(num_warmup=num_warmup, num_samples=num_samples, num_chains=num_chains)
        if group is not None:
            settings = dataclasses.replace(settings, target_accept_prob=0.99)

    if likelihood.family == "ar1" and sequence is None and not (isinstance(data, Runs) and data.prev is not None):
        raise DataError("the ar1 likelihood needs the order of each run's points: fit(..., sequence=(run column, step column))")
    runs = data if isinstance(data, Runs) else runs_from_table(
        data, law, columns=columns, y=y, se=se, allow_repeats=allow_repeats, group=group, sequence=sequence
    )
    grouping = None
    if group is not None or runs.groups is not None:
        sizes = np.bincount(runs.groups, minlength=len(runs.group_labels)) if runs.groups is not None else ()
        grouping = make_grouping(law, group or runs.group_column, pooling=pooling, shared=shared, scale=group_scale,
                                 outputs=multi_output, centering=centering, group_sizes=sizes)
        if likelihood.discrepancy is not None:
            raise ValueError("the random-walk discrepancy is not available for grouped fits yet; fit each group "
                             "with it, or the grouped fit without it (discrepancy=None)")
        _check_group_sizes(runs, law, grouping)
    if likelihood.discrepancy is not None:
        _check_walk_axis(runs, law, likelihood)
    model = model_for(law, likelihood, grouping)
    args, kwargs = model_inputs(runs)
    program = program_for(model, args, kwargs)

    policy = as_retry_policy(retries)
    attempts: list[dict] = []
    for attempt in range(policy.max_retries + 1):
        # Attempt 0 uses the seed's own key, so a fit that converges first time is what it always was; a retry
        # folds in its number, as `bayescale.batch` does for its members.
        key = jax.random.PRNGKey(seed) if attempt == 0 else jax.random.fold_in(jax.random.PRNGKey(seed), attempt)
        draws = sample_posterior(program, settings, key, args, kwargs, map_starts=map_starts)
        check_map_values(draws["map_values"], what=f"MAP of law {law.name!r}")
        dt = to_datatree(draws, model, args, kwargs, runs, jax.random.split(key, 3)[2],
                         prior_draw_count=num_prior_draws, conditional=likelihood.discrepancy is not None)
        names = [n for n in dt.posterior.data_vars if not str(n).startswith("_")]
        diagnostics = check_convergence(dt, params=names, thresholds=thresholds)
        diagnostics = dataclasses.replace(diagnostics, weakly_identified=weakly_identified(dt, names))
        if diagnostics.converged or attempt == policy.max_retries:
            break
        step = escalate(settings, map_starts, diagnostics.failed, policy)
        attempts.append(attempt_record(settings, map_starts, diagnostics, step.reason))
        settings, map_starts = step.settings, step.map_starts
    warn_if_not_converged(diagnostics, what=f"fit of law {law.name!r}", settings=settings, attempts=attempts)
    misfit = None
    if misfit_checks and misfit_applies(dt, likelihood.family):
        try:
            misfit = check_misfit(dt, runs.labels)
        except ValueError as err:  # PSIS fails on degenerate draws (e.g. a stuck chain): say so, keep the fit
            warnings.warn(f"fit of law {law.name!r}: the misfit checks could not run ({err}); check the "
                          f"convergence diagnostics", MisfitWarning, stacklevel=2)
        else:
            warn_if_misfit(misfit, what=f"fit of law {law.name!r}", likelihood=likelihood.family)
    return Fit(
        law=law,
        likelihood=likelihood,
        data=dt,
        runs=runs,
        diagnostics=diagnostics,
        settings=settings,
        seed=seed,
        map=scalar_sites(draws["map"]),
        priors=priors,
        grouping=grouping,
        misfit=misfit,
        attempts=attempts,
    )


def _check_group_sizes(runs: Runs, law: Law, grouping: Grouping) -> None:
    """Independent per-group parameters need enough runs in every group; shared and partially pooled ones
    borrow from the other groups, so one run per group is enough for them."""
    if runs.groups is None:
        raise DataError(f"grouped fit: give the group column (group={grouping.column!r}) when passing a table")
    counts = np.bincount(runs.groups, minlength=len(runs.group_labels))
    own = sum(1 for _, level in grouping.levels if level == "independent")
    if own:
        short = [f"{runs.group_labels[i]!r} ({counts[i]} runs)" for i in np.flatnonzero(counts < own + 1)]
        if short:
            raise DataError(
                f"groups {', '.join(short)} of column {grouping.column!r} have fewer runs than the {own + 1} "
                f"needed for their {own} independent parameters; use partial pooling or drop those groups"
            )
    if len(runs.group_labels) < 2:
        raise DataError(f"group column {grouping.column!r} has a single group; fit without group=")
