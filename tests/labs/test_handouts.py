"""Learner handouts: generated from the labs, committed, up to date, and free of the answers."""

from __future__ import annotations

import json
import re
import shutil

import nbformat
import pytest
from helpers import ROOT

from statelab.tools import handouts
from statelab.tools.handouts import HandoutError, stub_code

LABS = ROOT / "labs"
LAB_PATHS = handouts.lab_notebooks(LABS)
LINK = re.compile(r"\]\(([^)\s]+)\)")


def _code_lines(source: str) -> list[str]:
    return [ln.strip() for ln in source.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]


def test_every_lab_has_a_committed_handout_that_is_up_to_date():
    assert len(LAB_PATHS) >= 5
    assert handouts.outdated(LABS) == [], "run ./scripts/handouts and commit labs/handouts/"


def test_check_mode_fails_on_a_stale_or_orphaned_handout(tmp_path, capsys):
    labs = tmp_path / "labs"
    shutil.copytree(LABS, labs, ignore=shutil.ignore_patterns("*.md"))
    assert handouts.main(["--check", "--labs", str(labs)]) == 0
    stale = labs / "handouts" / LAB_PATHS[0].name
    stale.write_text(stale.read_text().replace("TODO", "DONE"))
    (labs / "handouts" / "99_gone_lab.ipynb").write_text("{}")
    assert handouts.main(["--check", "--labs", str(labs)]) == 1
    err = capsys.readouterr().err
    assert f"{LAB_PATHS[0].name}: differs" in err and "99_gone_lab.ipynb: no lab of that name" in err
    assert handouts.main(["--labs", str(labs)]) == 0  # regenerating repairs it and removes the orphan
    assert handouts.outdated(labs) == [] and not (labs / "handouts" / "99_gone_lab.ipynb").exists()


@pytest.mark.parametrize("lab", LAB_PATHS, ids=lambda p: p.name)
def test_each_solution_cell_becomes_a_todo_cell_and_no_answer_line_survives(lab):
    source = nbformat.read(lab, as_version=4)
    handout = nbformat.read(handouts.handout_path(lab), as_version=4)
    assert len(source.cells) == len(handout.cells)
    solutions = [i for i, c in enumerate(source.cells) if "solution" in c.metadata.get("tags", [])]
    todos = [i for i, c in enumerate(handout.cells) if "todo" in c.metadata.get("tags", [])]
    assert solutions and solutions == todos
    assert not any("solution" in c.metadata.get("tags", []) for c in handout.cells)
    handout_code = "\n".join(c.source for c in handout.cells if c.cell_type == "code")
    for i in solutions:
        cell = source.cells[i]
        if cell.cell_type == "markdown":
            assert handout.cells[i].source == handouts.MARKDOWN_STUB
            continue
        answers = [ln for ln in _code_lines(cell.source) if not ln.startswith(("def ", "import ", "from "))]
        assert answers, f"cell {i} has no answer to hide"
        for line in answers:
            assert line not in handout_code, f"{lab.name} cell {i}: the answer {line!r} leaked into the handout"
    others = [(s.source, h.source) for s, h in zip(source.cells, handout.cells, strict=True)
              if s.cell_type == "code" and "solution" not in s.metadata.get("tags", [])]
    assert all(s == h for s, h in others), "only solution cells may differ"


@pytest.mark.parametrize("lab", LAB_PATHS, ids=lambda p: p.name)
def test_stubs_define_without_error_and_raise_not_implemented_when_called(lab):
    handout = nbformat.read(handouts.handout_path(lab), as_version=4)
    for cell in handout.cells:
        if "todo" not in cell.metadata.get("tags", []) or cell.cell_type != "code":
            continue
        namespace: dict = {}
        exec(compile(cell.source, "<handout>", "exec"), namespace)  # defining a stub never fails
        for name, value in namespace.items():
            if callable(value) and not name.startswith("__"):
                with pytest.raises(NotImplementedError, match=f"TODO: write {name}"):
                    value(*([None] * value.__code__.co_argcount))
            elif not name.startswith("__"):
                assert value is Ellipsis, f"{name} should be the placeholder ..."


@pytest.mark.parametrize("lab", LAB_PATHS, ids=lambda p: p.name)
def test_handouts_are_hygienic_say_what_they_are_and_their_links_resolve(lab):
    path = handouts.handout_path(lab)
    nb = json.loads(path.read_text(encoding="utf-8"))
    assert nb["metadata"]["kernelspec"]["name"] == "python3"
    assert nb["metadata"]["statelab"]["handout_of"] == lab.name
    cells = nb["cells"]
    assert "".join(cells[0]["source"]).startswith("# ") and handouts.LEARNER_NOTE in "".join(cells[0]["source"])
    assert all(not c.get("outputs") and not c.get("execution_count") for c in cells if c["cell_type"] == "code")
    assert sum("parameters" in c["metadata"].get("tags", []) for c in cells) == 1
    broken = []
    for cell in cells:
        if cell["cell_type"] == "markdown":
            for target in LINK.findall("".join(cell["source"])):
                if not re.match(r"^[a-z]+:", target) and not target.startswith("#"):
                    if not (path.parent / target.split("#", 1)[0]).exists():
                        broken.append(target)
    assert broken == []


def test_links_to_other_labs_point_at_their_handouts_not_the_solutions():
    text = handouts.handout_path(LABS / "01_fix_the_docs_lab.ipynb").read_text(encoding="utf-8")
    assert "](02_increment_lab.ipynb)" in text
    assert "](../02_increment_lab.ipynb)" not in text
    assert "](../../notebooks/00_howto_as_written.ipynb)" in text


def test_a_function_keeps_its_signature_comment_and_docstring_and_loses_its_body():
    stub = stub_code(
        "# ✏️ the task, in one line\n"
        "from statelab.client import State\n"
        "def attempt(client, store,\n"
        "            key):\n"
        '    """Read, then save +1."""\n'
        "    state = client.get(store, key) or State(key, 0, None)\n"
        "    client.save(store, key, state.value + 1)\n"
    )
    assert stub == (
        "# ✏️ the task, in one line\n"
        "def attempt(client, store,\n"
        "            key):\n"
        '    """Read, then save +1."""\n'
        "    # TODO: your code here\n"
        '    raise NotImplementedError("TODO: write attempt()")'
    )


def test_assignments_become_placeholders_one_name_each():
    assert stub_code("max_attempts = 30\na, b = 1, 2\nx: int = 3") == (
        "max_attempts = ...  # TODO: your answer\n"
        "a = ...  # TODO: your answer\n"
        "b = ...  # TODO: your answer\n"
        "x: int = ...  # TODO: your answer"
    )


@pytest.mark.parametrize("source", ["print('the answer')", "for i in range(3):\n    pass", "def f(): return 1"])
def test_a_solution_cell_that_cannot_be_stubbed_is_refused(source):
    with pytest.raises(HandoutError):
        stub_code(source)


def test_a_lab_without_solution_cells_is_refused(tmp_path):
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# Lab 99"), nbformat.v4.new_code_cell("x = 1")])
    with pytest.raises(HandoutError, match="no cell tagged 'solution'"):
        handouts.make_handout(nb, tmp_path / "99_empty_lab.ipynb", tmp_path / "handouts")
