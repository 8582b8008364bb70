"""kill -9 during writes loses nothing that was acknowledged.

A writer saves distinct keys one after another and records each 204. Mid-stream the sidecar is
killed with SIGKILL (and, on Redis, the primary too: AOF with appendfsync always) and restarted.
Afterwards every acknowledged key must read back with its value. Writes in flight at the kill may
or may not have landed; those are not counted as acknowledged.
"""

from __future__ import annotations

import signal
import threading
import time

import pytest
from helpers import STORE_NAME, make_stack, wait_until

from statelab.client import StateClient
from statelab.errors import DaprError

pytestmark = pytest.mark.slow


class Writer(threading.Thread):
    """Saves key-0, key-1, ... until stopped; keeps going through errors (the sidecar comes back)."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.acked: list[int] = []
        self.errors = 0
        self.halt = threading.Event()

    def run(self) -> None:
        client = StateClient(self.url, timeout=5)
        n = 0
        while not self.halt.is_set():
            try:
                client.save(STORE_NAME, f"durable-{n}", {"n": n})
                self.acked.append(n)
            except DaprError:
                self.errors += 1
                time.sleep(0.02)
            n += 1


def _kill_and_restart_during_writes(stack, *, kill_redis: bool) -> Writer:
    writer = Writer(stack.endpoint)
    writer.start()
    assert wait_until(lambda: len(writer.acked) >= 50, timeout=20)
    stack.kill_sidecar(0, signal.SIGKILL)
    if kill_redis:
        stack.restart_redis_primary(signal.SIGKILL)
    acked_before_restart = len(writer.acked)
    stack.start_sidecar(0)
    assert wait_until(lambda: len(writer.acked) >= acked_before_restart + 50, timeout=20)
    writer.halt.set()
    writer.join(10)
    assert writer.errors > 0, "the writer should have seen the sidecar go away"
    return writer


def _assert_all_acknowledged_present(url: str, acked: list[int]) -> None:
    client = StateClient(url)
    keys = [f"durable-{n}" for n in acked]
    found = client.get_bulk(STORE_NAME, keys)
    missing = [k for k, s in zip(keys, found, strict=False) if s is None]
    assert missing == []
    assert all(s.value == {"n": n} for n, s in zip(acked, found, strict=False))


def test_sqlite_keeps_every_acknowledged_write_across_sidecar_kill(tmp_path):
    with make_stack(tmp_path, store="sqlite") as stack:
        writer = _kill_and_restart_during_writes(stack, kill_redis=False)
        _assert_all_acknowledged_present(stack.endpoint, writer.acked)


def test_redis_with_aof_keeps_every_acknowledged_write_across_sidecar_and_primary_kill(tmp_path):
    with make_stack(tmp_path, store="redis", replicas=0, appendonly=True) as stack:
        writer = _kill_and_restart_during_writes(stack, kill_redis=True)
        _assert_all_acknowledged_present(stack.endpoint, writer.acked)
