"""Data mixing law (Ye et al. 2024): each domain's loss as an exponential in the mixture proportions.

Ye, Liu, Sun, Zhou, Zhan and Qiu 2024, "Data Mixing Laws: Optimizing Data Mixtures by Predicting Language
Modeling Performance" (arXiv:2403.16952), eq. 6: the validation loss on domain i of a model trained on a
mixture with proportions r_1..r_M of M training domains is

    L_i(r) = c_i + k_i exp(sum_j t_ij r_j)

a floor c_i plus a reducible part that every training domain j scales by exp(t_ij r_j): t_ii < 0 (more of a
domain lowers its own loss), t_ij of either sign (domains that help or hurt each other). Written here with the
proportions centred at the uniform mixture,

    L(r) = c + k exp(sum_j t_j (r_j - 1/M))

so k is the reducible loss at the uniform mixture. With proportions summing to one, adding the same number to
every t_j changes no prediction: only the contrasts t_j - t_l are identified by the data, and the prior alone
places their common level (a Gaussian direction that NUTS samples without trouble). Compare t's as contrasts.

One law describes one output; the paper's joint law over every validation domain is a multi-output fit, each
domain's loss a column: `fit(table, DATA_MIXING, y=["loss_web", "loss_code", "loss_books"], pooling={...})`,
one joint posterior with c, k and the t's per output and one noise scale. With few outputs (the paper's three
domains) fit every parameter per output, `pooling="independent"`: on simulated three-domain mixtures (24
runs, 0.5% noise) that converges at the default settings (R-hat <= 1.003, no divergences, tests/
test_multi_output.py). Partial pooling of c and k converges too now that full ladders are sampled centred
(same data, 2 x 1000 + 1000: R-hat 1.004, bulk ESS >= 1,206, 30 leapfrog steps per draw; non-centred, as
before: R-hat 1.016, ESS 111, the longest trees; benchmarks/results/grouped_geometry.md), but three outputs
say little about a between-output spread. Never pool the t's: t_ii and t_ij differ in sign by design, so
pooling them shrinks a domain's own effect towards the others'.

Inputs: the M proportions, fractions in [0, 1] that may be 0 (`nonnegative_inputs`). `DATA_MIXING` is the
three-domain law with inputs r1, r2, r3 (map columns to them with `columns=`); `data_mixing_law(names)`
builds the law for any domains.

Priors:
- c: the floor, uniform between 0 and the smallest observed loss (as E of the saturating laws);
- k: the reducible loss at the uniform mixture, LogNormal(log(y_max / 2), 1.5): in the data's units, 90%
  between 0.04 and 6 times half the largest loss;
- t_j: Normal(0, 2): a domain's share going from 0 to 1 multiplies the reducible loss by up to e^4 within 2
  sd, either way; the paper's fitted coefficients are of order 1.
"""

from collections.abc import Sequence

import jax.numpy as jnp
import numpyro.distributions as dist

from bayescale.law import Law, Param
from bayescale.models import priors


def _reducible_prior(stats) -> dist.Distribution:
    return dist.LogNormal(jnp.log(0.5 * stats["y_max"]), 1.5)


def data_mixing_law(domains: Sequence[str] = ("r1", "r2", "r3"), name: str = "data_mixing") -> Law:
    """The data mixing law over training domains `domains` (input names, one proportion each; at least two):
    parameters c, k and t_<domain> for each."""
    domains = tuple(str(d) for d in domains)
    if len(domains) < 2 or len(set(domains)) != len(domains):
        raise ValueError(f"a data mixing law needs two or more distinct domains, got {domains}")
    exponents = {f"t_{d}": d for d in domains}
    centre = 1.0 / len(domains)

    def mean(p, x):
        exponent = sum(p[t] * (x[d] - centre) for t, d in exponents.items())
        return p["c"] + p["k"] * jnp.exp(exponent)

    params = {
        "c": Param(priors.below_min_output, "floor of the loss"),
        "k": Param(_reducible_prior, "reducible loss at the uniform mixture"),
        **{t: Param(dist.Normal(0.0, 2.0), f"log change of the reducible loss per unit share of domain {d}")
           for t, d in exponents.items()},
    }
    return Law(
        name=name,
        inputs=domains,
        params=params,
        mean=mean,
        nonnegative_inputs=domains,
        description="data mixing law: a domain's loss against the training mixture's proportions",
        form="L = c + k exp(sum_j t_j (r_j - 1/M))",
        reference="Ye et al. 2024, arXiv:2403.16952",
    )


DATA_MIXING = data_mixing_law(("r1", "r2", "r3"))
