"""Kaplan law in parameters and data: L(N, D) = [(Nc / N)^(alphaN / alphaD) + Dc / D]^alphaD.

Kaplan et al. 2020, "Scaling Laws for Neural Language Models" (arXiv:2001.08361), eq. 1.5. Published
(non-embedding N, tokens D, loss in nats): alphaN = 0.076, alphaD = 0.095, Nc = 8.8e13, Dc = 5.4e13.
No irreducible term: loss goes to zero as N, D grow.
Priors: exponents LogNormal(log 0.1, 0.7) (90%: 0.03-0.32; Kaplan's exponents are small because the law has
no floor); Nc, Dc LogNormal(log 1e13, 5): scales known only to many orders of magnitude.
"""

import jax.numpy as jnp
import numpyro.distributions as dist

from bayescale.law import Law, Param


def _mean(p, x):
    log_n_term = (p["alpha_N"] / p["alpha_D"]) * (jnp.log(p["Nc"]) - jnp.log(x["N"]))
    log_d_term = jnp.log(p["Dc"]) - jnp.log(x["D"])
    return jnp.exp(p["alpha_D"] * jnp.logaddexp(log_n_term, log_d_term))


_SCALE_PRIOR = dist.LogNormal(jnp.log(1e13), 5.0)
_EXPONENT_PRIOR = dist.LogNormal(jnp.log(0.1), 0.7)

KAPLAN = Law(
    name="kaplan",
    inputs=("N", "D"),
    params={
        "Nc": Param(_SCALE_PRIOR, "parameter scale"),
        "alpha_N": Param(_EXPONENT_PRIOR, "exponent of parameters"),
        "Dc": Param(_SCALE_PRIOR, "data scale (tokens)"),
        "alpha_D": Param(_EXPONENT_PRIOR, "exponent of data"),
    },
    mean=_mean,
    description="loss in parameters and tokens, Kaplan's joint form without a floor",
    form="L = [(Nc/N)^(alpha_N/alpha_D) + Dc/D]^alpha_D",
    reference="Kaplan et al. 2020, arXiv:2001.08361",
)
