"""Over-training law with a tied exponent (Gadre et al. 2024): L(C, M) = E + (a M^eta + b M^-eta) C^-eta.

Gadre et al. 2024, "Language models scale reliably with over-training and on downstream tasks"
(arXiv:2403.08540), eq. 4. It is the Chinchilla law E + A N^-alpha + B D^-beta with alpha = beta, rewritten
in compute C = 6 N D and tokens per parameter M = D / N: then N = sqrt(C / (6 M)), D = sqrt(C M / 6), and
A N^-alpha + B D^-alpha = (a M^eta + b M^-eta) C^-eta with eta = alpha / 2, a = A 6^eta, b = B 6^eta.
At fixed compute the loss is a bowl in log M (minimum at M* = (b / a)^(1 / (2 eta))), which is what lets a
few runs at one M and one over-trained run predict losses far along both axes.

Inputs C and M: columns, or derived from N and D (C = 6 N D, M = D / N; `bayescale.law.STANDARD_DERIVATIONS`).
Parameters:
- E: irreducible loss (nats/token);
- a: coefficient of the under-training term M^eta C^-eta (too few tokens per parameter);
- b: coefficient of the over-training term M^-eta C^-eta (too many tokens per parameter);
- eta: the shared exponent, half of Chinchilla's alpha (Gadre et al. report eta ~ 0.12-0.17 across their
  three corpora; Hoffmann's alpha = 0.34 gives 0.17).
Fit set of the paper: the headline fit uses five small RedPajama runs (N = 10.6M, 78.9M, 153.7M, 411.6M at
M = 20, plus 10.6M at M = 320, i.e. Chinchilla multiplier 16) scored on C4 validation loss, and predicts the
1.4B run at M = 640 and the 6.9B run at M = 20 within ~0.7% (../shared/data/README.md, overtrain/).

Priors: E uniform below the smallest observed loss; eta LogNormal(log 0.15, 0.5) (90% in 0.066-0.34: half the
shared size-exponent prior); a, b LogNormal(log 1000, 4), sampled at the data's geometric-mean compute
(`Param.pivot` on C): with C ~ 1e17-1e23 and eta ~ 0.15, C^-eta ~ 1e-3, so a loss gap of ~1 nat needs
coefficients ~ 1e3, known only to orders of magnitude. Five runs and four law parameters leave the noise scale
sigma to its prior (HalfNormal(0.1)), which is then what carries the predictive width.

Sampling: E, a, b and eta in level-and-slope coordinates (`Law.saturating_term`, `bayescale.saturating`): the
level at the reference compute (M = 1), the two terms' shares of it, eta times their sum (the slope in log C),
and the floor's place below the level. With a few model sizes the floor trades against eta along a curved
ridge; in these coordinates the ridge is straight. On the over-training study's backtest folds (20-29 runs)
divergences fell from 0-30 (R-hat up to 1.094) to none (R-hat <= 1.012) at 4 x 500 + 500 draws.
"""

import jax.numpy as jnp

from bayescale.law import Law, Param
from bayescale.models import priors


def _mean(p, x):
    log_c, log_m = jnp.log(x["C"]), jnp.log(x["M"])
    under = jnp.exp(jnp.log(p["a"]) + p["eta"] * (log_m - log_c))
    over = jnp.exp(jnp.log(p["b"]) - p["eta"] * (log_m + log_c))
    return p["E"] + under + over


OVERTRAIN = Law(
    name="overtrain",
    inputs=("C", "M"),
    params={
        "E": Param(priors.below_min_output, "irreducible loss, nats/token"),
        "a": Param(priors.coefficient(spread=4.0), "coefficient of M^eta C^-eta (under-training term)",
                   pivot=("C", "eta")),
        "b": Param(priors.coefficient(spread=4.0), "coefficient of M^-eta C^-eta (over-training term)",
                   pivot=("C", "eta")),
        "eta": Param(priors.exponent(0.15, 0.5), "shared exponent of compute and tokens per parameter"),
    },
    mean=_mean,
    saturating_term=("E", "a", "b"),
    description="tied-exponent over-training law in compute C and tokens per parameter M = D/N",
    form="L = E + (a * M^eta + b * M^-eta) * C^-eta",
    reference="Gadre et al. 2024, arXiv:2403.08540",
)
