"""Level-and-slope coordinates for a saturating term y = E + A x^-alpha: how NUTS samples its floor, coefficient
and exponent when the data leave the floor uncertain.

On a ladder that spans a decade or two of x, the data pin down the output's level at the middle of the data,
l = E + A_ref (A_ref = A x_ref^-alpha, x_ref the geometric-mean input), and its log-slope there,
s = -dy/dlog x = alpha A_ref, far better than the curvature that separates the floor from the power law. The
posterior of (E, log A_ref, log alpha) then lies along a curved ridge: lowering E raises A_ref = l - E and
lowers alpha = s / (l - E), so log A_ref and log alpha bend with E. `Param.pivot` (sampling log A_ref instead
of log A) removes the strongest correlation, that of log A with alpha, but not this bend, and NUTS diverges in
the ridge's tail where E is far below the data and alpha small (measured on simulated parallel-scaling data:
divergent draws at E 0.97, alpha 0.10 against a bulk at E 1.33-1.94, alpha 0.13-0.33).

Here NUTS samples u = (w, lambda, v) instead:

    l = lo + exp(lambda)                       the level at x_ref (above the floor's lower bound lo),
    E = lo + (min(l, hi) - lo) sigmoid(w)      the floor, inside its prior's support (lo, hi) and below l,
    A_ref = l - E,   alpha = exp(v) / A_ref    so that exp(v) = alpha A_ref is the slope s,

in which the ridge is straight: l and s stay fixed while w moves E along it. The change of variables is
exact: the density of u is the declared priors of E, A (through log A = log A_ref + alpha log x_ref) and
alpha, times |det d(E, log A, alpha) / du| (computed by forward-mode differentiation of the map above), so
the posterior in the user's units, the evidence and every summary are those of the declared model. Draws
from the prior go the other way: E, A and alpha from their priors, mapped to u.

Used where a law declares `saturating_term=(floor, coefficient)` and the floor's prior has an interval or
positive support and the exponent's a positive one (the catalogue's priors do); otherwise, with a user's
prior outside those, the parameters are sampled as declared.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist
from numpyro.distributions import constraints
from numpyro.distributions.transforms import ExpTransform

SITE_SUFFIX = "_level_slope"


def site_name(floor: str, coefficient: str) -> str:
    """The sampled site behind a saturating term (internal; summaries show the law's parameters)."""
    return f"_{floor}_{coefficient}{SITE_SUFFIX}"


_INTERVAL = type(constraints.interval(0.0, 1.0))
_POSITIVE = type(constraints.positive)


def applies(floor_prior: dist.Distribution, exponent_prior: dist.Distribution) -> bool:
    """Whether the level-and-slope coordinates carry these priors exactly: the floor's support an interval
    or the positive half-line, the exponent's the positive half-line (decided by the supports' types, so
    bounds that depend on the data, such as the smallest loss, may be traced)."""
    return isinstance(floor_prior.support, (_INTERVAL, _POSITIVE)) and isinstance(exponent_prior.support, _POSITIVE)


def support_bounds(prior: dist.Distribution):
    """(lo, hi) of an interval or positive support, as arrays."""
    if isinstance(prior.support, _INTERVAL):
        return jnp.asarray(prior.support.lower_bound, float), jnp.asarray(prior.support.upper_bound, float)
    return jnp.asarray(0.0), jnp.asarray(jnp.inf)


class SaturatingTermPrior(dist.Distribution):
    """The declared priors of (floor E, coefficient A, exponent alpha) carried to level-and-slope coordinates
    u = (w, lambda, v) (module docstring); `log_x_ref` is the log of the coefficient's pivot input."""

    support = constraints.real_vector

    def __init__(self, floor_prior, coefficient_prior, exponent_prior, log_x_ref, *, validate_args=None):
        self.floor_prior = floor_prior
        self.log_coefficient_prior = dist.TransformedDistribution(coefficient_prior, ExpTransform().inv)
        self.exponent_prior = exponent_prior
        self.log_x_ref = jnp.asarray(log_x_ref, float)
        self.lo, self.hi = support_bounds(floor_prior)
        super().__init__(batch_shape=(), event_shape=(3,), validate_args=validate_args)

    def to_params(self, u):
        """u -> (E, log A, alpha)."""
        w, log_level_gap, log_slope = u[..., 0], u[..., 1], u[..., 2]
        level = self.lo + jnp.exp(log_level_gap)
        top = jnp.minimum(level, self.hi)
        floor = self.lo + (top - self.lo) * jax.nn.sigmoid(w)
        log_term = jnp.log((level - top) + (top - self.lo) * jax.nn.sigmoid(-w))  # log(level - E), no cancellation
        exponent = jnp.exp(log_slope - log_term)
        return floor, log_term + exponent * self.log_x_ref, exponent

    def from_params(self, floor, log_coefficient, exponent):
        """(E, log A, alpha) -> u, the inverse of `to_params`."""
        log_term = log_coefficient - exponent * self.log_x_ref
        level = floor + jnp.exp(log_term)
        top = jnp.minimum(level, self.hi)
        fraction = (floor - self.lo) / (top - self.lo)
        w = jnp.log(fraction) - jnp.log1p(-fraction)
        return jnp.stack([w, jnp.log(level - self.lo), jnp.log(exponent) + log_term], axis=-1)

    def sample(self, key, sample_shape=()):
        k1, k2, k3 = jax.random.split(key, 3)
        floor = self.floor_prior.sample(k1, sample_shape)
        exponent = self.exponent_prior.sample(k3, sample_shape)
        log_coefficient = self.log_coefficient_prior.sample(k2, sample_shape)
        return self.from_params(floor, log_coefficient, exponent)

    def log_prob(self, value):
        def as_vector(u):
            return jnp.stack(self.to_params(u))

        def one(u):
            floor, log_coefficient, exponent = self.to_params(u)
            _, log_det = jnp.linalg.slogdet(jax.jacfwd(as_vector)(u))
            return (self.floor_prior.log_prob(floor) + self.log_coefficient_prior.log_prob(log_coefficient)
                    + self.exponent_prior.log_prob(exponent) + log_det)

        flat = jnp.reshape(value, (-1, 3))
        return jnp.reshape(jax.vmap(one)(flat), jnp.shape(value)[:-1])


def sample_saturating_term(floor: str, coefficient: str, exponent: str, priors: dict, log_x_ref) -> dict:
    """Sample floor, coefficient and exponent through `SaturatingTermPrior`; record them in the user's units."""
    prior = SaturatingTermPrior(priors[floor], priors[coefficient], priors[exponent], log_x_ref)
    u = numpyro.sample(site_name(floor, coefficient), prior)
    value_floor, log_coefficient, value_exponent = prior.to_params(u)
    return {
        floor: numpyro.deterministic(floor, value_floor),
        coefficient: numpyro.deterministic(coefficient, jnp.exp(log_coefficient)),
        exponent: numpyro.deterministic(exponent, value_exponent),
    }
