"""Maximum a posteriori fits with optax L-BFGS from many starts; the best start is kept.

`lbfgs_minimize` is a pure function of (objective, start) that runs under jit, `lax.map` and `vmap`
(BlackJAX-style). `find_map`, the sampler's first step, draws starts from the prior, maps them to NumPyro's
unconstrained space (log of positive parameters, logit of bounded ones) and minimises the potential energy
from each; `map_estimate` runs it alone and returns the best in the user's units. The MAP is the mode in that
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
from numpyro.infer.util import unconstrain_fn

from bayescale.model import Program, prior_draws, program_for


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


def find_map(program: Program, key, args, kwargs, num_starts: int, max_iter: int = 500):
    """The MAP in NumPyro's unconstrained space: L-BFGS from `num_starts` prior draws, the best kept. Pure
    (it runs inside the sampler's compiled start program, vmapped over data sets in a batch). Returns
    (mode, final potential energy of every start)."""
    model = program.model
    _, key_starts = jax.random.split(key)
    prior = prior_draws(model, key_starts, args, kwargs, num_starts)
    starts = jax.vmap(lambda p: unconstrain_fn(model, args, kwargs, p))({k: prior[k] for k in program.latent})
    mode, values, _ = best_of_starts(program.potential_fn_gen(*args, **kwargs), starts, max_iter)
    return mode, values


def check_map_values(start_values, what: str = "MAP") -> None:
    """Raise when no MAP start reached a finite log density: sampling from there would be meaningless."""
    if not np.isfinite(np.asarray(start_values)).any():
        raise FloatingPointError(f"{what} failed: the log density is not finite at any of the prior's starts; "
                                 f"check the priors and the data")


@partial(jax.jit, static_argnames=("program", "num_starts", "max_iter"))
def _find_map(program, key, args, kwargs, num_starts, max_iter):
    mode, values = find_map(program, key, args, kwargs, num_starts, max_iter)
    return mode, program.postprocess_fn_gen(*args, **kwargs)(mode), values


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
    """The MAP of `model` on its own (the sampler runs `find_map` inside its start program)."""
    program = program_for(model, model_args, model_kwargs)
    best_u, constrained, values = _find_map(program, key, model_args, dict(model_kwargs), num_starts, max_iter)
    values = np.asarray(values)
    check_map_values(values)
    return MapResult(
        params={
            k: float(np.asarray(v)) for k, v in constrained.items() if not k.startswith("_") and np.ndim(v) == 0
        },
        unconstrained=best_u,
        log_density=-float(np.min(values)),
        start_values=values,
        num_at_best=int(np.sum(values <= np.min(values) + 1e-3)),
    )
