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
    # Which checks failed, out of FAILURE_KINDS: "ess" alone means "run longer"; "divergences", "bfmi" or
    # "rhat" mean the sampler did not explore the posterior as it is (see `bayescale.retries`).
    failed: frozenset[str] = frozenset()
    # Parameters the data barely inform (`prior_contraction`): their posterior is close to their prior, which
    # is the usual reason an exponent or a break point "does not converge".
    weakly_identified: tuple[str, ...] = ()

    @property
    def converged(self) -> bool:
        return not self.problems

    @property
    def verdict(self) -> str:
        """One line: converged; only too few effective draws (run longer); or a sampling failure."""
        if self.converged:
            return "converged"
        if self.failed == {"ess"}:
            return "too few effective draws: the chains agree, run longer (more num_samples)"
        broken = ", ".join(FAILURE_LABELS[k] for k in FAILURE_KINDS if k in self.failed and k != "ess")
        return f"sampling failed ({broken}): the draws may not represent the posterior"

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
            "failed": sorted(self.failed),
            "weakly_identified": list(self.weakly_identified),
            "verdict": self.verdict,
        }


FAILURE_KINDS = ("divergences", "bfmi", "rhat", "ess")
FAILURE_LABELS = {"divergences": "divergent transitions", "bfmi": "low E-BFMI", "rhat": "R-hat: chains disagree",
                  "ess": "too few effective draws"}


def check_convergence(dt, params=None, thresholds: Thresholds = Thresholds()) -> Diagnostics:
    posterior = dt.posterior
    names = list(params) if params is not None else list(posterior.data_vars)
    num_chains = posterior.sizes["chain"]
    # arviz-stats 1.x returns the posterior group's node; vector parameters report their worst element in
    # the table, and their elements (one per task, group, ...) are kept to say how many fail and where.
    full = {"rhat": az.rhat(dt, var_names=names), "ess_bulk": az.ess(dt, method="bulk", var_names=names),
            "ess_tail": az.ess(dt, method="tail", var_names=names)}
    worst = {"rhat": np.max, "ess_bulk": np.min, "ess_tail": np.min}
    table = pd.DataFrame({stat: {n: float(worst[stat](np.asarray(full[stat][n]))) for n in names} for stat in full})
    elements = {}
    for name in names:
        values = {stat: np.asarray(full[stat][name]).ravel() for stat in full}
        if values["rhat"].size > 1:
            dims = posterior[name].dims[2:]
            elements[name] = pd.DataFrame(values, index=pd.Index(_element_labels(posterior[name]),
                                                                 name=f"{dims[0]}s" if len(dims) == 1 else "elements"))

    stats = dt.sample_stats
    divergences = int(np.asarray(stats["diverging"]).sum()) if "diverging" in stats else 0
    bfmi = np.asarray(az.bfmi(dt)["energy"]) if "energy" in stats else np.array([])
    num_draws = posterior.sizes["chain"] * posterior.sizes["draw"]

    return judge(table, divergences, num_draws, bfmi, num_chains, thresholds, elements=elements)


def _element_labels(variable) -> list[str]:
    """Labels of a vector parameter's elements: its coordinate values ("acc_squad"), or indices."""
    dims = variable.dims[2:]
    if len(dims) == 1 and dims[0] in variable.coords:
        return [str(v) for v in np.asarray(variable[dims[0]])]
    return [str(i) for i in np.ndindex(*variable.shape[2:])]


def parameter_family(name: str) -> str:
    """The parameter a site belongs to: a pooled k's center and spread (k_center, k_tau) and a grouped
    parameter's mean (alpha_mu) are reported with k and alpha."""
    for suffix in ("_center", "_tau", "_mu"):
        if name.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return name


RHAT_ADVICE = "chains disagree: run more warm-up/draws, check for several modes, or tighten the prior"
ESS_ADVICE = "draw more samples, or reparametrise"


def judge(table: pd.DataFrame, divergences: int, num_draws: int, bfmi: np.ndarray, num_chains: int,
          thresholds: Thresholds = Thresholds(), elements: dict[str, pd.DataFrame] | None = None) -> Diagnostics:
    """Compare computed statistics with the thresholds (shared by `check_convergence` and the vectorised
    diagnostics of `bayescale.batch`). One problem line per parameter family and kind of failure: a
    task-indexed parameter says on how many of its elements it fails and where it is worst, instead of a
    line per element (`elements`: per vector parameter, its elements' statistics)."""
    min_ess = thresholds.min_ess_per_chain * num_chains
    elements = elements or {}
    failing: dict[tuple[str, str], list[str]] = {}
    for name, row in table.iterrows():
        parts = elements.get(name)
        bad_rhat = not np.isfinite(row.rhat) or row.rhat > thresholds.max_rhat
        bad_ess = not row.ess_bulk >= min_ess or not row.ess_tail >= min_ess
        if bad_rhat:
            if parts is None:
                text = f"{name} {row.rhat:.3f}"
            else:
                hit = ~(parts.rhat <= thresholds.max_rhat)
                text = (f"{name} on {int(hit.sum())} of {len(parts)} {parts.index.name} (up to {row.rhat:.3f}, "
                        f"{parts.rhat.fillna(np.inf).idxmax()})")
            failing.setdefault(("rhat", parameter_family(str(name))), []).append(text)
        if bad_ess:
            if parts is None:
                text = f"{name} bulk {row.ess_bulk:.0f} / tail {row.ess_tail:.0f}"
            else:
                low = np.minimum(parts.ess_bulk.fillna(0), parts.ess_tail.fillna(0))
                hit = ~(low >= min_ess)
                text = (f"{name} on {int(hit.sum())} of {len(parts)} {parts.index.name} (down to bulk {row.ess_bulk:.0f} / tail "
                        f"{row.ess_tail:.0f}, {low.idxmin()})")
            failing.setdefault(("ess", parameter_family(str(name))), []).append(text)
    problems = []
    failed = {kind for kind, _ in failing}
    for (kind, family), texts in failing.items():
        if kind == "rhat":
            problems.append(f"{family}: R-hat > {thresholds.max_rhat} for {'; '.join(texts)} ({RHAT_ADVICE})")
        else:
            problems.append(f"{family}: ESS < {min_ess:.0f} for {'; '.join(texts)} ({ESS_ADVICE})")
    if divergences > thresholds.max_divergences:
        failed.add("divergences")
        problems.append(
            f"{divergences} divergent transitions of {num_draws} (raise target_accept_prob, e.g. 0.95-0.99, "
            f"or use more informative priors; the posterior may be biased)"
        )
    low = np.flatnonzero(bfmi < thresholds.min_bfmi)
    if low.size:
        failed.add("bfmi")
        problems.append(
            f"E-BFMI {', '.join(f'{bfmi[i]:.2f}' for i in low)} < {thresholds.min_bfmi} in chains {low.tolist()} "
            f"(heavy-tailed energy: the sampler explores poorly; reparametrise or tighten priors)"
        )
    return Diagnostics(table=table, divergences=divergences, num_draws=num_draws, bfmi=bfmi, problems=problems,
                       failed=frozenset(failed))


# Below this contraction the posterior sd is more than 0.7 of the prior's: the data add little to the prior.
WEAK_CONTRACTION = 0.5


COLUMNS = ["prior_sd", "posterior_sd", "scale", "contraction"]


def prior_contraction(dt, names) -> pd.DataFrame:
    """Per parameter, prior and posterior sd and the contraction 1 - var(posterior) / var(prior) (Betancourt
    2018, "Calibrating model-based inferences and decisions"), on the log scale for positive parameters
    (their priors are log-scale). Near 1: the data pin the parameter; near 0: the posterior is the prior.
    Needs the DataTree's prior group; parameters missing there are left out."""
    rows = {}
    if "prior" not in dt.children:
        return pd.DataFrame(columns=COLUMNS)
    prior, posterior = dt.prior, dt.posterior
    for name in names:
        if name not in prior.data_vars or name not in posterior.data_vars:
            continue
        a, b = np.asarray(prior[name], float).ravel(), np.asarray(posterior[name], float).ravel()
        if np.ndim(prior[name]) > 2 or a.size < 2 or b.size < 2:
            continue  # vector parameters (per group) are judged through their hyper-parameters
        positive = bool((a > 0).all() and (b > 0).all())
        if positive:
            a, b = np.log(a), np.log(b)
        prior_sd, post_sd = float(np.std(a)), float(np.std(b))
        rows[name] = {"prior_sd": prior_sd, "posterior_sd": post_sd, "scale": "log" if positive else "linear",
                      "contraction": 1.0 - (post_sd / prior_sd) ** 2 if prior_sd > 0 else np.nan}
    return pd.DataFrame.from_dict(rows, orient="index", columns=COLUMNS)


def weakly_identified(dt, names, threshold: float = WEAK_CONTRACTION) -> tuple[str, ...]:
    """Sentences naming the parameters whose posterior contracted less than `threshold` from the prior."""
    table = prior_contraction(dt, names)
    return tuple(
        f"{name}: barely identified by the data (posterior sd {row.posterior_sd:.3g} against prior sd "
        f"{row.prior_sd:.3g}{' on the log scale' if row.scale == 'log' else ''}, contraction {row.contraction:.2f}): its prior "
        f"decides it; give an informative prior, fix it, use a simpler law, or add runs where it matters"
        for name, row in table.iterrows() if np.isfinite(row.contraction) and row.contraction < threshold)


def warn_if_not_converged(diagnostics: Diagnostics, what: str = "fit", settings=None, attempts=()) -> None:
    """A `ConvergenceWarning` listing the problems; with `settings` (a `SamplerSettings`), the values the
    last attempt ran with and how to change them; with `attempts`, the retries already made."""
    if diagnostics.converged:
        return
    lines = list(diagnostics.weakly_identified) + list(diagnostics.problems)
    if attempts:
        lines.append(f"after {len(attempts)} automatic retr{'y' if len(attempts) == 1 else 'ies'}: "
                     + "; ".join(a["retry_because"] for a in attempts))
    if settings is not None:
        lines.append(
            f"last run: {settings.num_chains} chains x {settings.num_warmup} warm-up + {settings.num_samples} draws, "
            f"target_accept_prob {settings.target_accept_prob}, max_tree_depth {settings.max_tree_depth}; change "
            f"them with fit(..., settings=bayescale.SamplerSettings(...)) or the CLI's --warmup, --draws, "
            f"--target-accept, --max-tree-depth, --retries")
    warnings.warn(
        f"{what} DID NOT CONVERGE ({diagnostics.verdict}); do not trust its posterior or predictions:\n  - "
        + "\n  - ".join(lines),
        ConvergenceWarning,
        stacklevel=3,
    )
