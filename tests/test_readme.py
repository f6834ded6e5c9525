"""The README runs as written: its Python blocks and its `bayescale` commands, in the order a reader meets them.

The default run checks what can drift without sampling (every name a Python block uses is defined by then,
every command parses, every file it names exists); `pytest -m slow` runs all of it in a fresh directory with
a small sampler (the README's own draw counts would take half an hour).
"""

from __future__ import annotations

import ast
import builtins
import dataclasses
import re
import shlex
import tomllib
import warnings
from pathlib import Path

import pytest

from bayescale.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)
# Installing and testing: .ci/run does these itself; benchmarks run for tens of minutes.
NOT_RUN = ("pip ", "python3.12 -m venv", "pytest", "python benchmarks/")


def blocks(language: str) -> list[tuple[int, str]]:
    text = README.read_text()
    return [(text[: m.start()].count("\n") + 1, m.group(2)) for m in FENCE.finditer(text) if m.group(1) == language]


def commands(body: str) -> list[list[str]]:
    """The `bayescale` commands of a shell block, continuation lines joined, comments dropped."""
    out = []
    for line in body.replace("\\\n", " ").splitlines():
        words = shlex.split(line, comments=True)
        if not words or line.strip().startswith(NOT_RUN):
            continue
        assert words[0] == "bayescale", f"README shell line that is neither a bayescale command nor set-up: {line!r}"
        out.append(words[1:])
    return out


def in_order() -> list[tuple[int, str, object]]:
    """(line, kind, code) of every Python block and shell command, in README order."""
    steps = [(line, "python", body) for line, body in blocks("python")]
    steps += [(line, "cli", words) for line, body in blocks("bash") for words in commands(body)]
    return sorted(steps, key=lambda step: step[0])


def names_stored(tree: ast.AST) -> set[str]:
    stored = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and isinstance(node.ctx, (ast.Store, ast.Del)):
            stored.add(node.id)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            stored |= {(alias.asname or alias.name).split(".")[0] for alias in node.names}
        elif isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            stored.add(node.name)
        elif isinstance(node, ast.arg):
            stored.add(node.arg)
    return stored


def test_python_blocks_use_only_names_defined_by_then_and_no_placeholders():
    defined = set(dir(builtins))
    problems = []
    for line, body in blocks("python"):
        tree = ast.parse(body, filename=f"README.md:{line}")
        stored = names_stored(tree)
        used = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
        missing = used - defined - stored
        if missing:
            problems.append(f"block at README.md:{line} uses {sorted(missing)} before any block defines them")
        if any(isinstance(n, ast.Constant) and n.value is Ellipsis for n in ast.walk(tree)):
            problems.append(f"block at README.md:{line} has a literal `...` placeholder")
        defined |= stored
    assert not problems, "\n".join(problems)


def test_every_command_parses_and_names_files_that_exist():
    parser = build_parser()
    steps = [words for _, kind, words in in_order() if kind == "cli"]
    assert len(steps) >= 15  # the README's walk through the verbs
    for words in steps:
        try:
            parser.parse_args(words)
        except SystemExit:
            pytest.fail(f"README command does not parse: bayescale {shlex.join(words)}")
        for word in words:
            if "/" in word and word.endswith((".csv", ".parquet", ".tsv")):
                assert (ROOT / word).exists(), f"README command names a file that a clone does not have: {word}"


def test_the_job_file_example_is_valid_toml_with_known_sections():
    from bayescale.inference import SamplerSettings

    (line, body), = [(line, body) for line, body in blocks("toml")]
    job = tomllib.loads(body)
    assert {"laws", "data", "sampler"} <= set(job)
    assert set(job["sampler"]) <= {f.name for f in dataclasses.fields(SamplerSettings)}


@pytest.mark.slow
def test_the_readme_runs_as_written(tmp_path, monkeypatch):
    """Every Python block and command in order, in a fresh directory where `bayescale/` is the package's own
    folder (as in a clone), with 2 chains x 100 + 100 draws instead of the README's counts."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    import importlib

    from bayescale import inference
    from bayescale.cli import main

    real = inference.sample_posterior

    def small(program, settings, *args, **kwargs):
        settings = dataclasses.replace(settings, num_warmup=min(settings.num_warmup, 100),
                                       num_samples=min(settings.num_samples, 100))
        kwargs["map_starts"] = min(kwargs.get("map_starts", 32), 8)
        return real(program, settings, *args, **kwargs)

    for name in ("bayescale.fit", "bayescale.batch", "bayescale.downstream"):  # modules (bs.fit is the function)
        monkeypatch.setattr(importlib.import_module(name), "sample_posterior", small)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bayescale").symlink_to(ROOT / "bayescale")
    namespace: dict = {"__name__": "readme"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # small samplers do not converge; that is not what this test checks
        for line, kind, code in in_order():
            if kind == "python":
                exec(compile(code, f"README.md:{line}", "exec"), namespace)  # noqa: S102
            else:
                status = main(list(code))
                assert status in (0, 3), f"README.md:{line}: `bayescale {shlex.join(code)}` exited {status}"
            plt.close("all")
