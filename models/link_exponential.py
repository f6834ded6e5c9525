"""Exponential link from loss to top-1 error: Err = eps - k exp(-gamma L) = eps - d exp(-gamma (L - 3)).

Gadre et al. 2024, "Language models scale reliably with over-training and on downstream tasks"
(arXiv:2403.08540), eq. 5: the average top-1 error over 17 tasks follows an exponential decay in the C4
validation loss L. The input is a loss `L` (nats/token), the output an error rate in [0, 1], so this is a
*link* law: `bayescale.downstream` chains it behind a loss law (N, D -> L -> error), and `bayescale.fit`
can also fit it alone on a table of (loss, error) pairs.

Parameters:
- eps: the error at infinite loss, i.e. of a model that knows nothing: close to 1 - chance. Prior
  TruncatedNormal(1 - chance, 0.15) on [0, 1], with the task's chance level taken from the data statistics
  (`stats["chance"]`, 0 when not given). Because the prior depends on the task, the chained model gives
  each task its own eps (not pooled across tasks).
- d: the error removed at a loss of 3 nats (Gadre's k = d exp(3 gamma)). Sampling d rather than k removes
  the strong correlation of log k with gamma (k is the error removed at L = 0, far from any data; language
  models' C4 losses lie around 2.5-5), the same reason `Param.pivot` exists for power laws. Prior
  LogNormal(log 0.15, 1): 90% in 0.03-0.8, a fraction of the error.
- gamma: how fast error falls as loss falls, per nat: LogNormal(log 1.5, 1), 90% in 0.3-8.
d and gamma do not depend on the task's data, so the chained model pools them across tasks.
"""

import jax.numpy as jnp
import numpyro.distributions as dist

from bayescale.law import Law, Param


REFERENCE_LOSS = 3.0  # nats: where d is read off; inside the range of the losses links are fitted to


def _eps_prior(stats):
    chance = jnp.asarray(stats.get("chance", 0.0))
    return dist.TruncatedNormal(1.0 - chance, 0.15, low=0.0, high=1.0)


def _mean(p, x):
    return p["eps"] - jnp.exp(jnp.log(p["d"]) - p["gamma"] * (x["L"] - REFERENCE_LOSS))


def gadre_k(d, gamma):
    """Gadre et al.'s k from (d, gamma): k = d exp(gamma L_ref)."""
    return d * jnp.exp(gamma * REFERENCE_LOSS)


EXPONENTIAL_ERROR = Law(
    name="link_exponential",
    inputs=("L",),
    params={
        "eps": Param(_eps_prior, "error at infinite loss (about 1 - chance)"),
        "d": Param(dist.LogNormal(jnp.log(0.15), 1.0), "error removed at a loss of 3 nats"),
        "gamma": Param(dist.LogNormal(jnp.log(1.5), 1.0), "decay rate of error in loss, per nat"),
    },
    mean=_mean,
    output="error",
    description="link: top-1 error from loss, exponential decay (Gadre et al.)",
    form="Err = eps - d * exp(-gamma * (L - 3)), i.e. eps - k exp(-gamma L) with k = d e^(3 gamma)",
    reference="Gadre et al. 2024, arXiv:2403.08540",
)
