"""Hints that lead without giving the answer away, and the full answer one click further (a collapsed cell)."""

from __future__ import annotations

import nbformat
import pytest
from helpers import ROOT

from statelab.lab import lab01_fix_the_docs, lab02_increment, lab03_safe_delete, lab04_transfer
from statelab.tools import handouts

LABS = handouts.lab_notebooks(ROOT / "labs")
# What gives an answer away: the exact jitter formula, its numbers, the bound, the one-line fixes.
GIVEAWAYS = ("2**attempt", "2 ** attempt", "min(cap", "min(0.1", "base 2 ms", "cap 100 ms", "(e.g. 20)",
             "e.g. full jitter", "`TransactionFailed`, not 409", "`etag=` and sends it")
TASKS = [lab01_fix_the_docs.SAVE_TASK, lab02_increment.ATTEMPT_TASK, lab02_increment.BACKOFF_TASK,
         lab03_safe_delete.SAFE_DELETE_TASK, lab03_safe_delete.CREATE_TASK, lab04_transfer.TRANSFER_TASK,
         lab04_transfer.CONFLICT_TASK]


def _answers(nb) -> list:
    return [c for c in nb.cells if handouts.ANSWER_TAG in c.metadata.get("tags", [])]


def _code_lines(source: str) -> list[str]:
    return [ln.strip() for ln in source.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]


@pytest.mark.parametrize("lab", LABS, ids=lambda p: p.name)
def test_each_lab_has_collapsed_answer_cells_that_its_handout_keeps_collapsed(lab):
    nb = nbformat.read(lab, as_version=4)
    handout = nbformat.read(handouts.handout_path(lab), as_version=4)
    answers = _answers(nb)
    assert answers and all(handouts.is_collapsed_answer(c) for c in answers)
    assert [c.source for c in _answers(handout)] == [c.source for c in answers]
    assert all(handouts.is_collapsed_answer(c) for c in _answers(handout))
    # each answer cell comes right after a check cell, so it opens where the learner is stuck
    for i, cell in enumerate(nb.cells):
        if cell in answers:
            assert nb.cells[i - 1].cell_type == "code" and nb.cells[i - 1].source.startswith("check.")


@pytest.mark.parametrize("lab", LABS, ids=lambda p: p.name)
def test_the_answer_one_click_away_is_the_labs_own_answer(lab):
    nb = nbformat.read(lab, as_version=4)
    revealed = "\n".join(c.source for c in _answers(nb))
    for cell in nb.cells:  # (lab 05's choices are revealed as prose: a reason is the learner's own sentence)
        if cell.cell_type == "code" and "solution" in cell.metadata.get("tags", []) and "(level, reason)" not in cell.source:
            for line in _code_lines(cell.source):
                assert line in revealed, f"{lab.name}: {line!r} is not in any answer cell"


@pytest.mark.parametrize("lab", LABS, ids=lambda p: p.name)
def test_the_visible_task_texts_lead_without_handing_over_the_answer(lab):
    handout = nbformat.read(handouts.handout_path(lab), as_version=4)
    visible = "\n".join(c.source for c in handout.cells if c not in _answers(handout))
    assert [g for g in GIVEAWAYS if g in visible] == []


def test_the_task_strings_of_the_hints_do_not_hand_over_the_answer_either():
    assert [(t, g) for t in TASKS for g in GIVEAWAYS if g in t] == []


def test_an_answer_cell_that_is_not_collapsed_is_refused(tmp_path):
    nb = nbformat.read(LABS[1], as_version=4)
    for cell in _answers(nb)[:1]:
        cell.metadata["jupyter"]["source_hidden"] = False
    with pytest.raises(handouts.HandoutError, match="must be a markdown cell whose source is hidden"):
        handouts.make_handout(nb, LABS[1], tmp_path)
