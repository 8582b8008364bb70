"""The lessons' exercises (``statelab.lessons.exercises``), against real sidecars on every store.

For each exercise the lesson's answer gets ✓ and realistic wrong answers get ✗ with the words that say what the
code did and what to change. A stub is "not written yet", a learner's crash is a verdict (never an exception), and
the verdict lands in the lesson's metrics. The last tests hold the notebooks to the exercise cells' shape: task,
stub, collapsed answer that runs only with ``solve_exercises``, check. (The headless runs with the answers are in
test_notebooks.py.)
"""

from __future__ import annotations

import inspect
import json
import random
import re
import time
from collections.abc import Callable, Iterator

import grpc
import nbformat
import pytest
import requests
from dapr.clients.exceptions import DaprGrpcError
from dapr.clients.grpc._state import Concurrency, StateOptions
from helpers import ROOT, Target

from statelab import sdk
from statelab.client import StateClient
from statelab.errors import ETagMismatch
from statelab.lessons import etags, exercises
from statelab.metrics import Metrics
from statelab.session import Session
from statelab.writers import WritersConfig, compare_policies


@pytest.fixture
def lab(api: Target) -> Iterator[Session]:
    """The shared stack as a lesson sees it (closing it leaves the stack running for the other tests)."""
    session = Session(api.url, stack=api.stack, owns_stack=False)
    yield session
    session.close()


def _says(verdict: exercises.Verdict, *words: str) -> None:
    text = verdict.text()
    missing = [w for w in words if w not in text]
    assert not missing, f"{missing} not in:\n{text}"


def _right(verdict: exercises.Verdict) -> None:
    assert verdict.passed, verdict.text()
    assert verdict.headline.startswith("✓") and "What to change" not in verdict.text()


def _wrong(verdict: exercises.Verdict, *words: str) -> None:
    assert not verdict.passed and not verdict.not_written, verdict.text()
    assert verdict.headline.startswith("✗") and verdict.fix
    _says(verdict, *words)


# --- 01: save several orders with one request ---------------------------------------------------------------


def save_orders(url, orders):
    return requests.post(url, json=[{"key": key, "value": value} for key, value in orders.items()])


def _one_request_per_order(url, orders):
    return [requests.post(url, json=[{"key": k, "value": v}]) for k, v in orders.items()][-1]


def _saves_but_returns_nothing(url, orders):
    save_orders(url, orders)


WRONG_SAVES = [
    pytest.param(lambda url, orders: requests.post(url, json=orders), ("JSON object", "array", "400"),
                 id="a dict instead of a list"),
    pytest.param(lambda url, orders: requests.post(url, json=json.dumps([{"key": k, "value": v}
                                                                          for k, v in orders.items()])),
                 ("JSON string", "encoded twice"), id="the body encoded twice"),
    pytest.param(lambda url, orders: requests.post(url, json=[{"key": k, "value": json.dumps(v)}
                                                              for k, v in orders.items()]),
                 ("reads back as the text", "encoded twice"), id="each value encoded as text first"),
    pytest.param(lambda url, orders: requests.post(url, json=list(orders.values())), ("`key`",),
                 id="items without keys"),
    pytest.param(lambda url, orders: requests.post(url, json=[{"key": k, "value": v}
                                                              for k, v in list(orders.items())[:1]]),
                 ("1 of the 2", "one item per order"), id="only the first order"),
    pytest.param(_one_request_per_order, ("one request per order",), id="one request per order"),
    pytest.param(_saves_but_returns_nothing, ("Both orders are saved", "Return the response"),
                 id="the response not returned"),
    pytest.param(lambda url, orders: requests.get(url), ("GET", "POST"), id="a GET"),
]


def test_the_save_exercise_accepts_one_post_of_an_array_of_items(lab):
    verdict = exercises.check_save(save_orders, lab)
    _right(verdict)
    _says(verdict, "One `POST` sent a JSON array of 2 items", "204")


@pytest.mark.parametrize(("answer", "words"), WRONG_SAVES)
def test_the_save_exercise_refuses_a_wrong_save_and_says_why(lab, answer, words):
    _wrong(exercises.check_save(answer, lab), *words)


# --- 02: a strong save --------------------------------------------------------------------------------------


def strong_save(url, key, value, consistency):
    return requests.post(url, json=[{"key": key, "value": value, "options": {"consistency": consistency}}])


WRONG_STRONG_SAVES = [
    pytest.param(lambda url, key, value, consistency: requests.post(
        url, json=[{"key": key, "value": value}], headers={"consistency": consistency}),
        ("never read your consistency", "as a header", "`options`"), id="consistency as a header"),
    pytest.param(lambda url, key, value, consistency: requests.post(
        url, json=[{"key": key, "value": value}], params={"consistency": consistency}),
        ("never read your consistency", "query string", "`options`"), id="consistency in the query string"),
    pytest.param(lambda url, key, value, consistency: requests.post(
        url, json=[{"key": key, "value": value, "consistency": consistency}]),
        ("never read your consistency", "beside `key` and `value`", "`options`"), id="consistency beside the value"),
    pytest.param(lambda url, key, value, consistency: requests.post(
        url, json={"key": key, "value": value, "options": {"consistency": consistency}}),
        ("did not save", "400", "JSON object", "array"), id="one item, not in an array"),
]


def test_the_strong_save_exercise_accepts_consistency_in_the_items_options(lab, api):
    verdict = exercises.check_strong_save(strong_save, lab)
    _right(verdict)
    _says(verdict, "`bogus` was refused", "500")
    if api.store == "redis":  # the shared Redis stack has a replica, which the sidecar counted when it started
        _says(verdict, "run 1 `WAIT`")


@pytest.mark.parametrize(("answer", "words"), WRONG_STRONG_SAVES)
def test_the_strong_save_exercise_refuses_consistency_where_a_save_ignores_it(lab, api, answer, words):
    verdict = exercises.check_strong_save(answer, lab)
    _wrong(verdict, *words)
    if api.store == "redis" and "never read" in verdict.text():
        _says(verdict, "run 0 `WAIT`s")


# --- 03: the retry loop -------------------------------------------------------------------------------------


def deposit(client, store, key, amount, max_attempts, backoff):
    for attempt in range(1, max_attempts + 1):
        state = client.get(store, key)
        try:
            client.save(store, key, {"balance": state.value["balance"] + amount}, etag=state.etag,
                        concurrency="first-write")
            return attempt
        except ETagMismatch:
            if attempt < max_attempts:
                time.sleep(backoff(attempt))
    raise etags.RetriesExhausted(key, max_attempts, None)


def _reuses_the_first_etag(client, store, key, amount, max_attempts, backoff):
    state = client.get(store, key)  # read once, before the loop
    for attempt in range(1, max_attempts + 1):
        try:
            client.save(store, key, {"balance": state.value["balance"] + amount}, etag=state.etag,
                        concurrency="first-write")
            return attempt
        except ETagMismatch:
            time.sleep(backoff(attempt))
    raise etags.RetriesExhausted(key, max_attempts, None)


def _unbounded(client, store, key, amount, max_attempts, backoff):
    attempt = 0
    while True:
        attempt += 1
        state = client.get(store, key)
        try:
            client.save(store, key, {"balance": state.value["balance"] + amount}, etag=state.etag,
                        concurrency="first-write")
            return attempt
        except ETagMismatch:
            time.sleep(backoff(attempt))


def _without_the_etag(client, store, key, amount, max_attempts, backoff):
    for attempt in range(1, max_attempts + 1):
        state = client.get(store, key)
        try:
            client.save(store, key, {"balance": state.value["balance"] + amount})
            return attempt
        except ETagMismatch:
            time.sleep(backoff(attempt))
    raise etags.RetriesExhausted(key, max_attempts, None)


def _last_write(client, store, key, amount, max_attempts, backoff):
    for attempt in range(1, max_attempts + 1):
        state = client.get(store, key)
        try:
            client.save(store, key, {"balance": state.value["balance"] + amount}, etag=state.etag,
                        concurrency="last-write")
            return attempt
        except ETagMismatch:
            time.sleep(backoff(attempt))
    raise etags.RetriesExhausted(key, max_attempts, None)


def _no_backoff(client, store, key, amount, max_attempts, backoff):
    for attempt in range(1, max_attempts + 1):
        state = client.get(store, key)
        try:
            client.save(store, key, {"balance": state.value["balance"] + amount}, etag=state.etag,
                        concurrency="first-write")
            return attempt
        except ETagMismatch:
            pass
    raise etags.RetriesExhausted(key, max_attempts, None)


def _gives_up_silently(client, store, key, amount, max_attempts, backoff):
    for attempt in range(1, max_attempts + 1):
        state = client.get(store, key)
        try:
            client.save(store, key, {"balance": state.value["balance"] + amount}, etag=state.etag,
                        concurrency="first-write")
            return attempt
        except ETagMismatch:
            time.sleep(backoff(attempt))
    return max_attempts


def _no_retry(client, store, key, amount, max_attempts, backoff):
    state = client.get(store, key)
    client.save(store, key, {"balance": state.value["balance"] + amount}, etag=state.etag, concurrency="first-write")
    return 1


WRONG_LOOPS = [
    pytest.param(_reuses_the_first_etag, ("read the account once", "Read at the start of every attempt"),
                 id="reuses the first ETag"),
    pytest.param(_unbounded, ("kept going", "stopped it at attempt 5", "Bound the loop"), id="unbounded"),
    pytest.param(_without_the_etag, ("deposit is lost", "no ETag", "`etag=`"), id="saves without the ETag"),
    pytest.param(_last_write, ("`last-write`", "first-write"), id="saves under last-write"),
    pytest.param(_no_backoff, ("never called `backoff`", "retried at once"), id="no backoff"),
    pytest.param(_gives_up_silently, ("as if it had succeeded", "raise"), id="gives up silently"),
    pytest.param(_no_retry, ("`ETagMismatch`", "try again"), id="no retry at all"),
]


def test_the_retry_loop_exercise_accepts_the_lessons_loop(lab):
    verdict = exercises.check_retry_loop(deposit, lab)
    _right(verdict)
    _says(verdict, "balance 100 → 110", "409, 409, 204", "`backoff(1)` and `backoff(2)`", "returned 3",
          "raised `RetriesExhausted`")


@pytest.mark.parametrize(("answer", "words"), WRONG_LOOPS)
def test_the_retry_loop_exercise_refuses_a_wrong_loop_and_says_why(lab, answer, words):
    _wrong(exercises.check_retry_loop(answer, lab), *words)


# --- 04: one attempt, run by the writers harness ------------------------------------------------------------


def attempt(client, store, key):
    state = client.get(store, key)
    client.save(store, key, state.value + 1, etag=state.etag, concurrency="first-write")


def _blind(client, store, key):
    state = client.get(store, key)
    client.save(store, key, state.value + 1)


def _blind_last_write(client, store, key):
    state = client.get(store, key)
    client.save(store, key, state.value + 1, etag=state.etag, concurrency="last-write")


def _swallows_the_conflict(client, store, key):
    state = client.get(store, key)
    try:
        client.save(store, key, state.value + 1, etag=state.etag, concurrency="first-write")
    except ETagMismatch:
        pass


def _retries_inside(client, store, key):
    while True:
        state = client.get(store, key)
        try:
            client.save(store, key, state.value + 1, etag=state.etag, concurrency="first-write")
            return
        except ETagMismatch:
            continue


WRONG_ATTEMPTS = [
    pytest.param(_blind, ("carried no ETag", "`etag=state.etag`"), id="without the ETag"),
    pytest.param(_blind_last_write, ("`last-write`", "first-write"), id="the ETag under last-write"),
    pytest.param(_swallows_the_conflict, ("returned as if it had saved", "escape"), id="swallows the 409"),
    pytest.param(_retries_inside, ("saved more than once", "the harness does the retrying"), id="retries inside"),
]


def test_the_attempt_exercise_accepts_a_read_and_a_save_with_its_etag(lab):
    verdict = exercises.check_attempt(attempt, lab, writers=6, operations=5)
    _right(verdict)
    _says(verdict, "6 writers × 5 increments", "30 acknowledged", "No lost updates")
    assert verdict.result.lost_updates == 0 and verdict.result.acknowledged == 30


@pytest.mark.parametrize(("answer", "words"), WRONG_ATTEMPTS)
def test_the_attempt_exercise_refuses_a_wrong_attempt_and_says_why(lab, answer, words):
    # 8 writers x 10, started together on one key: some saves are refused, which the last two answers mishandle
    _wrong(exercises.check_attempt(answer, lab, writers=8, operations=10), *words)


def test_an_attempt_without_the_etag_loses_updates_under_contention_and_the_checker_says_so(lab):
    verdict = exercises.check_attempt(_blind, lab, writers=8, operations=10)
    _wrong(verdict, "The checker:")
    assert verdict.result.lost_updates > 0  # 8 writers started together on one key: blind saves overwrite each other
    _says(verdict, "vanished")


# --- 05: full jitter ----------------------------------------------------------------------------------------

CONFIG = WritersConfig(writers=4, operations=5, base=0.002, cap=0.1)


def backoff(attempt, rng):
    return rng.uniform(0, min(CONFIG.cap, CONFIG.base * 2**attempt))


def _sleeps_itself(attempt, rng):
    time.sleep(0.06)
    return backoff(attempt, rng)


WRONG_BACKOFFS = [
    pytest.param(lambda attempt, rng: CONFIG.base, ("a constant", "no jitter"), id="a constant"),
    pytest.param(lambda attempt, rng: random.uniform(0, min(CONFIG.cap, CONFIG.base * 2**attempt)),
                 ("does not come from `rng`", "`random` module"), id="the global random"),
    pytest.param(lambda attempt, rng: min(CONFIG.cap, CONFIG.base * 2**attempt), ("without jitter", "in step"),
                 id="exponential without jitter"),
    pytest.param(lambda attempt, rng: rng.uniform(0, CONFIG.base * 2**attempt), ("beyond `cap`",), id="no cap"),
    pytest.param(lambda attempt, rng: rng.uniform(0, CONFIG.base), ("do not grow",), id="a bound that never grows"),
    pytest.param(lambda attempt, rng: min(CONFIG.cap, CONFIG.base * 2**attempt) * (0.5 + rng.random() / 2),
                 ("not full jitter", "from 0"), id="equal jitter"),
    pytest.param(lambda attempt, rng: rng.uniform(0, min(CONFIG.cap, 2.0 * 2**attempt)), ("retry 1", "`base`"),
                 id="seconds where milliseconds were meant"),
    pytest.param(lambda attempt, rng: -rng.random(), ("returned", "0 or more"), id="a negative wait"),
    pytest.param(_sleeps_itself, ("sleeps itself",), id="sleeps itself"),
]


def test_the_backoff_exercise_accepts_full_jitter_and_runs_real_writers_with_it(lab):
    verdict = exercises.check_backoff(backoff, lab, against=CONFIG)
    _right(verdict)
    _says(verdict, "Replayable", "full jitter", "4 writers × 5 increments", "0 lost")
    assert verdict.result.lost_updates == 0 and verdict.result.acknowledged == 20


def test_the_backoff_exercise_puts_the_learners_run_beside_the_built_in_policies(lab):
    comparison = compare_policies(lab.endpoints, ["none", "full-jitter"], CONFIG, progress=False)
    verdict = exercises.check_backoff(backoff, lab, against=comparison)
    _right(verdict)
    assert all(name in verdict.table for name in ("none", "full-jitter", "your backoff", "attempts per success"))
    assert "built-in policies" in verdict.text()


@pytest.mark.parametrize(("answer", "words"), WRONG_BACKOFFS)
def test_the_backoff_exercise_refuses_a_wrong_backoff_and_says_why(lab, answer, words):
    verdict = exercises.check_backoff(answer, lab, against=CONFIG)
    _wrong(verdict, *words)
    assert verdict.result is None  # judged from its draws: no writers ran on a wrong backoff


# --- 06: the SDK, an ETag and first-write -------------------------------------------------------------------


@pytest.fixture
def d(api: Target) -> Iterator[object]:
    client = sdk.connect(api.stack)
    yield client
    client.close()


FIRST_WRITE = StateOptions(concurrency=Concurrency.first_write)


def save_if_unchanged(d, store, key, value, etag):
    try:
        d.save_state(store, key, value, etag=etag, options=StateOptions(concurrency=Concurrency.first_write))
    except DaprGrpcError as err:
        if err.code() != grpc.StatusCode.ABORTED:
            raise
        return False
    return True


def _lets_the_conflict_escape(d, store, key, value, etag):
    d.save_state(store, key, value, etag=etag, options=FIRST_WRITE)
    return True


def _every_error_a_conflict(d, store, key, value, etag):
    try:
        d.save_state(store, key, value, etag=etag, options=FIRST_WRITE)
    except DaprGrpcError:
        return False
    return True


def _without_the_etag(d, store, key, value, etag):
    try:
        d.save_state(store, key, value, options=FIRST_WRITE)
    except DaprGrpcError as err:
        if err.code() != grpc.StatusCode.ABORTED:
            raise
        return False
    return True


def _without_options(d, store, key, value, etag):
    try:
        d.save_state(store, key, value, etag=etag)
    except DaprGrpcError as err:
        if err.code() != grpc.StatusCode.ABORTED:
            raise
        return False
    return True


def _under_last_write(d, store, key, value, etag):
    try:
        d.save_state(store, key, value, etag=etag, options=StateOptions(concurrency=Concurrency.last_write))
    except DaprGrpcError as err:
        if err.code() != grpc.StatusCode.ABORTED:
            raise
        return False
    return True


WRONG_SDK_SAVES = [
    pytest.param(_lets_the_conflict_escape, ("let `DaprGrpcError: ABORTED:", "escape", "return `False`"),
                 id="the conflict not caught"),
    pytest.param(_every_error_a_conflict, ("does not exist", "returned `False`", "`INVALID_ARGUMENT`", "`raise`"),
                 id="every error taken for a conflict"),
    pytest.param(_without_the_etag, ("carried no ETag",), id="without the ETag"),  # Redis overwrites, the others refuse
    pytest.param(_under_last_write, ("last_write",), id="under last-write"),
]


def test_the_sdk_exercise_accepts_first_write_with_the_etag_and_a_narrow_catch(lab, d):
    verdict = exercises.check_sdk_save(save_if_unchanged, d, lab)
    _right(verdict)
    _says(verdict, "returned `True`", "returned `False`", "let the error through (`INVALID_ARGUMENT`)")


def test_the_sdk_exercise_accepts_the_etag_without_state_options_and_says_it_relied_on_the_default(lab, d):
    """An ETag is checked unless a save says last_write: a save without StateOptions is right, and the ✓ says how."""
    verdict = exercises.check_sdk_save(_without_options, d, lab)
    _right(verdict)
    _says(verdict, "with no concurrency option", "unless a save says `last_write`")


@pytest.mark.parametrize(("answer", "words"), WRONG_SDK_SAVES)
def test_the_sdk_exercise_refuses_a_wrong_save_and_says_why(lab, d, answer, words):
    _wrong(exercises.check_sdk_save(answer, d, lab), *words)


# --- every check: stubs, crashes, metrics -------------------------------------------------------------------


def _stub(*args, **kwargs):
    raise NotImplementedError  # the notebooks' stubs, as committed


CHECKS: dict[str, Callable[..., exercises.Verdict]] = {
    "save": lambda fn, lab, metrics=None: exercises.check_save(fn, lab, metrics),
    "strong_save": lambda fn, lab, metrics=None: exercises.check_strong_save(fn, lab, metrics),
    "retry_loop": lambda fn, lab, metrics=None: exercises.check_retry_loop(fn, lab, metrics),
    "attempt": lambda fn, lab, metrics=None: exercises.check_attempt(fn, lab, metrics, writers=2, operations=2),
    "backoff": lambda fn, lab, metrics=None: exercises.check_backoff(fn, lab, metrics, CONFIG),
}


@pytest.mark.parametrize("name", sorted(CHECKS))
def test_a_stub_is_not_written_yet_and_recorded_as_false(lab, tmp_path, name):
    metrics = Metrics("exercise", tmp_path)
    started = time.monotonic()
    verdict = CHECKS[name](_stub, lab, metrics)
    assert verdict.not_written and not verdict.passed
    _says(verdict, "is not written yet", "NotImplementedError", "collapsed cell")
    assert "not written yet" in verdict._repr_html_()
    assert metrics.values == {f"exercise_{name}": False}
    assert time.monotonic() - started < 10  # a stub ends the check at once (lesson 04: no run of writers)


def test_a_stub_of_the_sdk_exercise_is_not_written_yet(lab, d, tmp_path):
    metrics = Metrics("exercise", tmp_path)
    verdict = exercises.check_sdk_save(_stub, d, lab, metrics)
    assert verdict.not_written and metrics.values == {"exercise_sdk_save": False}


def _typo(client, store, key):
    state = client.get(store, key)
    client.save(store, key, state.valeu + 1, etag=state.etag)  # a typo: AttributeError in the learner's line


@pytest.mark.parametrize("name", sorted(CHECKS))
def test_a_learners_crash_is_a_verdict_with_its_line_never_an_exception(lab, name):
    def crash(*args, **kwargs):
        return {}["balance"]  # a KeyError in the learner's own line

    verdict = CHECKS[name](crash, lab)
    _wrong(verdict, "KeyError", "`return {}[\"balance\"]`")


def test_a_crash_inside_a_writer_thread_stops_the_run_and_names_the_line(lab):
    verdict = exercises.check_attempt(_typo, lab, writers=4, operations=5)
    _wrong(verdict, "AttributeError", "valeu", "state.valeu + 1")


def test_a_wrong_signature_is_a_verdict_too(lab):
    _wrong(exercises.check_save(lambda url: None, lab), "TypeError")


def test_a_sidecar_error_in_the_learners_code_is_the_learners_and_one_in_the_checks_own_request_is_not(api, lab):
    def through_a_client(url, orders):
        StateClient(api.url).save_many("no-such-store", [{"key": k, "value": v} for k, v in orders.items()])

    _wrong(exercises.check_save(through_a_client, lab), "`save_orders` raised `StoreNotFound", "at `StateClient(")
    elsewhere = Session(api.url, store_name="no-such-store", stack=api.stack, owns_stack=False)
    try:
        verdict = exercises.check_save(save_orders, elsewhere)
    finally:
        elsewhere.close()
    _wrong(verdict, "The check's own request failed", "ERR_STATE_STORE_NOT_FOUND")


def test_the_verdict_is_recorded_in_the_lessons_metrics(lab, tmp_path):
    metrics = Metrics("01_save_get_delete", tmp_path)
    exercises.check_save(save_orders, lab, metrics)
    assert metrics.values["exercise_save"] is True
    assert json.loads(metrics.path.read_text())["metrics"]["exercise_save"] is True


def test_a_verdict_shows_as_a_short_block_that_wraps(lab):
    verdict = exercises.check_save(lambda url, orders: requests.post(url, json=orders), lab)
    shown = verdict._repr_html_()
    assert shown.startswith("<div") and "overflow-wrap:anywhere" in shown and "<pre" not in shown
    assert "✗ save_orders needs a change" in shown and "<b>What to change:</b>" in shown
    assert "<code>" in shown  # `backticked` spans become code


# --- the notebooks' exercise cells ----------------------------------------------------------------------------

LESSONS = {  # notebook -> (the learner's function, the check it calls)
    "01_save_get_delete": ("save_orders", "check_save"),
    "02_strong_vs_eventual": ("save", "check_strong_save"),
    "03_etags_first_write_wins": ("deposit", "check_retry_loop"),
    "04_concurrent_writers": ("attempt", "check_attempt"),
    "05_backoff_and_jitter": ("backoff", "check_backoff"),
    "06_python_sdk": ("save_if_unchanged", "check_sdk_save"),
}


def _tags(cell) -> list[str]:
    return cell.metadata.get("tags", [])


@pytest.mark.parametrize("name", sorted(LESSONS))
def test_each_lesson_has_a_task_a_stub_a_collapsed_answer_and_a_check(name):
    nb = nbformat.read(ROOT / "notebooks" / f"{name}.ipynb", as_version=4)
    function, check = LESSONS[name]
    params = next(c for c in nb.cells if "parameters" in _tags(c))
    assert "\nsolve_exercises = False" in params.source
    stubs = [i for i, c in enumerate(nb.cells) if "exercise" in _tags(c)]
    assert stubs, f"{name}: no exercise"
    for i in stubs:
        task, stub, answer, checking = nb.cells[i - 1:i + 3]
        assert task.cell_type == "markdown" and task.source.startswith("### ✏️ Exercise:")
        assert f"`{function}(" in task.source and "solve_exercises = True" in task.source
        assert f"def {function}(" in stub.source and "raise NotImplementedError" in stub.source
        assert "solution" in _tags(answer) and answer.metadata["jupyter"]["source_hidden"] is True
        assert "\nif solve_exercises:\n" in answer.source and f"    def {function}(" in answer.source
        assert checking.cell_type == "code" and re.search(rf"exercises\.{check}\({function}, (d, )?lab, metrics",
                                                         checking.source)
        assert all(c.get("outputs") == [] for c in (stub, answer, checking))


@pytest.mark.parametrize("name", sorted(LESSONS))
def test_each_lessons_answer_is_the_one_these_tests_prove_right(name):
    """The notebook's collapsed answer and this module's answer are the same function, so what the tests prove on
    every store is what the learner opens."""
    nb = nbformat.read(ROOT / "notebooks" / f"{name}.ipynb", as_version=4)
    function, _ = LESSONS[name]
    answer = next(c for c in nb.cells if "solution" in _tags(c)).source
    body = [ln.strip() for ln in answer.splitlines()[3:] if ln.strip()]  # below `if solve_exercises:` and the def
    mine = {"save_orders": save_orders, "save": strong_save, "deposit": deposit, "attempt": attempt,
            "backoff": backoff, "save_if_unchanged": save_if_unchanged}[function]
    source = " ".join(inspect.getsource(mine).split())
    for line in body:
        line = line.split("  #")[0]
        if function == "backoff":  # the notebook's parameters, this module's CONFIG
            line = line.replace("cap,", "CONFIG.cap,").replace("base *", "CONFIG.base *")
        assert " ".join(line.split()) in source, f"{name}: {line!r} is not in the tests' answer"
