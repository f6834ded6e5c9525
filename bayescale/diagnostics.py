"""Convergence checks that are enforced, not just printed.

`check_convergence` reads an ArviZ DataTree and compares R-hat (rank-normalised), bulk and tail ESS,
divergent transitions and E-BFMI with thresholds (Vehtari et al. 2021: R-hat < 1.01, ESS > 100 per chain).
A fit that fails gets a `ConvergenceWarning` naming each parameter at fault and what to try.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import arviz as az
import numpy as np
import pandas as pd


class ConvergenceWarning(UserWarning):
    """The sampler did not converge: the posterior and everything computed from it are not trustworthy."""


@dataclass(frozen=True)
class Thresholds:
    max_rhat: float = 1.01
    min_ess_per_chain: float = 100.0
    max_divergences: int = 0
    min_bfmi: float = 0.3


@dataclass(frozen=True)
class Diagnostics:
    table: pd.DataFrame                   # per parameter: rhat, ess_bulk, ess_tail
    divergences: int
    num_draws: int
    bfmi: np.ndarray                      # per chain
    problems: list[str] = field(default_factory=list)

    @property
    def converged(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict:
        return {
            "converged": self.converged,
            "divergences": self.divergences,
            "num_draws": self.num_draws,
            "bfmi": [float(b) for b in self.bfmi],
            "parameters": {
                name: {k: float(v) for k, v in row.items()} for name, row in self.table.iterrows()
            },
            "problems": list(self.problems),
        }


def _worst(stat, names, reduce) -> dict[str, float]:
    return {name: float(reduce(np.asarray(stat[name]))) for name in names}


def check_convergence(dt, params=None, thresholds: Thresholds = Thresholds()) -> Diagnostics:
    posterior = dt.posterior
    names = list(params) if params is not None else list(posterior.data_vars)
    num_chains = posterior.sizes["chain"]
    # arviz-stats 1.x returns the posterior group's node; vector parameters report their worst element.
    rhat = _worst(az.rhat(dt, var_names=names), names, np.max)
    bulk = _worst(az.ess(dt, method="bulk", var_names=names), names, np.min)
    tail = _worst(az.ess(dt, method="tail", var_names=names), names, np.min)
    table = pd.DataFrame({"rhat": rhat, "ess_bulk": bulk, "ess_tail": tail})

    stats = dt.sample_stats
    divergences = int(np.asarray(stats["diverging"]).sum()) if "diverging" in stats else 0
    bfmi = np.asarray(az.bfmi(dt)["energy"]) if "energy" in stats else np.array([])
    num_draws = posterior.sizes["chain"] * posterior.sizes["draw"]

    return judge(table, divergences, num_draws, bfmi, num_chains, thresholds)


def judge(table: pd.DataFrame, divergences: int, num_draws: int, bfmi: np.ndarray, num_chains: int,
          thresholds: Thresholds = Thresholds()) -> Diagnostics:
    """Compare computed statistics with the thresholds (shared by `check_convergence` and the vectorised
    diagnostics of `bayescale.batch`)."""
    min_ess = thresholds.min_ess_per_chain * num_chains
    problems = []
    for name, row in table.iterrows():
        if not np.isfinite(row.rhat) or row.rhat > thresholds.max_rhat:
            problems.append(
                f"{name}: R-hat {row.rhat:.3f} > {thresholds.max_rhat} (chains disagree: run more warm-up/draws, "
                f"check for several modes, or tighten the prior)"
            )
        if not row.ess_bulk >= min_ess or not row.ess_tail >= min_ess:
            problems.append(
                f"{name}: ESS bulk {row.ess_bulk:.0f} / tail {row.ess_tail:.0f} < {min_ess:.0f} "
                f"(draw more samples, or reparametrise)"
            )
    if divergences > thresholds.max_divergences:
        problems.append(
            f"{divergences} divergent transitions of {num_draws} (raise target_accept_prob, e.g. 0.95-0.99, "
            f"or use more informative priors; the posterior may be biased)"
        )
    low = np.flatnonzero(bfmi < thresholds.min_bfmi)
    if low.size:
        problems.append(
            f"E-BFMI {', '.join(f'{bfmi[i]:.2f}' for i in low)} < {thresholds.min_bfmi} in chains {low.tolist()} "
            f"(heavy-tailed energy: the sampler explores poorly; reparametrise or tighten priors)"
        )
    return Diagnostics(table=table, divergences=divergences, num_draws=num_draws, bfmi=bfmi, problems=problems)


def warn_if_not_converged(diagnostics: Diagnostics, what: str = "fit") -> None:
    if diagnostics.converged:
        return
    warnings.warn(
        f"{what} DID NOT CONVERGE; do not trust its posterior or predictions:\n  - "
        + "\n  - ".join(diagnostics.problems),
        ConvergenceWarning,
        stacklevel=3,
    )
