"""Compute-optimal allocation: for a compute budget C = 6 N D, the N*, D* and tokens per parameter D*/N*
that minimise the law's loss, as posteriors (one optimum per posterior draw).

Works for any law whose inputs derive from N and D (Chinchilla, Kaplan, tied-exponent forms, ...): the
minimum over log N is found by golden-section search per draw, 100 iterations over D/N from e^-34 to e^34,
well past any realistic allocation. An optimum at the edge of that range means the law has no interior
optimum (e.g. a fit where one exponent is ~0); it is reported in `at_bound`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from bayescale.posterior import draws
from bayescale.runs import resolve_inputs

_GOLDEN = (np.sqrt(5.0) - 1.0) / 2.0
_HALF_WIDTH = 17.0


@dataclass(frozen=True)
class Allocation:
    """Draws of shape (draws, budgets) for N, D, tokens_per_param and the loss at the optimum."""

    compute: np.ndarray
    N: np.ndarray
    D: np.ndarray
    tokens_per_param: np.ndarray
    loss: np.ndarray
    at_bound: np.ndarray  # fraction of draws per budget whose optimum hit the search range's edge

    def quantiles(self, q: Sequence[float] = (0.05, 0.5, 0.95)) -> pd.DataFrame:
        table = pd.DataFrame({"compute": self.compute})
        for name in ("N", "D", "tokens_per_param", "loss"):
            values = getattr(self, name)
            for level in q:
                table[f"{name}_q{100 * level:g}"] = np.quantile(values, level, axis=0)
        table["at_bound"] = self.at_bound
        return table

    def to_dict(self, q: Sequence[float] = (0.05, 0.5, 0.95)) -> dict:
        return {"budgets": self.quantiles(q).to_dict(orient="records")}


def _loss_at(law, params, log_n, compute, flops_per_param_token):
    n = jnp.exp(log_n)
    d = compute / (flops_per_param_token * n)
    x, _ = resolve_inputs({"N": n, "D": d, "C": compute}, law.inputs, law.all_derivations())
    return law.mean(params, x)


def _golden_section(f, lo, hi, iterations=100):
    def body(_, bounds):
        a, b = bounds
        c = b - _GOLDEN * (b - a)
        d = a + _GOLDEN * (b - a)
        left = f(c) < f(d)
        return jnp.where(left, a, c), jnp.where(left, d, b)

    a, b = jax.lax.fori_loop(0, iterations, body, (lo, hi))
    return 0.5 * (a + b)


def optimal_allocation(fit, compute: float | Sequence[float], *, flops_per_param_token: float = 6.0) -> Allocation:
    law = fit.law
    missing = [k for k in law.inputs if k not in {"N", "D", "C", "M"}]
    if missing or law.numpyro_model is not None:
        raise ValueError(f"law {law.name!r} is not a law of parameters and tokens; cannot allocate compute")
    budgets = np.atleast_1d(np.asarray(compute, dtype=float))
    if np.any(~np.isfinite(budgets)) or np.any(budgets <= 0):
        raise ValueError(f"compute budgets must be positive and finite, got {budgets.tolist()}")
    samples = draws(fit, law.param_names)
    params = {k: jnp.asarray(v) for k, v in samples.items()}

    def one(p, c):
        center = 0.5 * jnp.log(c / flops_per_param_token)
        lo, hi = center - _HALF_WIDTH, center + _HALF_WIDTH
        f = lambda u: _loss_at(law, p, u, c, flops_per_param_token)  # noqa: E731
        u = _golden_section(f, lo, hi)
        return u, f(u), jnp.minimum(u - lo, hi - u) < 1e-3

    per_draw = jax.vmap(one, in_axes=(0, None))
    log_n, loss, edge = jax.jit(jax.vmap(per_draw, in_axes=(None, 0), out_axes=1))(params, jnp.asarray(budgets))
    n = np.exp(np.asarray(log_n))
    d = budgets[None, :] / (flops_per_param_token * n)
    return Allocation(
        compute=budgets,
        N=n,
        D=d,
        tokens_per_param=d / n,
        loss=np.asarray(loss),
        at_bound=np.asarray(edge).mean(axis=0),
    )
