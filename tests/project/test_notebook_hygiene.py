"""Notebooks as committed: clean, runnable by papermill, and readable by a newcomer."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from helpers import ROOT

NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb")) + sorted((ROOT / "labs").glob("*.ipynb"))
REQUIRED_PARAMETERS = ("endpoint", "store", "interactive", "seed")
LINK = re.compile(r"\]\(([^)\s]+)\)")


def _cells(path: Path) -> list[dict]:
    return json.loads(path.read_text(encoding="utf-8"))["cells"]


def _source(cell: dict) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else src


def _is_collapsed_answer(cell: dict) -> bool:
    meta = cell.get("metadata", {})
    return "solution" in meta.get("tags", []) and meta.get("jupyter", {}).get("source_hidden") is True


def test_there_are_notebooks():
    assert len(NOTEBOOKS) >= 1


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_without_outputs_or_execution_counts(path):
    dirty = [i for i, c in enumerate(_cells(path)) if c["cell_type"] == "code" and (c.get("outputs") or c.get("execution_count"))]
    assert dirty == [], f"{path.name}: cells {dirty} carry outputs; clear them before committing"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_kernelspec_is_python3(path):
    meta = json.loads(path.read_text(encoding="utf-8"))["metadata"]
    assert meta["kernelspec"]["name"] == "python3"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_exactly_one_parameters_cell_with_the_common_names(path):
    tagged = [c for c in _cells(path) if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1
    source = _source(tagged[0])
    for name in REQUIRED_PARAMETERS:
        assert re.search(rf"^{name}\s*=", source, re.M), f"{path.name}: parameters cell lacks {name}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_narrative_comes_first(path):
    assert _cells(path)[0]["cell_type"] == "markdown"
    assert _source(_cells(path)[0]).startswith("# ")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_code_cells_are_short_calls_into_the_package(path):
    long_cells = []
    for i, cell in enumerate(_cells(path)):
        if cell["cell_type"] != "code" or "parameters" in cell.get("metadata", {}).get("tags", []):
            continue
        if _is_collapsed_answer(cell):  # a lesson exercise's answer: the learner's own code, not a call into statelab
            continue
        if "snippet" in cell.get("metadata", {}).get("tags", []):  # lesson 00: the how-to page's code, fixed, to run
            continue
        lines = [
            ln for ln in _source(cell).splitlines()
            if ln.strip() and not ln.lstrip().startswith(("#", "import ", "from "))
        ]
        if len(lines) > 3:
            long_cells.append(i)
    assert long_cells == [], f"{path.name}: cells {long_cells} have more than 3 lines; move the logic into statelab"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_every_relative_link_resolves(path):
    broken = []
    for cell in _cells(path):
        if cell["cell_type"] != "markdown":
            continue
        for target in LINK.findall(_source(cell)):
            if re.match(r"^[a-z]+:", target) or target.startswith("#"):
                continue
            if not (path.parent / target.split("#", 1)[0]).exists():
                broken.append(target)
    assert broken == []
