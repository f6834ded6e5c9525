"""Bounded power law (Alabdulmohsin et al. 2022's estimator "M4"): a metric between a ceiling and a floor.

Alabdulmohsin, Neyshabur and Zhai 2022, "Revisiting Neural Scaling Laws in Language and Vision" (NeurIPS 2022,
arXiv:2209.06640), eq. 4: (eps_x - eps_inf) / (eps_0 - eps_x)^alpha = beta x^c, with c < 0. Written here with
a positive exponent, c -> -c:

    (y - eps_inf) / (eps_0 - y)^alpha = beta * x^-c

A bounded metric (an error rate, one minus few-shot accuracy, a normalised loss) starts near a ceiling eps_0
(chance) at small scale and falls toward a floor eps_inf at large scale. The saturating power law
y = E + A x^-alpha has the floor but no ceiling: fitted on a ladder that still bends away from the ceiling it
learns a too-shallow exponent and extrapolates badly. M4 is a power law in x for the ratio on the left, so it
bends toward eps_0 at small x and becomes y - eps_inf ~ beta (eps_0 - eps_inf)^alpha x^-c, the saturating
power law, at large x. alpha = 0 gives that power law exactly (the paper's M2); the paper found M4 the best
extrapolator of its four estimators on image classification, translation, language modelling and BIG-Bench.

The output is given implicitly. With y = eps_inf + t (eps_0 - eps_inf), t in (0, 1), and s = logit(t), the
equation is h(s) = log t - alpha log(1 - t) = log beta - c log x - (1 - alpha) log(eps_0 - eps_inf), and h is
strictly increasing (h' = sigmoid(-s) + alpha sigmoid(s) > 0), so the root is unique. It is found by Newton
steps safeguarded by bisection (h is concave for alpha < 1 and convex above, so Newton alone can overshoot),
outside the gradient; one last Newton step with the live parameters then carries exactly the implicit
function theorem's derivative, ds/dtheta = -(dh/dtheta) / h'(s), at no extra compile cost.

Input x: any one scaling axis (training examples, parameters, compute, steps); map a column to it with
`columns={"x": ...}`. Output: positive, on the log scale (the noise of an error rate is relative). For an
accuracy a, fit the error 1 - a.

Priors:
- eps_inf: uniform between 0 and the smallest observed output (as E of the saturating law);
- eps_0: above the largest observed output by (range of the outputs) x LogNormal(log 0.5, 1.5), 90% between
  0.04x and 6x the range: the ceiling lies beyond every run, and only the data's own units say how far;
- beta: LogNormal(log 1000, 4), sampled at the data's geometric-mean x (`Param.pivot`);
- c: LogNormal(log 0.3, 0.7), the catalogue's exponent prior widened (learning-curve exponents reach 1);
- alpha: HalfNormal(1): alpha = 0 (no ceiling effect, the power law) is inside the prior and alpha ~ 1
  (the logistic shape) is one sd away.
"""

import jax
import jax.numpy as jnp
import numpyro.distributions as dist
from numpyro.distributions import constraints
from numpyro.distributions.transforms import AffineTransform

from bayescale.law import Law, Param
from bayescale.models import priors

_SOLVER_STEPS = 60
# Beyond |s| = 40 the metric is within 4e-18 of its floor or ceiling (t = sigmoid(s)); clipping there keeps the
# value and gives zero, not NaN, gradients where a ceiling-free law (alpha -> 0) would need y beyond eps_0.
_LOGIT_LIMIT = 40.0


def _ceiling_prior(stats) -> dist.Distribution:
    spread = jnp.maximum(stats["y_max"] - stats["y_min"], 1e-6 * stats["y_max"])
    return dist.TransformedDistribution(dist.LogNormal(jnp.log(0.5 * spread), 1.5), AffineTransform(stats["y_max"], 1.0, domain=constraints.positive))


def _h(s, alpha):
    """log t - alpha log(1 - t) at t = sigmoid(s), and its derivative in s."""
    value = -jax.nn.softplus(-s) + alpha * jax.nn.softplus(s)
    slope = jax.nn.sigmoid(-s) + alpha * jax.nn.sigmoid(s)
    return value, slope


def _solve_logit(target, alpha):
    """The s with h(s) = target (elementwise), by Newton steps kept inside a shrinking bisection bracket."""
    # h(s) < target at s = min(target, 0) - 50 (there h(s) <= s + alpha e^s), and h(s) >= alpha s - log 2 > target
    # at s = (max(target, 0) + 1) / alpha + 1: the root lies between.
    low = jnp.minimum(target, 0.0) - 50.0
    high = (jnp.maximum(target, 0.0) + 1.0) / jnp.maximum(alpha, 1e-8) + 1.0
    s = jnp.clip(target, low, high)

    def step(_, state):
        low, high, s = state
        value, slope = _h(s, alpha)
        above = value > target
        low, high = jnp.where(above, low, s), jnp.where(above, s, high)
        newton = s - (value - target) / slope
        inside = (newton > low) & (newton < high)
        return low, high, jnp.where(inside, newton, 0.5 * (low + high))

    return jax.lax.fori_loop(0, _SOLVER_STEPS, step, (low, high, s))[2]


def _mean(p, x):
    alpha = p["alpha"]
    log_range = jnp.log(p["eps_0"] - p["eps_inf"])
    target = jnp.log(p["beta"]) - p["c"] * jnp.log(x["x"]) - (1.0 - alpha) * log_range
    root = jax.lax.stop_gradient(jnp.clip(_solve_logit(jax.lax.stop_gradient(target), jax.lax.stop_gradient(alpha)),
                                          -_LOGIT_LIMIT, _LOGIT_LIMIT))
    value, slope = _h(root, alpha)
    s = jnp.clip(root - (value - target) / jax.lax.stop_gradient(slope), -_LOGIT_LIMIT, _LOGIT_LIMIT)
    return p["eps_inf"] + jax.nn.sigmoid(s) * (p["eps_0"] - p["eps_inf"])


BOUNDED_POWER_LAW = Law(
    name="bounded_power_law",
    inputs=("x",),
    params={
        "eps_inf": Param(priors.below_min_output, "floor: the metric as x -> infinity"),
        "eps_0": Param(_ceiling_prior, "ceiling: the metric as x -> 0 (e.g. chance error)"),
        "beta": Param(priors.coefficient(spread=4.0), "coefficient of x^-c", pivot=("x", "c")),
        "c": Param(priors.exponent(0.3, 0.7), "scaling exponent of x (the paper's -c)"),
        "alpha": Param(dist.HalfNormal(1.0), "bend toward the ceiling (0: the saturating power law)"),
    },
    mean=_mean,
    output="error",
    description="bounded metric between a ceiling eps_0 and a floor eps_inf (M4)",
    form="(y - eps_inf) / (eps_0 - y)^alpha = beta * x^-c",
    reference="Alabdulmohsin et al. 2022, arXiv:2209.06640, eq. 4 (M4)",
)
