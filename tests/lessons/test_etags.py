"""statelab.lessons.etags against real sidecars on every store: traces, races, the retry loop and the live matrix."""

from __future__ import annotations

import random
import socket

import pytest
from helpers import STORE_NAME, free_port_base

from statelab.client import StateClient
from statelab.errors import StoreNotFound
from statelab.lessons import etags
from statelab.local import port_is_free
from statelab.session import Session

# Status a create-if-absent loser gets: Redis refuses a first-write key with 500, the others with 409.
LOSER_STATUS = {"redis": 500, "sqlite": 409, "in-memory": 409}


class Interfering(StateClient):
    """A real client whose first ``rivals`` reads are each followed by another writer's save (a forced conflict)."""

    def __init__(self, url: str, rivals: int) -> None:
        super().__init__(url)
        self.rivals = rivals
        self.rival = StateClient(url)

    def get(self, store, key, **kwargs):  # type: ignore[override]
        state = super().get(store, key, **kwargs)
        if self.rivals > 0:
            self.rivals -= 1
            self.rival.save(store, key, (state.value if state else 0) + 100)
        return state


def recorder(waits: list[int]) -> etags.Backoff:
    def backoff(attempt: int) -> float:
        waits.append(attempt)
        return 0.0

    return backoff


# --- traces -----------------------------------------------------------------------------------------


def test_forced_interleaving_lets_the_first_writer_win_and_refuses_the_stale_one(api):
    trace = etags.forced_interleaving(api.client(), STORE_NAME)
    reads = [s for s in trace.steps if s.action == "read" and s.who in ("A", "B")]
    assert reads[0].etag == reads[1].etag  # both writers start from the same version
    assert trace.statuses("save", "A") == [204]
    assert trace.statuses("save", "B") == [409]
    assert trace.final == {"balance": 110}
    assert api.client().get(STORE_NAME, trace.key).value == {"balance": 110}


def test_stale_delete_is_409_and_the_value_survives(api):
    trace = etags.stale_delete(api.client(), STORE_NAME)
    assert trace.statuses("delete") == [409]
    assert api.client().get(STORE_NAME, trace.key).value == {"items": 2}


def test_trace_renders_one_table_row_per_step(api):
    trace = etags.stale_delete(api.client(), STORE_NAME)
    page = trace._repr_html_()
    assert page.count("<tr>") == 1 + len(trace.steps)
    assert "409 Conflict" in page
    assert len(trace.rows()) == len(trace.steps)


# --- create-if-absent ---------------------------------------------------------------------------------


def test_exactly_one_of_several_racing_creators_wins(api):
    race = etags.race_to_create(api.client(), STORE_NAME, creators=6)
    assert len(race.winners) == 1
    assert race.owner == {"owner": race.winners[0]}
    assert race.loser_statuses == [LOSER_STATUS[api.store]]


def test_create_if_absent_over_a_plain_key_overwrites_only_on_redis(api):
    trace = etags.create_if_absent_cases(api.client(), STORE_NAME)
    expected = {"redis": [204, 500, 204], "sqlite": [204, 409, 409], "in-memory": [204, 409, 409]}
    assert trace.statuses("save") == expected[api.store]
    overwritten = trace.steps[2].value == {"by": "create-if-absent"}
    assert overwritten == (api.store == "redis")


# --- the retry loop -----------------------------------------------------------------------------------


def test_increment_with_retry_rereads_after_each_conflict_and_counts_attempts(api):
    key = api.key("counter")
    api.client().save(STORE_NAME, key, 0)
    waits: list[int] = []
    attempts = etags.increment_with_retry(Interfering(api.url, rivals=3), STORE_NAME, key, 5, recorder(waits))
    assert attempts == 4  # three conflicts, then success
    assert waits == [1, 2, 3]  # backoff asked after each failed attempt
    assert api.client().get(STORE_NAME, key).value == 301  # the rivals' 3 saves and our increment


def test_increment_with_retry_gives_up_after_max_attempts(api):
    key = api.key("counter")
    api.client().save(STORE_NAME, key, 0)
    waits: list[int] = []
    with pytest.raises(etags.RetriesExhausted) as info:
        etags.increment_with_retry(Interfering(api.url, rivals=100), STORE_NAME, key, 3, recorder(waits))
    assert info.value.attempts == 3
    assert info.value.last is not None and info.value.last.status == 409
    assert waits == [1, 2]  # no wait after the last attempt


def test_increment_with_retry_creates_a_missing_counter(api):
    key = api.key("counter")
    assert etags.increment_with_retry(api.client(), STORE_NAME, key, 3, by=5) == 1
    assert api.client().get(STORE_NAME, key).value == 5


def test_increment_with_retry_does_not_retry_other_errors(api):
    with pytest.raises(StoreNotFound):
        etags.increment_with_retry(api.client(), "no-such-store", api.key(), 5)


def test_retry_without_reread_never_succeeds(api):
    trace = etags.retry_without_reread(api.client(), STORE_NAME, attempts=3)
    assert trace.statuses("save", "A") == [409, 409, 409]
    assert trace.final == 1  # only B's increment


def test_retry_demo_with_several_writers_loses_no_increment(api):
    demo = etags.retry_demo(api.client(), STORE_NAME, writers=4, increments=8, max_attempts=50, progress=False)
    assert demo.successes + demo.gave_up == 32
    assert demo.lost == 0
    assert demo.final == demo.successes
    assert sum(demo.histogram.values()) == demo.successes
    assert 1 <= max(demo.attempts) <= 50


def test_exponential_backoff_is_bounded_and_seeded():
    waits = etags.exponential_backoff(base=0.01, cap=0.05, rng=random.Random(3))
    again = etags.exponential_backoff(base=0.01, cap=0.05, rng=random.Random(3))
    for attempt in range(1, 10):
        wait = waits(attempt)
        assert 0.0 <= wait <= min(0.05, 0.01 * 2**attempt)
        assert wait == again(attempt)


# --- the matrix -------------------------------------------------------------------------------------


@pytest.mark.parametrize("situation", etags.SITUATIONS, ids=lambda s: s.name)
def test_each_situation_answers_as_documented_on_each_store(api, situation):
    with api.client() as client:
        assert situation.probe(client, STORE_NAME) == etags.DOCUMENTED[situation.name][api.store]


def test_every_situation_is_documented_for_the_three_stores():
    assert {s.name for s in etags.SITUATIONS} == set(etags.DOCUMENTED)
    for row in etags.DOCUMENTED.values():
        assert set(row) == set(etags.STORE_TYPES)


def test_store_matrix_on_a_local_stack_starts_the_other_stores_and_matches_the_contract(stacks):
    lab = Session(stacks["sqlite"].endpoint, stack=stacks["sqlite"])  # not closed: the stack is shared
    base = free_port_base(30)
    matrix = etags.store_matrix(lab, first_port=base, progress=False)
    assert [c.name for c in matrix.columns] == ["redis", "sqlite", "in-memory"]
    assert matrix.matches_contract, matrix.mismatches
    assert matrix.checked_cells == 3 * len(etags.SITUATIONS)
    assert "sqlite at " + stacks["sqlite"].endpoint in matrix.source
    # the extra stacks are stopped again
    assert all(port_is_free(port) for port in range(base, base + 30))


def test_store_matrix_against_a_sidecar_it_did_not_start_uses_only_the_listed_stores(api):
    matrix = etags.store_matrix(Session(api.url), progress=False)
    assert [(c.name, c.store_type) for c in matrix.columns] == [(f"{STORE_NAME} (state.{api.store})", api.store)]
    assert "/v1.0/metadata" in matrix.source
    assert matrix.matches_contract, matrix.mismatches


def test_matrix_lists_mismatches_and_leaves_undocumented_stores_unchecked():
    situations = etags.SITUATIONS[:2]
    columns = [etags.Column("redis", "redis", "http://x", STORE_NAME),
               etags.Column("pg (state.postgresql)", "postgresql", "http://x", STORE_NAME)]
    observed = {"etag_format": {"redis": "uuid", "pg (state.postgresql)": "uuid"},
                "save_stale_etag": {"redis": "409", "pg (state.postgresql)": "409"}}
    matrix = etags.Matrix(columns, observed, "test", situations)
    assert matrix.mismatches == ["redis · ETag format: observed uuid, documented number"]
    assert not matrix.matches_contract
    assert matrix.checked_cells == 2
    page = matrix._repr_html_()
    assert page.count("<tr>") == 1 + len(situations)
    assert "documented number" in page and "not documented" in page


def test_start_stack_on_free_ports_skips_a_busy_block():
    base = free_port_base(30)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", base))
        busy.listen()
        stack = etags.start_stack_on_free_ports("in-memory", first_port=base)
        try:
            assert stack.http_port == base + 10
            assert StateClient(stack.endpoint).healthy()
        finally:
            stack.stop()
