"""The catalogue of lab answers, each run through the real Checker against real sidecars on every store.

A wrong answer must fail its check and a right one pass it, and the message must say what the catalogue
says it says (its ``hint`` words): a check that lets a wrong answer through, fails a right one, or changes
its hint without the catalogue (and so the instructor guide) following, fails here. The concurrency checks
run at the catalogue's QUICK sizes: 8 writers (or workers, or creators) released together, a few operations
each.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator

import nbformat
import pytest
from helpers import BOTH_RUNTIMES, ROOT, STORES, targets

from statelab.lab import LABS, Checker, catalogue
from statelab.local import Stack
from statelab.metrics import Metrics
from statelab.session import Session

CASES = [pytest.param(answer, target, id=f"{target}-{answer.id}")
         for answer in catalogue.CATALOGUE for target in targets(runtimes=BOTH_RUNTIMES)
         if target.removeprefix("daprd-") in answer.stores]
_SESSIONS: dict[str, dict[str, Session]] = {}


@pytest.fixture
def sessions(request: pytest.FixtureRequest) -> Iterator[Callable[[str], dict[str, Session]]]:
    """``sessions(runtime)``: one session per store on the test run's stacks (statelab's sidecars, or real daprd
    ones for "daprd"; Redis with one replica), started on first use and shared by every case."""

    def of(runtime: str) -> dict[str, Session]:
        stacks: dict[str, Stack] = request.getfixturevalue("daprd_stacks" if runtime == "daprd" else "stacks")
        key = ",".join(stack.endpoint for stack in stacks.values())
        if key not in _SESSIONS:
            _SESSIONS[key] = {store: Session(stack.endpoint, stack=stack) for store, stack in stacks.items()}
        return _SESSIONS[key]

    yield of


def _checker(lab: str, store: str, sessions: dict[str, Session], tmp_path) -> Checker:
    session = sessions[store]
    check = Checker(lab, session, Metrics(lab, tmp_path), progress=False)
    # Lab 04 runs its atomic checks on SQLite (or the lab's own in-memory store) and its Redis check on Redis:
    # the test run's stacks, not new ones.
    check._sessions["sqlite"] = session if store in ("sqlite", "in-memory") else sessions["sqlite"]
    check._sessions["redis"] = sessions["redis"]
    return check


@pytest.mark.parametrize(("answer", "target"), CASES)
def test_each_answer_gets_its_verdict_and_a_message_with_its_words(answer: catalogue.Answer, target: str, sessions,
                                                                  tmp_path):
    runtime, _, store = target.partition("-") if target.startswith("daprd-") else ("statelab", "", target)
    result = catalogue.run(answer, _checker(answer.lab, store, sessions(runtime), tmp_path))
    said = f"{'✓' if result.passed else '✗'} {result.message}"
    assert result.passed is answer.passes, (f"{answer.title!r} should get {answer.mark} from check.{answer.check} "
                                            f"on {store}; it got: {said}")
    missing = [words for words in answer.hint if words not in result.message]
    assert not missing, f"{answer.title!r} on {store}: the message lacks {missing}: {said}"
    assert not result.message.startswith(("The check itself failed", "The check could not reach"))


# --- the catalogue itself -------------------------------------------------------------------------------------------


def test_every_check_of_every_lab_has_wrong_and_right_answers():
    assert [a.lab for a in catalogue.CATALOGUE if a.lab not in LABS] == []
    for lab, checks in LABS.items():
        answers = [a for a in catalogue.CATALOGUE if a.lab == lab]
        assert sum(not a.passes for a in answers) >= 6, f"{lab}: fewer than six wrong answers"
        for check in checks:
            verdicts = {a.passes for a in answers if a.check == check}
            assert verdicts == {True, False}, f"{lab} check {check}: needs a right and a wrong answer, has {verdicts}"


def test_answers_are_distinct_and_say_what_their_hint_must_contain():
    ids = Counter(a.id for a in catalogue.CATALOGUE)
    assert [i for i, n in ids.items() if n > 1] == []
    assert all(a.hint and all(a.hint) for a in catalogue.CATALOGUE)
    assert all(set(a.stores) <= set(STORES) and a.stores for a in catalogue.CATALOGUE)
    for answer in catalogue.CATALOGUE:  # every answer is code that runs (defining, not calling, its functions)
        compile(answer.code, answer.id, "exec")


@pytest.mark.parametrize("lab", sorted(LABS))
def test_the_reference_answers_are_the_lab_notebooks_solution_cells_word_for_word(lab):
    nb = nbformat.read(ROOT / "labs" / f"{lab}.ipynb", as_version=4)
    solutions = [c.source for c in nb.cells if c.cell_type == "code" and "solution" in c.metadata.get("tags", [])]
    assert solutions == list(catalogue.REFERENCE[lab].values())
