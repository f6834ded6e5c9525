"""Data-constrained scaling (Muennighoff et al. 2023): Chinchilla with effective data and parameters.

Muennighoff et al. 2023, "Scaling Data-Constrained Language Models" (NeurIPS 2023, arXiv:2305.16264), eq. 5-7:

    L(N, D, U) = E + A / N'^alpha + B / D'^beta
    D' = U_D + U_D R_D* (1 - exp(-R_D / R_D*)),   R_D = D / U_D - 1   (repeated epochs)
    N' = U_N + U_N R_N* (1 - exp(-R_N / R_N*)),   R_N = N / U_N - 1   (excess parameters)

Inputs: N parameters, D training tokens (C / (6 N) is derived when the table has C), U unique tokens available.
U_D = min(U, D): a run that sees less than one epoch has no repeats (R_D = 0, D' = D).
U_N, the "unique" parameter count: the paper (appendix, "Scaling law fitting") defines it as the
compute-optimal parameter count for the unique data, min(N_opt(U_D), N), from Chinchilla's compute-optimal
relation: with G = (alpha A / (beta B))^(1 / (alpha + beta)), N_opt = G (C / 6)^(beta / (alpha + beta)) and
D_opt = (C / 6)^(alpha / (alpha + beta)) / G, so the N that is optimal for D_opt = U_D is
U_N = G (U_D G)^(beta / alpha). That is what this law computes, from the sampled A, B, alpha, beta (at the
published constants U_N ~ U_D / 19.5). Parameters beyond U_N decay in value like repeated tokens do.

Parameters and published values (the paper's fit to its 400+ runs): E = 1.87, A = 521, B = 1488,
alpha = beta = 0.353, R_D* = 15.4, R_N* = 5.3.
- E: irreducible loss; A, alpha: parameter term; B, beta: data term (as in Chinchilla);
- R_D*: the number of repeated epochs after which repeated data has lost 1 - 1/e of its value
  (~4 epochs are almost as good as new data; beyond ~40 little is gained);
- R_N*: the same for excess parameters (parameters lose value faster: 5.3 < 15.4).
Priors: E, A, alpha, B, beta as in `bayescale.models.chinchilla` (`bayescale.models.priors`); R_D*, R_N*
LogNormal(log 10, 1): a decay scale in epochs, 90% in 1.9-52, covering "repeats are worthless after one
epoch" to "many tens of epochs are fine" and both published values.
"""

import jax.numpy as jnp
import numpyro.distributions as dist

from bayescale.law import Law, Param
from bayescale.models import priors


def effective(unique, total, decay):
    """U + U R* (1 - exp(-R / R*)) with R = total / unique - 1: the worth of `total` given `unique`."""
    repeats = total / unique - 1.0
    return unique * (1.0 + decay * -jnp.expm1(-repeats / decay))


def unique_parameters(unique_tokens, p):
    """U_N = G (U_D G)^(beta / alpha), the compute-optimal parameter count for U_D tokens (see module doc)."""
    log_g = (jnp.log(p["alpha"] * p["A"]) - jnp.log(p["beta"] * p["B"])) / (p["alpha"] + p["beta"])
    return jnp.exp(log_g + (p["beta"] / p["alpha"]) * (jnp.log(unique_tokens) + log_g))


def _mean(p, x):
    unique_d = jnp.minimum(x["U"], x["D"])
    unique_n = jnp.minimum(unique_parameters(unique_d, p), x["N"])
    d_eff = effective(unique_d, x["D"], p["R_D"])
    n_eff = effective(unique_n, x["N"], p["R_N"])
    return (
        p["E"]
        + jnp.exp(jnp.log(p["A"]) - p["alpha"] * jnp.log(n_eff))
        + jnp.exp(jnp.log(p["B"]) - p["beta"] * jnp.log(d_eff))
    )


_DECAY_PRIOR = dist.LogNormal(jnp.log(10.0), 1.0)

DATA_CONSTRAINED = Law(
    name="data_constrained",
    inputs=("N", "D", "U"),
    params={
        "E": Param(priors.below_min_output, "irreducible loss, nats/token"),
        "A": Param(priors.coefficient(), "parameter-limited loss coefficient", pivot=("N", "alpha")),
        "alpha": Param(priors.exponent(), "exponent of effective parameters N'"),
        "B": Param(priors.coefficient(), "data-limited loss coefficient", pivot=("D", "beta")),
        "beta": Param(priors.exponent(), "exponent of effective tokens D'"),
        "R_D": Param(_DECAY_PRIOR, "R_D*: decay scale of repeated data, in epochs"),
        "R_N": Param(_DECAY_PRIOR, "R_N*: decay scale of excess parameters, in multiples of U_N"),
    },
    mean=_mean,
    description="Chinchilla with effective (decaying) repeated data and excess parameters",
    form="L = E + A / N'^alpha + B / D'^beta, D' = U_D (1 + R_D* (1 - exp(-(D/U_D - 1)/R_D*))), N' likewise",
    reference="Muennighoff et al. 2023, arXiv:2305.16264",
)
