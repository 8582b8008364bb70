"""statelab.client against the real sidecar: typed errors, the SDK environment variables, every call."""

from __future__ import annotations

import gc
import os
import resource
import socket
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

import pytest
from helpers import STORE_NAME, free_port_base, make_stack

from statelab.client import StateClient, default_endpoint, remove, upsert
from statelab.errors import (
    DaprError,
    ETagInvalid,
    ETagMismatch,
    MalformedRequest,
    SidecarUnavailable,
    StoreNotFound,
    TransactionFailed,
    Unauthorized,
)


def test_save_get_delete_round_trip(api):
    client = api.client()
    key = api.key()
    client.save(STORE_NAME, key, {"name": "Ada", "visits": 3})
    state = client.get(STORE_NAME, key)
    assert state.value == {"name": "Ada", "visits": 3}
    assert state.etag
    client.delete(STORE_NAME, key, etag=state.etag)
    assert client.get(STORE_NAME, key) is None


def test_stale_etag_raises_etag_mismatch_with_status_and_code(api):
    client = api.client()
    key = api.key()
    client.save(STORE_NAME, key, 1)
    stale = client.get(STORE_NAME, key).etag
    client.save(STORE_NAME, key, 2)
    with pytest.raises(ETagMismatch) as info:
        client.save(STORE_NAME, key, 3, etag=stale, concurrency="first-write")
    assert info.value.status == 409
    assert info.value.error_code == "ERR_STATE_SAVE"
    with pytest.raises(ETagMismatch):
        client.delete(STORE_NAME, key, etag=stale)
    assert client.get(STORE_NAME, key).value == 2


@pytest.mark.parametrize("api", ["redis"], indirect=True)
def test_non_numeric_etag_on_redis_raises_etag_invalid(api):
    client = api.client()
    key = api.key()
    client.save(STORE_NAME, key, 1)
    with pytest.raises(ETagInvalid) as info:
        client.save(STORE_NAME, key, 2, etag="not-a-number")
    assert info.value.status == 400


def test_unknown_store_and_bad_key_raise_their_own_errors(api):
    client = api.client()
    with pytest.raises(StoreNotFound) as info:
        client.get("no-such-store", "k")
    assert info.value.status == 400
    with pytest.raises(MalformedRequest):
        client.save(STORE_NAME, "a||b", 1)


def test_transaction_and_bulk_get(api):
    client = api.client()
    a, b, c = api.key("a"), api.key("b"), api.key("c")
    client.save(STORE_NAME, c, "old")
    client.transaction(STORE_NAME, [upsert(a, 1), upsert(b, {"x": 2}), remove(c)])
    got = client.get_bulk(STORE_NAME, [a, b, c])
    assert [s.value if s else None for s in got] == [1, {"x": 2}, None]


def test_failed_transaction_raises_transaction_failed(api):
    client = api.client()
    key = api.key()
    client.save(STORE_NAME, key, 1)
    with pytest.raises(TransactionFailed) as info:
        client.transaction(STORE_NAME, [upsert(key, 2, etag="999999")])
    assert info.value.status == 500


def test_ttl_metadata_comes_back_on_stores_that_report_it(api):
    client = api.client()
    key = api.key()
    client.save(STORE_NAME, key, "short-lived", metadata={"ttlInSeconds": "60"})
    state = client.get(STORE_NAME, key)
    assert ("ttlExpireTime" in state.metadata) == (api.store != "redis")


def test_metadata_lists_the_store(api):
    meta = api.client().metadata()
    assert meta["id"] == "myapp"
    assert [c["name"] for c in meta["components"]] == [STORE_NAME]


def test_endpoint_comes_from_the_sdk_environment_variables(monkeypatch):
    monkeypatch.delenv("DAPR_HTTP_ENDPOINT", raising=False)
    monkeypatch.delenv("DAPR_HTTP_PORT", raising=False)
    monkeypatch.delenv("DAPR_RUNTIME_HOST", raising=False)
    assert default_endpoint() == "http://127.0.0.1:3500"
    monkeypatch.setenv("DAPR_HTTP_PORT", "3612")
    assert default_endpoint() == "http://127.0.0.1:3612"
    monkeypatch.setenv("DAPR_HTTP_ENDPOINT", "http://dapr.example:80/")
    assert default_endpoint() == "http://dapr.example:80"


def test_api_token_is_sent_from_the_environment(tmp_path, monkeypatch):
    with make_stack(tmp_path, store="in-memory", api_token="tok3n") as stack:
        monkeypatch.delenv("DAPR_API_TOKEN", raising=False)
        with pytest.raises(Unauthorized) as info:
            StateClient(stack.endpoint).get(STORE_NAME, "k")
        assert info.value.status == 401
        monkeypatch.setenv("DAPR_API_TOKEN", "tok3n")
        StateClient(stack.endpoint).save(STORE_NAME, "k", 1)
        assert StateClient(stack.endpoint).get(STORE_NAME, "k").value == 1


def test_unreachable_sidecar_raises_sidecar_unavailable():
    client = StateClient(f"http://127.0.0.1:{free_port_base(1)}", timeout=2)
    with pytest.raises(SidecarUnavailable):
        client.get(STORE_NAME, "k")
    assert not client.healthy()
    with pytest.raises(SidecarUnavailable):
        client.wait_until_ready(timeout=0.3)
    assert issubclass(SidecarUnavailable, DaprError)


# --- the keep-alive connection ---------------------------------------------------------------------


class _OneAnswerPerConnection:
    """A server that answers one request per connection (keep-alive promised), then hangs up."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            with conn:
                data = b""
                while b"\r\n\r\n" not in data:
                    data += conn.recv(65536)
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nETag: 7\r\n"
                             b"Content-Length: 2\r\n\r\n{}")


def test_a_keep_alive_connection_the_sidecar_closed_is_replaced_before_the_next_request():
    server = _OneAnswerPerConnection()
    client = StateClient(f"http://127.0.0.1:{server.port}")
    for _ in range(3):
        state = client.get(STORE_NAME, "k")
        assert (state.value, state.etag) == ({}, "7")
        time.sleep(0.05)  # the server has hung up by now
    assert server.connections == 3
    client.close()
    server.sock.close()


def test_an_endpoint_without_scheme_or_host_is_refused_at_once():
    with pytest.raises(ValueError, match="http"):
        StateClient("127.0.0.1:3500")


def test_one_client_shared_by_threads_gives_each_thread_its_own_connection(api):
    client = api.client()
    keys = [api.key() for _ in range(8)]
    errors: list[BaseException] = []

    def work(key: str) -> None:
        try:
            for n in range(25):
                client.save(STORE_NAME, key, n)
                assert client.get(STORE_NAME, key).value == n
        except BaseException as exc:  # noqa: BLE001 - reported by the test thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(k,)) for k in keys]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert [client.get(STORE_NAME, k).value for k in keys] == [24] * 8
    client.close()


# --- closing: no connection outlives close() ------------------------------------------------------

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")


def _connections_to(port: int) -> dict[int, str]:
    """This process's open TCP connections to ``port``: file descriptor -> local address (from /proc)."""
    local_by_inode: dict[str, str] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                local, remote, inode = fields[1], fields[2], fields[9]
                if int(remote.rsplit(":", 1)[1], 16) == port:
                    local_by_inode[inode] = local
    found = {}
    for fd in os.listdir("/proc/self/fd"):
        try:
            link = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:  # closed meanwhile
            continue
        if link.startswith("socket:[") and link[8:-1] in local_by_inode:
            found[int(fd)] = local_by_inode[link[8:-1]]
    return found


@linux_only
@pytest.mark.parametrize("api", ["in-memory"], indirect=True)
def test_close_closes_every_threads_connection_also_the_ones_reopened_after_an_earlier_close(api):
    port = urlsplit(api.url).port
    before = set(_connections_to(port).values())  # other tests' clients may still hold some

    def opened() -> set[str]:
        return set(_connections_to(port).values()) - before

    client = api.client()
    key = api.key()
    client.save(STORE_NAME, key, "v")
    workers = 4
    barrier = threading.Barrier(workers, timeout=10)

    def read(_: int) -> object:
        barrier.wait()  # one read per pool thread, so each has a connection of its own
        return client.get(STORE_NAME, key).value

    with ThreadPoolExecutor(workers) as pool:  # the same threads live on across both close() calls
        for _ in range(2):
            assert list(pool.map(read, range(workers))) == ["v"] * workers
            assert client.get(STORE_NAME, key).value == "v"  # a closed client is still usable, as a requests.Session
            assert len(opened()) == workers + 1
            client.close()
            assert opened() == set()


@linux_only
@pytest.mark.parametrize("api", ["in-memory"], indirect=True)
def test_keep_alive_connection_is_reused_when_its_file_descriptor_is_above_1024(api):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < 1200:
        if hard != resource.RLIM_INFINITY and hard < 1200:
            pytest.skip(f"the open-file limit ({hard}) is too low to reach descriptor 1024")
        resource.setrlimit(resource.RLIMIT_NOFILE, (1200, hard))
    port = urlsplit(api.url).port
    before = set(_connections_to(port).values())

    def opened() -> dict[int, str]:
        return {fd: local for fd, local in _connections_to(port).items() if local not in before}

    gc.collect()  # no leftover socket of an earlier test is freed midway, leaving a low descriptor free
    filler: list[int] = []
    try:
        # A new descriptor takes the lowest free number: fill all up to 1100, as a busy Jupyter kernel may.
        while not filler or filler[-1] < 1100:
            filler.append(os.open(os.devnull, os.O_RDONLY))
        client = api.client()
        key = api.key()
        client.save(STORE_NAME, key, 1)
        first = opened()
        assert len(first) == 1 and min(first) >= 1024
        assert client.get(STORE_NAME, key).value == 1
        assert opened() == first  # same descriptor, same local port: the connection was kept, not reopened
        client.close()
    finally:
        for fd in filler:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
