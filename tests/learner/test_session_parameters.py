"""A notebook's parameters take effect: under ./scripts/lab's stack, a lesson asking for another store or
topology gets a stack that matches (started on free ports, reused by a re-run setup cell), and says so in
its one-line description; an explicit endpoint wins, with a plain list of what it cannot honour."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import free_port_base

from statelab import local
from statelab.session import open_session
from statelab.tools import runner

LESSON_02 = runner.ROOT / "notebooks" / "02_strong_vs_eventual.ipynb"
LESSON_04 = runner.ROOT / "notebooks" / "04_concurrent_writers.ipynb"


@pytest.fixture
def lab_stack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """What ./scripts/lab leaves for the kernels: a recorded `statelab up` stack (Redis, 1 replica, 1 sidecar)
    and DAPR_HTTP_ENDPOINT pointing at it."""
    monkeypatch.setenv("STATELAB_HOME", str(tmp_path / "home"))
    base = free_port_base(8)
    stack = local.up(store="redis", replicas=1, sidecars=1, http_port=base, redis_port=base + 4, grpc_port=base + 2)
    monkeypatch.setenv("DAPR_HTTP_ENDPOINT", stack.endpoint)
    try:
        yield stack
    finally:
        local.down()


def test_a_notebook_asking_for_what_the_lab_stack_runs_uses_it(lab_stack) -> None:
    session = open_session(store="redis", replicas=0, sidecars=1)  # more replicas than asked still fit
    try:
        assert session.endpoint == lab_stack.endpoint and not session.owns_stack
        assert session.describe().startswith("Connected to the local stack") and not session.notes
    finally:
        session.close()


def test_another_store_starts_a_matching_stack_and_says_why(lab_stack) -> None:
    session = open_session(store="sqlite", replicas=0)
    try:
        assert session.endpoint != lab_stack.endpoint
        assert session.store_type == "state.sqlite"
        session.client.save("statestore", "where", "sqlite")
        assert session.peek("where")["row"] is not None  # in this stack's SQLite file, not the lab's Redis
        text = session.describe()
        assert text.startswith("Started local stack: 1 statelab sidecar (myapp) on sqlite")
        assert f"The stack at {lab_stack.endpoint} runs redis, not sqlite" in text
    finally:
        session.close()
    assert not session.stack.running  # type: ignore[union-attr]  # a stack it started stops when it closes


def test_more_sidecars_start_a_stack_with_them_and_a_rerun_reuses_it(lab_stack) -> None:
    first = open_session(store="redis", replicas=0, sidecars=3)
    second = open_session(store="redis", replicas=0, sidecars=3)  # the setup cell run again
    try:
        assert len(first.endpoints) == 3 and lab_stack.endpoint not in first.endpoints
        assert "1 sidecar(s), not 3" in first.describe()
        assert second.endpoints == first.endpoints and "Reused" in second.describe()
        for endpoint in first.endpoints:  # every sidecar of the new stack answers, on one shared Redis
            assert open_session(endpoint).client.get("statestore", "missing") is None
    finally:
        first.close()


def test_an_explicit_endpoint_wins_and_names_what_it_cannot_honour(tmp_path: Path) -> None:
    base = free_port_base(8)
    stack = local.Stack(store="sqlite", replicas=0, sidecars=1, http_port=base, redis_port=base + 4,
                        grpc_port=base + 2, run_dir=tmp_path / "run").start()
    try:
        session = open_session(stack.endpoint, store="redis", replicas=1, sidecars=3)
        assert session.endpoint == stack.endpoint and session.stack is None
        notes = session.notes
        assert any("asked for store 'redis'" in n and "state.sqlite" in n for n in notes), notes
        assert any("asked for 3 sidecars" in n for n in notes), notes
        assert any("replica steps need a local stack" in n for n in notes), notes
        assert session.store_type == "state.sqlite"
    finally:
        stack.stop()


def _setup_output(executed: Path) -> str:
    """The text the notebook's setup cell showed (the session's description)."""
    cells = json.loads(executed.read_text())["cells"]
    for cell in cells:
        if "open_session(" in "".join(cell.get("source", [])):
            return "".join("".join(o.get("text", "")) + "".join(o.get("data", {}).get("text/plain", ""))
                           for o in cell.get("outputs", []))
    raise AssertionError("no setup cell calling open_session")


def test_a_headless_lesson_under_the_lab_stack_runs_on_the_store_it_was_given(lab_stack, tmp_path: Path) -> None:
    result = runner.run_one(LESSON_02, tmp_path / "out", store="sqlite", cell_timeout=120, extra={})
    assert result.ok, result.error
    shown = _setup_output(tmp_path / "out" / LESSON_02.name)
    assert "on sqlite" in shown and "runs redis, not sqlite" in shown, shown


def test_a_headless_lesson_04_under_the_lab_stack_gets_its_three_sidecars(lab_stack, tmp_path: Path) -> None:
    result = runner.run_one(LESSON_04, tmp_path / "out", store="redis", cell_timeout=180,
                            extra={"operations": 5, "scaling_writers": [1, 2]})
    assert result.ok, result.error
    shown = _setup_output(tmp_path / "out" / LESSON_04.name)
    assert "3 statelab sidecars" in shown and "1 sidecar(s), not 3" in shown, shown
    assert result.metrics.get("sidecars", 3) == 3
