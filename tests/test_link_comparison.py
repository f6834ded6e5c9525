"""Choosing a link (bayescale.link_comparison): PSIS-LOO over observed accuracies, and the leave-future-out
score that refits without the largest runs' accuracies and scores them exactly."""

import warnings

import numpy as np
import pandas as pd
import pytest

from bayescale import downstream as ds
from bayescale.averaging import average_downstream, mix_downstream
from bayescale.link_comparison import (compare_links, future_runs, holdout_score, link_score, load_link_score, loo_metric,
                                       save_link_score, stacking_weights)
from test_downstream import CHANCE, ITEMS, LOSS, small


SIGMOID = {"ceil": np.array([0.8, 0.9, 0.6]), "k": np.array([4.0, 3.0, 5.0]), "L0": np.array([3.2, 3.0, 3.3])}


def sigmoid_accuracy(loss):
    """True accuracy of each task (rows) at `loss` (columns)."""
    ceil, k, L0 = (SIGMOID[n][:, None] for n in ("ceil", "k", "L0"))
    return CHANCE[:, None] + (ceil - CHANCE[:, None]) / (1 + np.exp(k * (loss - L0)))


def simulate_sigmoid(seed=0, num_runs=14):
    """Accuracies that saturate below 1 inside the ladder: a sigmoid from the chance level to a ceiling."""
    rng = np.random.default_rng(seed)
    N = np.exp(np.linspace(np.log(1e7), np.log(3e9), num_runs))
    D = 20 * N
    loss = (LOSS["E"] + LOSS["A"] / N ** LOSS["alpha"] + LOSS["B"] / D ** LOSS["beta"]) * np.exp(
        0.01 * rng.standard_normal(num_runs))
    acc = sigmoid_accuracy(loss[None])
    counts = rng.binomial(ITEMS[:, None], acc)
    table = pd.DataFrame({"N": N, "D": D, "loss": loss})
    tasks = [f"acc_t{i}" for i in range(len(CHANCE))]
    for i, name in enumerate(tasks):
        table[name] = counts[i] / ITEMS[i]
    return table, tasks


def fit_link(table, tasks, link, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ds.fit_downstream(table, tasks=tasks, link=link, items=dict(zip(tasks, ITEMS)),
                                 chance=dict(zip(tasks, CHANCE)), **small(**kw))


def test_future_runs_are_the_lowest_loss_runs_with_accuracies():
    from test_downstream import simulate

    table, tasks, _ = simulate()
    table.loc[table["loss"].idxmin(), tasks] = np.nan       # the best run has no accuracies: not a candidate
    runs = ds.downstream_runs(table, ds.get_law("chinchilla"), tasks=tasks)
    picked = future_runs(runs, 2)
    order = np.argsort(table["loss"].to_numpy())
    assert list(picked) == list(order[1:3])
    with pytest.raises(ValueError, match="at least 1"):
        future_runs(runs, 0)
    with pytest.raises(ValueError, match="too few"):
        future_runs(runs, len(table) - 1)


@pytest.fixture(scope="module")
def exponential_fit():
    """The simulated exponential chain of test_downstream, one accuracy missing, fitted with its true link."""
    from test_downstream import simulate

    table, tasks, _ = simulate()
    table.loc[0, tasks[0]] = np.nan
    return fit_link(table, tasks, "link_exponential", metric_likelihood="binomial")


def test_loo_over_observed_accuracies_only(exponential_fit):
    result = loo_metric(exponential_fit)
    assert result["observations"] == exponential_fit.runs.accuracy.size - 1
    assert np.isfinite(result["elpd_loo"]) and result["elpd_loo_se"] > 0


@pytest.mark.slow
def test_holdout_score_of_the_true_link_covers_the_held_out_average(exponential_fit):
    """Simulated exponential chain fitted with the exponential link: the two largest runs' accuracies,
    masked and refitted without, are forecast within their 90% interval and within 3% on the average."""
    score = holdout_score(exponential_fit, held_out=2)
    assert len(score["held_out_runs"]) == 2
    assert score["future_average_covered_90"], score
    assert score["future_average_rel_error"] < 0.03, score
    assert np.isfinite(score["elpd_future"])


@pytest.mark.slow
def test_leave_future_out_prefers_the_true_saturating_link():
    """Accuracies from a sigmoid that saturates in the largest runs: an exponential in the error keeps
    accelerating, so the leave-future-out score must rank the sigmoid first, by more than 2 se."""
    table, tasks = simulate_sigmoid()
    fits = {name: fit_link(table, tasks, name, metric_likelihood="binomial")
            for name in ("link_sigmoid", "link_exponential")}
    # The sigmoid chain recovers each task's accuracy curve inside the data (2.4-4.5 nats) at 90%.
    post = fits["link_sigmoid"].data.posterior
    losses = np.array([2.6, 3.0, 3.5, 4.0])
    draws = {n: np.asarray(post[n]).reshape(-1, len(tasks))[:, :, None] for n in ("floor", "ceil", "k", "L0")}
    curve = draws["floor"] + (draws["ceil"] - draws["floor"]) / (1 + np.exp(draws["k"] * (losses - draws["L0"])))
    lo, hi = np.quantile(curve, [0.05, 0.95], axis=0)
    true = sigmoid_accuracy(losses[None])
    assert np.sum((lo <= true) & (true <= hi)) >= 10, (lo, hi, true)   # 12 intervals; P(< 10) ~ 0.1 if calibrated

    result = compare_links(fits, held_out=3)
    assert result.index[0] == "link_sigmoid", result
    gap = -result.loc["link_exponential", "elpd_future_diff"]
    assert gap > 2 * result.loc["link_exponential", "elpd_future_diff_se"], result
    assert result.loc["link_sigmoid", "elpd_future_diff_se"] == 0
    assert result.loc["link_sigmoid", "future_average_covered_90"], result


def test_compare_links_needs_the_same_data(exponential_fit):
    import dataclasses

    fit = exponential_fit
    other = dataclasses.replace(fit, runs=dataclasses.replace(fit.runs, accuracy=fit.runs.accuracy * 0.99))
    with pytest.raises(ValueError, match="same runs"):
        compare_links({"a": fit, "b": other}, future=False)
    beta = dataclasses.replace(fit, spec=dataclasses.replace(fit.spec, metric_likelihood=ds.MetricLikelihood("beta")))
    with pytest.raises(ValueError, match="different scales"):
        compare_links({"a": fit, "b": beta}, future=False)
    table = compare_links({"a": fit}, future=False)
    assert list(table.columns[:3]) == ["link", "pooling", "converged"] and table["elpd_loo_diff"].iloc[0] == 0
    assert "pointwise_loo" not in table.columns and table["stacking_weight"].iloc[0] == pytest.approx(1.0)


def test_scores_saved_in_one_process_compare_like_the_fits_themselves(exponential_fit, tmp_path):
    import dataclasses

    fit = exponential_fit
    direct = compare_links({"a": fit}, future=False)
    path = save_link_score(link_score(fit, future=False), tmp_path / "a.score.json")
    loaded = load_link_score(path)
    pd.testing.assert_frame_equal(compare_links({"a": loaded}, future=False), direct)
    # a score mixes with a fit, and is checked against it like another fit would be
    pd.testing.assert_frame_equal(compare_links({"a": loaded, "b": fit}, future=False).loc[["a"]].drop(
        columns=["stacking_weight"]), direct.drop(columns=["stacking_weight"]), check_exact=False)
    other = dataclasses.replace(fit, runs=dataclasses.replace(fit.runs, accuracy=fit.runs.accuracy * 0.99))
    with pytest.raises(ValueError, match="same runs"):
        compare_links({"a": loaded, "b": other}, future=False)
    with pytest.raises(ValueError, match="no leave-future-out part with held_out=1"):
        compare_links({"a": loaded})                      # scored without the refit
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ValueError, match="not a link score"):
        load_link_score(tmp_path / "bad.json")


def test_stacking_weights_maximise_the_mixture_density():
    rng = np.random.default_rng(1)
    a = rng.normal(-2.0, 1.0, 40)
    b = a + rng.normal(0.0, 1.5, 40)            # better on some observations, worse on others
    w = stacking_weights({"a": a, "b": b})
    assert sum(w.values()) == pytest.approx(1.0) and 0.05 < w["a"] < 0.95

    def objective(weight):
        return np.sum(np.logaddexp(np.log(weight) + a, np.log1p(-weight) + b))

    grid = np.linspace(1e-6, 1 - 1e-6, 20001)
    best = grid[np.argmax([objective(g) for g in grid])]
    assert w["a"] == pytest.approx(best, abs=1e-3)
    assert objective(w["a"]) >= objective(best) - 1e-9

    dominated = stacking_weights({"good": a, "bad": a - 1.0, "worse": a - 3.0})
    assert dominated["good"] > 0.999, dominated
    with pytest.raises(ValueError, match="same length"):
        stacking_weights({"a": a, "b": b[:-1]})
    with pytest.raises(ValueError, match="finite"):
        stacking_weights({"a": a, "b": np.where(np.arange(40) == 3, -np.inf, b)})


def _constant_prediction(output, value, loss, draws=1000):
    points = pd.DataFrame({"N": [1e9, 2e9]})
    table = {t: np.full((draws, 2), value) for t in ("acc_a", "acc_b")}
    return ds.DownstreamPrediction(points=points, loss=np.full((draws, 2), loss), metric=table, new_run=table,
                                   output=output, tasks=("acc_a", "acc_b"))


def test_mix_downstream_keeps_each_draw_whole_and_converts_errors_to_accuracy():
    accuracy = _constant_prediction("accuracy", 0.2, loss=2.0)
    error = _constant_prediction("error", 0.3, loss=3.0)          # accuracy 0.7
    mixed = mix_downstream({"acc": accuracy, "err": error}, {"acc": 1.0, "err": 3.0}, seed=1)
    assert mixed.output == "accuracy" and mixed.loss.shape == (1000, 2)
    from_accuracy = mixed.new_run["acc_a"][:, 0] == 0.2
    assert from_accuracy.mean() == pytest.approx(0.25)
    assert np.all(mixed.new_run["acc_a"][~from_accuracy] == pytest.approx(0.7))
    assert np.all(mixed.loss[from_accuracy] == 2.0) and np.all(mixed.loss[~from_accuracy] == 3.0)
    assert 0.1 < from_accuracy[:100].mean() < 0.4        # shuffled: a leading slice is itself a mixture
    same = mix_downstream({"e1": error, "e2": error}, {"e1": 1.0})
    assert same.output == "error"
    with pytest.raises(KeyError, match="unknown"):
        mix_downstream({"acc": accuracy}, {"other": 1.0})
    with pytest.raises(ValueError, match="non-negative"):
        mix_downstream({"acc": accuracy}, {"acc": -1.0})


def test_average_downstream_with_one_weighted_fit_is_that_fit(exponential_fit):
    at = {"N": [1.5e9, 3e9], "D": [3e11, 6e10]}
    alone = exponential_fit.predict(at, seed=3)
    averaged = average_downstream({"a": exponential_fit, "b": exponential_fit}, at, {"a": 1.0, "b": 0.0}, seed=3)
    # Every draw of the one fit, in a shuffled order.
    np.testing.assert_array_equal(np.sort(averaged.average_new_run, axis=0), np.sort(alone.average_new_run, axis=0))
    np.testing.assert_array_equal(np.sort(averaged.loss, axis=0), np.sort(alone.loss, axis=0))
    with pytest.raises(ValueError, match="stacking"):
        average_downstream({"a": exponential_fit}, at, "evidence")


def test_cli_compare_links_loo_only(tmp_path, capsys, exponential_fit):
    import json

    from bayescale.cli import main

    a = exponential_fit.save(tmp_path / "exponential.nc")
    assert main(["compare-links", str(a), "--no-future", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) == {"exponential"} and out["exponential"]["observations"] == exponential_fit.runs.accuracy.size - 1
    assert main(["compare-links", str(tmp_path / "missing.nc")]) == 2
    # scored in one process, compared in another
    assert main(["score-link", str(a), "--no-future", "--json"]) == 0
    scored = json.loads(capsys.readouterr().out)
    assert scored["file"].endswith("exponential.score.json") and scored["held_out"] == 0
    assert main(["compare-links", scored["file"], "--no-future", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["exponential"]["elpd_loo"] == out["exponential"]["elpd_loo"]


def test_cli_predict_downstream_averages_several_fits(tmp_path, capsys, exponential_fit):
    import json

    from bayescale.cli import main

    a = exponential_fit.save(tmp_path / "a.nc")
    b = exponential_fit.save(tmp_path / "b.nc")
    point = ["--at", "N=1e9,D=2e10", "--seed", "3", "--json"]
    assert main(["predict-downstream", str(a), *point]) == 0
    alone = json.loads(capsys.readouterr().out)["rows"]
    assert main(["predict-downstream", str(a), str(b), "--weights", "a=1,b=0", *point]) == 0
    mixed = json.loads(capsys.readouterr().out)["rows"]
    # All of a's draws, reordered: the same quantiles.
    assert [r["q50"] for r in mixed] == pytest.approx([r["q50"] for r in alone])
    assert [r["q5"] for r in mixed] == pytest.approx([r["q5"] for r in alone])
    assert main(["predict-downstream", str(a), str(b), "--weights", "c=1", *point]) == 2
