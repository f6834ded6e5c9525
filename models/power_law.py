"""Saturating power law in one variable: y = E + A x^-alpha.

The simplest scaling law, for a single scaling axis x (parameters, tokens, compute, steps, examples):
e.g. Hestness et al. 2017 ("Deep Learning Scaling is Predictable, Empirically"), Kaplan et al. 2020 (with
E = 0). Map any column to the input `x` (`columns={"x": "steps"}`).
"""

from bayescale.law import Law, Param
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
    description="one-variable saturating power law",
    form="y = E + A * x^-alpha",
    reference="Hestness et al. 2017, arXiv:1712.00409",
)
