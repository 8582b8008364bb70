"""A small client for the Dapr state API over HTTP, for lessons and the writers harness.

It speaks only the public Dapr API, so it works the same against the statelab sidecar and a real
``daprd``. Endpoint and token come from the environment as in the official SDKs:
``DAPR_HTTP_ENDPOINT``, else ``http://{DAPR_RUNTIME_HOST}:{DAPR_HTTP_PORT}`` (127.0.0.1:3500), and
``DAPR_API_TOKEN``. Error answers become the exceptions of ``statelab.errors`` (``ETagMismatch`` for
409, ...). A client keeps one keep-alive connection per thread that uses it. ``close()`` closes them
all; like a ``requests.Session``, the client stays usable and opens fresh connections afterwards, which
the next ``close()`` closes in turn.

The connection is the standard library's ``http.client``, not ``requests``: 32 writer threads made 684
requests/s through ``requests`` sessions against 6 600 through ``http.client``, both using one whole
core. With ``requests`` the writers harness, not the sidecar, set the pace of lessons 04–05 and the labs.
"""

from __future__ import annotations

import http.client
import json
import os
import select
import socket
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

from statelab.errors import (
    DaprError,
    ETagInvalid,
    ETagMismatch,
    MalformedRequest,
    SidecarTimeout,
    SidecarUnavailable,
    StoreNotConfigured,
    StoreNotFound,
    TransactionFailed,
    Unauthorized,
)
from statelab.options import EVENTUAL, FIRST_WRITE, LAST_WRITE, STRONG  # noqa: F401 - notebooks import them from here

_METADATA_NAMES = {"ttlexpiretime": "ttlExpireTime"}  # response metadata, by its header name in lower case


def default_endpoint() -> str:
    endpoint = os.environ.get("DAPR_HTTP_ENDPOINT")
    if endpoint:
        return endpoint.rstrip("/")
    host = os.environ.get("DAPR_RUNTIME_HOST", "127.0.0.1")
    port = os.environ.get("DAPR_HTTP_PORT", "3500")
    return f"http://{host}:{port}"


@dataclass
class State:
    """A value read back: ``value`` is the decoded JSON (or raw ``bytes`` if it is not JSON)."""

    key: str
    value: Any
    etag: str | None
    metadata: dict[str, str] = field(default_factory=dict)
    raw: bytes = b""


@dataclass
class Operation:
    """One transaction operation; build with ``upsert(...)`` / ``remove(...)``."""

    operation: str
    key: str
    value: Any = None
    etag: str | None = None
    metadata: dict[str, str] | None = None
    options: dict[str, str] | None = None

    def to_json(self) -> dict:
        request: dict[str, Any] = {"key": self.key}
        if self.operation == "upsert":
            request["value"] = self.value
        if self.etag is not None:
            request["etag"] = self.etag
        if self.metadata:
            request["metadata"] = self.metadata
        if self.options:
            request["options"] = self.options
        return {"operation": self.operation, "request": request}


def _options(concurrency: str | None, consistency: str | None) -> dict[str, str] | None:
    options = {}
    if concurrency:
        options["concurrency"] = concurrency
    if consistency:
        options["consistency"] = consistency
    return options or None


def upsert(key: str, value: Any, *, etag: str | None = None, concurrency: str | None = None,
           consistency: str | None = None, metadata: dict[str, str] | None = None) -> Operation:
    return Operation("upsert", key, value, etag, metadata, _options(concurrency, consistency))


def remove(key: str, *, etag: str | None = None, metadata: dict[str, str] | None = None) -> Operation:
    return Operation("delete", key, etag=etag, metadata=metadata)


class Reply:
    """One HTTP answer, read in full: the parts of ``requests.Response`` the lessons use."""

    __slots__ = ("status_code", "reason", "headers", "content")

    def __init__(self, status_code: int, reason: str, headers: http.client.HTTPMessage, content: bytes) -> None:
        self.status_code = status_code
        self.reason = reason
        self.headers = headers  # case-insensitive .get(); .items() keeps the names as sent
        self.content = content

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", "replace")

    def json(self) -> Any:
        return json.loads(self.content)

    def __repr__(self) -> str:
        return f"<Reply [{self.status_code}]>"


def _error_for(resp: Reply) -> DaprError:
    try:
        body = resp.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        code = str(body.get("errorCode", ""))
        message = str(body.get("message", ""))
    else:
        code, message = "", resp.text.strip()
    status = resp.status_code
    if status == 401:
        cls: type[DaprError] = Unauthorized
    elif status == 409:
        cls = ETagMismatch
    elif code == "ERR_STATE_STORE_NOT_FOUND":
        cls = StoreNotFound
    elif code == "ERR_STATE_STORE_NOT_CONFIGURED":
        cls = StoreNotConfigured
    elif code == "ERR_STATE_TRANSACTION":
        cls = TransactionFailed
    elif status == 400 and code in ("ERR_STATE_SAVE", "ERR_STATE_DELETE"):
        cls = ETagInvalid
    elif code == "ERR_MALFORMED_REQUEST":
        cls = MalformedRequest
    else:
        cls = DaprError
    return cls(message or resp.reason, status=status, error_code=code, body=body)


class StateClient:
    """``StateClient().save("statestore", "k", {"n": 1})`` and friends; see the module docstring."""

    def __init__(self, endpoint: str | None = None, *, api_token: str | None = None, timeout: float = 10.0) -> None:
        self.endpoint = (endpoint or default_endpoint()).rstrip("/")
        token = api_token if api_token is not None else os.environ.get("DAPR_API_TOKEN", "")
        self.timeout = timeout
        self.headers = {"dapr-api-token": token} if token else {}
        url = urlsplit(self.endpoint)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(f"the Dapr HTTP endpoint must be http(s)://host[:port], got {self.endpoint!r}")
        self._https = url.scheme == "https"
        self._host, self._port = url.hostname, url.port or (443 if self._https else 80)
        self._prefix = url.path.rstrip("/")
        # .conn: this thread's connection (http.client is not thread-safe); .generation: the close() count
        # when it was opened, so a thread notices that close() took its connection away.
        self._local = threading.local()
        # Every connection a thread may still use, with that thread. A connection stays here for its whole
        # life, even after close(): http.client reconnects a closed connection on its next request (a thread
        # may be mid-request while close() runs), and whatever is here is what the next close() closes.
        self._opened: dict[http.client.HTTPConnection, threading.Thread] = {}
        self._generation = 0
        self._lock = threading.Lock()

    # --- plumbing --------------------------------------------------------------------------------

    def _connection(self) -> http.client.HTTPConnection:
        conn: http.client.HTTPConnection | None = getattr(self._local, "conn", None)
        if conn is None or self._local.generation != self._generation:
            conn = self._new_connection(conn)
        elif conn.sock is not None and _closed_by_peer(conn.sock):
            conn.close()  # the sidecar closed the idle keep-alive connection: the request opens a new one
        return conn

    def _new_connection(self, old: http.client.HTTPConnection | None) -> http.client.HTTPConnection:
        cls = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
        conn = cls(self._host, self._port, timeout=self.timeout)  # no socket yet: it connects on first use
        with self._lock:
            if old is not None:
                self._opened.pop(old, None)
                old.close()
            # Threads that ended cannot use their connections again: close those now rather than at close().
            for ended in [c for c, thread in self._opened.items() if not _alive(thread)]:
                del self._opened[ended]
                ended.close()
            self._opened[conn] = threading.current_thread()
            self._local.conn, self._local.generation = conn, self._generation
        return conn

    def request(self, method: str, path: str, *, params: dict | None = None, json_body: Any = None,
                headers: dict | None = None, data: bytes | None = None) -> Reply:
        """One HTTP call; connection problems become ``SidecarUnavailable`` / ``SidecarTimeout``."""
        merged = {**self.headers, **(headers or {})}
        body = data
        if json_body is not None:
            body = json.dumps(json_body, separators=(",", ":")).encode()
            merged.setdefault("Content-Type", "application/json")
        target = self._prefix + path + ("?" + urlencode(params) if params else "")
        conn = self._connection()
        try:
            conn.request(method, target, body=body, headers=merged)
            answer = conn.getresponse()
            reply = Reply(answer.status, answer.reason, answer.msg, answer.read())
        except TimeoutError as exc:
            conn.close()
            raise SidecarTimeout(f"no answer from {self.endpoint} within {self.timeout:g}s: {exc}") from None
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            raise SidecarUnavailable(f"cannot reach the Dapr sidecar at {self.endpoint}: {exc!r}") from None
        return reply

    def _check(self, resp: Reply, *ok: int) -> Reply:
        if resp.status_code not in ok:
            raise _error_for(resp)
        return resp

    @staticmethod
    def _state_path(store: str, key: str | None = None) -> str:
        path = f"/v1.0/state/{quote(store, safe='')}"
        return path if key is None else f"{path}/{quote(key, safe='')}"

    @staticmethod
    def _params(metadata: dict[str, str] | None, **plain: str | None) -> dict[str, str]:
        params = {k: v for k, v in plain.items() if v}
        for name, value in (metadata or {}).items():
            params[f"metadata.{name}"] = value
        return params

    # --- state API -------------------------------------------------------------------------------

    def save(self, store: str, key: str, value: Any, *, etag: str | None = None, concurrency: str | None = None,
             consistency: str | None = None, metadata: dict[str, str] | None = None) -> None:
        item: dict[str, Any] = {"key": key, "value": value}
        if etag is not None:
            item["etag"] = etag
        if metadata:
            item["metadata"] = metadata
        options = _options(concurrency, consistency)
        if options:
            item["options"] = options
        self.save_many(store, [item])

    def save_many(self, store: str, items: Iterable[dict], *, metadata: dict[str, str] | None = None) -> None:
        """Save several items in one request (daprd writes them independently, not atomically)."""
        resp = self.request("POST", self._state_path(store), params=self._params(metadata), json_body=list(items))
        self._check(resp, 204)

    def get(self, store: str, key: str, *, consistency: str | None = None,
            metadata: dict[str, str] | None = None) -> State | None:
        """The stored value with its ETag, or None when the key is missing (daprd answers 204)."""
        resp = self._check(
            self.request("GET", self._state_path(store, key), params=self._params(metadata, consistency=consistency)),
            200, 204,
        )
        if resp.status_code == 204:
            return None
        # daprd's headers come in Go's canonical spelling (Metadata.ttlexpiretime): give back Dapr's names.
        meta = {_METADATA_NAMES.get(k[len("metadata."):].lower(), k[len("metadata."):]): v
                for k, v in resp.headers.items() if k.lower().startswith("metadata.")}
        return State(key, _decode(resp.content), resp.headers.get("ETag"), meta, resp.content)

    def get_bulk(self, store: str, keys: list[str], *, parallelism: int | None = None,
                 metadata: dict[str, str] | None = None) -> list[State | None]:
        """One entry per key in request order: a ``State`` or None when missing."""
        body: dict[str, Any] = {"keys": keys}
        if parallelism is not None:
            body["parallelism"] = parallelism
        resp = self._check(
            self.request("POST", self._state_path(store) + "/bulk", params=self._params(metadata), json_body=body), 200
        )
        by_key: dict[str, State | None] = {}
        for item in resp.json():
            if item.get("error"):
                raise DaprError(f"bulk get of {item['key']!r} failed: {item['error']}", status=200)
            if "data" in item or "etag" in item:
                raw = json.dumps(item.get("data")).encode()
                by_key[item["key"]] = State(item["key"], item.get("data"), item.get("etag"), item.get("metadata") or {}, raw)
            else:
                by_key[item["key"]] = None
        return [by_key.get(k) for k in keys]

    def delete(self, store: str, key: str, *, etag: str | None = None, concurrency: str | None = None,
               consistency: str | None = None, metadata: dict[str, str] | None = None) -> None:
        headers = {"If-Match": etag} if etag else None
        params = self._params(metadata, concurrency=concurrency, consistency=consistency)
        self._check(self.request("DELETE", self._state_path(store, key), params=params, headers=headers), 204)

    def transaction(self, store: str, operations: Iterable[Operation | dict], *,
                    metadata: dict[str, str] | None = None) -> None:
        ops = [op.to_json() if isinstance(op, Operation) else op for op in operations]
        body: dict[str, Any] = {"operations": ops}
        if metadata:
            body["metadata"] = metadata
        self._check(self.request("POST", self._state_path(store) + "/transaction", json_body=body), 204)

    def wait_until_missing(self, store: str, key: str, *, timeout: float = 30.0, interval: float = 0.1) -> float:
        """Poll until ``key`` reads as missing (e.g. its TTL ran out); return the seconds it took."""
        started = time.monotonic()
        while self.get(store, key) is not None:
            if time.monotonic() - started > timeout:
                raise TimeoutError(f"{key!r} still present after {timeout:g}s")
            time.sleep(interval)
        return time.monotonic() - started

    # --- sidecar ---------------------------------------------------------------------------------

    def metadata(self) -> dict:
        return self._check(self.request("GET", "/v1.0/metadata"), 200).json()

    def healthy(self) -> bool:
        try:
            return self.request("GET", "/v1.0/healthz/outbound").status_code == 204
        except SidecarUnavailable:
            return False

    def wait_until_ready(self, timeout: float = 30.0) -> None:
        """Poll ``/v1.0/healthz/outbound`` as the Python SDK does; raise ``SidecarUnavailable`` on timeout."""
        deadline = time.monotonic() + timeout
        while not self.healthy():
            if time.monotonic() > deadline:
                raise SidecarUnavailable(f"the Dapr sidecar at {self.endpoint} did not become ready in {timeout:g}s")
            time.sleep(0.1)

    def close(self) -> None:
        """Close every thread's connection; later requests open new ones (closed by the next ``close()``)."""
        with self._lock:
            self._generation += 1
            for conn, thread in list(self._opened.items()):
                conn.close()
                if not _alive(thread):
                    del self._opened[conn]

    def __enter__(self) -> StateClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _alive(thread: threading.Thread) -> bool:
    try:
        return thread.is_alive()
    except RuntimeError:  # from 3.13, a foreign thread's stand-in (_DummyThread) raises once it has ended
        return False


def _closed_by_peer(sock: socket.socket) -> bool:
    """An idle keep-alive socket that is readable has been closed (or sent something unasked)."""
    # poll(), not select(): select() refuses file descriptors from 1024 up, which a Jupyter kernel with
    # many open files reaches; taking that refusal for "closed" turned keep-alive off there.
    if hasattr(select, "poll"):
        poller = select.poll()
        try:
            poller.register(sock, select.POLLIN)
            return bool(poller.poll(0))
        except (OSError, ValueError):
            return True
    try:  # Windows has no poll(); its select() has no limit on descriptor numbers
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return True
    return bool(readable)


def _decode(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return raw
