"""Priors shared by the catalogue's laws, with their reasoning.

- Exponents: LogNormal(log 0.3, 0.5), 90% of mass in 0.13-0.68. Published loss exponents for language,
  vision and speech lie in 0.05-0.8 (Kaplan 0.076/0.095, Hoffmann 0.34/0.28, Besiroglu 0.35/0.37); the
  prior is weak on that range and keeps exponents positive, since a saturating law needs them to be.
- Coefficients: LogNormal(log 1000, 3): a multiplicative spread of e^3 = 20x either way per sd. Coefficients
  multiply N^-alpha with N ~ 1e6-1e12, so their scale is only known to orders of magnitude.
- Irreducible loss E: uniform between 0 and the smallest observed loss: the law's floor cannot exceed a
  loss that was reached, and there is no other information on where below it lies.
"""

import jax.numpy as jnp
import numpyro.distributions as dist


def exponent(center: float = 0.3, spread: float = 0.5) -> dist.Distribution:
    return dist.LogNormal(jnp.log(center), spread)


def coefficient(center: float = 1000.0, spread: float = 3.0) -> dist.Distribution:
    return dist.LogNormal(jnp.log(center), spread)


def below_min_output(stats) -> dist.Distribution:
    return dist.Uniform(0.0, stats["y_min"])
