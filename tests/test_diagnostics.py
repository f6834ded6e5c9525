"""Convergence verdicts on constructed draws: the problem lines name each parameter family once, and a
task-indexed parameter says on how many of its elements it fails and where it is worst."""

import arviz as az
import numpy as np

from bayescale.diagnostics import check_convergence, parameter_family


def _tree(k, k_tau, tasks):
    rng = np.random.default_rng(0)
    return az.from_dict(
        {"posterior": {"k": k, "k_tau": k_tau, "E": rng.normal(size=k_tau.shape)},
         "sample_stats": {"diverging": np.zeros(k_tau.shape, bool), "energy": rng.normal(size=k_tau.shape)}},
        coords={"task": tasks}, dims={"k": ["task"]},
    )


def test_task_indexed_failures_are_one_line_per_family_naming_the_worst_task():
    rng = np.random.default_rng(1)
    tasks = [f"acc_{i}" for i in range(17)]
    k = rng.normal(size=(4, 500, 17))
    k[1, :, [3, 8, 11]] += 2.0  # chain 1 sits elsewhere on three tasks
    k[1, :, 8] += 1.0           # worst on acc_8
    k_tau = rng.normal(size=(4, 500))
    k_tau[2] += 3.0
    diag = check_convergence(_tree(k, k_tau, tasks))
    assert not diag.converged and "rhat" in diag.failed
    rhat_lines = [p for p in diag.problems if "R-hat" in p]
    assert len(rhat_lines) == 1, diag.problems            # k and k_tau: one family, one line
    line = rhat_lines[0]
    assert line.startswith("k: R-hat > 1.01 for ")
    assert "k on 3 of 17 tasks (up to" in line and "acc_8)" in line and "k_tau 1." in line
    assert not any(p.startswith("E:") for p in diag.problems)
    assert diag.table.loc["k", "rhat"] > 1.1                # the table keeps the worst element per parameter


def test_parameter_family_strips_pooling_suffixes_only():
    assert parameter_family("k_tau") == "k" and parameter_family("L0_center") == "L0"
    assert parameter_family("alpha_mu") == "alpha" and parameter_family("_tau") == "_tau"
    assert parameter_family("sigma") == "sigma"
