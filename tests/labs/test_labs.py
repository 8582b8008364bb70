"""Workshop labs: solutions pass every check headlessly, handouts fail at their first check with its hint,
class contention mode aggregates simulated attendees, and the checks catch wrong code with the right hint."""

from __future__ import annotations

import threading
from pathlib import Path

import nbformat
import pytest
import requests
from helpers import LAB_SOLUTIONS, ROOT, check_lab_solution, good_attempt, make_stack

from statelab import lab as labmod
from statelab.client import State, upsert
from statelab.errors import ETagMismatch, TransactionFailed
from statelab.lab import Checker
from statelab.metrics import Metrics
from statelab.session import Session, open_session
from statelab.tools import runner
from statelab.tools.handouts import handout_path

LABS = ROOT / "labs"
INSTRUCTOR = LABS / "instructor_class_contention.ipynb"

# What a fresh handout must report first: the lab's first check, and the start of its hint.
FIRST_FAILURE = {
    "01_fix_the_docs_lab": ("save", "`save()` is still the TODO stub (it raises NotImplementedError)"),
    "02_increment_lab": ("attempt", "`attempt()` is still the TODO stub (it raises NotImplementedError)"),
    "03_safe_delete_lab": ("safe_delete", "`safe_delete()` is still the TODO stub (it raises NotImplementedError)"),
    "04_transfer_lab": ("transfer", "`transfer()` is still the TODO stub (it raises NotImplementedError)"),
    "05_consistency_lab": ("measurement", "`timings` is still the placeholder"),
}


def _outputs(nb: nbformat.NotebookNode, source: str) -> str:
    """The text/plain outputs of the code cells whose source is exactly ``source``."""
    texts = []
    for cell in nb.cells:
        if cell.cell_type == "code" and cell.source.strip() == source:
            for out in cell.outputs:
                texts.append(out.get("data", {}).get("text/plain", "") or out.get("text", ""))
    return "\n".join(texts)


def test_there_are_at_least_five_labs_and_each_has_its_checks():
    assert len(LAB_SOLUTIONS) >= 5
    assert {p.stem for p in LAB_SOLUTIONS} == set(labmod.LABS) == set(FIRST_FAILURE)


# --- headless runs ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", LAB_SOLUTIONS, ids=lambda p: p.stem)
def test_the_solution_runs_headless_and_passes_every_check_in_order(tmp_path, path):
    result = runner.run_one(path, tmp_path, store="redis", cell_timeout=180, extra={})
    assert result.ok, result.error
    check_lab_solution(path, result.metrics)


@pytest.mark.parametrize("path", LAB_SOLUTIONS, ids=lambda p: p.stem)
def test_the_handout_runs_headless_without_an_error_and_fails_at_its_first_check_with_the_hint(tmp_path, path):
    result = runner.run_one(handout_path(path), tmp_path, store="redis", cell_timeout=180, extra={})
    assert result.ok, f"a handout must not stop with an error: {result.error}"
    m = result.metrics
    name, hint = FIRST_FAILURE[path.stem]
    assert labmod.LABS[path.stem][0] == name
    assert m["first_failed_check"] == name and m["check_" + name] is False
    assert m["first_failed_hint"].startswith(hint)
    assert m["checks_passed"] is False
    # every check ran and failed with a hint of its own, none because the check itself broke
    assert [c["check"] for c in m["checks"]] == list(labmod.LABS[path.stem])
    assert not any(c["message"].startswith(("The check itself failed", "The check could not reach")) for c in m["checks"])
    executed = nbformat.read(tmp_path / path.name, as_version=4)
    shown = _outputs(executed, next(c.source.strip() for c in executed.cells
                                    if c.cell_type == "code" and c.source.startswith(f"check.{name}(")))
    assert shown.startswith(f"✗ {name}: {hint}")


def test_checks_do_not_care_how_a_learner_rearranged_the_cells(tmp_path):
    nb = nbformat.read(LABS / "03_safe_delete_lab.ipynb", as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]  # all markdown deleted
    params, setup = code[0], code[1]
    answers = [c for c in code if "solution" in c.metadata.get("tags", [])]
    checks = [c for c in code if c.source.startswith("check.")]
    wrong_first = nbformat.v4.new_code_cell("def safe_delete(client, store, key, etag):\n    client.delete(store, key)")
    split = [nbformat.v4.new_code_cell('FIRST_WRITE = "first-write"'),
             nbformat.v4.new_code_cell("def create_if_absent(client, store, key, value):\n"
                                       "    client.save(store, key, value, concurrency=FIRST_WRITE)")]
    # a wrong first try and its check, then the answer and the same check again; a helper split off; duplicates
    cells = [params, setup, wrong_first, checks[0], *answers[:1], checks[0], *split, checks[1], checks[1],
             answers[2], checks[2], checks[-1]]
    nb.cells = [nbformat.v4.new_code_cell(c.source, metadata=c.metadata) for c in cells]  # copies get their own ids
    path = tmp_path / "messy" / "03_safe_delete_lab.ipynb"
    path.parent.mkdir()
    nbformat.write(nb, path)
    result = runner.run_one(path, tmp_path / "out", store="sqlite", cell_timeout=180, extra={})
    assert result.ok, result.error
    assert result.metrics["checks_passed"] is True  # the re-run of a check replaced its earlier failure
    executed = nbformat.read(tmp_path / "out" / path.name, as_version=4)
    first_run = next(c for c in executed.cells if c.source == "check.safe_delete(safe_delete)")
    assert "carried no ETag" in first_run.outputs[0]["data"]["text/plain"]


def test_class_contention_three_simulated_attendees_and_a_notebook_share_one_token_protected_sidecar(
        tmp_path, monkeypatch):
    token = "workshop-token"
    stack = make_stack(tmp_path / "instructor", store="redis", replicas=0, api_token=token).start()
    try:
        monkeypatch.setenv("DAPR_API_TOKEN", token)  # what attendees export; the kernels inherit it
        params = {"endpoint": stack.endpoint, "class_id": "ci-class"}
        attendee = runner.run_one(LABS / "02_increment_lab.ipynb", tmp_path / "attendee", store="redis",
                                  cell_timeout=180, extra={**params, "attendee": "notebook", "operations": 5})
        assert attendee.ok, attendee.error
        assert attendee.metrics["checks_passed"] is True and attendee.metrics["class_published"] is True

        instructor = runner.run_one(INSTRUCTOR, tmp_path / "instructor-out", store="redis", cell_timeout=180,
                                    extra={**params, "simulated_attendees": 3, "writers": 8, "operations": 5})
        assert instructor.ok, instructor.error
        m = instructor.metrics
        assert m["class_attendees"] == 4 and m["class_writers"] == 32
        assert m["class_lost_updates"] == 0
        assert m["class_counter"] == m["class_acknowledged"] > 0
        assert m["class_conflicts"] > 0

        view = labmod.class_view(open_session(stack.endpoint), "ci-class")
        simulated = [r for r in view.runs if r.attendee.startswith("sim-")]
        assert sorted(r.attendee for r in simulated) == ["sim-1", "sim-2", "sim-3"]
        assert max(r.started_at for r in simulated) < min(r.started_at + r.wall_time for r in simulated), \
            "the simulated attendees must write at the same time"
        assert all(r.attempts and r.acknowledged + r.gave_up == 8 * 5 for r in view.runs)
        counter = requests.get(f"{stack.endpoint}/v1.0/state/statestore/{labmod.ClassKeys('ci-class').counter}")
        assert counter.status_code == 401  # the class lives behind the sidecar's API token
    finally:
        stack.stop()


# --- the checks themselves, against real sidecars ------------------------------------------------------


@pytest.fixture(params=["redis", "sqlite"])
def session(request, stacks):
    stack = stacks[request.param]
    return Session(stack.endpoint, stack=stack)


def _checker(notebook: str, session: Session, tmp_path: Path) -> Checker:
    return Checker(notebook, session, Metrics(notebook, tmp_path), progress=False)


def _stub(*args):
    raise NotImplementedError("TODO: write it")


# good_attempt, the right answer, is in helpers (tests/learner/test_interrupts.py interrupts it)


def blind_attempt(client, store, key):
    state = client.get(store, key) or State(key, 0, None)
    client.save(store, key, state.value + 1)


def swallowing_attempt(client, store, key):
    try:
        good_attempt(client, store, key)
    except ETagMismatch:
        pass


def good_backoff(attempt, rng):
    return rng.uniform(0, min(0.1, 0.002 * 2**attempt))


def good_transfer(client, store, src, dst, amount):
    a, b = client.get(store, src), client.get(store, dst)
    client.transaction(store, [upsert(src, a.value - amount, etag=a.etag), upsert(dst, b.value + amount, etag=b.etag)])


def blind_transfer(client, store, src, dst, amount):
    a, b = client.get(store, src), client.get(store, dst)
    client.transaction(store, [upsert(src, a.value - amount), upsert(dst, b.value + amount)])


def test_a_check_never_raises_whatever_the_learner_code_does(session, tmp_path):
    check = _checker("02_increment_lab", session, tmp_path)
    results = [
        check.attempt(_stub),
        check.attempt(lambda client, store, key: {}["oops"]),
        check.attempt("not a function"),
        check.backoff(lambda attempt, rng: "soon"),
        check.increment(_stub, good_backoff, 20),
        check.increment(good_attempt, good_backoff, ...),
    ]
    assert [r.passed for r in results] == [False] * len(results)
    assert results[0].message.startswith("`_stub()` is still the TODO stub")
    assert "KeyError" in results[1].message and "{}[\"oops\"]" in results[1].message.replace("'", '"')
    assert "expected a function" in results[2].message
    assert "return a number of seconds" in results[3].message
    assert "placeholder" in results[5].message


def test_metrics_name_the_first_failure_in_lab_order_whatever_order_the_cells_ran(session, tmp_path):
    check = _checker("01_fix_the_docs_lab", session, tmp_path)
    http = check.http()

    def save(url, key, value):
        return http.post(url, json=[{"key": key, "value": value, "options": {"consistency": "strong"}}])

    check.etag_flow(_stub, _stub, _stub)
    check.delete(_stub)
    check.get(_stub)
    check.save(save)
    check.save(save)  # run twice: replaced, not duplicated
    m = check.metrics.values
    assert [c["check"] for c in m["checks"]] == ["save", "get", "delete", "etag_flow"]
    assert m["check_save"] is True and m["first_failed_check"] == "get"
    assert m["first_failed_hint"].startswith("`_stub()` is still the TODO stub")
    assert m["checks_passed"] is False


def test_lab01_hints_name_the_docs_bugs(session, tmp_path):
    check = _checker("01_fix_the_docs_lab", session, tmp_path)
    http = check.http()  # what the lab hands the learner: `requests`, recorded while a check runs
    double = check.save(lambda url, key, value: http.post(url, json=f'[{{"key": "{key}", "value": 1}}]'))
    wrong_store = check.save(lambda url, key, value: http.post(url.replace("statestore", "redis-store"),
                                                                 json=[{"key": key, "value": value}]))

    def header_get(url, key):
        resp = http.get(f"{url}/{key}", headers={"consistency": "strong"})
        return resp.json(), resp.headers["ETag"]

    assert "encodes it a second time" in double.message
    assert "ERR_STATE_STORE_NOT_FOUND" in wrong_store.message and "`statestore`" in wrong_store.message
    assert "as an HTTP header" in check.get(header_get).message


def test_a_check_records_only_its_own_sessions_and_patches_nothing(session, tmp_path):
    check = _checker("01_fix_the_docs_lab", session, tmp_path)
    http, send = check.http(), requests.Session.send
    other_thread: list[int] = []

    def save(url, key, value):
        # Someone else's plain `requests` call, from another thread, while the check runs: not the learner's.
        t = threading.Thread(target=lambda: other_thread.append(requests.get(f"{url}/{key}").status_code))
        t.start()
        t.join()
        return http.post(url, json=[{"key": key, "value": value, "options": {"consistency": "strong"}}])

    with check._watching_http() as wire:
        save(check.url, "recorded-1", {"item": "coffee", "qty": 2})
    assert [(e.method, e.status) for e in wire] == [("POST", 204)]
    assert other_thread == [204] and requests.Session.send is send
    assert check.save(save).passed


def test_the_attempt_check_forces_an_interleaving_and_sees_the_lost_update(session, tmp_path):
    check = _checker("02_increment_lab", session, tmp_path)
    assert check.attempt(good_attempt).passed
    assert "ETag you read" in check.attempt(blind_attempt).message
    assert "returned normally" in check.attempt(swallowing_attempt).message


def test_the_increment_check_runs_at_least_eight_writers_and_finds_lost_updates_in_the_history(session, tmp_path):
    check = _checker("02_increment_lab", session, tmp_path)
    good = check.increment(good_attempt, good_backoff, 30, writers=2, operations=5)
    assert good.passed, good.message
    assert good.data.config.writers == 8 and good.data.lost_updates == 0 and good.data.conflicts > 0
    again = check.increment(good_attempt, good_backoff, 30, writers=2, operations=5)
    assert again.passed and again.data.finals.keys() != good.data.finals.keys()  # idempotent: fresh keys
    blind = check.increment(blind_attempt, good_backoff, 30, operations=5)
    assert not blind.passed and blind.data.lost_updates > 0
    assert "vanished" in blind.message and "carried no ETag" in blind.message
    assert "hardly a bound" in check.increment(good_attempt, good_backoff, 1000).message


def test_safe_delete_and_create_if_absent_catch_the_classic_mistakes(session, tmp_path):
    check = _checker("03_safe_delete_lab", session, tmp_path)
    assert check.safe_delete(lambda client, store, key, etag: client.delete(store, key, etag=etag)).passed
    assert "carried no ETag" in check.safe_delete(lambda client, store, key, etag: client.delete(store, key)).message
    create = check.create_if_absent(lambda client, store, key, value:
                                    client.save(store, key, value, concurrency="first-write"))
    assert create.passed and "exactly one won" in create.message
    plain = check.create_if_absent(lambda client, store, key, value: client.save(store, key, value))
    assert "last-write-wins" in plain.message
    expected = labmod.LOSER_STATUS[session.store_type.removeprefix("state.")]
    assert check.loser_status(dict(labmod.LOSER_STATUS)).passed
    assert f"got {expected}" in check.loser_status({**labmod.LOSER_STATUS, "redis": 409, "sqlite": 500}).message


def test_a_check_then_act_create_is_caught_deterministically(stacks, tmp_path):
    check = _checker("03_safe_delete_lab", Session(stacks["sqlite"].endpoint, stack=stacks["sqlite"]), tmp_path)

    def check_then_act(client, store, key, value):
        if client.get(store, key) is not None:
            raise KeyError(key)
        client.save(store, key, value)

    assert "someone created it between the two" in check.create_if_absent(check_then_act).message


def test_transfer_checks_conserve_the_total_on_sqlite_and_measure_a_half_applied_transaction_on_redis(stacks, tmp_path):
    redis_session = Session(stacks["redis"].endpoint, stack=stacks["redis"])
    check = _checker("04_transfer_lab", redis_session, tmp_path)
    check._sessions["sqlite"] = Session(stacks["sqlite"].endpoint, stack=stacks["sqlite"])  # no extra stack
    assert check.transfer(good_transfer).passed
    assert "carries no ETag" in check.transfer(blind_transfer).message

    def is_conflict(exc):
        return isinstance(exc, TransactionFailed)

    assert check.is_conflict(is_conflict).passed
    total = check.total_conserved(good_transfer, is_conflict, workers=8, transfers=5)
    assert total.passed, total.message
    assert total.data.total_after == total.data.total_before and total.data.final == total.data.expected
    gave_up = check.total_conserved(good_transfer, lambda exc: isinstance(exc, ETagMismatch), workers=8, transfers=5)
    assert not gave_up.passed and "TransactionFailed" in gave_up.message
    right = check.redis_transaction(good_transfer, {"status": 500, "debit_applied": True, "credit_applied": False})
    assert right.passed and right.data == {"status": 500, "debit_applied": True, "credit_applied": False}
    assert not check.redis_transaction(good_transfer, {"status": 409, "debit_applied": False,
                                                       "credit_applied": False}).passed


def test_the_measurement_check_wants_the_replicated_store(stacks, tmp_path):
    from statelab.lessons import consistency

    sqlite = Session(stacks["sqlite"].endpoint, stack=stacks["sqlite"])
    check = _checker("05_consistency_lab", sqlite, tmp_path)
    assert "placeholder" in check.measurement(...).message
    timings = consistency.measure_saves(sqlite, samples=50, progress=False)
    assert "without replicas" in check.measurement(timings).message
    redis = Session(stacks["redis"].endpoint, stack=stacks["redis"])
    check = _checker("05_consistency_lab", redis, tmp_path)
    measured = check.measurement(consistency.measure_saves(redis, samples=50, progress=False))
    assert measured.passed and "exactly one WAIT per strong save (50)" in measured.message
    answers = {"page_views": ("eventual", "lost views are fine and strong costs"),
               "replica_report": ("strong", "the report reads the replica directly"),
               "own_reads": ("eventual", "the sidecar reads the primary anyway")}
    assert check.choice(**answers).passed
    wrong = check.choice(**{**answers, "own_reads": ("strong", "to be on the safe side")})
    assert not wrong.passed and "reads from the Redis primary" in wrong.message


def test_class_runs_join_one_roster_and_share_one_counter(stacks):
    session = Session(stacks["redis"].endpoint, stack=stacks["redis"])
    room = labmod.open_class(session)
    assert room.class_id.startswith("dry-run-")
    gate = threading.Barrier(2)
    runs: list = []

    def attendee(name: str) -> None:
        runs.append(labmod.class_run(session, good_attempt, good_backoff, 50, class_id=room.class_id, attendee=name,
                                     writers=4, operations=5, start=gate))

    threads = [threading.Thread(target=attendee, args=(n,)) for n in ("ada", "grace")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    view = labmod.class_view(session, room.class_id)
    assert sorted(view.roster) == ["ada", "grace"] and len(view.runs) == 2
    assert view.counter == view.acknowledged == 40 and view.lost_updates == 0
    assert "no update lost" in view.verdict()
    assert labmod.reset_class(session, room.class_id) and labmod.class_view(session, room.class_id).roster == []
