"""Misfit checks: does the fitted model describe each run, not only did the sampler converge?

A converged posterior can still belong to a model that does not describe the data. `check_misfit` reads a
fit's ArviZ DataTree (log_likelihood, posterior_predictive and observed_data of the observed variable, named after the output,
over runs) and asks,
per run, what leave-one-out cross-validation says:

- Pareto k of PSIS-LOO (`az.loo(dt, pointwise=True)`; Vehtari et al. 2017, 2024). k > 0.7: the run is
  highly influential, the posterior moves a lot when it is left out, and importance sampling cannot
  estimate its leave-one-out predictive (its LOO-PIT below is then unreliable too). ArviZ's own threshold,
  `good_k = min(1 - 1/log10(S), 0.7)`, is 0.7 from S = 2,154 draws up; it is lower for fewer draws.
- LOO-PIT (Gabry et al. 2019, "Visualization in Bayesian workflow", JRSS A; `az.loo_pit`, from the same
  PSIS weights): PIT_i = sum_s w_is 1[yrep_is < y_i], the probability, under the predictive fitted without
  run i, of a replicate below the observed loss. For a calibrated model the values are ~uniform on [0, 1].
  A run at 0 or 1 lies beyond (nearly) every replicate; a hump in the middle means intervals too wide for
  most runs (typically noise inflated by a few runs the law misses), a U shape intervals too narrow.

Uniformity test. Säilynoja et al. 2022 ("Graphical test for discrete uniformity and its applications in
goodness-of-fit evaluation and multiple sample comparison", Statistics and Computing 32:32) test the PIT
ECDF against simultaneous bands (what `az.plot_loo_pit` draws). Here we want one number, so two tests, each
aimed at a failure the other misses, combined by Bonferroni (p = min(1, 2 min(p_ks, p_tail))):
- Kolmogorov-Smirnov against U(0, 1) (`scipy.stats.kstest`): sensitive to shape in the bulk (hump, U,
  shift), nearly blind to a few runs in the extreme tails.
- Extreme-tail count: the number of runs with PIT < `pit_tail` or > 1 - `pit_tail` (default 0.005), against
  Binomial(n, 2 pit_tail), one-sided (`scipy.stats.binomtest`, alternative "greater"): more runs far
  outside the predictive than a calibrated model produces. Fewer than expected is left to KS.
On the bundled Chinchilla runs, the normal likelihood fails the KS test (a hump: sigma is inflated by runs
the law misses), and the Student-t likelihood fails the tail test (its five highest-loss runs have PIT 1.0).
LOO-PIT values are not exactly independent (each depends on all runs through the posterior); with a few
parameters and many runs the tests are approximately valid, not exact.

Verdict (thresholds in `MisfitThresholds`):
- Uniformity p < `min_uniformity_p` (0.01) is a problem, and puts at fault the runs with extreme PIT and the
  influential runs (k > `max_pareto_k`, 0.7, whose PIT is unreliable). When the test passes, a few extreme
  runs are what a uniform sample gives (1 - 0.99^245 = 91% of calibrated fits of 245 runs have at least
  one), and they are not named.
- A run with k > `max_pareto_k` (0.7) is influential (`Misfit.influential`), but that alone is not a
  misfit: a well-specified law puts runs at the edge of the design (here the smallest models) there. On
  simulated 60-run Chinchilla data with sigma 0.01 and default sampling, the largest k of five data sets
  ranged 0.47-0.85, and one data set gave 0.64 or 0.85 with two sampler seeds. So a run fails on its own only above
  `fail_pareto_k` (1.0): the leave-one-out importance ratios then have no finite mean, i.e. the posterior
  without the run is far from the one with it (Vehtari et al. 2024).
`warn_if_misfit` turns problems into a `MisfitWarning` that names the runs at fault and what to try.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import arviz as az
import numpy as np
import pandas as pd
import xarray as xr
from scipy import stats

from bayescale.posterior import observed_var

RUN_DIM = "run"
MAX_NAMED = 20  # runs named per message line


class MisfitWarning(UserWarning):
    """The model does not describe some runs: its posterior may be fine, but its predictions and intervals
    are not calibrated there."""


@dataclass(frozen=True)
class MisfitThresholds:
    max_pareto_k: float = 0.7       # above: an influential run, PSIS-LOO unreliable for it
    fail_pareto_k: float = 1.0      # above: a problem on its own (the run conflicts with the others)
    min_uniformity_p: float = 0.01  # below: LOO-PIT values not uniform (combined KS and tail-count test)
    pit_tail: float = 0.005         # LOO-PIT below this or above 1 - this: a run in the extreme tails


@dataclass(frozen=True)
class Misfit:
    """Per-run leave-one-out checks of a fit (plain data; arrays in the fit's run order)."""

    labels: tuple                   # run labels (`fit.runs.labels`)
    pareto_k: np.ndarray            # PSIS-LOO Pareto k per run
    loo_pit: np.ndarray             # LOO-PIT per run
    uniformity_p: float             # Bonferroni combination of ks_p and tail_p
    ks_p: float                     # Kolmogorov-Smirnov test of loo_pit against U(0, 1)
    tail_count: int                 # runs with LOO-PIT in the extreme tails
    tail_expected: float            # what a uniform sample puts there on average
    tail_p: float                   # one-sided binomial test of tail_count
    runs_at_fault: tuple            # labels of the runs named in `problems`
    influential: tuple = ()         # labels of the runs with Pareto k > max_pareto_k (at fault or not)
    problems: list[str] = field(default_factory=list)
    thresholds: MisfitThresholds = MisfitThresholds()

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def table(self) -> pd.DataFrame:
        """pareto_k, loo_pit and at_fault per run, indexed by run label."""
        at_fault = set(self.runs_at_fault)
        return pd.DataFrame(
            {"pareto_k": self.pareto_k, "loo_pit": self.loo_pit, "at_fault": [x in at_fault for x in self.labels]},
            index=pd.Index(list(self.labels), name="run"),
        )

    def to_dict(self) -> dict:
        return {
            "ok": self.ok,
            "uniformity_p": float(self.uniformity_p),
            "ks_p": float(self.ks_p),
            "tail_count": int(self.tail_count),
            "tail_expected": float(self.tail_expected),
            "tail_p": float(self.tail_p),
            "runs_at_fault": [_plain(x) for x in self.runs_at_fault],
            "influential": [_plain(x) for x in self.influential],
            "runs": {
                str(_plain(label)): {"pareto_k": float(k), "loo_pit": float(p)}
                for label, k, p in zip(self.labels, self.pareto_k, self.loo_pit)
            },
            "thresholds": {
                "max_pareto_k": self.thresholds.max_pareto_k,
                "fail_pareto_k": self.thresholds.fail_pareto_k,
                "min_uniformity_p": self.thresholds.min_uniformity_p,
                "pit_tail": self.thresholds.pit_tail,
            },
            "problems": list(self.problems),
        }


def _plain(x) -> Any:
    x = x.item() if isinstance(x, np.generic) else x
    return x if isinstance(x, (str, int, float, bool)) else str(x)


def applies(dt, likelihood: str | None = None) -> bool:
    """Whether `dt` holds what the checks read: a log_likelihood of the observed variable (`observed_var`)
    over dimension "run", and its posterior predictive and observed values. Not for the "ar1" `likelihood` family: its points are
    not exchangeable (each one's likelihood is conditional on its predecessor, its replicates are whole new
    curves), so leaving one point out and a uniform LOO-PIT are not the right checks."""
    if likelihood == "ar1":
        return False
    try:
        var = observed_var(dt)
        return (
            RUN_DIM in dt.log_likelihood[var].dims
            and var in dt.posterior_predictive.data_vars
            and var in dt.observed_data.data_vars
        )
    except (AttributeError, KeyError):
        return False


def psis_loo(dt):
    """`az.loo(dt, pointwise=True)` of the observed variable, without ArviZ's own high-k warning (the misfit checks report it)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Estimated shape parameter of Pareto", category=UserWarning)
        return az.loo(dt, pointwise=True, var_name=observed_var(dt))


def loo_pit(dt, loo=None) -> np.ndarray:
    """LOO-PIT of each run, sum_s w_is 1[yrep_is < y_i] with the PSIS-LOO weights w (of `loo`, an
    `az.loo(dt, pointwise=True)` result, computed when None; ArviZ splits ties, impossible for continuous
    losses, at random with a fixed seed)."""
    loo = psis_loo(dt) if loo is None else loo
    var = observed_var(dt)
    pit = az.loo_pit(
        dt,
        var_names=var,
        log_weights=xr.Dataset({var: loo.log_weights}),
        pareto_k=xr.Dataset({var: loo.pareto_k}),
    )
    return np.asarray(pit[var], dtype=float)


def uniformity_test(pit, tail: float = MisfitThresholds.pit_tail) -> dict[str, float]:
    """KS and extreme-tail-count tests of LOO-PIT values against U(0, 1), and their Bonferroni combination
    (see the module docstring)."""
    pit = np.asarray(pit, dtype=float)
    pit = pit[np.isfinite(pit)]
    n = len(pit)
    if n == 0:
        return {"uniformity_p": np.nan, "ks_p": np.nan, "tail_count": 0, "tail_expected": 0.0, "tail_p": np.nan}
    ks_p = float(stats.kstest(pit, "uniform").pvalue)
    count = int(np.sum((pit < tail) | (pit > 1.0 - tail)))
    tail_p = float(stats.binomtest(count, n, 2 * tail, alternative="greater").pvalue)
    return {
        "uniformity_p": min(1.0, 2 * min(ks_p, tail_p)),
        "ks_p": ks_p,
        "tail_count": count,
        "tail_expected": 2 * tail * n,
        "tail_p": tail_p,
    }


def check_misfit(dt, labels=None, thresholds: MisfitThresholds = MisfitThresholds()) -> Misfit:
    """PSIS-LOO Pareto k and LOO-PIT of every run of `dt` (see `applies`), judged against `thresholds`.
    `labels`: the runs' labels (`fit.runs.labels`; default 0, 1, ...)."""
    loo = psis_loo(dt)
    k = np.asarray(loo.pareto_k, dtype=float).reshape(-1)
    pit = loo_pit(dt, loo).reshape(-1)
    labels = tuple(range(len(k))) if labels is None else tuple(_plain(x) for x in np.asarray(labels).reshape(-1))
    if len(labels) != len(k):
        raise ValueError(f"{len(labels)} labels for {len(k)} runs")
    return judge_misfit(labels, k, pit, thresholds)


def _named(labels, values, indices, what: str) -> str:
    parts = [f"{labels[i]} ({what} {values[i]:.3g})" for i in indices[:MAX_NAMED]]
    more = len(indices) - MAX_NAMED
    return ", ".join(parts) + (f" and {more} more" if more > 0 else "")


def judge_misfit(labels: tuple, pareto_k: np.ndarray, pit: np.ndarray,
                 thresholds: MisfitThresholds = MisfitThresholds()) -> Misfit:
    """Compare per-run Pareto k and LOO-PIT with the thresholds (see the module docstring)."""
    test = uniformity_test(pit, thresholds.pit_tail)
    problems = []
    by_k = lambda idx: idx[np.argsort(-np.nan_to_num(pareto_k[idx], nan=np.inf))]  # noqa: E731
    influential = np.flatnonzero(~(pareto_k <= thresholds.max_pareto_k))  # NaN k counts as high
    conflicting = np.flatnonzero(~(pareto_k <= thresholds.fail_pareto_k))
    if conflicting.size:
        problems.append(
            f"{conflicting.size} run(s) with Pareto k > {thresholds.fail_pareto_k} (the fit without each is far "
            f"from the fit with it: they conflict with the other runs, and their leave-one-out predictive "
            f"cannot be estimated): " + _named(labels, pareto_k, by_k(conflicting), "k")
        )
    at_fault = set(conflicting.tolist())
    if not test["uniformity_p"] >= thresholds.min_uniformity_p:
        problems.append(
            f"LOO-PIT values are not uniform (p = {test['uniformity_p']:.2g}: Kolmogorov-Smirnov p = "
            f"{test['ks_p']:.2g}; {test['tail_count']} runs in the extreme tails where a calibrated model puts "
            f"{test['tail_expected']:.1f}, binomial p = {test['tail_p']:.2g}): the predictive intervals are "
            f"miscalibrated"
        )
        tail = thresholds.pit_tail
        extreme = np.flatnonzero((pit < tail) | (pit > 1.0 - tail) | ~np.isfinite(pit))
        if extreme.size:
            order = extreme[np.argsort(-np.abs(np.nan_to_num(pit[extreme], nan=0.0) - 0.5))]
            problems.append(
                f"{extreme.size} run(s) beyond (nearly) every replicate of the predictive fitted without them "
                f"(LOO-PIT < {tail} or > {1 - tail}): " + _named(labels, pit, order, "PIT")
            )
            at_fault |= set(extreme.tolist())
        others = np.setdiff1d(influential, conflicting)
        if others.size:
            problems.append(
                f"{others.size} influential run(s) (Pareto k > {thresholds.max_pareto_k}: their LOO-PIT is "
                f"unreliable, and the fit leans on them): " + _named(labels, pareto_k, by_k(others), "k")
            )
            at_fault |= set(others.tolist())
    return Misfit(
        labels=tuple(labels),
        pareto_k=np.asarray(pareto_k, dtype=float),
        loo_pit=np.asarray(pit, dtype=float),
        runs_at_fault=tuple(labels[i] for i in sorted(at_fault)),
        influential=tuple(labels[i] for i in influential),
        problems=problems,
        thresholds=thresholds,
        **test,
    )


def warn_if_misfit(misfit: Misfit | None, what: str = "fit", likelihood: str | None = None) -> None:
    """A `MisfitWarning` naming the runs at fault and what to try, when `misfit` has problems.
    `likelihood`: the fit's likelihood family (a Student-t fit is not told to use a robust likelihood)."""
    if misfit is None or misfit.ok:
        return
    faulty = [str(x) for x in misfit.runs_at_fault]
    named = ", ".join(faulty[:MAX_NAMED]) + (f" and {len(faulty) - MAX_NAMED} more" if len(faulty) > MAX_NAMED else "")
    rest = ("an extrapolation-aware discrepancy term (fit(..., discrepancy=...)), or leaving a run out after "
            "checking it (a mis-recorded, diverged or differently trained run)")
    advice = (
        f"The robust likelihood already discounts outlying runs: try {rest}."
        if likelihood == "student_t"
        else f'Try a robust likelihood (fit(..., likelihood="student_t")), {rest}.'
    )
    warnings.warn(
        f"{what} MISFITS some runs; its predictions and intervals are not calibrated there:\n  - "
        + "\n  - ".join(misfit.problems)
        + f"\n  Runs at fault: {named}.\n  {advice}",
        MisfitWarning,
        stacklevel=3,
    )
