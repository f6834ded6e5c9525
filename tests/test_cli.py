"""The `bayescale` command: the README's verbs, JSON output, and exit codes."""

import json
from pathlib import Path

import pytest

from bayescale.cli import EXIT_BAD_INPUT, main, parse_prior
from conftest import simulate_chinchilla


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    directory = tmp_path_factory.mktemp("cli")
    data = directory / "runs.csv"
    simulate_chinchilla(num_runs=40, seed=3).rename(columns={"N": "params", "D": "tokens"}).to_csv(data, index=False)
    out = directory / "chinchilla.fit"
    code = main(["fit", str(data), "--law", "chinchilla", "--column", "N=params", "--column", "D=tokens",
                 "--warmup", "300", "--draws", "300", "--chains", "2", "--out", str(out)])
    assert code == 0
    return directory, out


def run_json(capsys, argv):
    capsys.readouterr()
    code = main(argv + ["--json"])
    return code, json.loads(capsys.readouterr().out)


def test_fit_without_out_prints_and_its_json_says_how_to_reproduce_it(fitted, capsys):
    directory, _ = fitted
    argv = ["fit", str(directory / "runs.csv"), "--law", "chinchilla", "--column", "N=params", "--column", "D=tokens",
            "--warmup", "300", "--draws", "300", "--chains", "2"]
    code, payload = run_json(capsys, argv)
    assert code == 0 and payload["file"] is None
    assert payload["columns"] == {"N": "params", "D": "tokens"} and payload["output"] == "loss"
    assert payload["seed"] == 0 and payload["settings"]["num_samples"] == 300 and payload["settings"]["num_chains"] == 2
    assert payload["likelihood"]["family"] == "normal" and payload["runs"] == 40
    assert set(payload["versions"]) >= {"bayescale", "jax", "numpyro", "arviz"}
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "inputs: N <- 'params'; D <- 'tokens'; output <- 'loss'" in printed and "not saved" in printed
    assert not list(directory.glob("*.fit.tmp"))


def test_summary_json(fitted, capsys):
    _, out = fitted
    code, payload = run_json(capsys, ["summary", str(out)])
    assert code == 0
    assert payload["law"] == "chinchilla" and payload["runs"] == 40
    assert set(payload["summary"]) >= {"E", "A", "alpha", "B", "beta", "sigma"}
    assert 0.2 < payload["summary"]["alpha"]["q50"] < 0.5


def test_predict_json(fitted, capsys):
    _, out = fitted
    code, payload = run_json(capsys, ["predict", str(out), "--at", "N=70e9,D=1.4e12", "--at", "N=1e9,C=1.2e20"])
    assert code == 0
    first, second = payload["points"]
    assert first["N"] == 70e9 and second["D"] == pytest.approx(1.2e20 / 6e9)
    assert first["mean_q5"] < first["mean_q50"] < first["mean_q95"]


def test_predict_at_the_rows_of_a_table(fitted, capsys):
    import pandas as pd

    directory, out = fitted
    points = directory / "points.csv"
    pd.DataFrame({"name": ["70B", "1B"], "params": [70e9, 1e9], "tokens": [1.4e12, 2e10]}).to_csv(points, index=False)
    code, from_file = run_json(capsys, ["predict", str(out), "--at-file", str(points)])
    code_at, from_at = run_json(capsys, ["predict", str(out), "--at", "N=70e9,D=1.4e12", "--at", "N=1e9,D=2e10"])
    assert code == code_at == 0 and len(from_file["points"]) == 2
    for a, b in zip(from_file["points"], from_at["points"]):
        assert a["mean_q50"] == pytest.approx(b["mean_q50"], rel=1e-9)
    assert main(["predict", str(out)]) == EXIT_BAD_INPUT
    assert "--at-file" in capsys.readouterr().err


def test_optimal_json(fitted, capsys):
    _, out = fitted
    code, payload = run_json(capsys, ["optimal", str(out), "--compute", "5.76e23"])
    assert code == 0
    budget = payload["budgets"][0]
    assert budget["compute"] == 5.76e23
    assert budget["N_q5"] < budget["N_q50"] < budget["N_q95"]
    assert budget["D_q50"] * budget["N_q50"] * 6 == pytest.approx(5.76e23, rel=0.5)


def test_laws_json(capsys):
    code, payload = run_json(capsys, ["laws"])
    assert code == 0
    assert payload["chinchilla"]["inputs"] == "N, D"
    assert payload["chinchilla"]["scale"] == "log y" and payload["chinchilla"]["output"] == "loss"
    assert payload["finetune"]["zero_allowed"] == "D"
    assert payload["bounded_power_law"]["reference"].startswith("Alabdulmohsin")
    # The README's law table names every family of the catalogue.
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    missing = [name for name in payload if f"`{name}`" not in readme]
    assert not missing, missing


def test_laws_listing_is_the_live_catalogue_and_needs_no_jax():
    # `bayescale laws` reads models/catalogue.json so it answers without importing JAX; the index must be
    # exactly what the law modules declare (regenerate with `python -m bayescale.law`).
    import subprocess
    import sys
    from importlib.resources import files

    from bayescale.law import catalogue_listing

    shipped = json.loads((files("bayescale.models") / "catalogue.json").read_text(encoding="utf-8"))
    assert shipped == catalogue_listing(), "models/catalogue.json is stale: run `python -m bayescale.law`"
    code = ("import sys, io, contextlib; from bayescale.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()) as out:\n    main(['laws'])\n"
            "print('jax' in sys.modules, 'pandas' in sys.modules, 'chinchilla' in out.getvalue())")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["False", "False", "True"]


def test_internal_errors_exit_1_as_bugs_and_debug_prints_the_traceback(monkeypatch, capsys):
    import numpy as np

    import bayescale.cli as cli

    def broken(args):
        return np.ones(3).reshape(2, 2)  # numpy's ValueError: not the user's input, our bug

    monkeypatch.setattr(cli, "cmd_laws", broken)
    assert main(["laws"]) == cli.EXIT_INTERNAL_ERROR == 1
    err = capsys.readouterr().err
    assert "internal error (ValueError: cannot reshape" in err and "this is a bug in bayescale" in err
    assert "Traceback" not in err and "bayescale --debug" in err
    assert main(["--debug", "laws"]) == 1
    assert "Traceback (most recent call last)" in capsys.readouterr().err

    def refuses(args):
        import argparse

        return cli._levels(argparse.Namespace(prob=None, level_low=0.7))  # bayescale's own validation: user input

    monkeypatch.setattr(cli, "cmd_laws", refuses)
    assert main(["laws"]) == EXIT_BAD_INPUT
    assert capsys.readouterr().err.strip().startswith("error: --level-low must lie strictly between 0 and 0.5")


def test_bad_input_exits_2_with_the_column_named(fitted, capsys):
    directory, _ = fitted
    bad = directory / "bad.csv"
    bad.write_text("params,tokens,loss\n1e8,2e9,3.1\n2e8,nan,2.9\n")
    code = main(["fit", str(bad), "--law", "chinchilla", "--column", "N=params", "--column", "D=tokens",
                 "--out", str(directory / "bad.fit")])
    assert code == EXIT_BAD_INPUT
    assert "column 'tokens' (input D) has missing values (NaN) at rows 1" in capsys.readouterr().err


def test_bad_point_and_unknown_law(fitted, capsys):
    directory, out = fitted
    assert main(["predict", str(out), "--at", "N=1e9;D=2"]) == EXIT_BAD_INPUT
    assert "--at" in capsys.readouterr().err
    assert main(["fit", str(directory / "runs.csv"), "--law", "chinchila", "--out", "x.fit"]) == EXIT_BAD_INPUT
    assert "unknown law 'chinchila'" in capsys.readouterr().err


def test_sampler_knobs_are_validated_and_reach_the_fit(fitted, capsys):
    directory, _ = fitted
    data = str(directory / "runs.csv")
    base = ["fit", data, "--law", "chinchilla", "--column", "N=params", "--column", "D=tokens", "--out", str(directory / "k.fit")]
    assert main(base + ["--target-accept", "1.5"]) == EXIT_BAD_INPUT
    assert "--target-accept must lie in (0, 1)" in capsys.readouterr().err
    # Too short to converge, no retries: the saved fit ran with the knobs given and reports no attempts.
    code, payload = run_json(capsys, base + ["--warmup", "30", "--draws", "40", "--chains", "2", "--target-accept", "0.9",
                                             "--max-tree-depth", "6", "--retries", "0"])
    assert code == 0 and payload["attempts"] == [] and not payload["converged"]
    assert payload["diagnostics"]["verdict"] != "converged"
    import bayescale as bs

    saved = bs.load(directory / "k.fit")
    assert (saved.settings.target_accept_prob, saved.settings.max_tree_depth, saved.settings.num_warmup) == (0.9, 6, 30)


def test_inverted_levels_and_unknown_point_keys_are_user_errors(fitted, capsys):
    _, out = fitted
    assert main(["predict", str(out), "--at", "N=1e9,D=2e10", "--level-low", "0.7"]) == EXIT_BAD_INPUT
    assert "--level-low must lie strictly between 0 and 0.5" in capsys.readouterr().err
    assert main(["predict", str(out), "--at", "N=1e9,D=2e10,Q=3"]) == EXIT_BAD_INPUT
    assert "unknown inputs ['Q']" in capsys.readouterr().err
    assert main(["predict", str(out), "--at", "N=1e9,D=2e10", "--prob", "1.5"]) == EXIT_BAD_INPUT
    assert "--prob must lie strictly between 0 and 1" in capsys.readouterr().err
    code, payload = run_json(capsys, ["predict", str(out), "--at", "N=1e9,D=2e10", "--prob", "0.8"])
    assert code == 0 and payload["points"][0]["mean_q10"] < payload["points"][0]["mean_q90"]


def test_prior_parsing():
    name, prior = parse_prior("alpha=LogNormal(-1.2, 0.5)")
    assert name == "alpha" and float(prior.loc) == -1.2 and float(prior.scale) == 0.5
    with pytest.raises(ValueError, match="not a distribution call"):
        parse_prior("alpha=__import__('os').system('true')")
    # Callables of numpyro.distributions that are not on the allow-list, syntax errors, non-numbers and
    # invalid arguments each get a one-line message naming the --prior.
    for text, message in [("alpha=TransformedDistribution(1, 2)", "not one of"), ("alpha=LogNormal(", "not a distribution call"),
                          ("alpha=Normal('a', 1)", "must be numbers"), ("alpha=HalfNormal(-1)", "invalid"),
                          ("=Normal(0, 1)", "expected NAME=Distribution")]:
        with pytest.raises(ValueError, match=message):
            parse_prior(text)


@pytest.mark.slow  # a batch program of its own (~45 s cold); the default run checks backtests in test_backtest.py
def test_backtest_json_and_its_hold_out_column(fitted, capsys, tmp_path):
    directory, _ = fitted
    code, payload = run_json(capsys, ["backtest", str(directory / "runs.csv"), "--law", "chinchilla",
                                      "--column", "N=params", "--column", "D=tokens", "--cuts", "0.2,0.1",
                                      "--warmup", "150", "--draws", "150", "--chains", "2"])
    assert code == 0
    (scores,) = payload["scores"]
    assert scores["law"] == "chinchilla" and scores["runs"] == 8 + 4
    assert 0 <= scores["coverage90"] <= 1 and len(payload["refits"]) == 2
    table = simulate_chinchilla(num_runs=40, seed=3).rename(columns={"N": "params", "D": "tokens"})
    table["split"] = ["yes"] * 40
    table.to_csv(tmp_path / "split.csv", index=False)
    assert main(["backtest", str(tmp_path / "split.csv"), "--law", "chinchilla", "--column", "N=params",
                 "--column", "D=tokens", "--holdout-column", "split"]) == EXIT_BAD_INPUT
    assert "hold-out column 'split' must hold booleans" in capsys.readouterr().err


def test_where_keeps_the_rows_of_one_setup_and_names_what_the_table_has():
    import pandas as pd

    from bayescale.cli import selected_rows

    table = pd.DataFrame({"dataset": ["rpj", "c4", "rpj"], "N": [1e8, 1e8, 4e8], "loss": [3.0, 3.1, 2.8]})
    assert selected_rows(table, None) is table
    assert selected_rows(table, ["dataset=rpj"])["N"].tolist() == [1e8, 4e8]
    assert selected_rows(table, ["dataset=rpj", "N=400000000.0"])["loss"].tolist() == [2.8]
    with pytest.raises(ValueError, match="no column 'corpus'; columns are dataset, N, loss"):
        selected_rows(table, ["corpus=rpj"])
    with pytest.raises(ValueError, match="no row has dataset = 'pile'; its values are c4, rpj"):
        selected_rows(table, ["dataset=pile"])
    with pytest.raises(ValueError, match="no row meets every condition"):
        selected_rows(table, ["dataset=c4", "N=400000000.0"])
    with pytest.raises(ValueError, match="expected COLUMN=VALUE"):
        selected_rows(table, ["dataset"])



def test_centering_and_task_losses_reach_the_engine(tmp_path, monkeypatch, capsys):
    """`fit --centering` and `fit-downstream --task-loss/--loss-pooling/--loss-shared` are passed on as given
    (the engine is replaced: the options, not sampling, are under test); misuse is bad input."""
    import bayescale as bs
    from bayescale import downstream

    class Stop(Exception):
        pass

    seen = {}

    def capture(name):
        def fake(*args, **kwargs):
            seen[name] = kwargs
            raise Stop
        return fake

    monkeypatch.setattr(bs, "fit", capture("fit"))
    monkeypatch.setattr(downstream, "fit_downstream", capture("fit_downstream"))
    path = tmp_path / "runs.csv"
    path.write_text("N,D,loss,corpus,loss_a,loss_b,a,b\n1e8,2e9,3.0,x,1.0,2.0,0.3,0.4\n")
    # The fake engine's exception surfaces as an internal error (exit 1) after the options reached it.
    assert main(["fit", str(path), "--law", "chinchilla", "--group", "corpus", "--centering", "noncentered"]) == 1
    assert seen["fit"]["centering"] == "noncentered"
    assert main(["fit-downstream", str(path), "--task", "a,b", "--task-loss", "a=loss_a,b=loss_b",
                 "--loss-pooling", "independent", "--loss-shared", "alpha,beta", "--out", str(tmp_path / "c.fit")]) == 1
    kwargs = seen["fit_downstream"]
    assert kwargs["loss_column"] == {"a": "loss_a", "b": "loss_b"}
    assert (kwargs["loss_pooling"], kwargs["loss_shared"]) == ("independent", ["alpha", "beta"])
    base = ["fit-downstream", str(path), "--task", "a,b", "--out", str(tmp_path / "c.fit")]
    assert main(base + ["--loss-shared", "alpha"]) == EXIT_BAD_INPUT
    assert "apply to a loss per task" in capsys.readouterr().err
    assert main(base + ["--task-loss", "a=loss_a,a=loss_b"]) == EXIT_BAD_INPUT
    assert "--task-loss: 'a' is given twice" in capsys.readouterr().err
    # Every NAME=VALUE list: a name given twice is refused, not the last value kept.
    assert main(base + ["--items", "a=100", "--items", "a=200"]) == EXIT_BAD_INPUT
    assert "--items: 'a' is given twice (100 and 200)" in capsys.readouterr().err
