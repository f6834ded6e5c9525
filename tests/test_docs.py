"""The API reference site (mkdocs.yml, docs/) builds without a warning and documents every public name."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

import bayescale as bs

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


def documented_objects() -> set[str]:
    """Every `::: object` directive of the reference pages."""
    found = set()
    for page in DOCS.rglob("*.md"):
        found |= set(re.findall(r"^::: (\S+)\s*$", page.read_text(), flags=re.M))
    return found


def test_every_public_name_and_catalogue_module_is_in_the_reference():
    documented = documented_objects()
    missing = [f"{module}.{name}" for name, module in bs._WHERE.items()
               if module not in documented and f"{module}.{name}" not in documented]
    assert not missing, f"public names without a reference entry in docs/api: {missing}"
    modules = {f"bayescale.{p.stem}" for p in (ROOT / "bayescale").glob("*.py") if not p.stem.startswith("_")}
    undocumented = sorted(m for m in modules if not any(d == m or d.startswith(m + ".") for d in documented))
    assert not undocumented, f"modules without a reference entry in docs/api: {undocumented}"
    catalogue = {f"models.{p.stem}" for p in (ROOT / "models").glob("*.py") if p.stem != "__init__"}
    assert not catalogue - documented, f"catalogue modules missing from docs/api/laws.md: {sorted(catalogue - documented)}"


def test_the_reference_site_builds_strictly(tmp_path):
    pytest.importorskip("mkdocstrings_handlers.python", reason="mkdocstrings[python] is in the dev extra")
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(ROOT / "mkdocs.yml"),
                             "-d", str(tmp_path / "site")], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    fit_page = (tmp_path / "site" / "api" / "fitting" / "index.html").read_text()
    assert "to a table of runs with NUTS" in fit_page  # the docstring of bayescale.fit, rendered
