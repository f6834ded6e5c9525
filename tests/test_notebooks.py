"""Every notebook in notebooks/ runs from top to bottom without a cell error.

Notebooks read their sample counts from BAYESCALE_NOTEBOOK_DRAWS / BAYESCALE_NOTEBOOK_WARMUP; here they run
small (200 + 200 by default). A notebook that needs more declares it in its metadata:

    "bayescale": {"test_draws": 500, "test_warmup": 500, "slow": true}

("slow": true moves its small-count run to `pytest -m slow`). The full-count execution of every notebook is
a slow test too. New notebooks are picked up automatically.
"""

import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("*.ipynb"))
SMALL_DRAWS = SMALL_WARMUP = 200
CELL_TIMEOUT_S = 900  # a guard against hangs, not a speed check


def settings(path: Path) -> dict:
    return nbformat.read(path, as_version=4).metadata.get("bayescale", {})


def execute(path: Path, draws: int | None, warmup: int | None) -> nbformat.NotebookNode:
    notebook = nbformat.read(path, as_version=4)
    env = {k: v for k, v in os.environ.items() if not k.startswith("BAYESCALE_NOTEBOOK_")}
    if draws is not None:
        env["BAYESCALE_NOTEBOOK_DRAWS"] = str(draws)
        env["BAYESCALE_NOTEBOOK_WARMUP"] = str(warmup)
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)  # the kernel inherits this process's environment
    try:
        client = NotebookClient(notebook, timeout=CELL_TIMEOUT_S, kernel_name="python3",
                                resources={"metadata": {"path": str(path.parent)}})
        client.execute()  # raises CellExecutionError, naming the cell, on any error
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return notebook


def small_params():
    for path in NOTEBOOKS:
        marks = [pytest.mark.slow] if settings(path).get("slow") else []
        yield pytest.param(path, id=path.name, marks=marks)


@pytest.mark.parametrize("path", list(small_params()))
def test_notebook_runs_with_small_counts(path):
    meta = settings(path)
    notebook = execute(path, meta.get("test_draws", SMALL_DRAWS), meta.get("test_warmup", SMALL_WARMUP))
    code = [c for c in notebook.cells if c.cell_type == "code"]
    assert code and all(c.execution_count for c in code)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_saved_notebook_is_executed_without_errors(path):
    """The committed notebook shows its outputs (executed with the full counts) and no error."""
    notebook = nbformat.read(path, as_version=4)
    code = [c for c in notebook.cells if c.cell_type == "code"]
    assert code and all(c.execution_count for c in code), "save the notebook executed"
    errors = [o for c in code for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors, [f"{e['ename']}: {e['evalue']}" for e in errors]
    assert any("image/png" in o.get("data", {}) for c in code for o in c.get("outputs", [])), "no figures saved"


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs_with_full_counts(path):
    execute(path, None, None)
