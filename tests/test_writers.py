"""The concurrent-writers harness against real sidecars, and the lost-update checker on its histories."""

from __future__ import annotations

import os
import signal
import threading

import pytest
from conftest import free_port_base, make_stack

from statelab.errors import SidecarUnavailable, StoreNotFound
from statelab.history import OK, UNKNOWN, Attempt, History, check_append, check_counter
from statelab.writers import RunResult, WritersConfig, run_writers


def _assert_nothing_lost(result: RunResult) -> None:
    assert result.findings == [], result.sentences()
    assert result.lost_updates == 0
    assert result.acknowledged == result.config.writers * result.config.operations
    assert result.gave_up == 0


@pytest.mark.parametrize("mode", ["increment", "append"])
def test_first_write_with_etag_and_retry_loses_nothing_with_one_sidecar(api, mode):
    result = run_writers(api.url, WritersConfig(writers=8, operations=10, mode=mode, seed=3))
    _assert_nothing_lost(result)
    assert result.surviving == 80
    assert result.conflicts > 0, "8 writers on one key should conflict"
    # every conflict was followed by another attempt of the same operation
    assert result.attempts == result.acknowledged + result.conflicts


@pytest.mark.parametrize("store", ["in-memory", "sqlite", "redis"])
def test_first_write_with_etag_and_retry_loses_nothing_with_three_sidecars(tmp_path, store):
    with make_stack(tmp_path, store=store, sidecars=3, replicas=0) as stack:
        result = run_writers(stack.endpoints, WritersConfig(writers=9, operations=10, keys=2, seed=5))
    _assert_nothing_lost(result)
    assert {a.sidecar for a in result.history.attempts} == {0, 1, 2}
    if store == "in-memory":
        assert set(result.groups.values()) == {"sidecar 0", "sidecar 1", "sidecar 2"}
        assert "own copy" in result.notes[0]
    else:
        assert set(result.groups.values()) == {"all"}
    assert result.surviving == 90


@pytest.mark.parametrize("api", ["sqlite", "redis"], indirect=True)
@pytest.mark.parametrize("mode", ["increment", "append"])
def test_last_write_with_eight_writers_loses_updates_and_the_checker_names_them(api, mode):
    result = run_writers(api.url, WritersConfig(writers=8, operations=15, mode=mode, concurrency="last-write"))
    assert result.acknowledged == 120  # every blind save was answered 204...
    assert result.conflicts == 0
    assert result.lost_updates > 0  # ...yet some are not in the store
    kinds = {f.kind for f in result.findings}
    assert ("missing-increments" if mode == "increment" else "missing-ids") in kinds
    assert "same-version" in kinds
    assert all(f.sentence.endswith(".") for f in result.findings)


def test_a_run_stopped_early_returns_what_happened(api):
    stop = threading.Event()
    timer = threading.Timer(0.3, stop.set)
    timer.start()
    result = run_writers(api.url, WritersConfig(writers=4, operations=10_000, base=0.001, cap=0.01), stop=stop)
    timer.cancel()
    assert result.stopped_early
    assert 0 < result.acknowledged < 40_000
    assert result.findings == []


def test_progress_reports_done_operations_and_conflicts(api):
    seen = []
    run_writers(api.url, WritersConfig(writers=4, operations=5), progress=seen.append, progress_every=0)
    assert seen[-1].done == [5, 5, 5, 5]
    assert seen[-1].conflicts >= 0
    assert all(p.total_per_writer == 5 for p in seen)


@pytest.mark.slow
def test_requests_that_time_out_are_unknown_and_bound_the_count(tmp_path):
    with make_stack(tmp_path, store="sqlite") as stack:
        pid = stack.pids["sidecar-0"]
        pause = threading.Timer(0.1, os.kill, (pid, signal.SIGSTOP))
        resume = threading.Timer(1.1, os.kill, (pid, signal.SIGCONT))
        pause.start()
        resume.start()
        # Enough work that the writers are still going when the sidecar stops (6 x 40 took 0.2 s).
        result = run_writers(stack.endpoint, WritersConfig(writers=6, operations=300, timeout=0.25, base=0.01, cap=0.05))
        resume.join()
    outcomes = result.history.outcomes()
    assert outcomes["unknown"] + outcomes["error"] > 0, outcomes
    final = sum(result.finals.values())
    assert result.acknowledged <= final <= result.acknowledged + outcomes["unknown"]
    assert [f for f in result.findings if f.kind == "missing-increments"] == []


def test_unknown_store_and_unreachable_sidecar_raise_before_writing(api):
    with pytest.raises(StoreNotFound):
        run_writers(api.url, WritersConfig(writers=2, operations=1, store="nope"))
    with pytest.raises(SidecarUnavailable):
        run_writers(f"http://127.0.0.1:{free_port_base(1)}", WritersConfig(writers=2, operations=1, timeout=1))


def test_bad_configuration_is_refused():
    with pytest.raises(ValueError):
        WritersConfig(mode="decrement")
    with pytest.raises(ValueError):
        WritersConfig(concurrency="most-writes")
    with pytest.raises(ValueError):
        WritersConfig(policy="sometimes").backoff()


# --- the checker on hand-made histories ----------------------------------------------------------


def _attempt(writer: int, op: int, outcome: str, etag: str | None, attempt: int = 1) -> Attempt:
    return Attempt(writer, op, attempt, 0, "k", 0.0, 0.1, etag, 204 if outcome == OK else None, outcome)


def test_checker_reports_missing_increments_and_writes_on_the_same_version():
    history = History([_attempt(0, 0, OK, "1"), _attempt(1, 0, OK, "1"), _attempt(2, 0, OK, "2")])
    findings = check_counter(history, {("all", "k"): 2}, {0: "all"})
    assert [f.kind for f in findings] == ["missing-increments", "same-version"]
    assert findings[0].sentence.startswith("1 acknowledged increment of key k vanished")
    assert findings[1].ops == ["w0-op0", "w1-op0"]


def test_checker_allows_unknown_outcomes_but_not_more():
    history = History([_attempt(0, 0, OK, "1"), _attempt(1, 0, UNKNOWN, "2")])
    assert check_counter(history, {("all", "k"): 2}, {0: "all"}) == []
    findings = check_counter(history, {("all", "k"): 3}, {0: "all"})
    assert [f.kind for f in findings] == ["too-many"]


def test_checker_finds_acknowledged_ids_missing_from_a_list():
    history = History([_attempt(0, 0, OK, "1"), _attempt(1, 0, OK, "2")])
    findings = check_append(history, {("all", "k"): ["w1-op0"]}, {0: "all"})
    assert [f.kind for f in findings] == ["missing-ids"]
    assert findings[0].ops == ["w0-op0"]
