"""The concurrent-writers harness against real sidecars, and the lost-update checker on its histories."""

from __future__ import annotations

import os
import random
import signal
import threading
import time

import pytest
from helpers import free_port_base, make_stack

from statelab.client import StateClient
from statelab.errors import SidecarUnavailable, StoreNotFound
from statelab.history import CONFLICT, ERROR, OK, UNKNOWN, Attempt, History, check_append, check_counter
from statelab.lab.recording import RecordingClient
from statelab.writers import (
    STOP_GRACE_SECONDS,
    AbortRun,
    AttemptOutcome,
    RunResult,
    WritersConfig,
    WriterTask,
    read_modify_write,
    run_writers,
)


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


# --- the harness's parts: attempt strategy, backoff, client factory, keys, start, deadline -----------------

ONE_STORE = pytest.mark.parametrize("api", ["sqlite"], indirect=True)  # the loop is the same on every store


def _writer_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("writer-") and t.is_alive()]


@ONE_STORE
def test_a_strategy_that_aborts_stops_every_writer_and_its_hint_comes_back(api):
    config = WritersConfig(writers=6, operations=100_000, base=0.001, cap=0.005)
    increment = read_modify_write(config)

    def attempt(client: StateClient, task: WriterTask) -> AttemptOutcome:
        if task.writer == 2 and task.op == 5:
            raise AbortRun("writer 2 had enough")
        return increment(client, task)

    started = time.monotonic()
    result = run_writers(api.url, config, attempt=attempt)
    assert time.monotonic() - started < 30  # 600 000 increments would take far longer: everyone stopped
    assert result.fatal == "writer 2 had enough"
    assert result.stopped_early and result.gave_up == 0
    assert _writer_threads() == []
    assert max(a.op for a in result.history.attempts if a.writer == 2) == 4  # the aborting attempt is not recorded
    assert 5 <= result.acknowledged < 6 * 100_000
    assert result.findings == [] and result.surviving == result.acknowledged  # nothing written after the run


@ONE_STORE
def test_a_custom_backoff_is_called_with_the_retry_number_and_the_writers_rng_and_its_waits_happen(api):
    calls: list[tuple[str, int, int]] = []  # (thread, retry number, id of the rng)

    def backoff(number: int, rng: random.Random) -> float:
        assert isinstance(rng, random.Random)
        calls.append((threading.current_thread().name, number, id(rng)))
        return 0.02

    result = run_writers(api.url, WritersConfig(writers=4, operations=5, seed=3), backoff=backoff, together=True)
    assert result.acknowledged == 20 and result.gave_up == 0 and result.findings == []
    assert result.conflicts > 0, "4 writers starting together on one key should conflict"
    assert len(calls) == result.conflicts  # one wait after each failed attempt, none after a success
    by_attempt = {(a.writer, a.op, a.attempt): a for a in result.history.attempts}
    assert sorted(n for _, n, _ in calls) == sorted(a.attempt for a in result.history.attempts if a.outcome != OK)
    for (writer, op, number), a in by_attempt.items():
        if number > 1:  # the retry started only after its 20 ms wait
            assert a.start - by_attempt[(writer, op, number - 1)].end >= 0.019
    rngs: dict[str, set[int]] = {}
    for thread, _, rng in calls:
        rngs.setdefault(thread, set()).add(rng)
    assert all(len(ids) == 1 for ids in rngs.values())  # each writer draws from its own rng...
    assert len(set.union(*rngs.values())) == len(rngs)  # ...not shared with another writer


@ONE_STORE
def test_no_wait_after_the_last_attempt_and_an_attempt_may_give_up_at_once(api):
    waits: list[int] = []

    def backoff(number: int, rng: random.Random) -> float:
        waits.append(number)
        return 0.0

    always = lambda client, task: AttemptOutcome(CONFLICT, 409)  # noqa: E731
    result = run_writers(api.url, WritersConfig(writers=2, operations=3, max_attempts=3), attempt=always,
                         backoff=backoff)
    assert result.gave_up == 6 and result.attempts == 18 and result.conflicts == 18
    assert sorted(set(waits)) == [1, 2] and len(waits) == 12
    assert not result.stopped_early and result.fatal == ""
    waits.clear()
    refuse = lambda client, task: AttemptOutcome(ERROR, 400, retry=False)  # noqa: E731
    result = run_writers(api.url, WritersConfig(writers=2, operations=3, max_attempts=3), attempt=refuse,
                         backoff=backoff)
    assert result.gave_up == 6 and result.attempts == 6 and waits == []


@ONE_STORE
def test_the_client_factory_makes_every_client_and_each_writer_keeps_its_own(api):
    made: list[RecordingClient] = []
    used: dict[int, set[int]] = {}

    def factory(endpoint: str) -> StateClient:
        client = RecordingClient(endpoint, timeout=5)
        made.append(client)
        return client

    config = WritersConfig(writers=3, operations=4)
    increment = read_modify_write(config)

    def attempt(client: StateClient, task: WriterTask) -> AttemptOutcome:
        used.setdefault(task.writer, set()).add(id(client))
        return increment(client, task)

    result = run_writers(api.url, config, attempt=attempt, client_factory=factory)
    assert result.acknowledged == 12 and result.findings == []
    assert {w: len(ids) for w, ids in used.items()} == {0: 1, 1: 1, 2: 1}
    writer_clients = [c for c in made if id(c) in set.union(*used.values())]
    assert len(writer_clients) == 3 and all(c.endpoint == api.url for c in made)
    # the run's own requests went through the factory's clients too: metadata, the initial saves, the final reads
    kinds = [call.kind for c in made for call in c.calls]
    assert kinds.count("save") == result.attempts + 1 and kinds.count("other") >= 1
    assert kinds.count("get") == result.attempts + 1


@ONE_STORE
def test_given_keys_are_used_as_they_are_and_a_deadline_stops_the_run(api):
    key = api.key("given")
    api.client().save("statestore", key, 0)
    result = run_writers(api.url, WritersConfig(writers=3, operations=4), keys=[key])
    assert [k for _, k in result.finals] == [key] and result.finals[("all", key)] == 12
    assert {a.key for a in result.history.attempts} == {key}
    started = time.monotonic()
    result = run_writers(api.url, WritersConfig(writers=3, operations=1_000_000), keys=[key], deadline=0.3)
    assert time.monotonic() - started < 5
    assert result.stopped_early and result.fatal == "" and result.acknowledged > 0 and result.gave_up == 0


@ONE_STORE
def test_anything_else_a_writer_raises_stops_the_run_and_is_raised_in_the_caller(api):
    config = WritersConfig(writers=4, operations=100_000)
    increment = read_modify_write(config)

    def attempt(client: StateClient, task: WriterTask) -> AttemptOutcome:
        if task.writer == 1 and task.op == 3:
            raise ZeroDivisionError("a bug in the strategy")
        return increment(client, task)

    with pytest.raises(ZeroDivisionError, match="a bug in the strategy"):
        run_writers(api.url, config, attempt=attempt, together=True)
    assert _writer_threads() == []


@ONE_STORE
def test_a_start_barrier_holds_the_run_until_every_party_arrives(api):
    gate = threading.Barrier(2)
    results: list[RunResult] = []
    runs = [threading.Thread(target=lambda: results.append(run_writers(api.url, WritersConfig(writers=2, operations=3),
                                                                      start=gate))) for _ in range(2)]
    runs[0].start()
    time.sleep(0.3)
    assert gate.n_waiting == 1 and not results  # the first run waits for the second
    runs[1].start()
    for t in runs:
        t.join(30)
    assert [r.acknowledged for r in results] == [6, 6]


@ONE_STORE
def test_an_interrupted_run_with_every_part_swapped_stops_its_writers(api):
    config = WritersConfig(writers=6, operations=1_000_000)
    increment = read_modify_write(config)
    main = threading.main_thread().ident
    assert main is not None
    timer = threading.Timer(0.5, signal.pthread_kill, (main, signal.SIGINT))
    started = time.monotonic()
    timer.start()
    with pytest.raises(KeyboardInterrupt):
        run_writers(api.url, config, attempt=lambda c, t: increment(c, t), backoff=lambda n, rng: 0.001,
                    client_factory=lambda e: RecordingClient(e), together=True, deadline=60)
    timer.join()
    assert time.monotonic() - started < 0.5 + STOP_GRACE_SECONDS
    assert _writer_threads() == []


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
