"""Every lesson notebook runs headlessly on statelab's sidecar and records what the lesson claims.

``LESSONS`` (at the end) has one row per notebook in ``notebooks/``: the stores it runs on, the papermill
parameters beyond the runner's common ones (small enough for CI), the cell timeout, and the check that holds
its recorded metrics to what the lesson says (``check_00`` … ``check_07``, just below). Each row runs once per
store through ``statelab.tools.runner.run_one``, as ``test_lesson_runs_headless[<notebook>-<store>]``. A run on
another store than Redis runs where ``./scripts/lab`` would put it: under a recorded Redis lab stack whose
``DAPR_HTTP_ENDPOINT`` the kernel inherits, so it also proves the notebook's ``store`` parameter wins (the setup
cell starts a matching stack and says so).
tests/lessons/test_notebooks_on_daprd.py reads the same rows to hold a real daprd to the same checks.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from helpers import ROOT

from statelab.tools import runner

NOTEBOOKS = ROOT / "notebooks"


# --- 00: the Dapr how-to as written ----------------------------------------------------------------------


def check_00(m: dict) -> None:
    """Each docs bug shows and every fix works, as recorded on Redis (the same on statelab's sidecar and on daprd)."""
    # as written: the store name, then the double-encoded body
    assert m["as_written_save"] == [400, "ERR_STATE_STORE_NOT_FOUND"]
    assert m["double_encoded_save"] == [400, "ERR_MALFORMED_REQUEST"]
    # str.format on the JSON template
    assert m["format_exception"].startswith("KeyError")
    # k1 saved, key1 read: 204 and no ETag header
    assert m["get_key1_status"] == 204
    assert m["get_key1_exception"].startswith("KeyError")
    assert m["delete_key1"] == [204, "Some Data"]
    # consistency as a header is ignored: not in the query, never validated, no Redis WAIT
    assert m["header_consistency_in_query"] is False
    assert m["probe_header_delete_status"] == 204
    assert m["probe_query_delete"] == [500, "ERR_STATE_DELETE"]
    assert m["probe_redis_waits"] == [1, 0]
    # ETag example: unchecked 400, then the stale-ETag delete refused
    assert m["etag_unchecked_statuses"] == ["GET 200", "POST 400", "DELETE 204"]
    assert m["etag_stale_statuses"] == ["GET 200", "POST 204", "DELETE 409"]
    # the retry loop: still retrying at the timeout, every save a 204; the fixed loop needs one attempt
    stopped, attempts = m["retry_stopped_at_timeout"]
    assert stopped is True and attempts > 1
    assert m["retry_saves_all_204"] is True
    assert m["retry_rejected_attempts"] > 1
    assert m["fixed_retry"] == [1, "New Data"]
    # every fixed snippet
    assert m["fixed_save_status"] == 204
    assert m["strong_save_redis_waits"] == 1
    assert m["fixed_get"] == [200, "Some Data", True]
    assert m["fixed_delete"] == [204, None]
    assert m["fixed_etag_statuses"] == ["GET 200", "POST 204", "POST 409", "GET 200", "DELETE 204"]
    assert m["all_fixed_ok"] is True


# --- 01: save, get, delete --------------------------------------------------------------------------------


def check_01(m: dict) -> None:
    """It round-trips and sees 204 for a deleted key, on any store and either sidecar."""
    assert (m["save_status"], m["get_status"], m["delete_status"]) == (204, 200, 204)
    assert m["roundtrip_ok"] is True
    assert m["missing_key_status"] == 204
    assert m["deleted_key_status"] == 204
    assert m["etag_changed_on_write"] is True
    assert (m["stale_delete_status"], m["survived_stale_delete"]) == (409, True)
    assert m["bulk_keys_found"] == ["a", "b"]
    assert m["after_transaction"] == {"a": None, "b": {"n": 2}, "c": 3}
    assert 0.9 <= m["ttl_expired_after_s"] <= 6  # sqlite counts whole seconds
    assert m["stored_key"] == "myapp||order-2"
    assert m["exercise_save"] is True  # the exercise's answer (solve_exercises) passed its check


# --- 02: strong vs eventual (stops a Redis replica and restarts the sidecar) -------------------------------

SAMPLES_02 = 100  # the lesson's `samples` parameter here


def strong_saves_are_slower_at_the_median_with_a_replica(m: dict) -> None:
    assert m["store_type"] == "state.redis"
    assert m["connected_replicas"] == 1
    assert m["strong_p50_ms"] > m["eventual_p50_ms"]
    assert m["strong_extra_p50_ms"] > 0


def every_strong_save_sent_exactly_one_wait(m: dict) -> None:
    assert m["strong_saves"] == SAMPLES_02
    assert m["wait_calls"] == m["strong_saves"]


def no_replica_read_is_stale_after_a_strong_save(m: dict) -> None:
    assert m["stale_after_strong"] == 0
    assert 0 <= m["stale_after_eventual"] <= SAMPLES_02  # reported, not predicted (daprd: from 0 to most)


def strong_save_with_the_replica_down_succeeds_late(m: dict) -> None:
    assert m["replica_down_strong_ok"] is True
    assert m["replica_down_strong_s"] >= 0.9
    assert m["replica_down_eventual_s"] < m["replica_down_strong_s"]
    assert m["replica_down_wait_reply"] == 0
    assert m["replica_caught_up"] is True


def the_replica_count_is_read_once_at_sidecar_start(m: dict) -> None:
    assert m["waits_started_without_replica"] == 0
    assert m["waits_started_with_replica"] == 1


def consistency_as_a_header_is_ignored(m: dict) -> None:
    assert m["header_save_status"] == 204
    assert m["header_save_waits"] == 0
    assert m["body_save_waits"] == 1
    assert m["bogus_header_delete_status"] == 204
    assert m["bogus_query_delete_status"] == 500


def the_exercises_answer_passes_its_check(m: dict) -> None:
    assert m["exercise_strong_save"] is True  # solve_exercises: the answer puts consistency in the item's options


CLAIMS_02 = (strong_saves_are_slower_at_the_median_with_a_replica, every_strong_save_sent_exactly_one_wait,
             no_replica_read_is_stale_after_a_strong_save, strong_save_with_the_replica_down_succeeds_late,
             the_replica_count_is_read_once_at_sidecar_start, consistency_as_a_header_is_ignored,
             the_exercises_answer_passes_its_check)


def check_02(m: dict) -> None:
    """Every claim of lesson 02, each checked even when another fails: the failure names all that do not hold."""
    failed = []
    for claim in CLAIMS_02:
        try:
            claim(m)
        except AssertionError as error:
            failed.append(f"{claim.__name__}: {error}")
    assert not failed, "lesson 02 claims that did not hold:\n" + "\n".join(failed)


# --- 03: ETags and first-write-wins ---------------------------------------------------------------------


def check_03(m: dict) -> None:
    """The ETag lessons, as recorded on Redis (the same on statelab's sidecar and on daprd)."""

    # two writers in a forced order: exactly one 204 (A, first) and one 409 (B, stale)
    assert m["interleaving_write_statuses"] == [204, 409]
    assert m["interleaving_final_balance"] == 110

    # a delete with a stale If-Match is refused and the value survives
    assert m["stale_delete_status"] == 409
    assert m["stale_delete_value_survived"] is True

    # create-if-absent: exactly one of the racing creators wins
    assert m["create_race_winners"] == 1

    # retrying with the ETag read once never succeeds; the re-reading loop loses no increment
    assert set(m["stale_retry_statuses"]) == {409}
    assert m["retry_lost_increments"] == 0
    assert m["retry_final_counter"] == m["retry_successes"]
    assert m["retry_successes"] + m["retry_gave_up"] == 40  # writers x increments (defaults 4 x 10)
    assert 1 <= m["retry_max_attempts_seen"] <= 20

    # the live matrix agrees with the documented one
    assert m["matrix_matches_contract"] is True
    assert m["matrix_mismatches"] == []

    # conftest keeps DAPR_* out of the environment, so the notebook started a local Redis stack and the matrix
    # added the other two stores
    assert m["matrix_columns"] == ["redis", "sqlite", "in-memory"]
    assert m["matrix_observed"]["transaction_other_applied"] == {"redis": "yes", "sqlite": "no", "in-memory": "no"}

    # the Redis quirks: losers of the race get 500, and create-if-absent overwrites a plainly written key
    assert m["create_race_loser_statuses"] == [500]
    assert m["create_if_absent_statuses"] == [204, 500, 204]

    # the exercise's retry loop (solve_exercises) passed its check
    assert m["exercise_retry_loop"] is True


# --- 04: concurrent writers, 05: back-off and jitter -----------------------------------------------------


def check_04(m: dict) -> None:
    """First-write loses nothing and last-write loses updates, with the row's writers (8 x 10) on any store
    that all sidecars share, either sidecar."""
    assert m["first_write_lost_updates"] == 0 and m["first_write_findings"] == {}
    assert m["first_write_acknowledged"] == m["first_write_surviving"] == 80
    assert m["first_write_conflicts"] > 0
    assert m["last_write_acknowledged"] == 80 and m["last_write_conflicts"] == 0
    assert m["last_write_lost_updates"] > 0
    assert m["last_write_findings"]["missing-increments"] == 1
    assert m["append_last_write_findings"]["missing-ids"] == 1
    assert m["scaling_lost_updates"] == [0, 0, 0]
    assert m["scaling_attempts_per_success"][0] == 1.0  # one writer never conflicts
    assert m["exercise_attempt"] is True  # the exercise's attempt (solve_exercises), run by the harness


def check_05(m: dict) -> None:
    """Jitter beats plain exponential in the model and nothing is lost, with the row's writers (either sidecar)."""
    for n in (50, 100):
        calls = m[f"sim_calls_at_{n}"]
        assert calls["full-jitter"] < calls["exponential"] < calls["none"]
    for policy in ("none", "constant", "exponential", "full_jitter", "equal_jitter", "decorrelated_jitter"):
        assert m[f"{policy}_lost_updates"] == 0
        assert m[f"{policy}_attempts_per_success"] >= 1
    # the summary: retrying without back-off costs the most attempts (about twice the others, on either sidecar)
    backing_off = ("exponential", "full_jitter", "equal_jitter", "decorrelated_jitter")
    assert m["none_attempts_per_success"] > max(m[f"{policy}_attempts_per_success"] for policy in backing_off)
    assert m["real_lost_updates"] == 0
    assert set(m["real_calls_per_client"]) == {"exponential@2", "exponential@8", "full-jitter@2", "full-jitter@8"}
    assert m["exercise_backoff"] is True  # the exercise's full jitter (solve_exercises), run by real writers


# --- 06: the Dapr Python SDK over gRPC --------------------------------------------------------------------


def check_06(m: dict) -> None:
    """The SDK flow and its gRPC answers, as recorded on Redis (the same on statelab's sidecar and on daprd)."""

    # conftest keeps DAPR_* out of the environment: the notebook started a local stack with gRPC beside HTTP
    assert m["grpc_endpoint"].startswith("127.0.0.1:")

    # save/get: bytes in, bytes out; a missing key is empty data and ETag, not an error
    assert m["roundtrip_ok"] is True
    assert m["missing_key"] == ["", ""]

    # ETag conflicts raise DaprGrpcError with ABORTED on save and delete; nothing is written or deleted
    assert m["etag_changed_on_write"] is True
    assert m["conflict_code"] == ["ABORTED", "ERR_STATE_SAVE"]
    assert m["survived_conflict"] is True
    assert m["stale_delete_code"] == "ABORTED"
    assert m["deleted_data"] == ""

    # first-write: a stale ETag is ABORTED; no ETag on a first-write key is Redis's plain store error
    assert m["first_write_codes"] == ["ABORTED", "INTERNAL"]
    assert m["ticket_value"] == "assigned"

    # transaction in order, and its ETag conflict is INTERNAL
    assert m["after_transaction"] == {"a": None, "b": '{"n": 2}', "c": "3"}
    assert m["transaction_conflict_code"] == ["INTERNAL", "ERR_STATE_TRANSACTION"]
    assert m["bulk_found"] == ["b", "c", "order-100", "order-101"]

    # one store, two protocols (docs/dapr-behaviour.md §10)
    assert m["http_saved_read_by_sdk"] == '"hello"'
    assert m["sdk_saved_read_over_http"] == "hello"
    assert m["sdk_saved_http_content_type"] == "application/json"
    # Stored as JSON and written back compactly; the member order is the document's on statelab's sidecar and a Go
    # map's (random) on daprd, so the members are compared, not their order.
    assert m["json_metadata_read_over_http"] in ('{"b":1,"a":2}', '{"a":2,"b":1}')

    # the exercise's save_if_unchanged (solve_exercises) passed its check
    assert m["exercise_sdk_save"] is True


# --- 07: an app beside its sidecar (statelab run, the component file, resiliency) ---------------------------


def check_07(m: dict) -> None:
    """The app ran under `statelab run` and its state outlived its sidecar; keyPrefix made the documented keys; and,
    where a daprd binary was found, its resiliency findings as docs/dapr-behaviour.md §17 records them."""
    assert m["app_exit_code"] == 0 and m["app_output_ok"] is True
    assert m["read_back_order_1"] == {"orderId": 1, "item": "coffee", "qty": 1}
    assert m["read_back_order_3_status"] == 204
    assert m["prefix_stored_keys"] == {"appid": "myapp||prefix-demo", "name": "prefix-name||prefix-demo",
                                       "none": "prefix-demo", "shop": "shop||prefix-demo"}
    assert m["exercise_add_item"] is True  # the answer's retry, with another writer let in between read and save
    if not m["resiliency_measured"]:
        return
    retries = m["res_max_retries"]
    assert m["res_stale_save"] == [409, 1]  # an ETag failure of a save is permanent: no retry
    assert m["res_stale_delete"] == [409, 1 + retries]  # the same stale delete, resent by the policy
    assert m["res_stale_transaction"] == [500, 1 + retries]
    assert m["res_value_after_stale_writes"] == "v2"
    assert m["res_outage_without_policy"][0] == 500
    status, attempts = m["res_outage_with_policy"]
    assert status == 204 and attempts is not None and 2 <= attempts <= 1 + retries
    assert m["res_breaker_statuses"] == [409, 409, 409, 500, 500, 500]
    assert m["res_breaker_open_message"] == "circuit breaker is open"
    assert m["res_breaker_closed_after_s"] is not None


# --- the table --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Lesson:
    """One lesson notebook, how the tests run it, and what its recorded metrics must say."""

    path: Path
    stores: tuple[str, ...]  # statelab's sidecar runs it once on each (daprd: on Redis only)
    extra: dict[str, Any]  # papermill parameters beyond the runner's common ones
    cell_timeout: int  # seconds, per cell
    check: Callable[[dict], None]
    marks: tuple[pytest.MarkDecorator, ...] = ()

    @property
    def name(self) -> str:
        return self.path.stem


LESSONS = (
    Lesson(NOTEBOOKS / "00_howto_as_written.ipynb", ("redis",), {}, 180, check_00),
    Lesson(NOTEBOOKS / "01_save_get_delete.ipynb", ("redis", "sqlite", "in-memory"),
           {"ttl_seconds": 2, "solve_exercises": True}, 120, check_01),
    Lesson(NOTEBOOKS / "02_strong_vs_eventual.ipynb", ("redis",), {"samples": SAMPLES_02, "solve_exercises": True},
           180, check_02, marks=(pytest.mark.slow,)),
    Lesson(NOTEBOOKS / "03_etags_first_write_wins.ipynb", ("redis",), {"solve_exercises": True}, 180, check_03),
    Lesson(NOTEBOOKS / "04_concurrent_writers.ipynb", ("redis", "sqlite"),
           {"writers": 8, "operations": 10, "scaling_writers": [1, 4, 8], "solve_exercises": True}, 180, check_04),
    Lesson(NOTEBOOKS / "05_backoff_and_jitter.ipynb", ("redis",),
           {"writers": 8, "operations": 5, "real_writers": [2, 8], "solve_exercises": True}, 180, check_05),
    Lesson(NOTEBOOKS / "06_python_sdk.ipynb", ("redis",), {"bulk_keys": 2, "solve_exercises": True}, 180, check_06),
    Lesson(NOTEBOOKS / "07_app_beside_its_sidecar.ipynb", ("redis", "sqlite"), {"solve_exercises": True}, 180,
           check_07),
)


RUNS = [pytest.param(lesson, store, id=f"{lesson.name}-{store}", marks=lesson.marks)
        for lesson in LESSONS for store in lesson.stores]


@pytest.fixture(scope="module")
def lab_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    """What ./scripts/lab leaves for the kernels: a recorded `statelab up` stack (Redis, 1 replica, 1 sidecar);
    yields (its STATELAB_HOME, its endpoint). Started only when a row on another store runs."""
    from statelab import local
    from statelab.local import Stack, on_free_ports

    home = tmp_path_factory.mktemp("lab-home")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("STATELAB_HOME", str(home))
        where = on_free_ports(Stack(store="redis", replicas=1, sidecars=1, http_port=20000, grpc_port=20004,
                                    redis_port=20008, internal_grpc_port=20012), step=16, randomly=True)
        stack = local.up(store="redis", replicas=1, sidecars=1, http_port=where.http_port,
                         grpc_port=where.grpc_port, redis_port=where.redis_port,
                         internal_grpc_port=where.internal_grpc_port)
        try:
            yield home, stack.endpoint
        finally:
            local.down()


def setup_output(executed: Path) -> str:
    """The text the notebook's setup cell showed: the session's one-line description and its notes."""
    import nbformat

    for cell in nbformat.read(executed, as_version=4).cells:
        if "open_session(" in cell.source:
            return "".join(out.get("text", "") + out.get("data", {}).get("text/plain", "")
                           for out in cell.get("outputs", []))
    raise AssertionError(f"{executed.name} has no setup cell calling open_session")


@pytest.mark.parametrize(("lesson", "store"), RUNS)
def test_lesson_runs_headless(tmp_path: Path, lesson: Lesson, store: str, request: pytest.FixtureRequest,
                              monkeypatch: pytest.MonkeyPatch) -> None:
    if store != "redis":  # under ./scripts/lab's Redis stack, as a learner who sets `store` would be
        home, endpoint = request.getfixturevalue("lab_stack")
        monkeypatch.setenv("STATELAB_HOME", str(home))
        monkeypatch.setenv("DAPR_HTTP_ENDPOINT", endpoint)
    result = runner.run_one(lesson.path, tmp_path, store=store, cell_timeout=lesson.cell_timeout, extra=lesson.extra)
    assert result.ok, result.error
    lesson.check(result.metrics)
    assert (tmp_path / f"{lesson.name}.html").stat().st_size > 0
    if store != "redis":
        shown = setup_output(tmp_path / lesson.path.name)
        assert f"on {store}" in shown and f"runs redis, not {store}" in shown, shown


def test_every_lesson_is_covered() -> None:
    lessons = {p.stem for p in runner.discover([str(NOTEBOOKS)])}
    assert lessons == {lesson.name for lesson in LESSONS}


def test_a_lesson_run_with_its_exercise_unsolved_shows_the_check_and_no_error(tmp_path: Path) -> None:
    """What a learner sees on the first run: the stub is checked, the check says "not written yet", and the
    notebook runs to its end without an error output (papermill would fail on one)."""
    import nbformat

    lesson = next(lesson for lesson in LESSONS if lesson.name == "01_save_get_delete")
    extra = {**lesson.extra, "solve_exercises": False}
    result = runner.run_one(lesson.path, tmp_path, store="in-memory", cell_timeout=lesson.cell_timeout, extra=extra)
    assert result.ok, result.error
    assert result.metrics["exercise_save"] is False
    executed = nbformat.read(tmp_path / lesson.path.name, as_version=4)
    shown = [out.get("data", {}).get("text/plain", "") for cell in executed.cells if "check_save(" in cell.source
             for out in cell.get("outputs", [])]
    assert any("save_orders is not written yet" in text for text in shown), shown
    assert runner.error_outputs(executed) == []
