"""The field's practice for fitting the Chinchilla law, as a baseline for benchmarks/fit_speed.py.

Hoffmann et al. 2022 (Approach 3) and Besiroglu et al. 2024 fit L(N, D) = E + A / N^alpha + B / D^beta by
minimising a Huber loss (delta = 1e-3) on log loss,

    sum_i Huber_delta( logsumexp(a - alpha log N_i, b - beta log D_i, e) - log L_i ),   A = e^a, B = e^b, E = e^e,

with L-BFGS from a grid of starts, keeping the best; uncertainty comes from refitting bootstrap resamples of
the runs (Besiroglu et al.: 4,000 resamples). Plain numpy + scipy, as a user would write it, with the exact
gradient so L-BFGS-B is not slowed down by finite differences.

Tolerances: the objective is small (~1e-3 with delta = 1e-3), and scipy's default stopping rules are scaled
for objectives of order one, so they stop far from the optimum along the flat A-B directions (the early
stopping Besiroglu et al. suspected in Hoffmann et al.'s fit). `FIT_OPTIONS` tightens them.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize

DELTA = 1e-3
PARAMS = ("E", "A", "B", "alpha", "beta")

# Hoffmann et al.'s grid (Approach 3): alpha, beta in {0, 0.5, ..., 2}, e in {-1, -0.5, ..., 1},
# a, b in {0, 5, ..., 25}: 4,500 starts per fit.
HOFFMANN_GRID = {
    "a": np.arange(0.0, 25.1, 5.0),
    "b": np.arange(0.0, 25.1, 5.0),
    "e": np.arange(-1.0, 1.01, 0.5),
    "alpha": np.arange(0.0, 2.01, 0.5),
    "beta": np.arange(0.0, 2.01, 0.5),
}
# A corner of that grid small enough that 1,000 bootstrap refits take minutes, not hours, and which finds
# the same optimum as the full grid on the Chinchilla data (checked by benchmarks/fit_speed.py, which
# reports both): 2 x 2 x 1 x 2 x 2 = 16 starts.
MODEST_GRID = {
    "a": np.array([5.0, 10.0]),
    "b": np.array([5.0, 10.0]),
    "e": np.array([0.5]),
    "alpha": np.array([0.5, 1.0]),
    "beta": np.array([0.5, 1.0]),
}

FIT_OPTIONS = {"ftol": 1e-12, "gtol": 1e-9, "maxiter": 2000}


def grid_starts(grid: dict[str, np.ndarray]) -> np.ndarray:
    """Every combination of the grid's values, as rows of (a, b, e, alpha, beta)."""
    return np.array(list(itertools.product(grid["a"], grid["b"], grid["e"], grid["alpha"], grid["beta"])))


def huber_objective(theta, log_n, log_d, log_loss, delta: float = DELTA):
    """The Huber loss of theta = (a, b, e, alpha, beta) and its gradient."""
    a, b, e, alpha, beta = theta
    term_n, term_d = a - alpha * log_n, b - beta * log_d
    # logsumexp and softmax of the three terms by hand: scipy.special's versions cost more than the rest.
    top = np.maximum(np.maximum(term_n, term_d), e)
    exp_n, exp_d, exp_e = np.exp(term_n - top), np.exp(term_d - top), np.exp(e - top)
    total = exp_n + exp_d + exp_e
    residual = top + np.log(total) - log_loss
    size = np.abs(residual)
    value = np.sum(np.where(size <= delta, 0.5 * residual**2, delta * (size - 0.5 * delta)))
    slope = np.clip(residual, -delta, delta) / total   # d Huber / d residual, over the softmax denominator
    weight_n, weight_d = slope * exp_n, slope * exp_d
    gradient = np.array([
        weight_n.sum(), weight_d.sum(), (slope * exp_e).sum(), -(weight_n @ log_n), -(weight_d @ log_d),
    ])
    return value, gradient


@dataclass(frozen=True)
class HuberFit:
    params: dict[str, float]   # E, A, B, alpha, beta
    objective: float
    theta: np.ndarray          # (a, b, e, alpha, beta) of the best start


def fit_huber(N, D, loss, starts: np.ndarray, delta: float = DELTA) -> HuberFit:
    """Best of L-BFGS-B runs from each start (rows of (a, b, e, alpha, beta))."""
    log_n, log_d, log_loss = np.log(N), np.log(D), np.log(loss)
    best = None
    for start in starts:
        result = minimize(
            huber_objective, start, args=(log_n, log_d, log_loss, delta), jac=True,
            method="L-BFGS-B", options=FIT_OPTIONS,
        )
        if np.isfinite(result.fun) and (best is None or result.fun < best.fun):
            best = result
    if best is None:
        raise RuntimeError("no L-BFGS-B start reached a finite objective")
    a, b, e, alpha, beta = best.x
    params = {"E": float(np.exp(e)), "A": float(np.exp(a)), "B": float(np.exp(b)),
              "alpha": float(alpha), "beta": float(beta)}
    return HuberFit(params=params, objective=float(best.fun), theta=best.x)


def bootstrap_huber(N, D, loss, starts: np.ndarray, num_resamples: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Refit on `num_resamples` resamples of the runs (with replacement): {param: (num_resamples,)}."""
    rng = np.random.default_rng(seed)
    N, D, loss = np.asarray(N), np.asarray(D), np.asarray(loss)
    fits = []
    for _ in range(num_resamples):
        index = rng.integers(0, len(loss), len(loss))
        fits.append(fit_huber(N[index], D[index], loss[index], starts).params)
    return {name: np.array([f[name] for f in fits]) for name in PARAMS}
