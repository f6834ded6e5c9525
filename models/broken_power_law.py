"""Broken neural scaling law with k breaks (Caballero et al. 2023, "Broken Neural Scaling Laws", ICLR 2023,
arXiv:2210.14891), eq. 1:

    y = a + b x^-c0 prod_{i=1..k} (1 + (x / d_i)^(1 / f_i))^(-c_i f_i)

A smoothly broken power law: on a log-log plot of y - a the slope is -c0 before the first break, and each
break i at x = d_i changes it by -c_i over a width set by the sharpness f_i (small f_i: sharp break). With
c_i < 0 the curve flattens or turns up: inverse and U-shaped (double-descent) scaling.
The number of breaks is fixed per Law: `broken_power_law(k)` builds one; the catalogue registers k = 1 as
`broken_power_law` (and k = 2 as `broken_power_law_2`). One input x (map any column: `columns={"x": ...}`).

Parameters:
- a: the limit the curve approaches when the total exponent is positive; every term is positive, so
  y > a everywhere and a < min y: Uniform(0, smallest observed y);
- b: coefficient, LogNormal(log 1000, 3), sampled at the data's geometric-mean x (`Param.pivot`);
- c0: slope before the first break, Normal(0.3, 0.5) (usually a positive power-law exponent, but BNSL
  allows any sign);
- c_i: change of slope at break i, Normal(0, 1): either sign, since breaks may steepen (emergence) or
  flatten/turn (saturation, inverse scaling);
- d1: location of the first break in x-units, LogNormal(log x_ref, 3), x_ref the geometric mean of the
  data's x (`bayescale.law.input_log_mean`): the break lies somewhere in or near the data, 90% within 140x
  either side of its middle, whatever x's units (a fixed LogNormal(log 1e6, 6) put tokens and examples on
  different footings); narrow it with `priors={"d1": ...}` (or build with `break_prior=`);
- g_i (i >= 2): log-distance from break i-1 to break i, d_i = d_{i-1} exp(g_i), LogNormal(log 2, 1): keeps
  breaks ordered, so the posterior has no label-switching modes;
- f_i: sharpness of break i, LogNormal(log 0.5, 1) (Caballero et al.'s fits span ~0.05-10).
"""

import jax
import jax.numpy as jnp
import numpyro.distributions as dist

from bayescale.law import Law, Param, input_log_mean
from bayescale.models import priors


def DEFAULT_BREAK_PRIOR(stats):  # noqa: N802  (a prior, named as the constant it replaced)
    return dist.LogNormal(input_log_mean(stats, "x"), 3.0)


def _mean_fn(k: int):
    def mean(p, x):
        log_x = jnp.log(x["x"])
        log_term = jnp.log(p["b"]) - p["c0"] * log_x
        log_break = jnp.log(p["d1"])
        for i in range(1, k + 1):
            if i > 1:
                log_break = log_break + p[f"g{i}"]
            f = p[f"f{i}"]
            # log (1 + (x/d)^(1/f)) = softplus((log x - log d) / f): finite for any x, d, f.
            log_term = log_term - p[f"c{i}"] * f * jax.nn.softplus((log_x - log_break) / f)
        return p["a"] + jnp.exp(log_term)

    return mean


def broken_power_law(k: int = 1, *, break_prior=DEFAULT_BREAK_PRIOR, name: str | None = None) -> Law:
    """A broken power law with `k` >= 1 breaks (see the module docstring for the form and priors)."""
    if k < 1:
        raise ValueError(f"a broken power law needs at least one break, got k={k}")
    params = {
        "a": Param(priors.below_min_output, "limit of y (y > a everywhere)"),
        "b": Param(priors.coefficient(), "coefficient of x^-c0", pivot=("x", "c0")),
        "c0": Param(dist.Normal(0.3, 0.5), "slope (exponent) before the first break"),
    }
    for i in range(1, k + 1):
        params[f"c{i}"] = Param(dist.Normal(0.0, 1.0), f"change of exponent at break {i}")
        if i == 1:
            params["d1"] = Param(break_prior, "location of the first break (x-units)")
        else:
            params[f"g{i}"] = Param(dist.LogNormal(jnp.log(2.0), 1.0), f"log(d{i} / d{i - 1}): distance to break {i}")
        params[f"f{i}"] = Param(dist.LogNormal(jnp.log(0.5), 1.0), f"sharpness of break {i} (small: sharp)")
    factors = " * ".join(f"(1 + (x/d{i})^(1/f{i}))^(-c{i} f{i})" for i in range(1, k + 1))
    return Law(
        name=name or ("broken_power_law" if k == 1 else f"broken_power_law_{k}"),
        inputs=("x",),
        params=params,
        mean=_mean_fn(k),
        description=f"smoothly broken power law with {k} break{'s' if k > 1 else ''} (bends, saturation, U-shapes)",
        form=f"y = a + b * x^-c0 * {factors}",
        reference="Caballero et al. 2023, arXiv:2210.14891",
    )


BROKEN_POWER_LAW = broken_power_law(1)
BROKEN_POWER_LAW_2 = broken_power_law(2)
