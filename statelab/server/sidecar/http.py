"""A small HTTP/1.1 server: an asyncio Protocol on the httptools parser.

Why not a framework: at the low load learners produce, a general framework adds about a millisecond
per request (``shared/perf-notes.md``), more than daprd itself takes. This module does transport only:
keep-alive, pipelining (answers in request order), chunked request bodies, ``Expect: 100-continue``,
a body size cap that never buffers past the limit, idle and slow-client timeouts, write backpressure.
What a request means is decided by the handler it is given (``statelab.server.sidecar.api``).
"""

from __future__ import annotations

import asyncio
import logging
import re
import sys
import time
from collections import deque
from collections.abc import Callable, Coroutine
from email.utils import formatdate
from http import HTTPStatus
from typing import Any, cast

import httptools

log = logging.getLogger(__name__)

_REASONS = {s.value: s.phrase for s in HTTPStatus}


class Request:
    __slots__ = ("method", "path", "query", "raw_headers", "_headers", "body", "too_large", "keep_alive")

    def __init__(self, method: str, path: str, query: str, raw_headers: list[tuple[bytes, bytes]], body: bytes,
                 too_large: bool):
        self.method = method
        self.path = path  # still percent-encoded, as daprd's router sees it
        self.query = query
        self.raw_headers = raw_headers  # as received; most requests never look at them
        self._headers: dict[str, str] | None = None
        self.body = body
        self.too_large = too_large
        self.keep_alive = True

    @property
    def headers(self) -> dict[str, str]:
        """Lower-case names; repeated headers joined with ", ". Built on first use."""
        if self._headers is None:
            headers: dict[str, str] = {}
            for name, value in self.raw_headers:
                key = name.decode("latin-1").lower()
                text = value.decode("latin-1")
                headers[key] = headers[key] + ", " + text if key in headers else text
            self._headers = headers
        return self._headers


class Response:
    __slots__ = ("status", "body", "content_type", "headers")

    def __init__(
        self,
        status: int,
        body: bytes = b"",
        content_type: str | None = None,
        headers: list[tuple[str, str]] | None = None,
    ):
        self.status = status
        self.body = body
        self.content_type = content_type
        self.headers = headers


Handler = Callable[[Request], Coroutine[Any, Any, Response]]

_date_cache: tuple[int, bytes] = (0, b"")


def _date() -> bytes:
    global _date_cache
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache = (now, formatdate(now, usegmt=True).encode("ascii"))
    return _date_cache[1]


# daprd's tracing middleware answers every API request but the health checks with a trace context; with
# tracing off (as here and in a default `dapr run`) it is the all-zero one.
_TRACEPARENT = b"Traceparent: 00-00000000000000000000000000000000-0000000000000000-00\r\n"

_STATUS_LINES = {code: b"HTTP/1.1 %d %s\r\nDate: " % (code, reason.encode()) for code, reason in _REASONS.items()}


def encode_response(resp: Response, *, keep_alive: bool, head: bool = False, traced: bool = True) -> bytes:
    status_line = _STATUS_LINES.get(resp.status) or b"HTTP/1.1 %d Status\r\nDate: " % resp.status
    parts = [status_line, _date(), b"\r\n", _TRACEPARENT] if traced else [status_line, _date(), b"\r\n"]
    if resp.content_type:
        parts.append(b"Content-Type: %s\r\n" % resp.content_type.encode("latin-1"))
    if resp.headers:
        for name, value in resp.headers:
            # Header values come from stored ETags and metadata: never let them split the response.
            clean = value.replace("\r", " ").replace("\n", " ")
            parts.append(f"{name}: {clean}\r\n".encode("latin-1", "replace"))
    if resp.status != 204 and resp.status >= 200:
        parts.append(b"Content-Length: %d\r\n" % len(resp.body))
    if not keep_alive:
        parts.append(b"Connection: close\r\n")
    parts.append(b"\r\n")
    if resp.body and not head and resp.status != 204:
        parts.append(resp.body)
    return b"".join(parts)


_BAD_REQUEST = (
    b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\n"
    b"Connection: close\r\n\r\n400 Bad Request"
)
# Go's net/http reads at most 1 MiB (+4 KiB) of request line and headers, then answers this and closes.
MAX_HEAD_BYTES = (1 << 20) + 4096
_HEAD_TOO_LARGE = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Type: text/plain; charset=utf-8\r\n"
    b"Connection: close\r\n\r\n431 Request Header Fields Too Large"
)


_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")  # a "%" without two hex digits after it


def split_target(target: bytes) -> tuple[str, str]:
    """(path, query) of a request-target, read as Go's url.ParseRequestURI does: no length limit
    (httptools.parse_url stops at 64 KiB) and no fragment ('#' stays in the path or query)."""
    text = target.decode("latin-1")
    if not text.startswith("/"):
        # absolute-form, as proxies send it: http://host:port/path?query
        _, sep, rest = text.partition("://")
        if sep:
            cut = min((i for i in (rest.find("/"), rest.find("?")) if i >= 0), default=len(rest))
            text = rest[cut:]
    path, _, query = text.partition("?")
    return path or "/", query


# Every handler runs in a task of its own, so every handler path has a current task (``asyncio.timeout``,
# ``wait_for`` from 3.12 on, redis-py and friends refuse to run without one). From 3.12 the task starts
# eagerly: it runs up to its first wait right away, inside the read callback, and a handler that never
# waits (in-memory, a SQLite point read, every error answer) is done before ``_start_task`` returns, with
# no extra loop pass (a task per request measured 0.2 ms of p50 under Dapr's 1000 QPS scenario,
# ``docs/performance.md``). Python 3.10 and 3.11 have no eager tasks: there a handler starts on the next
# loop pass, which costs that latency but keeps the same semantics.
if sys.version_info >= (3, 12):
    _start_task = asyncio.eager_task_factory
else:
    def _start_task(loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, Response]) -> asyncio.Task[Response]:
        return loop.create_task(coro)


class HttpProtocol(asyncio.Protocol):
    """One client connection."""

    def __init__(self, handler: Handler, *, max_body: int, idle_timeout: float, on_error: Callable[[Request], Response]):
        self.handler = handler
        self.max_body = max_body
        self.idle_timeout = idle_timeout
        self.on_error = on_error
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.pending: deque[Request] = deque()
        self.worker: asyncio.Task | None = None
        self.closing = False
        self.closing_after_pending = False
        self.broken = False
        self.final_answer = _BAD_REQUEST  # what a broken connection gets before it is closed
        self.reading_paused = False
        self.pending_bytes = 0  # bodies of parsed requests not yet answered
        self.reading_head = True  # between messages or inside a request line / headers
        self.head_bytes = 0
        self.writable = asyncio.Event()
        self.writable.set()
        self.timer: asyncio.TimerHandle | None = None
        self.last_activity = 0.0
        self._reset()

    def _reset(self) -> None:
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.expect = b""
        self.body: list[bytes] = []
        self.body_size = 0
        self.too_large = False
        self.in_message = False

    # --- asyncio.Protocol ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # a stream connection: create_connection/create_server
        self.loop = asyncio.get_running_loop()
        self.last_activity = self.loop.time()
        self.timer = self.loop.call_later(self.idle_timeout, self._check_idle)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        if self.timer:
            self.timer.cancel()
        if self.worker and not self.worker.done():
            self.worker.cancel()
        self.writable.set()

    def data_received(self, data: bytes) -> None:
        self.last_activity = self.loop.time()
        if self.broken:
            return
        if self.reading_head:
            self.head_bytes += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail()
        except httptools.HttpParserError:
            self._fail()
        else:
            if self.reading_head and self.head_bytes > MAX_HEAD_BYTES:
                # httptools buffers an unfinished header line itself: stop feeding it.
                self._fail(_HEAD_TOO_LARGE)

    def eof_received(self) -> bool | None:
        # A client that half-closes after sending still gets its answers, then the connection closes.
        self.closing_after_pending = True
        if not self.pending and not (self.worker and not self.worker.done()):
            return None
        return True

    def pause_writing(self) -> None:
        self.writable.clear()

    def resume_writing(self) -> None:
        self.writable.set()

    # --- httptools callbacks ---------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._reset()
        self.in_message = True
        self.reading_head = True

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        # Kept as bytes: decoding every header costs more than most handlers ever read (Request.headers).
        self.headers.append((name, value))
        if len(name) == 6 and name.lower() == b"expect":
            self.expect = value.lower()

    def on_headers_complete(self) -> None:
        self.reading_head = False
        self.head_bytes = 0
        if self.expect == b"100-continue" and self.parser.get_http_version() == "1.1":
            assert self.transport is not None
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, chunk: bytes) -> None:
        before = self.body_size
        self.body_size += len(chunk)
        if self.body_size <= self.max_body:
            self.body.append(chunk)
            return
        # Keep reading (the client is still sending) but store nothing past the limit. The part within it
        # stays: daprd's decoder reads only the first JSON value, which may end before the limit.
        if not self.too_large and before < self.max_body:
            self.body.append(chunk[: self.max_body - before])
        self.too_large = True

    def on_message_complete(self) -> None:
        self.in_message = False
        self.reading_head = True
        path, query = split_target(self.url)
        if _BAD_ESCAPE.search(path):
            # Go's url.ParseRequestURI refuses the request line ("invalid URL escape"): 400, then close.
            self._fail()
            return
        req = Request(
            self.parser.get_method().decode("latin-1"),
            path,
            query,
            self.headers,
            b"".join(self.body) if self.body else b"",
            self.too_large,
        )
        req.keep_alive = self.parser.should_keep_alive()
        self.pending.append(req)
        self.pending_bytes += len(req.body)
        # Pipelined requests wait their turn; stop reading before they pile up (count or body bytes).
        if (len(self.pending) > 64 or self.pending_bytes > self.max_body) and not self.reading_paused and self.transport:
            self.reading_paused = True
            self.transport.pause_reading()
        if self.worker is None or self.worker.done():
            self._drain()

    # --- answering -------------------------------------------------------------------------------

    def _drain(self) -> None:
        """Answer queued requests now, as far as their handlers finish without waiting."""
        while self.pending and not self.closing:
            if not self.writable.is_set():
                self.worker = self.loop.create_task(self._serve())
                return
            if not self._start(self._next()):
                return
        self._after_pending()

    def _start(self, req: Request) -> bool:
        """Start ``req``'s handler in a task (``_start_task``): answer it now if it is already done (True if
        the connection carries on), else let a worker answer it, then the requests queued behind it."""
        task = _start_task(self.loop, self._handle(req))
        if task.done():
            return self._answer(req, self.on_error(req) if task.cancelled() else task.result())
        self.worker = self.loop.create_task(self._serve(req, task))
        return False

    async def _handle(self, req: Request) -> Response:
        try:
            return await self.handler(req)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("unhandled error for %s %s", req.method, req.path)
            return self.on_error(req)

    def _next(self) -> Request:
        req = self.pending.popleft()
        self.pending_bytes -= len(req.body)
        if self.reading_paused and len(self.pending) < 16 and self.pending_bytes <= self.max_body and not self.broken:
            self.reading_paused = False
            assert self.transport is not None
            self.transport.resume_reading()
        return req

    async def _serve(self, req: Request | None = None, started: asyncio.Task[Response] | None = None) -> None:
        """Finish a request whose handler suspended (or wait out write backpressure), then the rest.
        Cancelling this worker (the client went away) cancels the handler it is waiting for."""
        while not self.closing:
            if req is None:
                if not self.pending:
                    break
                req = self._next()
            resp = await (started if started is not None else self._handle(req))
            if self.closing:
                return
            if not self.writable.is_set():
                await self.writable.wait()
                if self.closing:
                    return
            if not self._answer(req, resp):
                return
            req = started = None
        self._after_pending()

    def _answer(self, req: Request, resp: Response) -> bool:
        """Write one answer; False when the connection is now closing."""
        if self.closing:
            return False
        assert self.transport is not None
        keep_alive = req.keep_alive and not self.broken
        self.transport.write(encode_response(resp, keep_alive=keep_alive, head=req.method == "HEAD",
                                             traced=not req.path.startswith("/v1.0/healthz")))
        if not keep_alive:
            self.closing = True
            self.transport.close()
            return False
        return True

    def _after_pending(self) -> None:
        if self.closing or self.pending:
            return
        if self.broken:
            self._write_bad_request()
        elif self.closing_after_pending:
            self.closing = True
            assert self.transport is not None
            self.transport.close()

    def _fail(self, answer: bytes = _BAD_REQUEST) -> None:
        """Malformed HTTP: answer what came before, then a plain 400 (as Go's net/http), then close."""
        self.broken = True
        self.final_answer = answer
        if self.transport:
            self.transport.pause_reading()
        if not self.pending and not (self.worker and not self.worker.done()):
            self._write_bad_request()

    def _write_bad_request(self) -> None:
        if self.transport and not self.closing:
            self.closing = True
            self.transport.write(self.final_answer)
            self.transport.close()

    def _check_idle(self) -> None:
        if self.closing or self.transport is None:
            return
        busy = bool(self.pending) or (self.worker is not None and not self.worker.done())
        idle_for = self.loop.time() - self.last_activity
        if not busy and idle_for >= self.idle_timeout:
            # An idle keep-alive connection, or a client that stopped half-way through a request.
            self.closing = True
            self.transport.close()
            return
        self.timer = self.loop.call_later(max(self.idle_timeout - idle_for, 1.0), self._check_idle)


async def serve(
    handler: Handler,
    hosts: list[str],
    port: int,
    *,
    max_body: int,
    idle_timeout: float = 60.0,
    on_error: Callable[[Request], Response],
) -> list[asyncio.base_events.Server]:
    """Listen on every host at ``port``; raises OSError (e.g. address in use) before serving anything."""
    loop = asyncio.get_running_loop()
    servers = []
    try:
        for host in hosts:
            servers.append(
                await loop.create_server(
                    lambda: HttpProtocol(handler, max_body=max_body, idle_timeout=idle_timeout, on_error=on_error),
                    host=host,
                    port=port,
                    reuse_address=True,
                    backlog=1024,
                )
            )
    except BaseException:
        for server in servers:
            server.close()
        raise
    return servers
