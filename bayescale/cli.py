"""The `bayescale` command: a thin layer over the Python API (fit, summary, predict, optimal, laws, compare).

Every verb prints a readable table, or JSON with --json (for scripts and CI). Exit status: 0 on success,
2 on bad input (the message names the column or row), 3 when --strict is given and the fit did not converge,
1 on an internal error (a bug: the message says so; `bayescale --debug VERB ...` prints the traceback).
Long verbs print a progress line per sampler phase on standard error when it is a terminal (not with --json).
Heavy libraries (JAX, ArviZ, pandas) are imported by the verbs that use them, so `--help` and `--version`
answer at once.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import warnings
from pathlib import Path

EXIT_INTERNAL_ERROR = 1
EXIT_BAD_INPUT = 2
EXIT_NOT_CONVERGED = 3
# The names of bayescale.examples.EXAMPLES, written out so that `--help` does not import the engine (and
# pandas); tests/test_cli.py checks that the two agree.
EXAMPLE_NAMES = ("chinchilla", "overtrain")


def is_user_error(err: BaseException) -> bool:
    """A refusal of the user's input, not a bug: bayescale's own validation raises DataError, JobError,
    FileNotFoundError, or a ValueError / KeyError with a message for the user. A ValueError or KeyError that
    escaped from inside numpy, JAX or pandas (raised by their code, not ours) is an unhandled case, a bug."""
    if isinstance(err, FileNotFoundError):
        return True
    if not isinstance(err, ValueError | KeyError):
        return False
    import bayescale.models

    tb = err.__traceback__
    if tb is None:
        return True
    while tb.tb_next is not None:  # the frame that raised it
        tb = tb.tb_next
    raised_in = Path(tb.tb_frame.f_code.co_filename).resolve()
    ours = (Path(__file__).resolve().parent, Path(bayescale.models.__file__).resolve().parent)  # bayescale/, models/
    return any(raised_in.is_relative_to(folder) for folder in ours)


def _key_values(text: str, what: str) -> dict[str, str]:
    """NAME=VALUE,NAME=VALUE... as a dict; a name given twice is an error, never silently the last value."""
    out = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise ValueError(f"{what}: expected NAME=VALUE, got {part!r}")
        if key.strip() in out:
            raise ValueError(f"{what}: {key.strip()!r} is given twice ({out[key.strip()]} and {value.strip()})")
        out[key.strip()] = value.strip()
    return out


def parse_composite(text: str) -> tuple[str, dict[str, float]]:
    """`--composite mmlu=stem:3018+humanities:4705+...` (weights) or `mmlu=stem+humanities+...` (equal)."""
    name, sep, parts = text.partition("=")
    if not sep or not name.strip() or not parts.strip():
        raise ValueError(f"--composite: expected NAME=TASK[:WEIGHT]+TASK[:WEIGHT]..., got {text!r}")
    weights = {}
    for part in parts.split("+"):
        task, colon, weight = part.partition(":")
        if not task.strip() or (colon and not weight.strip()):
            raise ValueError(f"--composite {name}: expected TASK or TASK:WEIGHT, got {part!r}")
        try:
            weights[task.strip()] = float(weight) if colon else 1.0
        except ValueError:
            raise ValueError(f"--composite {name}: weight {weight!r} of {task.strip()!r} is not a number") from None
    return name.strip(), weights


def parse_columns(items: list[str]) -> dict[str, str]:
    columns = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--column: expected INPUT=COLUMN, got {item!r}")
        columns[key.strip()] = value.strip().strip('"')
    return columns


def selected_rows(data, where: list[str] | None):
    """`data` (a path or a table) limited to the rows where every `--where COLUMN=VALUE` holds (values compared
    as text, so `--where N_params=411616256` and `--where dataset=rpj` both work). A column that is not in the
    table, or a condition that no row meets, is an error naming what the table has."""
    if not where:
        return data
    from bayescale.runs import read_table

    table = read_table(data)
    keep = None
    for item in where:
        column, sep, value = item.partition("=")
        column, value = column.strip(), value.strip().strip('"')
        if not sep or not column:
            raise ValueError(f"--where: expected COLUMN=VALUE, got {item!r}")
        if column not in table.columns:
            raise ValueError(f"--where {item!r}: no column {column!r}; columns are {', '.join(map(str, table.columns))}")
        text = table[column].astype(str)
        hits = text == value
        if not hits.any():
            values = sorted(text.unique())
            shown = ", ".join(values[:12]) + (f", ... ({len(values)} values)" if len(values) > 12 else "")
            raise ValueError(f"--where {item!r}: no row has {column} = {value!r}; its values are {shown}")
        keep = hits if keep is None else keep & hits
    if not keep.any():
        raise ValueError(f"--where {' '.join(where)}: no row meets every condition")
    return table[keep.to_numpy()]


def parse_point(text: str, labels: tuple[str, ...] = ()) -> dict[str, float | str]:
    """N=7e10,D=1.4e12; keys in `labels` (a grouped fit's group column) stay text."""
    try:
        return {k: (v if k in labels else float(v)) for k, v in _key_values(text, "--at").items()}
    except ValueError as err:
        raise ValueError(f"--at {text!r}: {err}") from None


def _levels(args) -> tuple[float, float, float]:
    """The quantiles of the central interval asked for (`--prob 0.9`, or the older `--level-low 0.05`) and
    the median."""
    if args.prob is not None:
        if args.level_low is not None:
            raise ValueError("give --prob or --level-low, not both")
        if not 0.0 < args.prob < 1.0:
            raise ValueError(f"--prob must lie strictly between 0 and 1 (0.9: a central 90% interval), got {args.prob}")
        low = (1.0 - args.prob) / 2.0
    else:
        low = 0.05 if args.level_low is None else args.level_low
        if not 0.0 < low < 0.5:
            raise ValueError(f"--level-low must lie strictly between 0 and 0.5 (0.05: a 90% interval), got {low}")
    return low, 0.5, 1.0 - low


def _add_interval_options(p) -> None:
    p.add_argument("--prob", type=float, default=None,
                   help="probability of the central interval reported (default 0.9: the 5%% and 95%% quantiles)")
    p.add_argument("--level-low", type=float, default=None, help="lower quantile of the interval instead of --prob "
                   "(0.05: a 90%% interval)")


def _sequence(text: str | None) -> tuple[str, str] | None:
    if not text:
        return None
    names = _names(text)
    if len(names) != 2:
        raise ValueError(f"--sequence: expected RUN,STEP (two column names), got {text!r}")
    return names[0], names[1]


def _names(text: str | None) -> list[str]:
    return [n.strip() for n in text.split(",") if n.strip()] if text else []


def parse_prior(text: str):
    """NAME=Distribution(args), e.g. alpha=LogNormal(-1.2, 0.5): numpyro distributions with numeric args
    (`bayescale.law.prior_from_text`)."""
    from bayescale.law import prior_from_text

    name, sep, expr = text.partition("=")
    if not sep or not name.strip():
        raise ValueError(f"--prior: expected NAME=Distribution(args), got {text!r}")
    return name.strip(), prior_from_text(expr, f"--prior {text!r}")


def _print_table(frame) -> None:
    import pandas as pd

    with pd.option_context("display.width", 200, "display.max_columns", 50, "display.float_format", "{:.6g}".format):
        print(frame.to_string())


def _json(obj) -> None:
    import numpy as np

    def default(value):
        if isinstance(value, np.generic | np.ndarray):
            return value.tolist()
        return str(value)

    print(json.dumps(obj, indent=2, default=default))


def cmd_fit(args) -> int:
    import bayescale as bs

    if args.example:
        example = bs.EXAMPLES[args.example]
        table = selected_rows(bs.load_example(args.example), args.where)
        law, columns, y = args.law or example.law, {**example.columns, **parse_columns(args.column)}, args.y or example.y
        if not args.group and example.group and table[example.group].nunique() > 1:
            args.group = example.group  # the example's setups (several left by --where): a grouped fit
    else:
        if not args.data:
            raise ValueError("give a table of runs (CSV or Parquet) or --example NAME")
        table, law, columns, y = selected_rows(args.data, args.where), args.law, parse_columns(args.column), args.y or "loss"
        if not law:
            raise ValueError("--law is required (see `bayescale laws`)")
    outputs = [c.strip() for c in y.split(",")] if "," in y else None
    if outputs is not None:
        y = outputs  # several output columns: one joint multi-output fit, grouped by output
        if args.group:
            raise ValueError("--y with several columns is a multi-output fit, grouped by output; it cannot take --group")
    grouped = bool(args.group) or outputs is not None
    likelihood = bs.Likelihood(family=args.likelihood, nu=None if args.nu == "fit" else float(args.nu),
                               discrepancy=_discrepancy(args.discrepancy, args.likelihood, grouped, bs.get_law(law)))
    priors = dict(parse_prior(p) for p in args.prior or [])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", bs.ConvergenceWarning)
        warnings.simplefilter("always", bs.MisfitWarning)
        result = bs.fit(
            table, law, columns=columns, y=y, se=args.se, likelihood=likelihood, priors=priors,
            num_warmup=args.warmup, num_samples=args.draws, num_chains=args.chains, seed=args.seed,
            allow_repeats=args.allow_repeats, group=args.group, shared=_names(args.shared),
            pooling=args.pooling, centering=args.centering, sequence=_sequence(args.sequence),
            settings=_settings(args, grouped), retries=args.retries,
        )
    for w in caught:
        if issubclass(w.category, (bs.ConvergenceWarning, bs.MisfitWarning)):
            print(f"WARNING: {w.message}", file=sys.stderr)
    out = None
    if args.out:
        out = Path(args.out)
        bs.save(result, out)
    mapping = {name: result.runs.sources.get(name, name) for name in result.law.inputs}
    if args.json:
        _json({"file": None if out is None else str(out), "law": result.law.name, "converged": result.converged,
               "summary": result.summary().to_dict(orient="index"), "diagnostics": result.diagnostics.to_dict(),
               "misfit": None if result.misfit is None else result.misfit.to_dict(), "attempts": result.attempts,
               # What reproduces the run: data binding, model and sampler, and the software.
               "data": str(args.data) if args.data else f"example {args.example}", "where": args.where or [],
               "columns": mapping,
               "output": outputs or result.runs.output, "runs": len(result.runs), "likelihood": result.likelihood.to_dict(),
               "seed": result.seed, "settings": result.settings.to_dict(), "versions": _versions()})
    else:
        print("inputs: " + "; ".join(f"{name} <- {source if source.startswith('derived') else repr(source)}"
                                     for name, source in mapping.items())
              + (f"; outputs <- {outputs} (one cell per run and output)" if outputs else f"; output <- {result.runs.output!r}"))
        print(f"{result!r}" + (f" -> {out}" if out is not None else " (not saved: give --out FILE to keep it)"))
        _print_table(result.summary())
    return EXIT_NOT_CONVERGED if args.strict and not result.converged else 0


def _versions() -> dict[str, str]:
    from importlib import metadata

    out = {}
    for package in ("bayescale", "jax", "jaxlib", "numpyro", "arviz", "numpy", "pandas"):
        try:
            out[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            out[package] = "not installed"
    return out


def _settings(args, grouped: bool | None = None):
    """A `SamplerSettings` when a sampler knob beyond chains/warm-up/draws was given (else None: the fit's own
    defaults, e.g. a grouped fit's higher target acceptance)."""
    if args.target_accept is None and args.max_tree_depth is None:
        return None
    import bayescale as bs

    if args.target_accept is not None and not 0.0 < args.target_accept < 1.0:
        raise ValueError(f"--target-accept must lie in (0, 1), got {args.target_accept}")
    if args.max_tree_depth is not None and args.max_tree_depth < 1:
        raise ValueError(f"--max-tree-depth must be >= 1, got {args.max_tree_depth}")
    defaults = bs.SamplerSettings()
    return bs.SamplerSettings(
        num_warmup=args.warmup, num_samples=args.draws, num_chains=args.chains,
        target_accept_prob=args.target_accept if args.target_accept is not None else
        (0.99 if (grouped if grouped is not None else getattr(args, "group", None)) else defaults.target_accept_prob),
        max_tree_depth=args.max_tree_depth if args.max_tree_depth is not None else defaults.max_tree_depth,
    )


def _add_sampler_arguments(p) -> None:
    p.add_argument("--chains", type=int, default=4)
    p.add_argument("--warmup", type=int, default=1000)
    p.add_argument("--draws", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--target-accept", type=float, help="NUTS target acceptance (default 0.95; 0.99 for grouped fits): "
                   "raise it when a fit reports divergent transitions")
    p.add_argument("--max-tree-depth", type=int, help="NUTS maximum tree depth (default 10)")
    p.add_argument("--retries", type=int, help="refits with escalated settings when a fit fails its "
                   "convergence checks (bayescale.retries; default: one; 0: none)")


def _discrepancy(name: str, family: str = "normal", grouped: bool = False, law=None):
    """The --discrepancy choice as `Likelihood(discrepancy=...)` takes it ("default": the package default for
    this likelihood and law, `bayescale.discrepancy.default_discrepancy`)."""
    if name == "default":
        from bayescale.discrepancy import default_discrepancy

        return default_discrepancy(family, grouped, law)
    return None if name == "none" else name


def _shares(text: str) -> list[float]:
    try:
        return [float(v) for v in _names(text)]
    except ValueError:
        raise ValueError(f"--cuts: expected shares or counts separated by commas (e.g. 0.4,0.25,0.15), got {text!r}") from None


def cmd_backtest(args) -> int:
    import bayescale as bs
    from bayescale.backtest import backtest

    # By family name, so that backtest() gives each law its own default discrepancy.
    discrepancy = "default" if args.discrepancy == "default" else _discrepancy(args.discrepancy)
    priors = dict(parse_prior(p) for p in args.prior or [])
    laws = [name for item in args.law for name in _names(item)]
    result = backtest(
        selected_rows(args.data, args.where), laws, columns=parse_columns(args.column), y=args.y, likelihood=args.likelihood,
        discrepancy=discrepancy, priors=priors,
        by=args.by, holdout=args.holdout, cuts=_shares(args.cuts) if args.cuts else None,
        holdout_column=args.holdout_column, datasets=args.datasets, num_warmup=args.warmup,
        num_samples=args.draws, num_chains=args.chains, seed=args.seed, settings=_settings(args),
        retries=args.retries,
    )
    scores = result.scores()
    weights = result.weights() if len(laws) > 1 else None
    if args.out:
        result.table.to_csv(args.out, index=False)
    if args.json:
        _json({"scores": scores.reset_index().to_dict(orient="records"), "weights": weights,
               "refits": result.refits.to_dict(orient="records"),
               **({"runs": result.table.to_dict(orient="records")} if not args.out else {"runs_file": args.out})})
        return 0
    failed = result.refits[~result.refits["converged"]]
    for _, row in failed.iterrows():
        print(f"WARNING: the refit of {row['law']} on fold {row['fold']} did not converge", file=sys.stderr)
    columns = ["runs", "coverage50", "coverage90", "interval_score90", "width90", "crps", "mean_lpd",
               "median_rel_error", "max_extrapolation", "refits_converged"]
    _print_table(scores[columns])
    if weights:
        print("stacking weights from the held-out runs: " + ", ".join(f"{k} {v:.2f}" for k, v in weights.items()))
    for law, row in scores.iterrows():
        if row["runs"] >= 10 and row["coverage90"] < 0.8:
            print(f"{law}: its 90% intervals held {row['coverage90']:.0%} of the held-out runs: they are too narrow "
                  f"beyond the data; try --discrepancy random_walk or another law")
    return 0


def cmd_summary(args) -> int:
    import bayescale as bs

    result = bs.load(args.fit)
    if args.json:
        _json({"law": result.law.name, "likelihood": result.likelihood.to_dict(), "runs": len(result.runs),
               "converged": result.converged, "summary": result.summary().to_dict(orient="index"),
               "diagnostics": result.diagnostics.to_dict()})
    else:
        print(repr(result))
        _print_table(result.summary())
        for problem in result.diagnostics.problems:
            print(f"NOT CONVERGED: {problem}")
    return 0


def cmd_predict(args) -> int:
    import pandas as pd

    import bayescale as bs

    from bayescale.runs import read_table

    if not args.at and not args.at_file:
        raise ValueError("give the points to predict at: --at N=...,D=... (repeatable) or --at-file TABLE")
    result = bs.load(args.fit)
    levels = _levels(args)
    labels = (result.grouping.column,) if result.grouping is not None else ()
    # Each --at stands alone: one point may give D and another C. A table's rows are found by the fit's own
    # column names (or the inputs' names) and predicted together.
    parts = [bs.predict(result, parse_point(p, labels), seed=args.seed).quantiles(levels) for p in args.at or []]
    if args.at_file:
        parts.append(bs.predict(result, read_table(args.at_file), seed=args.seed).quantiles(levels))
    table = pd.concat(parts, ignore_index=True)
    if args.json:
        _json({"converged": result.converged, "output": result.runs.output, "points": table.to_dict(orient="records")})
    else:
        _print_table(table)
    return 0


def cmd_optimal(args) -> int:
    import bayescale as bs

    result = bs.load(args.fit)
    allocation = bs.optimal_allocation(result, [float(c) for c in args.compute])
    levels = _levels(args)
    if args.json:
        _json({"converged": result.converged, **allocation.to_dict(levels)})
    else:
        _print_table(allocation.quantiles(levels).set_index("compute").T)
    return 0


def cmd_compare(args) -> int:
    import bayescale as bs
    from bayescale.compare import compare, format_notes

    fits = {}
    for path in args.fits:
        name, k = Path(path).stem, 2
        while name in fits:
            name, k = f"{Path(path).stem}_{k}", k + 1
        fits[name] = bs.load(path)
    weights = {k: float(v) for k, v in _key_values(args.prior_weights, "--prior-weights").items()} if args.prior_weights else None
    table = compare(fits, prior_weights=weights, extrapolation=args.extrapolation, holdout=args.holdout, by=args.by,
                    seed=args.seed)
    if args.json:
        _json({"table": table.to_dict(orient="index"), "notes": table.attrs["notes"], "warnings": table.attrs["warnings"]})
    else:
        _print_table(table)
        print(format_notes(table))
    return 0


def cmd_batch(args) -> int:
    from bayescale.jobs import run_job

    result = run_job(args.job, backend=args.backend, progress=not args.no_progress)
    summary = result.summary
    counts = {"fits": len(summary), "fitted_now": result.fitted_now, "skipped": result.skipped,
              "errors": int((summary["status"] != "ok").sum()),
              "not_converged": int(((summary["status"] == "ok") & ~summary["converged"].astype(bool)).sum()),
              "summary": str(result.output / "summary.parquet")}
    if args.json:
        _json(counts)
    else:
        print(", ".join(f"{k}: {v}" for k, v in counts.items()))
        for _, row in result.errors.iterrows():
            print(f"ERROR {row['law']}/{row['dataset']}: {row['error']}", file=sys.stderr)
    return 0


def _catalogue_rows() -> dict[str, dict[str, str]]:
    """The catalogue's listing, read from the JSON index shipped with the law modules (no JAX import: the
    answer comes at once); `bayescale.law.catalogue_listing` builds it, and a test keeps it current."""
    from importlib.resources import files

    return json.loads((files("bayescale.models") / "catalogue.json").read_text(encoding="utf-8"))


def _plain_table(rows: dict[str, dict[str, str]], columns: list[str]) -> str:
    """A left-aligned text table (no pandas: `laws` must answer without heavy imports)."""
    header = ["", *columns]
    body = [[name, *(str(row[c]) for c in columns)] for name, row in rows.items()]
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() for line in [header, *body])


def cmd_laws(args) -> int:
    rows = _catalogue_rows()
    if args.json:
        _json(rows)
    else:
        print(_plain_table(rows, ["inputs", "output", "scale", "form"]))
    return 0


def cmd_fit_downstream(args) -> int:
    import bayescale as bs
    from bayescale import downstream

    tasks = [t for item in args.task for t in item.split(",") if t]
    items = chance = None
    if args.metadata:
        items, chance = downstream.task_metadata(args.metadata, tasks, prefix=args.metadata_prefix)
    if args.items:
        items = {k: v for k, v in _key_values(",".join(args.items), "--items").items()}
    if args.chance:
        chance = {k: float(v) for k, v in _key_values(",".join(args.chance), "--chance").items()}
    composites = dict(parse_composite(text) for text in args.composite or [])
    evaluations = None
    if args.evaluations:
        # Tasks not named average one evaluation; a name that is not a task is refused by downstream_runs.
        evaluations = {**dict.fromkeys(tasks, 1), **_key_values(",".join(args.evaluations), "--evaluations")}
    loss_column, loss_options = args.loss, {}
    if args.task_loss:
        loss_column = _key_values(",".join(args.task_loss), "--task-loss")
        loss_options = {"loss_pooling": args.loss_pooling, "loss_shared": _names(args.loss_shared)}
    elif args.loss_shared or args.loss_pooling != "partial":
        raise ValueError("--loss-pooling and --loss-shared apply to a loss per task (--task-loss TASK=COLUMN)")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", bs.ConvergenceWarning)
        result = downstream.fit_downstream(
            selected_rows(args.data, args.where), tasks=tasks, loss_law=args.law, link=args.link, loss_column=loss_column,
            **loss_options,
            columns=parse_columns(args.column), items=items, chance=chance, likelihood=args.likelihood,
            metric_likelihood=args.metric_likelihood, pooling=args.pooling,
            shared=[n for item in args.shared or [] for n in item.split(",") if n], run_effect=args.run_effect,
            finished=args.finished, centering=args.centering, composites=composites, evaluations=evaluations,
            num_warmup=args.warmup,
            num_samples=args.draws, num_chains=args.chains, seed=args.seed,
        )
    for w in caught:
        if issubclass(w.category, bs.ConvergenceWarning):
            print(f"WARNING: {w.message}", file=sys.stderr)
    out = Path(args.out)
    result.save(out)
    if args.json:
        _json({"file": str(out), "loss_law": result.loss_law.name, "link": result.link.name,
               "tasks": list(result.tasks), "converged": result.converged,
               "summary": result.summary().to_dict(orient="index"), "diagnostics": result.diagnostics.to_dict()})
    else:
        print(f"{result!r} -> {out}")
        _print_table(result.summary())
    return EXIT_NOT_CONVERGED if args.strict and not result.converged else 0


def _load_downstream_fits(paths: list[str], naming: str) -> dict:
    """Downstream fit files by file stem (the stems name `naming`, so they must differ)."""
    from bayescale import downstream

    fits = {Path(f).stem: downstream.load_downstream(f) for f in paths}
    if len(fits) != len(paths):
        raise ValueError(f"fit files must have distinct names (stems): they name {naming}")
    return fits


def cmd_predict_downstream(args) -> int:
    import pandas as pd

    levels = _levels(args)
    fits = _load_downstream_fits(args.fits, "the weights")
    if len(fits) == 1:
        fit = next(iter(fits.values()))

        def predict(point, seed):
            return fit.predict(point, seed=seed, error=args.error)
    else:
        # Several chains (different links, same runs): one forecast mixed by stacking or given weights.
        from bayescale.averaging import average_downstream
        from bayescale.link_comparison import compare_links

        if args.weights:
            weights, comparison = {k: float(v) for k, v in _key_values(args.weights, "--weights").items()}, None
        else:
            weights, comparison = "stacking", compare_links(fits, held_out=args.held_out)

        def predict(point, seed):
            return average_downstream(fits, point, weights, comparison=comparison, seed=seed, error=args.error)
    predictions = [predict(parse_point(p), seed=args.seed) for p in args.at]
    table = pd.concat([p.quantiles(levels) for p in predictions], ignore_index=True)
    if args.json:
        _json({"converged": all(f.converged for f in fits.values()), "output": predictions[0].output,
               "tasks": list(predictions[0].tasks), "composites": predictions[0].composites,
               "rows": table.to_dict(orient="records")})
    else:
        _print_table(table)
    return 0


def cmd_score_link(args) -> int:
    from bayescale import downstream
    from bayescale.link_comparison import link_score, save_link_score

    fit = downstream.load_downstream(args.fit)
    score = link_score(fit, held_out=args.held_out, future=not args.no_future)
    out = Path(args.out) if args.out else Path(args.fit).with_suffix(".score.json")
    save_link_score(score, out)
    shown = {k: v for k, v in score.items() if not k.startswith("pointwise_")}
    if args.json:
        _json({"file": str(out), **shown})
    else:
        print(f"link score of {args.fit} -> {out}")
        for key, value in shown.items():
            print(f"  {key}: {value}")
    return 0


def cmd_compare_links(args) -> int:
    from bayescale import downstream
    from bayescale.link_comparison import compare_links, load_link_score

    def name(path: str) -> str:
        return Path(path).name.removesuffix(".score.json").removesuffix(".json") if path.endswith(".json") else Path(path).stem

    fits = {name(p): load_link_score(p) if p.endswith(".json") else downstream.load_downstream(p) for p in args.fits}
    if len(fits) != len(args.fits):
        raise ValueError("fit and score files must have distinct names (stems): they name the rows")
    table = compare_links(fits, held_out=args.held_out, future=not args.no_future)
    if args.json:
        _json(table.to_dict(orient="index"))
    else:
        _print_table(table)
    return 0


def cmd_prior_check(args) -> int:
    from bayescale.prior_predictive import prior_predictive

    priors = dict(parse_prior(p) for p in args.prior or [])
    check = prior_predictive(
        args.law, selected_rows(args.data, args.where), columns=parse_columns(args.column), y=args.y, likelihood=args.likelihood,
        priors=priors, num_draws=args.draws, seed=args.seed, allow_repeats=args.allow_repeats,
    )
    table = check.quantiles()
    verdict = check.verdict()
    if args.json:
        _json({"law": check.law.name, "verdict": verdict, "points": table.to_dict(orient="records")})
    else:
        _print_table(table)
        print(verdict["message"])
    return 0


def build_parser() -> argparse.ArgumentParser:
    from importlib import metadata

    parser = argparse.ArgumentParser(prog="bayescale", description="Bayesian scaling-law inference.")
    try:
        version = metadata.version("bayescale")
    except metadata.PackageNotFoundError:
        version = "unknown (not installed)"
    parser.add_argument("--version", action="version", version=f"bayescale {version}")
    parser.add_argument("--debug", action="store_true", help="print the full traceback of any error")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("fit", help="fit a law to a table of runs and save the posterior")
    p.add_argument("data", nargs="?", help="CSV, TSV or Parquet table of runs")
    p.add_argument("--where", action="append", metavar="COLUMN=VALUE",
                   help="use only the rows where COLUMN equals VALUE (repeatable: all must hold)")
    p.add_argument("--example", choices=EXAMPLE_NAMES, help="use an example data set shipped with bayescale "
                   "(its law, columns and output unless given; grouped by its setups where it has several)")
    p.add_argument("--law", help="law name (see `bayescale laws`)")
    p.add_argument("--column", action="append", metavar="INPUT=COLUMN", help="map a law input to a column (repeatable)")
    p.add_argument("--y", help="output column (default: loss); several, comma-separated (loss_web,loss_code): one "
                   "joint multi-output fit with parameters per output (see --pooling, --shared)")
    p.add_argument("--se", help="column of known standard errors of the output")
    p.add_argument("--likelihood", default="normal", choices=["normal", "student_t", "ar1"])
    p.add_argument("--nu", default="4", help="Student-t degrees of freedom, or 'fit'")
    p.add_argument("--discrepancy", default="default", choices=["default", "none", "random_walk"],
                   help="model discrepancy growing with the distance from the fitted runs (bayescale.discrepancy); "
                        "default: the package default")
    p.add_argument("--sequence", metavar="RUN,STEP", help="training curves: run and step columns (needed by --likelihood ar1)")
    p.add_argument("--prior", action="append", metavar="NAME=DIST(ARGS)", help="override a prior, e.g. alpha='LogNormal(-1.2, 0.5)'")
    _add_sampler_arguments(p)
    p.add_argument("--allow-repeats", action="store_true", help="accept several runs at the same inputs")
    p.add_argument("--group", help="column naming each run's group: a grouped fit (see bayescale.grouping)")
    p.add_argument("--shared", help="grouped fit: parameters shared by all groups, comma-separated (e.g. alpha,beta)")
    p.add_argument("--pooling", default="partial", choices=["partial", "independent", "shared"],
                   help="grouped fit: how the other parameters vary by group")
    p.add_argument("--centering", default="auto", choices=["auto", "centered", "noncentered"],
                   help="grouped fit: how pooled values are sampled (auto: centred when every group has at least "
                        "two runs per law parameter); the prior is the same")
    p.add_argument("--out", help="file to save the fit to (NetCDF); without it the fit is printed, not saved")
    p.add_argument("--strict", action="store_true", help=f"exit {EXIT_NOT_CONVERGED} if the fit did not converge")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_fit)

    p = sub.add_parser("summary", help="posterior summary and diagnostics of a saved fit")
    p.add_argument("fit")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_summary)

    p = sub.add_parser("predict", help="posterior predictive at new inputs")
    p.add_argument("fit")
    p.add_argument("--at", action="append", metavar="N=...,D=...", help="a point (repeatable)")
    p.add_argument("--at-file", metavar="TABLE", help="a CSV, TSV or Parquet table of points, one per row (columns "
                   "named as in the fitted table or as the law's inputs; other columns are ignored)")
    _add_interval_options(p)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("optimal", help="compute-optimal parameters and tokens for a compute budget")
    p.add_argument("fit")
    p.add_argument("--compute", action="append", required=True, help="compute budget in FLOP (repeatable)")
    _add_interval_options(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_optimal)

    p = sub.add_parser("compare", help="compare saved fits of law families: evidence, LOO, WAIC, stacking")
    p.add_argument("fits", nargs="+", help="fit files (from `bayescale fit --out`) of the same runs")
    p.add_argument("--prior-weights", metavar="NAME=W,...", help="prior model weights by file stem (default equal)")
    p.add_argument("--extrapolation", action="store_true", help="refit without the largest-compute runs and score them")
    p.add_argument("--holdout", type=float, default=0.2, help="held-out fraction (or count if >= 1) for --extrapolation")
    p.add_argument("--by", help="input to rank runs by for --extrapolation (default: compute C, else the first input)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("backtest", help="refit without the largest runs and score the forecasts of them")
    p.add_argument("data", help="CSV, TSV or Parquet table of runs")
    p.add_argument("--where", action="append", metavar="COLUMN=VALUE",
                   help="use only the rows where COLUMN equals VALUE (repeatable: all must hold)")
    p.add_argument("--law", action="append", required=True, metavar="LAW[,LAW...]", help="law(s) to backtest")
    p.add_argument("--column", action="append", metavar="INPUT=COLUMN", help="map a law input to a column (repeatable)")
    p.add_argument("--y", default="loss", help="output column")
    p.add_argument("--likelihood", default="normal", choices=["normal", "student_t"])
    p.add_argument("--discrepancy", default="default", choices=["default", "none", "random_walk"],
                   help="model discrepancy (bayescale.discrepancy); default: the package default")
    p.add_argument("--prior", action="append", metavar="NAME=DIST(ARGS)", help="override a prior")
    p.add_argument("--by", help="input to rank runs by (default: compute C where derivable, else the first input)")
    p.add_argument("--holdout", type=float, help="share (< 1) or count of the largest runs held out (default 0.2)")
    p.add_argument("--cuts", metavar="S1,S2,...", help="rolling origins: several shares or counts held out in turn")
    p.add_argument("--holdout-column", help="boolean column: True marks a held-out run")
    p.add_argument("--datasets", help="column naming independent data sets (each backtested on its own)")
    _add_sampler_arguments(p)
    p.add_argument("--out", help="write the per-run scores to this CSV")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_backtest)

    p = sub.add_parser("fit-downstream", help="fit loss law and link to loss and task accuracies as one posterior")
    p.add_argument("data", help="CSV, TSV or Parquet table: loss-law inputs, a loss column, accuracy columns")
    p.add_argument("--where", action="append", metavar="COLUMN=VALUE",
                   help="use only the rows where COLUMN equals VALUE (repeatable: all must hold)")
    p.add_argument("--task", action="append", required=True, metavar="COLUMN[,COLUMN...]", help="accuracy column(s) (repeatable)")
    p.add_argument("--law", default="chinchilla", help="loss law")
    p.add_argument("--link", default="link_sigmoid", help="link law from loss to metric (default: link_sigmoid)")
    p.add_argument("--loss", default="loss", help="loss column (empty cells: missing)")
    p.add_argument("--task-loss", action="append", metavar="TASK=COLUMN[,TASK=COLUMN...]",
                   help="a loss per task instead of --loss: each task's own loss column (every task needs one)")
    p.add_argument("--loss-pooling", default="partial", choices=["partial", "independent", "shared"],
                   help="with --task-loss: how the loss law's parameters vary by task")
    p.add_argument("--loss-shared", help="with --task-loss: loss-law parameters shared by every task (e.g. alpha,beta)")
    p.add_argument("--finished", metavar="COLUMN", help="boolean column: True for finished runs, False for link-only "
                   "rows (checkpoints whose loss informs the link but not the loss law)")
    p.add_argument("--column", action="append", metavar="INPUT=COLUMN", help="map a loss-law input to a column")
    p.add_argument("--metadata", help="table of task sizes and chance levels (eval_metadata.csv layout)")
    p.add_argument("--metadata-prefix", default="acc_", help="prefix of the task columns not in the metadata names")
    p.add_argument("--items", action="append", metavar="COLUMN=N", help="number of items of a task")
    p.add_argument("--chance", action="append", metavar="COLUMN=P", help="chance accuracy of a task (fraction)")
    p.add_argument("--composite", action="append", metavar="NAME=TASK[:WEIGHT]+...",
                   help="a score reported as the weighted mean of task columns (equal weights without :WEIGHT); "
                        "predicted from its parts, checked against a column NAME if the table has one")
    p.add_argument("--evaluations", action="append", metavar="COLUMN=K",
                   help="a task's accuracy averages K evaluations of the same items (needs --items)")
    p.add_argument("--likelihood", default="normal", choices=["normal", "student_t"])
    p.add_argument("--metric-likelihood", default="auto", choices=["auto", "binomial", "beta_binomial", "beta"])
    p.add_argument("--pooling", default="partial", choices=["partial", "none"])
    p.add_argument("--centering", default="auto", choices=["auto", "noncentered", "centered"],
                   help="how pooled task-level values are sampled (auto: centered for tasks that move beyond their noise)")
    p.add_argument("--shared", action="append", metavar="PARAM[,PARAM...]", help="link parameter(s) with one value for all tasks")
    p.add_argument("--run-effect", action="store_true",
                   help="a logit offset shared by all tasks of a run (runs better or worse than their loss on every task)")
    p.add_argument("--chains", type=int, default=4)
    p.add_argument("--warmup", type=int, default=1000)
    p.add_argument("--draws", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="file to save the fit to (NetCDF)")
    p.add_argument("--strict", action="store_true", help=f"exit {EXIT_NOT_CONVERGED} if the fit did not converge")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_fit_downstream)

    p = sub.add_parser("predict-downstream", help="loss, every task's metric and their average at new inputs")
    p.add_argument("fits", nargs="+", metavar="fit", help="a downstream fit file; several (same runs, different "
                   "links) are averaged, by stacking weights unless --weights is given")
    p.add_argument("--weights", metavar="NAME=W,...", help="weights of several fits by file stem (default: stacking)")
    p.add_argument("--held-out", type=int, default=1, help="runs held out for the stacking weights")
    p.add_argument("--error", action="store_true", help="report errors (1 - accuracy) instead of accuracies")
    p.add_argument("--at", action="append", required=True, metavar="N=...,D=...", help="a point (repeatable)")
    _add_interval_options(p)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_predict_downstream)

    p = sub.add_parser("score-link", help="score one downstream fit's link (PSIS-LOO and the leave-future-out refit) "
                       "into a file, for compare-links; several run in parallel")
    p.add_argument("fit", help="downstream fit file (from `bayescale fit-downstream --out`)")
    p.add_argument("--held-out", type=int, default=1, help="runs with the lowest loss whose accuracies are held out")
    p.add_argument("--no-future", action="store_true", help="LOO only: skip the leave-future-out refit")
    p.add_argument("--out", help="score file (default: the fit file with suffix .score.json)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_score_link)

    p = sub.add_parser("compare-links", help="compare downstream fits' links: PSIS-LOO and leave-future-out score")
    p.add_argument("fits", nargs="+", help="downstream fit files (from `bayescale fit-downstream --out`) of the same "
                   "runs, or their score files (from `bayescale score-link`, *.json)")
    p.add_argument("--held-out", type=int, default=1, help="runs with the lowest loss whose accuracies are held out")
    p.add_argument("--no-future", action="store_true", help="LOO only: skip the leave-future-out refits")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_compare_links)

    p = sub.add_parser("prior-check", help="prior predictive check: prior bands at the runs against the data")
    p.add_argument("data", help="CSV, TSV or Parquet table of runs")
    p.add_argument("--where", action="append", metavar="COLUMN=VALUE",
                   help="use only the rows where COLUMN equals VALUE (repeatable: all must hold)")
    p.add_argument("--law", required=True, help="law name (see `bayescale laws`)")
    p.add_argument("--column", action="append", metavar="INPUT=COLUMN", help="map a law input to a column (repeatable)")
    p.add_argument("--y", default="loss", help="output column")
    p.add_argument("--likelihood", default="normal", choices=["normal", "student_t"])
    p.add_argument("--prior", action="append", metavar="NAME=DIST(ARGS)", help="override a prior")
    p.add_argument("--draws", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--allow-repeats", action="store_true")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_prior_check)

    p = sub.add_parser("laws", help="list the law families")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_laws)

    p = sub.add_parser("batch", help="run (or resume) a batch job file (TOML or YAML): many data sets and laws")
    p.add_argument("job", help="job file; see README, 'Batch jobs'")
    p.add_argument("--backend", choices=("local", "ray"), default="local")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_batch)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    for command in parser._subparsers._group_actions[0].choices.values():
        command.formatter_class = argparse.ArgumentDefaultsHelpFormatter  # defaults shown in every --help
    args = parser.parse_args(argv)
    from bayescale import progress

    # Progress lines on a terminal only: --json output, pipes and scripts stay quiet.
    show = sys.stderr.isatty() and not getattr(args, "json", False) and not getattr(args, "no_progress", False)
    try:
        with progress.reporting() if show else contextlib.nullcontext():
            return args.func(args)
    except BrokenPipeError:  # `bayescale laws --json | head`: the reader left; not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001  every error ends in a message and an exit status, never a bare crash
        if getattr(args, "debug", False):
            import traceback

            traceback.print_exc()
        if is_user_error(err):  # bayescale.runs.DataError is a ValueError
            message = err.args[0] if isinstance(err, KeyError) and err.args else err
            print(f"error: {message}", file=sys.stderr)
            return EXIT_BAD_INPUT
        print(f"internal error ({type(err).__name__}: {err}): this is a bug in bayescale, not a problem with your "
              "input. Please report it with the command"
              + (" and the traceback above." if getattr(args, "debug", False) else "; `bayescale --debug ...` prints the traceback."),
              file=sys.stderr)
        return EXIT_INTERNAL_ERROR


if __name__ == "__main__":
    sys.exit(main())
