"""Property-based checks of data intake (`bayescale.runs.runs_from_table`) over generated tables.

Whatever a table holds (numbers of any sign and size, NaN, infinities, text, booleans, dates, complex numbers,
mixed objects, repeated column names, columns named like a law's inputs or their aliases), intake either
refuses it with a `DataError` that names the column, the rows or the table's shape, or returns runs whose
inputs and output are finite float64 values in the law's domain, one per row, none dropped.
"""

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import bayescale as bs
from bayescale.runs import DataError, runs_from_table

NAMES = ("N", "D", "C", "x", "params", "tokens", "flops", "loss", "Model Size", "note")
LAWS = ("chinchilla", "power_law", "finetune", "overtrain")

FLOATS = st.one_of(
    st.floats(min_value=1e-3, max_value=1e13),                     # typical positive quantities
    st.sampled_from([0.0, -1.0, -3e9, np.nan, np.inf, -np.inf, 1e200, 1e-200, 5e-324]),
    st.floats(allow_nan=True, allow_infinity=True),                 # anything at all
)


@st.composite
def column_values(draw, rows: int):
    kind = draw(st.sampled_from(["float", "float", "float", "int", "text", "bool", "datetime", "complex", "mixed"]))
    if kind == "float":
        return pd.Series(draw(st.lists(FLOATS, min_size=rows, max_size=rows)), dtype=float)
    if kind == "int":
        return pd.Series(draw(st.lists(st.integers(-10, 10**12), min_size=rows, max_size=rows)), dtype="int64")
    if kind == "text":
        return pd.Series(draw(st.lists(st.sampled_from(["1e9", "abc", "", "2.5", " 7 ", "nan"]), min_size=rows, max_size=rows)), dtype=object)
    if kind == "bool":
        return pd.Series(draw(st.lists(st.booleans(), min_size=rows, max_size=rows)), dtype=bool)
    if kind == "datetime":
        return pd.Series(pd.to_datetime(draw(st.lists(st.integers(0, 2 * 10**18), min_size=rows, max_size=rows))))
    if kind == "complex":
        return pd.Series(draw(st.lists(st.complex_numbers(max_magnitude=1e12, allow_nan=False), min_size=rows, max_size=rows)), dtype=complex)
    return pd.Series(draw(st.lists(st.sampled_from([1, "1", None, 2.5, "x", 3e9]), min_size=rows, max_size=rows)), dtype=object)


@st.composite
def random_table(draw, rows: int):
    names = draw(st.lists(st.sampled_from(NAMES), min_size=1, max_size=6))   # repeats allowed: duplicate names
    if not rows:
        return pd.DataFrame(columns=names)
    return pd.concat([draw(column_values(rows)).rename(name) for name in names], axis=1)


@st.composite
def nearly_valid_table(draw, law):
    """A table the law accepts (its inputs by name, a positive loss, distinct runs), then up to three faults:
    a bad cell, a column replaced by another kind of values, a column renamed (possibly onto another's name),
    an extra look-alike column."""
    rows = draw(st.integers(law.num_params + 1, 14))
    positive = st.floats(min_value=1.0, max_value=1e12)
    columns = {name: draw(st.lists(positive, min_size=rows, max_size=rows, unique=True)) for name in law.inputs}
    columns["loss"] = draw(st.lists(st.floats(min_value=0.5, max_value=10.0), min_size=rows, max_size=rows))
    table = pd.DataFrame(columns)
    for _ in range(draw(st.integers(0, 3))):
        fault = draw(st.sampled_from(["cell", "column", "rename", "extra"]))
        target = draw(st.sampled_from(list(table.columns)))
        position = list(table.columns).index(target)
        if fault == "cell":
            row = draw(st.integers(0, rows - 1))
            value = draw(st.one_of(FLOATS, st.sampled_from(["abc", None, "3"])))
            table[target] = table[target].astype(object)   # any value may go into any cell
            table.iat[row, position] = value
        elif fault == "column":
            table[target] = draw(column_values(rows)).to_numpy()
        elif fault == "rename":
            table.columns = [draw(st.sampled_from(NAMES)) if i == position else c for i, c in enumerate(table.columns)]
        else:
            table = pd.concat([table, draw(column_values(rows)).rename(draw(st.sampled_from(NAMES)))], axis=1)
    return table


@st.composite
def intake_cases(draw):
    law = bs.get_law(draw(st.sampled_from(LAWS)))
    if draw(st.booleans()):
        table = draw(nearly_valid_table(law))
    else:
        table = draw(random_table(draw(st.integers(0, 12))))
    mapped = draw(st.dictionaries(st.sampled_from([*law.inputs, "C", "N", "D"]), st.sampled_from(NAMES), max_size=2))
    y = draw(st.sampled_from(["loss", "loss", "note", "Model Size"]))
    return table, law, mapped, y


def names_what_is_wrong(message: str, table: pd.DataFrame) -> bool:
    """The message names a column of the table, rows, the law's inputs, or the table's size."""
    return (any(repr(str(c)) in message for c in table.columns) or "rows" in message or "input" in message
            or "runs" in message or "column" in message)


# derandomize: the same 1,000 tables in every CI run, so a failure reproduces; drop it locally to explore new ones.
@settings(max_examples=1000, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(intake_cases())
@pytest.mark.filterwarnings("error::numpy.exceptions.ComplexWarning")  # a complex value must be refused, not cast
def test_intake_refuses_by_name_or_returns_finite_inputs_in_the_laws_domain(case):
    table, law, mapped, y = case
    try:
        runs = runs_from_table(table, law, columns=mapped, y=y)
    except DataError as err:
        assert names_what_is_wrong(str(err), table), str(err)
        return
    assert len(runs.y) == len(table), "a row was dropped or added"
    assert runs.y.dtype == np.float64 and np.all(np.isfinite(runs.y)) and np.all(runs.y > 0)
    for name in law.inputs:
        values = runs.x[name]
        assert values.dtype == np.float64 and values.shape == (len(table),)
        assert np.all(np.isfinite(values))
        assert np.all(values >= 0) if name in law.nonnegative_inputs else np.all(values > 0), (name, values)
        assert np.all((values == 0) | ((np.abs(values) <= 1e60) & (np.abs(values) >= 1e-60)))


def test_the_generator_reaches_acceptance_and_every_kind_of_refusal():
    # A property test that only ever sees refusals would assert nothing about accepted tables: check that the
    # strategy produces both on a fixed sample.
    outcomes = {"accepted": 0, "refused": 0}

    @settings(max_examples=300, deadline=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(intake_cases())
    def tally(case):
        table, law, mapped, y = case
        try:
            runs_from_table(table, law, columns=mapped, y=y)
            outcomes["accepted"] += 1
        except DataError:
            outcomes["refused"] += 1

    tally()
    assert outcomes["accepted"] >= 30 and outcomes["refused"] >= 100, outcomes


@pytest.mark.parametrize("values, kind", [
    (pd.to_datetime(["2024-01-01", "2024-02-01", "2024-03-01"]), "dates or times"),
    ([1 + 2j, 3 + 0j, 5 + 1j], "complex numbers"),
    ([True, False, True], "booleans"),
])
def test_quantities_of_the_wrong_type_are_refused_by_column(values, kind):
    table = pd.DataFrame({"x": values, "loss": [3.0, 2.5, 2.2]})
    with pytest.raises(DataError, match=f"column 'x' \\(input x\\) holds {kind}"):
        runs_from_table(table, bs.get_law("power_law"), y="loss")
