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
    if isinstance(source, pd.DataFrame):
        return source
    path = Path(source)
    if not path.exists():
        raise DataError(f"no such file: {path}")
    suffix = path.suffix.lower()
    if suffix in {".parquet", ".pq"}:
        return pd.read_parquet(path)
    if suffix == ".tsv":
        return pd.read_csv(path, sep="\t")
    if suffix in {".csv", ".txt", ""}:
        return pd.read_csv(path)
    raise DataError(f"{path}: unknown table format {suffix!r}; use CSV, TSV or Parquet")


def _rows(labels: np.ndarray, bad: np.ndarray, limit: int = 8) -> str:
    shown = [str(v) for v in labels[bad][:limit]]
    more = int(bad.sum()) - len(shown)
    return ", ".join(shown) + (f" and {more} more" if more > 0 else "")


def _numeric_column(table: pd.DataFrame, column: str, role: str, labels: np.ndarray) -> np.ndarray:
    if column not in table.columns:
        raise DataError(
            f"column {column!r} ({role}) is not in the table; columns are: {', '.join(map(str, table.columns))}"
        )
    values = pd.to_numeric(table[column], errors="coerce").to_numpy(dtype=float)
    text = table[column].notna().to_numpy() & np.isnan(values)
    if text.any():
        raise DataError(f"column {column!r} ({role}) is not numeric at rows {_rows(labels, text)}")
    missing = np.isnan(values)
    if missing.any():
        raise DataError(f"column {column!r} ({role}) has missing values (NaN) at rows {_rows(labels, missing)}")
    infinite = np.isinf(values)
    if infinite.any():
        raise DataError(f"column {column!r} ({role}) has infinite values at rows {_rows(labels, infinite)}")
    return values


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
    positive_output: bool = True,
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
    (`Runs.prev`, for the "ar1" likelihood); steps must be unique within a run.
    """
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
    for name in wanted:
        if name in available:
            continue
        column = _find_column(table, name)
        if column is not None:
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

    y_values = se_values = None
    if y is not None:
        y_values = _numeric_column(table, y, "output", labels)
        if positive_output:
            _require_positive(y_values, f"output column {y!r}", labels)
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
            groups = keys[dup].groupby(list(keys.columns), sort=False).groups
            first = list(groups.values())[0]
            raise DataError(
                f"duplicate runs: {int(dup.sum())} rows share their inputs ({', '.join(law.inputs)}), e.g. rows "
                f"{', '.join(str(labels[i]) for i in first)}; remove them, or pass allow_repeats=True "
                f"(CLI --allow-repeats) if they are repeated seeds"
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


def points_from_mapping(at: Mapping[str, float | Sequence[float]] | pd.DataFrame, law: Law) -> Runs:
    """Inputs to predict at, given as {"N": 70e9, "D": 1.4e12} or a DataFrame; derived and validated."""
    frame = at if isinstance(at, pd.DataFrame) else pd.DataFrame({k: np.atleast_1d(v) for k, v in at.items()})
    return runs_from_table(frame, law, columns={str(c): c for c in frame.columns}, y=None, allow_repeats=True)
