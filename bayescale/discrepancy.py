"""Model discrepancy: how far the truth may depart from the law, growing with the distance from the fitted runs.

A scaling law is only approximately right, and least so where it was not fitted. Real residuals are not
independent either: runs that share a compute budget, the points of one curve or one corpus deviate
together. With independent noise alone, a forecast 100x beyond the data is as sure of the law's form as it
is inside the data, and its 90% interval covered 53-73% of held-out larger runs on real studies
(../shared/STACK.md). Following Kennedy and O'Hagan (2001), the log output is

    log y = log law(x; theta) + delta(z) + noise,

where z is the log of the scaling axis (compute C where the law's inputs give it, else the law's first
input) and delta is a random walk (a Wiener process) in z, pinned at zero at the largest fitted z:

    delta(z_max) = 0,    Var[delta(z) - delta(z')] = drift^2 |z - z'|.

Inside the data the walk is represented at `knots` equally spaced points (linear interpolation between
them) and absorbs deviations that neighbouring runs share; its scale `drift` (log output per square root of
a nat of z) is learned from how much those deviations wander. Beyond the data the walk continues with the
same scale, so a forecast's extra variance grows linearly with the log-distance from the fitted range:
drift^2 x ln(10) per decade. Pinning the walk at the frontier of the data keeps the forecast's centre on the
law (the walk has no trend), so point forecasts stay those of the law and only the intervals widen.

The walk is integrated out analytically (Kennedy and O'Hagan's Gaussian-process discrepancy, here on the
log scale with the Normal likelihood): the runs' log losses are jointly Normal around the law with covariance
noise + A S A^T (A interpolates the walk's knot values to the runs, S their prior covariance given drift),
evaluated by the Woodbury identity in O(runs x knots^2). NUTS then samples only drift beside the law's
parameters: sampling the walk itself gave a drift-walk funnel (divergences, 4x the leapfrog steps) or, centred,
a MAP at drift = 0. Drift itself is sampled through a signed standard-normal coordinate (`sample_drift`):
the density depends on drift^2 only, so it is smooth through drift = 0, where data without a discrepancy put
its posterior. Because the runs are no longer independent given the parameters, the pointwise
log-likelihood that ArviZ receives is each run's density given all the others (exact leave-one-out
conditionals of the joint Normal; Buerkner, Gabry and Vehtari 2021, "Efficient leave-one-out
cross-validation for Bayesian non-factorized normal and Student-t models"), which PSIS-LOO and LOO-PIT
need; the posterior predictive "y" holds replicates from the same conditionals. Forecasts draw the walk from
its Gaussian posterior given each posterior draw (`walk_draws`), then continue it beyond the data. The prior on drift, HalfNormal(0.01), was chosen by backtests on the real data in ../shared/data and on
simulated misspecification (`benchmarks/calibration_backtest.py`, results in `benchmarks/results/`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from numpyro.distributions.transforms import ExpTransform

from bayescale.law import Law, PriorSpec, resolve_prior

DRIFT_SITE = "drift"
WALK_SITE = "_walk"               # the walk's standardised steps, sampled only when there are no observations
MARGINAL_SITE = "_walk_marginal"  # the joint density of the runs with the walk integrated out
NOISE_WEIGHT_SITE = "_noise_weight"  # Student-t noise as a scale mixture: each run's precision weight
PER_RUN_SITES = (NOISE_WEIGHT_SITE,)  # latent sites with one value per run (batches pad them with the runs)
# Backtested in benchmarks/calibration_backtest.py (rolling origins on every real data set in ../shared/data and
# three simulated misspecifications, design and decision rule fixed in advance): with HalfNormal(0.01) the
# pooled real-data intervals held 0.598 / 0.881 of the held-out larger runs at 50% / 90% (bands 0.40-0.60 and
# 0.85-0.95), with an interval score of 0.1411 against 0.1442 for independent noise beside it, and the
# simulated ones 0.51 / 0.94, 0.56 / 0.92 and 0.46 / 0.951 (the last one run above its band). HalfNormal(0.03), the default before that variant
# was run, over-covered (0.61 / 0.90 real, 0.86 / 1.00 on Kaplan-law data) at a worse interval score (0.165).
DEFAULT_DRIFT_PRIOR = dist.HalfNormal(0.01)
# What fit(), fit_batch(), backtest(), the jobs and the CLI use with the normal likelihood when no discrepancy
# is asked for (a `Likelihood` object keeps its own). Chosen by the pre-registered rule of
# benchmarks/calibration_backtest.py: among the variants inside both real-data coverage bands, the best
# interval score; the walk with drift prior HalfNormal(0.01) was the only one inside. Its costs are stated in
# the README ("How far can I trust a forecast?"): 8% wider 90% intervals on the real data than independent
# noise, 2.5x the sampling time (the benchmark's real part: 395 s against 159 s on a quiet machine).
# Other likelihoods default to no discrepancy: Student-t noise with the walk samples a weight per run (on 147
# Chinchilla runs 3x the time of the normal walk and bulk ESS ~40 of 1,200 draws), and grouped or ar1 fits do
# not take it.
DEFAULT_DISCREPANCY: str | None = "random_walk"


def default_discrepancy(family: str, grouped: bool = False, law: Law | None = None) -> str | None:
    """The discrepancy a fit gets when none is asked for: the walk for ungrouped normal-likelihood fits of a
    declared law (not a raw NumPyro model) with a positive output (log scale) whose scaling axis is a positive
    input; none otherwise (see `DEFAULT_DISCREPANCY`)."""
    if family != "normal" or grouped:
        return None
    if law is not None and (law.numpyro_model is not None or law.scaling_axis() in law.nonnegative_inputs
                            or law.output_scale == "raw"):
        return None
    return DEFAULT_DISCREPANCY


@dataclass(frozen=True)
class Discrepancy:
    """A random-walk discrepancy in the log scaling axis (see the module docstring).

    `axis`: the input whose log is the walk's time (None: C where derivable, else the law's first input).
    `knots`: points at which the walk is represented across the fitted range. `drift_prior`: prior on the
    walk's scale, in log output per sqrt(nat of the axis)."""

    axis: str | None = None
    knots: int = 8
    drift_prior: PriorSpec = DEFAULT_DRIFT_PRIOR

    def __post_init__(self):
        if int(self.knots) < 2:
            raise ValueError(f"a discrepancy needs at least 2 knots, got {self.knots}")

    @property
    def param_names(self) -> tuple[str, ...]:
        return (DRIFT_SITE,)

    def to_dict(self) -> dict[str, Any]:
        from bayescale.persistence import prior_to_json

        return {"kind": "random_walk", "axis": self.axis, "knots": int(self.knots),
                "drift_prior": prior_to_json(self.drift_prior)}

    @classmethod
    def from_dict(cls, spec: Mapping[str, Any]) -> Discrepancy:
        from bayescale.persistence import prior_from_json

        prior = prior_from_json(spec.get("drift_prior", {})) or DEFAULT_DRIFT_PRIOR
        return cls(axis=spec.get("axis"), knots=int(spec.get("knots", 8)), drift_prior=prior)


def as_discrepancy(spec) -> Discrepancy | None:
    """None / False / "none" -> no discrepancy; True / "random_walk" -> the default; a Discrepancy as is; a
    dict as saved by `Discrepancy.to_dict`."""
    if spec is None or spec is False or spec == "none":
        return None
    if spec is True or spec == "random_walk":
        return Discrepancy()
    if isinstance(spec, Discrepancy):
        return spec
    if isinstance(spec, Mapping):
        return Discrepancy.from_dict(spec)
    raise ValueError(f"unknown discrepancy {spec!r}; use None, 'random_walk' or a bayescale.Discrepancy")


def axis_name(law: Law, spec: Discrepancy) -> str:
    """The input whose log is the walk's time: the spec's, else the law's scaling axis (`Law.scaling_axis`)."""
    return spec.axis if spec.axis is not None else law.scaling_axis()


def log_axis(law: Law, spec: Discrepancy, x: Mapping[str, Any]):
    """log of the axis at each run (jnp; works inside a model and on host arrays), derived from the inputs
    where needed (`bayescale.runs.resolve_inputs`)."""
    from bayescale.runs import DataError, resolve_inputs

    name = axis_name(law, spec)
    try:
        values, _ = resolve_inputs(x, [name], law.all_derivations())
    except DataError:
        raise ValueError(f"discrepancy axis {name!r} is neither an input of law {law.name!r} nor derivable from "
                         f"{sorted(x)}; pass Discrepancy(axis=...) with one of {list(law.inputs)}") from None
    return jnp.log(jnp.asarray(values[name]))


def _range(z, mask):
    if mask is None:
        return jnp.min(z), jnp.max(z)
    return jnp.min(jnp.where(mask, z, jnp.inf)), jnp.max(jnp.where(mask, z, -jnp.inf))


def knot_grid(spec: Discrepancy, z_lo, z_hi):
    """Knot positions across the fitted range and their spacing (a floor keeps a one-level data set finite)."""
    spacing = jnp.maximum((z_hi - z_lo) / (spec.knots - 1), 1e-6)
    return z_lo + spacing * jnp.arange(spec.knots), spacing


def interpolation(spec: Discrepancy, z, z_lo, z_hi):
    """The matrix A (runs x knots - 1) with delta(z_i) = sum_j A_ij w_j, where w_j is the walk j + 1 knots below
    the pin (the pinned knot itself is 0)."""
    grid, spacing = knot_grid(spec, z_lo, z_hi)
    position = jnp.clip((z - z_lo) / spacing, 0.0, spec.knots - 1.0)
    index = jnp.clip(jnp.floor(position), 0, spec.knots - 2).astype(int)
    frac = position - index
    weights = (jax.nn.one_hot(index, spec.knots) * (1.0 - frac)[..., None]
               + jax.nn.one_hot(index + 1, spec.knots) * frac[..., None])      # (runs, knots), pin last
    return weights[..., :-1][..., ::-1], spacing


def walk_factor(drift, spacing, count: int):
    """G with w = G e, e ~ N(0, I): w_m is a sum of m + 1 independent steps of variance drift^2 x spacing."""
    return jnp.tril(jnp.ones((count, count))) * drift * jnp.sqrt(spacing)


def marginal_normal(residual, variance, weight, F):
    """Joint log density of residuals r ~ N(0, diag(variance) + F F^T) over the runs with weight 1 (weight 0:
    padding, left out), by Woodbury; and each run's leave-one-out conditional mean and sd of r_i given the
    others (from the precision matrix Q: mean r_i - (Q r)_i / Q_ii, variance 1 / Q_ii)."""
    inv = weight / variance                                         # W = diag(mask / d)
    Ft_W = F.T * inv                                                # (m, n)
    M = jnp.eye(F.shape[1]) + Ft_W @ F
    chol = jnp.linalg.cholesky(M)
    u = Ft_W @ residual
    Minv_u = jax.scipy.linalg.cho_solve((chol, True), u)
    quad = jnp.sum(inv * residual**2) - u @ Minv_u
    logdet = jnp.sum(jnp.where(weight > 0, jnp.log(variance), 0.0)) + 2.0 * jnp.sum(jnp.log(jnp.diag(chol)))
    log_joint = -0.5 * (quad + logdet + jnp.sum(weight) * jnp.log(2.0 * jnp.pi))
    Minv_Ft_W = jax.scipy.linalg.cho_solve((chol, True), Ft_W)     # (m, n)
    q_diag = inv - jnp.sum(Ft_W * Minv_Ft_W, axis=0)
    q_diag = jnp.where(weight > 0, q_diag, 1.0)
    q_r = inv * residual - (F @ Minv_u) * inv
    loo_mean = residual - q_r / q_diag
    return log_joint, loo_mean, jnp.sqrt(1.0 / q_diag)


DRIFT_Z_SITE = "_drift_z"  # drift's standard-normal coordinate under a HalfNormal prior (see `sample_drift`)


def sample_drift(prior: dist.Distribution):
    """The walk's scale, as a site named "drift". Under a HalfNormal(s) prior it is sampled as s |z| with
    z ~ Normal(0, 1) (the same distribution), and the walk is built from the signed s z: the runs' density
    depends on the walk only through drift^2, so it is a smooth, symmetric function of z through 0. Sampled
    as log(drift) instead, the posterior of well-specified data (no discrepancy to find) has an exponential
    tail towards log(drift) -> -inf where NUTS diverged: 2-70 divergences of 4,000 on simulated Chinchilla
    ladders at 0.5-3% noise, and a retry for 15 of 21 of them (benchmarks/results/catalogue_convergence.md).
    Returns the signed scale for building the walk; any other prior is sampled as declared (positive)."""
    if isinstance(prior, dist.HalfNormal):
        z = numpyro.sample(DRIFT_Z_SITE, dist.Normal(0.0, 1.0))
        signed = prior.scale * z
        numpyro.deterministic(DRIFT_SITE, jnp.abs(signed))
        return signed
    return numpyro.sample(DRIFT_SITE, prior)


def observe_with_walk(spec: Discrepancy, stats, log_mean, sd, z, y=None, mask=None, nu=None):
    """Inside a NumPyro model: the observed site "y" (log-Normal around `log_mean` with noise sd `sd`) with the
    walk integrated out. With observations, "y" is each run's leave-one-out conditional given the others (so
    the pointwise log-likelihood and the replicates are those conditionals), and a factor adds the joint
    density minus their sum: the potential is exactly the joint's. Without observations, the walk is drawn
    from its prior (site `WALK_SITE`) and new runs around it.

    `nu` (Student-t noise): the noise is written as a scale mixture of normals, noise_i ~ N(0, sd^2 / w_i)
    with w_i ~ Gamma(nu / 2, nu / 2) (site `NOISE_WEIGHT_SITE`), which is Student-t with nu degrees of freedom
    once w_i is integrated out (Andrews and Mallows 1974). Given the weights the runs are jointly normal, so
    the walk is still integrated out exactly and NUTS samples the weights beside drift: an outlying run gets a
    small weight instead of inflating sd for every run. The pointwise site is then each run's conditional with
    its own weight integrated out, approximated by a Student-t with the conditional's walk variance added to
    the noise scale (exact when the walk is known, as far from the others' information it is not)."""
    drift = sample_drift(resolve_prior(spec.drift_prior, stats))
    z_lo, z_hi = _range(z, mask)
    A, spacing = interpolation(spec, z, z_lo, z_hi)
    count = spec.knots - 1
    F = A @ walk_factor(drift, spacing, count)
    weight = jnp.ones(jnp.shape(log_mean)) if mask is None else jnp.asarray(mask, float)
    noise_variance = jnp.broadcast_to(sd**2, jnp.shape(log_mean))
    variance = noise_variance
    if nu is not None:
        # Padded entries (weight 0) keep their prior: their data are left out, not their mixing weight.
        precision = numpyro.sample(NOISE_WEIGHT_SITE, dist.Gamma(nu / 2.0, nu / 2.0).expand(jnp.shape(log_mean))
                                   .to_event(jnp.ndim(log_mean)))
        variance = noise_variance / precision
    if y is None:
        e = numpyro.sample(WALK_SITE, dist.Normal(0.0, 1.0).expand([count]).to_event(1))
        with numpyro.handlers.mask(mask=True if mask is None else mask):
            numpyro.sample("y", dist.LogNormal(log_mean + F @ e, jnp.sqrt(variance)))
        return
    residual = jnp.where(weight > 0, jnp.log(y) - log_mean, 0.0)
    log_joint, loo_mean, loo_sd = marginal_normal(residual, variance, weight, F)
    if nu is None:
        conditional = dist.LogNormal(log_mean + loo_mean, loo_sd)
    else:
        # The conditional's variance is the walk's (given the others) plus this run's noise variance.
        walk_variance = jnp.maximum(loo_sd**2 - variance, 0.0)
        scale = jnp.sqrt(walk_variance + noise_variance)
        conditional = dist.TransformedDistribution(dist.StudentT(nu, log_mean + loo_mean, scale), ExpTransform())
    safe_y = jnp.where(weight > 0, y, jnp.exp(log_mean))
    numpyro.factor(MARGINAL_SITE, log_joint - jnp.sum(weight * conditional.log_prob(safe_y)))
    with numpyro.handlers.mask(mask=True if mask is None else mask):
        numpyro.sample("y", conditional, obs=y)


def walk_draws(spec: Discrepancy, key, drift, variance, residual, z_fitted):
    """The walk's values at the knots (draws, knots), drawn from its Gaussian posterior given each posterior
    draw: e | r ~ N(M^-1 u, M^-1) with M = I + F^T W F, u = F^T W r (`marginal_normal`'s notation), w = G e.
    `variance`: (draws, runs) noise variances; `residual`: (draws, runs) log y - log law at the fitted runs."""
    z_fitted = jnp.asarray(z_fitted)
    A, spacing = interpolation(spec, z_fitted, jnp.min(z_fitted), jnp.max(z_fitted))
    keys = jax.random.split(key, len(drift))
    return np.asarray(_walk_posterior(keys, jnp.asarray(drift), jnp.asarray(variance), jnp.asarray(residual), A,
                                      spacing, spec.knots - 1))


@partial(jax.jit, static_argnames=("count",))
def _walk_posterior(keys, drift, variance, residual, A, spacing, count: int):
    def one(k, d, v, r):
        G = walk_factor(d, spacing, count)
        F = A @ G
        Ft_W = F.T / v
        chol = jnp.linalg.cholesky(jnp.eye(count) + Ft_W @ F)
        mean = jax.scipy.linalg.cho_solve((chol, True), Ft_W @ r)
        # M^-1 = L^-T L^-1: mean + L^-T xi has covariance M^-1.
        e = mean + jax.scipy.linalg.solve_triangular(chol.T, jax.random.normal(k, (count,)), lower=False)
        return jnp.concatenate([(G @ e)[::-1], jnp.zeros(1)])

    return jax.vmap(one)(keys, drift, variance, residual)


def discrepancy_draws(spec: Discrepancy, key, drift, knots, z_fitted, z_new) -> np.ndarray:
    """delta at new points for every posterior draw: (draws, points). `knots`: the walk's values at the knots
    (draws, knots; `walk_draws`). Inside the fitted range, the walk's interpolated value; beyond it, the walk
    continued from its end with fresh Brownian increments of variance drift^2 per unit of z, one path per draw
    through the points in order of distance (so several points beyond the data are jointly consistent)."""
    z_fitted = np.asarray(z_fitted, float)
    z_new = np.asarray(z_new, float)
    z_lo, z_hi = float(np.min(z_fitted)), float(np.max(z_fitted))
    grid, _ = knot_grid(spec, z_lo, z_hi)
    knots = jnp.asarray(knots)
    out = np.array(jax.vmap(lambda values: jnp.interp(jnp.asarray(z_new), grid, values))(knots))
    drift = np.asarray(drift)
    key_hi, key_lo = jax.random.split(key)
    for side_key, beyond, edge, start_values in ((key_hi, z_new > z_hi, z_hi, knots[:, -1]),
                                                 (key_lo, z_new < z_lo, z_lo, knots[:, 0])):
        if not beyond.any():
            continue
        index = np.flatnonzero(beyond)
        distance = np.abs(z_new[index] - edge)
        order = np.argsort(distance, kind="stable")
        gaps = np.diff(np.concatenate([[0.0], distance[order]]))
        shocks = np.asarray(jax.random.normal(side_key, (len(drift), len(index))))
        path = np.asarray(start_values)[:, None] + np.cumsum(drift[:, None] * np.sqrt(gaps) * shocks, axis=1)
        out[:, index[order]] = path
    return out
