"""pass@k link for sampled metrics: pass@k = 1 - (1 - p)^k with per-sample pass rate p = exp(-(L / Lc)^a).

Hu et al. 2024, "Predicting Emergent Abilities with Infinite Resolution Evaluation" (PassUntil,
arXiv:2310.03262) find -log(pass rate) falling as a power of model size, i.e. log(-log p) linear in log N;
with loss itself a power law in N that is log(-log p) linear in log L, the Weibull form above. k samples
per problem turn p into pass@k (Chen et al. 2021, arXiv:2107.03374). Inputs: a loss `L` and the number of
samples `k`; output: the pass rate in [0, 1]. A *link* law for `bayescale.downstream`.

Parameters (pooled across tasks in the chained model):
- Lc: the loss at which a single sample passes with probability 1/e: LogNormal(log 2.5, 0.5), nats.
- a: sharpness of the emergence: LogNormal(log 5, 1); large a is the "emergent" jump.
"""

import jax.numpy as jnp
import numpyro.distributions as dist

from bayescale.law import Law, Param


def _mean(p, x):
    log_fail_one = jnp.log(-jnp.expm1(-jnp.exp(p["a"] * (jnp.log(x["L"]) - jnp.log(p["Lc"])))))
    return -jnp.expm1(x["k"] * log_fail_one)


PASS_AT_K = Law(
    name="link_pass_at_k",
    inputs=("L", "k"),
    params={
        "Lc": Param(dist.LogNormal(jnp.log(2.5), 0.5), "loss where one sample passes with probability 1/e"),
        "a": Param(dist.LogNormal(jnp.log(5.0), 1.0), "sharpness of the emergence"),
    },
    mean=_mean,
    output="pass_rate",
    description="link: pass@k of sampled answers from loss (PassUntil / Weibull per-sample rate)",
    form="pass@k = 1 - (1 - exp(-(L / Lc)^a))^k",
    reference="Hu et al. 2024, arXiv:2310.03262; Chen et al. 2021, arXiv:2107.03374",
)
