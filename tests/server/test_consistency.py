"""``consistency=strong`` on Redis with a replica: the save returns only after ``WAIT``.

The Redis store reads the replica count at start-up and, on a strong save, sends ``WAIT <n> 1000``
and ignores the answer (docs/dapr-behaviour.md §12). So a strong save is on the replica when it returns,
and with the replica down it still succeeds, after about the one-second WAIT timeout.
"""

from __future__ import annotations

import time

import pytest
from helpers import STORE_NAME, make_stack

from statelab.client import StateClient

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def replicated(tmp_path_factory):
    with make_stack(tmp_path_factory.mktemp("strong"), store="redis", replicas=1) as stack:
        yield stack


def _wait_calls(stack) -> int:
    primary = __import__("redis").Redis.from_url(stack.redis_url(0))
    stats = primary.info("commandstats")
    return int(stats.get("cmdstat_wait", {}).get("calls", 0))


def test_strong_save_is_on_the_replica_when_it_returns(replicated):
    client = StateClient(replicated.endpoint)
    replica = __import__("redis").Redis.from_url(replicated.redis_url(1))
    waits_before = _wait_calls(replicated)
    for i in range(50):
        client.save(STORE_NAME, "strong-key", {"i": i}, consistency="strong")
        # Read the replica directly, straight after the 204: it must already have this version.
        assert replica.hget("myapp||strong-key", "data") == b'{"i":%d}' % i
    assert _wait_calls(replicated) - waits_before == 50


def test_eventual_save_sends_no_wait(replicated):
    client = StateClient(replicated.endpoint)
    waits_before = _wait_calls(replicated)
    for i in range(20):
        client.save(STORE_NAME, "eventual-key", i, consistency="eventual")
    client.save(STORE_NAME, "eventual-key", 99)
    assert _wait_calls(replicated) == waits_before


def test_strong_save_with_replica_down_still_succeeds_after_the_wait_timeout(replicated):
    client = StateClient(replicated.endpoint)
    replicated.stop_replica(0)
    try:
        started = time.monotonic()
        client.save(STORE_NAME, "lonely-key", "saved anyway", consistency="strong")
        elapsed = time.monotonic() - started
        assert client.get(STORE_NAME, "lonely-key").value == "saved anyway"
        # Dapr's WAIT times out after 1000 ms and its result is ignored: a 204, late.
        assert elapsed >= 0.9
    finally:
        replicated.start_replica(0)


@pytest.mark.parametrize("store", ["redis", "sqlite", "in-memory"])
def test_strong_saves_are_the_first_requests_a_fresh_sidecar_gets(tmp_path, store):
    """On 3.12+ ``wait_for`` refuses to run outside a task; the first strong saves used to open Redis
    connections there and fail with 500 for good. Sixteen at once, before anything else, on every store."""
    from concurrent.futures import ThreadPoolExecutor

    with make_stack(tmp_path, store=store, replicas=1 if store == "redis" else 0) as stack:
        client = StateClient(stack.endpoint)

        def save(i: int) -> None:
            client.save(STORE_NAME, f"first-{i}", {"i": i}, concurrency="first-write", consistency="strong")

        with ThreadPoolExecutor(16) as pool:
            list(pool.map(save, range(16)))
        assert [client.get(STORE_NAME, f"first-{i}").value for i in range(16)] == [{"i": i} for i in range(16)]
        if store == "redis":
            replica = __import__("redis").Redis.from_url(stack.redis_url(1))
            assert replica.hget("myapp||first-15", "data") == b'{"i":15}'
        client.close()
