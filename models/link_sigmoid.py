"""Sigmoid link from loss to accuracy, between a chance-level floor and a ceiling:
Acc = floor + (ceil - floor) / (1 + exp(k (L - L0))).

The form of the OLMo model ladder (Bhagia et al. 2024, "Establishing Task Scaling Laws via Compute-Efficient
Model Ladders", arXiv:2412.04403, step 2: accuracy as a sigmoid of the task loss). Input: a loss `L`
(nats/token); output: accuracy in [0, 1]. A *link* law: `bayescale.downstream` chains it behind a loss law.

Parameters:
- floor: accuracy of a model that knows nothing, i.e. the task's chance level: TruncatedNormal(chance, 0.03)
  on [0, 1], chance from the data statistics (`stats["chance"]`, 0 when not given); per task.
- ceil: accuracy at zero loss: Uniform(chance, 1); per task.
- k: steepness, per nat: LogNormal(log 3, 1), 90% in 0.6-15; pooled across tasks in the chained model.
- L0: the loss at the midpoint between floor and ceiling: LogNormal(log 3, 0.4), 90% in 1.6-5.8 nats (the
  range where language models' C4 losses are); pooled.
"""

import jax.numpy as jnp
import numpyro.distributions as dist

from bayescale.law import Law, Param


def _floor_prior(stats):
    chance = jnp.asarray(stats.get("chance", 0.0))
    return dist.TruncatedNormal(chance, 0.03, low=0.0, high=1.0)


def _ceil_prior(stats):
    chance = jnp.asarray(stats.get("chance", 0.0))
    return dist.Uniform(chance, 1.0)


def _mean(p, x):
    return p["floor"] + (p["ceil"] - p["floor"]) * jnp.exp(-jnp.logaddexp(0.0, p["k"] * (x["L"] - p["L0"])))


SIGMOID_ACCURACY = Law(
    name="link_sigmoid",
    inputs=("L",),
    params={
        "floor": Param(_floor_prior, "accuracy at infinite loss (chance level)"),
        "ceil": Param(_ceil_prior, "accuracy at zero loss"),
        "k": Param(dist.LogNormal(jnp.log(3.0), 1.0), "steepness, per nat"),
        "L0": Param(dist.LogNormal(jnp.log(3.0), 0.4), "loss at the midpoint"),
    },
    mean=_mean,
    output="accuracy",
    description="link: accuracy from loss, sigmoid between chance floor and ceiling (OLMo ladder)",
    form="Acc = floor + (ceil - floor) / (1 + exp(k * (L - L0)))",
    reference="Bhagia et al. 2024, arXiv:2412.04403",
)
