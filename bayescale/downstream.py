"""Downstream metrics as one joint posterior: (N, D) -> loss -> every task's accuracy, in one NumPyro model.

The field fits two point estimates in turn (size and data -> loss, then loss -> accuracy), so the loss fit's
uncertainty never reaches the accuracy forecast. Here a loss law (`bayescale.models`, e.g. "chinchilla") and
a link law (input "L", output a metric, e.g. "link_exponential": Err = eps - k exp(-gamma L)) are one model:

- Loss: log loss_i ~ Normal(log law(N_i, D_i), sigma), as in `bayescale.fit`. A run's loss as seen by the
  link is its measured loss when there is one (an eval loss on a large set is measured to ~0.1%), and a
  latent draw law(N_i, D_i) exp(sigma z_i) when the loss is missing: runs with accuracies but no loss still
  inform the loss law through the link, and runs with a loss but no accuracies inform the loss law.
- Metrics: each task t has its own link parameters and its own likelihood (`bayescale.metric_likelihood`:
  Binomial / Beta-Binomial on correct counts when the number of items is known, Beta otherwise); an average
  over tasks is computed from the posterior, never fitted as one number.
- Many tasks: `pooling="partial"` (default) draws each task's value of a link parameter whose prior does not
  depend on the task (k, gamma, L0; the concentration phi) as T(T^-1(center) + tau z_t), with the declared
  prior on the center, tau ~ HalfNormal(1) on the unconstrained scale (log for positive parameters) and
  z_t ~ Normal(0, 1): a noisy small task borrows strength from the others. Parameters whose prior reads the
  task's statistics (the chance level: eps, floor, ceil) are per task. `pooling="none"` gives every task
  the declared priors independently: the same as fitting each task separately with the shared loss law.
- A loss per task (`loss_column={task: column}`): ladders are often fitted through each task's own loss
  (its bits-per-byte or cross-entropy on the task's answers). Then every task has its own loss law, its
  parameters partially pooled across tasks as in a grouped fit (`bayescale.grouping`; `loss_pooling`,
  `loss_shared`) with a noise scale per task, and each task's link reads that task's loss, relative to its
  geometric mean over the measured runs (so a link's midpoint and steepness mean the same on every task, in
  whatever unit each loss is, and stay pooled across tasks). One shared loss is the special case.
- Runs (`run_effect=True`, off by default): an offset on the logit of every task's accuracy shared by all
  tasks of a run, for runs that beat or trail their loss on every task at once; without it the tasks'
  scatter is independent and the task average's interval shrinks as 1/sqrt(tasks).
- Prediction at new (N, D): the loss of a new run (law mean and loss noise, every posterior draw), the
  link at that loss for every task (`metric`), a new evaluation of it (`new_run`, with the task's item and
  extra-binomial noise), and the average over tasks, all as draws (`DownstreamPrediction`).

Which link? Per-task exponentials keep accelerating beyond the data; the sigmoid saturates at a ceiling.
`bayescale.link_comparison.compare_links` scores chains on the fitted runs alone (PSIS-LOO over the
accuracies, and a leave-future-out refit without the largest runs' accuracies). On Gadre et al.'s
over-training runs both scores prefer `link_sigmoid` (notebooks/03_downstream.ipynb).

Inference is the engine's one sampler, `bayescale.inference.sample_posterior` (MAP, then NUTS from around
it), checked by `bayescale.diagnostics.check_convergence` (loud `ConvergenceWarning`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import arviz as az
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pandas as pd
from numpyro import handlers
from numpyro.distributions import biject_to

from bayescale import saturating
from bayescale.diagnostics import Diagnostics, Thresholds, check_convergence, warn_if_not_converged
from bayescale.fit import run_coordinate
from bayescale.grouping import Grouping, sample_grouped_params
from bayescale.inference import LATENT_LOSS_SITE, SamplerSettings, program_for, sample_posterior, scalar_sites
from bayescale.law import Law, PriorSpec, data_stats, get_law, laws, log_geometric_mean, resolve_prior
from bayescale.likelihood import Likelihood, as_likelihood
from bayescale.map_estimate import check_map_values
from bayescale.metric_likelihood import MetricLikelihood
from bayescale.model import log_likelihood_in_blocks, prior_draws, sample_params
from bayescale.runs import DataError, _rows, boolean_column, points_from_mapping, read_table, runs_from_table

POOLINGS = ("partial", "none")
# Spread of a pooled parameter across tasks, on its unconstrained scale: HalfNormal(1) lets tasks differ by
# up to a factor ~e^2 in k or gamma while still shrinking small, noisy tasks towards the others.
TAU_PRIOR = dist.HalfNormal(1.0)
CENTERINGS = ("auto", "noncentered", "centered")
# Scale of a run's offset on the logit of all its tasks' accuracies: 0.2 lets a run sit ~0.05 above or below
# the link at accuracy 0.5 on every task at once; larger shifts need the data to ask for them.
RUN_EFFECT_PRIOR = dist.HalfNormal(0.2)
LINK_OUTPUTS = ("error", "accuracy", "pass_rate")
FORMAT_VERSION = 2  # 2: laws saved with their declaration


# ---------------------------------------------------------------- data ----
@dataclass(frozen=True)
class DownstreamRuns:
    """Validated runs: loss-law inputs `x`, `loss` (runs,) and `accuracy` (tasks, runs) with NaN where
    missing, per-task `items` (or None) and `chance` (fractions)."""

    x: dict[str, np.ndarray]
    loss: np.ndarray  # (runs,), or (tasks, runs) with a loss per task (`loss_columns`)
    accuracy: np.ndarray
    tasks: tuple[str, ...]
    # The number of answers each task's accuracy is a fraction of: its items times the evaluations averaged
    # (`evaluations`), or None when unknown.
    items: np.ndarray | None
    chance: np.ndarray
    labels: np.ndarray
    sources: dict[str, str] = field(default_factory=dict)
    loss_column: str | None = None
    # Which rows are finished runs (the loss law's data); the others are "link only", e.g. intermediate
    # checkpoints whose learning rate has not annealed: their measured loss informs the link, not the law.
    finished: np.ndarray | None = None
    # Composite tasks: name -> {task: weight} (weights summing to 1): a score reported as a weighted mean of
    # fitted tasks (MMLU of its subsets). Not fitted themselves; predicted as that mean of the tasks' draws.
    composites: dict[str, dict[str, float]] = field(default_factory=dict)
    # Evaluations averaged into each task's accuracy (e.g. the last 3 checkpoints on the same items), or None.
    evaluations: np.ndarray | None = None
    # A loss per task: task -> its loss column (then `loss` is (tasks, runs)); None for one shared loss.
    loss_columns: dict[str, str] | None = None

    def __len__(self) -> int:
        return self.loss.shape[-1]

    @property
    def per_task_loss(self) -> bool:
        return self.loss.ndim == 2

    @property
    def loss_mask(self) -> np.ndarray:
        return ~np.isnan(self.loss)

    @property
    def finished_mask(self) -> np.ndarray:
        return np.ones(len(self), bool) if self.finished is None else np.asarray(self.finished, bool)

    @property
    def loss_scale(self) -> np.ndarray:
        """What each task's link reads its loss relative to: with a loss per task, the geometric mean of that
        task's measured losses, (tasks, 1); with one shared loss, 1 (the link reads the loss as it is)."""
        if not self.per_task_loss:
            return np.ones((1, 1))
        logs = np.where(self.loss_mask, np.log(np.where(self.loss_mask, self.loss, 1.0)), 0.0)
        return np.exp(logs.sum(axis=1) / np.maximum(self.loss_mask.sum(axis=1), 1))[:, None]

    @property
    def link_loss(self) -> np.ndarray:
        """The measured losses as each task's link reads them, (1 or tasks, runs), NaN where not measured."""
        loss = np.where(self.loss_mask, self.loss, np.nan)
        return (loss if self.per_task_loss else loss[None, :]) / self.loss_scale

    @property
    def law_mask(self) -> np.ndarray:
        """Rows whose measured loss is an observation of the loss law: finished runs with a loss."""
        return self.loss_mask & self.finished_mask

    @property
    def metric_mask(self) -> np.ndarray:
        return ~np.isnan(self.accuracy)


def _per_task(values, tasks, what: str, default=None) -> np.ndarray | None:
    if values is None:
        return None if default is None else np.full(len(tasks), default, float)
    if not isinstance(values, Mapping):
        values = np.asarray(values, dtype=object).ravel()
        if len(values) != len(tasks):
            raise DataError(f"{what}: {len(values)} values for {len(tasks)} tasks")
        values = dict(zip(tasks, values))
    missing = [t for t in tasks if t not in values]
    if missing:
        raise DataError(f"{what}: no value for tasks {missing}")
    unknown = sorted(set(values) - set(tasks))
    if unknown:
        raise DataError(f"{what}: values given for {unknown}, which are not among the tasks {list(tasks)}")
    return np.array([values[t] for t in tasks], dtype=object)


def downstream_runs(
    source: pd.DataFrame | str | Path,
    loss_law: Law,
    *,
    tasks: Sequence[str],
    loss_column: str | Mapping[str, str] | None = "loss",
    columns: Mapping[str, str] | None = None,
    items: Mapping[str, int] | Sequence[int] | None = None,
    chance: Mapping[str, float] | Sequence[float] | None = None,
    allow_repeats: bool = False,
    finished: str | None = None,
    composites: Mapping[str, Mapping[str, float] | Sequence[str]] | None = None,
    evaluations: Mapping[str, int] | Sequence[int] | None = None,
) -> DownstreamRuns:
    """Validate a table of runs with a loss column and one accuracy column per task (fractions in [0, 1];
    empty cells are missing values and are masked, never dropped). `items`: number of items of each task
    (positive integers), `chance`: each task's chance accuracy (fraction), both keyed by task column.
    `finished`: a boolean column, True for finished runs and False for rows that inform the link only
    (intermediate checkpoints: their loss is measured, but they are not the end of a run the loss law
    describes); None: every row is a finished run.
    `composites`: scores reported as a weighted mean of tasks, {"mmlu": {"mmlu_stem": 3018, ...}} (weights,
    normalised to sum 1) or {"mmlu": ["mmlu_stem", ...]} (equal weights). Each part is a task of its own (its
    own items and link); the composite is not fitted (it would count its parts' data twice) but predicted as
    the weighted mean of its parts' draws. A table column named like the composite is checked against that
    mean (within half a percentage point), so wrong weights are caught.
    `evaluations`: per task, how many evaluations on the same items each accuracy averages (e.g. the last
    few checkpoints); the accuracy is then a fraction of items x evaluations answers, counted as such with
    the Beta-Binomial's extra-binomial spread absorbing the evaluations' correlation. Needs `items`.
    `loss_column={task: column}`: a loss per task (each task's own bits-per-byte or cross-entropy; empty cells
    are losses not measured), every task named; then `loss` is (tasks, runs)."""
    table = read_table(source)
    tasks = tuple(str(t) for t in tasks)
    if not tasks:
        raise DataError("give at least one task column (tasks=[...])")
    if len(set(tasks)) != len(tasks):
        raise DataError(f"task columns repeated: {sorted(t for t in set(tasks) if tasks.count(t) > 1)}")
    unknown = [t for t in tasks if t not in table.columns]
    if unknown:
        raise DataError(f"task columns {unknown} are not in the table; columns are: {', '.join(map(str, table.columns))}")
    loss_columns = None
    if isinstance(loss_column, Mapping):
        loss_columns = {str(t): str(c) for t, c in loss_column.items()}
        _per_task(loss_columns, tasks, "loss_column")  # every task named, no other
        loss_column = None
        absent = sorted({c for c in loss_columns.values() if c not in table.columns})
        if absent:
            raise DataError(f"loss columns {absent} are not in the table; columns are: {', '.join(map(str, table.columns))}")
    elif loss_column is not None and loss_column not in table.columns:
        raise DataError(f"loss column {loss_column!r} is not in the table; columns are: {', '.join(map(str, table.columns))}")
    inputs = runs_from_table(table, loss_law, columns=columns, y=None, allow_repeats=allow_repeats)
    labels = inputs.labels

    def numeric(column: str, role: str) -> np.ndarray:
        values = pd.to_numeric(table[column], errors="coerce").to_numpy(dtype=float)
        text = table[column].notna().to_numpy() & np.isnan(values)
        if text.any():
            raise DataError(f"column {column!r} ({role}) is not numeric at rows {_rows(labels, text)}")
        if np.isinf(values).any():
            raise DataError(f"column {column!r} ({role}) has infinite values at rows {_rows(labels, np.isinf(values))}")
        return values

    if loss_columns is not None:
        loss = np.stack([numeric(loss_columns[t], f"loss of task {t}") for t in tasks])
        for t, row in zip(tasks, loss):
            bad = row <= 0
            if bad.any():
                raise DataError(f"loss column {loss_columns[t]!r} (task {t}) must be positive; non-positive at rows "
                                f"{_rows(labels, bad)}")
        unmeasured = [f"{t} ({loss_columns[t]!r})" for t, row in zip(tasks, loss) if np.isnan(row).all()]
        if unmeasured:
            raise DataError(f"loss columns of tasks {unmeasured} have no value: each task's loss law needs some of "
                            "its measured losses")
    else:
        loss = np.full(len(table), np.nan) if loss_column is None else numeric(loss_column, "loss")
        bad = loss <= 0
        if bad.any():
            raise DataError(f"loss column {loss_column!r} must be positive; non-positive at rows {_rows(labels, bad)}")
        if np.isnan(loss).all():
            raise DataError(
                "no run has a loss: the loss law cannot be fitted from accuracies alone; give loss_column with at "
                "least a few measured losses"
            )
    accuracy = np.stack([numeric(t, "accuracy") for t in tasks])
    for t, row in zip(tasks, accuracy):
        bad = (row < 0) | (row > 1)
        if bad.any():
            raise DataError(
                f"task column {t!r}: accuracy must be a fraction in [0, 1]; outside at rows {_rows(labels, bad)} "
                f"(values {', '.join(f'{v:g}' for v in row[bad][:4])}); percentages must be divided by 100"
            )
    empty = np.isnan(loss).all(axis=0) if loss.ndim == 2 else np.isnan(loss)
    empty &= np.isnan(accuracy).all(axis=0)
    if empty.any():
        raise DataError(f"rows {_rows(labels, empty)} have neither a loss nor any task accuracy; remove them")
    finished_mask = None
    if finished is not None:
        finished_mask = boolean_column(table, finished, "finished-run", "True = a finished run, False = link only")
        # A link-only row's accuracies are read at its measured loss; with a loss per task, at the loss of each
        # task it has an accuracy for.
        unmeasured = (np.isnan(loss) & ~np.isnan(accuracy)).any(axis=0) if loss.ndim == 2 else np.isnan(loss)
        blind = ~finished_mask & unmeasured
        if blind.any():
            raise DataError(f"link-only rows (column {finished!r} False) need a measured loss, the link's input; "
                            f"missing at rows {_rows(labels, blind)}")
        if not (finished_mask & ~np.isnan(loss)).any():
            raise DataError(f"no finished run (column {finished!r} True) has a loss: the loss law has no data")

    item_values = _positive_integers(_per_task(items, tasks, "items"), tasks, "items",
                                     "the number of questions of each task")
    evaluation_values = _positive_integers(_per_task(evaluations, tasks, "evaluations"), tasks, "evaluations",
                                           "how many evaluations each task's accuracy averages")
    if evaluation_values is not None and item_values is None:
        raise DataError("evaluations need items: an average of evaluations is counted as items x evaluations answers")
    if item_values is not None:
        if evaluation_values is not None:
            item_values = item_values * evaluation_values
        correct = accuracy * item_values[:, None]
        off = np.abs(correct - np.round(correct)) > 0.01
        off &= ~np.isnan(accuracy)
        if off.any():
            t = int(np.argwhere(off)[0][0])
            counted = "items x evaluations" if evaluation_values is not None else "items"
            raise DataError(
                f"task column {tasks[t]!r}: accuracy x {counted} ({item_values[t]}) is not a whole number of correct "
                f"answers at rows {_rows(labels, off[t])}; check items, declare an average of several evaluations "
                "(evaluations=...) or a composite of subtasks (composites=...), or leave items out to use a Beta likelihood"
            )
    composite_weights = _composite_weights(composites, tasks)
    for name, weights in composite_weights.items():
        if name not in table.columns:
            continue
        reported = numeric(name, f"composite {name}")
        parts = accuracy[[tasks.index(t) for t in weights]]
        mean = np.asarray(list(weights.values())) @ np.where(np.isnan(parts), 0.0, parts)
        checked = ~np.isnan(reported) & ~np.isnan(parts).any(axis=0)
        off = checked & (np.abs(reported - mean) > COMPOSITE_TOLERANCE)
        if off.any():
            i = int(np.flatnonzero(off)[0])
            raise DataError(
                f"composite {name!r}: the weighted mean of {list(weights)} ({mean[i]:.4f} at row {labels[i]}) does "
                f"not reproduce column {name!r} ({reported[i]:.4f}) at rows {_rows(labels, off)}; check the weights "
                "(items of each part for a mean over questions, equal weights for a mean over subtasks)"
            )
    chance_values = _per_task(chance, tasks, "chance", default=0.0)
    chance_values = pd.to_numeric(pd.Series(chance_values), errors="coerce").to_numpy(dtype=float)
    bad = ~np.isfinite(chance_values) | (chance_values < 0) | (chance_values >= 1)
    if bad.any():
        raise DataError(
            f"chance levels must be fractions in [0, 1); got {dict((t, v) for t, v, b in zip(tasks, chance_values, bad) if b)}"
        )
    return DownstreamRuns(
        x=inputs.x, loss=loss, accuracy=accuracy, tasks=tasks, items=item_values, chance=chance_values,
        labels=labels, sources=inputs.sources, loss_column=loss_column, finished=finished_mask,
        composites=composite_weights, evaluations=evaluation_values, loss_columns=loss_columns,
    )


# A reported composite may be rounded (to 0.1 or 1 percentage point); half a point separates rounding from
# wrong weights.
COMPOSITE_TOLERANCE = 0.005


def _positive_integers(values, tasks, what: str, meaning: str) -> np.ndarray | None:
    if values is None:
        return None
    numbers = pd.to_numeric(pd.Series(values), errors="coerce").to_numpy(dtype=float)
    bad = ~np.isfinite(numbers) | (numbers < 1) | (numbers != np.round(numbers))
    if bad.any():
        shown = ", ".join(f"{t}={v!r}" for t, v, b in zip(tasks, values, bad) if b)
        raise DataError(f"{what} must be positive integers ({meaning}); got {shown}")
    return numbers.astype(int)


def _composite_weights(composites, tasks: Sequence[str]) -> dict[str, dict[str, float]]:
    """{name: {task: weight}} with weights normalised to sum 1, validated against the fitted tasks."""
    out = {}
    for name, parts in dict(composites or {}).items():
        name = str(name)
        if name in tasks:
            raise DataError(f"composite {name!r} is also a task column: a composite is the weighted mean of tasks, "
                            "not fitted itself; give only its parts in tasks")
        weights = dict(parts) if isinstance(parts, Mapping) else dict.fromkeys(parts, 1.0)
        if not weights:
            raise DataError(f"composite {name!r} has no parts")
        unknown = [t for t in weights if t not in tasks]
        if unknown:
            raise DataError(f"composite {name!r}: parts {unknown} are not among the tasks {list(tasks)}; fit every part as a task")
        values = pd.to_numeric(pd.Series(list(weights.values())), errors="coerce").to_numpy(dtype=float)
        if not np.all(np.isfinite(values) & (values > 0)):
            raise DataError(f"composite {name!r}: weights must be positive numbers; got {weights}")
        out[name] = {str(t): float(v / values.sum()) for t, v in zip(weights, values)}
    return out


def task_metadata(path: str | Path, tasks: Sequence[str], prefix: str = "acc_", *, task_column: str = "Eval Task",
                  items_column: str = "#datapoints", chance_column: str = "Random baseline",
                  chance_in_percent: bool = True) -> tuple[dict[str, int], dict[str, float]]:
    """Items and chance levels of `tasks` (table columns, e.g. "acc_hellaswag") from a metadata table such
    as the over-training study's eval_metadata.csv (task name without `prefix`, #datapoints, chance in %)."""
    meta = read_table(path)
    for column in (task_column, items_column, chance_column):
        if column not in meta.columns:
            raise DataError(f"metadata table {path}: no column {column!r}; columns are {', '.join(map(str, meta.columns))}")
    meta = meta.set_index(task_column)
    names = {t: t[len(prefix):] if prefix and t.startswith(prefix) else t for t in tasks}
    missing = [t for t, name in names.items() if name not in meta.index]
    if missing:
        raise DataError(f"metadata table {path}: no row for tasks {missing} (looked up without the prefix {prefix!r})")
    scale = 100.0 if chance_in_percent else 1.0
    items = {t: int(meta.loc[name, items_column]) for t, name in names.items()}
    chance = {t: float(meta.loc[name, chance_column]) / scale for t, name in names.items()}
    return items, chance


# --------------------------------------------------------------- model ----
@dataclass(frozen=True)
class ChainSpec:
    """What the chained model is made of: loss law, link, their likelihoods and the pooling across tasks."""

    loss_law: Law
    link: Law
    loss_likelihood: Likelihood
    metric_likelihood: MetricLikelihood
    pooling: str = "partial"
    shared: tuple[str, ...] = ()  # link parameters with one value for every task
    run_effect: bool = False  # a logit offset shared by all tasks of a run
    centered: tuple[float, ...] | None = None  # per task: 1 = pooled values sampled centered (`informative_tasks`)
    # A loss per task: how the loss law's parameters vary across tasks (a `Grouping` over "task"); None for
    # one shared loss.
    loss_grouping: Grouping | None = None

    @property
    def per_task_loss(self) -> bool:
        return self.loss_grouping is not None

    def pooled(self, name: str, task_stats: Mapping[str, Any]) -> bool:
        """A link parameter is pooled across tasks unless its prior is task-level (`task_level`)."""
        return self.pooling == "partial" and not task_level(self.link.params[name].prior, task_stats)


def task_level(prior: PriorSpec, task_stats: Mapping[str, Any]) -> bool:
    """Whether a link prior differs by task: one that reads each task's statistics (its chance level) resolves
    to one distribution per task; a plain distribution, or one that reads the chain's losses (the midpoint of
    a sigmoid, in the loss's units), is one for all tasks and can be pooled or shared."""
    if isinstance(prior, dist.Distribution):
        return False
    return resolve_prior(prior, task_stats).batch_shape != ()


def _check_laws(loss_law: Law, link: Law) -> None:
    if loss_law.numpyro_model is not None or link.numpyro_model is not None:
        raise ValueError("the chained model needs laws declared with params and mean, not raw NumPyro models")
    if loss_law.output != "loss":
        raise ValueError(f"loss law {loss_law.name!r} has output {loss_law.output!r}, not 'loss'")
    if link.inputs != ("L",):
        raise ValueError(
            f"link {link.name!r} has inputs {link.inputs}; the chained model supports links whose only input "
            f"is the loss L (fit others with bayescale.fit on a table of losses)"
        )
    if link.output not in LINK_OUTPUTS:
        raise ValueError(f"link {link.name!r} has output {link.output!r}; the chained model needs one of {LINK_OUTPUTS}")
    clash = set(loss_law.params) & set(link.params)
    if clash:
        raise ValueError(f"loss law {loss_law.name!r} and link {link.name!r} share parameter names {sorted(clash)}")


def correct_from_output(output: str, value):
    """A metric in units `output` ("error", "accuracy", "pass_rate") as a probability of a correct answer
    (error links give 1 - error)."""
    return 1.0 - value if output == "error" else value


def shift_by_run(p_correct, offset):
    """Probabilities of a correct answer moved by a run's offset on the logit scale (broadcast over tasks)."""
    p = jnp.clip(p_correct, 1e-12, 1.0 - 1e-12)
    return jax.nn.sigmoid(jnp.log(p) - jnp.log1p(-p) + offset)


def _sample_run_effect(num_runs: int):
    scale = numpyro.sample("run_effect_sd", RUN_EFFECT_PRIOR)
    with numpyro.plate("run", num_runs):
        z = numpyro.sample("_run_effect_z", dist.Normal(0.0, 1.0))
    return numpyro.deterministic("run_effect", scale * z)


def _sample_task_param(name: str, prior: dist.Distribution, pooled: bool, num_tasks: int, shared: bool = False,
                       centered=None):
    """A link parameter per task: shared (one value), independent (the declared prior per task), or pooled
    around a center with spread tau on the unconstrained scale. A pooled task's value is sampled
    non-centered (z ~ Normal(0, 1), u = T^-1(center) + tau z: no funnel when the task says little about it)
    or centered (u ~ Normal(T^-1(center), tau): no funnel when the task pins it down), task by task as
    `centered` (0 or 1 per task; Papaspiliopoulos, Roberts and Skold 2007) says; value = T(u)."""
    if shared:
        value = numpyro.sample(f"_{name}_shared", prior)
        return numpyro.deterministic(name, jnp.broadcast_to(value, (num_tasks,)))
    if not pooled:
        with numpyro.plate("task", num_tasks):
            return numpyro.sample(name, prior)
    to_constrained = biject_to(prior.support)
    center = numpyro.sample(f"{name}_center", prior)
    tau = numpyro.sample(f"{name}_tau", TAU_PRIOR)
    loc = to_constrained.inv(center)
    c = jnp.zeros(num_tasks) if centered is None else jnp.asarray(centered, float)
    with numpyro.plate("task", num_tasks):
        z = numpyro.sample(f"_{name}_z", dist.Normal(c * loc, tau**c))
    return numpyro.deterministic(name, to_constrained(loc + tau ** (1.0 - c) * (z - c * loc)))


# The number of items a task's binomial noise is judged by when the table does not give it.
ASSUMED_ITEMS = 100.0


def item_counts(runs: DownstreamRuns) -> np.ndarray:
    """Each task's number of items as floats, `ASSUMED_ITEMS` for every task when the counts are unknown."""
    return np.full(len(runs.tasks), ASSUMED_ITEMS) if runs.items is None else np.asarray(runs.items, float)


# A task whose accuracies move across the runs by more than this many binomial sds pins its link down: its
# pooled values are sampled centered; a task within its noise (near chance, or flat) non-centered.
INFORMATIVE_SPREAD = 3.0


def informative_tasks(runs: DownstreamRuns) -> tuple[float, ...]:
    """1.0 for each task whose observed accuracies vary across runs by more than `INFORMATIVE_SPREAD` times
    their binomial standard error (100 items assumed when the count is unknown), else 0.0: how each task's
    pooled link parameters are parametrised (`_sample_task_param`)."""
    items = item_counts(runs)
    flags = []
    for t in range(len(runs.tasks)):
        acc = runs.accuracy[t][runs.metric_mask[t]]
        if acc.size < 2:
            flags.append(0.0)
            continue
        p = np.clip(acc.mean(), 1e-3, 1 - 1e-3)
        flags.append(float(acc.std(ddof=1) > INFORMATIVE_SPREAD * np.sqrt(p * (1 - p) / items[t])))
    return tuple(flags)


_MODELS: dict[tuple, tuple[ChainSpec, Any]] = {}


def chain_model(spec: ChainSpec):
    """The NumPyro model of the chain (memoised per spec, so jitted code traces it once per process):
    `model(x, loss_stats, task_stats, loss=None, loss_mask=None, metric=None, metric_mask=None, items=None,
    y=None)`. `metric` holds counts or fractions as `spec.metric_likelihood.observations` makes them;
    `y` is unused (the engine's generic prior draws pass it)."""
    # Laws hold dicts (unhashable): key on their identity, and keep the spec to check it is the same one.
    level_slope = saturating.ENABLED
    key = (id(spec.loss_law), id(spec.link), spec.loss_likelihood, spec.metric_likelihood, spec.pooling, spec.shared,
           spec.run_effect, spec.centered, level_slope, spec.loss_grouping)
    if key in _MODELS and _MODELS[key][0].loss_law is spec.loss_law and _MODELS[key][0].link is spec.link:
        return _MODELS[key][1]
    law, link, metric_lik = spec.loss_law, spec.link, spec.metric_likelihood

    def model(x, loss_stats, task_stats, loss=None, loss_mask=None, metric=None, metric_mask=None, items=None, y=None,
              law_mask=None):
        # `law_mask`: rows whose loss the loss law describes (finished runs); link-only rows (checkpoints) feed
        # their measured loss to the link and are left out of the loss law, its priors and its pivots.
        num_tasks = task_stats["chance"].shape[0]
        if spec.per_task_loss:
            # Each task's loss law, pooled across tasks (arrays (tasks, runs)); a noise scale per task.
            params = sample_grouped_params(law, spec.loss_grouping, loss_stats, x, num_tasks, level_slope)
            varying = set(spec.loss_grouping.varying())
            law_loss = law.mean({k: (v[:, None] if k in varying else v) for k, v in params.items()}, x)
            law_loss = jnp.broadcast_to(law_loss, (num_tasks, law_loss.shape[-1]))  # every parameter shared: one law
            with numpyro.plate("task", num_tasks):
                noise = {k: v[:, None] for k, v in spec.loss_likelihood.sample_noise(loss_stats).items()}
            z = numpyro.sample(LATENT_LOSS_SITE, dist.Normal(jnp.zeros(law_loss.shape), 1.0).to_event(2))
        else:
            params = sample_params(law, loss_stats, x, law_mask, level_slope)
            noise = spec.loss_likelihood.sample_noise(loss_stats)
            law_loss = law.mean(params, x)
            with numpyro.plate("run", law_loss.shape[0]):
                z = numpyro.sample(LATENT_LOSS_SITE, dist.Normal(0.0, 1.0))
        num_runs = law_loss.shape[-1]
        latent = law_loss * jnp.exp(noise["sigma"] * z)
        if loss is not None:
            with handlers.mask(mask=loss_mask if law_mask is None else law_mask):
                numpyro.sample("loss", spec.loss_likelihood.distribution(law_loss, noise), obs=loss)
            run_loss = jnp.where(loss_mask, loss, latent)
        else:
            run_loss = latent
        # Each task's link reads its loss relative to the task's scale (1 with one shared loss): (1 or tasks, runs).
        run_loss = (run_loss if spec.per_task_loss else run_loss[None, :]) / task_stats["loss_scale"]

        link_params = {
            name: _sample_task_param(name, resolve_prior(p.prior, task_stats), spec.pooled(name, task_stats), num_tasks,
                                     shared=name in spec.shared, centered=spec.centered)
            for name, p in link.params.items()
        }
        phi = None
        if metric_lik.has_concentration:
            prior = resolve_prior(metric_lik.phi_prior, task_stats)
            phi = _sample_task_param("phi", prior, spec.pooling == "partial", num_tasks, centered=spec.centered)[:, None]
        value = link.mean({k: v[:, None] for k, v in link_params.items()}, {"L": run_loss})
        p_correct = correct_from_output(link.output, value)
        if spec.run_effect:
            p_correct = shift_by_run(p_correct, _sample_run_effect(num_runs)[None, :])
        total = None if items is None else items[:, None]
        with handlers.mask(mask=True if metric_mask is None else metric_mask):
            numpyro.sample("metric", metric_lik.distribution(p_correct, total, phi), obs=metric)

    model.__name__ = f"{law.name}_to_{link.name}_model"
    model.link_params = tuple(link.params)
    _MODELS[key] = (spec, model)
    return model


def model_inputs(runs: DownstreamRuns, metric_likelihood: MetricLikelihood) -> tuple[tuple, dict]:
    loss_mask, law_mask = runs.loss_mask, runs.law_mask
    x = {k: jnp.asarray(v) for k, v in runs.x.items()}
    filled = np.where(law_mask, runs.loss, 1.0)
    if runs.per_task_loss:
        # The loss law's data: every finished (task, run) cell; where the runs lie on each input: the runs with a
        # finished loss on any task; each task's smallest and largest loss for its own floor (grouped priors).
        loss_stats = data_stats(jnp.asarray(filled.ravel()), jnp.asarray(law_mask.ravel()))
        used = jnp.asarray(law_mask.any(axis=0))
        loss_stats["x_log_mean"] = {k: log_geometric_mean(v, used) for k, v in x.items()}
        loss_stats["group_y_min"] = jnp.asarray(np.where(law_mask, runs.loss, np.inf).min(axis=1))
        loss_stats["group_y_max"] = jnp.asarray(np.where(law_mask, runs.loss, -np.inf).max(axis=1))
    else:
        loss_stats = data_stats(jnp.asarray(filled), jnp.asarray(law_mask), x)
    link_loss = runs.link_loss
    acc = np.where(runs.metric_mask, runs.accuracy, np.nan)
    with np.errstate(all="ignore"):
        task_stats = {
            "chance": jnp.asarray(runs.chance),
            "y_min": jnp.asarray(np.nanmin(np.where(np.isnan(acc), np.inf, acc), axis=1)),
            "y_max": jnp.asarray(np.nanmax(np.where(np.isnan(acc), -np.inf, acc), axis=1)),
            # The link's input is the loss (relative to each task's scale with a loss per task): where the measured
            # losses lie, for priors in the loss's units.
            "x_log_mean": {"L": log_geometric_mean(jnp.asarray(np.nan_to_num(link_loss, nan=1.0)),
                                                   jnp.asarray(~np.isnan(link_loss)))},
            "loss_scale": jnp.asarray(runs.loss_scale),
        }
    kwargs = {
        "loss": jnp.asarray(np.where(loss_mask, runs.loss, 1.0)),
        "loss_mask": jnp.asarray(loss_mask),
        "metric": jnp.asarray(metric_likelihood.observations(runs.accuracy, runs.items)),
        "metric_mask": jnp.asarray(runs.metric_mask),
        "items": None if runs.items is None else jnp.asarray(runs.items, dtype=float),
        "law_mask": jnp.asarray(law_mask),
    }
    return (x, loss_stats, task_stats), kwargs


def chain_values(spec: ChainSpec, samples, x, run_loss=None, loss_scale=None):
    """From posterior draws: the law's mean loss (draws, points), or (draws, tasks, points) with a loss per
    task, and, given each run's loss in that shape, the link's value for every task (draws, tasks, points);
    `loss_scale` (`DownstreamRuns.loss_scale`) is what each task's link reads its loss relative to."""
    law_params = {k: jnp.asarray(samples[k]) for k in spec.loss_law.params}
    if spec.per_task_loss:
        varying = set(spec.loss_grouping.varying())
        law_mean = jax.vmap(lambda p: spec.loss_law.mean({k: (v[:, None] if k in varying else v) for k, v in p.items()},
                                                         x))(law_params)
        if law_mean.ndim == 2:  # every parameter shared by the tasks: one law, the same for each task
            law_mean = jnp.broadcast_to(law_mean[:, None, :], (law_mean.shape[0], np.shape(samples["sigma"])[1],
                                                                law_mean.shape[1]))
    else:
        law_mean = jax.vmap(lambda p: spec.loss_law.mean(p, x))(law_params)
    if run_loss is None:
        return law_mean, None
    link_params = {k: jnp.asarray(samples[k])[:, :, None] for k in spec.link.params}
    per_task = run_loss if spec.per_task_loss else run_loss[:, None, :]
    scale = 1.0 if loss_scale is None else jnp.asarray(loss_scale)[None]
    return law_mean, spec.link.mean(link_params, {"L": per_task / scale})


def _loss_noise(spec: ChainSpec, samples) -> dict:
    """The loss noise's draws shaped to broadcast against the law's mean: (draws, 1) or (draws, tasks, 1)."""
    return {k: jnp.asarray(samples[k])[..., None] for k in spec.loss_likelihood.noise_names}


# ----------------------------------------------------------------- fit ----
@dataclass
class DownstreamFit:
    """A fitted chain. `data`: ArviZ DataTree (posterior with task-indexed link parameters, sample_stats,
    log_likelihood, posterior_predictive and observed_data of "loss" and "metric", prior, constant_data)."""

    spec: ChainSpec
    data: Any
    runs: DownstreamRuns
    diagnostics: Diagnostics
    settings: SamplerSettings
    seed: int
    map: dict[str, float] = field(default_factory=dict)

    loss_law = property(lambda self: self.spec.loss_law)
    link = property(lambda self: self.spec.link)
    tasks = property(lambda self: self.runs.tasks)

    @property
    def converged(self) -> bool:
        return self.diagnostics.converged

    def predict(self, at, **kwargs) -> DownstreamPrediction:
        """`predict_downstream(self, at, seed=0, loss=None, error=False)`: accuracies, or errors with error=True."""
        return predict_downstream(self, at, **kwargs)

    def summary(self, quantiles=(0.05, 0.5, 0.95)) -> pd.DataFrame:
        return summary_downstream(self, quantiles)

    def save(self, path: str | Path) -> Path:
        return save_downstream(self, path)

    def __repr__(self) -> str:
        state = "converged" if self.converged else "NOT CONVERGED"
        return (f"DownstreamFit(loss_law={self.loss_law.name!r}, link={self.link.name!r}, tasks={len(self.tasks)}, "
                f"runs={len(self.runs)}, pooling={self.spec.pooling!r}, {state})")


def _replicate(spec: ChainSpec, samples, runs: DownstreamRuns, key) -> dict[str, np.ndarray]:
    """Posterior predictive replicates of the observed runs: loss (draws, runs) and accuracy fractions
    (draws, tasks, runs), each run's link evaluated at its measured loss where it has one."""
    key_loss, key_metric = jax.random.split(key)
    x = {k: jnp.asarray(v) for k, v in runs.x.items()}
    law_mean, _ = chain_values(spec, samples, x)
    noise = _loss_noise(spec, samples)
    latent = law_mean * jnp.exp(noise["sigma"] * jnp.asarray(samples[LATENT_LOSS_SITE]))
    run_loss = jnp.where(jnp.asarray(runs.loss_mask), jnp.asarray(np.nan_to_num(runs.loss, nan=1.0)), latent)
    _, value = chain_values(spec, samples, x, run_loss, runs.loss_scale)
    p_correct = correct_from_output(spec.link.output, value)
    if spec.run_effect:
        p_correct = shift_by_run(p_correct, jnp.asarray(samples["run_effect"])[:, None, :])
    accuracy = _new_accuracy(spec, samples, runs, p_correct, key_metric)
    loss = spec.loss_likelihood.distribution(law_mean, noise).sample(key_loss)
    return {"loss": np.asarray(loss), "metric": accuracy}


def _new_accuracy(spec: ChainSpec, samples, runs: DownstreamRuns, p_correct, key) -> np.ndarray:
    items = None if runs.items is None else jnp.asarray(runs.items)[None, :, None]
    phi = jnp.asarray(samples["phi"])[:, :, None] if spec.metric_likelihood.has_concentration else None
    observed = spec.metric_likelihood.sample(key, p_correct, items, phi)
    return np.asarray(spec.metric_likelihood.as_fraction(observed, items))


def _to_datatree(draws, model, spec: ChainSpec, args, kwargs, runs: DownstreamRuns, key, num_prior_draws):
    key_ppc, key_prior = jax.random.split(key)
    sample_stats = draws["stats"]
    chains = np.shape(sample_stats["lp"])[0]
    flat = {k: np.asarray(v).reshape(-1, *np.shape(v)[2:]) for k, v in draws["samples"].items()}
    by_chain = lambda a: np.asarray(a).reshape(chains, -1, *np.shape(a)[1:])  # noqa: E731
    loglik = log_likelihood_in_blocks(model, flat, args, kwargs)
    # Parameters from the prior; the observed sites stay at their data (no prior predictive group).
    prior = prior_draws(model, key_prior, args, kwargs, num_prior_draws)
    ppc = _replicate(spec, flat, runs, key_ppc)
    task_names = [*model.link_params, "phi"]
    loss_dims = ["task", "run"] if spec.per_task_loss else ["run"]
    task_dims = {LATENT_LOSS_SITE: loss_dims, "_run_effect_z": ["run"], "run_effect": ["run"]}
    if spec.per_task_loss:  # each task's loss law and noise scale
        task_names += [*spec.loss_grouping.varying(), *spec.loss_likelihood.noise_names]
    for name in task_names:
        task_dims[name] = ["task"]
        task_dims[f"_{name}_z"] = ["task"]
    task_dims = {k: v for k, v in task_dims.items() if k in flat}
    constant = {**{k: np.asarray(v) for k, v in runs.x.items()}, "chance": runs.chance, "finished": runs.finished_mask}
    if runs.items is not None:
        constant["items"] = runs.items
    loss_loglik = np.where(runs.law_mask, np.asarray(loglik["loss"]), 0.0)
    metric_loglik = np.where(runs.metric_mask, np.asarray(loglik["metric"]), 0.0)
    return az.from_dict(
        {
            "posterior": {k: by_chain(v) for k, v in flat.items()},
            "sample_stats": sample_stats,
            "log_likelihood": {"loss": by_chain(loss_loglik), "metric": by_chain(metric_loglik)},
            "posterior_predictive": {"loss": by_chain(ppc["loss"]), "metric": by_chain(ppc["metric"])},
            "prior": {k: np.asarray(v)[None] for k, v in prior.items() if k not in ("loss", "metric")},
            "observed_data": {"loss": runs.loss, "metric": runs.accuracy},
            "constant_data": constant,
        },
        coords={"run": run_coordinate(runs.labels), "task": list(runs.tasks)},
        dims={"loss": loss_dims, "metric": ["task", "run"], "chance": ["task"], "items": ["task"], "finished": ["run"],
              **{k: ["run"] for k in runs.x}, **task_dims},
    )


def fit_downstream(
    data: pd.DataFrame | str | Path | DownstreamRuns,
    *,
    tasks: Sequence[str] = (),
    loss_law: str | Law = "chinchilla",
    link: str | Law = "link_sigmoid",
    loss_column: str | Mapping[str, str] | None = "loss",
    columns: Mapping[str, str] | None = None,
    items: Mapping[str, int] | Sequence[int] | None = None,
    chance: Mapping[str, float] | Sequence[float] | None = None,
    likelihood: str | Likelihood = "normal",
    metric_likelihood: str | MetricLikelihood = "auto",
    pooling: str = "partial",
    shared: Sequence[str] = (),
    run_effect: bool = False,
    priors: Mapping[str, PriorSpec] | None = None,
    num_warmup: int = 1000,
    num_samples: int = 1000,
    num_chains: int = 4,
    seed: int = 0,
    settings: SamplerSettings | None = None,
    map_starts: int = 32,
    allow_repeats: bool = False,
    num_prior_draws: int = 200,
    thresholds: Thresholds = Thresholds(),
    finished: str | None = None,
    centering: str = "auto",
    composites: Mapping[str, Mapping[str, float] | Sequence[str]] | None = None,
    evaluations: Mapping[str, int] | Sequence[int] | None = None,
    loss_pooling: str | Mapping[str, str] = "partial",
    loss_shared: Sequence[str] = (),
) -> DownstreamFit:
    """Fit loss law and link to one table of runs: inputs of the loss law (N, D, ...; `columns` maps them),
    a `loss_column` and one accuracy column per task in `tasks` (fractions; empty cells are missing).

    `link`: a link law with input "L" ("link_sigmoid", the default, "link_exponential", ...; see
    `bayescale.link_comparison` to choose one on the fitted runs). The default is the sigmoid because both of
    `compare_links`' scores on the fitted runs alone (PSIS-LOO and leave-future-out) rank it first on Gadre et
    al.'s over-training runs, where its forecasts of the held-out targets were within 5% and covered, while the
    per-task exponential's were 13-23% off (notebooks/03_downstream.ipynb).

    `items`/`chance`: per task (keyed by task column); `task_metadata` reads them from an eval metadata table.
    `metric_likelihood`: "auto" (Beta-Binomial with items, Beta without), "binomial", "beta_binomial",
    "beta". `pooling`: "partial" (hierarchical link across tasks) or "none" (each task on its own).
    `shared`: link parameters with one value for all tasks (e.g. ["gamma"]: with a shared decay rate the
    average error over tasks is itself Gadre's exponential in the loss).
    `run_effect`: add an offset on the logit of every task's accuracy shared by all tasks of a run, scale
    `run_effect_sd` ~ HalfNormal(0.2): runs that do better or worse on all tasks than their loss says (data
    order, tokenizer, over-training), so that the task average's interval does not shrink as if the tasks'
    scatter were independent. A new run draws a fresh offset.
    `priors`: replaces priors by name (loss-law and link parameters, "sigma"). Non-convergence warns
    (`ConvergenceWarning`) and sets `converged` False.
    `finished`: a boolean column marking finished runs; rows where it is False are link-only (intermediate
    checkpoints): their measured loss and accuracies inform the link, and the loss law never sees them.
    `composites` / `evaluations`: scores reported as weighted means of tasks, and accuracies that average
    several evaluations of the same items (see `downstream_runs`).
    `centering`: how pooled task-level values are sampled: "auto" (centered for the tasks whose accuracies
    move well beyond their noise, `informative_tasks`; non-centered for the others), "noncentered" or
    "centered" for every task.
    `loss_column={task: column}`: a loss per task (module docstring): each task's loss law has its own
    parameters, pooled across tasks as `loss_pooling` ("partial", "independent", "shared" or {parameter:
    level}, as `fit(group=...)`'s `pooling`) and `loss_shared` (parameters with one value for every task,
    e.g. the exponents) say, and its own noise scale; each task's link reads its loss relative to the task's
    geometric-mean loss. The pooled loss-law values are sampled centred when every task has at least two
    finished runs per loss-law parameter (`bayescale.grouping.make_grouping`'s "auto"), else non-centred.
    """
    if pooling not in POOLINGS:
        raise ValueError(f"unknown pooling {pooling!r}; choose one of {', '.join(POOLINGS)}")
    loss_law, link = get_law(loss_law), get_law(link)
    _check_laws(loss_law, link)
    priors = dict(priors or {})
    known = set(loss_law.params) | set(link.params) | {"sigma"}
    unknown = sorted(set(priors) - known)
    if unknown:
        raise KeyError(f"priors given for unknown parameters {unknown}; the chain has {sorted(known)}")
    loss_law = loss_law.with_priors({k: v for k, v in priors.items() if k in loss_law.params})
    link = link.with_priors({k: v for k, v in priors.items() if k in link.params})
    # The chained model has no discrepancy term (not measured there): independent noise on the loss.
    loss_likelihood = as_likelihood(likelihood, None).with_priors(priors)
    runs = data if isinstance(data, DownstreamRuns) else downstream_runs(
        data, loss_law, tasks=tasks, loss_column=loss_column, columns=columns, items=items, chance=chance,
        allow_repeats=allow_repeats, finished=finished, composites=composites, evaluations=evaluations,
    )
    if isinstance(metric_likelihood, str):
        metric_likelihood = MetricLikelihood(metric_likelihood)
    metric_likelihood = metric_likelihood.resolve(runs.items is not None)
    if metric_likelihood.family == "binomial" and runs.evaluations is not None and (runs.evaluations > 1).any():
        raise ValueError("the binomial likelihood would count repeated evaluations of the same items as independent "
                         "answers (too narrow); use the Beta-Binomial (metric_likelihood='beta_binomial', the default)")
    bad = sorted(set(shared) - set(link.params))
    if bad:
        raise KeyError(f"shared names {bad}, which are not parameters of link {link.name!r} ({list(link.params)})")
    loss_grouping = None
    if runs.per_task_loss:
        from bayescale.grouping import make_grouping

        loss_grouping = make_grouping(loss_law, "task", pooling=loss_pooling, shared=loss_shared, centering="auto",
                                      group_sizes=runs.law_mask.sum(axis=1))
    elif loss_shared or loss_pooling != "partial":
        raise ValueError("loss_pooling and loss_shared apply to a loss per task (loss_column={task: column})")
    args, kwargs = model_inputs(runs, metric_likelihood)
    per_task = [n for n in shared if task_level(link.params[n].prior, args[2])]
    if per_task:
        raise ValueError(f"link parameters {per_task} have priors that read each task's chance level: they cannot be shared")
    if centering not in CENTERINGS:
        raise ValueError(f"unknown centering {centering!r}; choose one of {', '.join(CENTERINGS)}")
    centered = {"auto": informative_tasks(runs), "noncentered": None,
                "centered": (1.0,) * len(runs.tasks)}[centering]
    spec = ChainSpec(loss_law, link, loss_likelihood, metric_likelihood, pooling, tuple(shared), bool(run_effect),
                     centered, loss_grouping)
    settings = settings or SamplerSettings(num_warmup=num_warmup, num_samples=num_samples, num_chains=num_chains)

    model = chain_model(spec)
    key = jax.random.PRNGKey(seed)
    draws = sample_posterior(program_for(model, args, kwargs), settings, key, args, kwargs, map_starts=map_starts)
    check_map_values(draws["map_values"], what=f"MAP of the downstream chain {loss_law.name!r} -> {link.name!r}")
    dt = _to_datatree(draws, model, spec, args, kwargs, runs, jax.random.split(key, 3)[2], num_prior_draws)
    diagnostics = check_convergence(dt, params=_checked_params(dt), thresholds=thresholds)
    warn_if_not_converged(diagnostics, what=f"downstream fit of {loss_law.name!r} -> {link.name!r}")
    prior = {name: np.asarray(dt.prior[name]).reshape(-1, len(runs.tasks)) for name in link.params}
    warn_if_link_prior_misses(link_prior_check(spec, runs, prior), link)
    return DownstreamFit(spec=spec, data=dt, runs=runs, diagnostics=diagnostics, settings=settings, seed=seed,
                         map=scalar_sites(draws["map"]))


LINK_PRIOR_BAND = (0.005, 0.995)


def link_prior_check(spec: ChainSpec, runs: DownstreamRuns, prior: Mapping[str, Any], band=LINK_PRIOR_BAND) -> dict:
    """The link's prior predictive at the runs' measured losses: for every observed accuracy of a run with a
    measured loss, whether it lies inside the central `band` of the link's expected accuracy under prior
    draws of the link parameters (`prior`: name -> (draws, tasks)). Returns the count outside, the number
    checked and the tasks concerned; an accuracy outside says the link's priors (a midpoint in the wrong loss
    unit, a ceiling below the data) cannot reach it."""
    link = spec.link
    params = {name: np.asarray(prior[name], float)[:, :, None] for name in link.params}
    value = np.asarray(link.mean(params, {"L": runs.link_loss[None]}))
    expected = np.asarray(correct_from_output(link.output, value))
    lo, hi = np.nanquantile(expected, band[0], axis=0), np.nanquantile(expected, band[1], axis=0)
    checked = runs.metric_mask & ~np.isnan(runs.link_loss)
    observed = np.where(checked, runs.accuracy, np.nan)
    # The band is of the expected accuracy; an observed fraction also carries its sampling noise (1.0 on a
    # task of 500 items is what p = 0.995 gives), so it counts as outside only beyond 3 binomial sds
    # (100 items assumed when the count is unknown) and half an item.
    items = item_counts(runs)[:, None]
    margin_lo = 3 * np.sqrt(lo * (1 - lo) / items) + 0.5 / items
    margin_hi = 3 * np.sqrt(hi * (1 - hi) / items) + 0.5 / items
    with np.errstate(invalid="ignore"):
        outside = checked & ((observed < lo - margin_lo) | (observed > hi + margin_hi))
    tasks = [runs.tasks[i] for i in np.flatnonzero(outside.any(axis=1))]
    return {"outside": int(outside.sum()), "checked": int(checked.sum()), "tasks": tasks, "band": list(band)}


def warn_if_link_prior_misses(check: Mapping[str, Any], link: Law) -> None:
    if not check["outside"]:
        return
    import warnings

    from bayescale.prior_predictive import PriorWarning

    level = f"{100 * (check['band'][1] - check['band'][0]):g}%"
    shown = ", ".join(check["tasks"][:6]) + (f" and {len(check['tasks']) - 6} more" if len(check["tasks"]) > 6 else "")
    warnings.warn(
        f"{check['outside']} of {check['checked']} observed accuracies lie outside the {level} prior predictive "
        f"band of link {link.name!r} at their runs' losses (tasks: {shown}): the link's priors cannot produce "
        f"them, and the posterior is pulled against its prior there. Check the loss's unit and the tasks' chance "
        f"levels, or set the link's priors (fit_downstream(priors={{...}})).",
        PriorWarning, stacklevel=3,
    )


def _checked_params(dt) -> list[str]:
    # Latent standard-normal offsets of runs with a measured loss are pure prior: not worth checking.
    return [str(n) for n in dt.posterior.data_vars if not str(n).startswith("_")]


# ------------------------------------------------------------- predict ----
@dataclass(frozen=True)
class DownstreamPrediction:
    """Draws at new points. `loss`: a new run's loss (draws, points); `metric[task]`: the link at that loss
    (the task's expected metric, draws x points); `new_run[task]`: a new evaluation of the task (with its
    item and extra-binomial noise, and a fresh run offset under `run_effect`); `average` / `average_new_run`:
    the mean over tasks, per draw. Metrics are accuracies for every link (`output` "accuracy"), or errors
    when asked for (`predict(..., error=True)`, `output` "error")."""

    points: pd.DataFrame
    loss: np.ndarray  # (draws, points); (draws, tasks, points) with a loss per task
    metric: dict[str, np.ndarray]
    new_run: dict[str, np.ndarray]
    output: str
    tasks: tuple[str, ...]
    # Composite scores (`DownstreamRuns.composites`), also in `metric` and `new_run` under their names.
    composites: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def average(self) -> np.ndarray:
        return np.mean([self.metric[t] for t in self.tasks], axis=0)

    @property
    def average_new_run(self) -> np.ndarray:
        return np.mean([self.new_run[t] for t in self.tasks], axis=0)

    def quantiles(self, q: Sequence[float] = (0.05, 0.5, 0.95), new_run: bool = True) -> pd.DataFrame:
        """One row per (point, quantity): the loss (each task's, "loss[task]", with a loss per task), the average
        over tasks, each task and each composite."""
        rows = []
        if self.loss.ndim == 3:  # a loss per task
            series = {f"loss[{t}]": self.loss[:, i, :] for i, t in enumerate(self.tasks)}
        else:
            series = {"loss": self.loss}
        series["average"] = self.average_new_run if new_run else self.average
        series.update(self.new_run if new_run else self.metric)
        for i in range(len(self.points)):
            point = self.points.iloc[i].to_dict()
            for name, values in series.items():
                row = {**point, "quantity": name}
                row.update({f"q{100 * level:g}": float(np.quantile(values[:, i], level)) for level in q})
                rows.append(row)
        return pd.DataFrame(rows)

    def to_dict(self, q: Sequence[float] = (0.05, 0.5, 0.95)) -> dict:
        return {"output": self.output, "tasks": list(self.tasks), "composites": self.composites,
                "rows": self.quantiles(q).to_dict(orient="records")}


def posterior_draws(fit: DownstreamFit) -> dict[str, np.ndarray]:
    """Every posterior variable of the chain with chains and draws flattened: {name: (draws, ...)}."""
    post = fit.data.posterior
    return {str(n): np.asarray(post[n]).reshape(-1, *post[n].shape[2:]) for n in post.data_vars}


def predict_downstream(fit: DownstreamFit, at, *, seed: int = 0, loss: Sequence[float] | None = None,
                       error: bool = False) -> DownstreamPrediction:
    """Loss and every task's metric at new inputs `at` ({"N": 6.9e9, "D": 1.4e11} or a DataFrame), as
    posterior draws. `loss=`: known losses of those runs, to predict the metrics from a measured loss.
    Metrics are accuracies (the fraction answered correctly) whatever the link's own output; `error=True`
    gives 1 - accuracy instead (`DownstreamPrediction.output` says which). With a loss per task, `loss` of the
    prediction is (draws, tasks, points): each task's new loss, from which its accuracy follows."""
    points = points_from_mapping(at, fit.loss_law)
    samples = posterior_draws(fit)
    spec = fit.spec
    x = {k: jnp.asarray(v) for k, v in points.x.items()}
    key_loss, key_metric = jax.random.split(jax.random.PRNGKey(seed))
    law_mean, _ = chain_values(spec, samples, x)
    if loss is None:
        new_loss = spec.loss_likelihood.distribution(law_mean, _loss_noise(spec, samples)).sample(key_loss)
    elif spec.per_task_loss:
        raise ValueError("this chain has a loss per task: predict from its loss laws (loss=None); predicting from "
                         "known losses needs one per task and point, which predict does not take yet")
    else:
        loss = np.broadcast_to(np.asarray(loss, float), (len(points),))
        new_loss = jnp.broadcast_to(jnp.asarray(loss), law_mean.shape)
    _, value = chain_values(spec, samples, x, new_loss, fit.runs.loss_scale)           # (draws, tasks, points)
    p_correct = correct_from_output(spec.link.output, value)
    expected = np.asarray(p_correct)
    if spec.run_effect:
        key_metric, key_run = jax.random.split(key_metric)
        offset = jnp.asarray(samples["run_effect_sd"])[:, None] * jax.random.normal(key_run, (law_mean.shape[0], len(points)))
        p_correct = shift_by_run(p_correct, offset[:, None, :])
    accuracy = _new_accuracy(spec, samples, fit.runs, p_correct, key_metric)
    if error:
        expected, accuracy = 1.0 - expected, 1.0 - accuracy
    tasks = fit.runs.tasks
    metric = {t: expected[:, i, :] for i, t in enumerate(tasks)}
    new_run = {t: np.asarray(accuracy[:, i, :]) for i, t in enumerate(tasks)}
    composites = fit.runs.composites
    for name, weights in composites.items():  # weights sum to 1, so the mean of errors is 1 - the mean of accuracies
        metric[name] = sum(w * metric[t] for t, w in weights.items())
        new_run[name] = sum(w * new_run[t] for t, w in weights.items())
    return DownstreamPrediction(
        points=points.to_frame().reset_index(drop=True),
        loss=np.asarray(new_loss),
        metric=metric,
        new_run=new_run,
        output="error" if error else "accuracy",
        tasks=tasks,
        composites=dict(composites),
    )


def summary_downstream(fit: DownstreamFit, quantiles=(0.05, 0.5, 0.95)) -> pd.DataFrame:
    """Per parameter (task-indexed link parameters one row per task, "k[hellaswag]"): mean, sd, quantiles,
    R-hat, bulk and tail ESS."""
    post = fit.data.posterior
    rhat = az.rhat(fit.data)
    ess_bulk = az.ess(fit.data, method="bulk")
    ess_tail = az.ess(fit.data, method="tail")
    rows = {}
    for name in _checked_params(fit.data):
        values = np.asarray(post[name]).reshape(-1, *post[name].shape[2:])
        dims = post[name].dims[2:]
        labels = [name] if values.ndim == 1 else [f"{name}[{c}]" for c in np.asarray(post[name][dims[0]])]
        columns = values.reshape(len(values), -1)
        for j, label in enumerate(labels):
            v = columns[:, j]
            row = {"mean": float(v.mean()), "sd": float(v.std(ddof=1))}
            row.update({f"q{100 * q:g}": float(np.quantile(v, q)) for q in quantiles})
            for stat_name, stat in (("rhat", rhat), ("ess_bulk", ess_bulk), ("ess_tail", ess_tail)):
                row[stat_name] = float(np.asarray(stat[name]).reshape(-1)[j])
            rows[label] = row
    return pd.DataFrame(rows).T


# --------------------------------------------------------- persistence ----
def _changed_priors(law: Law) -> dict[str, Any]:
    """Priors that differ from the catalogue's declaration of `law` (all of them for a law not in it)."""
    from bayescale.persistence import prior_to_json

    declared = laws().get(law.name)
    return {name: prior_to_json(p.prior) for name, p in law.params.items()
            if declared is None or name not in declared.params or p.prior is not declared.params[name].prior}


def save_downstream(fit: DownstreamFit, path: str | Path) -> Path:
    """One NetCDF file: the DataTree with the chain's description as JSON in the root attribute
    `bayescale_downstream`. Laws are stored by name with their declaration (inputs, parameters, form):
    catalogue laws and laws registered with `bayescale.register_law` load by themselves; any other law is
    passed to `load_downstream`, which refuses a law that does not match the declaration."""
    from bayescale.persistence import law_declaration, law_fingerprint

    path = Path(path)
    spec = fit.spec
    posterior = fit.data.posterior
    drawn = {k: posterior[k].values for k in (*spec.loss_law.params, *spec.link.params) if k in posterior}
    inputs = {**{k: np.asarray(v) for k, v in fit.runs.x.items()}, "L": np.asarray(fit.runs.loss)}
    meta = {
        "format_version": FORMAT_VERSION,
        "loss_law": law_declaration(spec.loss_law, law_fingerprint(spec.loss_law, drawn, inputs)),
        "link": law_declaration(spec.link, law_fingerprint(spec.link, drawn, {"L": inputs["L"][np.isfinite(inputs["L"])]})),
        "loss_likelihood": spec.loss_likelihood.to_dict(),
        "metric_likelihood": spec.metric_likelihood.to_dict(),
        "pooling": spec.pooling,
        "shared": list(spec.shared),
        "run_effect": spec.run_effect,
        "centered": None if spec.centered is None else list(spec.centered),
        "tasks": list(fit.runs.tasks),
        "composites": fit.runs.composites,
        "evaluations": None if fit.runs.evaluations is None else [int(v) for v in fit.runs.evaluations],
        "labels": [str(v) for v in fit.runs.labels],
        "sources": fit.runs.sources,
        "loss_column": fit.runs.loss_column,
        "loss_columns": fit.runs.loss_columns,
        "loss_grouping": None if spec.loss_grouping is None else spec.loss_grouping.to_dict(),
        "settings": fit.settings.to_dict(),
        "seed": fit.seed,
        "map": fit.map,
        "priors": {**_changed_priors(spec.loss_law), **_changed_priors(spec.link)},
    }
    dt = fit.data.copy()
    dt.attrs["bayescale_downstream"] = json.dumps(meta)
    tmp = path.with_name(path.name + ".tmp")
    dt.to_netcdf(tmp, engine="h5netcdf")
    tmp.replace(path)
    return path


def is_downstream_file(path: str | Path) -> bool:
    try:
        dt = az.from_netcdf(Path(path), engine="h5netcdf")
    except Exception:  # noqa: BLE001  not a readable NetCDF: not ours either
        return False
    return "bayescale_downstream" in dt.attrs


def load_downstream(path: str | Path, *, loss_law: Law | None = None, link: Law | None = None,
                    allow_changed_law: bool = False) -> DownstreamFit:
    """A saved downstream fit. `loss_law` / `link`: the Law objects, for laws that are neither in the
    catalogue nor registered (`bayescale.register_law`); they must carry the saved names, inputs and
    parameters, and compute what the saved ones computed (`allow_changed_law=True` loads a changed formula
    with a warning instead of refusing it)."""
    from bayescale.persistence import prior_from_json, read_fit_file, saved_law

    path = Path(path)
    dt, meta = read_fit_file(path, "bayescale_downstream", "downstream fit", FORMAT_VERSION)
    priors = {k: prior_from_json(v) for k, v in meta["priors"].items()}
    priors = {k: v for k, v in priors.items() if v is not None}
    loss_law = saved_law(path, meta["loss_law"], loss_law, role="loss law",
                         pass_as="load_downstream(path, loss_law=<the Law>)", allow_changed_law=allow_changed_law)
    link = saved_law(path, meta["link"], link, role="link", pass_as="load_downstream(path, link=<the Law>)",
                     allow_changed_law=allow_changed_law)
    loss_law = loss_law.with_priors({k: v for k, v in priors.items() if k in loss_law.params})
    link = link.with_priors({k: v for k, v in priors.items() if k in link.params})
    spec = ChainSpec(loss_law, link, Likelihood(**meta["loss_likelihood"]),
                     MetricLikelihood(**meta["metric_likelihood"]), meta["pooling"], tuple(meta["shared"]), meta["run_effect"],
                     None if meta.get("centered") is None else tuple(meta["centered"]),
                     None if meta.get("loss_grouping") is None else Grouping.from_dict(meta["loss_grouping"]))
    constant = dt.constant_data
    runs = DownstreamRuns(
        x={k: np.asarray(constant[k]) for k in loss_law.inputs},
        loss=np.asarray(dt.observed_data["loss"]),
        accuracy=np.asarray(dt.observed_data["metric"]),
        tasks=tuple(meta["tasks"]),
        items=np.asarray(constant["items"]).astype(int) if "items" in constant else None,
        chance=np.asarray(constant["chance"]),
        labels=np.asarray(meta["labels"]),
        sources=meta["sources"],
        loss_column=meta["loss_column"],
        finished=np.asarray(constant["finished"]).astype(bool) if "finished" in constant else None,
        composites=meta.get("composites") or {},
        evaluations=None if meta.get("evaluations") is None else np.asarray(meta["evaluations"], int),
        loss_columns=meta.get("loss_columns"),
    )
    return DownstreamFit(spec=spec, data=dt, runs=runs, diagnostics=check_convergence(dt, params=_checked_params(dt)),
                         settings=SamplerSettings(**meta["settings"]), seed=meta["seed"], map=meta["map"])
