"""A write whose reply from Redis is lost: statelab's sidecar does what a real daprd does (docs/dapr-behaviour.md §15).

A TCP proxy sits between the sidecar and Redis. Armed with a key, it passes the next command that names the key on
to Redis, so Redis applies it, then throws Redis's reply away and closes that connection. The sidecar's Redis
client sees the connection fail after its command was written: the outcome is unknown to it. daprd's go-redis
sends the command again on a new connection; statelab's client does the same, on purpose, so that a lesson that
passes on statelab does not fail on a real sidecar. The proxy counts how often Redis received the key, and the
test reads what the store holds afterwards: the version in the hash says how many times the write was applied.

Measured on daprd v1.18.3 (2026-12-07), and now statelab's too: a save (single, bulk, strong) or a delete is sent
again, so a first-write save answers 409 for its own success and a last-write save is applied twice; a transaction
is sent once and answers 500 ``EOF`` though Redis applied it. statelab used to resend transactions too, and
applied them twice: this test found it.

Each case runs on both runtimes with the same assertions.
"""

from __future__ import annotations

import re
import socket
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import requests
import yaml
from helpers import BOTH_RUNTIMES, daprd_binary, make_stack

from statelab.local import Stack

KEY = re.compile(rb"lost-[0-9a-f]{10}")  # the keys these tests write (Setup.key)


class LosingProxy:
    """Relays TCP between the sidecar and Redis; ``lose_reply_to(key)`` drops the reply to the next command
    that names ``key`` (once), and ``received(key)`` counts the commands naming a key that reached Redis since."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self._armed: bytes | None = None
        self._seen: dict[bytes, int] = {}
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def lose_reply_to(self, key: str) -> None:
        with self._lock:
            self._armed = key.encode()
            self._seen.clear()

    def received(self, key: str) -> int:
        with self._lock:
            return self._seen.get(key.encode(), 0)

    def close(self) -> None:
        self.listener.close()
        for sock in list(self._sockets):
            sock.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            self._sockets += [client, upstream]
            losing = threading.Event()
            threading.Thread(target=self._requests, args=(client, upstream, losing), daemon=True).start()
            threading.Thread(target=self._replies, args=(upstream, client, losing), daemon=True).start()

    def _requests(self, client: socket.socket, upstream: socket.socket, losing: threading.Event) -> None:
        try:
            while data := client.recv(65536):
                with self._lock:
                    for key in KEY.findall(data):
                        self._seen[key] = self._seen.get(key, 0) + 1
                    if self._armed and self._armed in data:
                        self._armed = None
                        losing.set()  # before the command goes on: its reply cannot overtake the flag
                upstream.sendall(data)
        except OSError:
            pass
        finally:
            _shut(upstream)

    def _replies(self, upstream: socket.socket, client: socket.socket, losing: threading.Event) -> None:
        try:
            while data := upstream.recv(65536):
                if losing.is_set():  # Redis applied the command and answered; the sidecar never hears it
                    break
                client.sendall(data)
        except OSError:
            pass
        finally:
            _shut(client)
            _shut(upstream)


def _shut(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


class Setup:
    def __init__(self, sidecar: Stack, store: Stack, proxy: LosingProxy) -> None:
        self.url = f"{sidecar.endpoint}/v1.0/state/statestore"
        self.redis = redis.Redis.from_url(store.redis_url())
        self.proxy = proxy
        self.app_id = sidecar.app_id
        self.runtime = sidecar.runtime

    def key(self) -> str:
        return f"lost-{uuid.uuid4().hex[:10]}"

    def version(self, key: str) -> int:
        return int(self.redis.hget(f"{self.app_id}||{key}", "version") or 0)

    def value(self, key: str) -> bytes | None:
        return self.redis.hget(f"{self.app_id}||{key}", "data")


@pytest.fixture(scope="module", params=BOTH_RUNTIMES)
def setup(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    runtime = request.param
    extra = {"runtime": "daprd", "daprd": daprd_binary()} if runtime == "daprd" else {}
    with make_stack(tmp_path_factory.mktemp(f"lost-store-{runtime}"), sidecars=0, replicas=0) as store:
        proxy = LosingProxy(store.redis_port)
        resources = tmp_path_factory.mktemp(f"lost-resources-{runtime}")
        component = store.store_component("statestore", redisHost=f"127.0.0.1:{proxy.port}")
        (resources / "statestore.yaml").write_text(yaml.safe_dump(component))
        try:
            with make_stack(tmp_path_factory.mktemp(f"lost-{runtime}"), sidecars=1, resources_path=Path(resources),
                            start_store=False, **extra) as sidecar:
                yield Setup(sidecar, store, proxy)
        finally:
            proxy.close()


def test_a_first_write_save_whose_reply_was_lost_is_sent_again_and_conflicts_with_itself(setup: Setup) -> None:
    key = setup.key()
    assert requests.post(setup.url, json=[{"key": key, "value": "v1"}]).status_code == 204
    etag = requests.get(f"{setup.url}/{key}").headers["ETag"]
    setup.proxy.lose_reply_to(key)
    answer = requests.post(setup.url, json=[{"key": key, "value": "v2", "etag": etag,
                                             "options": {"concurrency": "first-write"}}], timeout=30)
    assert setup.proxy.received(key) == 2  # sent, reply lost, sent again with the same ETag
    assert setup.value(key) == b'"v2"' and setup.version(key) == 2  # the first one was applied, once
    assert answer.status_code == 409, answer.text  # the resend found its own write: a success reported as a conflict
    assert answer.json()["errorCode"] == "ERR_STATE_SAVE"


def test_a_last_write_save_whose_reply_was_lost_is_applied_twice(setup: Setup) -> None:
    key = setup.key()
    assert requests.post(setup.url, json=[{"key": key, "value": "v1"}]).status_code == 204
    setup.proxy.lose_reply_to(key)
    answer = requests.post(setup.url, json=[{"key": key, "value": "v2"}], timeout=30)
    assert (answer.status_code, setup.proxy.received(key)) == (204, 2)
    assert setup.value(key) == b'"v2"' and setup.version(key) == 3  # v1 is version 1; v2 written twice


def test_a_transaction_whose_reply_was_lost_is_not_sent_again_and_fails_though_applied(setup: Setup) -> None:
    key = setup.key()
    assert requests.post(setup.url, json=[{"key": key, "value": "v1"}]).status_code == 204
    setup.proxy.lose_reply_to(key)
    body = {"operations": [{"operation": "upsert", "request": {"key": key, "value": "v2"}}]}
    answer = requests.post(f"{setup.url}/transaction", json=body, timeout=30)
    assert setup.proxy.received(key) == 1  # a MULTI/EXEC block, once written, is never sent again
    assert setup.value(key) == b'"v2"' and setup.version(key) == 2  # applied, once
    assert answer.status_code == 500 and answer.json() == {
        "errorCode": "ERR_STATE_TRANSACTION", "message": "error while executing state transaction: EOF"}


def test_a_bulk_save_resends_the_item_whose_reply_was_lost(setup: Setup) -> None:
    key, other = setup.key(), setup.key()
    assert requests.post(setup.url, json=[{"key": key, "value": "v1"}]).status_code == 204
    setup.proxy.lose_reply_to(key)
    answer = requests.post(setup.url, json=[{"key": key, "value": "v2"}, {"key": other, "value": "v2"}], timeout=30)
    assert (answer.status_code, setup.proxy.received(key), setup.version(key)) == (204, 2, 3)
    if setup.runtime == "daprd":
        # go-redis takes a pooled connection per command: the other item's reply came back on its own
        assert (setup.proxy.received(other), setup.version(other)) == (1, 1)
    else:
        # statelab pipelines both items on one connection when they leave together, so the lost connection can
        # take the other reply with it and both are sent again (docs/fidelity.md): applied as often as sent
        assert setup.proxy.received(other) in (1, 2) and setup.version(other) == setup.proxy.received(other)


def test_a_delete_with_an_etag_whose_reply_was_lost_is_sent_again_and_succeeds(setup: Setup) -> None:
    key = setup.key()
    assert requests.post(setup.url, json=[{"key": key, "value": "v1"}]).status_code == 204
    etag = requests.get(f"{setup.url}/{key}").headers["ETag"]
    setup.proxy.lose_reply_to(key)
    answer = requests.delete(f"{setup.url}/{key}", headers={"If-Match": etag}, timeout=30)
    assert setup.proxy.received(key) == 2
    assert setup.value(key) is None  # deleted by the first one
    # the resend finds no key, and the delete script deletes a missing key whatever the ETag: no 409 here
    assert answer.status_code == 204, answer.text
