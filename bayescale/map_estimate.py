"""Maximum a posteriori fits with optax L-BFGS from many starts; the best start is kept.

`lbfgs_minimize` is a pure function of (objective, start) that runs under jit, `lax.map` and `vmap`
(BlackJAX-style), so batch jobs reuse it over data sets. `map_estimate` draws starts from the prior, maps
them to NumPyro's unconstrained space (log of positive parameters, logit of bounded ones), minimises the
potential energy from each, and returns the best in the user's units. The MAP is the mode in that
unconstrained parametrisation (it includes the log-Jacobian), which is what NUTS is initialised from.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from numpyro.infer.util import initialize_model, potential_energy, unconstrain_fn

from bayescale.model import prior_draws


def lbfgs_minimize(fun: Callable[[Any], jax.Array], x0: Any, max_iter: int = 500, tol: float = 1e-6):
    """Minimise `fun` from `x0` with L-BFGS (zoom line search); returns (x, value, iterations)."""
    opt = optax.lbfgs()
    value_and_grad = optax.value_and_grad_from_state(fun)

    def step(carry):
        x, state = carry
        value, grad = value_and_grad(x, state=state)
        updates, state = opt.update(grad, state, x, value=value, grad=grad, value_fn=fun)
        return optax.apply_updates(x, updates), state

    def keep_going(carry):
        _, state = carry
        count = optax.tree.get(state, "count")
        grad = optax.tree.get(state, "grad")
        value = optax.tree.get(state, "value")
        return (count == 0) | ((count < max_iter) & (optax.tree.norm(grad) >= tol) & jnp.isfinite(value))

    x, state = jax.lax.while_loop(keep_going, step, (x0, opt.init(x0)))
    value = fun(x)
    return x, jnp.where(jnp.isfinite(value), value, jnp.inf), optax.tree.get(state, "count")


def best_of_starts(fun, starts: jax.Array, max_iter: int = 500, tol: float = 1e-6):
    """Run L-BFGS from each start (a pytree with a leading axis of starts), sequentially via lax.map: on CPU
    vmap would run every start in lockstep with the slowest. Returns the best point and all final values."""
    xs, values, iters = jax.lax.map(lambda x0: lbfgs_minimize(fun, x0, max_iter, tol), starts)
    best = jnp.argmin(values)
    return jax.tree.map(lambda a: a[best], xs), values, iters


@partial(jax.jit, static_argnames=("model", "max_iter"))
def _map_from_starts(model, starts, model_args, model_kwargs, max_iter):
    # The data are traced arguments, not constants folded into the program, so the persistent compilation
    # cache serves every data set of the same shape.
    def objective(params):
        return potential_energy(model, model_args, model_kwargs, params)

    return best_of_starts(objective, starts, max_iter)


@partial(jax.jit, static_argnames=("model",))
def _unconstrain(model, params, model_args, model_kwargs):
    return jax.vmap(lambda p: unconstrain_fn(model, model_args, model_kwargs, p))(params)


@dataclass(frozen=True)
class MapResult:
    params: dict[str, float]            # scalar sites, constrained, user units
    unconstrained: dict[str, Any]       # NumPyro's sampling space, for initialising NUTS
    log_density: float                  # unnormalised log posterior at the mode (unconstrained space)
    start_values: np.ndarray            # final potential energy of every start
    num_at_best: int                    # starts that reached the best value (within 1e-3 nats)


def map_estimate(
    model,
    model_args: tuple,
    model_kwargs: Mapping[str, Any],
    key: jax.Array,
    num_starts: int = 32,
    max_iter: int = 500,
) -> MapResult:
    key_init, key_starts = jax.random.split(key)
    info = initialize_model(key_init, model, model_args=model_args, model_kwargs=dict(model_kwargs))
    latent_names = list(info.param_info.z)
    prior = prior_draws(model, key_starts, model_args, dict(model_kwargs), num_starts)
    unconstrained = _unconstrain(model, {k: prior[k] for k in latent_names}, model_args, dict(model_kwargs))
    # The prior draws, plus NumPyro's own valid initial point as a fallback start.
    starts = jax.tree.map(lambda a, b: jnp.concatenate([a, jnp.asarray(b)[None]]), unconstrained, info.param_info.z)
    best_u, values, _ = _map_from_starts(model, starts, model_args, dict(model_kwargs), max_iter)
    values = np.asarray(values)
    if not np.isfinite(values).any():
        raise FloatingPointError("MAP failed: the log density is not finite at any start; check the priors and data")
    constrained = info.postprocess_fn(best_u)
    return MapResult(
        params={
            k: float(np.asarray(v)) for k, v in constrained.items() if not k.startswith("_") and np.ndim(v) == 0
        },
        unconstrained=best_u,
        log_density=-float(np.min(values)),
        start_values=values,
        num_at_best=int(np.sum(values <= np.min(values) + 1e-3)),
    )
