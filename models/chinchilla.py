"""Chinchilla law: L(N, D) = E + A / N^alpha + B / D^beta.

Hoffmann et al. 2022, "Training Compute-Optimal Large Language Models" (arXiv:2203.15556), Approach 3;
refit by Besiroglu et al. 2024 (arXiv:2404.10102). N: parameters, D: training tokens (derived as
D = C / (6 N) from compute when the table has C). Published: E=1.69, A=406.4, B=410.7, alpha=0.34,
beta=0.28 (Hoffmann); E=1.82, A=482, B=2085, alpha=0.348, beta=0.366 (Besiroglu).
Priors: see `bayescale.models.priors`. NUTS samples E, A, B, alpha and beta in level-and-slope coordinates
(`Law.saturating_term`, `bayescale.saturating`): the loss at the data's typical (N, D), the two terms' shares
of it and their slopes, and the floor's place below it. On the over-training study's corpora (20-29 runs, a
few model sizes) that took the refits of the largest-40% and -15% folds from 1-14 divergences and R-hat up to
1.028 to none and R-hat <= 1.007 at 4 x 500 + 500 draws.
"""

import jax.numpy as jnp

from bayescale.law import Law, Param
from bayescale.models import priors


def _mean(p, x):
    # exp(log A - alpha log N) keeps both terms in range for N, D up to 1e15 and any sampled exponent.
    return (
        p["E"]
        + jnp.exp(jnp.log(p["A"]) - p["alpha"] * jnp.log(x["N"]))
        + jnp.exp(jnp.log(p["B"]) - p["beta"] * jnp.log(x["D"]))
    )


CHINCHILLA = Law(
    name="chinchilla",
    inputs=("N", "D"),
    params={
        "E": Param(priors.below_min_output, "irreducible loss (entropy of text), nats/token"),
        "A": Param(priors.coefficient(), "parameter-limited loss coefficient", pivot=("N", "alpha")),
        "alpha": Param(priors.exponent(), "exponent of parameters N"),
        "B": Param(priors.coefficient(), "data-limited loss coefficient", pivot=("D", "beta")),
        "beta": Param(priors.exponent(), "exponent of tokens D"),
    },
    mean=_mean,
    saturating_term=("E", "A", "B"),
    description="loss in parameters and tokens, additive (Chinchilla Approach 3)",
    form="L = E + A / N^alpha + B / D^beta",
    reference="Hoffmann et al. 2022, arXiv:2203.15556; Besiroglu et al. 2024, arXiv:2404.10102",
)
