"""Model evidence (log marginal likelihood) of a fitted law, with its own numerical error.

log Z = log of the integral of likelihood x prior over the parameters. It is invariant to reparametrisation,
so it is computed over NumPyro's unconstrained space, where exp(-potential energy) is the prior x likelihood
density *including* the log-Jacobian of the transforms (log of positive parameters, logit of bounded ones,
the pivoted coefficients of `Param.pivot`, which are an exact change of variables). That is the same
integral as over the parameters in the user's units.

Estimators (chosen by measured accuracy and cost; see tests/test_evidence.py and benchmarks/evidence_speed.py):

- `bridge` (primary): bridge sampling (Meng & Wong 1996, iterative scheme; Gronau et al. 2017) between the
  NUTS posterior draws that a `Fit` already holds and a multivariate normal fitted to half of them. It costs
  a few thousand potential-energy evaluations (milliseconds) and reports its numerical error with the
  relative mean-squared-error formula of Fruhwirth-Schnatter (2004), with the autocorrelation of the MCMC
  draws taken into account through their effective sample size.
- `laplace` (cross-check): the normal approximation at the mode (optax L-BFGS MAP from many starts,
  `bayescale.map_estimate`, plus `jax.hessian`). No error estimate of its own; it is exact for a Gaussian
  posterior and its gap to the bridge estimate flags a non-Gaussian posterior.

Prior sensitivity: evidence depends on the priors, so `prior_sensitivity` recomputes it with every prior
widened (`widen_prior`: spreads doubled) by the exact identity Z' = Z E_post[p'(theta) / p(theta)], using
the same posterior draws.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import arviz as az
import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
from jax.scipy.special import logsumexp
from numpyro.infer.util import initialize_model, potential_energy, unconstrain_fn

from bayescale.law import Law, resolve_prior


@dataclass(frozen=True)
class Evidence:
    """`log_z`: log marginal likelihood (nats); `error`: its numerical standard error (nats; NaN where the
    method gives none); `details`: method-specific numbers (iterations, effective draws, ...)."""

    log_z: float
    error: float
    method: str
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"log_z": self.log_z, "error": self.error, "method": self.method, **self.details}


# ---- the model's density over unconstrained space ----

@dataclass(frozen=True)
class Density:
    """A NumPyro model with its data, as a density over flat unconstrained vectors. `layout` lists the latent
    sites (name, shape) in the order they are flattened. The data stay traced arguments of the jitted
    evaluations, so the persistent compilation cache serves every data set of the same shape."""

    model: Any
    args: tuple
    kwargs: dict
    layout: tuple[tuple[str, tuple[int, ...]], ...]

    @property
    def dimension(self) -> int:
        return int(sum(np.prod(shape, dtype=int) for _, shape in self.layout))

    @property
    def names(self) -> list[str]:
        return [name for name, _ in self.layout]

    def potential(self, v):
        """-log(prior x likelihood x Jacobian) at one flat unconstrained vector."""
        return _potential(self.model, v, self.args, self.kwargs, self.layout)

    def potentials(self, points) -> np.ndarray:
        return np.asarray(_potentials(self.model, jnp.asarray(points), self.args, self.kwargs, self.layout))

    def flatten(self, params: Mapping[str, Any]):
        return jnp.concatenate([jnp.ravel(jnp.asarray(params[name])) for name in self.names])


def density(model, model_args: tuple, model_kwargs: Mapping[str, Any]) -> Density:
    info = initialize_model(jax.random.PRNGKey(0), model, model_args=model_args, model_kwargs=dict(model_kwargs))
    layout = tuple((name, tuple(np.shape(value))) for name, value in info.param_info.z.items())
    return Density(model, tuple(model_args), dict(model_kwargs), layout)


def _unflatten(v, layout):
    out, start = {}, 0
    for name, shape in layout:
        size = int(np.prod(shape, dtype=int))
        out[name] = v[start:start + size].reshape(shape)
        start += size
    return out


def _potential(model, v, args, kwargs, layout):
    return potential_energy(model, args, kwargs, _unflatten(v, layout))


@partial(jax.jit, static_argnames=("model", "layout"))
def _potentials(model, points, args, kwargs, layout):
    return jax.lax.map(lambda v: _potential(model, v, args, kwargs, layout), points, batch_size=256)


@partial(jax.jit, static_argnames=("model", "layout"))
def _hessian(model, v, args, kwargs, layout):
    return jax.hessian(lambda u: _potential(model, u, args, kwargs, layout))(v)


@partial(jax.jit, static_argnames=("model", "names"))
def _unconstrain_draws(model, constrained, model_args, model_kwargs, names):
    def one(params):
        unconstrained = unconstrain_fn(model, model_args, model_kwargs, params)
        return jnp.concatenate([jnp.ravel(unconstrained[name]) for name in names])

    return jax.vmap(one)(constrained)


def unconstrained_draws(target: Density, constrained: Mapping[str, np.ndarray]) -> np.ndarray:
    """Posterior draws (chains, draws, ...) in the user's units -> flat unconstrained (chains, draws, d)."""
    names = target.names
    chains, count = np.shape(constrained[names[0]])[:2]
    flat_in = {k: jnp.asarray(np.asarray(constrained[k]).reshape(chains * count, *np.shape(constrained[k])[2:]))
               for k in names}
    vectors = _unconstrain_draws(target.model, flat_in, target.args, target.kwargs, tuple(names))
    return np.asarray(vectors).reshape(chains, count, -1)


# ---- bridge sampling ----

def _log_mvn(points, mean, chol):
    z = jax.scipy.linalg.solve_triangular(chol, (points - mean).T, lower=True).T
    d = mean.shape[0]
    return -0.5 * jnp.sum(z**2, axis=-1) - jnp.sum(jnp.log(jnp.diag(chol))) - 0.5 * d * jnp.log(2 * jnp.pi)


def bridge_sampling(target: Density, posterior: np.ndarray, key, num_proposal: int | None = None,
                    tol: float = 1e-10, max_iter: int = 1000) -> Evidence:
    """Bridge-sampling estimate of log Z from unconstrained posterior draws `posterior` (chains, draws, d).

    The first half of every chain fits the normal proposal g, the second half enters the bridge (Gronau et
    al. 2017). Error: relative MSE of Z (Fruhwirth-Schnatter 2004), where the posterior-draw term uses the
    effective sample size of its summand across chains, so correlated NUTS draws are not counted as
    independent. For small errors the relative error of Z is the standard error of log Z.
    """
    posterior = np.asarray(posterior, dtype=float)
    chains, count, d = posterior.shape
    half = count // 2
    fit_part = posterior[:, :half].reshape(-1, d)
    bridge_part = posterior[:, half:]
    n1 = chains * (count - half)
    n2 = int(num_proposal or n1)
    mean = fit_part.mean(axis=0)
    cov = np.cov(fit_part, rowvar=False).reshape(d, d) + 1e-12 * np.eye(d)
    chol = np.linalg.cholesky(cov)
    proposal = mean + jax.random.normal(key, (n2, d)) @ chol.T

    flat_post = jnp.asarray(bridge_part.reshape(-1, d))
    # l = log q - log g, where q = exp(-potential) is the unnormalised posterior.
    l1 = -target.potentials(flat_post) - np.asarray(_log_mvn(flat_post, mean, chol))
    l2 = -target.potentials(proposal) - np.asarray(_log_mvn(proposal, mean, chol))
    if not np.all(np.isfinite(l1)):
        raise FloatingPointError("bridge sampling: the log density is not finite at some posterior draws")
    l2 = np.where(np.isfinite(l2), l2, -np.inf)  # proposal draws outside the support have q = 0
    s1, s2 = n1 / (n1 + n2), n2 / (n1 + n2)
    shift = np.median(l1)  # keeps exp() in range; the answer is shifted back at the end
    a1, a2 = l1 - shift, l2 - shift

    log_r = 0.0
    for iteration in range(1, max_iter + 1):
        num = _logmeanexp(a2 - np.logaddexp(np.log(s1) + a2, np.log(s2) + log_r))
        den = _logmeanexp(-np.logaddexp(np.log(s1) + a1, np.log(s2) + log_r))
        new = num - den
        done = abs(new - log_r) < tol
        log_r = new
        if done:
            break

    # Fruhwirth-Schnatter (2004) as in the bridgesampling R package: with p = q / Z,
    # f1 = p / (s1 p + s2 g) on proposal draws, f2 = g / (s1 p + s2 g) on posterior draws.
    f1 = np.exp(a2 - log_r - np.logaddexp(np.log(s1) + a2 - log_r, np.log(s2)))
    f2 = np.exp(-np.logaddexp(np.log(s1) + a1 - log_r, np.log(s2)))
    ess_f2 = float(az.ess(f2.reshape(chains, count - half))) if chains * (count - half) > 8 else n1
    ess_f2 = min(max(ess_f2, 1.0), n1)
    term_proposal = np.var(f1) / np.mean(f1) ** 2 / n2
    term_posterior = np.var(f2) / np.mean(f2) ** 2 / ess_f2
    error = float(np.sqrt(term_proposal + term_posterior))
    return Evidence(
        log_z=float(log_r + shift),
        error=error,
        method="bridge",
        details={"iterations": iteration, "posterior_draws": n1, "posterior_ess": ess_f2,
                 "proposal_draws": n2, "dimension": d},
    )


def _logmeanexp(a):
    a = np.asarray(a)
    return float(logsumexp(jnp.asarray(a)) - np.log(a.size))


# ---- Laplace ----

def laplace(model, model_args, model_kwargs, key, num_starts: int = 16) -> Evidence:
    """Normal approximation at the mode of the unconstrained density: log Z ~ -U(m) + d/2 log 2 pi
    - 1/2 log det H(m). Several L-BFGS starts (`bayescale.map_estimate`) guard against local modes."""
    from bayescale.map_estimate import map_estimate

    mode = map_estimate(model, model_args, model_kwargs, key, num_starts=num_starts)
    target = density(model, model_args, model_kwargs)
    center = target.flatten(mode.unconstrained)
    hessian = np.asarray(_hessian(model, center, target.args, target.kwargs, target.layout))
    sign, logdet = np.linalg.slogdet(hessian)
    d = center.size
    if sign <= 0:
        raise FloatingPointError("Laplace: the Hessian at the mode is not positive definite")
    log_z = -float(target.potential(center)) + 0.5 * d * np.log(2 * np.pi) - 0.5 * logdet
    return Evidence(log_z=log_z, error=float("nan"), method="laplace",
                    details={"dimension": d, "starts_at_best": mode.num_at_best})


# ---- prior sensitivity ----

def widen_prior(prior, factor: float = 2.0):
    """The prior with its spread multiplied by `factor` in the space where it is natural: the scale of
    Normal / LogNormal / StudentT / Cauchy / Laplace (for LogNormal: the spread in log space), the scale of
    HalfNormal / HalfCauchy / Exponential; Gamma keeps its mean with variance x factor^2. Uniform priors are
    kept: their bounds are physical (0 < E < smallest observed loss), not a statement of belief. Returns
    (prior, changed?)."""
    if callable(prior) and not isinstance(prior, dist.Distribution):
        return (lambda stats: widen_prior(prior(stats), factor)[0]), True
    if isinstance(prior, dist.LogNormal):
        return dist.LogNormal(prior.loc, prior.scale * factor), True
    if isinstance(prior, dist.Normal | dist.Cauchy | dist.Laplace):
        return type(prior)(prior.loc, prior.scale * factor), True
    if isinstance(prior, dist.StudentT):
        return dist.StudentT(prior.df, prior.loc, prior.scale * factor), True
    if isinstance(prior, dist.HalfNormal | dist.HalfCauchy):
        return type(prior)(prior.scale * factor), True
    if isinstance(prior, dist.Exponential):
        return dist.Exponential(prior.rate / factor), True
    if isinstance(prior, dist.Gamma):
        return dist.Gamma(prior.concentration / factor**2, prior.rate / factor**2), True
    return prior, False


def widened_priors(law: Law, likelihood, stats, factor: float = 2.0) -> tuple[dict[str, Any], list[str]]:
    """Prior overrides with every widenable prior of the law and the noise widened, and the names of the
    priors kept as they are (checked on the data's `stats`, since priors may depend on them)."""
    specs = {name: p.prior for name, p in law.params.items()}
    specs["sigma"] = likelihood.sigma_prior
    if "nu" in likelihood.param_names:
        specs["nu"] = likelihood.nu_prior
    out, kept = {}, []
    for name, prior in specs.items():
        if widen_prior(resolve_prior(prior, stats), factor)[1]:
            out[name] = widen_prior(prior, factor)[0]
        else:
            kept.append(name)
    return out, kept


def reweighted_log_z(old: Density, new: Density, posterior: np.ndarray, log_z: float, error: float) -> Evidence:
    """log Z under a new prior (same likelihood, same support) from posterior draws under the old one:
    Z_new = Z E_post[exp(U_old - U_new)]. Error: the old estimate's and the Monte-Carlo error, combined."""
    posterior = np.asarray(posterior, dtype=float)
    chains, count, d = posterior.shape
    flat = jnp.asarray(posterior.reshape(-1, d))
    log_ratio = old.potentials(flat) - new.potentials(flat)
    log_mean = _logmeanexp(log_ratio)
    weights = np.exp(log_ratio - log_mean).reshape(chains, count)
    ess = min(float(az.ess(weights)), chains * count) if chains * count > 8 else chains * count
    mc_error = float(np.std(weights) / np.sqrt(max(ess, 1.0)))
    return Evidence(log_z=log_z + log_mean, error=float(np.hypot(error, mc_error)), method="reweighted",
                    details={"ratio_ess": ess})


# ---- from a Fit ----

def fit_model_inputs(fit, runs=None):
    from bayescale.fit import model_inputs

    args, kwargs = model_inputs(fit.runs if runs is None else runs)
    return fit.model, args, kwargs


def fit_unconstrained_draws(fit) -> tuple[Density, np.ndarray]:
    """(density, unconstrained posterior draws (chains, draws, d)) of a fitted law."""
    target = density(*fit_model_inputs(fit))
    posterior = fit.data.posterior
    missing = [n for n in target.names if n not in posterior.data_vars]
    if missing:
        raise KeyError(f"the fit's posterior lacks sampled sites {missing}; was it made by bayescale.fit?")
    return target, unconstrained_draws(target, {n: np.asarray(posterior[n]) for n in target.names})


def log_evidence(fit_or_law, table=None, *, method: str = "bridge", seed: int = 0, **fit_kwargs) -> Evidence:
    """Log evidence of a fitted law (`Fit`), or of (law, table), fitted first with `bayescale.fit`
    (`fit_kwargs` passed on). `method`: "bridge" (uses the fit's NUTS draws) or "laplace"."""
    fit = _as_fit(fit_or_law, table, seed, fit_kwargs)
    key = jax.random.PRNGKey(seed)
    if method == "bridge":
        target, posterior = fit_unconstrained_draws(fit)
        return bridge_sampling(target, posterior, key)
    if method == "laplace":
        model, args, kwargs = fit_model_inputs(fit)
        return laplace(model, args, kwargs, key)
    raise ValueError(f"unknown evidence method {method!r}; choose 'bridge' or 'laplace'")


def _as_fit(fit_or_law, table, seed, fit_kwargs):
    from bayescale.fit import Fit, fit

    if isinstance(fit_or_law, Fit):
        if table is not None:
            raise ValueError("give a Fit, or a law and a table, not both")
        return fit_or_law
    if table is None:
        raise ValueError("log_evidence(law, table): a table of runs is needed to fit the law first")
    return fit(table, fit_or_law, seed=seed, **fit_kwargs)


@dataclass(frozen=True)
class EvidenceReport:
    """Everything `evidence_report` measured for one fit; `to_dict` for tables and JSON."""

    primary: Evidence
    cross_check: Evidence | None
    widened: Evidence | None
    widened_kept: tuple[str, ...] = ()
    widen_factor: float = 2.0

    def to_dict(self) -> dict[str, Any]:
        out = {"log_z": self.primary.log_z, "log_z_error": self.primary.error, "method": self.primary.method}
        if self.cross_check is not None:
            out[f"log_z_{self.cross_check.method}"] = self.cross_check.log_z
        if self.widened is not None:
            out["log_z_wide_priors"] = self.widened.log_z
            out["prior_sensitivity"] = self.widened.log_z - self.primary.log_z
        return out


def evidence_report(fit, *, seed: int = 0, cross_check: bool = True, widen_factor: float | None = 2.0) -> EvidenceReport:
    """Bridge-sampling evidence of `fit`, the Laplace cross-check, and the evidence with every prior's
    spread multiplied by `widen_factor` (None: skip)."""
    key_bridge, key_laplace = jax.random.split(jax.random.PRNGKey(seed))
    target, posterior = fit_unconstrained_draws(fit)
    primary = bridge_sampling(target, posterior, key_bridge)
    check = None
    if cross_check and fit.law.numpyro_model is None:
        model, args, kwargs = fit_model_inputs(fit)
        try:
            check = laplace(model, args, kwargs, key_laplace)
        except FloatingPointError:
            check = Evidence(float("nan"), float("nan"), "laplace", {"failed": True})
    widened, kept = None, ()
    if widen_factor is not None and fit.law.numpyro_model is None:
        widened, kept = prior_sensitivity(fit, primary, posterior, target, widen_factor)
    return EvidenceReport(primary, check, widened, tuple(kept), widen_factor or 1.0)


def prior_sensitivity(fit, evidence: Evidence, posterior, target: Density, factor: float = 2.0):
    """Evidence with widened priors (see `widen_prior`), reweighting the fit's own posterior draws."""
    from bayescale.fit import model_for, model_inputs

    args, kwargs = model_inputs(fit.runs)
    overrides, kept = widened_priors(fit.law, fit.likelihood, args[1], factor)
    wide_law = fit.law.with_priors(overrides)
    wide_likelihood = fit.likelihood.with_priors(overrides)
    if wide_law is fit.law:
        wide_law = dataclasses.replace(fit.law)  # a distinct object: law_model memoises by identity
    model = model_for(wide_law, wide_likelihood, fit.grouping)
    return reweighted_log_z(target, density(model, args, kwargs), posterior, evidence.log_z, evidence.error), kept
