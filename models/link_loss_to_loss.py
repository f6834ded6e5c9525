"""Loss-to-loss link, a shifted power law: L_y = K (L - E_x)^kappa + E_y.

Brandfonbrener et al. 2024, "Loss-to-Loss Prediction: Scaling Laws for All Datasets" (arXiv:2411.12925):
the loss on one distribution (y, e.g. a downstream eval set) is a power of the reducible part of the loss on
another (L, the training or C4 loss). E_x and E_y are the two irreducible losses. Input: a loss `L`;
output: another loss. Fit it alone with `bayescale.fit(table, "link_loss_to_loss", columns={"L": ...},
y=...)`.

Parameters:
- E_x: irreducible part of the input loss: HalfNormal(1.5) (nats; must lie below the smallest input loss,
  which the likelihood enforces since the term is clipped at zero).
- E_y: irreducible part of the output loss: Uniform(0, min observed output).
- K: scale: LogNormal(0, 1.5); kappa: exponent, LogNormal(0, 0.5) (Brandfonbrener et al. find kappa
  near 1, 0.5-2).
"""

import jax.numpy as jnp
import numpyro.distributions as dist

from bayescale.law import Law, Param
from bayescale.models import priors


def _mean(p, x):
    reducible = jnp.maximum(x["L"] - p["E_x"], 1e-9)
    return p["E_y"] + jnp.exp(jnp.log(p["K"]) + p["kappa"] * jnp.log(reducible))


LOSS_TO_LOSS = Law(
    name="link_loss_to_loss",
    inputs=("L",),
    params={
        "E_x": Param(dist.HalfNormal(1.5), "irreducible part of the input loss"),
        "E_y": Param(priors.below_min_output, "irreducible part of the output loss"),
        "K": Param(dist.LogNormal(0.0, 1.5), "scale"),
        "kappa": Param(dist.LogNormal(0.0, 0.5), "exponent"),
    },
    mean=_mean,
    output="loss",
    description="link: loss on one distribution from loss on another, shifted power law",
    form="L_y = K * (L - E_x)^kappa + E_y",
    reference="Brandfonbrener et al. 2024, arXiv:2411.12925",
)
