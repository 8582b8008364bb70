"""A small asyncio Redis client for the sidecar's hot path: RESP over one pipelined connection.

Why not redis-py: under 32 concurrent GETs the sidecar spent most of its time in redis-py's
per-command machinery (connection pool checkout, retry wrapper, a task and a timeout per call)
and served 18 % of the requests its trivial endpoint could (``docs/benchmarks.md``). Here every
ordinary command goes down one shared connection as soon as it is issued and its reply is matched
by order (Redis answers a connection's commands in order), parsed by hiredis.

Two kinds of work cannot share that connection:

* ``WAIT`` blocks its connection, and counts only the writes made *on that connection*. A strong
  save therefore takes a connection of its own from a small pool and sends its write and its
  ``WAIT`` there, back to back (``exclusive``).
* ``MULTI ... EXEC`` must reach Redis without other commands in between; ``transaction`` writes the
  whole block in one go, which on one connection and one event loop keeps it contiguous.

Timeouts are timers on the connection (one per connection, not one ``asyncio.timeout`` per command).

A command whose connection fails is sent again (``redisMaxRetries`` times, ``retry_backoff`` apart: 512 ms in a
Dapr state store, so a Redis that refuses connections is a 500 after about 1.5 s), even a write whose reply was
lost after Redis applied it; a ``MULTI ... EXEC`` block never. daprd's go-redis does the same (measured,
``tests/server/test_lost_reply.py``, ``tests/server/test_redis_outage.py``), so after a lost reply a save can
answer 409 or be applied twice and a transaction answers 500 though applied, on both (``docs/dapr-behaviour.md``
§15).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
from collections import deque
from collections.abc import Sequence
from typing import Any, cast

import hiredis

log = logging.getLogger(__name__)

Command = Sequence[Any]


class ReplyError(Exception):
    """An error reply from Redis (``-ERR ...``): the command ran, or was refused, on a live connection."""


class RespConnectionError(ConnectionError):
    """The connection failed or timed out; whether the command was applied is unknown."""


def encode(commands: Sequence[Command]) -> bytes:
    out = []
    for cmd in commands:
        out.append(b"*%d\r\n" % len(cmd))
        for arg in cmd:
            if isinstance(arg, str):
                arg = arg.encode()
            elif isinstance(arg, int):
                arg = b"%d" % arg
            out.append(b"$%d\r\n%s\r\n" % (len(arg), arg))
    return b"".join(out)


def retry_backoff(retry: int, low: float, high: float) -> float:
    """Seconds to wait before retry number ``retry`` (1, 2, ...), as go-redis reckons them: ``low`` plus a random
    part of ``low`` doubled ``retry`` times, and ``high`` whenever that falls outside ``low``..``high``. ``low`` 0
    or less: no wait. Dapr's Redis state store sets ``low`` to 2 s and ``high`` to 512 ms (components-contrib's
    ``redisMinRetryInterval`` and ``redisMaxRetryInterval`` defaults), so every wait there is 512 ms: measured on
    daprd, ``docs/dapr-behaviour.md`` §15."""
    if low <= 0:
        return 0.0
    wait = low + random.uniform(0, low * 2**retry)
    return high if wait > high or wait < low else wait


class _Connection(asyncio.Protocol):
    """One TCP connection: writes commands, hands replies to the futures waiting for them, in order."""

    def __init__(self, read_timeout: float) -> None:
        self.reader = hiredis.Reader(replyError=ReplyError)
        self.waiting: deque[tuple[asyncio.Future[Any], float]] = deque()
        self.transport: asyncio.Transport | None = None
        self.read_timeout = read_timeout
        self.lost: Exception | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.unsent: list[bytes] | None = None  # commands held back until the loop comes round

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # a stream connection: create_connection/create_server
        self.loop = asyncio.get_running_loop()

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        try:
            while (reply := self.reader.gets()) is not False:
                if not self.waiting:
                    raise hiredis.ProtocolError("a reply nobody asked for")
                fut, _ = self.waiting.popleft()
                if not fut.done():
                    fut.set_result(reply)
        except hiredis.ProtocolError as exc:
            self._fail(RespConnectionError(f"redis protocol error: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        # Redis closing the connection reads as Go's io.EOF, the word daprd's go-redis reports
        self._fail(RespConnectionError(f"redis connection lost: {exc}" if exc else "EOF"))

    def _fail(self, exc: Exception) -> None:
        if self.lost is None:
            self.lost = exc
        while self.waiting:
            fut, _ = self.waiting.popleft()
            if not fut.done():
                fut.set_exception(self.lost)
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.transport is not None:
            self.transport.close()

    @property
    def usable(self) -> bool:
        return self.lost is None and self.transport is not None and not self.transport.is_closing()

    def send(self, commands: Sequence[Command]) -> list[asyncio.Future[Any]]:
        """Write ``commands`` in one piece; one future per command for its reply."""
        if not self.usable:
            raise self.lost or RespConnectionError("redis connection closed")
        assert self.transport is not None
        busy = bool(self.waiting)
        deadline = self.loop.time() + self.read_timeout
        futures = [self.loop.create_future() for _ in commands]
        for fut in futures:
            self.waiting.append((fut, deadline))
        data = encode(commands)
        if self.unsent is not None:
            self.unsent.append(data)
        elif busy:
            # Replies are still due, so Redis is working anyway: gather what the other callers send in
            # this loop pass into one write (one syscall instead of one per command). When idle, a
            # command goes out at once; the wait would only add latency.
            self.unsent = [data]
            self.loop.call_soon(self._flush)
        else:
            self.transport.write(data)
        if self.timer is None:
            self.timer = self.loop.call_later(self.read_timeout, self._check_deadline)
        return futures

    def _flush(self) -> None:
        unsent, self.unsent = self.unsent, None
        if unsent and self.usable:
            assert self.transport is not None
            self.transport.write(b"".join(unsent))

    def _check_deadline(self) -> None:
        self.timer = None
        if not self.waiting:
            return
        oldest = self.waiting[0][1]
        if self.loop.time() >= oldest:
            # Replies come in order: the rest of the queue is stuck behind this one.
            self._fail(RespConnectionError(f"redis did not answer within {self.read_timeout:g}s"))
        else:
            self.timer = self.loop.call_at(oldest, self._check_deadline)


class RespClient:
    """Redis commands for the state store: ``call`` / ``pipeline`` / ``transaction`` / ``exclusive``.

    Connection failures are retried ``retries`` times, as the store's Dapr metadata ``redisMaxRetries`` asks,
    waiting ``retry_backoff(n, min_backoff, max_backoff)`` before retry n (go-redis's defaults: 8 ms and 512 ms);
    error replies are returned to the caller, never retried.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        password: str | None = None,
        username: str | None = None,
        db: int = 0,
        connect_timeout: float = 5.0,
        read_timeout: float = 3.0,
        retries: int = 3,
        min_backoff: float = 0.008,
        max_backoff: float = 0.512,
        pool_size: int = 16,
        scripts: Sequence[str] = (),
    ) -> None:
        self.host, self.port = host, port
        self.password, self.username, self.db = password, username, db
        self.connect_timeout, self.read_timeout = connect_timeout, read_timeout
        self.retries, self.pool_size = max(0, retries), max(1, pool_size)
        self.min_backoff, self.max_backoff = min_backoff, max_backoff
        self.scripts = {hashlib.sha1(s.encode()).hexdigest(): s for s in scripts}
        self._shared: _Connection | None = None
        self._connecting: asyncio.Task[_Connection] | None = None
        self._idle: list[_Connection] = []  # exclusive connections, free for the next strong save
        self._slots: asyncio.Semaphore | None = None
        self._closed = False

    @staticmethod
    def sha(script: str) -> str:
        return hashlib.sha1(script.encode()).hexdigest()

    # --- connections ---------------------------------------------------------------------------------

    async def _open(self) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            _, conn = await asyncio.wait_for(
                loop.create_connection(lambda: _Connection(self.read_timeout), self.host, self.port),
                self.connect_timeout,
            )
        except ConnectionRefusedError:  # in Go's words, as daprd reports it
            raise RespConnectionError(f"dial tcp {self.host}:{self.port}: connect: connection refused") from None
        except (OSError, asyncio.TimeoutError) as exc:
            raise RespConnectionError(f"dial tcp {self.host}:{self.port}: {exc or 'i/o timeout'}") from None
        hello: list[Command] = []
        if self.password:
            hello.append(("AUTH", self.username, self.password) if self.username else ("AUTH", self.password))
        if self.db:
            hello.append(("SELECT", self.db))
        # A restarted Redis has forgotten the scripts; every new connection loads them again.
        hello += [("SCRIPT", "LOAD", s) for s in self.scripts.values()]
        if hello:
            try:
                replies = await asyncio.gather(*conn.send(hello))
            except BaseException:
                conn._fail(RespConnectionError("redis connection set-up interrupted"))
                raise
            for reply in replies:
                if isinstance(reply, ReplyError):
                    conn._fail(RespConnectionError(str(reply)))
                    raise ReplyError(str(reply))
        return conn

    async def _shared_connection(self) -> _Connection:
        if self._closed:
            raise RespConnectionError("redis client closed")
        conn = self._shared
        if conn is not None and conn.usable:
            return conn
        if self._connecting is None or self._connecting.done():
            # A task of its own: the dial outlives any single caller that gives up on it.
            self._connecting = asyncio.get_running_loop().create_task(self._open())
            self._connecting.add_done_callback(self._connected)
        return await asyncio.shield(self._connecting)

    def _connected(self, task: asyncio.Task[_Connection]) -> None:
        if not task.cancelled() and task.exception() is None:
            self._shared = task.result()

    async def _with_retries(self, attempt: Any) -> Any:
        for retry in range(self.retries + 1):
            if retry:
                await asyncio.sleep(retry_backoff(retry, self.min_backoff, self.max_backoff))
            try:
                return await attempt()
            except RespConnectionError:
                if retry == self.retries or self._closed:
                    raise
        raise AssertionError("unreachable")

    # --- commands ------------------------------------------------------------------------------------

    async def call(self, *command: Any) -> Any:
        """One command's reply; a ``ReplyError`` is returned, not raised."""
        return (await self.pipeline([command]))[0]

    async def pipeline(self, commands: Sequence[Command], *, retry: bool = True) -> list[Any]:
        """Replies of ``commands``, sent together on the shared connection (no atomicity); a failed connection is
        replaced and the commands sent again, unless ``retry`` is False."""
        if not commands:
            return []

        async def attempt() -> list[Any]:
            conn = self._shared
            if conn is None or not conn.usable:
                conn = await self._shared_connection()
            return list(await asyncio.gather(*conn.send(commands))) if len(commands) > 1 else [await conn.send(commands)[0]]

        return await (self._with_retries(attempt) if retry else attempt())

    async def transaction(self, commands: Sequence[Command]) -> list[Any] | ReplyError:
        """``MULTI``, the commands, ``EXEC`` in one write: the list of results, or the error that aborted it.

        Tried once: go-redis, which daprd uses, retries no transaction, neither a failed dial (an immediate 500
        while Redis is away) nor a block whose reply was lost (which may have been applied), ``docs/dapr-behaviour.md``
        §15.
        """
        replies = await self.pipeline([("MULTI",), *commands, ("EXEC",)], retry=False)
        return replies[-1] if isinstance(replies[-1], ReplyError | list) else ReplyError(str(replies[-1]))

    async def exclusive(self, commands: Sequence[Command]) -> list[Any]:
        """Replies of ``commands`` sent on a connection nobody else uses meanwhile (for ``WAIT``)."""
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.pool_size)
        slots = self._slots

        async def attempt() -> list[Any]:
            async with slots:
                while self._idle and not self._idle[-1].usable:
                    self._idle.pop()
                conn = self._idle.pop() if self._idle else await self._open()
                try:
                    replies = list(await asyncio.gather(*conn.send(commands)))
                except BaseException:
                    conn._fail(RespConnectionError("redis command interrupted"))
                    raise
                if conn.usable and not self._closed:
                    self._idle.append(conn)
                return replies

        return await self._with_retries(attempt)

    async def close(self) -> None:
        self._closed = True
        if self._connecting is not None and not self._connecting.done():
            self._connecting.cancel()
        for conn in [self._shared, *self._idle]:
            if conn is not None:
                conn._fail(RespConnectionError("redis client closed"))
        self._shared = None
        self._idle.clear()
