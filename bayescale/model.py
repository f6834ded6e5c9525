"""A law and a likelihood -> a NumPyro model function, and the jitted draws made from it.

The model is a plain function `model(x, stats, y=None, se=None, mask=None, prev=None)`:
- `x`: dict of input arrays (user units), `stats`: `law.data_stats` of the observed output (priors such as
  E < min loss read it), `y`/`se`: observations, `mask`: which entries are real (batch padding), `prev`:
  each point's predecessor in its training run (the "ar1" likelihood).
All arguments are arrays, so the same model jits once per shape and vmaps over data sets. `law_model`
returns the same function object for the same (law, likelihood), so jitted code that takes the model as a
static argument is traced once per process, and the persistent cache serves later processes.
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
from numpyro import handlers
from numpyro.distributions.transforms import AffineTransform, ExpTransform
from numpyro.infer.util import constrain_fn, log_likelihood, potential_energy

from bayescale.discrepancy import log_axis
from bayescale.law import Law, log_geometric_mean, resolve_prior
from bayescale.likelihood import Likelihood
from bayescale import saturating
from bayescale.saturating import SaturatingTermPrior, sample_saturating_term
from bayescale.saturating import applies as saturating_applies
from bayescale.saturating import site_name as saturating_site_name

_MODELS: dict[tuple[int, Likelihood, bool], tuple[Law, object]] = {}


def pivot_site(name: str) -> str:
    """The sampled site behind a pivoted coefficient (internal; summaries show the coefficient itself)."""
    return f"_log_{name}_at_ref"


def sample_params(law: Law, stats, x=None, mask=None, level_slope: bool = True) -> dict:
    """Sample the law's parameters; pivoted coefficients through their decorrelated site (see `Param`), and a
    declared saturating term through its level-and-slope coordinates (`bayescale.saturating`) unless
    `level_slope` is False."""
    together = saturating_sites(law, stats) if level_slope else None
    params = {}
    if together is not None:
        params.update(sample_saturating_term(saturating_term_prior(law, together, stats, x, mask)))
    for name, p in law.params.items():
        if p.pivot is None and name not in params:
            params[name] = numpyro.sample(name, resolve_prior(p.prior, stats))
    for name, p in law.params.items():
        if p.pivot is None or name in params:
            continue
        source, exponent = p.pivot
        shift = params[exponent] * log_geometric_mean(x[source], mask)
        params[name] = sample_pivoted(name, resolve_prior(p.prior, stats), shift)
    return params


def saturating_sites(law: Law, stats) -> tuple[str, tuple[str, ...], tuple[str, ...], tuple[int, ...]] | None:
    """(floor, coefficients, exponents, each coefficient's exponent index) where the law declares a saturating
    term whose priors the level-and-slope coordinates carry exactly; None otherwise (then every parameter is
    sampled as declared)."""
    if law.saturating_term is None:
        return None
    floor, *coefficients = law.saturating_term
    exponents = tuple(dict.fromkeys(law.params[c].pivot[1] for c in coefficients))
    term_exponents = tuple(exponents.index(law.params[c].pivot[1]) for c in coefficients)
    priors = {n: resolve_prior(law.params[n].prior, stats) for n in (floor, *exponents)}
    if not all(saturating_applies(priors[floor], priors[e]) for e in exponents):
        return None
    return floor, tuple(coefficients), exponents, term_exponents


def saturating_term_prior(law: Law, sites, stats, x, mask=None) -> SaturatingTermPrior:
    """The declared priors of the saturating term `sites` (from `saturating_sites`) in level-and-slope
    coordinates, each coefficient pivoted at its input's geometric mean over the (unmasked) runs."""
    floor, coefficients, exponents, term_exponents = sites
    priors = {n: resolve_prior(law.params[n].prior, stats) for n in (floor, *coefficients, *exponents)}
    log_x_refs = jnp.stack([jnp.asarray(log_geometric_mean(x[law.params[c].pivot[0]], mask), float)
                            for c in coefficients])
    return SaturatingTermPrior(priors[floor], [priors[c] for c in coefficients], [priors[e] for e in exponents],
                               term_exponents, log_x_refs, names=(floor, *coefficients, *exponents))


def saturating_site_values(law: Law, posterior: Mapping[str, np.ndarray], x, stats) -> tuple[str, np.ndarray] | None:
    """(site, values) of the level-and-slope site computed exactly from posterior draws of the floor,
    coefficients and exponents (shape (..., size)); None where the law samples no such site. Fits saved
    before a law declared its saturating term sampled the parameters directly: this gives them the site the
    model samples now (evidence and prior terms read it), without refitting."""
    sites = saturating_sites(law, stats)
    if sites is None:
        return None
    floor, coefficients, exponents, _ = sites
    prior = saturating_term_prior(law, sites, stats, x)
    u = prior.from_param_draws(jnp.asarray(posterior[floor]),
                               jnp.stack([jnp.log(jnp.asarray(posterior[c])) for c in coefficients], -1),
                               jnp.stack([jnp.asarray(posterior[e]) for e in exponents], -1))
    return saturating_site_name(floor, *coefficients), np.asarray(u)


def sample_pivoted(name: str, prior, shift):
    """A coefficient sampled as log A_ref = log A - shift (site `pivot_site(name)`) and recorded as A.
    The shift (exponent x log x_ref) has unit Jacobian, so the new site's density is the declared prior on
    A carried through log and the shift."""
    log_prior = dist.TransformedDistribution(prior, [ExpTransform().inv, AffineTransform(-shift, 1.0)])
    return numpyro.deterministic(name, jnp.exp(numpyro.sample(pivot_site(name), log_prior) + shift))


def law_model(law: Law, likelihood: Likelihood):
    """The NumPyro model of `law` with observation model `likelihood` (memoised per pair)."""
    if law.numpyro_model is not None:
        return law.numpyro_model
    level_slope = saturating.ENABLED
    key = (id(law), likelihood, level_slope)
    if key in _MODELS and _MODELS[key][0] is law:
        return _MODELS[key][1]

    def model(x: Mapping, stats: Mapping, y=None, se=None, mask=None, prev=None):
        params = sample_params(law, stats, x, mask, level_slope)
        z = None if likelihood.discrepancy is None else log_axis(law, likelihood.discrepancy, x)
        likelihood.observe(law.mean(params, x), stats, y=y, se=se, mask=mask, prev=prev, log_axis=z)

    model.__name__ = f"{law.name}_model"
    _MODELS[key] = (law, model)
    return model


def _site_values(model, key, args, kwargs, substitutions=None, sites=None):
    seeded = handlers.seed(model, key)
    if substitutions is not None:
        seeded = handlers.substitute(seeded, data=substitutions)
    trace = handlers.trace(seeded).get_trace(*args, **kwargs)
    return {
        name: site["value"]
        for name, site in trace.items()
        if site["type"] in ("sample", "deterministic") and (sites is None or name in sites)
    }


@partial(jax.jit, static_argnames=("model", "sites", "conditional"))
def posterior_predictive_draws(model, key, samples, args, kwargs, sites=("y",), conditional=False):
    """Sites `sites` drawn once per posterior draw in `samples` (dict of (draws, ...) arrays).

    `conditional=True` draws "y" from the distribution the observed site has given the observations (a
    model whose runs are not independent given the parameters, such as one with a discrepancy walk, puts
    each run's leave-one-out conditional there): replicates that match the pointwise log-likelihood."""
    count = len(next(iter(samples.values())))
    keys = jax.random.split(key, count)
    if conditional:
        def replicate(k, s):
            trace = handlers.trace(handlers.substitute(handlers.seed(model, k), data=s)).get_trace(*args, **kwargs)
            return {"y": trace["y"]["fn"].sample(k)}

        return jax.vmap(replicate)(keys, samples)
    kwargs = {**kwargs, "y": None}
    return jax.vmap(lambda k, s: _site_values(model, k, args, kwargs, s, sites))(keys, samples)


@partial(jax.jit, static_argnames=("model", "num_draws"))
def prior_draws(model, key, args, kwargs, num_draws: int):
    """Every sample site (parameters and "y") drawn from the prior, `num_draws` times."""
    kwargs = {**kwargs, "y": None}
    return jax.vmap(lambda k: _site_values(model, k, args, kwargs))(jax.random.split(key, num_draws))


@partial(jax.jit, static_argnames=("model",))
def pointwise_log_likelihood(model, samples, args, kwargs):
    """log p(y_i | theta_s) of each observation for each draw, per observed site: {"y": (draws, runs)} for a
    law's model, {"loss": ..., "metric": (draws, tasks, runs)} for a downstream chain."""
    return log_likelihood(model, samples, *args, **kwargs)


# Posterior draws are run through the predictive and the log-likelihood in blocks of this many (the last one
# padded), so the compiled programs do not depend on the number of draws: a fit with other num_samples or
# num_chains reuses them (like the sampler's fixed chunks of transitions, `bayescale.inference`).
DRAW_BLOCK = 500


def in_draw_blocks(run_block, samples, block: int = DRAW_BLOCK) -> dict:
    """`run_block(i, block_samples)` (a {name: (block, ...)} -> {name: (block, ...)} program) over `samples`
    ({name: (draws, ...)}) cut into blocks of `block` draws, the last padded with copies of the final draw, so
    every call has one shape; the results concatenated and trimmed to the real draws."""
    count = len(next(iter(samples.values())))
    pad = (-count) % block
    if pad:
        samples = {k: jnp.concatenate([jnp.asarray(v), jnp.repeat(jnp.asarray(v)[-1:], pad, axis=0)]) for k, v in samples.items()}
    parts = [run_block(j, {k: v[i:i + block] for k, v in samples.items()})
             for j, i in enumerate(range(0, count + pad, block))]
    return {k: np.concatenate([np.asarray(part[k]) for part in parts])[:count] for k in parts[0]}


def predictive_in_blocks(model, key, samples, args, kwargs, conditional=False) -> dict:
    """`posterior_predictive_draws` of "y" in blocks of `DRAW_BLOCK` draws (one compiled program for any
    number of draws); block i uses the key folded with i."""
    return in_draw_blocks(lambda i, b: posterior_predictive_draws(model, jax.random.fold_in(key, i), b, args, kwargs,
                                                                  conditional=conditional), samples)


def log_likelihood_in_blocks(model, samples, args, kwargs) -> dict:
    """`pointwise_log_likelihood` in blocks of `DRAW_BLOCK` draws (one compiled program for any number)."""
    return in_draw_blocks(lambda i, b: pointwise_log_likelihood(model, b, args, kwargs), samples)


@partial(jax.jit, static_argnames=("model",))
def log_prior_terms(model, samples, args, kwargs):
    """log p(theta_s) of each posterior draw, one term per latent sample site (its log density summed over
    its elements, in the space the model declares it: a pivoted coefficient's prior is on its log value; a
    saturating term's site gives one term per declared parameter, `bayescale.saturating`):
    {site: (draws,)}. Observed sites and factors (the likelihood) are left out. ArviZ's `log_prior` group,
    which prior-sensitivity checks (`az.psense_summary`) need."""
    def one(s):
        trace = handlers.trace(handlers.substitute(handlers.seed(model, 0), data=s)).get_trace(*args, **kwargs)
        terms = {}
        for name, site in trace.items():
            if site["type"] != "sample" or site["is_observed"]:
                continue
            if isinstance(site["fn"], SaturatingTermPrior) and site["fn"].names is not None:
                terms.update(site["fn"].declared_log_prob_terms(site["value"]))  # per declared parameter
            else:
                terms[name] = jnp.sum(site["fn"].log_prob(site["value"]))
        return terms

    return jax.vmap(one)(samples)


def log_prior_in_blocks(model, samples, args, kwargs) -> dict:
    """`log_prior_terms` in blocks of `DRAW_BLOCK` draws (one compiled program for any number of draws)."""
    return in_draw_blocks(lambda i, b: log_prior_terms(model, b, args, kwargs), samples)


# ---- the model as NUTS and L-BFGS see it ----


@dataclass(frozen=True)
class Program:
    """A model's unnormalised posterior in NumPyro's unconstrained space, as functions of the model's
    arguments, so one traced program serves every data set: `potential_fn_gen(*args, **kwargs)(z)` is the
    potential energy (minus the log density, with the log-Jacobian of the transforms) at unconstrained `z`,
    `postprocess_fn_gen(*args, **kwargs)(z)` the point in the user's units (deterministic sites included)."""

    model: Any
    latent: tuple[str, ...]

    def potential_fn_gen(self, *args, **kwargs):
        return lambda z: potential_energy(self.model, args, kwargs, z)

    def postprocess_fn_gen(self, *args, **kwargs):
        return lambda z: constrain_fn(self.model, args, kwargs, z, return_deterministic=True)


_PROGRAMS: dict[int, tuple[Any, Program]] = {}


def program_for(model, args, kwargs) -> Program:
    """The `Program` of `model` (memoised per model object); `args`, `kwargs`: one data set's inputs.

    Only the names of the latent sites are read here, from an abstract trace of the model (`jax.eval_shape`):
    numpyro's `initialize_model` also evaluates the model and its gradient op by op to find a valid start,
    which cost 6.4 s of one-operation compilations per new model (Chinchilla, cold cache) and is not needed,
    since the MAP starts from prior draws."""
    cached = _PROGRAMS.get(id(model))
    if cached is not None and cached[0] is model:
        return cached[1]
    names: list[str] = []

    def record_latent_sites(args, kwargs):
        trace = handlers.trace(handlers.seed(model, jax.random.PRNGKey(0))).get_trace(*args, **kwargs)
        names.extend(n for n, s in trace.items() if s["type"] == "sample" and not s["is_observed"])

    jax.eval_shape(record_latent_sites, args, dict(kwargs))
    program = Program(model, tuple(names))
    _PROGRAMS[id(model)] = (model, program)
    return program
