"""Loss curve under learning-rate annealing (Tissue et al. 2024): L(s) = L0 + A S1^-alpha - C S2.

Tissue, Wang & Wang 2024, "Scaling Law with Learning Rate Annealing" (arXiv:2408.11029), eq. 1. The loss at
step s of a run depends on its learning-rate schedule eta_1..eta_s through two areas:
- S1 = sum_{i<=s} eta_i, the forward area (how far the optimiser has travelled): a power law in it;
- S2 = sum_{i<=s} m_i with m_i = lambda m_{i-1} + (eta_{i-1} - eta_i), the annealing area: the learning-rate
  drops so far, with momentum lambda ~ 0.999 (the loss responds to a drop with a delay). Annealing lowers
  the loss, by C S2.
One fit describes constant, cosine, warmup-stable-decay and other schedules at once, so a few short runs
predict the curve of a long run with another schedule.

Inputs S1 and S2 come from each run's schedule: `schedule_areas(table, run=..., step=..., lr=...,
schedule=per_step_rates)` adds them to a table of (run, step, loss) points. Warm-up steps (before the schedule's first maximum) count
in S1 but not in S2, as in the paper. Points of one run are correlated: fit with the "ar1" likelihood and
`sequence=(run, step)`:

    table = schedule_areas(curves, run="run", step="step", lr="lr")
    fit(table, "lr_annealing", likelihood="ar1", sequence=("run", "step"))

Parameters and priors:
- L0: the loss the power law approaches, uniform below the smallest observed loss;
- A: coefficient, LogNormal(log 1, 3), sampled at the data's geometric-mean S1 (`Param.pivot`): S1 is a sum
  of learning rates (1e-4 x 1e4-1e5 steps: ~1-100), so A is of the order of the loss's reducible part;
- alpha: exponent of S1, LogNormal(log 0.5, 0.6) (the paper's fits: about 0.4-0.6);
- C: annealing coefficient, LogNormal(log 1, 3): S2 is of the order of S1, C S2 of the order of the few
  tenths of a nat that annealing gains; positive, since annealing lowers the loss.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pandas as pd
from scipy.signal import lfilter

from bayescale.law import Law, Param
from bayescale.models import priors
from bayescale.runs import DataError, read_table


def schedule_areas_of_run(steps: np.ndarray, lr: np.ndarray, decay: float = 0.999) -> tuple[np.ndarray, np.ndarray]:
    """(S1, S2) at `steps` of one run whose learning rate is `lr` at those steps. The schedule between
    logged steps is taken as linear (exact when every step is logged); steps start at 1."""
    order = np.argsort(steps)
    steps, lr = np.asarray(steps, float)[order], np.asarray(lr, float)[order]
    every = np.arange(1, int(steps[-1]) + 1)
    eta = np.interp(every, steps, lr)
    drops = np.concatenate([[0.0], eta[:-1] - eta[1:]])
    drops[: int(np.argmax(eta)) + 1] = 0.0  # warm-up: a rising rate is not annealing
    momentum = lfilter([1.0], [1.0, -decay], drops)
    s1, s2 = np.cumsum(eta), np.cumsum(momentum)
    at = steps.astype(int) - 1
    out1, out2 = np.empty_like(s1[at]), np.empty_like(s2[at])
    out1[order], out2[order] = s1[at], np.maximum(s2[at], 0.0)
    return out1, out2


def schedule_areas(source, run: str = "run", step: str = "step", lr: str = "lr", decay: float = 0.999,
                   schedule: pd.DataFrame | None = None) -> pd.DataFrame:
    """The table with columns S1 and S2 added, computed per run from its learning-rate schedule.

    `schedule`: a table with the same run, step and lr columns giving each run's rate at (ideally) every
    step; without it the loss table's own (step, lr) points are used, linearly between them, and the rate
    before a run's first logged step is taken as that step's (a warm-up that is not logged is then missed:
    a `UserWarning` says so)."""
    import warnings

    table = read_table(source).copy()
    rates = table if schedule is None else read_table(schedule)
    for frame, what in ((table, "table"), (rates, "schedule")):
        for column in (run, step) + ((lr,) if frame is rates else ()):
            if column not in frame.columns:
                raise DataError(f"column {column!r} is not in the {what}; columns are: {', '.join(map(str, frame.columns))}")
    for column in (step, lr):
        values = pd.to_numeric(rates[column], errors="coerce")
        bad = values.isna() | (values <= 0)
        if bad.any():
            raise DataError(f"column {column!r} must be positive numbers; not at rows {list(rates.index[bad][:8])}")
    if not 0 < decay < 1:
        raise ValueError(f"the annealing momentum must lie in (0, 1), got {decay}")
    # Rows are addressed by position: a table's index may repeat (pd.concat of per-run frames keeps theirs).
    s1_all, s2_all = np.full(len(table), np.nan), np.full(len(table), np.nan)
    by_run = dict(tuple(rates.groupby(run, sort=False)))
    late = []
    for name, positions in table.groupby(run, sort=False).indices.items():
        rows = table.iloc[positions]
        if name not in by_run:
            raise DataError(f"run {name!r} has no learning-rate schedule in the schedule table")
        known = by_run[name].sort_values(step)
        if known[step].iloc[0] > 1:
            late.append(f"{name!r} (from step {known[step].iloc[0]:g})")
        every = np.arange(1, int(max(known[step].max(), rows[step].max())) + 1)
        s1, s2 = schedule_areas_of_run(every, np.interp(every, known[step], known[lr]), decay)
        at = pd.to_numeric(rows[step]).to_numpy().astype(int) - 1
        s1_all[positions], s2_all[positions] = s1[at], s2[at]
    table["S1"], table["S2"] = s1_all, s2_all
    if late:
        warnings.warn(f"learning rates of runs {', '.join(late[:5])} start after step 1: the rate before is taken "
                      "as the first one given, so S1 and S2 miss any warm-up; pass schedule= with every step",
                      UserWarning, stacklevel=2)
    return table


def _mean(p, x):
    return p["L0"] + jnp.exp(jnp.log(p["A"]) - p["alpha"] * jnp.log(x["S1"])) - p["C"] * x["S2"]


LR_ANNEALING = Law(
    name="lr_annealing",
    inputs=("S1", "S2"),
    params={
        "L0": Param(priors.below_min_output, "loss the power law in S1 approaches"),
        "A": Param(dist.LogNormal(0.0, 3.0), "coefficient of the forward area S1", pivot=("S1", "alpha")),
        "alpha": Param(priors.exponent(0.5, 0.6), "exponent of the forward area S1"),
        "C": Param(dist.LogNormal(0.0, 3.0), "loss drop per unit of annealing area S2"),
    },
    mean=_mean,
    nonnegative_inputs=("S2",),
    description="loss curve under any learning-rate schedule, through its forward and annealing areas",
    form="L(s) = L0 + A S1^-alpha - C S2,  S1 = sum eta_i,  S2 = sum m_i,  m_i = lambda m_(i-1) + eta_(i-1) - eta_i",
    reference="Tissue, Wang & Wang 2024, arXiv:2408.11029",
)
