"""Downstream chain (bayescale.downstream): simulated-chain recovery with coverage, Binomial vs Beta
likelihoods, masks for missing loss / metrics, input validation, and the real over-training reproduction."""

import dataclasses
import functools
import warnings

import numpy as np
import pandas as pd
import pytest

import bayescale
import bayescale as bs
from bayescale import downstream as ds
from bayescale.runs import DataError

LOSS = {"E": 1.8, "A": 480.0, "alpha": 0.35, "B": 2000.0, "beta": 0.37}
CHANCE = np.array([0.25, 0.5, 0.0])
ITEMS = np.array([2000, 500, 1000])


def simulate(seed=0, num_runs=12, sigma=0.01):
    """A known chain: Chinchilla loss with log-normal noise -> exponential link -> Binomial counts."""
    rng = np.random.default_rng(seed)
    N = np.exp(rng.uniform(np.log(1e7), np.log(2e9), num_runs))
    D = N * np.exp(rng.uniform(np.log(5), np.log(500), num_runs))
    law = LOSS["E"] + LOSS["A"] / N ** LOSS["alpha"] + LOSS["B"] / D ** LOSS["beta"]
    loss = law * np.exp(sigma * rng.standard_normal(num_runs))
    truth = {"eps": 1 - CHANCE, "d": np.array([0.17, 0.2, 0.25]), "gamma": np.array([1.0, 1.5, 1.4])}
    err = truth["eps"][:, None] - truth["d"][:, None] * np.exp(-truth["gamma"][:, None] * (loss[None] - 3.0))
    acc = rng.binomial(ITEMS[:, None], np.clip(1 - err, 0, 1)) / ITEMS[:, None]
    table = pd.DataFrame({"N": N, "D": D, "loss": loss})
    tasks = [f"acc_t{i}" for i in range(len(CHANCE))]
    for i, name in enumerate(tasks):
        table[name] = acc[i]
    return table, tasks, truth


def small(**kw):
    return dict(num_warmup=250, num_samples=250, num_chains=2, map_starts=8, **kw)


@pytest.fixture(scope="module")
def simulated():
    return simulate()


@pytest.fixture(scope="module")
def binomial_fit(simulated):
    table, tasks, _ = simulated
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ds.fit_downstream(table, tasks=tasks, items=dict(zip(tasks, ITEMS)), chance=dict(zip(tasks, CHANCE)),
                                 link="link_exponential", metric_likelihood="binomial", **small())


def test_simulated_chain_recovered_with_coverage(simulated, binomial_fit):
    _, tasks, truth = simulated
    post = binomial_fit.data.posterior
    covered, total = 0, 0
    # The link's parameters trade off along a ridge (eps and d miss together when they miss), so the check is
    # on what the data identify: each task's error at losses inside the data's range (2.3-5.4 nats).
    losses = np.array([2.5, 3.0, 3.5])
    draws = {k: np.asarray(post[k]).reshape(-1, len(tasks))[:, :, None] for k in ("eps", "d", "gamma")}
    error = draws["eps"] - draws["d"] * np.exp(-draws["gamma"] * (losses - 3.0))
    true_error = truth["eps"][:, None] - truth["d"][:, None] * np.exp(-truth["gamma"][:, None] * (losses - 3.0))
    lo, hi = np.quantile(error, [0.05, 0.95], axis=0)
    covered += int(np.sum((lo <= true_error) & (true_error <= hi)))
    total += true_error.size
    for name in ("alpha", "beta", "E"):
        values = np.asarray(post[name]).ravel()
        lo, hi = np.quantile(values, [0.05, 0.95])
        covered += int(lo <= LOSS[name] <= hi)
        total += 1
    # 12 intervals at 90%: at least 9 must cover (P(fewer) < 3% if calibrated).
    assert covered >= 9, f"{covered}/{total} 90% intervals cover the true values"


def test_prediction_at_new_run_covers_truth(simulated, binomial_fit):
    _, tasks, truth = simulated
    N, D = 1.5e9, 3e11
    prediction = binomial_fit.predict({"N": N, "D": D}, error=True)
    assert prediction.output == "error"
    true_loss = LOSS["E"] + LOSS["A"] / N ** LOSS["alpha"] + LOSS["B"] / D ** LOSS["beta"]
    lo, hi = np.quantile(prediction.loss[:, 0], [0.05, 0.95])
    assert lo <= true_loss <= hi
    true_err = truth["eps"] - truth["d"] * np.exp(-truth["gamma"] * (true_loss - 3.0))
    lo, hi = np.quantile(prediction.average[:, 0], [0.02, 0.98])
    assert lo <= true_err.mean() <= hi
    table = prediction.quantiles()
    assert set(table.quantity) == {"loss", "average", *tasks}
    # the average over tasks is computed per draw from the tasks, not fitted
    np.testing.assert_allclose(prediction.average, np.mean([prediction.metric[t] for t in tasks], axis=0))


def simulate_run_effects(seed=0, num_runs=16, scale=0.3):
    """Six tasks whose accuracies move together by run: a logit offset per run, shared by its tasks."""
    rng = np.random.default_rng(seed)
    N = np.exp(rng.uniform(np.log(1e7), np.log(2e9), num_runs))
    D = N * np.exp(rng.uniform(np.log(5), np.log(500), num_runs))
    loss = (LOSS["E"] + LOSS["A"] / N ** LOSS["alpha"] + LOSS["B"] / D ** LOSS["beta"]) * np.exp(0.01 * rng.standard_normal(num_runs))
    d, gamma = np.linspace(0.1, 0.2, 6), np.linspace(0.8, 1.2, 6)
    err = 0.9 - d[:, None] * np.exp(-gamma[:, None] * (loss[None] - 3.0))
    offset = scale * rng.standard_normal(num_runs)
    p = 1 / (1 + np.exp(-(np.log((1 - err) / err) + offset[None])))
    acc = rng.binomial(2000, p) / 2000
    table = pd.DataFrame({"N": N, "D": D, "loss": loss, **{f"acc_r{i}": acc[i] for i in range(6)}})
    return table, [f"acc_r{i}" for i in range(6)], offset


@pytest.mark.slow  # ~70 s: moved to the slow tier to keep the default run within 10 minutes
def test_run_effect_recovers_shared_offsets_and_widens_the_task_average(tmp_path):
    from bayescale.cli import main

    table, tasks, offset = simulate_run_effects()
    table.to_csv(tmp_path / "runs.csv", index=False)
    # The run-effect chain through the CLI and a saved file: the flag reaches the model and survives loading.
    code = main(["fit-downstream", str(tmp_path / "runs.csv"), "--task", ",".join(tasks), "--run-effect",
                 "--link", "link_exponential",
                 "--metric-likelihood", "binomial", "--chains", "2", "--warmup", "250", "--draws", "250",
                 *[a for t in tasks for a in ("--items", f"{t}=2000", "--chance", f"{t}=0.1")],
                 "--out", str(tmp_path / "runs.nc")])
    assert code == 0  # without --strict a fit that did not converge still exits 0 (and warns)
    with_runs = ds.load_downstream(tmp_path / "runs.nc")
    assert with_runs.spec.run_effect
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        without = ds.fit_downstream(table, tasks=tasks, items=dict.fromkeys(tasks, 2000), link="link_exponential",
                                    chance=dict.fromkeys(tasks, 0.1), metric_likelihood="binomial", **small())
    post = with_runs.data.posterior
    lo, hi = np.quantile(np.asarray(post["run_effect_sd"]).ravel(), [0.05, 0.95])
    assert lo <= 0.3 <= hi, (lo, hi)
    # The offsets are identified up to their common mean (it trades with the links' level).
    fitted = np.asarray(post["run_effect"].median(("chain", "draw")))
    assert np.corrcoef(fitted, offset)[0, 1] > 0.9
    # Without the run effect the independent task scatter averages out: the average's interval is narrower,
    # and it misses more of the runs' actual averages.
    at = table[["N", "D"]]
    widths, misses = [], []
    for fit in (with_runs, without):
        average = fit.predict(at, loss=table.loss.to_numpy(), seed=1, error=True).average_new_run
        q5, q95 = np.quantile(average, [0.05, 0.95], axis=0)
        measured = 1 - table[tasks].mean(axis=1).to_numpy()
        widths.append(np.mean(q95 - q5))
        misses.append(np.mean((measured < q5) | (measured > q95)))
    assert widths[0] > 2 * widths[1], widths
    assert misses[0] <= 0.2 < misses[1], misses


def test_metric_likelihoods_agree_where_they_should():
    from bayescale.metric_likelihood import MetricLikelihood

    acc = np.array([[0.0, 0.3, 1.0, np.nan]])
    items = np.array([200])
    counts = MetricLikelihood("binomial").observations(acc, items)
    np.testing.assert_array_equal(counts[0, :3], [0, 60, 200])
    fractions = MetricLikelihood("beta").observations(acc, items)
    assert 0 < fractions[0, 0] < 0.01 and 0.99 < fractions[0, 2] < 1       # moved in by half an item
    p = np.full((1, 4), 0.32)
    binomial = MetricLikelihood("binomial").distribution(p, items[:, None]).log_prob(counts)
    # Beta-Binomial tends to the Binomial as the concentration grows; with a small one it is wider
    near = MetricLikelihood("beta_binomial").distribution(p, items[:, None], 1e9).log_prob(counts)
    np.testing.assert_allclose(near[0, :3], binomial[0, :3], rtol=1e-5)
    wide = MetricLikelihood("beta_binomial").distribution(p, items[:, None], 20.0).log_prob(counts)
    assert wide[0, 0] > binomial[0, 0] and wide[0, 1] < binomial[0, 1]
    # the Beta density of a fraction and the Binomial mass of a count peak at the same p
    grid = np.linspace(0.05, 0.95, 181)
    best_binomial = grid[np.argmax([MetricLikelihood("binomial").distribution(g, 200).log_prob(60.0) for g in grid])]
    best_beta = grid[np.argmax([MetricLikelihood("beta").distribution(g, None, 200.0).log_prob(0.3) for g in grid])]
    assert abs(best_binomial - 0.3) < 0.01 and abs(best_beta - 0.3) < 0.02
    with pytest.raises(ValueError, match="needs the number of items"):
        MetricLikelihood("beta_binomial").resolve(has_items=False)
    assert MetricLikelihood("auto").resolve(has_items=True).family == "beta_binomial"
    assert MetricLikelihood("auto").resolve(has_items=False).family == "beta"


@pytest.mark.slow
def test_beta_without_items_is_wider_than_binomial(simulated, binomial_fit):
    table, tasks, _ = simulated
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        beta = ds.fit_downstream(table, tasks=tasks, chance=dict(zip(tasks, CHANCE)), link="link_exponential", **small())
    assert beta.spec.metric_likelihood.family == "beta"
    assert "phi" in beta.data.posterior
    # Binomial knows the exact item noise; Beta must learn its spread: its link is less certain.
    width = lambda f: np.ptp(np.quantile(np.asarray(f.data.posterior["gamma"]).reshape(-1, 3), [0.05, 0.95], axis=0), axis=0)  # noqa: E731
    assert np.mean(width(beta)) > np.mean(width(binomial_fit))


def test_missing_loss_and_metrics_are_masked(simulated):
    table, tasks, _ = simulated
    table = table.copy()
    table.loc[0, "loss"] = np.nan          # a run with accuracies and no loss
    table.loc[1, tasks] = np.nan            # a run with a loss and no accuracies
    table.loc[2, tasks[0]] = np.nan         # one task missing
    runs = ds.downstream_runs(table, bayescale.get_law("chinchilla"), tasks=tasks, items=dict(zip(tasks, ITEMS)))
    assert not runs.loss_mask[0] and runs.loss_mask[1]
    assert not runs.metric_mask[:, 1].any() and not runs.metric_mask[0, 2] and runs.metric_mask[1:, 2].all()
    spec = ds.ChainSpec(bayescale.get_law("chinchilla"), bayescale.get_law("link_exponential"),
                        bayescale.Likelihood(), ds.MetricLikelihood("binomial"))
    model = ds.chain_model(spec)
    args, kwargs = ds.model_inputs(runs, spec.metric_likelihood)
    from numpyro import handlers

    trace = handlers.trace(handlers.seed(model, 0)).get_trace(*args, **kwargs)
    from numpyro.infer.util import log_density

    # changing a masked value must not change the log density; changing an observed one must
    latent = {k: s["value"] for k, s in trace.items() if s["type"] == "sample" and not s["is_observed"]}

    def density_with(**change):
        return float(log_density(model, args, {**kwargs, **change}, latent)[0])

    base = density_with()
    assert density_with(loss=kwargs["loss"].at[0].set(9.0)) == pytest.approx(base)       # masked
    assert density_with(loss=kwargs["loss"].at[3].set(9.0)) != pytest.approx(base)       # observed
    assert density_with(metric=kwargs["metric"].at[0, 2].set(3.0)) == pytest.approx(base)
    assert density_with(metric=kwargs["metric"].at[1, 2].set(3.0)) != pytest.approx(base)


def test_validation_messages(simulated):
    table, tasks, _ = simulated
    law = bayescale.get_law("chinchilla")
    bad = table.copy()
    bad.loc[3, tasks[1]] = 1.7
    with pytest.raises(DataError, match=r"acc_t1.*\[0, 1\].*rows 3"):
        ds.downstream_runs(bad, law, tasks=tasks)
    with pytest.raises(DataError, match="positive integers.*acc_t0=12.5"):
        ds.downstream_runs(table, law, tasks=tasks, items={tasks[0]: 12.5, tasks[1]: 500, tasks[2]: 1000})
    with pytest.raises(DataError, match="positive integers"):
        ds.downstream_runs(table, law, tasks=tasks, items={tasks[0]: 0, tasks[1]: 500, tasks[2]: 1000})
    with pytest.raises(DataError, match=r"task columns \['acc_nope'\] are not in the table"):
        ds.downstream_runs(table, law, tasks=[*tasks, "acc_nope"])
    with pytest.raises(DataError, match="no value for tasks"):
        ds.downstream_runs(table, law, tasks=tasks, items={tasks[0]: 2000})
    with pytest.raises(DataError, match="whole number of correct"):
        ds.downstream_runs(table, law, tasks=tasks, items={tasks[0]: 7, tasks[1]: 500, tasks[2]: 1000})
    empty = table.copy()
    empty.loc[4, ["loss", *tasks]] = np.nan
    with pytest.raises(DataError, match="rows 4 have neither a loss nor any task accuracy"):
        ds.downstream_runs(empty, law, tasks=tasks)
    with pytest.raises(ValueError, match="needs the number of items"):
        ds.fit_downstream(table, tasks=tasks, metric_likelihood="binomial")


def test_save_load_roundtrip(tmp_path, binomial_fit):
    path = binomial_fit.save(tmp_path / "chain.nc")
    assert ds.is_downstream_file(path)
    loaded = ds.load_downstream(path)
    assert loaded.tasks == binomial_fit.tasks and loaded.link.name == "link_exponential"
    a = binomial_fit.predict({"N": 1e9, "D": 2e10}, seed=1).average
    b = loaded.predict({"N": 1e9, "D": 2e10}, seed=1).average
    np.testing.assert_allclose(a, b)


def test_save_load_with_a_link_outside_the_catalogue(tmp_path, binomial_fit):
    import dataclasses

    own = dataclasses.replace(binomial_fit.link, name="my_exponential_link")
    fit = dataclasses.replace(binomial_fit, spec=dataclasses.replace(binomial_fit.spec, link=own))
    path = fit.save(tmp_path / "own.nc")
    with pytest.raises(KeyError, match="load_downstream\\(path, link="):
        ds.load_downstream(path)
    with pytest.raises(ValueError, match="my_exponential_link"):
        ds.load_downstream(path, link=binomial_fit.link)
    loaded = ds.load_downstream(path, link=own)
    assert loaded.link is not None and loaded.link.name == "my_exponential_link"
    np.testing.assert_allclose(loaded.predict({"N": 1e9, "D": 2e10}).average, binomial_fit.predict({"N": 1e9, "D": 2e10}).average)


def test_load_refuses_a_link_that_does_not_match_the_saved_declaration(tmp_path, binomial_fit):
    import dataclasses
    import json

    import arviz as az

    path = binomial_fit.save(tmp_path / "chain.nc")
    sigmoid = dataclasses.replace(bs.get_law("link_sigmoid"), name=binomial_fit.link.name)  # same name, other law
    with pytest.raises(ValueError, match="parameters \\['eps', 'd', 'gamma'\\]; link 'link_exponential' has inputs"):
        ds.load_downstream(path, link=sigmoid)
    # Same name and parameters, another formula: refused by the recorded fingerprint.
    shifted = dataclasses.replace(binomial_fit.link, mean=lambda p, x: binomial_fit.link.mean(p, {"L": x["L"] * 1.01}))
    with pytest.raises(ValueError, match="the link 'link_exponential' given now is not the one the fit was made with"):
        ds.load_downstream(path, link=shifted)
    # A file from an older format is refused by name, not misread.
    dt = az.from_netcdf(path, engine="h5netcdf")
    meta = json.loads(dt.attrs["bayescale_downstream"])
    dt.attrs["bayescale_downstream"] = json.dumps({**meta, "format_version": 1, "link": meta["link"]["name"]})
    dt.to_netcdf(tmp_path / "old.nc", engine="h5netcdf")
    with pytest.raises(ValueError, match="old.nc: downstream fit saved in file format 1; .* format 2: refit"):
        ds.load_downstream(tmp_path / "old.nc")


def test_link_laws_listed():
    catalogue = bayescale.laws()
    for name, output in (("link_exponential", "error"), ("link_sigmoid", "accuracy"),
                         ("link_loss_to_loss", "loss"), ("link_pass_at_k", "pass_rate")):
        assert catalogue[name].output == output and "L" in catalogue[name].inputs


def test_cli_predict_downstream_json_and_bad_task(tmp_path, capsys, simulated, binomial_fit):
    import json

    from bayescale.cli import main

    path = binomial_fit.save(tmp_path / "chain.nc")
    assert main(["predict-downstream", str(path), "--at", "N=1e9,D=2e10", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["output"] == "accuracy" and {r["quantity"] for r in out["rows"]} == {"loss", "average", *binomial_fit.tasks}
    # One convention for every link: accuracies, errors on request (this chain's link models the error).
    assert main(["predict-downstream", str(path), "--at", "N=1e9,D=2e10", "--json", "--error"]) == 0
    errors = json.loads(capsys.readouterr().out)
    assert errors["output"] == "error"
    rows = lambda payload: {r["quantity"]: r for r in payload["rows"]}  # noqa: E731
    assert rows(errors)["acc_t0"]["q50"] == pytest.approx(1 - rows(out)["acc_t0"]["q50"], abs=2e-3)
    table, tasks, _ = simulated
    csv = tmp_path / "runs.csv"
    table.to_csv(csv, index=False)
    code = main(["fit-downstream", str(csv), "--task", "acc_t0,acc_missing", "--out", str(tmp_path / "x.nc")])
    assert code == 2 and "acc_missing" in capsys.readouterr().err


OVERTRAIN = "/work/shared/data/overtrain"
GADRE_TASKS = [f"acc_{t}" for t in (
    "bigbench_operators pubmed_qa_labeled hellaswag_zeroshot boolq arc_easy coqa bigbench_dyck_languages "
    "lambada_openai bigbench_novel_concepts winograd bigbench_cs_algorithms commonsense_qa bigbench_qa_wikidata "
    "hellaswag copa squad piqa").split()]


@functools.lru_cache(maxsize=None)
def gadre_chain(link: str, pooling: str, seed: int = 0, target_accept_prob: float = 0.99, max_tree_depth: int = 10):
    """Gadre et al.'s downstream experiment (../shared/data/README.md) in the chained model: the five small
    RedPajama runs and the 1.4B run at multiplier 1 fitted (tied-exponent loss law, with the noise prior of
    tests/test_overtrain.py); returns the fit and the two targets (1.4B x32, 6.9B x1). Also used by
    benchmarks/downstream_seeds.py."""
    import os

    import numpyro.distributions as dist

    if not os.path.exists(OVERTRAIN):
        pytest.skip("over-training data not available")
    runs = pd.read_csv(f"{OVERTRAIN}/overtrain_runs.csv")
    rpj = runs[runs.dataset == "rpj"]
    m, n = rpj.chinchilla_multiplier, rpj.N_params
    fit_set = rpj[((m == 1.0) & (n < 1e9)) | ((n < 2e7) & (m == 16.0)) | ((n > 1e9) & (n < 2e9) & (m == 1.0))]
    targets = rpj[((n > 1e9) & (n < 2e9) & (m == 32.0)) | (n > 5e9)]
    assert len(fit_set) == 6 and len(targets) == 2
    items, chance = ds.task_metadata(f"{OVERTRAIN}/eval_metadata.csv", GADRE_TASKS)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        chain = ds.fit_downstream(fit_set, tasks=GADRE_TASKS, loss_law="overtrain", link=link, loss_column="loss_c4_val",
                                  columns={"N": "N_params", "D": "D_tokens"}, items=items, chance=chance,
                                  pooling=pooling, priors={"sigma": dist.HalfNormal(0.02)}, seed=seed,
                                  settings=bs.SamplerSettings(num_warmup=2000, num_samples=1000, target_accept_prob=target_accept_prob,
                                                              max_tree_depth=max_tree_depth))
    return chain, targets


def gadre_forecast(link: str, pooling: str, seed: int = 0):
    """The 17-task average top-1 error of the two targets: (5%, 50%, 95% quantiles, measured values)."""
    chain, targets = gadre_chain(link, pooling, seed)
    prediction = chain.predict({"N": targets.N_params.to_numpy(), "D": targets.D_tokens.to_numpy()}, seed=seed)
    error = 1 - ds.correct_from_output(prediction.output, prediction.average_new_run)
    true = 1 - targets[GADRE_TASKS].mean(axis=1).to_numpy()
    return (*np.quantile(error, [0.05, 0.5, 0.95], axis=0), true)


# Measured (4 x 2000 + 1000, seed 0; median relative error of the 17-task average error, 1.4B x32 / 6.9B x1),
# see notebooks/03_downstream.ipynb. The sigmoid link with partial pooling, which bayescale.link_comparison
# picks on the six fitted runs alone: +4.7% / +2.3%, both inside the 90% interval (+4.1% to +4.7% at 1.4B
# over five runs of different lengths, +4.36% to +4.68% over seeds 0-3: benchmarks/downstream_seeds.py); each task separately (sigmoid): +4.9% / +2.5%. The exponential link
# per task: -13.0% / -23.3%, the 6.9B run outside its interval. Gadre et al.'s one exponential on the
# average: +3.9% / +0.3%. The 4% requirement is met at 6.9B and missed at 1.4B x32: these tests record it.
@pytest.mark.slow
@pytest.mark.parametrize("link,pooling", [
    pytest.param("link_sigmoid", "partial", marks=pytest.mark.xfail(
        strict=False, reason="1.4B x32 average predicted +4.1% to +4.7% (4% required); 6.9B within 2.5%")),
    pytest.param("link_exponential", "partial", marks=pytest.mark.xfail(
        strict=True, reason="per-task exponentials extrapolate too fast: -13% / -23%")),
])
def test_overtrain_downstream_reproduction(link, pooling):
    """The issue's requirement: posterior medians within 4% of the measured averages, inside the 90% intervals."""
    lo, median, hi, true = gadre_forecast(link, pooling)
    assert np.all(np.abs(median - true) / true < 0.04), (median, true)
    assert np.all((lo <= true) & (true <= hi)), (lo, hi, true)


@pytest.mark.slow
@pytest.mark.parametrize("pooling", ["partial", "none"])
def test_overtrain_downstream_sigmoid_covers_both_targets(pooling):
    """The chosen link (sigmoid, per task) keeps both targets inside its 90% intervals and within 6%, with
    each task fitted separately too (the issue's second report)."""
    lo, median, hi, true = gadre_forecast("link_sigmoid", pooling)
    assert np.all((lo <= true) & (true <= hi)), (lo, hi, true)
    assert np.all(np.abs(median - true) / true < 0.06), (median, true)


@pytest.mark.slow
def test_link_choice_on_the_fitted_runs_prefers_the_sigmoid():
    """Without the targets: PSIS-LOO over the 102 fitted accuracies and the leave-future-out score (the 1.4B
    x1 run's accuracies held out and refitted without) both rank the sigmoid above the exponential."""
    from bayescale.link_comparison import compare_links

    chains = {link: gadre_chain(link, "partial")[0] for link in ("link_sigmoid", "link_exponential")}
    table = compare_links(chains)
    assert table.index[0] == "link_sigmoid", table
    assert table.loc["link_sigmoid", "elpd_loo"] > table.loc["link_exponential", "elpd_loo"], table
    # Stacking on the same held-out accuracies leans on the sigmoid, and the mixed forecast keeps both targets
    # inside its 90% intervals and within 6%.
    assert table.loc["link_sigmoid", "stacking_weight"] > 0.5, table
    targets = gadre_chain("link_sigmoid", "partial")[1]
    at = {"N": targets.N_params.to_numpy(), "D": targets.D_tokens.to_numpy()}
    mixed = bs.average_downstream(chains, at, comparison=table)
    error = 1 - ds.correct_from_output(mixed.output, mixed.average_new_run)
    lo, median, hi = np.quantile(error, [0.05, 0.5, 0.95], axis=0)
    true = 1 - targets[GADRE_TASKS].mean(axis=1).to_numpy()
    assert np.all((lo <= true) & (true <= hi)), (lo, hi, true)
    assert np.all(np.abs(median - true) / true < 0.06), (median, true)


def test_shared_link_parameter_is_one_value_for_all_tasks(simulated):
    import jax

    from bayescale.downstream import ChainSpec, chain_model, downstream_runs, model_inputs
    from bayescale.metric_likelihood import MetricLikelihood
    from bayescale.model import prior_draws

    table, tasks, _ = simulated
    runs = downstream_runs(table, bs.get_law("chinchilla"), tasks=tasks, items=dict(zip(tasks, ITEMS)),
                           chance=dict(zip(tasks, CHANCE)))
    metric = MetricLikelihood("binomial")
    spec = ChainSpec(bs.get_law("chinchilla"), bs.get_law("link_exponential"), bs.Likelihood(), metric, "partial", ("gamma",))
    args, kwargs = model_inputs(runs, metric)
    draws = prior_draws(chain_model(spec), jax.random.PRNGKey(0), args, kwargs, 50)
    gamma, d = np.asarray(draws["gamma"]), np.asarray(draws["d"])
    assert gamma.shape == (50, 3) and np.all(gamma == gamma[:, :1]) and np.ptp(gamma[:, 0]) > 0
    assert not np.all(d == d[:, :1])  # the others still vary by task
    with pytest.raises(ValueError, match="chance"):
        ds.fit_downstream(table, tasks=tasks, link="link_exponential", shared=["eps"])
    with pytest.raises(ValueError, match="chance"):
        ds.fit_downstream(table, tasks=tasks, shared=["floor"])  # the sigmoid's floor is the task's chance level
    with pytest.raises(KeyError, match="kappa"):
        ds.fit_downstream(table, tasks=tasks, shared=["kappa"])


# ---- link-only rows: checkpoints inform the link, not the loss law ----

def with_checkpoints(seed=0, fraction=0.4, bump=0.03):
    """`simulate()`'s finished runs plus one intermediate checkpoint per run at `fraction` of its tokens, with
    a loss `bump` above the law (the learning rate has not annealed) and accuracies from the same link at
    that measured loss: the link holds there, the loss law does not."""
    table, tasks, truth = simulate(seed=seed)
    rng = np.random.default_rng(seed + 100)
    ckpt = table[["N", "D"]].copy()
    ckpt["D"] = ckpt["D"] * fraction
    law = LOSS["E"] + LOSS["A"] / ckpt.N ** LOSS["alpha"] + LOSS["B"] / ckpt.D ** LOSS["beta"]
    ckpt["loss"] = law * (1 + bump) * np.exp(0.01 * rng.standard_normal(len(ckpt)))
    err = truth["eps"][:, None] - truth["d"][:, None] * np.exp(-truth["gamma"][:, None] * (ckpt.loss.to_numpy()[None] - 3.0))
    acc = rng.binomial(ITEMS[:, None], np.clip(1 - err, 0, 1)) / ITEMS[:, None]
    for i, name in enumerate(tasks):
        ckpt[name] = acc[i]
    both = pd.concat([table.assign(final=True), ckpt.assign(final=False)], ignore_index=True)
    return both, tasks, truth


def test_link_only_rows_are_left_out_of_the_loss_law_exactly():
    from numpyro import handlers
    from numpyro.infer.util import log_density

    both, tasks, _ = with_checkpoints()
    law = bayescale.get_law("chinchilla")
    runs = ds.downstream_runs(both, law, tasks=tasks, items=dict(zip(tasks, ITEMS)), finished="final")
    assert runs.law_mask.sum() == 12 and runs.loss_mask.all()
    spec = ds.ChainSpec(law, bayescale.get_law("link_exponential"), bayescale.Likelihood(), ds.MetricLikelihood("binomial"))
    model = ds.chain_model(spec)
    args, kwargs = ds.model_inputs(runs, spec.metric_likelihood)
    trace = handlers.trace(handlers.seed(model, 0)).get_trace(*args, **kwargs)
    latent = {k: s["value"] for k, s in trace.items() if s["type"] == "sample" and not s["is_observed"]}
    no_metrics = {**kwargs, "metric_mask": kwargs["metric_mask"] & False}

    def density(stats_loss=None, **change):
        a = args if stats_loss is None else ds.model_inputs(dataclasses.replace(runs, loss=stats_loss), spec.metric_likelihood)[0]
        return float(log_density(model, a, {**no_metrics, **change}, latent)[0])

    base = density()
    # Without accuracies, a checkpoint's loss reaches nothing: not the loss likelihood, not the prior on E
    # (uniform below the smallest *finished* loss; this checkpoint loss is below them all).
    lower = runs.loss.copy()
    lower[15] = 0.5 * runs.loss.min()
    assert density(stats_loss=lower, loss=kwargs["loss"].at[15].set(lower[15])) == pytest.approx(base, rel=0, abs=1e-8)
    assert abs(density(loss=kwargs["loss"].at[3].set(9.0)) - base) > 1e-3      # a finished run's loss counts
    # With accuracies, the checkpoint's loss is the link's input.
    with_metrics = float(log_density(model, args, kwargs, latent)[0])
    moved = float(log_density(model, args, {**kwargs, "loss": kwargs["loss"].at[15].set(2.0)}, latent)[0])
    assert abs(moved - with_metrics) > 1e-3
    with pytest.raises(DataError, match="link-only rows .* need a measured loss.*rows 14"):
        ds.downstream_runs(both.assign(loss=both.loss.where(both.index != 14)), law, tasks=tasks, finished="final")
    with pytest.raises(DataError, match="finished-run column 'final' must hold booleans"):
        ds.downstream_runs(both.assign(final="yes"), law, tasks=tasks, finished="final")


@pytest.mark.slow
def test_link_only_checkpoints_keep_the_loss_law_and_narrow_the_link():
    """Fitted with its checkpoints (link only), the chain's loss law is the one fitted without them (to Monte
    Carlo error) and the link's posterior is narrower: 24 loss -> accuracy pairs instead of 12."""
    both, tasks, _ = with_checkpoints()
    settings = dict(num_warmup=500, num_samples=1000, num_chains=4, map_starts=8)
    common = dict(tasks=tasks, items=dict(zip(tasks, ITEMS)), chance=dict(zip(tasks, CHANCE)),
                  link="link_exponential", metric_likelihood="binomial", **settings)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        alone = ds.fit_downstream(both[both.final].drop(columns="final"), **common)
        linked = ds.fit_downstream(both, finished="final", **common)
    post_a, post_l = alone.data.posterior, linked.data.posterior
    ess_a, ess_l = alone.summary()["ess_bulk"], linked.summary()["ess_bulk"]
    for name in ("E", "A", "alpha", "B", "beta", "sigma"):
        a, b = np.log(np.asarray(post_a[name]).ravel()), np.log(np.asarray(post_l[name]).ravel())
        mcse = np.sqrt(a.var() / ess_a[name] + b.var() / ess_l[name])
        print(f"{name}: log mean {a.mean():.4f} vs {b.mean():.4f} (MCSE {mcse:.4f}), sd {a.std():.4f} vs {b.std():.4f}")
        assert abs(a.mean() - b.mean()) < 4 * mcse, name
        assert np.isclose(a.std(), b.std(), rtol=0.25), name
    ratios = [np.asarray(post_l[n]).reshape(-1, len(tasks)).std(axis=0) / np.asarray(post_a[n]).reshape(-1, len(tasks)).std(axis=0)
              for n in ("d", "gamma")]
    print("link sd ratios (with / without checkpoints):", np.round(ratios, 2))
    assert np.mean(ratios) < 0.85, ratios


def test_link_prior_check_flags_a_midpoint_in_the_wrong_unit(simulated):
    """The link's prior predictive at the runs' losses: the default (loss-relative) sigmoid priors reach the
    simulated accuracies; a midpoint two orders of magnitude below the losses with a firm steepness (a link
    at its floor over the whole ladder, as if the losses were in another unit) cannot, and the fit warns."""
    import jax
    import numpyro.distributions as dist

    from bayescale.model import prior_draws

    table, tasks, _ = simulated
    law = bs.get_law("chinchilla")
    runs = ds.downstream_runs(table, law, tasks=tasks, items=dict(zip(tasks, ITEMS)), chance=dict(zip(tasks, CHANCE)))
    metric = ds.MetricLikelihood("binomial")
    args, kwargs = ds.model_inputs(runs, metric)
    found = {}
    for label, link in (("default", bs.get_law("link_sigmoid")),
                        ("wrong unit", bs.get_law("link_sigmoid").with_priors(
                            {"L0": dist.LogNormal(np.log(0.03), 0.1), "k": dist.LogNormal(np.log(3.0), 0.1)}))):
        spec = ds.ChainSpec(law, link, bs.Likelihood(), metric)
        draws = prior_draws(ds.chain_model(spec), jax.random.PRNGKey(0), args, kwargs, 400)
        found[label] = ds.link_prior_check(spec, runs, {n: np.asarray(draws[n]) for n in link.params})
    assert found["default"]["checked"] == 36 and found["default"]["outside"] == 0, found
    # 15-19 of 36 over prior-draw seeds 0-5 (400 draws each); the default priors leave none outside.
    assert found["wrong unit"]["outside"] >= 12 and set(found["wrong unit"]["tasks"]) <= set(tasks), found
    with pytest.warns(bs.PriorWarning, match=r"outside the 99% prior predictive band of link 'link_sigmoid'"):
        ds.warn_if_link_prior_misses(found["wrong unit"], bs.get_law("link_sigmoid"))


def test_centered_and_noncentered_tasks_have_the_same_prior(simulated):
    """Sampling a task's pooled values centered or non-centered is a change of variables: the prior of the
    link parameters is the same (to Monte Carlo error over 4,000 prior draws), only the geometry differs."""
    import jax

    from bayescale.model import prior_draws

    table, tasks, _ = simulated
    law = bs.get_law("chinchilla")
    runs = ds.downstream_runs(table, law, tasks=tasks, items=dict(zip(tasks, ITEMS)), chance=dict(zip(tasks, CHANCE)))
    assert ds.informative_tasks(runs) == (1.0, 1.0, 1.0)  # every simulated task moves far beyond its noise
    flat = runs.accuracy.copy()
    flat[0] = 0.25                                          # a task stuck at chance says nothing about its link
    assert ds.informative_tasks(dataclasses.replace(runs, accuracy=flat))[0] == 0.0
    metric = ds.MetricLikelihood("binomial")
    args, kwargs = ds.model_inputs(runs, metric)
    quantiles = {}
    for centered in (None, (1.0, 0.0, 1.0)):
        spec = ds.ChainSpec(law, bs.get_law("link_exponential"), bs.Likelihood(), metric, centered=centered)
        draws = prior_draws(ds.chain_model(spec), jax.random.PRNGKey(1), args, kwargs, 4000)
        quantiles[centered] = np.quantile(np.log(np.asarray(draws["gamma"])), [0.1, 0.5, 0.9], axis=0)
    np.testing.assert_allclose(quantiles[None], quantiles[(1.0, 0.0, 1.0)], atol=0.12)


# ---- composite tasks and averaged evaluations ----

def test_composite_and_averaged_evaluations_are_validated(simulated):
    table, tasks, _ = simulated
    law = bs.get_law("chinchilla")
    items = dict(zip(tasks, ITEMS))
    weights = {"acc_t0": 2000, "acc_t1": 500}        # a mean over questions: weights = items
    reported = (2000 * table["acc_t0"] + 500 * table["acc_t1"]) / 2500
    runs = ds.downstream_runs(table.assign(bench=reported.round(3)), law, tasks=tasks, items=items,
                              composites={"bench": weights})
    assert runs.composites == {"bench": {"acc_t0": 0.8, "acc_t1": 0.2}}
    # Equal weights do not reproduce a mean over questions: the reported column catches it, by row.
    with pytest.raises(DataError, match="composite 'bench': the weighted mean of \\['acc_t0', 'acc_t1'\\] .* does not "
                                        "reproduce column 'bench'"):
        ds.downstream_runs(table.assign(bench=reported), law, tasks=tasks, items=items,
                           composites={"bench": ["acc_t0", "acc_t1"]})
    with pytest.raises(DataError, match="parts \\['mmlu_x'\\] are not among the tasks"):
        ds.downstream_runs(table, law, tasks=tasks, composites={"bench": ["acc_t0", "mmlu_x"]})
    with pytest.raises(DataError, match="composite 'acc_t0' is also a task column"):
        ds.downstream_runs(table, law, tasks=tasks, composites={"acc_t0": ["acc_t1", "acc_t2"]})
    with pytest.raises(DataError, match="weights must be positive"):
        ds.downstream_runs(table, law, tasks=tasks, composites={"bench": {"acc_t0": 1.0, "acc_t1": -1.0}})
    # The mean of 3 evaluations of the same 2000 items is a fraction of 6000 answers, not of 2000.
    averaged = table.assign(acc_t0=np.round((3 * table["acc_t0"] * 2000 + 1) / 6000, 12))
    with pytest.raises(DataError, match="'acc_t0': accuracy x items \\(2000\\) is not a whole number .*\\(evaluations=\\.\\.\\.\\)"):
        ds.downstream_runs(averaged, law, tasks=tasks, items=items)
    runs = ds.downstream_runs(averaged, law, tasks=tasks, items=items, evaluations={"acc_t0": 3, "acc_t1": 1, "acc_t2": 1})
    assert list(runs.items) == [6000, 500, 1000] and list(runs.evaluations) == [3, 1, 1]
    with pytest.raises(DataError, match="evaluations need items"):
        ds.downstream_runs(table, law, tasks=tasks, evaluations=[3, 1, 1])
    with pytest.raises(ValueError, match="binomial likelihood would count repeated evaluations"):
        ds.fit_downstream(runs, metric_likelihood="binomial", **small())


def test_a_composite_is_predicted_as_the_weighted_mean_of_its_parts_and_saved(tmp_path, binomial_fit):
    weights = {"acc_t0": 0.8, "acc_t1": 0.2}
    fit = dataclasses.replace(binomial_fit, runs=dataclasses.replace(binomial_fit.runs, composites={"bench": weights}))
    at = {"N": [1e9, 4e9], "D": [2e10, 8e10]}
    for error in (False, True):
        p = fit.predict(at, seed=1, error=error)
        for table in (p.metric, p.new_run):
            np.testing.assert_allclose(table["bench"], 0.8 * table["acc_t0"] + 0.2 * table["acc_t1"])
        assert set(p.quantiles()["quantity"]) == {"loss", "average", *p.tasks, "bench"}
        assert p.average.shape == p.metric["acc_t0"].shape  # the task average is over the fitted tasks only
    loaded = ds.load_downstream(fit.save(tmp_path / "composite.nc"))
    assert loaded.runs.composites == {"bench": weights}
    np.testing.assert_allclose(loaded.predict(at, seed=1).new_run["bench"], fit.predict(at, seed=1).new_run["bench"])
    # Averaged with another chain, the composite comes from the same draws as its parts.
    mixed = bs.average_downstream({"a": fit, "b": fit}, at, {"a": 0.5, "b": 0.5}, seed=2)
    np.testing.assert_allclose(mixed.new_run["bench"], 0.8 * mixed.new_run["acc_t0"] + 0.2 * mixed.new_run["acc_t1"])


def test_cli_composite_syntax():
    from bayescale.cli import parse_composite

    assert parse_composite("mmlu=stem:3+hum:1") == ("mmlu", {"stem": 3.0, "hum": 1.0})
    assert parse_composite("avg=a+b") == ("avg", {"a": 1.0, "b": 1.0})
    for bad in ("mmlu", "mmlu=", "mmlu=stem:", "mmlu=stem:x"):
        with pytest.raises(ValueError, match="--composite"):
            parse_composite(bad)
