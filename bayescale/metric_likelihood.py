"""Observation models for bounded metrics (accuracy, error, pass rate) of several tasks.

A task's metric is a fraction of items answered correctly, so its noise is not Normal:
- "binomial": the number correct is Binomial(items, p); exact when the items are known and the link is the
  whole story. Item sampling alone is tiny on a 10,000-item task (sd 0.005), so any misfit of the link makes
  it overconfident.
- "beta_binomial" (the default when items are known): Binomial with extra-binomial spread, concentration
  `phi` per task (variance n p (1 - p) (1 + (n - 1) / (phi + 1))): what a task looks like when its runs also
  differ by seed, data order and prompt sensitivity, not only by which items were sampled.
- "beta": the fraction itself is Beta(p phi, (1 - p) phi); for metrics whose number of items is unknown
  (or that are not counts). Fractions of exactly 0 or 1 are moved in by half an item (or 1e-3 when items are
  unknown), since a Beta density has no mass there.

Every task has its own likelihood; an average over tasks is computed from the posterior afterwards, never
fitted as one number. The observed site is "metric", shape (tasks, runs), masked where a run lacks a task.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist

from bayescale.law import PriorSpec

FAMILIES = ("binomial", "beta_binomial", "beta")
# Concentration phi: the scatter of a task's accuracy around its curve is ~0.5-3 points at p ~ 0.5 between
# seeds and intermediate checkpoints, i.e. phi = p (1 - p) / sd^2 ~ 300-10,000, but final checkpoints of a
# ladder scatter at about the binomial level (phi 5e4-5e5 measured: 3-5 sd above the former LogNormal(log
# 1000, 1.5)). LogNormal(log 1e4, 2.5) covers 160-610,000 at 90%: both regimes, and large phi is the
# binomial limit, so an over-wide upper tail costs nothing.
DEFAULT_PHI_PRIOR = dist.LogNormal(jnp.log(1e4), 2.5)
PROB_CLIP = 1e-9
UNKNOWN_ITEMS_CLIP = 1e-3


@dataclass(frozen=True)
class MetricLikelihood:
    """`family`: "binomial", "beta_binomial", "beta", or "auto" (beta_binomial with items, beta without)."""

    family: str = "auto"
    phi_prior: PriorSpec = DEFAULT_PHI_PRIOR

    def __post_init__(self):
        if self.family not in (*FAMILIES, "auto"):
            raise ValueError(f"unknown metric likelihood {self.family!r}; choose one of auto, {', '.join(FAMILIES)}")

    def resolve(self, has_items: bool) -> MetricLikelihood:
        """The concrete family for data with or without item counts (binomial families need counts)."""
        if self.family == "auto":
            return MetricLikelihood("beta_binomial" if has_items else "beta", self.phi_prior)
        if self.family in ("binomial", "beta_binomial") and not has_items:
            raise ValueError(
                f"metric likelihood {self.family!r} needs the number of items per task; give items=... "
                f"or use family 'beta'"
            )
        return self

    @property
    def has_concentration(self) -> bool:
        return self.family in ("beta_binomial", "beta")

    def to_dict(self) -> dict:
        return {"family": self.family}

    # ---- data: observed fractions -> what the distribution scores ----
    def observations(self, accuracy: np.ndarray, items: np.ndarray | None) -> np.ndarray:
        """Accuracy fractions (tasks, runs), NaN where missing -> counts (binomial families) or clipped
        fractions (beta); missing entries get a harmless placeholder (they are masked)."""
        accuracy = np.asarray(accuracy, dtype=float)
        filled = np.where(np.isnan(accuracy), 0.5, accuracy)
        if self.family == "beta":
            margin = UNKNOWN_ITEMS_CLIP if items is None else 0.5 / np.asarray(items, float)[:, None]
            return np.clip(filled, margin, 1.0 - margin)
        return np.round(filled * np.asarray(items, float)[:, None])

    def distribution(self, p, items=None, phi=None) -> dist.Distribution:
        """Distribution of the observation given the probability of a correct answer `p` (tasks, runs)."""
        p = jnp.clip(p, PROB_CLIP, 1.0 - PROB_CLIP)
        if self.family == "binomial":
            return dist.Binomial(total_count=items, probs=p)
        if self.family == "beta_binomial":
            return dist.BetaBinomial(p * phi, (1.0 - p) * phi, total_count=items)
        return dist.Beta(p * phi, (1.0 - p) * phi)

    def sample(self, key, p, items=None, phi=None):
        """Draws of an observation (counts, or fractions for "beta"); shapes broadcast. jax.random's
        vectorised binomial, not numpyro's (a lax.map over elements, and integer counts only)."""
        import jax

        p = jnp.clip(p, PROB_CLIP, 1.0 - PROB_CLIP)
        key_beta, key_count = jax.random.split(key)
        if self.has_concentration:
            shape = jnp.broadcast_shapes(jnp.shape(p), jnp.shape(phi))
            p = jax.random.beta(key_beta, p * phi, (1.0 - p) * phi, shape)
            p = jnp.clip(p, PROB_CLIP, 1.0 - PROB_CLIP)
            if self.family == "beta":
                return p
        shape = jnp.broadcast_shapes(jnp.shape(p), jnp.shape(items))
        return jax.random.binomial(key_count, jnp.broadcast_to(items, shape), jnp.broadcast_to(p, shape))

    def as_fraction(self, value, items=None):
        """An observation (count or fraction) as a fraction of items correct."""
        return value if self.family == "beta" else value / items
