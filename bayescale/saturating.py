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

For one term NUTS samples u = (w, lambda, v) instead:

    l = lo + exp(lambda)                       the level at x_ref (above the floor's lower bound lo),
    E = lo + (min(l, hi) - lo) sigmoid(w)      the floor, inside its prior's support (lo, hi) and below l,
    A_ref = l - E,   alpha = exp(v) / A_ref    so that exp(v) = alpha A_ref is the slope s,

in which the ridge is straight: l and s stay fixed while w moves E along it. The change of variables is
exact: the density of u is the declared priors of E, A (through log A = log A_ref + alpha log x_ref) and
alpha, times |det d(E, log A, alpha) / du| (in closed form, `SaturatingTermPrior.log_abs_det_jacobian`), so
the posterior in the user's units, the evidence and every summary are those of the declared model. Draws
from the prior go the other way: E, A and alpha from their priors, mapped to u.

Several terms above one floor (Chinchilla's A N^-alpha + B D^-beta, the over-training law's two terms that
share eta) generalise this: the level is E plus every term at its reference, the terms' total l - E is split
among them by a softmax, and each exponent gets one slope coordinate, exp(v_k) = alpha_k x (the sum of the
terms it multiplies) (`SaturatingTermPrior`).

Used where a law declares `saturating_term=(floor, coefficient, ...)` and the floor's prior has an interval or
positive support and the exponent's a positive one (the catalogue's priors do); otherwise, with a user's
prior outside those, the parameters are sampled as declared.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from numpyro.distributions import constraints
from numpyro.distributions.transforms import ExpTransform

SITE_SUFFIX = "_level_slope"
# Whether laws that declare a saturating term are sampled in these coordinates (read when a law's model is
# built, and part of the model's identity, so switching it never reuses a program traced the other way).
# The cost: a model's first compilation takes longer (a Chinchilla fit, cold cache: 17.7 s against 13.3 s on 2
# cores); tests/conftest.py switches it off for the default suite to keep it within its time budget, as it
# does the retries and the walk, and tests/test_saturating.py checks the coordinates themselves.
ENABLED = True


def site_name(floor: str, *coefficients: str) -> str:
    """The sampled site behind a saturating term (internal; summaries show the law's parameters)."""
    return f"_{floor}_{'_'.join(coefficients)}{SITE_SUFFIX}"


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
    """The declared priors of a floor E, coefficients A_i (each pivoted at its input's reference x_i, so that
    t_i = A_i x_i^-alpha is the term's value there) and exponents alpha_k carried to level-and-slope
    coordinates u (module docstring):

        u = (w, lambda, rho_1 .. rho_{n-1}, v_1 .. v_m),

    l = lo + exp(lambda), E = lo + (min(l, hi) - lo) sigmoid(w), the terms' total T = l - E split by
    softmax(0, rho) into t_i, and exp(v_k) = alpha_k x (sum of the t_i that alpha_k multiplies): the slope of
    the level along the exponent's inputs. `term_exponents[i]` is the index of term i's exponent;
    `log_x_refs[i]` the log of its pivot input's reference. One term and one exponent: u = (w, lambda, v)."""

    support = constraints.real_vector

    def __init__(self, floor_prior, coefficient_priors, exponent_priors, term_exponents, log_x_refs, *,
                 names: tuple[str, ...] | None = None, floor_bounds=None, log_coefficient_priors=None,
                 at_reference=None, validate_args=None):
        # A grouped fit's per-group priors (`GroupedSaturatingTermPrior`) give the floor's bounds and the
        # coefficients' priors on the log scale directly: a coefficient pooled at its reference has its prior
        # on log t_i (the term's value there, `at_reference[i]`), not on log A_i.
        self.floor_prior = floor_prior
        self.log_coefficient_priors = (tuple(log_coefficient_priors) if log_coefficient_priors is not None else
                                       tuple(dist.TransformedDistribution(p, ExpTransform().inv) for p in coefficient_priors))
        self.exponent_priors = tuple(exponent_priors)
        self.term_exponents = tuple(int(k) for k in term_exponents)
        self.log_x_refs = jnp.asarray(log_x_refs, float).reshape(-1)
        self.at_reference = tuple(bool(a) for a in at_reference) if at_reference is not None else \
            (False,) * len(self.log_coefficient_priors)
        self.lo, self.hi = support_bounds(floor_prior) if floor_bounds is None else \
            (jnp.asarray(floor_bounds[0], float), jnp.asarray(floor_bounds[1], float))
        self.num_terms, self.num_exponents = len(self.log_coefficient_priors), len(self.exponent_priors)
        if len(self.term_exponents) != self.num_terms or sorted(set(self.term_exponents)) != list(range(self.num_exponents)):
            raise ValueError("every term needs one of the exponents, and every exponent a term")
        self.size = 1 + self.num_terms + self.num_exponents
        self.names = tuple(names) if names is not None else None  # (floor, coefficients..., exponents...)
        # (terms, exponents) indicator: which terms each exponent multiplies
        self.membership = jnp.asarray(np.equal.outer(self.term_exponents, np.arange(self.num_exponents)), float)
        super().__init__(batch_shape=(), event_shape=(self.size,), validate_args=validate_args)

    def to_params(self, u):
        """u -> (E, log A (terms,), alpha (exponents,)), for one u of shape (size,)."""
        n = self.num_terms
        w, log_level_gap = u[0], u[1]
        shares, log_slopes = u[2:1 + n], u[1 + n:]
        level = self.lo + jnp.exp(log_level_gap)
        top = jnp.minimum(level, self.hi)
        floor = self.lo + (top - self.lo) * jax.nn.sigmoid(w)
        log_total = jnp.log((level - top) + (top - self.lo) * jax.nn.sigmoid(-w))  # log(level - E), no cancellation
        log_terms = log_total + jax.nn.log_softmax(jnp.concatenate([jnp.zeros(1), shares]))
        log_sums = jax.scipy.special.logsumexp(log_terms[:, None], b=self.membership, axis=0)  # per exponent
        exponents = jnp.exp(log_slopes - log_sums)
        log_coefficients = log_terms + exponents[jnp.asarray(self.term_exponents)] * self.log_x_refs
        return floor, log_coefficients, exponents

    def from_params(self, floor, log_coefficients, exponents):
        """(E, log A (terms,), alpha (exponents,)) -> u, the inverse of `to_params`."""
        log_terms = log_coefficients - exponents[jnp.asarray(self.term_exponents)] * self.log_x_refs
        level = floor + jnp.sum(jnp.exp(log_terms))
        top = jnp.minimum(level, self.hi)
        fraction = (floor - self.lo) / (top - self.lo)
        w = jnp.log(fraction) - jnp.log1p(-fraction)
        log_sums = jax.scipy.special.logsumexp(log_terms[:, None], b=self.membership, axis=0)
        return jnp.concatenate([jnp.stack([w, jnp.log(level - self.lo)]), log_terms[1:] - log_terms[0],
                                jnp.log(exponents) + log_sums])

    def from_param_draws(self, floor, log_coefficients, exponents):
        """`from_params` over draws: floor of shape S, log A of S + (terms,), alpha of S + (exponents,) -> u of
        shape S + (size,)."""
        flat = jax.vmap(self.from_params)(jnp.reshape(floor, (-1,)), jnp.reshape(log_coefficients, (-1, self.num_terms)),
                                          jnp.reshape(exponents, (-1, self.num_exponents)))
        return flat.reshape(*jnp.shape(floor), self.size)

    def _coefficient_arguments(self, log_coefficients, exponents):
        """What each coefficient's prior is on: log A_i, or log t_i = log A_i - alpha log x_ref at the reference."""
        log_terms = log_coefficients - exponents[..., jnp.asarray(self.term_exponents)] * self.log_x_refs
        return [log_terms[..., i] if at_ref else log_coefficients[..., i] for i, at_ref in enumerate(self.at_reference)]

    def sample(self, key, sample_shape=()):
        keys = jax.random.split(key, 1 + self.num_terms + self.num_exponents)
        floor = self.floor_prior.sample(keys[0], sample_shape)
        drawn = jnp.stack([p.sample(k, sample_shape) for p, k in
                           zip(self.log_coefficient_priors, keys[1:1 + self.num_terms])], -1)
        exponents = jnp.stack([p.sample(k, sample_shape) for p, k in
                               zip(self.exponent_priors, keys[1 + self.num_terms:])], -1)
        shear = exponents[..., jnp.asarray(self.term_exponents)] * self.log_x_refs
        log_coefficients = jnp.where(jnp.asarray(self.at_reference), drawn + shear, drawn)
        return self.from_param_draws(floor, log_coefficients, exponents)

    def declared_log_prob_terms(self, u) -> dict:
        """The declared priors' log densities at the parameters of one u, one term per parameter and without
        the change of variables' Jacobian (a coefficient's on its log value, as for `Param.pivot`): what
        ArviZ's `log_prior` group holds, so that power-scaling the prior (`az.psense_summary`) scales the
        declared prior, not the coordinates."""
        floor, log_coefficients, exponents = self.to_params(u)
        values = [self.floor_prior.log_prob(floor)]
        values += [p.log_prob(c) for p, c in zip(self.log_coefficient_priors,
                                                 self._coefficient_arguments(log_coefficients, exponents))]
        values += [p.log_prob(a) for p, a in zip(self.exponent_priors, exponents)]
        return dict(zip(self.names, values))

    def log_abs_det_jacobian(self, u, exponents=None):
        """log |det d(E, log A, alpha) / du| in closed form (checked against forward-mode differentiation of
        the inverse map in tests/test_saturating.py). The map factors into (w, lambda) -> (E, log T), whose
        determinant is (l - lo) sigmoid(w) below the floor's upper bound and (hi - lo) sigmoid(w) sigmoid(-w)
        (l - lo) / T above it; (log T, rho) -> log t, a log-softmax split with determinant 1; v -> alpha given
        the terms, determinant prod(alpha); and the pivot shear log A = log t + alpha log x_ref, determinant 1.
        A closed form, not `jax.jacfwd`: the gradient NUTS takes of this density would otherwise carry a
        second derivative of the whole map, which doubled the compile time of every fit."""
        w, log_level_gap = u[0], u[1]
        if exponents is None:
            exponents = self.to_params(u)[2]
        level = self.lo + jnp.exp(log_level_gap)
        top = jnp.minimum(level, self.hi)
        log_total = jnp.log((level - top) + (top - self.lo) * jax.nn.sigmoid(-w))
        below = log_level_gap + jax.nn.log_sigmoid(w)
        # The branch not taken must stay finite for its gradient (jnp.where differentiates both): an infinite
        # upper bound (a positive floor prior) is replaced there by any finite one.
        hi = jnp.where(jnp.isfinite(self.hi), self.hi, self.lo + 1.0)
        above = (jnp.log(hi - self.lo) + jax.nn.log_sigmoid(w) + jax.nn.log_sigmoid(-w) + log_level_gap - log_total)
        return jnp.where(level <= self.hi, below, above) + jnp.sum(jnp.log(exponents))

    def _log_prob_one(self, u):
        floor, log_coefficients, exponents = self.to_params(u)
        arguments = self._coefficient_arguments(log_coefficients, exponents)
        return (self.floor_prior.log_prob(floor)
                + sum(p.log_prob(arguments[i]) for i, p in enumerate(self.log_coefficient_priors))
                + sum(p.log_prob(exponents[k]) for k, p in enumerate(self.exponent_priors))
                + self.log_abs_det_jacobian(u, exponents))

    def log_prob(self, value):
        if jnp.ndim(value) == 1:  # the model's own site: one vector, no batching to trace
            return self._log_prob_one(value)
        flat = jnp.reshape(value, (-1, self.size))
        return jnp.reshape(jax.vmap(self._log_prob_one)(flat), jnp.shape(value)[:-1])


def sample_saturating_term(prior) -> dict:
    """Sample a floor, its terms' coefficients and their exponents through `prior` (a `SaturatingTermPrior`, or
    a `GroupedSaturatingTermPrior` for one value per group, built with their `names`); record them in the
    user's units."""
    floor, coefficients, exponents = (prior.names[0], prior.names[1:1 + prior.num_terms],
                                      prior.names[1 + prior.num_terms:])
    u = numpyro.sample(site_name(floor, *coefficients), prior)
    grouped = isinstance(prior, GroupedSaturatingTermPrior)
    value_floor, log_coefficients, values = (prior.to_params(u) if grouped or jnp.ndim(u) == 1 else
                                             jax.vmap(prior.to_params)(u))
    out = {floor: numpyro.deterministic(floor, value_floor)}
    for i, name in enumerate(coefficients):
        out[name] = numpyro.deterministic(name, jnp.exp(log_coefficients[..., i]))
    for k, name in enumerate(exponents):
        out[name] = numpyro.deterministic(name, values[..., k])
    return out


class GroupedSaturatingTermPrior(dist.Distribution):
    """A saturating term's level-and-slope coordinates in every group of a grouped fit (batch shape (groups,)):
    group g's u_g has the density of `make(params_g)`, a `SaturatingTermPrior` built from that group's slice
    of `params` (a dict of arrays whose leading axis is the group: its data bounds, and the centres and spreads
    of pooled parameters, which make each group's prior the hierarchical prior given them). Sampling u_g
    centred in these coordinates straightens each group's floor-exponent ridge as for a single fit."""

    support = constraints.real_vector

    def __init__(self, make, params: dict, num_groups: int, num_terms: int, names: tuple[str, ...], validate_args=None):
        # names: (floor, coefficients..., exponents...), num_terms of them coefficients
        self.make, self.params, self.names, self.num_terms = make, params, tuple(names), int(num_terms)
        super().__init__(batch_shape=(num_groups,), event_shape=(len(self.names),), validate_args=validate_args)

    def _per_group(self, fn, u):
        """fn(prior_g, u_g) over groups, for u of shape (..., groups, size)."""
        lead = jnp.shape(u)[:-2]
        flat = jnp.reshape(u, (-1,) + tuple(jnp.shape(u)[-2:]))
        out = jax.vmap(lambda v: jax.vmap(lambda ug, p: fn(self.make(p), ug))(v, self.params))(flat)
        return jax.tree.map(lambda a: jnp.reshape(a, lead + a.shape[1:]), out)

    def log_prob(self, value):
        return self._per_group(lambda prior, u: prior._log_prob_one(u), value)

    def sample(self, key, sample_shape=()):
        keys = jax.random.split(key, self.batch_shape[0])
        draws = jax.vmap(lambda k, p: self.make(p).sample(k, sample_shape))(keys, self.params)  # (groups, *S, size)
        return jnp.moveaxis(draws, 0, len(sample_shape))

    def to_params(self, u):
        """u (..., groups, size) -> (E (..., groups), log A (..., groups, terms), alpha (..., groups, exponents))."""
        return self._per_group(lambda prior, ug: prior.to_params(ug), u)

    def declared_log_prob_terms(self, u) -> dict:
        """Each declared parameter's prior log density, summed over groups (`SaturatingTermPrior`'s)."""
        terms = self._per_group(lambda prior, ug: prior.declared_log_prob_terms(ug), u)
        return {k: jnp.sum(v, axis=-1) for k, v in terms.items()}
