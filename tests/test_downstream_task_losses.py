"""Downstream chains with a loss per task (`fit_downstream(loss_column={task: column})`): each task's own loss
law, pooled across tasks, and its link at its own loss, checked on simulated ladders with known laws."""

import warnings

import numpy as np
import pandas as pd
import pytest

import bayescale as bs
from bayescale import downstream as ds
from bayescale.runs import DataError

SIZES = np.geomspace(2e7, 4e8, 5)
MULTIPLES = (10.0, 20.0, 40.0)
TARGET = {"N": 4e9, "D": 8e10}  # 10x the ladder's largest model, at 20 tokens per parameter
ITEMS = 1000
CHANCE = 0.25


def chinchilla(p, N, D):
    return p["E"] + p["A"] / N ** p["alpha"] + p["B"] / D ** p["beta"]


def task_loss_ladder(num_tasks: int = 8, seed: int = 0, sigma: float = 0.005):
    """A model ladder (5 sizes x 3 token multiples) and one target run at 10x the largest size, with each task's
    loss from its own Chinchilla law (in its own unit: scales 0.25-0.5 of a C4-like law, exponents varying by
    ~10% across tasks) and its accuracy on 1,000 items from a sigmoid of that loss (chance 0.25, ceiling
    0.7-0.95, midpoint just below the ladder's losses so accuracies climb towards the target). Returns the
    ladder table, the target's row (its observed losses and accuracies) and the truth."""
    rng = np.random.default_rng(seed)
    N, D = np.array([(n, m * n) for n in SIZES for m in MULTIPLES]).T
    N, D = np.append(N, TARGET["N"]), np.append(D, TARGET["D"])
    scale = rng.uniform(0.25, 0.5, num_tasks)
    truth = {
        "E": scale * 1.7, "A": scale * 400 * np.exp(0.2 * rng.standard_normal(num_tasks)),
        "B": scale * 410 * np.exp(0.2 * rng.standard_normal(num_tasks)),
        "alpha": 0.34 * np.exp(0.1 * rng.standard_normal(num_tasks)),
        "beta": 0.28 * np.exp(0.1 * rng.standard_normal(num_tasks)),
    }
    law_loss = chinchilla({k: v[:, None] for k, v in truth.items()}, N[None], D[None])
    loss = law_loss * np.exp(sigma * rng.standard_normal(law_loss.shape))
    truth["ceil"] = rng.uniform(0.7, 0.95, num_tasks)
    truth["midpoint"] = np.quantile(loss[:, :-1], 0.1, axis=1) * rng.uniform(0.9, 1.0, num_tasks)
    truth["k"] = rng.uniform(6.0, 14.0, num_tasks) / truth["midpoint"]   # per unit of the task's own loss
    p = CHANCE + (truth["ceil"][:, None] - CHANCE) / (1 + np.exp(truth["k"][:, None] * (loss - truth["midpoint"][:, None])))
    accuracy = rng.binomial(ITEMS, p) / ITEMS
    tasks = [f"task{t}" for t in range(num_tasks)]
    table = pd.DataFrame({"N": N, "D": D, **{f"loss_{t}": loss[i] for i, t in enumerate(tasks)},
                          **{t: accuracy[i] for i, t in enumerate(tasks)}})
    truth["expected_target"] = p[:, -1]
    return table.iloc[:-1], table.iloc[[-1]], tasks, truth


def fit_ladder(table, tasks, **kwargs):
    return ds.fit_downstream(table, tasks=tasks, loss_column={t: f"loss_{t}" for t in tasks}, items=dict.fromkeys(tasks, ITEMS),
                             chance=dict.fromkeys(tasks, CHANCE), **kwargs)


# ---------------------------------------------------------------- intake ----
def test_loss_per_task_intake_names_tasks_and_columns():
    table, _, tasks, _ = task_loss_ladder(num_tasks=3)
    law = bs.get_law("chinchilla")
    columns = {t: f"loss_{t}" for t in tasks}
    runs = ds.downstream_runs(table, law, tasks=tasks, loss_column=columns)
    assert runs.per_task_loss and runs.loss.shape == (3, 15) and runs.loss_columns == columns
    # Each task's link reads its loss relative to its own geometric mean.
    np.testing.assert_allclose(np.exp(np.log(runs.link_loss).mean(axis=1)), 1.0, rtol=1e-12)
    with pytest.raises(DataError, match=r"loss_column: no value for tasks \['task2'\]"):
        ds.downstream_runs(table, law, tasks=tasks, loss_column={t: columns[t] for t in tasks[:2]})
    with pytest.raises(DataError, match=r"loss columns \['loss_x'\] are not in the table"):
        ds.downstream_runs(table, law, tasks=tasks, loss_column={**columns, "task1": "loss_x"})
    with pytest.raises(DataError, match="loss columns of tasks .*task0.* have no value"):
        ds.downstream_runs(table.assign(loss_task0=np.nan), law, tasks=tasks, loss_column=columns)
    with pytest.raises(DataError, match="must be positive; non-positive at rows 3"):
        ds.downstream_runs(table.assign(loss_task1=np.where(table.index == 3, -1.0, table.loss_task1)), law,
                           tasks=tasks, loss_column=columns)
    with pytest.raises(ValueError, match="apply to a loss per task"):
        ds.fit_downstream(table, tasks=tasks, loss_column="loss_task0", loss_shared=["alpha"])


# ----------------------------------------------------------------- model ----
def test_each_task_has_its_own_loss_law_noise_and_link_input():
    """One draw of the chained model, traced: every task's loss law, noise scale and likelihood term is its
    own, and each task's link reads that task's latent-or-measured loss over the task's scale."""
    import jax.numpy as jnp
    from numpyro import handlers

    from bayescale.grouping import make_grouping
    from bayescale.likelihood import Likelihood
    from bayescale.metric_likelihood import MetricLikelihood

    table, _, tasks, _ = task_loss_ladder(num_tasks=3, seed=2)
    law, link = bs.get_law("chinchilla"), bs.get_law("link_sigmoid")
    runs = ds.downstream_runs(table, law, tasks=tasks, loss_column={t: f"loss_{t}" for t in tasks},
                              items=dict.fromkeys(tasks, ITEMS), chance=dict.fromkeys(tasks, CHANCE))
    metric = MetricLikelihood("auto").resolve(True)
    spec = ds.ChainSpec(law, link, Likelihood("normal"), metric, loss_grouping=make_grouping(law, "task"))
    args, kwargs = ds.model_inputs(runs, metric)
    trace = handlers.trace(handlers.seed(ds.chain_model(spec), 0)).get_trace(*args, **kwargs)
    assert trace["loss"]["fn"].batch_shape == (3, 15)
    for name in ("E", "A", "B", "alpha", "beta", "sigma", "k", "L0"):
        assert trace[name]["value"].shape == (3,), name
    p = {n: np.asarray(trace[n]["value"])[:, None] for n in ("E", "A", "B", "alpha", "beta")}
    mean = chinchilla(p, runs.x["N"][None], runs.x["D"][None])
    sigma = np.asarray(trace["sigma"]["value"])[:, None]
    expected = -np.log(runs.loss * sigma * np.sqrt(2 * np.pi)) - (np.log(runs.loss) - np.log(mean)) ** 2 / (2 * sigma**2)
    got = np.asarray(trace["loss"]["fn"].log_prob(jnp.asarray(runs.loss)))
    np.testing.assert_allclose(got, expected, rtol=1e-9)
    # Each task's accuracy is the sigmoid of its own measured loss over its scale.
    link_params = {n: np.asarray(trace[n]["value"])[:, None] for n in link.params}
    expected_p = np.asarray(link.mean(link_params, {"L": runs.loss / runs.loss_scale}))
    fn = trace["metric"]["fn"]
    mean_p = np.asarray(fn.mean) / ITEMS  # Beta-Binomial: items x p
    np.testing.assert_allclose(mean_p, expected_p, rtol=1e-9)


# ------------------------------------------------------------------- fit ----
# On a simulated 4-task ladder (15 runs) a chain with a loss per task takes ~100 leapfrog steps per draw
# (benchmarks/results/grouped_geometry.md), but a fit still compiles for minutes: these fits are in the slow tier.
@pytest.fixture(scope="module")
def ladder_fit():
    table, target, tasks, truth = task_loss_ladder(num_tasks=4, seed=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = fit_ladder(table, tasks, num_warmup=50, num_samples=50, num_chains=1, seed=0)
    return fit, table, target, tasks, truth


@pytest.mark.slow
def test_per_task_fit_forecasts_saves_and_loads(ladder_fit, tmp_path):
    fit, _, target, tasks, _ = ladder_fit
    post = fit.data.posterior
    for name in ("E", "A", "B", "alpha", "beta", "sigma"):
        assert post[name].dims == ("chain", "draw", "task"), name
    assert fit.data.observed_data["loss"].dims == ("task", "run")
    p = fit.predict(TARGET, seed=3)
    assert p.loss.shape == (50, len(tasks), 1)
    q = p.quantiles((0.05, 0.5, 0.95)).set_index("quantity")
    assert {f"loss[{t}]" for t in tasks} <= set(q.index) and "average" in q.index
    for i, t in enumerate(tasks):
        loss = float(target[f"loss_{t}"].iloc[0])
        # A loose check on an unconverged fit (mechanics, not calibration: that is the xfail test below).
        assert abs(q.loc[f"loss[{t}]", "q50"] / loss - 1) < 0.05, (t, q.loc[f"loss[{t}]", "q50"], loss)
    with pytest.raises(ValueError, match="a loss per task"):
        fit.predict(TARGET, loss=[2.0])
    loaded = ds.load_downstream(fit.save(tmp_path / "chain.nc"))
    assert loaded.spec.loss_grouping == fit.spec.loss_grouping and loaded.runs.loss_columns == fit.runs.loss_columns
    np.testing.assert_allclose(loaded.predict(TARGET, seed=4).loss, fit.predict(TARGET, seed=4).loss)


def test_one_shared_loss_is_unchanged_by_the_per_task_path():
    """The shared-loss chain's link still reads the measured loss as it is (scale 1)."""
    table, _, tasks, _ = task_loss_ladder(num_tasks=2)
    runs = ds.downstream_runs(table.rename(columns={"loss_task0": "loss"}), bs.get_law("chinchilla"), tasks=tasks)
    assert not runs.per_task_loss and runs.loss_scale.shape == (1, 1) and runs.loss_scale[0, 0] == 1.0
    np.testing.assert_allclose(runs.link_loss[0], runs.loss)


# --------------------------------------------------- coverage (slow tier) ----
@pytest.mark.slow
@pytest.mark.xfail(reason="not converged at defaults: the first 8-task ladder (2026-12-08) had 16 divergences of "
                          "4,000 and R-hat 1.016-1.023 on the pooled spreads L0_tau, alpha_tau, phi_tau (20 min per "
                          "fit on 2 cores); calibration waits for that", strict=False)
def test_task_forecasts_at_a_10x_model_are_calibrated_over_simulated_ladders():
    """The issue's check at a smaller scale (benchmarks/downstream_task_losses.py runs 20 ladders): over 4
    simulated 8-task ladders, each task's new-run accuracy and loss at the 10x target inside their 90%
    intervals at a rate compatible with 0.9 (32 tasks: 0.75-1.0)."""
    inside_acc, inside_loss = [], []
    for seed in range(4):
        table, target, tasks, _ = task_loss_ladder(num_tasks=8, seed=100 + seed)
        fit = fit_ladder(table, tasks, seed=seed)
        assert int(fit.data.sample_stats["diverging"].sum()) == 0
        p = fit.predict(TARGET, seed=seed)
        for i, t in enumerate(tasks):
            lo, hi = np.quantile(p.new_run[t][:, 0], [0.05, 0.95])
            inside_acc.append(lo <= float(target[t].iloc[0]) <= hi)
            lo, hi = np.quantile(p.loss[:, i, 0], [0.05, 0.95])
            inside_loss.append(lo <= float(target[f"loss_{t}"].iloc[0]) <= hi)
    assert 0.75 <= np.mean(inside_acc) <= 1.0, np.mean(inside_acc)
    assert 0.75 <= np.mean(inside_loss) <= 1.0, np.mean(inside_loss)
