"""Batch inference (bayescale.batch) and batch jobs (bayescale.jobs): agreement with single fits, padding,
vectorised diagnostics, resuming a killed job, a bad data set, and the Ray backend (slow)."""

import json
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest
from conftest import BESIROGLU, simulate_chinchilla

import bayescale as bs
from bayescale.batch import batch_diagnostics, fit_batch, stack_runs
from bayescale.fit import model_inputs
from bayescale.jobs import MANIFEST, JobError, SimulatedKill, job_from_mapping, read_manifest, run_job
from bayescale.model import law_model

SETTINGS = bs.SamplerSettings(num_warmup=300, num_samples=600, num_chains=4)
WIDTH = 50  # every batch here pads to 50 runs, so the tests share one compiled program
LAW = bs.get_law("chinchilla")


def _runs(num_runs, seed):
    return bs.runs_from_table(simulate_chinchilla(num_runs=num_runs, seed=seed), LAW)


@pytest.fixture(scope="module")
def batch():
    # Data set 1 has 35 runs padded to 50; data set 2 has different true parameters.
    shifted = {**BESIROGLU, "alpha": 0.30, "E": 1.7}
    third = bs.runs_from_table(simulate_chinchilla(params=shifted, num_runs=WIDTH, seed=7), LAW)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", bs.ConvergenceWarning)
        # The package's one automatic retry (tests/conftest.py switches it off by default): with jax 0.12.1 the
        # 35-run member's first attempt has 3 divergences of 2,400 (none with 0.12.0); its retry, like fit()'s,
        # has escalated settings and the same folded key, so `single` below stays the same posterior.
        return fit_batch([_runs(WIDTH, 1), _runs(35, 2), third], LAW, settings=SETTINGS, seeds=[10, 11, 12],
                         num_runs=WIDTH, retries=1)


@pytest.fixture(scope="module")
def single(batch):
    """fit() of the padded data set, unpadded, with the same seed as its batch member."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", bs.ConvergenceWarning)
        return bs.fit(batch.runs[1], LAW, settings=SETTINGS, seed=11, retries=1)


def test_padding_leaves_the_log_density_unchanged(batch, monkeypatch):
    """Exact check: the padded, masked model has the unpadded model's log density at the same parameters."""
    from numpyro.infer.util import log_density

    import bayescale.saturating

    monkeypatch.setattr(bayescale.saturating, "ENABLED", True)  # the coordinates' pivots honour the mask too

    model = law_model(LAW, bs.Likelihood())
    runs = batch.runs[1]
    assert batch.stacked.sizes[1] == 35 and batch.stacked.mask[1].sum() == 35
    args, kwargs = model_inputs(runs)
    stacked = stack_runs([runs], num_runs=WIDTH)
    (x, stats), padded_kwargs = stacked.model_inputs()
    padded_args = jax.tree.map(lambda v: v[0], (x, stats))
    padded_kwargs = {k: None if v is None else v[0] for k, v in padded_kwargs.items()}
    # Chinchilla's floor, coefficients and exponents in level-and-slope coordinates (bayescale.saturating),
    # whose pivot references honour the mask too.
    params = {"_E_A_B_level_slope": jnp.array([1.5, -0.3, 0.4, -2.0, -1.6]), "sigma": 0.02}
    plain, _ = log_density(model, args, kwargs, params)
    padded, _ = log_density(model, padded_args, padded_kwargs, params)
    assert np.isclose(float(plain), float(padded), rtol=1e-12, atol=1e-9)
    # Without the mask the padding would count: the check can fail.
    unmasked, _ = log_density(model, padded_args, {**padded_kwargs, "mask": None}, params)
    assert not np.isclose(float(plain), float(unmasked))


def test_batch_posterior_equals_single_fit_to_monte_carlo_error(batch, single):
    """One program with itself at batch sizes N and 1: the padded batch member and fit() of the same runs and
    seed (the same pure functions of `bayescale.inference`, mapped over data sets or called alone) have the
    same MAP (same starts, same objective) and posterior means within 4 Monte Carlo standard errors (sd /
    sqrt(ESS) of each, combined)."""
    for name, value in single.map.items():
        assert np.isclose(batch.map[name][1], value, rtol=1e-4), name
    one = batch.fit(1)
    for name in LAW.param_names + ("sigma",):
        a, b = bs.draws(one)[name], bs.draws(single)[name]
        ess_a, ess_b = one.diagnostics.table.loc[name, "ess_bulk"], single.diagnostics.table.loc[name, "ess_bulk"]
        mcse = np.hypot(a.std() / np.sqrt(ess_a), b.std() / np.sqrt(ess_b))
        assert abs(a.mean() - b.mean()) < 4 * mcse, (name, a.mean(), b.mean(), mcse)
        assert np.isclose(a.std(), b.std(), rtol=0.25), name


def test_chunks_give_the_posteriors_of_one_call(batch):
    """fit_batch in chunks of 2 (memory bound for large batches): the same MAP per data set, and posterior
    means within 4 Monte Carlo standard errors of the one-call batch."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", bs.ConvergenceWarning)
        chunked = fit_batch(batch.runs, LAW, settings=SETTINGS, seeds=[10, 11, 12], num_runs=WIDTH, chunk_size=2)
    for name in LAW.param_names:
        np.testing.assert_allclose(chunked.map[name], batch.map[name], rtol=1e-6)
        for i in range(3):
            a, b = chunked.samples[name][i].ravel(), batch.samples[name][i].ravel()
            mcse = np.hypot(a.std(), b.std()) / np.sqrt(batch.diagnostics[i].table.loc[name, "ess_bulk"])
            assert abs(a.mean() - b.mean()) < 4 * mcse, (name, i)

    # A long table split by a group column is the same batch as the list of its data sets' Runs: the first
    # chunk above (data sets 0 and 1, seeds 10 and 11) draw for draw.
    table = pd.concat([simulate_chinchilla(num_runs=WIDTH, seed=1).assign(set="b"),
                       simulate_chinchilla(num_runs=35, seed=2).assign(set="a")], ignore_index=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", bs.ConvergenceWarning)
        grouped = fit_batch(table, LAW, group="set", settings=SETTINGS, seeds=[10, 11], num_runs=WIDTH, chunk_size=2)
    assert grouped.names == ["b", "a"]  # order of first appearance, as the table has them
    for name in LAW.param_names:
        np.testing.assert_allclose(grouped.samples[name], chunked.samples[name][:2], rtol=1e-9)
    with pytest.raises(ValueError, match="group=COLUMN"):
        fit_batch(table, LAW, settings=SETTINGS)
    with pytest.raises(bs.DataError, match="'nope' is not in the table"):
        fit_batch(table, LAW, group="nope", settings=SETTINGS)


def test_batch_members_are_their_own_posteriors(batch):
    """Each data set recovers its own truth (data set 2 was simulated with alpha = 0.30, E = 1.7)."""
    assert batch.converged.all(), [d.problems for d in batch.diagnostics]
    for i, truth in enumerate([BESIROGLU, BESIROGLU, {**BESIROGLU, "alpha": 0.30, "E": 1.7}]):
        for name in ("E", "alpha", "beta"):
            lo, hi = np.quantile(batch.samples[name][i], [0.005, 0.995])
            assert lo < truth[name] < hi, (i, name, lo, truth[name], hi)
    assert abs(np.median(batch.samples["E"][2]) - np.median(batch.samples["E"][0])) > 0.05


def test_vectorised_diagnostics_match_check_convergence(batch):
    for i in range(len(batch)):
        fit = batch.fit(i)
        names = [n for n in fit.data.posterior.data_vars if not str(n).startswith("_")]
        reference = bs.check_convergence(fit.data, params=names)
        ours = batch.diagnostics[i]
        pd.testing.assert_frame_equal(ours.table.sort_index(), reference.table.sort_index(), rtol=1e-10)
        assert ours.divergences == reference.divergences
        np.testing.assert_allclose(ours.bfmi, reference.bfmi, rtol=1e-10)
        assert ours.problems == reference.problems
    # And they can fail: a fake batch whose chains sit apart is flagged.
    samples = {"E": np.stack([np.random.default_rng(0).normal(size=(4, 100)) + np.arange(4)[:, None]])}
    stats = {"diverging": np.zeros((1, 4, 100), bool), "energy": np.random.default_rng(1).normal(size=(1, 4, 100))}
    assert not batch_diagnostics(samples, stats)[0].converged


def test_batch_fit_saves_and_loads(batch, tmp_path):
    fit = batch.fit(1)
    assert len(fit.runs) == 35 and fit.data.posterior_predictive["loss"].shape[-1] == 35
    loaded = bs.load(fit.save(tmp_path / "one.nc"))
    np.testing.assert_allclose(bs.draws(loaded)["alpha"], bs.draws(fit)["alpha"])
    assert loaded.converged == fit.converged
    assert np.isfinite(loaded.predict({"N": 70e9, "D": 1.4e12}).quantiles()["mean_q50"]).all()


# ---- jobs ----


def _job_table():
    """Four data sets in one table with a grouping column; "broken" has a negative loss."""
    parts = []
    for i, n in enumerate([WIDTH, 40, 45]):
        t = simulate_chinchilla(num_runs=n, seed=20 + i)
        t.insert(0, "set", f"s{i}")
        parts.append(t)
    bad = simulate_chinchilla(num_runs=30, seed=30)
    bad.loc[3, "loss"] = -1.0
    bad.insert(0, "set", "broken")
    parts.insert(1, bad)
    return pd.concat(parts, ignore_index=True)


def _job(tmp_path, **extra):
    table = tmp_path / "runs.csv"
    _job_table().to_csv(table, index=False)
    spec = {
        "data": {"table": str(table), "group_by": "set", "columns": {"N": "N", "D": "D"}, "y": "loss"},
        "laws": ["chinchilla"],
        "output": str(tmp_path / "out"),
        "sampler": {"num_warmup": SETTINGS.num_warmup, "num_samples": SETTINGS.num_samples, "num_chains": 4},
        "shard_size": 2,
        "pad_runs": WIDTH,
        "predict_at": [{"N": 70e9, "D": 1.4e12}],
        **extra,
    }
    return job_from_mapping(spec)


@pytest.fixture(scope="module")
def killed_and_resumed(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("job")
    job = _job(tmp)
    with pytest.raises(SimulatedKill):
        run_job(job.__class__(**{**job.__dict__, "fail_after": 2}), progress=False)
    after_kill = read_manifest(job.output)
    # The summary is written shard by shard: the killed job's has the shard it finished.
    assert list(pd.read_parquet(job.output / "summary.parquet")["dataset"]) == ["s0", "broken"]
    # A kill in the middle of a manifest write leaves a torn line; it must be ignored.
    with open(job.output / MANIFEST, "a") as handle:
        handle.write('{"dataset": "s1", "law": "chin')
    result = run_job(job, progress=False)
    return job, after_kill, result


def test_killed_job_resumes_with_every_fit_exactly_once(killed_and_resumed):
    job, after_kill, result = killed_and_resumed
    assert len(after_kill) == 2  # the first shard (s0, broken) was recorded before the kill
    assert result.skipped == 2 and result.fitted_now == 2
    lines = [json.loads(line) for line in (job.output / MANIFEST).read_text().splitlines() if line.endswith("}")]
    keys = [(row["dataset"], row["law"]) for row in lines]
    assert sorted(keys) == sorted(set(keys)) and len(keys) == 4
    summary = pd.read_parquet(job.output / "summary.parquet")
    assert list(summary["dataset"]) == ["s0", "broken", "s1", "s2"]
    assert sorted(p.stem for p in (job.output / "fits" / "chinchilla").glob("*.nc")) == ["s0", "s1", "s2"]


def test_bad_data_set_is_reported_and_others_finish(killed_and_resumed):
    _, _, result = killed_and_resumed
    summary = result.summary.set_index("dataset")
    assert summary.loc["broken", "status"] == "error"
    assert "loss" in summary.loc["broken", "error"] and "positive" in summary.loc["broken", "error"]
    ok = summary.drop("broken")
    assert (ok["status"] == "ok").all() and ok["converged"].dtype == bool
    assert (ok["num_runs"].to_numpy() == [WIDTH, 40, 45]).all()
    # 9 nominal 90% intervals (3 data sets x 3 parameters): ~0.9 misses expected, 4 or more has p < 0.002.
    misses = sum(int((~((ok[f"{n}_q5"] < BESIROGLU[n]) & (BESIROGLU[n] < ok[f"{n}_q95"]))).sum())
                 for n in ("E", "alpha", "beta"))
    assert misses <= 3, misses
    assert ((ok["predict0_new_run_q5"] < ok["predict0_mean_q50"]) & (ok["predict0_mean_q50"] < ok["predict0_new_run_q95"])).all()


def test_job_fit_files_load_and_match_summary(killed_and_resumed):
    job, _, result = killed_and_resumed
    row = result.summary.set_index("dataset").loc["s1"]
    fit = bs.load(row["file"])
    assert len(fit.runs) == 40 and fit.seed == job.seed_of("s1")
    assert np.isclose(np.median(bs.draws(fit)["alpha"]), row["alpha_q50"])


def test_a_job_predicts_each_groups_held_out_rows_like_fit_and_predict(tmp_path, single):
    """A long table, one data set per group: each is fitted on its training rows (split column False) and
    predicts its own held-out rows; the summary carries the group's metadata. Checked against fit() +
    predict() of the same rows with the same seed (to Monte Carlo error). `single` is requested only so that
    the 35-run fit program is compiled once for this module."""
    parts = []
    for i, lab in enumerate(["lab_a", "lab_b"]):
        t = simulate_chinchilla(num_runs=40, seed=40 + i)
        held = np.zeros(40, bool)
        held[np.argsort(t.N * t.D)[-5:]] = True  # the five largest-compute runs of each group
        parts.append(t.assign(set=f"g{i}", lab=lab, test=held))
    table = pd.concat(parts, ignore_index=True)
    spec = {"data": {"table": table, "group_by": "set", "split": "test", "metadata": ["lab"]},
            "laws": ["chinchilla"], "output": str(tmp_path / "out"), "shard_size": 2, "pad_runs": WIDTH,
            "sampler": {"num_warmup": SETTINGS.num_warmup, "num_samples": SETTINGS.num_samples, "num_chains": 4}}
    job = job_from_mapping(spec)
    result = run_job(job, progress=False)
    summary = result.summary.set_index("dataset")
    assert list(summary["lab"]) == ["lab_a", "lab_b"] and (summary["num_runs"] == 35).all()
    predicted = pd.read_parquet(job.output / "predictions.parquet")
    assert len(predicted) == 10 and set(predicted["dataset"]) == {"g0", "g1"}
    for name, part in table.groupby("set"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", bs.ConvergenceWarning)
            alone = bs.fit(part[~part.test], LAW, settings=SETTINGS, seed=job.seed_of(name))
        want = alone.predict(part[part.test], seed=alone.seed).quantiles((0.05, 0.5, 0.95))
        got = predicted[predicted.dataset == name]
        assert got["row"].tolist() == [str(i) for i in part.index[part.test]]
        np.testing.assert_allclose(got["loss"], part.loss[part.test])
        for column in ("mean_q50", "new_run_q5", "new_run_q95"):
            np.testing.assert_allclose(got[column], want[column], rtol=0.01, err_msg=f"{name} {column}")


def test_job_priors_split_and_metadata_are_checked(tmp_path):
    from bayescale.jobs import JobError, job_priors

    table = simulate_chinchilla(num_runs=12, seed=3).assign(set="a", lab="x", test=False)
    base = {"data": {"table": table, "group_by": "set"}, "laws": ["chinchilla"], "output": str(tmp_path / "o")}
    job = job_from_mapping({**base, "priors": {"sigma": "HalfNormal(0.05)"}})
    assert float(job_priors(job)["sigma"].scale) == 0.05
    with pytest.raises(JobError, match="not one of the distributions"):
        job_from_mapping({**base, "priors": {"sigma": "eval(1)"}})
    with pytest.raises(JobError, match="split column 'test' must hold booleans"):
        job_from_mapping({**base, "data": {**base["data"], "table": table.assign(test="no"), "split": "test"}})
    with pytest.raises(JobError, match="every row is held out"):
        job_from_mapping({**base, "data": {**base["data"], "table": table.assign(test=True), "split": "test"}})
    mixed = table.assign(lab=["x"] * 6 + ["y"] * 6)
    with pytest.raises(JobError, match="metadata column 'lab' holds 2 values in data set 'a'"):
        job_from_mapping({**base, "data": {**base["data"], "table": mixed, "metadata": ["lab"]}})


def test_job_file_errors_name_the_key(tmp_path):
    from bayescale.jobs import JobError, load_job

    path = tmp_path / "job.toml"
    path.write_text('laws = ["chinchilla"]\noutput = "out"\n[data]\ntable = "runs.csv"\n')
    with pytest.raises(JobError, match="group_by"):
        load_job(path)
    path.write_text('laws = ["nope"]\noutput = "out"\n[data]\nfiles = ["a.csv"]\n')
    (tmp_path / "a.csv").write_text("N,D,loss\n1e8,1e9,3.0\n")
    with pytest.raises(JobError, match="unknown laws"):
        load_job(path)


@pytest.mark.slow
def test_ray_backend_gives_the_local_summary(killed_and_resumed, tmp_path):
    ray = pytest.importorskip("ray")
    job, _, local = killed_and_resumed
    ray_job = job.__class__(**{**job.__dict__, "output": tmp_path / "ray_out"})
    ray.init(num_cpus=2, include_dashboard=False, ignore_reinit_error=True)
    try:
        result = run_job(ray_job, backend="ray", progress=False)
    finally:
        ray.shutdown()
    drop = ["file"]
    pd.testing.assert_frame_equal(
        result.summary.drop(columns=drop).reset_index(drop=True),
        local.summary.drop(columns=drop).reset_index(drop=True),
        rtol=1e-6,
    )


# ---- jobs: names, types, locks and resumes (no fitting: a stand-in runner records what it was asked) ----


def _named_job(tmp_path, names, values=None):
    """A job over data sets named `names` (group_by values `values`, default the names)."""
    rows = []
    for name in (values if values is not None else names):
        t = simulate_chinchilla(num_runs=6, seed=1)
        t.insert(0, "set", [name] * len(t))
        rows.append(t)
    table = pd.concat(rows, ignore_index=True)  # in memory: keeps the column's Python types, as CSV would not
    spec = {"data": {"table": table, "group_by": "set"}, "laws": ["chinchilla"], "output": str(tmp_path / "out")}
    from bayescale import jobs

    return jobs.job_from_mapping(spec)


def test_names_that_share_a_slug_get_their_own_fit_files(tmp_path):
    from bayescale.jobs import fit_path

    names = ["a b", "a_b", "a/b", "a?b", ".."]
    paths = {fit_path(tmp_path, n, "chinchilla") for n in names}
    assert len(paths) == len(names)
    assert fit_path(tmp_path, "s1", "chinchilla").name == "s1.nc"  # safe names keep their file name
    assert all(p.parent == tmp_path / "fits" / "chinchilla" for p in paths)


def test_group_values_that_print_the_same_are_refused(tmp_path):
    from bayescale.jobs import JobError

    with pytest.raises(JobError, match=r"print the same.*'1'.*\(int\).*\(str\)"):
        _named_job(tmp_path, None, values=[1, "1"])


def _recording_runner(calls, fail=()):
    from bayescale.jobs import error_row

    def runner(job, shards):
        for law, names in shards:
            calls.append(list(names))
            rows = []
            for name in names:
                if name in fail:
                    rows.append(error_row(name, law, fail[name]))
                else:
                    rows.append({"dataset": name, "law": law, "status": "ok", "error": "", "converged": True})
            yield rows

    return runner


def test_resume_retries_errors_but_not_invalid_data_and_cleans_killed_saves(tmp_path):
    from bayescale.runs import DataError

    job = _named_job(tmp_path, ["s0", "s1", "s2"])
    calls = []
    failures = {"s1": OSError("No space left on device"), "s2": DataError("column 'loss': not positive at rows [3]")}
    first = run_job(job, progress=False, runner=_recording_runner(calls, failures))
    assert calls == [["s0", "s1", "s2"]] and (first.summary["status"] == ["ok", "error", "error"]).all()
    stale = job.output / "fits" / "chinchilla" / "s0.nc.tmp"
    stale.parent.mkdir(parents=True, exist_ok=True)
    stale.write_bytes(b"half a file")
    second = run_job(job, progress=False, runner=_recording_runner(calls))
    assert calls[1] == ["s1"]  # the transient error is retried; the invalid data set is not
    assert second.skipped == 2 and not stale.exists()
    assert list(second.summary.set_index("dataset")["status"]) == ["ok", "ok", "error"]


def test_a_second_instance_on_the_same_output_stops_with_a_message(tmp_path):
    from bayescale.jobs import JobError, output_lock

    job = _named_job(tmp_path, ["s0"])
    job.output.mkdir(parents=True)
    with output_lock(job.output):
        with pytest.raises(JobError, match="another bayescale job is running"):
            run_job(job, progress=False, runner=_recording_runner([]))
    assert run_job(job, progress=False, runner=_recording_runner([])).fitted_now == 1  # released afterwards


@pytest.mark.slow  # a second law's batch program (~1 min to compile here)
def test_job_compares_its_laws_per_data_set_and_averages_their_forecasts(tmp_path):
    import arviz as az

    table = pd.concat([simulate_chinchilla(num_runs=n, seed=40 + i).assign(set=f"s{i}") for i, n in enumerate([40, 45])])
    path = tmp_path / "runs.csv"
    table.to_csv(path, index=False)
    job = job_from_mapping({
        "data": {"table": str(path), "group_by": "set", "columns": {"N": "N", "D": "D"}, "y": "loss"},
        "laws": ["chinchilla", "kaplan"], "output": str(tmp_path / "out"), "compare": True,
        "sampler": {"num_warmup": SETTINGS.num_warmup, "num_samples": SETTINGS.num_samples, "num_chains": 4},
        "pad_runs": WIDTH, "predict_at": [{"N": 70e9, "D": 1.4e12}],
    })
    result = run_job(job, progress=False)
    comparison = pd.read_parquet(tmp_path / "out" / "comparison.parquet")
    summary = result.summary.set_index(["dataset", "law"])
    assert comparison["law"].notna().any(), comparison   # at least one data set with both laws compared
    for name, rows in comparison.groupby("dataset"):
        unconverged = [law for law in ("chinchilla", "kaplan") if not summary.loc[(name, law), "converged"]]
        assert all(rows["note"].str.contains(law).all() for law in unconverged), rows["note"]
        assert set(rows["law"]) == {"chinchilla", "kaplan"} and rows["weight"].sum() == pytest.approx(1.0)
        assert sorted(rows["rank"]) == [0, 1]
        for _, row in rows.iterrows():  # the elpd is the saved fit's own PSIS-LOO
            assert row["elpd_loo"] == pytest.approx(float(az.loo(bs.load(summary.loc[(name, row["law"]), "file"]).data, var_name="loss").elpd), rel=1e-6)
        # A mixture's quantiles lie between its components' (up to Monte Carlo error).
        averaged = pd.read_parquet(tmp_path / "out" / "averaged.parquet").set_index("dataset").loc[name]
        for q in ("q5", "q95"):
            own = summary.loc[name][f"predict0_new_run_{q}"]
            assert own.min() * 0.99 <= averaged[f"new_run_{q}"] <= own.max() * 1.01, (q, own, averaged)
    with pytest.raises(JobError, match="at least two laws"):
        job_from_mapping({"data": {"table": str(path), "group_by": "set"}, "laws": ["chinchilla"],
                          "output": str(tmp_path / "o2"), "compare": True})
