"""Automatic retries of a fit that fails its convergence checks, with settings escalated by what failed.

A failed check says what kind of trouble the sampler had (`Diagnostics.failed`), and each kind has a
standard remedy (Betancourt 2017, "A conceptual introduction to Hamiltonian Monte Carlo"; Vehtari et al.
2021, "Rank-normalization, folding, and localization: an improved R-hat"):

- divergent transitions or low E-BFMI: the step size is too large for the posterior's narrowest region, so
  the target acceptance rises (smaller steps) and the warm-up doubles (a better-adapted dense mass matrix);
- R-hat above its threshold: the chains disagree, from a warm-up too short to forget the starts or from
  several modes, so the warm-up doubles and the MAP search that places the starts gets four times the starts;
- too few effective draws alone: the chains agree but are short, so the draws double.

A retry is a fresh run with a new seed stream, not a continuation, so the reported draws come from one run
with one set of settings. `RetryPolicy(max_retries=0)` switches retries off. The policy is plain data and
`escalate` a pure function, shared by single fits (`bayescale.fit`) and batches (`bayescale.batch`, which
refits the failed data sets together in a second vmapped pass and so cannot change the number of draws).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from bayescale.diagnostics import Diagnostics
from bayescale.inference import SamplerSettings


@dataclass(frozen=True)
class RetryPolicy:
    """`max_retries`: refits after the first run (0: none). `max_target_accept`: the ceiling of the target
    acceptance. `warmup_factor`, `draws_factor`, `map_starts_factor`: multipliers per retry. `max_warmup`,
    `max_samples`: ceilings that bound a retry's cost."""

    max_retries: int = 1
    max_target_accept: float = 0.99
    warmup_factor: int = 2
    draws_factor: int = 2
    map_starts_factor: int = 4
    max_warmup: int = 8000
    max_samples: int = 8000

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


NO_RETRIES = RetryPolicy(max_retries=0)
# What `retries=None` means everywhere (fit, fit_batch, backtest, jobs): one retry. A session that fits many
# small throwaway posteriors (a test suite, a tutorial at tiny settings) may set it to NO_RETRIES.
DEFAULT_POLICY = RetryPolicy()


def as_retry_policy(spec: RetryPolicy | int | bool | None) -> RetryPolicy:
    """A policy from a policy, a number of retries, True (one retry), None (`DEFAULT_POLICY`, read at call
    time) or False (none)."""
    if isinstance(spec, RetryPolicy):
        return spec
    if spec is None:
        return DEFAULT_POLICY
    if spec is True:
        return RetryPolicy()
    if spec is False:
        return NO_RETRIES
    if isinstance(spec, int) and spec >= 0:
        return RetryPolicy(max_retries=int(spec))
    raise ValueError(f"retries must be a RetryPolicy, a number >= 0 or a bool, got {spec!r}")


@dataclass(frozen=True)
class Escalation:
    """The settings of the next attempt and why they changed."""

    settings: SamplerSettings
    map_starts: int
    reason: str


def escalate(settings: SamplerSettings, map_starts: int, failed: frozenset[str], policy: RetryPolicy = RetryPolicy(),
             fixed_draws: bool = False) -> Escalation:
    """The next attempt's settings given the kinds of check that failed (`Diagnostics.failed`; a batch passes
    the union over its failed members). `fixed_draws`: keep num_samples (a batch's second pass shares its
    arrays with the first)."""
    changes: dict[str, Any] = {}
    why = []
    if failed & {"divergences", "bfmi"}:
        changes["target_accept_prob"] = max(settings.target_accept_prob, policy.max_target_accept)
        why.append("divergences/low E-BFMI: smaller steps")
    if failed & {"divergences", "bfmi", "rhat"}:
        changes["num_warmup"] = min(settings.num_warmup * policy.warmup_factor, policy.max_warmup)
        why.append("longer warm-up")
    if "rhat" in failed:
        map_starts = map_starts * policy.map_starts_factor
        why.append("R-hat: more MAP starts")
    if "ess" in failed and not fixed_draws:
        changes["num_samples"] = min(settings.num_samples * policy.draws_factor, policy.max_samples)
        why.append("low ESS: more draws")
    if "ess" in failed and fixed_draws and "num_warmup" not in changes:
        changes["num_warmup"] = min(settings.num_warmup * policy.warmup_factor, policy.max_warmup)
        why.append("low ESS: longer warm-up (a batch keeps its number of draws)")
    new = dataclasses.replace(settings, **changes)
    described = ", ".join(f"{k} {getattr(settings, k)} -> {v}" for k, v in changes.items())
    if "rhat" in failed:
        described += (", " if described else "") + f"map_starts -> {map_starts}"
    return Escalation(settings=new, map_starts=map_starts, reason=f"{'; '.join(why)} ({described})")


def attempt_record(settings: SamplerSettings, map_starts: int, diagnostics: Diagnostics, reason: str = "") -> dict:
    """What one attempt ran and found, as a fit reports it (`Fit.attempts`)."""
    return {"settings": settings.to_dict(), "map_starts": int(map_starts), "converged": diagnostics.converged,
            "failed": sorted(diagnostics.failed), "problems": list(diagnostics.problems), "retry_because": reason}
