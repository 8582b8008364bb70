"""While Redis refuses connections, statelab's sidecar answers as a real daprd does: the same statuses, the same
messages, after the same waits (docs/dapr-behaviour.md §15).

Measured on daprd v1.18.3 (2026-12-07): its Redis client tries a command 1 + ``redisMaxRetries`` (3) times, 512 ms
apart (the state store's retry interval defaults put the minimum above the maximum, so every wait is the maximum).
A save fails after 1.54 s and rides out an outage of up to about 1.5 s; a transaction is never retried and fails at
once; a save or delete carrying an ETag fails as an ETag error, 409; a get reads the hash, then a plain value, each
with its retries (3.08 s); a bulk get reads every key so, at once, and answers 200 with an error per key. statelab's
sidecar used to fail every request within about 60 ms, answer 500 for an ETag save and 500 for a bulk get. Each test runs on both runtimes with the same assertions.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
import requests
from helpers import BOTH_RUNTIMES, daprd_binary, make_stack

from statelab.client import StateClient
from statelab.errors import ETagMismatch, is_save_conflict, store_unreachable
from statelab.local import Stack

RETRIES_TAKE = (1.3, 2.5)  # seconds: 3 waits of 512 ms, with room for a busy machine


@pytest.fixture(scope="module", params=BOTH_RUNTIMES)
def stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    extra = {"runtime": "daprd", "daprd": daprd_binary()} if request.param == "daprd" else {}
    with make_stack(tmp_path_factory.mktemp(f"outage-{request.param}"), store="redis", replicas=0, **extra) as s:
        yield s


@pytest.fixture
def url(stack: Stack) -> Iterator[str]:
    """The state URL of a sidecar whose Redis primary was just stopped (and is started again afterwards)."""
    url = f"{stack.endpoint}/v1.0/state/statestore"
    assert requests.post(url, json=[{"key": "k", "value": 1}]).status_code == 204
    stack.stop_redis_primary()
    try:
        yield url
    finally:
        if stack.pids.get("redis-0") is None:
            stack.start_redis_primary()
        assert requests.post(url, json=[{"key": "k", "value": 1}], timeout=30).status_code == 204


def timed(send) -> tuple[requests.Response, float]:  # noqa: ANN001 - a lambda
    started = time.monotonic()
    answer = send()
    return answer, time.monotonic() - started


def refused(stack: Stack) -> str:
    return f"dial tcp 127.0.0.1:{stack.redis_port}: connect: connection refused"


def test_a_save_is_retried_for_about_one_and_a_half_seconds_then_is_a_500(stack: Stack, url: str) -> None:
    answer, seconds = timed(lambda: requests.post(url, json=[{"key": "k", "value": 2}], timeout=30))
    assert RETRIES_TAKE[0] < seconds < RETRIES_TAKE[1]
    assert answer.status_code == 500 and answer.json() == {
        "errorCode": "ERR_STATE_SAVE",
        "message": f"failed saving state in state store statestore: failed to set key myapp||k: {refused(stack)}"}


def test_a_save_with_an_etag_fails_as_an_etag_error_409(stack: Stack, url: str) -> None:
    answer = requests.post(url, json=[{"key": "k", "value": 2, "etag": "1"}], timeout=30)
    assert answer.status_code == 409 and answer.json() == {  # not a conflict: Redis is away
        "errorCode": "ERR_STATE_SAVE",
        "message": "failed saving state in state store statestore: possible etag mismatch. error from state store: "
                   + refused(stack)}


def test_a_delete_fails_as_an_etag_error_409(stack: Stack, url: str) -> None:
    answer = requests.delete(f"{url}/k", timeout=30)
    assert answer.status_code == 409 and answer.json() == {
        "errorCode": "ERR_STATE_DELETE",
        "message": f"failed deleting state with key k: possible etag mismatch. error from state store: {refused(stack)}"}


def test_a_get_tries_the_hash_then_a_plain_value_each_with_its_retries(stack: Stack, url: str) -> None:
    answer, seconds = timed(lambda: requests.get(f"{url}/k", timeout=30))
    assert 2 * RETRIES_TAKE[0] < seconds < 2 * RETRIES_TAKE[1]
    assert answer.status_code == 500 and answer.json() == {
        "errorCode": "ERR_STATE_GET", "message": f"fail to get k from state store statestore: {refused(stack)}"}


def test_a_bulk_get_is_a_200_with_an_error_for_each_key(stack: Stack, url: str) -> None:
    answer, seconds = timed(lambda: requests.post(f"{url}/bulk", json={"keys": ["k", "j"]}, timeout=30))
    assert 2 * RETRIES_TAKE[0] < seconds < 2 * RETRIES_TAKE[1]  # the keys are read at the same time, each as a get
    assert answer.status_code == 200
    assert sorted(answer.json(), key=lambda item: item["key"]) == [
        {"key": "j", "error": refused(stack)}, {"key": "k", "error": refused(stack)}]


def test_a_transaction_is_not_retried(stack: Stack, url: str) -> None:
    body = {"operations": [{"operation": "upsert", "request": {"key": "k", "value": 3}}]}
    answer, seconds = timed(lambda: requests.post(f"{url}/transaction", json=body, timeout=30))
    assert seconds < 0.5
    assert answer.status_code == 500 and answer.json()["errorCode"] == "ERR_STATE_TRANSACTION"
    # daprd's pool still holds the connection Redis dropped and writes the block there (EOF); statelab has noticed
    # the drop and dials (refused). Either way, once (docs/fidelity.md).
    reason = {"daprd": "EOF", "statelab": refused(stack)}[stack.runtime]
    assert answer.json()["message"] == f"error while executing state transaction: {reason}"


def test_a_save_rides_out_an_outage_shorter_than_its_retries(stack: Stack, url: str) -> None:
    threading.Timer(0.3, stack.start_redis_primary).start()
    answer, seconds = timed(lambda: requests.post(url, json=[{"key": "k", "value": 4}], timeout=30))
    assert answer.status_code == 204, answer.text
    assert seconds > 0.45  # the retry after 512 ms found Redis back
    assert requests.get(f"{url}/k", timeout=30).json() == 4


def test_a_409_from_an_unreachable_store_is_told_apart_from_a_conflict(stack: Stack) -> None:
    # What the writers harness and the fault tests rely on, held to both runtimes' real messages.
    client = StateClient(stack.endpoint)
    client.save("statestore", "told", 1)
    with pytest.raises(ETagMismatch) as stale:
        client.save("statestore", "told", 2, etag="999")
    assert is_save_conflict(stale.value, had_etag=True) and not store_unreachable(str(stale.value))
    stack.stop_redis_primary()
    try:
        with pytest.raises(ETagMismatch) as away:
            client.save("statestore", "told", 2, etag="1")
    finally:
        stack.start_redis_primary()
    assert store_unreachable(str(away.value)) and not is_save_conflict(away.value, had_etag=True)
