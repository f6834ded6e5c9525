"""Data intake: a table of training runs -> validated arrays of a law's inputs and output.

Accepts a pandas DataFrame or a path to CSV/TSV/Parquet. Columns are mapped to the law's inputs
(`columns={"N": "Model Size", "C": "Training FLOP"}`); inputs the table lacks are derived where an identity
allows (D = C / (6 N), M = D / N, ...). Every check names the column and the rows at fault, and nothing is
dropped silently: a bad table is an error, never a smaller fit.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bayescale.law import Derivation, Law


class DataError(ValueError):
    """The table of runs cannot be used as it is; the message says which column or rows and why."""


@dataclass(frozen=True)
class Runs:
    """Validated runs: law inputs `x` (user units, float64), output `y`, optional standard errors `se`."""

    x: dict[str, np.ndarray]
    y: np.ndarray | None
    se: np.ndarray | None = None
    labels: np.ndarray = field(default_factory=lambda: np.array([]))
    sources: dict[str, str] = field(default_factory=dict)  # law input -> column or derivation it came from
    output: str = "loss"
    groups: np.ndarray | None = None        # grouped fits: each run's group, an index into group_labels
    group_labels: tuple = ()
    group_column: str | None = None
    prev: np.ndarray | None = None         # training curves: index of the run's preceding point, -1 if first

    def __len__(self) -> int:
        return len(next(iter(self.x.values())))

    def to_frame(self) -> pd.DataFrame:
        frame = pd.DataFrame(self.x, index=self.labels)
        if self.y is not None:
            frame[self.output] = self.y
        if self.se is not None:
            frame["se"] = self.se
        if self.groups is not None:
            frame[self.group_column] = np.asarray(self.group_labels, dtype=object)[self.groups]
        return frame


def read_table(source: pd.DataFrame | str | Path) -> pd.DataFrame:
    """A table from a DataFrame (as is) or a CSV, TSV or Parquet file; every unreadable file is a `DataError`
    naming it."""
    if isinstance(source, pd.DataFrame):
        return source
    path = Path(source)
    if not path.exists():
        raise DataError(f"no such file: {path}")
    if path.is_dir():
        raise DataError(f"{path} is a folder, not a table file (CSV, TSV or Parquet)")
    suffix = path.suffix.lower()
    try:
        if suffix in {".parquet", ".pq"}:
            return pd.read_parquet(path)
        if suffix in {".tsv", ".csv", ".txt", ""}:
            sep = "\t" if suffix == ".tsv" else ","
            # pandas renames a repeated header ("loss", "loss.1") silently; which copy is meant is the user's call.
            names = [str(v) for v in pd.read_csv(path, sep=sep, nrows=1, header=None).iloc[0]]
            repeated = sorted({n for n in names if names.count(n) > 1})
            if repeated:
                raise DataError(f"{path}: column names {repeated} appear more than once in the header; rename the copies")
            return pd.read_csv(path, sep=sep)
    except pd.errors.EmptyDataError:
        raise DataError(f"{path} is empty: no header and no rows") from None
    except UnicodeDecodeError as err:
        raise DataError(f"{path} is not UTF-8 text (byte {err.start}: {err.reason}); save it as UTF-8 CSV") from None
    except (pd.errors.ParserError, OSError, ValueError) as err:
        if isinstance(err, DataError):
            raise
        raise DataError(f"{path} could not be read as a {suffix.lstrip('.') or 'CSV'} table: {err}") from None
    raise DataError(f"{path}: unknown table format {suffix!r}; use CSV, TSV or Parquet")


def _rows(labels: np.ndarray, bad: np.ndarray, limit: int = 8) -> str:
    shown = [str(v) for v in labels[bad][:limit]]
    more = int(bad.sum()) - len(shown)
    return ", ".join(shown) + (f" and {more} more" if more > 0 else "")


def _numeric_column(table: pd.DataFrame, column: str, role: str, labels: np.ndarray,
                    allow_missing: bool = False) -> np.ndarray:
    """The column as floats, refused by name and rows where it is not real numbers; empty cells are NaN when
    `allow_missing`, an error otherwise."""
    if column not in table.columns:
        raise DataError(
            f"column {column!r} ({role}) is not in the table; columns are: {', '.join(map(str, table.columns))}"
        )
    series = table[column]
    if isinstance(series, pd.DataFrame):
        raise DataError(f"column name {column!r} ({role}) appears {series.shape[1]} times in the table; rename the copies")
    kind = ("dates or times" if pd.api.types.is_datetime64_any_dtype(series) or pd.api.types.is_timedelta64_dtype(series)
            else "complex numbers" if pd.api.types.is_complex_dtype(series)
            else "booleans (True/False)" if pd.api.types.is_bool_dtype(series) else None)
    if kind is not None:
        raise DataError(f"column {column!r} ({role}) holds {kind}, not numbers; convert it to the quantity's units")
    if series.dtype == object:
        # A mixed column: complex numbers would lose their imaginary part and booleans become 0/1 silently.
        odd = series.map(lambda v: isinstance(v, complex | np.complexfloating | bool | np.bool_)).to_numpy(dtype=bool)
        if odd.any():
            raise DataError(f"column {column!r} ({role}) holds booleans or complex numbers, not real numbers, at rows "
                            f"{_rows(labels, odd)}")
    values = pd.to_numeric(series, errors="coerce").to_numpy(dtype=float)
    text = table[column].notna().to_numpy() & np.isnan(values)
    if text.any():
        raise DataError(f"column {column!r} ({role}) is not numeric at rows {_rows(labels, text)}")
    missing = np.isnan(values)
    if missing.any() and not allow_missing:
        raise DataError(f"column {column!r} ({role}) has missing values (NaN) at rows {_rows(labels, missing)}")
    infinite = np.isinf(values)
    if infinite.any():
        raise DataError(f"column {column!r} ({role}) has infinite values at rows {_rows(labels, infinite)}")
    return values


# Scaling inputs span about 1e-3 (a learning rate) to 1e30 (FLOPs); beyond 1e+-60, powers such as N^alpha and
# products such as 6 N D leave float64's range during sampling, which then fails as a misleading convergence
# problem. Such values are almost always a units error (e.g. log-values exponentiated twice).
MAGNITUDE_LIMIT = 1e60


def _require_sane_magnitude(values: np.ndarray, what: str, labels: np.ndarray) -> None:
    size = np.abs(values)
    bad = (size > MAGNITUDE_LIMIT) | ((size > 0) & (size < 1.0 / MAGNITUDE_LIMIT))
    if bad.any():
        worst = float(size[bad][np.argmax(np.abs(np.log10(size[bad])))])
        raise DataError(f"{what} has values of magnitude {worst:.3g} at rows {_rows(labels, bad)}: outside "
                        f"1e-60..1e60, where powers of it overflow float64; check the units of the column")


def _require_positive(values: np.ndarray, what: str, labels: np.ndarray) -> None:
    bad = values <= 0
    if bad.any():
        raise DataError(f"{what} must be positive; non-positive at rows {_rows(labels, bad)}")


# Column names that studies use for the standard inputs, matched after lower-casing and folding spaces,
# hyphens and underscores; an exact column name always wins.
ALIASES: dict[str, tuple[str, ...]] = {
    "N": ("n", "params", "parameters", "n_params", "num_params", "n_parameters", "model_size", "model_params"),
    "D": ("d", "tokens", "n_tokens", "d_tokens", "num_tokens", "training_tokens", "data"),
    "C": ("c", "flops", "compute", "training_flop", "training_flops", "flops_6nd", "training_compute"),
}


def _fold(name) -> str:
    return "".join("_" if ch in " -_" else ch for ch in str(name).strip().lower())


def _derivable(available: Mapping[str, np.ndarray], needed: Sequence[str], derivations: Sequence[Derivation]) -> bool:
    try:
        resolve_inputs({k: v[:1] for k, v in available.items()}, needed, derivations)
    except DataError:
        return False
    return True


def _find_column(table: pd.DataFrame, name: str) -> str | None:
    """The column for an input the user did not map: its exact name, else a unique alias match."""
    if name in table.columns:
        return name
    wanted = {_fold(name), *ALIASES.get(name, ())}
    matches = [c for c in table.columns if _fold(c) in wanted]
    if len(matches) > 1:
        raise DataError(
            f"law input {name!r} is ambiguous: columns {matches} could all be it; map one explicitly "
            f"(columns={{{name!r}: ...}} or --column {name}=COLUMN)"
        )
    return matches[0] if matches else None


def resolve_inputs(
    available: Mapping[str, np.ndarray], needed: Sequence[str], derivations: Sequence[Derivation]
) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Compute the needed inputs from those available, applying derivations until nothing changes."""
    values = dict(available)
    how = {k: k for k in available}
    changed = True
    while changed and not all(k in values for k in needed):
        changed = False
        for rule in derivations:
            if rule.target not in values and all(s in values for s in rule.sources):
                # Overflow or division by zero gives inf/NaN here, which intake then refuses by row.
                with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
                    values[rule.target] = rule.compute(*(values[s] for s in rule.sources))
                how[rule.target] = rule.description or f"{rule.target} from {', '.join(rule.sources)}"
                changed = True
    missing = [k for k in needed if k not in values]
    if missing:
        hints = [
            f"{r.target} from ({', '.join(r.sources)})" for r in derivations if r.target in missing
        ]
        raise DataError(
            f"law inputs {missing} are neither columns nor derivable from {sorted(available)}"
            + (f"; derivable as {'; '.join(hints)}" if hints else "")
            + "; map columns with columns={'N': 'my column'} (CLI: --column N=COLUMN)"
        )
    return {k: values[k] for k in needed}, {k: how[k] for k in needed}


def runs_from_table(
    source: pd.DataFrame | str | Path,
    law: Law,
    *,
    columns: Mapping[str, str] | None = None,
    y: str | None = "loss",
    se: str | None = None,
    allow_repeats: bool = False,
    positive_output: bool | None = None,
    group: str | None = None,
    sequence: tuple[str, str] | None = None,
) -> Runs:
    """Validate a table for `law` and return its runs.

    `columns` maps input names (the law's, or ones it derives from such as C) to table columns; unmapped law
    inputs are looked up by name. `y=None` reads inputs only (points to predict at). `allow_repeats` accepts
    several runs at the same inputs (seeds); otherwise duplicates are an error. `group` names a column
    whose values label each run's group (grouped fits, `bayescale.grouping`); runs may then repeat inputs
    across groups, not within one. `sequence=(run column, step column)` marks points of training curves:
    rows are put in (run, step) order (labels kept) and each point records its run's preceding point
    (`Runs.prev`, for the "ar1" likelihood); steps must be unique within a run. The output must be positive
    for a law on the log scale and may be zero or negative for one declaring `output_scale="raw"`
    (`positive_output` overrides); inputs must be positive except the law's `nonnegative_inputs` (>= 0).
    """
    if positive_output is None:
        positive_output = law.numpyro_model is not None or law.output_scale == "log"
    table = read_table(source)
    if len(table) == 0:
        raise DataError("the table has no rows")
    prev = None
    if sequence is not None:
        table, prev = _sequence_order(table, *sequence)
    labels = np.asarray(table.index)
    columns = dict(columns or {})
    derivations = law.all_derivations()

    available: dict[str, np.ndarray] = {}
    sources: dict[str, str] = {}
    for name, column in columns.items():
        available[name] = _numeric_column(table, column, f"input {name}", labels)
        sources[name] = column
    wanted = dict.fromkeys([*law.inputs, *(s for rule in derivations for s in rule.sources)])
    for name in wanted:  # columns named exactly as an input are the user's own naming, not a guess
        if name not in available and name in table.columns:
            available[name] = _numeric_column(table, name, f"input {name}", labels)
            sources[name] = name
    if not _derivable(available, law.inputs, derivations):
        # Only now guess columns by alias ("params", "flops", ...): an input that is mapped or derivable from
        # what is mapped is never taken from a look-alike column the user did not name.
        for name in wanted:
            if name in available:
                continue
            column = _find_column(table, name)
            if column is not None and column not in sources.values():
                available[name] = _numeric_column(table, column, f"input {name}", labels)
                sources[name] = column
    for name, values in available.items():
        if name in law.nonnegative_inputs:
            bad = values < 0
            if bad.any():
                raise DataError(f"input {name} (column {sources[name]!r}) must be >= 0; negative at rows {_rows(labels, bad)}")
            continue
        _require_positive(values, f"input {name} (column {sources[name]!r})", labels)

    x, how = resolve_inputs(available, law.inputs, derivations)
    x = {k: np.asarray(v, dtype=float) for k, v in x.items()}
    for name in law.inputs:
        if name not in sources:
            sources[name] = f"derived: {how[name]}"
            bad = ~np.isfinite(x[name]) | (x[name] <= 0)
            if bad.any():
                raise DataError(f"derived input {name} ({how[name]}) is not positive and finite at rows {_rows(labels, bad)}")

    for name in law.inputs:
        _require_sane_magnitude(x[name], f"input {name} ({sources[name]})", labels)

    y_values = se_values = None
    if y is not None:
        y_values = _numeric_column(table, y, "output", labels)
        if positive_output:
            bad = y_values <= 0
            if bad.any():
                raise DataError(f"output column {y!r} must be positive: law {law.name!r} models it on the log scale; "
                                f"non-positive at rows {_rows(labels, bad)}. A signed output (a difference, a "
                                "normalised score) needs a law declared with output_scale='raw'")
        _require_sane_magnitude(y_values, f"output column {y!r}", labels)
    if se is not None:
        se_values = _numeric_column(table, se, "standard error", labels)
        _require_positive(se_values, f"standard-error column {se!r}", labels)

    codes, group_labels = None, ()
    if group is not None:
        if group not in table.columns:
            raise DataError(f"group column {group!r} is not in the table; columns are: {', '.join(map(str, table.columns))}")
        missing = table[group].isna().to_numpy()
        if missing.any():
            raise DataError(f"group column {group!r} is empty at rows {_rows(labels, missing)}")
        codes, uniques = pd.factorize(table[group], sort=True)
        group_labels = tuple(uniques.tolist())

    if not allow_repeats:
        keys = pd.DataFrame({k: x[k] for k in law.inputs})
        if codes is not None:
            keys[f"group {group}"] = codes
        if sequence is not None:
            keys[f"run {sequence[0]}"] = table[sequence[0]].to_numpy()
        dup = keys.duplicated(keep=False).to_numpy()
        if dup.any():
            # The rows that share the first repeated key (exact equality: the inputs are finite floats).
            first = np.flatnonzero((keys == keys[dup].iloc[0]).all(axis=1).to_numpy())
            # Rows that share the law's inputs but differ elsewhere may be different setups (model sizes in a
            # learning-rate sweep), not seeds: pooling them with allow_repeats would be a different model.
            rows = table.iloc[list(first)]
            skip = {y, se, *(sources.get(n) for n in law.inputs)}
            differing = [str(c) for c in table.columns if c not in skip and rows[c].nunique(dropna=False) > 1]
            hint = (f"; they differ in columns {differing[:6]}: if those are seeds or repeats, pass allow_repeats=True "
                    f"(CLI --allow-repeats); if they are different setups (model sizes, data), fit each setup "
                    f"separately (group=..., fit_batch(table, law, group=...)) or use a law with those inputs"
                    if differing else
                    "; remove them, or pass allow_repeats=True (CLI --allow-repeats) if they are repeated seeds")
            raise DataError(
                f"duplicate runs: {int(dup.sum())} rows share their inputs ({', '.join(law.inputs)}), e.g. rows "
                f"{', '.join(str(labels[i]) for i in first)}{hint}"
            )

    if y is not None and law.numpyro_model is None:
        need = law.num_params + 1
        if len(table) < need:
            raise DataError(
                f"law {law.name!r} has {law.num_params} parameters ({', '.join(law.param_names)}); "
                f"the table has {len(table)} runs, fewer than the {need} needed to fit it"
            )
    return Runs(x=x, y=y_values, se=se_values, labels=labels, sources=sources, output=y or "loss",
                groups=codes, group_labels=group_labels, group_column=group, prev=prev)


def _sequence_order(table: pd.DataFrame, run: str, step: str) -> tuple[pd.DataFrame, np.ndarray]:
    """The table in (run, step) order and each row's predecessor in its run (-1 for the first)."""
    labels = np.asarray(table.index)
    for column in (run, step):
        if column not in table.columns:
            raise DataError(f"sequence column {column!r} is not in the table; columns are: {', '.join(map(str, table.columns))}")
    missing = table[run].isna().to_numpy()
    if missing.any():
        raise DataError(f"run column {run!r} is empty at rows {_rows(labels, missing)}")
    _numeric_column(table, step, "step", labels)
    repeated = table.duplicated([run, step], keep=False).to_numpy()
    if repeated.any():
        raise DataError(f"steps repeat within a run ({run!r}, {step!r}) at rows {_rows(labels, repeated)}")
    ordered = table.sort_values([run, step], kind="stable")
    first = (ordered[run] != ordered[run].shift()).to_numpy()
    prev = np.where(first, -1, np.arange(len(ordered)) - 1)
    return ordered, prev


def points_from_mapping(at: Mapping[str, float | Sequence[float]] | pd.DataFrame, law: Law,
                        sources: Mapping[str, str] | None = None) -> Runs:
    """Inputs to predict at, given as {"N": 70e9, "D": 1.4e12} or a DataFrame; derived and validated.

    Every key of a mapping must be an input (or one the law's inputs derive from). A DataFrame may carry
    other columns (names, outputs, notes): its inputs are found by name, as in `runs_from_table`, or by
    `sources`, the input -> column mapping of the fitted table (`Runs.sources`), so the table a law was
    fitted to (or one like it) can be passed back as is."""
    wanted = {*law.inputs, *(s for rule in law.all_derivations() for s in rule.sources)}
    if not isinstance(at, pd.DataFrame):
        unknown = sorted(str(k) for k in at if k not in wanted)
        if unknown:
            raise DataError(f"unknown inputs {unknown} for law {law.name!r}: its inputs are {list(law.inputs)}"
                            f" (or inputs they derive from: {sorted(wanted - set(law.inputs))})")
        frame = pd.DataFrame({k: np.atleast_1d(v) for k, v in at.items()})
        return runs_from_table(frame, law, columns={str(c): c for c in frame.columns}, y=None, allow_repeats=True)
    columns = {name: column for name, column in (sources or {}).items()
               if name in wanted and column in at.columns and name not in at.columns}
    return runs_from_table(at, law, columns=columns, y=None, allow_repeats=True)


# The column a multi-output table is grouped by once its output columns are stacked (`outputs_long`).
OUTPUT_COLUMN = "output"


def outputs_long(source: pd.DataFrame | str | Path, outputs: Sequence[str], value_name: str = "loss") -> pd.DataFrame:
    """A table with one column per output (a loss per domain, per task) as a long table: one row per
    (run, output) cell that holds a value, the value in column `value_name` and the output's column name in
    column "output" (`OUTPUT_COLUMN`), every other column repeated. Row labels become "<row>:<output>", so
    messages and the fit's "run" coordinate name the cell. An empty cell is an output that was not measured for
    that run: it is not an observation (and not an error); a row with no output at all, or an output column with
    no value, is an error."""
    table = read_table(source)
    if len(table) == 0:
        raise DataError("the table has no rows")
    outputs = [str(o) for o in outputs]
    if len(outputs) < 2:
        raise DataError(f"a multi-output fit needs at least two output columns, got {outputs}")
    repeated = sorted({o for o in outputs if outputs.count(o) > 1})
    if repeated:
        raise DataError(f"output columns repeated: {repeated}")
    missing = [o for o in outputs if o not in table.columns]
    if missing:
        raise DataError(f"output columns {missing} are not in the table; columns are: {', '.join(map(str, table.columns))}")
    for name in (value_name, OUTPUT_COLUMN):
        if name in table.columns and name not in outputs:
            raise DataError(f"the table has a column {name!r}, which a multi-output fit uses for the stacked outputs; "
                            f"rename it (or list it among the outputs)")
    labels = np.asarray(table.index)
    values = {}
    for o in outputs:
        values[o] = _numeric_column(table, o, f"output {o}", labels, allow_missing=True)
        if np.isnan(values[o]).all():
            raise DataError(f"output column {o!r} has no value in any row")
    present = np.stack([~np.isnan(values[o]) for o in outputs])
    empty = ~present.any(axis=0)
    if empty.any():
        raise DataError(f"rows {_rows(labels, empty)} have no value in any output column {outputs}; remove them")
    rest = table.drop(columns=outputs)
    parts = []
    for i, o in enumerate(outputs):
        part = rest.iloc[present[i]].copy()
        part[value_name] = values[o][present[i]]
        # Categories in the caller's order: the fit's groups (and predictions) keep the order of `outputs`.
        part[OUTPUT_COLUMN] = pd.Categorical([o] * len(part), categories=outputs)
        part.index = [f"{label}:{o}" for label in labels[present[i]]]
        parts.append(part)
    return pd.concat(parts)


def split_datasets(table: pd.DataFrame, column: str | None) -> dict[Any, pd.DataFrame]:
    """The table's independent data sets by `column` (None: the whole table as one). Values are kept as they
    are: 1 and "1" are different data sets, and an empty value is an error."""
    if column is None:
        return {None: table}
    if column not in table.columns:
        raise DataError(f"data-set column {column!r} is not in the table; columns are: {', '.join(map(str, table.columns))}")
    missing = table[column].isna().to_numpy()
    if missing.any():
        rows = ", ".join(str(v) for v in table.index[missing][:8])
        raise DataError(f"data-set column {column!r} is empty at rows {rows}")
    keys = [(type(v).__name__, v) for v in table[column]]
    out: dict[Any, list[int]] = {}
    for position, key in enumerate(keys):
        out.setdefault(key, []).append(position)
    by_text: dict[str, list] = {}
    for _, value in out:
        by_text.setdefault(str(value), []).append(value)
    clashes = {text: values for text, values in by_text.items() if len(values) > 1}
    if clashes:
        shown = "; ".join(f"{text!r} from {[f'{v!r} ({type(v).__name__})' for v in values]}"
                          for text, values in list(clashes.items())[:5])
        raise DataError(f"data-set column {column!r} holds different values that print the same, which would merge "
                        f"their data sets: {shown}; give the column a single type")
    return {value: table.iloc[positions] for (_, value), positions in out.items()}


def boolean_column(table: pd.DataFrame, column: str, role: str, meaning: str) -> np.ndarray:
    """A column of booleans (True/False or 1/0) as a bool array; any other value, empty cells included, is an
    error naming the rows. `role` names the column's use in messages ("hold-out"), `meaning` what True says."""
    if column not in table.columns:
        raise DataError(f"{role} column {column!r} is not in the table; columns are: {', '.join(map(str, table.columns))}")
    values = table[column]
    if values.dtype == bool:
        return values.to_numpy()
    ok = values.isin([0, 1, True, False]) & values.notna()
    if not ok.all():
        rows = ", ".join(str(v) for v in table.index[~ok.to_numpy()][:8])
        raise DataError(f"{role} column {column!r} must hold booleans ({meaning}) or 0/1; other values at rows {rows}")
    return values.astype(bool).to_numpy()
