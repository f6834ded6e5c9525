"""Rectified fine-tuning scaling law (Lin et al. 2024): L(D) = B / (D_l + D^beta) + E.

Lin et al. 2024, "Selecting Large Language Model to Fine-tune via Rectified Scaling Law" (ICML 2024,
arXiv:2402.02314), eq. 3. Fine-tuning loss against fine-tuning data size D: a plain power law B D^-beta + E
misses the flat "pre-power" phase at small D, where the pre-trained model already knows part of the task.
D_l, the "pre-learned data size", is the amount of fine-tuning data the pre-training is worth (in units of
D^beta); the curve is flat while D^beta << D_l and a power law once D^beta >> D_l.
Input D: fine-tuning examples or tokens; D = 0 (the pre-trained model, zero-shot) is allowed
(`nonnegative_inputs`), where L(0) = B / D_l + E. The random-walk discrepancy runs along log D and is off by
default for this law (zero has no log); the pivot of B is at the geometric mean of the positive D.

Parameters and priors:
- B: coefficient, LogNormal(log 1000, 3), sampled at the data's geometric-mean D (`Param.pivot`; B D^-beta
  is the large-D limit of the term);
- D_l: pre-learned data size in units of D^beta, LogNormal(log 10, 4): with beta ~ 0.5 and D up to 1e6-1e9,
  D^beta is 1e3-1e5, and D_l may be anywhere from negligible to most of it;
- beta: exponent, LogNormal(log 0.5, 0.6), 90% in 0.19-1.3 (fine-tuning curves are steeper than
  pre-training ones);
- E: irreducible fine-tuning loss, uniform below the smallest observed loss.
"""

import jax.numpy as jnp
import numpyro.distributions as dist

from bayescale.law import Law, Param
from bayescale.models import priors


def _mean(p, x):
    # D = 0 is in the law's domain (the pre-trained model before fine-tuning: L = B / D_l + E); D^beta is
    # written so that its value and its gradient in beta are 0 there, not 0 * log(0) = NaN.
    seen = x["D"] > 0
    power = jnp.where(seen, jnp.exp(p["beta"] * jnp.log(jnp.where(seen, x["D"], 1.0))), 0.0)
    return p["E"] + p["B"] / (p["D_l"] + power)


FINETUNE = Law(
    name="finetune",
    inputs=("D",),
    params={
        "B": Param(priors.coefficient(), "coefficient (large-D limit B D^-beta)", pivot=("D", "beta")),
        "D_l": Param(dist.LogNormal(jnp.log(10.0), 4.0), "pre-learned data size, in units of D^beta"),
        "beta": Param(priors.exponent(0.5, 0.6), "exponent of fine-tuning data D"),
        "E": Param(priors.below_min_output, "irreducible fine-tuning loss"),
    },
    mean=_mean,
    nonnegative_inputs=("D",),
    description="rectified fine-tuning law: a flat pre-power phase, then a power law in fine-tuning data",
    form="L = B / (D_l + D^beta) + E",
    reference="Lin et al. 2024, arXiv:2402.02314",
)
