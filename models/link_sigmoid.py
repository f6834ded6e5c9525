"""Sigmoid link from loss to accuracy, between a chance-level floor and a ceiling:
Acc = floor + (ceil - floor) / (1 + exp(k (L - L0))).

The form of the OLMo model ladder (Bhagia et al. 2024, "Establishing Task Scaling Laws via Compute-Efficient
Model Ladders", arXiv:2412.04403, step 2: accuracy as a sigmoid of the task loss). Input: a loss `L`
(nats/token); output: accuracy in [0, 1]. A *link* law: `bayescale.downstream` chains it behind a loss law.

Parameters:
- floor: accuracy of a model that knows nothing, i.e. the task's chance level: TruncatedNormal(chance, 0.03)
  on [0, 1], chance from the data statistics (`stats["chance"]`, 0 when not given); per task.
- ceil: accuracy at zero loss: Uniform(chance, 1); per task.
- L0: the loss at the midpoint between floor and ceiling: LogNormal(log L_ref, 0.4), 90% in 0.52-1.93 x L_ref,
  where L_ref is the geometric mean of the observed losses (`bayescale.law.input_log_mean`), so the prior
  moves with the loss's unit: nats of C4 (L_ref ~ 3: 1.6-5.8, the range of language models' C4 losses),
  bits per byte (0.7-1.8), a task's own cross-entropy. A midpoint in fixed C4 nats sat 3 prior sd away from
  bits-per-byte data; pooled across tasks in the chained model.
- k: steepness per unit of loss: LogNormal(log(9 / L_ref), 1), i.e. k L_ref ~ LogNormal(log 9, 1) (90% of
  k in 0.6-15 per nat at L_ref = 3, as before); pooled.
Both read the observed losses (in a chain, every run with a measured loss; fitted on its own, the table's L).
"""

import jax.numpy as jnp
import numpyro.distributions as dist

from bayescale.law import Law, Param, input_log_mean


def _floor_prior(stats):
    chance = jnp.asarray(stats.get("chance", 0.0))
    return dist.TruncatedNormal(chance, 0.03, low=0.0, high=1.0)


def _ceil_prior(stats):
    chance = jnp.asarray(stats.get("chance", 0.0))
    return dist.Uniform(chance, 1.0)


def _midpoint_prior(stats):
    return dist.LogNormal(input_log_mean(stats, "L"), 0.4)


def _steepness_prior(stats):
    return dist.LogNormal(jnp.log(9.0) - input_log_mean(stats, "L"), 1.0)


def _mean(p, x):
    return p["floor"] + (p["ceil"] - p["floor"]) * jnp.exp(-jnp.logaddexp(0.0, p["k"] * (x["L"] - p["L0"])))


SIGMOID_ACCURACY = Law(
    name="link_sigmoid",
    inputs=("L",),
    params={
        "floor": Param(_floor_prior, "accuracy at infinite loss (chance level)"),
        "ceil": Param(_ceil_prior, "accuracy at zero loss"),
        "k": Param(_steepness_prior, "steepness, per unit of loss"),
        "L0": Param(_midpoint_prior, "loss at the midpoint"),
    },
    mean=_mean,
    output="accuracy",
    description="link: accuracy from loss, sigmoid between chance floor and ceiling (OLMo ladder)",
    form="Acc = floor + (ceil - floor) / (1 + exp(k * (L - L0)))",
    reference="Bhagia et al. 2024, arXiv:2412.04403",
)
