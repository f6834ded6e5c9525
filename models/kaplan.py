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


# ---- L(N, S): parameters and optimisation steps, with the critical batch size (Kaplan et al. eq. 1.6, 5.4) ----
#
# L(N, S) = (Nc / N)^alpha_N + (Sc / S_min)^alpha_S,  S_min = S / (1 + B_crit(L) / B),  B_crit(L) = B* / L^(1/alpha_B).
# Inputs: N (non-embedding parameters), S (optimisation steps), B (batch size, tokens). Published: alpha_N = 0.076,
# Nc = 6.4e13, alpha_S = 0.76, Sc = 2.1e3, B* = 2.1e8 tokens, alpha_B = 0.21.
# B_crit depends on the loss itself, so L is defined implicitly. h(L) = L - f(L) is strictly increasing (f falls as
# L rises: a higher loss means a smaller critical batch, fewer wasted steps), so the root is unique; the mean solves
# it with Newton steps from the lower bound f at B = infinity (S_min = S), exactly up to float precision after a few
# steps, and JAX differentiates through the unrolled steps. Priors: exponents and scales as for `kaplan` above,
# alpha_S LogNormal(log 0.7, 0.5), Sc LogNormal(log 1e3, 3), B* LogNormal(log 1e8, 3), alpha_B LogNormal(log 0.2, 0.5).

_NEWTON_STEPS = 8


def _steps_mean(p, x):
    n_term = jnp.exp(p["alpha_N"] * (jnp.log(p["Nc"]) - jnp.log(x["N"])))
    log_sc_over_s = jnp.log(p["Sc"]) - jnp.log(x["S"])

    def step_terms(loss):
        ratio = jnp.exp(jnp.log(p["B_star"]) - jnp.log(loss) / p["alpha_B"] - jnp.log(x["B"]))  # B_crit / B
        s_term = jnp.exp(p["alpha_S"] * (log_sc_over_s + jnp.log1p(ratio)))
        # d s_term / d loss = -(alpha_S / alpha_B) s_term ratio / ((1 + ratio) loss)
        slope = -(p["alpha_S"] / p["alpha_B"]) * s_term * ratio / ((1.0 + ratio) * loss)
        return n_term + s_term, slope

    loss = n_term + jnp.exp(p["alpha_S"] * log_sc_over_s)
    for _ in range(_NEWTON_STEPS):
        value, slope = step_terms(loss)
        loss = loss - (loss - value) / (1.0 - slope)
    return loss


KAPLAN_STEPS = Law(
    name="kaplan_steps",
    inputs=("N", "S", "B"),
    params={
        "Nc": Param(_SCALE_PRIOR, "parameter scale"),
        "alpha_N": Param(_EXPONENT_PRIOR, "exponent of parameters"),
        "Sc": Param(dist.LogNormal(jnp.log(1e3), 3.0), "step scale"),
        "alpha_S": Param(dist.LogNormal(jnp.log(0.7), 0.5), "exponent of minimum steps S_min"),
        "B_star": Param(dist.LogNormal(jnp.log(1e8), 3.0), "critical-batch scale B* (tokens)"),
        "alpha_B": Param(dist.LogNormal(jnp.log(0.2), 0.5), "critical-batch exponent: B_crit = B* / L^(1/alpha_B)"),
    },
    mean=_steps_mean,
    description="loss in parameters and optimisation steps, corrected to the critical batch size (implicit in L)",
    form="L = (Nc/N)^alpha_N + (Sc/S_min)^alpha_S, S_min = S / (1 + B_crit(L)/B), B_crit = B*/L^(1/alpha_B)",
    reference="Kaplan et al. 2020, arXiv:2001.08361, eq. 1.6 and 5.4",
)
