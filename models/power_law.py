"""One-variable power laws: saturating y = E + A x^-alpha, the offset form y = d + a (x + b)^-c, and the
compute-only law L(C) = E + A C^-alpha.

- `power_law`: the simplest scaling law, for a single scaling axis x (parameters, tokens, compute, steps,
  examples): e.g. Hestness et al. 2017 ("Deep Learning Scaling is Predictable, Empirically",
  arXiv:1712.00409), Kaplan et al. 2020 (with E = 0). Map any column to the input `x`
  (`columns={"x": "steps"}`).
- `offset_power_law`: the four-parameter form a (x + b)^c + d, written here as y = d + a (x + b)^-c with
  c > 0 so that the exponent prior is the same positive-exponent prior as everywhere else. b > 0 shifts the
  curve's origin: it bends the small-x end (a model that has "already seen" b units of x, e.g. pre-training
  or the examples a prompt supplies) and is only identifiable when data reach x ~ b.
- `compute_power_law`: loss in training compute alone, L(C) = E + A C^-alpha (Kaplan et al. 2020,
  arXiv:2001.08361, L(C_min); Hoffmann et al. 2022's compute-optimal frontier). The rival of two-input laws:
  it ignores how C was split between N and D. C is a column, or derived as C = 6 N D from N and D.

Priors (see `bayescale.models.priors`): E, d uniform below the smallest observed loss; coefficients
LogNormal(log 1000, 3) or wider, sampled at the data's geometric-mean input (`Param.pivot`); exponents
LogNormal(log 0.3, 0.5). The compute exponent is about half a size exponent (alpha beta / (alpha + beta)
for Chinchilla, ~0.15-0.18; Kaplan's 0.050 without a floor), hence LogNormal(log 0.15, 0.7), 90% in
0.05-0.47. The offset b: LogNormal(log x_ref, 3), x_ref the geometric mean of the data's x
(`bayescale.law.input_log_mean`): b lives in x's units, so its prior moves with them, 90% within 140x either
side of the data's middle (b far below the data has no effect, far above it flattens the whole curve; a
fixed LogNormal(0, 5) was centred on one x-unit, whatever the unit); narrow it with `priors={"b": ...}`.

`power_law` and `compute_power_law` sample E, A and alpha in level-and-slope coordinates (`Law.saturating_term`,
`bayescale.saturating`): the level and log-slope at the data's middle, which the data fix, and the floor's
place below the level, which they may not. The ridge between a low floor and a small exponent is then
straight for NUTS; the priors are the ones stated here, exactly. `offset_power_law` samples d, a and c the
same way, with the level taken as d + a x_ref^-c (b left out, exact where b is small against the data's x and
still an exact change of variables where it is not) and b sampled as declared.
"""

import jax.numpy as jnp
import numpyro.distributions as dist

from bayescale.law import Law, Param, input_log_mean
from bayescale.models import priors


def _mean(p, x):
    return p["E"] + p["A"] * x["x"] ** -p["alpha"]


SATURATING_POWER_LAW = Law(
    name="power_law",
    inputs=("x",),
    params={
        "E": Param(priors.below_min_output, "irreducible loss, reached as x -> infinity"),
        "A": Param(priors.coefficient(), "reducible loss at x = 1", pivot=("x", "alpha")),
        "alpha": Param(priors.exponent(), "scaling exponent of x"),
    },
    mean=_mean,
    saturating_term=("E", "A"),
    description="one-variable saturating power law",
    form="y = E + A * x^-alpha",
    reference="Hestness et al. 2017, arXiv:1712.00409",
)


def _offset_prior(stats):
    return dist.LogNormal(input_log_mean(stats, "x"), 3.0)


def _offset_mean(p, x):
    return p["d"] + jnp.exp(jnp.log(p["a"]) - p["c"] * jnp.log(x["x"] + p["b"]))


OFFSET_POWER_LAW = Law(
    name="offset_power_law",
    inputs=("x",),
    params={
        "d": Param(priors.below_min_output, "irreducible loss, reached as x -> infinity"),
        # The pivot is at the geometric mean of x, not x + b: still an exact change of variables, and close
        # to the decorrelating one wherever b is small against the data's x.
        "a": Param(priors.coefficient(), "reducible loss at x + b = 1", pivot=("x", "c")),
        "b": Param(_offset_prior, "offset of x (x-units): the curve behaves as if b were seen already"),
        "c": Param(priors.exponent(), "scaling exponent (positive: y = d + a (x + b)^-c)"),
    },
    mean=_offset_mean,
    saturating_term=("d", "a"),
    description="offset power law in one variable, a (x + b)^c + d with c < 0",
    form="y = d + a * (x + b)^-c",
    reference="issue 3 catalogue; offset form e.g. Hestness et al. 2017 (small-data region)",
)


def _compute_mean(p, x):
    return p["E"] + jnp.exp(jnp.log(p["A"]) - p["alpha"] * jnp.log(x["C"]))


COMPUTE_POWER_LAW = Law(
    name="compute_power_law",
    inputs=("C",),
    params={
        "E": Param(priors.below_min_output, "irreducible loss, nats/token"),
        "A": Param(priors.coefficient(spread=4.0), "reducible loss at C = 1 FLOP", pivot=("C", "alpha")),
        "alpha": Param(priors.exponent(0.15, 0.7), "exponent of training compute C"),
    },
    mean=_compute_mean,
    saturating_term=("E", "A"),
    description="loss in training compute alone (C = 6 N D when N and D are given)",
    form="L = E + A * C^-alpha",
    reference="Kaplan et al. 2020, arXiv:2001.08361; Hoffmann et al. 2022, arXiv:2203.15556",
)
