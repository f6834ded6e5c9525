"""Data intake: every bad input gets an error naming the column or rows; nothing is dropped silently."""

import numpy as np
import pandas as pd
import pytest

import bayescale as bs
from bayescale.runs import DataError, runs_from_table

LAW = bs.get_law("chinchilla")


def table(**overrides):
    base = pd.DataFrame(
        {"N": [1e8, 2e8, 4e8, 8e8, 1.6e9, 3.2e9, 6.4e9], "D": [2e9, 4e9, 8e9, 1.6e10, 3.2e10, 6.4e10, 1.28e11]}
    )
    base["loss"] = 1.8 + 400 / base.N**0.34 + 2000 / base.D**0.37
    for column, values in overrides.items():
        base[column] = values
    return base


def test_valid_table_passes_through_unchanged():
    runs = runs_from_table(table(), LAW)
    assert len(runs) == 7
    np.testing.assert_allclose(runs.x["N"], table().N)
    np.testing.assert_allclose(runs.y, table().loss)
    assert runs.sources == {"N": "N", "D": "D"}


def test_derived_tokens_from_compute():
    t = table()
    t["C"] = 6 * t.N * t.D
    runs = runs_from_table(t.drop(columns="D"), LAW)
    np.testing.assert_allclose(runs.x["D"], table().D)
    assert "derived" in runs.sources["D"]


def test_column_mapping_with_spaces(chinchilla_table):
    runs = runs_from_table(chinchilla_table, LAW, columns={"N": "Model Size", "C": "Training FLOP"})
    assert len(runs) == 245
    np.testing.assert_allclose(runs.x["D"], chinchilla_table["Training FLOP"] / (6 * chinchilla_table["Model Size"]))


def test_nan_names_column_and_row():
    with pytest.raises(DataError, match=r"column 'loss' .*NaN.* rows 3"):
        runs_from_table(table(loss=[2.5, 2.4, 2.3, np.nan, 2.1, 2.0, 1.9]), LAW)


def test_inf_names_column_and_row():
    with pytest.raises(DataError, match=r"column 'N' .*infinite.* rows 5"):
        runs_from_table(table(N=[1e8, 2e8, 4e8, 8e8, 1.6e9, np.inf, 6.4e9]), LAW)


def test_non_positive_size_names_rows():
    with pytest.raises(DataError, match=r"input D \(column 'D'\) must be positive; non-positive at rows 0, 2"):
        runs_from_table(table(D=[0.0, 4e9, -1.0, 1.6e10, 3.2e10, 6.4e10, 1.28e11]), LAW)


def test_extreme_magnitudes_are_a_units_error_before_sampling():
    with pytest.raises(DataError, match=r"input N \(N\) has values of magnitude 1e\+290 at rows 2: .*check the units"):
        runs_from_table(table(N=[1e8, 2e8, 1e290, 8e8, 1.6e9, 3.2e9, 6.4e9]), LAW)
    with pytest.raises(DataError, match=r"output column 'loss' has values of magnitude 1e-300 at rows 0"):
        runs_from_table(table(loss=[1e-300, 2.4, 2.3, 2.2, 2.1, 2.0, 1.9]), LAW)
    t = table()
    t["C"] = 6 * t.N * t.D * 1e50  # a derived input out of range is named with its derivation
    with pytest.raises(DataError, match=r"input D \(derived: .*\) has values of magnitude"):
        runs_from_table(t.drop(columns="D"), LAW)


def test_non_positive_loss_names_rows():
    with pytest.raises(DataError, match=r"output column 'loss' must be positive.* rows 6"):
        runs_from_table(table(loss=[2.5, 2.4, 2.3, 2.2, 2.1, 2.0, 0.0]), LAW)


def test_non_numeric_values_name_rows():
    with pytest.raises(DataError, match=r"column 'N' .*not numeric at rows 1"):
        runs_from_table(table(N=[1e8, "big", 4e8, 8e8, 1.6e9, 3.2e9, 6.4e9]), LAW)


def test_missing_mapped_column_lists_available():
    with pytest.raises(DataError, match=r"column 'params' \(input N\) is not in the table; columns are: N, D, loss"):
        runs_from_table(table(), LAW, columns={"N": "params"})


def test_missing_output_column():
    with pytest.raises(DataError, match=r"column 'val_loss' \(output\) is not in the table"):
        runs_from_table(table(), LAW, y="val_loss")


def test_missing_input_says_how_to_map_or_derive():
    with pytest.raises(DataError, match=r"law inputs \['D'\] are neither columns nor derivable.*D from \(C, N\)"):
        runs_from_table(table().drop(columns="D"), LAW)


def test_standard_column_names_are_recognised(chinchilla_table):
    runs = runs_from_table(chinchilla_table, LAW)  # "Model Size" -> N, "Training FLOP" -> C -> D
    assert runs.sources["N"] == "Model Size"
    assert "derived" in runs.sources["D"]


def test_ambiguous_columns():
    t = table().rename(columns={"N": "params"})
    t["n_params"] = t["params"]
    with pytest.raises(DataError, match=r"law input 'N' is ambiguous: columns \['params', 'n_params'\]"):
        runs_from_table(t, LAW)
    assert len(runs_from_table(t, LAW, columns={"N": "params"})) == 7


def test_duplicate_runs_name_rows():
    t = table()
    t.loc[4, ["N", "D"]] = t.loc[1, ["N", "D"]]
    with pytest.raises(DataError, match=r"duplicate runs: 2 rows share their inputs \(N, D\), e.g. rows 1, 4"):
        runs_from_table(t, LAW)
    assert len(runs_from_table(t, LAW, allow_repeats=True)) == 7


def test_repeated_inputs_that_differ_in_another_column_are_called_different_setups():
    """A learning-rate sweep at two model sizes: the bowl's inputs (lr, batch) repeat across sizes, and the
    message says the rows differ in N instead of advising to pool them as seeds."""
    sweep = pd.DataFrame({"lr": [1e-3, 2e-3, 4e-3] * 2, "batch": [1e6] * 6, "N": [1e8] * 3 + [1e9] * 3,
                          "loss": [3.1, 3.0, 3.05, 2.6, 2.5, 2.55]})
    with pytest.raises(DataError, match=r"rows 0, 3; they differ in columns \['N'\].*different setups"):
        runs_from_table(sweep, bs.get_law("lr_batch_bowl"))


def test_too_few_points_for_the_law():
    with pytest.raises(DataError, match=r"law 'chinchilla' has 5 parameters .*the table has 5 runs, fewer than the 6"):
        runs_from_table(table().iloc[:5], LAW)


def test_empty_table():
    with pytest.raises(DataError, match="no rows"):
        runs_from_table(table().iloc[:0], LAW)


def test_files_csv_and_parquet(tmp_path):
    t = table()
    t.to_csv(tmp_path / "runs.csv", index=False)
    t.to_parquet(tmp_path / "runs.parquet")
    for name in ("runs.csv", "runs.parquet"):
        np.testing.assert_allclose(runs_from_table(tmp_path / name, LAW).y, t.loss)
    with pytest.raises(DataError, match="no such file"):
        runs_from_table(tmp_path / "missing.csv", LAW)
    (tmp_path / "runs.xlsx").write_text("x")
    with pytest.raises(DataError, match="unknown table format '.xlsx'"):
        runs_from_table(tmp_path / "runs.xlsx", LAW)


def test_unused_columns_with_nan_are_ignored():
    t = table()
    t["notes"] = [np.nan] * 7
    assert len(runs_from_table(t, LAW)) == 7


def test_a_mapped_or_derivable_input_is_never_taken_from_a_look_alike_column():
    overtrain = bs.get_law("overtrain")  # inputs C and M, derivable from N and D
    t = table().rename(columns={"N": "params_m", "D": "toks"})
    t["flops"] = 10 * 6 * t.params_m * t.toks  # an alias of C, 10x off: must not be used
    t["data"] = "c4"                              # an alias of D holding corpus names
    runs = runs_from_table(t, overtrain, columns={"N": "params_m", "D": "toks"})
    np.testing.assert_allclose(runs.x["C"], 6 * table().N * table().D)
    assert runs.sources["C"].startswith("derived") and "flops" not in runs.sources.values()
    # Nothing mapped and nothing derivable: aliases are still found.
    plain = runs_from_table(table().rename(columns={"N": "params", "D": "tokens"}), LAW)
    assert plain.sources == {"N": "params", "D": "tokens"}


@pytest.mark.parametrize("values, kind", [
    (pd.to_datetime(["2024-01-0%d" % i for i in range(1, 8)]), "dates or times"),
    (np.array([1e8 + 0j] * 7) * np.arange(1, 8), "complex numbers"),
    ([True, False, True, True, False, True, True], "booleans"),
])
def test_columns_that_are_not_quantities_are_refused_by_name(values, kind):
    with pytest.raises(DataError, match=rf"column 'N' \(input N\) holds {kind}"):
        runs_from_table(table(N=values), LAW)


def test_repeated_column_names_are_refused(tmp_path):
    frame = table()
    doubled = pd.concat([frame, frame[["loss"]]], axis=1)
    with pytest.raises(DataError, match=r"column name 'loss' \(output\) appears 2 times"):
        runs_from_table(doubled, LAW)
    path = tmp_path / "runs.csv"
    path.write_text("N,D,loss,loss\n1e8,2e9,3.0,3.1\n")
    with pytest.raises(DataError, match=r"column names \['loss'\] appear more than once"):
        runs_from_table(path, LAW)


def test_unreadable_files_are_named(tmp_path):
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(DataError, match=r"empty.csv is empty"):
        runs_from_table(tmp_path / "empty.csv", LAW)
    with pytest.raises(DataError, match=r"is a folder, not a table"):
        runs_from_table(tmp_path, LAW)
    (tmp_path / "latin.csv").write_bytes(b"N,D,loss\n1e8,2e9,3.0\n\xff\xfe,1,1\n")
    with pytest.raises(DataError, match=r"latin.csv is not UTF-8"):
        runs_from_table(tmp_path / "latin.csv", LAW)
