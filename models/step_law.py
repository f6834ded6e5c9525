"""Step Law: the optimal learning rate and batch size as power laws of N and D, and the loss bowl around them.

Li et al. 2025, "Predictable Scale: Part I -- Optimal Hyperparameter Scaling Law in Large Language Model
Pretraining" (arXiv:2503.04715): from ~3,700 runs, eta_opt = 1.79 N^-0.713 D^0.307 and B_opt = 0.58 D^0.571
(N non-embedding parameters, D tokens, batch size in tokens), and the loss is a convex bowl in
(log lr, log batch) around that optimum.

- `step_law_lr` (output `lr`): eta_opt = c N^-a D^b; `step_law_batch` (output `batch`): B_opt = c D^b.
  Fit them to the best (lr, batch) of each sweep: `fit(table, "step_law_lr", y="lr")`. Priors: coefficients
  LogNormal(0, 3) (the published 1.79 and 0.58 are O(1) in these units but depend on them); exponents
  Normal(published, 0.5): data-independent, centred on Step Law, wide enough for either sign to be tested.
- `lr_batch_bowl` (inputs lr, batch; one N, D): L = L_min + q_lr log(lr / lr_opt)^2 + q_batch
  log(batch / batch_opt)^2, the quadratic in logs the paper's landscape plots show. Priors: L_min uniform below
  the smallest loss; lr_opt LogNormal(log 1e-3, 2); batch_opt LogNormal(log 1e6, 2) tokens (Step Law's values
  for 0.1-10B models at 0.1-2T tokens lie within a factor e^2 of these); curvatures q LogNormal(log 0.02, 1.5)
  (nats per squared e-fold: a factor-of-e miss costs ~0.01-0.05 nats).
- `step_law_surface` (inputs N, D, lr, batch): the loss of any run of a sweep across sizes, the bowl around
  an optimum that moves with N and D as Step Law says:
  L = E + A N^-alpha + B D^-beta + q_lr log(lr / lr_opt)^2 + q_batch log(batch / batch_opt)^2,
  lr_opt = lr_ref (N / 1e9)^-a_lr (D / 1e11)^b_lr, batch_opt = batch_ref (D / 1e11)^b_batch: Step Law's
  c N^-a D^b written at a reference run (c = lr_ref 1e9^a / 1e11^b), which NUTS samples without the
  coefficient-exponent ridge. The floor of the bowl is the Chinchilla law (its priors,
  `bayescale.models.chinchilla`), the exponents have the priors of `step_law_lr` and `step_law_batch`,
  lr_ref ~ LogNormal(log 1e-3, 2) and batch_ref ~ LogNormal(log 1e6, 2) tokens (as `lr_batch_bowl`'s optimum),
  the curvatures those of `lr_batch_bowl`. Fitted to every run of the sweeps (not only each
  sweep's best), different model sizes are not pooled into one bowl: each (N, D) has its own optimum.
"""

import jax.numpy as jnp
import numpyro.distributions as dist

from bayescale.law import Law, Param
from bayescale.models import chinchilla, priors


def _lr_mean(p, x):
    return jnp.exp(jnp.log(p["c"]) - p["a"] * jnp.log(x["N"]) + p["b"] * jnp.log(x["D"]))


STEP_LAW_LR = Law(
    name="step_law_lr",
    inputs=("N", "D"),
    params={
        "c": Param(dist.LogNormal(0.0, 3.0), "coefficient (published 1.79)"),
        "a": Param(dist.Normal(0.713, 0.5), "exponent of N, negative power (published 0.713)"),
        "b": Param(dist.Normal(0.307, 0.5), "exponent of D (published 0.307)"),
    },
    mean=_lr_mean,
    output="lr",
    description="optimal peak learning rate in parameters and tokens (Step Law)",
    form="lr_opt = c * N^-a * D^b",
    reference="Li et al. 2025, arXiv:2503.04715",
)


def _batch_mean(p, x):
    return jnp.exp(jnp.log(p["c"]) + p["b"] * jnp.log(x["D"]))


STEP_LAW_BATCH = Law(
    name="step_law_batch",
    inputs=("D",),
    params={
        "c": Param(dist.LogNormal(0.0, 3.0), "coefficient (published 0.58)"),
        "b": Param(dist.Normal(0.571, 0.5), "exponent of D (published 0.571)"),
    },
    mean=_batch_mean,
    output="batch",
    description="optimal batch size (tokens) in training tokens (Step Law)",
    form="batch_opt = c * D^b",
    reference="Li et al. 2025, arXiv:2503.04715",
)


def _bowl_mean(p, x):
    return (
        p["L_min"]
        + p["q_lr"] * jnp.log(x["lr"] / p["lr_opt"]) ** 2
        + p["q_batch"] * jnp.log(x["batch"] / p["batch_opt"]) ** 2
    )


_CURVATURE = dist.LogNormal(jnp.log(0.02), 1.5)

LR_BATCH_BOWL = Law(
    name="lr_batch_bowl",
    inputs=("lr", "batch"),
    params={
        "L_min": Param(priors.below_min_output, "loss at the optimum"),
        "lr_opt": Param(dist.LogNormal(jnp.log(1e-3), 2.0), "optimal learning rate"),
        "batch_opt": Param(dist.LogNormal(jnp.log(1e6), 2.0), "optimal batch size (tokens)"),
        "q_lr": Param(_CURVATURE, "curvature in log learning rate"),
        "q_batch": Param(_CURVATURE, "curvature in log batch size"),
    },
    mean=_bowl_mean,
    description="loss over a (learning rate, batch size) sweep at one N, D: a bowl in logs",
    form="L = L_min + q_lr log(lr/lr_opt)^2 + q_batch log(batch/batch_opt)^2",
    reference="Li et al. 2025, arXiv:2503.04715",
)


# The optimum's laws are written around a reference run (1e9 parameters, 1e11 tokens), not at N = D = 1: with
# c at N = D = 1, log c and the exponents trade off along lines of slope log N ~ 20 and log D ~ 25, and NUTS
# met 21 divergences in 3,200 draws on simulated sweeps. Step Law's published c is lr_ref N_REF^a / D_REF^b.
N_REF, D_REF = 1e9, 1e11


def _surface_mean(p, x):
    log_n, log_d = jnp.log(x["N"]), jnp.log(x["D"])
    floor = p["E"] + jnp.exp(jnp.log(p["A"]) - p["alpha"] * log_n) + jnp.exp(jnp.log(p["B"]) - p["beta"] * log_d)
    log_lr_opt = jnp.log(p["lr_ref"]) - p["a_lr"] * (log_n - jnp.log(N_REF)) + p["b_lr"] * (log_d - jnp.log(D_REF))
    log_batch_opt = jnp.log(p["batch_ref"]) + p["b_batch"] * (log_d - jnp.log(D_REF))
    return (floor + p["q_lr"] * (jnp.log(x["lr"]) - log_lr_opt) ** 2
            + p["q_batch"] * (jnp.log(x["batch"]) - log_batch_opt) ** 2)


_FLOOR = chinchilla.CHINCHILLA.params
STEP_LAW_SURFACE = Law(
    name="step_law_surface",
    inputs=("N", "D", "lr", "batch"),
    params={
        "E": _FLOOR["E"], "A": _FLOOR["A"], "alpha": _FLOOR["alpha"], "B": _FLOOR["B"], "beta": _FLOOR["beta"],
        "lr_ref": Param(dist.LogNormal(jnp.log(1e-3), 2.0),
                        "optimal lr at N = 1e9, D = 1e11 (published: 1.79 * 1e9^-0.713 * 1e11^0.307 = 1.65e-3)"),
        "a_lr": Param(STEP_LAW_LR.params["a"].prior, "optimal-lr exponent of N, negative power (published 0.713)"),
        "b_lr": Param(STEP_LAW_LR.params["b"].prior, "optimal-lr exponent of D (published 0.307)"),
        "batch_ref": Param(dist.LogNormal(jnp.log(1e6), 2.0),
                           "optimal batch (tokens) at D = 1e11 (published: 0.58 * 1e11^0.571 = 1.1e6)"),
        "b_batch": Param(STEP_LAW_BATCH.params["b"].prior, "optimal-batch exponent of D (published 0.571)"),
        "q_lr": Param(_CURVATURE, "curvature in log learning rate"),
        "q_batch": Param(_CURVATURE, "curvature in log batch size"),
    },
    mean=_surface_mean,
    description="loss at any (N, D, lr, batch): a bowl around Step Law's optimum, floor the Chinchilla law",
    form="L = E + A/N^alpha + B/D^beta + q_lr log(lr/lr_opt)^2 + q_batch log(batch/batch_opt)^2, "
         "lr_opt = lr_ref (N/1e9)^-a_lr (D/1e11)^b_lr, batch_opt = batch_ref (D/1e11)^b_batch",
    reference="Li et al. 2025, arXiv:2503.04715; Hoffmann et al. 2022",
)
