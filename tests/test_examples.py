"""The example data shipped inside the package: complete, with provenance and licence, usable by the README."""

from pathlib import Path

import pandas as pd
import pytest

import bayescale as bs
from bayescale.cli import EXAMPLE_NAMES
from bayescale.downstream import task_metadata
from bayescale.runs import runs_from_table

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.mark.parametrize("name", sorted(bs.EXAMPLES))
def test_every_example_loads_with_its_law_columns_and_licence(name):
    example = bs.EXAMPLES[name]
    table = bs.load_example(name)
    assert set(example.columns.values()) | {example.y} <= set(table.columns)
    runs = runs_from_table(table, bs.get_law(example.law), columns=example.columns, y=example.y,
                           group=example.group)
    assert len(runs.y) == len(table)
    licence = bs.example_file(name, "licence").read_text()
    assert "MIT License" in licence and "Permission is hereby granted" in licence
    # provenance: the module docstring names the paper and the source of every example
    assert name in bs.examples.__doc__


def test_the_cli_offers_exactly_the_shipped_examples():
    assert tuple(sorted(EXAMPLE_NAMES)) == tuple(sorted(bs.EXAMPLES))


def test_unknown_example_and_file_are_named():
    with pytest.raises(KeyError, match="available: chinchilla, overtrain"):
        bs.load_example("pythia")
    with pytest.raises(KeyError, match="has no file 'metadata'.*eval_metadata"):
        bs.example_file("overtrain", "metadata")


def test_overtrain_example_is_the_study_unchanged_and_its_task_metadata_reads():
    table = bs.load_example("overtrain")
    assert len(table) == 104 and sorted(table["dataset"].unique()) == ["c4_original", "rpj", "rw_original"]
    assert sum(c.startswith("acc_") for c in table.columns) == 46
    items, chance = task_metadata(bs.example_file("overtrain", "eval_metadata"), ["acc_hellaswag", "acc_piqa"])
    assert items == {"acc_hellaswag": 10042, "acc_piqa": 1838} and chance == {"acc_hellaswag": 0.25, "acc_piqa": 0.5}
    if (SHARED / "overtrain").exists():  # the same bytes as the repository's copy of the study
        for mine, theirs in (("runs", "overtrain_runs.csv"), ("eval_metadata", "eval_metadata.csv"), ("licence", "LICENSE")):
            assert bs.example_file("overtrain", mine).read_bytes() == (SHARED / "overtrain" / theirs).read_bytes()
        pd.testing.assert_frame_equal(table, pd.read_csv(SHARED / "overtrain" / "overtrain_runs.csv"))
