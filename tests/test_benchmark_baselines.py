"""The scipy Huber baseline of benchmarks/fit_speed.py (benchmarks/huber_baseline.py) is itself correct:
exact gradient, and recovery of known parameters on simulated Chinchilla-law data."""

import sys
from pathlib import Path

import numpy as np
from scipy.optimize import approx_fprime

from conftest import BESIROGLU, simulate_chinchilla

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import huber_baseline as hb  # noqa: E402


def test_huber_gradient_matches_finite_differences():
    table = simulate_chinchilla(BESIROGLU, num_runs=40, sigma=0.02, seed=5)
    logs = (np.log(table.N.to_numpy()), np.log(table.D.to_numpy()), np.log(table.loss.to_numpy()))
    for theta in (np.array([6.0, 7.6, 0.6, 0.35, 0.37]), np.array([3.0, 12.0, 0.2, 0.2, 0.6])):
        _, gradient = hb.huber_objective(theta, *logs)
        numeric = approx_fprime(theta, lambda t: hb.huber_objective(t, *logs)[0], 1e-7)
        np.testing.assert_allclose(gradient, numeric, rtol=1e-4, atol=1e-9)


def test_huber_fit_recovers_simulated_chinchilla_parameters():
    truth = BESIROGLU
    table = simulate_chinchilla(truth, num_runs=60, sigma=0.005, seed=11)
    fit = hb.fit_huber(table.N.to_numpy(), table.D.to_numpy(), table.loss.to_numpy(), hb.grid_starts(hb.MODEST_GRID))
    assert abs(fit.params["E"] - truth["E"]) < 0.03
    assert abs(fit.params["alpha"] - truth["alpha"]) < 0.02
    assert abs(fit.params["beta"] - truth["beta"]) < 0.02
    # Coefficients are weakly identified (the objective is flat along A and B), so a factor-1.5 band.
    for name in ("A", "B"):
        assert 1 / 1.5 < fit.params[name] / truth[name] < 1.5, (name, fit.params[name])

