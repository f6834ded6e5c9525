"""Batch jobs: a job file (TOML or YAML) -> many (data set, law) fits, resumable, one summary table.

A job names the data (several files, one data set each, or one table split by a grouping column), the laws,
the columns, the sampler settings and an output directory (see README, "Batch jobs"). `run_job` plans
shards (data sets of one law, `shard_size` at a time), fits each shard with `bayescale.batch.fit_batch`
(one compiled program), and writes for every fit:

- `fits/<law>/<data set>.nc`: the engine's fit file (`bayescale.save`, atomic), so `bayescale summary`,
  `predict`, `load` work on it. A data set name that is not a safe file name is written as its slug plus a
  short hash of the exact name (`a b` -> `a_b-<hash>.nc`), so different names never share a file; the
  summary and the manifest keep the original name;
- a line in `manifest.jsonl` (appended and fsynced after the fit file is in place) with its summary row.

Resuming: a restarted job reads the manifest and skips every (data set, law) already in it, except rows
with status "error" that are not a validation error of the data (a full disk, a crash): those are retried.
A fit whose file was written but whose manifest line was not is simply redone (same seed, same result) and
its file replaced, so each fit ends up present exactly once. A torn last line (killed mid-write) is ignored;
temporary files of killed saves are removed when a job starts.

One instance per output folder: a job holds a lock on OUTPUT/.lock while it runs, and a second instance on
the same folder stops at once with a message (POSIX file locks; on systems without them, no lock).
Failures: a data set that fails validation, or whose batch fails, is retried alone; if it still fails its
row records status "error" and the message, and the others go on. After every shard `summary.parquet` (one
row per data set and law finished so far: parameter quantiles and MAP, diagnostics flags, predictions at
requested points, evidence when asked) is rewritten atomically from the manifest, so a running or killed job
has an up-to-date summary.

Backends: "local" (in process, the default) or "ray" (`bayescale.ray_backend`: shards on Ray workers).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tomllib
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bayescale.diagnostics import Thresholds
from bayescale.inference import SamplerSettings
from bayescale.posterior import observed_var
from bayescale.runs import DataError, read_table, runs_from_table, split_datasets

MANIFEST = "manifest.jsonl"
SUMMARY = "summary.parquet"


class JobError(ValueError):
    """The job file is not usable; the message names the key at fault."""


@dataclass(frozen=True)
class Job:
    """A parsed job. `datasets`: name -> table (DataFrame), in job order."""

    datasets: dict[str, pd.DataFrame]
    laws: tuple[str, ...]
    output: Path
    columns: dict[str, str] = field(default_factory=dict)
    y: str = "loss"
    se: str | None = None
    likelihood: str = "normal"
    discrepancy: str | None = "default"
    settings: SamplerSettings = SamplerSettings(num_warmup=500, num_samples=500)
    seed: int = 0
    shard_size: int = 64
    map_starts: int = 32
    quantiles: tuple[float, ...] = (0.05, 0.5, 0.95)
    predict_at: tuple[dict[str, float], ...] = ()
    evidence: bool = False
    allow_repeats: bool = False
    pad_runs: int | None = None  # pad every data set to this many runs (default: the job's largest)
    retries: int | None = None  # second batched passes for failed data sets (bayescale.retries; None: default, one)
    thresholds: Thresholds = Thresholds()
    priors: dict[str, str] = field(default_factory=dict)  # parameter -> prior as text ("LogNormal(-1.2, 0.5)")
    split: str | None = None  # boolean column: True = held out (predicted, not fitted), per data set
    metadata: tuple[str, ...] = ()  # columns constant within a data set, carried into the summary
    compare: bool = False  # per data set: the laws compared by PSIS-LOO, stacking weights, averaged forecasts
    fail_after: int | None = None  # testing hook: raise after this many fits are recorded (simulated kill)

    def units(self) -> list[tuple[str, str]]:
        """Every (data set, law) pair of the job, in order."""
        return [(name, law) for law in self.laws for name in self.datasets]

    def width(self) -> int:
        """Runs every data set is padded to: one width for the whole job, so every shard of a law runs
        the same compiled program."""
        return self.pad_runs or max(len(t) for t in self.datasets.values())

    def seed_of(self, dataset: str) -> int:
        """Data set i of the job gets seed + i, whatever the shard it lands in, so results do not depend on
        sharding, backend or restarts."""
        return self.seed + list(self.datasets).index(dataset)


# ---- reading a job file ----


def _read_mapping(path: Path) -> dict[str, Any]:
    text = path.read_text()
    if path.suffix.lower() == ".toml":
        return tomllib.loads(text)
    if path.suffix.lower() in {".yaml", ".yml"}:
        try:
            import yaml
        except ImportError as err:
            raise JobError("YAML job files need PyYAML: pip install 'bayescale[jobs]'") from err
        return yaml.safe_load(text) or {}
    raise JobError(f"{path}: job files are TOML (.toml) or YAML (.yaml, .yml)")


_KNOWN = {"pad_runs", "data", "laws", "output", "sampler", "retries", "thresholds", "seed", "likelihood", "discrepancy", "shard_size", "map_starts", "quantiles",
          "predict_at", "evidence", "priors", "compare"}
_DATA_KNOWN = {"files", "table", "group_by", "columns", "y", "se", "allow_repeats", "split", "metadata"}
PREDICTIONS = "predictions.parquet"
COMPARISON = "comparison.parquet"
AVERAGED = "averaged.parquet"


def load_job(path: str | Path, **overrides) -> Job:
    """Parse and validate a job file; paths in it are relative to the file's directory."""
    path = Path(path)
    if not path.exists():
        raise JobError(f"no job file at {path}")
    spec = _read_mapping(path)
    return job_from_mapping(spec, base=path.parent, **overrides)


def job_from_mapping(spec: Mapping[str, Any], base: Path = Path("."), **overrides) -> Job:
    unknown = sorted(set(spec) - _KNOWN)
    if unknown:
        raise JobError(f"unknown job keys {unknown}; known: {sorted(_KNOWN)}")
    for key in ("data", "laws", "output"):
        if key not in spec:
            raise JobError(f"the job needs a {key!r} entry")
    data = spec["data"]
    if not isinstance(data, Mapping):
        raise JobError("'data' must be a table of settings (files = [...], or table = ... with group_by = ...)")
    unknown = sorted(set(data) - _DATA_KNOWN)
    if unknown:
        raise JobError(f"unknown keys in 'data': {unknown}; known: {sorted(_DATA_KNOWN)}")
    if not isinstance(data.get("y", "loss"), str):
        raise JobError(f"data.y = {data['y']!r}: a job fits one output column per data set; multi-output fits "
                       "(several output columns, one joint posterior) run through fit(table, law, y=[...]) or "
                       "`bayescale fit --y a,b`, not yet through job files")
    datasets = _datasets(data, base)
    laws = spec["laws"]
    laws = (laws,) if isinstance(laws, str) else tuple(laws)
    from bayescale.law import laws as catalogue

    known_laws = catalogue()
    missing = [law for law in laws if law not in known_laws]
    if missing:
        raise JobError(f"unknown laws {missing} in 'laws'; available: {', '.join(known_laws)}")
    sampler = dict(spec.get("sampler", {}))
    valid = set(SamplerSettings.__dataclass_fields__)
    if set(sampler) - valid:
        raise JobError(f"unknown sampler settings {sorted(set(sampler) - valid)}; known: {sorted(valid)}")
    settings = SamplerSettings(**{"num_warmup": 500, "num_samples": 500, **sampler})
    limits = dict(spec.get("thresholds", {}))
    valid = set(Thresholds.__dataclass_fields__)
    if set(limits) - valid:
        raise JobError(f"unknown thresholds {sorted(set(limits) - valid)}; known: {sorted(valid)}")
    retries = spec.get("retries")
    if retries is not None and (not isinstance(retries, int) or isinstance(retries, bool) or retries < 0):
        raise JobError(f"'retries' must be a whole number >= 0, got {retries!r}")
    predict_at = spec.get("predict_at", [])
    if isinstance(predict_at, Mapping):
        predict_at = [predict_at]
    for i, point in enumerate(predict_at):
        if not isinstance(point, Mapping) or not all(isinstance(v, int | float) for v in point.values()):
            raise JobError(f"predict_at[{i}] must map inputs to numbers, e.g. {{N = 70e9, D = 1.4e12}}")
    priors = dict(spec.get("priors", {}))
    from bayescale.law import prior_from_text

    for name, text in priors.items():
        try:
            prior_from_text(text, f"priors.{name} = {text!r}")
        except ValueError as err:
            raise JobError(str(err)) from None
    split = data.get("split")
    metadata = data.get("metadata", [])
    metadata = (metadata,) if isinstance(metadata, str) else tuple(str(m) for m in metadata)
    _check_columns(datasets, split, metadata)
    output = Path(spec["output"])
    job = Job(
        datasets=datasets,
        laws=laws,
        output=output if output.is_absolute() else base / output,
        columns={str(k): str(v) for k, v in dict(data.get("columns", {})).items()},
        y=data.get("y", "loss"),
        se=data.get("se"),
        likelihood=spec.get("likelihood", "normal"),
        discrepancy=spec.get("discrepancy", "default"),
        settings=settings,
        seed=int(spec.get("seed", 0)),
        shard_size=int(spec.get("shard_size", 64)),
        map_starts=int(spec.get("map_starts", 32)),
        quantiles=tuple(float(q) for q in spec.get("quantiles", (0.05, 0.5, 0.95))),
        predict_at=tuple(dict(p) for p in predict_at),
        evidence=bool(spec.get("evidence", False)),
        allow_repeats=bool(data.get("allow_repeats", False)),
        pad_runs=int(spec["pad_runs"]) if "pad_runs" in spec else None,
        retries=retries,
        thresholds=Thresholds(**limits),
        priors={str(k): str(v) for k, v in priors.items()},
        split=split,
        metadata=metadata,
        compare=bool(spec.get("compare", False)),
    )
    if job.compare and len(job.laws) < 2:
        raise JobError("compare = true needs at least two laws to compare")
    if job.shard_size < 1:
        raise JobError("shard_size must be at least 1")
    return replace(job, **overrides)


def _check_columns(datasets: Mapping[str, pd.DataFrame], split: str | None, metadata: Sequence[str]) -> None:
    """The split column is a boolean column of every data set that leaves runs to fit; metadata columns are
    present and hold one value per data set (a summary row carries it)."""
    from bayescale.runs import boolean_column

    for name, table in datasets.items():
        if split is not None:
            try:
                held = boolean_column(table, split, "split", "True = held out: predicted, not fitted")
            except DataError as err:
                raise JobError(f"data set {name!r}: {err}") from None
            if held.all():
                raise JobError(f"data set {name!r}: every row is held out by split column {split!r}; nothing to fit")
        for column in metadata:
            if column not in table.columns:
                raise JobError(f"metadata column {column!r} is not in data set {name!r}")
            values = table[column].unique()
            if len(values) > 1:
                raise JobError(f"metadata column {column!r} holds {len(values)} values in data set {name!r} "
                               f"({', '.join(map(repr, values[:4]))}): a summary row carries one")


def _datasets(data: Mapping[str, Any], base: Path) -> dict[str, pd.DataFrame]:
    resolve = lambda p: Path(p) if Path(p).is_absolute() else base / p  # noqa: E731
    if ("files" in data) == ("table" in data):
        raise JobError("'data' needs either files = [...] (one data set per file) or table = ... with group_by")
    if "files" in data:
        files = data["files"]
        files = [files] if isinstance(files, str) else list(files)
        out = {}
        for f in files:
            name = Path(f).stem
            if name in out:
                raise JobError(f"two data files are named {name!r}; data sets are named by file stem")
            try:
                out[name] = read_table(resolve(f))
            except DataError as err:
                raise JobError(f"data file {f}: {err}") from None
        return out
    if "group_by" not in data:
        raise JobError("'data.table' needs 'group_by', the column naming each row's data set")
    if isinstance(data["table"], pd.DataFrame):  # a job built in Python (job_from_mapping) may pass the table itself
        table = data["table"]
    else:
        try:
            table = read_table(resolve(data["table"]))
        except DataError as err:
            raise JobError(f"data table {data['table']}: {err}") from None
    column = data["group_by"]
    try:
        groups = split_datasets(table, column)
    except DataError as err:
        raise JobError(f"group_by: {err}") from None
    return {str(name): group.drop(columns=[column]) for name, group in groups.items()}


# ---- the manifest: which fits are finished ----


def unit_key(dataset: str, law: str) -> str:
    return f"{law}/{dataset}"


def read_manifest(output: Path) -> dict[str, dict[str, Any]]:
    """Finished fits by key; a torn last line (a kill mid-write) is ignored, later lines win."""
    path = Path(output) / MANIFEST
    rows: dict[str, dict[str, Any]] = {}
    if not path.exists():
        return rows
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        rows[unit_key(row["dataset"], row["law"])] = row
    return rows


def append_manifest(output: Path, rows: Iterable[Mapping[str, Any]]) -> None:
    path = Path(output) / MANIFEST
    torn = path.exists() and path.stat().st_size > 0 and not path.read_bytes().endswith(b"\n")
    with open(path, "a") as handle:
        if torn:  # a kill mid-write left a partial line: end it, so it stays one unreadable line on its own
            handle.write("\n")
        for row in rows:
            handle.write(json.dumps(row, default=_json_default) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    return str(value)


def fit_path(output: Path, dataset: str, law: str) -> Path:
    safe = "".join(ch if ch.isalnum() or ch in "-_.=" else "_" for ch in dataset)
    if safe != dataset or not safe.strip("."):
        # The slug alone would send "a b", "a_b" and "a/b" to one file: a hash of the exact name keeps them apart.
        safe = f"{safe}-{hashlib.sha256(dataset.encode()).hexdigest()[:10]}"
    return Path(output) / "fits" / law / f"{safe}.nc"


def check_output_names(job) -> None:
    """Refuse a job in which two (data set, law) pairs would write one fit file."""
    seen: dict[Path, tuple[str, str]] = {}
    for dataset, law in job.units():
        path = fit_path(job.output, dataset, law)
        if path in seen:
            raise JobError(f"data sets {seen[path][0]!r} and {dataset!r} would both be saved as {path}; rename one")
        seen[path] = (dataset, law)


def finished(row: Mapping[str, Any]) -> bool:
    """Whether a manifest row is final: a fit, or an error that a rerun would repeat (the data failed
    validation). Other errors (a full disk, a crash in the batch) are retried on resume."""
    if row.get("status") == "ok":
        return True
    if "retry" in row:
        return not row["retry"]
    return str(row.get("error", "")).startswith("DataError")  # rows written before the "retry" field


# ---- one shard: data sets of one law, fitted together ----


def summary_row(fit, job: Job, dataset: str, law: str, path: Path) -> dict[str, Any]:
    """The summary-table row of a finished fit."""
    from bayescale.posterior import summary

    row: dict[str, Any] = {"dataset": dataset, "law": law, "status": "ok", "error": "",
                           "num_runs": len(fit.runs), "seed": fit.seed, "file": str(path)}
    diag = fit.diagnostics
    row.update(converged=diag.converged, divergences=diag.divergences,
               max_rhat=float(diag.table["rhat"].max()), min_ess_bulk=float(diag.table["ess_bulk"].min()),
               min_ess_tail=float(diag.table["ess_tail"].min()), problems="; ".join(diag.problems),
               verdict=diag.verdict, retries=len(fit.attempts))
    table = summary(fit, quantiles=job.quantiles)
    for name, stats in table.iterrows():
        for col in ("mean", "sd", *(f"q{100 * q:g}" for q in job.quantiles), "map"):
            row[f"{name}_{col}"] = float(stats[col])
    for j, point in enumerate(job.predict_at):
        from bayescale.predictive import predict

        quantiles = predict(fit, point, seed=fit.seed).quantiles(job.quantiles)
        for col in quantiles.columns:
            if col.startswith(("mean_", "new_run_")):
                row[f"predict{j}_{col}"] = float(quantiles[col].iloc[0])
    if job.evidence:
        row.update(_evidence(fit))
    table = job.datasets[dataset]
    for column in job.metadata:
        value = table[column].iloc[0]
        row[column] = value.item() if isinstance(value, np.generic) else value
    if job.split is not None:
        row["predictions"] = held_out_predictions(fit, job, dataset)
    return row


def split_rows(job: Job, dataset: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(fitted rows, held-out rows) of a data set under the job's split column (all fitted without one)."""
    from bayescale.runs import boolean_column

    table = job.datasets[dataset]
    if job.split is None:
        return table, table.iloc[:0]
    held = boolean_column(table, job.split, "split", "True = held out: predicted, not fitted")
    return table[~held], table[held]


def held_out_predictions(fit, job: Job, dataset: str) -> list[dict[str, Any]]:
    """One record per held-out row of the data set: its label, observed output (if any) and the quantiles
    of the law's mean and of a new run there (`predict`, with the fit's seed)."""
    from bayescale.predictive import predict

    _, held = split_rows(job, dataset)
    if held.empty:
        return []
    quantiles = predict(fit, held, seed=fit.seed).quantiles(job.quantiles)
    records = []
    for i, (label, row) in enumerate(held.iterrows()):
        record = {"row": str(label)}
        if job.y in held.columns:
            record[job.y] = float(row[job.y])
        record.update({c: float(quantiles[c].iloc[i]) for c in quantiles.columns if c.startswith(("mean_", "new_run_"))})
        records.append(record)
    return records


def _evidence(fit) -> dict[str, Any]:
    try:
        from bayescale.evidence import log_evidence
    except ImportError:  # the evidence module is optional here: a job asking for it says so in its rows
        return {"log_evidence": np.nan, "log_evidence_error": np.nan, "evidence_note": "bayescale.evidence missing"}
    result = log_evidence(fit, seed=fit.seed)
    return {"log_evidence": float(result.log_z), "log_evidence_error": float(result.error)}


def error_row(dataset: str, law: str, err: BaseException) -> dict[str, Any]:
    message = f"{type(err).__name__}: {err}"
    return {"dataset": dataset, "law": law, "status": "error", "error": message, "converged": False,
            "retry": not isinstance(err, DataError)}


def job_priors(job: Job) -> dict[str, Any]:
    from bayescale.law import prior_from_text

    return {name: prior_from_text(text, f"priors.{name}") for name, text in job.priors.items()}


def run_shard(job: Job, law: str, names: Sequence[str]) -> list[dict[str, Any]]:
    """Fit data sets `names` with `law` in one batch, save each fit, return their summary rows. Data sets
    that fail validation get an error row; if the batch itself fails, each data set is retried alone."""
    import warnings

    from bayescale.batch import fit_batch
    from bayescale.law import get_law

    law_obj = get_law(law)
    rows: dict[str, dict[str, Any]] = {}
    runs = {}
    for name in names:
        try:
            fitted, _ = split_rows(job, name)
            runs[name] = runs_from_table(fitted, law_obj, columns=job.columns, y=job.y, se=job.se,
                                         allow_repeats=job.allow_repeats)
        except Exception as err:  # noqa: BLE001  a bad data set is reported, never fatal to the others
            rows[name] = error_row(name, law, err)

    def fit_group(group: list[str]) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # convergence is reported per row, not as thousands of warnings
            batch = fit_batch([runs[n] for n in group], law_obj, likelihood=job.likelihood, priors=job_priors(job),
                              discrepancy=job.discrepancy, settings=job.settings, seeds=[job.seed_of(n) for n in group],
                              map_starts=job.map_starts, num_runs=job.width(), retries=job.retries,
                              thresholds=job.thresholds)
        for i, name in enumerate(group):
            try:
                fit = batch.fit(i)
                path = fit_path(job.output, name, law)
                path.parent.mkdir(parents=True, exist_ok=True)
                fit.save(path)
                rows[name] = summary_row(fit, job, name, law, path)
            except Exception as err:  # noqa: BLE001
                rows[name] = error_row(name, law, err)

    valid = [n for n in names if n in runs]
    if valid:
        try:
            fit_group(valid)
        except Exception:  # noqa: BLE001  isolate the data set that broke the batch
            for name in valid:
                try:
                    fit_group([name])
                except Exception as err:  # noqa: BLE001
                    rows[name] = error_row(name, law, err)
    return [rows[n] for n in names]


# ---- the job ----


def plan(job: Job, done: Mapping[str, Any]) -> list[tuple[str, list[str]]]:
    """Shards still to run: (law, data set names), `shard_size` at a time, finished fits left out."""
    shards = []
    for law in job.laws:
        todo = [name for name in job.datasets if not (unit_key(name, law) in done and finished(done[unit_key(name, law)]))]
        shards += [(law, todo[i:i + job.shard_size]) for i in range(0, len(todo), job.shard_size)]
    return shards


@dataclass(frozen=True)
class JobResult:
    summary: pd.DataFrame
    output: Path
    fitted_now: int
    skipped: int

    @property
    def errors(self) -> pd.DataFrame:
        return self.summary[self.summary["status"] != "ok"]


class SimulatedKill(RuntimeError):
    """Raised by the `fail_after` testing hook to stand for a killed job."""


def run_job(job: Job | str | Path, *, backend: str = "local", progress: bool = True,
            runner: Callable | None = None, **backend_options) -> JobResult:
    """Run (or resume) a job; returns the summary table (also written to OUTPUT/summary.parquet)."""
    if not isinstance(job, Job):
        job = load_job(job)
    check_output_names(job)
    job.output.mkdir(parents=True, exist_ok=True)
    with output_lock(job.output):
        return _run_locked(job, backend, progress, runner, backend_options)


@contextlib.contextmanager
def output_lock(output: Path):
    """Hold OUTPUT/.lock for the job's lifetime; a second instance on the same folder gets a JobError."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        yield
        return
    path = Path(output) / ".lock"
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise JobError(f"another bayescale job is running on {output} (lock {path} held by {holder}); wait for "
                           f"it to finish or give this job another output folder") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}")
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _remove_stale_temporaries(output: Path) -> list[Path]:
    """Temporary files of saves that a kill interrupted (the lock guarantees no save is running)."""
    stale = [*Path(output).glob("fits/*/*.tmp"), *Path(output).glob("*.tmp")]
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def _run_locked(job: Job, backend: str, progress: bool, runner, backend_options) -> JobResult:
    _remove_stale_temporaries(job.output)
    done = read_manifest(job.output)
    skipped = sum(unit_key(*u) in done and finished(done[unit_key(*u)]) for u in job.units())
    shards = plan(job, done)
    total = sum(len(names) for _, names in shards)

    if runner is None:
        if backend == "local":
            runner = local_runner
        elif backend == "ray":
            from bayescale.ray_backend import ray_runner as runner
        else:
            raise JobError(f"unknown backend {backend!r}; choose 'local' or 'ray'")

    bar = _progress(total, progress)
    recorded = 0
    try:
        for rows in runner(job, shards, **backend_options):
            append_manifest(job.output, rows)
            # The summary follows the manifest shard by shard, so a running or killed job has one to read.
            write_summary(job)
            recorded += len(rows)
            bar.update(len(rows))
            if job.fail_after is not None and recorded >= job.fail_after:
                raise SimulatedKill(f"simulated kill after {recorded} fits")
    finally:
        bar.close()
    summary = write_summary(job)
    if job.compare:
        write_comparison(job)
    return JobResult(summary=summary, output=job.output, fitted_now=recorded, skipped=skipped)


def write_comparison(job: Job) -> pd.DataFrame:
    """Per data set, its laws compared as `bayescale.compare` would on interpolation: PSIS-LOO (`az.compare`
    on the saved fits' pointwise log-likelihoods; elpd, its difference to the best and that difference's
    standard error, stacking weights), to `comparison.parquet`; with `predict_at`, the forecast mixed across
    the laws by those weights (`bayescale.average_predict`), to `averaged.parquet`. Laws whose fit failed
    are left out of a data set's comparison and fits that did not converge are flagged, in the `note` column. PSIS-LOO
    ranks interpolation, not extrapolation: for forecasts far beyond the data, compare by backtest
    (`bayescale.backtest`). Recomputed from the fit files at the end of every run, so resumes agree."""
    import arviz as az

    from bayescale.averaging import average_predict
    from bayescale.persistence import load

    done = read_manifest(job.output)
    compared, averaged = [], []
    for dataset in job.datasets:
        rows = {law: done.get(unit_key(dataset, law)) for law in job.laws}
        usable = {law: row for law, row in rows.items() if row and row.get("status") == "ok"}
        left_out = sorted(set(job.laws) - set(usable))
        unconverged = sorted(law for law, row in usable.items() if not row.get("converged"))
        note = "; ".join(part for part in (
            f"left out (fit failed): {', '.join(left_out)}" if left_out else "",
            f"NOT CONVERGED, weights unreliable: {', '.join(unconverged)}" if unconverged else "") if part)
        if len(usable) < 2:
            compared.append({"dataset": dataset, "law": None, "note": note or "fewer than two laws to compare"})
            continue
        fits = {law: load(row["file"]) for law, row in usable.items()}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # ArviZ's Pareto-k warnings: the misfit columns of the summary say it
            table = az.compare({law: fit.data for law, fit in fits.items()},
                               var_name=observed_var(next(iter(fits.values())).data), round_to="none")  # raw numbers, not display rounding
        for law, values in table.iterrows():
            compared.append({"dataset": dataset, "law": law, "rank": int(values["rank"]),
                             "elpd_loo": float(values["elpd"]), "p_loo": float(values["p"]),
                             "elpd_diff": float(values["elpd_diff"]), "dse": float(values["dse"]),
                             "weight": float(values["weight"]), "note": note})
        weights = {law: float(w) for law, w in table["weight"].items()}
        for j, point in enumerate(job.predict_at):
            mixed = average_predict(fits, point, weights, seed=job.seed_of(dataset))
            record = {"dataset": dataset, "point": j, **{k: float(v) for k, v in point.items()}}
            for q in job.quantiles:
                record[f"mean_q{100 * q:g}"] = float(np.quantile(mixed.mean, q))
                record[f"new_run_q{100 * q:g}"] = float(np.quantile(mixed.new_run, q))
            averaged.append(record)
    comparison = pd.DataFrame(compared)
    _write_parquet(comparison, job.output / COMPARISON)
    if job.predict_at:
        _write_parquet(pd.DataFrame(averaged), job.output / AVERAGED)
    return comparison


def local_runner(job: Job, shards: Sequence[tuple[str, list[str]]]):
    """Shards one after another in this process; yields each shard's rows as it finishes."""
    for law, names in shards:
        yield run_shard(job, law, names)


def write_summary(job: Job) -> pd.DataFrame:
    """The summary table of every fit of the job that is in the manifest, in job order (atomic write); with a
    split column, also `predictions.parquet`: one row per (data set, law, held-out row)."""
    done = read_manifest(job.output)
    rows = [dict(done[unit_key(*u)]) for u in job.units() if unit_key(*u) in done]
    predicted = [{"dataset": row["dataset"], "law": row["law"], **record}
                 for row in rows for record in (row.pop("predictions", None) or [])]
    summary = pd.DataFrame(rows)
    _write_parquet(summary, job.output / SUMMARY)
    if job.split is not None:
        _write_parquet(pd.DataFrame(predicted), job.output / PREDICTIONS)
    return summary


def _write_parquet(frame: pd.DataFrame, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    frame.to_parquet(tmp, index=False)
    tmp.replace(path)


class _NoBar:
    def update(self, n):
        pass

    def close(self):
        pass


def _progress(total: int, enabled: bool):
    if not enabled:
        return _NoBar()
    try:
        from tqdm import tqdm
    except ImportError:
        return _NoBar()
    # tqdm shows count, rate (fits/s) and time left; a restarted job counts only what is left.
    return tqdm(total=total, unit="fit", desc="bayescale batch", smoothing=0.1)

