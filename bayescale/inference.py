"""NUTS with a dense mass matrix, initialised at the MAP, several chains, reproducible from a seed.

Chains run in parallel across local devices when there are at least as many devices as chains (on CPU,
`bayescale.compilation` asks XLA for several host devices), vectorised otherwise. The dense mass matrix
matters: log-coefficients and exponents of a power law are strongly correlated (diagonal adaptation needs
~230 leapfrog steps per iteration on Chinchilla, dense ~17; ../shared/STACK.md).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import jax
import jax.numpy as jnp
from numpyro.infer import MCMC, NUTS

EXTRA_FIELDS = ("diverging", "energy", "potential_energy", "num_steps", "accept_prob", "adapt_state.step_size")


@dataclass(frozen=True)
class SamplerSettings:
    num_warmup: int = 1000
    num_samples: int = 1000
    num_chains: int = 4
    # 0.95, not numpyro's 0.8: when an exponent is small, E and its coefficient trade off along a narrow
    # tail (A / N^alpha ~ constant), and smaller steps there removed the rare divergences on simulated
    # Chinchilla data (9 of 9 fits clean at 0.95 vs 1 of 9 with a divergence at 0.9).
    target_accept_prob: float = 0.95
    max_tree_depth: int = 10
    dense_mass: bool = True
    chain_method: str = "auto"   # "auto", "parallel", "vectorized" or "sequential"
    init_jitter: float = 0.1     # spread of chain starts around the MAP, in unconstrained units

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def mass_structure(settings: SamplerSettings, latent_sites=None):
    """`dense_mass` for NUTS: True (one dense block) unless the model has per-run latent sites (Student-t
    noise with the discrepancy walk: one precision weight per run). Those get a diagonal mass, and the few
    global parameters keep their dense block: a dense matrix over hundreds of weights cannot be estimated
    from a warm-up of hundreds of draws, and NUTS then needs its longest trees."""
    from bayescale.discrepancy import PER_RUN_SITES

    if not settings.dense_mass or latent_sites is None or not set(latent_sites) & set(PER_RUN_SITES):
        return settings.dense_mass
    return [tuple(sorted(s for s in latent_sites if s not in PER_RUN_SITES))]


def nuts_options(settings: SamplerSettings, latent_sites=None) -> dict[str, Any]:
    """The NUTS kernel options of `settings`, shared by `run_nuts` (numpyro's NUTS class) and the batched
    program of `bayescale.batch` (numpyro's functional `hmc(..., algo="NUTS")` init kernel), so the two run
    the same sampler with the same adaptation. `latent_sites`: the model's sampled sites (see
    `mass_structure`)."""
    return {
        "dense_mass": mass_structure(settings, latent_sites),
        "target_accept_prob": settings.target_accept_prob,
        "max_tree_depth": settings.max_tree_depth,
    }


def chain_method(settings: SamplerSettings) -> str:
    if settings.chain_method != "auto":
        return settings.chain_method
    if settings.num_chains == 1:
        return "sequential"
    return "parallel" if jax.local_device_count() >= settings.num_chains else "vectorized"


def chain_starts(key: jax.Array, center: Mapping[str, Any], num_chains: int, jitter: float) -> dict[str, Any]:
    """Dispersed starts around a point: chains that all start at one mode cannot reveal another to R-hat."""
    keys = jax.random.split(key, len(center))
    return {
        name: jnp.asarray(value) + jitter * jax.random.normal(k, (num_chains, *jnp.shape(value)))
        for k, (name, value) in zip(keys, sorted(center.items()))
    }


def run_nuts(
    model,
    model_args: tuple,
    model_kwargs: Mapping[str, Any],
    key: jax.Array,
    settings: SamplerSettings,
    init_unconstrained: Mapping[str, Any] | None = None,
) -> MCMC:
    latent = None if init_unconstrained is None else list(init_unconstrained)
    kernel = NUTS(model, **nuts_options(settings, latent))
    mcmc = MCMC(
        kernel,
        num_warmup=settings.num_warmup,
        num_samples=settings.num_samples,
        num_chains=settings.num_chains,
        chain_method=chain_method(settings),
        progress_bar=False,
    )
    key_run, key_init = jax.random.split(key)
    init_params = None
    if init_unconstrained is not None:
        init_params = chain_starts(key_init, init_unconstrained, settings.num_chains, settings.init_jitter)
        if settings.num_chains == 1:
            init_params = {k: v[0] for k, v in init_params.items()}
    mcmc.run(key_run, *model_args, init_params=init_params, extra_fields=EXTRA_FIELDS, **model_kwargs)
    return mcmc
