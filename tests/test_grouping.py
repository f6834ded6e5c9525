"""Grouped fits: shared and per-group parameters, partial pooling, prediction at fitted and new groups."""

import jax
import numpy as np
import pandas as pd
import pytest

import bayescale as bs
from bayescale.fit import model_inputs
from bayescale.likelihood import as_likelihood
from bayescale.grouping import grouped_law_model, make_grouping
from bayescale.model import prior_draws
from bayescale.runs import DataError
from conftest import BESIROGLU, simulate_chinchilla

# Three corpora with the same exponents and different constants (code has a much lower floor).
TRUTH = {
    "web": {"E": 1.8, "A": 480.0, "B": 2000.0},
    "code": {"E": 0.9, "A": 300.0, "B": 1500.0},
    "books": {"E": 2.1, "A": 700.0, "B": 2600.0},
}


def grouped_table(runs_per_group=30, seed=0) -> pd.DataFrame:
    frames = []
    for i, (name, constants) in enumerate(TRUTH.items()):
        frame = simulate_chinchilla({**BESIROGLU, **constants}, num_runs=runs_per_group, seed=seed + i)
        frame["corpus"] = name
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


@pytest.fixture(scope="module")
def partial_fit():
    return bs.fit(grouped_table(), "chinchilla", group="corpus", shared=["alpha", "beta"], seed=0)


def test_a_small_grouped_fit_runs_end_to_end_with_arviz_groups():
    """The default run's one grouped NUTS fit (the recovery checks above are slow): it once crashed while
    building the DataTree (a per-group site's summed log prior was given the "group" dimension)."""
    import arviz as az

    fit = bs.fit(grouped_table(runs_per_group=12), "chinchilla", group="corpus", shared=["alpha", "beta"],
                 num_warmup=150, num_samples=150, num_chains=2, map_starts=8, seed=0)
    assert fit.data.posterior["E"].dims == ("chain", "draw", "group")
    assert set(fit.data.log_prior.data_vars) >= {"alpha", "beta", "sigma"}
    assert all(v.dims == ("chain", "draw") for v in fit.data.log_prior.data_vars.values())
    sensitivity = az.psense_summary(fit.data, var_names=["alpha", "beta"])
    assert np.isfinite(np.asarray(sensitivity.filter(like="prior"), dtype=float)).all()
    draws = fit.predict({"N": 1e9, "D": 2e10, "corpus": "a new corpus"}).new_run
    assert np.isfinite(draws).all()


@pytest.mark.slow  # shares one grouped NUTS fit (~40 s): the default run keeps the cheap checks
def test_partial_pooling_recovers_each_group(partial_fit):
    fit = partial_fit
    assert fit.converged, fit.diagnostics.problems
    assert fit.diagnostics.divergences == 0
    table = fit.summary(quantiles=(0.005, 0.5, 0.995))
    assert table["rhat"].max() < 1.01
    for corpus, constants in TRUTH.items():
        for name, value in constants.items():
            row = table.loc[f"{name}[{corpus}]"]
            assert row["q0.5"] <= value <= row["q99.5"], (corpus, name, value, row["q0.5"], row["q99.5"])
    for name in ("alpha", "beta"):
        assert table.loc[name, "q0.5"] <= BESIROGLU[name] <= table.loc[name, "q99.5"]
    # The floors differ by far more than their uncertainty: the fit tells the corpora apart.
    e = bs.draws(fit)["E"]
    labels = list(fit.runs.group_labels)
    assert np.mean(e[:, labels.index("code")] < e[:, labels.index("web")]) > 0.99
    assert np.mean(e[:, labels.index("web")] < e[:, labels.index("books")]) > 0.99


@pytest.mark.slow  # shares one grouped NUTS fit (~40 s): the default run keeps the cheap checks
def test_posterior_has_group_dimension_and_hyperparameters(partial_fit):
    posterior = partial_fit.data.posterior
    assert posterior["E"].dims == ("chain", "draw", "group")
    assert list(posterior.coords["group"].values) == ["books", "code", "web"]
    for name in ("E_mu", "E_tau", "A_mu", "A_tau", "B_mu", "B_tau"):
        assert posterior[name].dims == ("chain", "draw")
    assert posterior["alpha"].dims == ("chain", "draw")


@pytest.mark.slow  # shares one grouped NUTS fit (~40 s): the default run keeps the cheap checks
def test_prediction_at_fitted_and_new_groups(partial_fit):
    fit = partial_fit
    at = pd.DataFrame({"N": [7e10] * 3, "D": [1.4e12] * 3, "corpus": ["code", "web", "unseen"]})
    q = fit.predict(at).quantiles()
    law_at = lambda g: TRUTH[g]["E"] + TRUTH[g]["A"] / 7e10 ** BESIROGLU["alpha"] + TRUTH[g]["B"] / 1.4e12 ** BESIROGLU["beta"]  # noqa: E731
    for i, corpus in enumerate(["code", "web"]):
        assert abs(q["mean_q50"][i] / law_at(corpus) - 1) < 0.03
    width = q["new_run_q95"] - q["new_run_q5"]
    # A new corpus carries the between-corpus spread: far wider than any fitted corpus's interval.
    assert width[2] > 3 * max(width[0], width[1])
    assert q["corpus"].tolist() == ["code", "web", "unseen"]
    with pytest.raises(DataError, match="corpus"):
        fit.predict({"N": 7e10, "D": 1.4e12})


@pytest.mark.slow  # shares one grouped NUTS fit (~40 s): the default run keeps the cheap checks
def test_save_and_load_keep_the_grouping(partial_fit, tmp_path):
    path = partial_fit.save(tmp_path / "grouped.nc")
    loaded = bs.load(path)
    assert loaded.grouping == partial_fit.grouping
    assert loaded.runs.group_labels == partial_fit.runs.group_labels
    at = {"N": [1e10], "D": [2e11], "corpus": ["books"]}
    np.testing.assert_allclose(loaded.predict(at).mean, partial_fit.predict(at).mean)


def test_per_group_priors_read_each_groups_data():
    # E < that corpus's smallest loss, not the smallest loss of all corpora (code's is far lower).
    table = grouped_table()
    law = bs.get_law("chinchilla")
    runs = bs.runs_from_table(table, law, group="corpus")
    for pooling in ("independent", "partial"):
        grouping = make_grouping(law, "corpus", pooling=pooling, shared=["alpha", "beta"])
        model = grouped_law_model(law, as_likelihood("normal"), grouping)
        args, kwargs = model_inputs(runs)
        e = np.asarray(prior_draws(model, jax.random.PRNGKey(0), args, kwargs, 2000)["E"])
        mins = table.groupby("corpus")["loss"].min().sort_index().to_numpy()
        assert (e <= mins).all()
        assert (e.max(axis=0) > 0.9 * mins).all()  # and the bound is each group's own


def test_grouped_input_errors():
    table = grouped_table(runs_per_group=8)
    with pytest.raises(DataError, match="'lab'"):
        bs.fit(table, "chinchilla", group="lab")
    with pytest.raises(DataError, match="single group"):
        bs.fit(table.assign(corpus="web"), "chinchilla", group="corpus")
    with pytest.raises(DataError, match="independent"):
        bs.fit(table.groupby("corpus").head(5), "chinchilla", group="corpus", pooling="independent")
    with pytest.raises(KeyError, match="gamma"):
        bs.fit(table, "chinchilla", group="corpus", shared=["gamma"])
    with pytest.raises(ValueError, match="complete"):
        bs.fit(table, "chinchilla", group="corpus", pooling={"E": "complete"})
    missing = table.astype({"corpus": object})
    missing.loc[3, "corpus"] = None
    with pytest.raises(DataError, match="empty at rows 3"):
        bs.fit(missing, "chinchilla", group="corpus")
    # The same inputs in two corpora are two runs; within one corpus they are a duplicate.
    same = pd.concat([table.iloc[:5].assign(corpus="a"), table.iloc[:5].assign(corpus="b")], ignore_index=True)
    assert len(bs.runs_from_table(same, bs.get_law("chinchilla"), group="corpus")) == 10
    with pytest.raises(DataError, match="duplicate"):
        bs.runs_from_table(same.assign(corpus="a"), bs.get_law("chinchilla"), group="corpus")


@pytest.mark.slow
def test_partial_pooling_borrows_strength_for_a_small_group():
    # Eight setups whose constants differ by 1-2 per cent; setup "h" keeps 4 runs. Alone (independent
    # constants) its floor E is loosely constrained; pooled with the other seven it narrows, and both
    # intervals cover the truth. (With only two or three groups the spread between them is poorly known
    # and pooling narrows little: that is the hierarchical prior working as it should.)
    rng = np.random.default_rng(7)
    setups = {g: {"E": 1.8 * np.exp(0.01 * rng.standard_normal()), "A": 480.0 * np.exp(0.02 * rng.standard_normal()),
                  "B": 2000.0 * np.exp(0.02 * rng.standard_normal())} for g in "abcdefgh"}
    frames = [simulate_chinchilla({**BESIROGLU, **c}, num_runs=20 if g != "h" else 4, seed=i).assign(setup=g)
              for i, (g, c) in enumerate(setups.items())]
    table = pd.concat(frames, ignore_index=True)
    widths = {}
    for pooling in ("partial", "independent"):
        fit = bs.fit(table, "chinchilla", group="setup", pooling=pooling, shared=["alpha", "beta"], seed=1)
        e = bs.draws(fit)["E"][:, list(fit.runs.group_labels).index("h")]
        lo, hi = np.quantile(e, [0.005, 0.995])
        assert lo <= setups["h"]["E"] <= hi, (pooling, lo, hi)
        widths[pooling] = np.diff(np.quantile(e, [0.05, 0.95]))[0]
        assert fit.converged, fit.diagnostics.problems
    # Measured: 0.096 pooled against 0.142 alone. Much of E's uncertainty is shared by every setup (it
    # trades off against the shared exponents), and pooling cannot remove that part.
    assert widths["partial"] < 0.75 * widths["independent"], widths


@pytest.mark.slow  # shares one grouped NUTS fit (~40 s): the default run keeps the cheap checks
def test_cli_predicts_at_a_group(partial_fit, tmp_path, capsys):
    import json

    from bayescale.cli import main

    path = partial_fit.save(tmp_path / "grouped.nc")
    assert main(["predict", str(path), "--at", "N=7e10,D=1.4e12,corpus=code", "--json"]) == 0
    point = json.loads(capsys.readouterr().out)["points"][0]
    assert point["corpus"] == "code" and 0.9 < point["mean_q50"] < 1.1


def test_centred_and_noncentred_pooling_have_the_same_prior_and_pool_coefficients_at_the_reference():
    """Centred and non-centred sampling of pooled values is a change of variables: the per-group priors agree
    (E truncated at each group's own smallest loss included). A pivoted coefficient is pooled at its input's
    reference: log A_g - alpha_g log N_ref lies tau standard normals from the centre's, and a new group's
    coefficient (`group_params`) is drawn the same way."""
    from scipy import stats as scipy_stats

    from bayescale.grouping import group_params
    from bayescale.law import data_stats

    table = grouped_table(runs_per_group=12)
    law = bs.get_law("chinchilla")
    runs = bs.runs_from_table(table, law, group="corpus")
    args, kwargs = model_inputs(runs)
    log_ref = float(np.mean(np.log(runs.x["N"])))
    draws = {}
    for centering in ("centered", "noncentered"):
        grouping = make_grouping(law, "corpus", centering=centering)
        assert grouping.centered == (centering == "centered") and grouping.pooled_at_reference
        model = grouped_law_model(law, as_likelihood("normal"), grouping)
        draws[centering] = {k: np.asarray(v) for k, v in
                            prior_draws(model, jax.random.PRNGKey(2), args, kwargs, 4000).items()}
    for name in ("E", "A", "alpha"):
        for g in range(3):
            a, b = (draws[c][name][:, g] for c in ("centered", "noncentered"))
            assert scipy_stats.ks_2samp(a, b).pvalue > 1e-3, (name, g)
    mins = table.groupby("corpus")["loss"].min().loc[list(runs.group_labels)].to_numpy()
    assert (draws["centered"]["E"] <= mins).all()
    for d in draws.values():
        offset = (np.log(d["A"]) - d["alpha"] * log_ref) - (np.log(d["A_mu"]) - d["alpha_mu"] * log_ref)[:, None]
        z = (offset / d["A_tau"][:, None]).ravel()
        assert abs(z.mean()) < 0.05 and abs(z.std() - 1) < 0.05
    # A new group: its exponent drawn around alpha_mu, its coefficient pooled at the reference like a fitted one.
    d = draws["noncentered"]
    stats = data_stats(np.asarray(runs.y), x=runs.x)
    grouping = make_grouping(law, "corpus")
    new = group_params(law, grouping, d, stats, np.array([-1]), jax.random.PRNGKey(5))
    offset = (np.log(new["A"][:, 0]) - new["alpha"][:, 0] * log_ref) - (np.log(d["A_mu"]) - d["alpha_mu"] * log_ref)
    z = offset / d["A_tau"]
    assert abs(z.mean()) < 0.06 and abs(z.std() - 1) < 0.06


def test_auto_centring_follows_the_runs_per_group_and_old_files_keep_their_pooling():
    law = bs.get_law("chinchilla")  # 5 parameters: centred from 10 runs in every group
    assert make_grouping(law, "g", centering="auto", group_sizes=[10, 30]).centered
    assert not make_grouping(law, "g", centering="auto", group_sizes=[9, 30]).centered
    assert not make_grouping(law, "g", centering="auto").centered
    with pytest.raises(ValueError, match="centering"):
        make_grouping(law, "g", centering="sometimes")
    old = {"column": "g", "levels": {"E": "partial"}, "scale": 0.5}  # a fit saved before these fields
    grouping = bs.grouping.Grouping.from_dict(old)
    assert not grouping.centered and not grouping.pooled_at_reference
    new = make_grouping(law, "g", centering="centered")
    assert bs.grouping.Grouping.from_dict(new.to_dict()) == new


@pytest.mark.slow  # a grouped fit and its refit (~60 s)
def test_backtest_of_a_grouped_fit_forecasts_a_held_out_group_from_the_pooled_distribution():
    """Holding out every run of one corpus: its forecasts come from a new group's parameters, pooled at the
    reference like the fitted groups', and cover most of its runs at 90% (wide: the between-corpus spread)."""
    table = grouped_table(runs_per_group=12)
    fit = bs.fit(table, "chinchilla", group="corpus", shared=["alpha", "beta"], num_warmup=300, num_samples=300,
                 num_chains=2, seed=0)
    held_out = (table["corpus"] == "books").to_numpy()
    result = bs.backtest(fit, mask=held_out, num_warmup=300, num_samples=300, num_chains=2)
    scores = result.table
    assert len(scores) == held_out.sum() and np.isfinite(scores["interval_score90"]).all()
    assert scores["covered90"].mean() >= 0.75, scores["covered90"].mean()
    # A fitted corpus's runs held out instead: far narrower intervals than a new corpus's.
    some = np.zeros(len(table), bool)
    some[np.flatnonzero(~held_out)[::6]] = True
    fitted_group = bs.backtest(fit, mask=some, num_warmup=300, num_samples=300, num_chains=2).table
    assert fitted_group["width90"].median() < 0.5 * scores["width90"].median()
