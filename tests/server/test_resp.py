"""The sidecar's own Redis client (``statelab.server.stores.resp``) against a real redis-server.

It multiplexes every caller onto one pipelined connection, so what matters is that replies reach the
caller that asked (in order, under concurrency), that ``MULTI``/``EXEC`` blocks stay contiguous, that
``WAIT`` never blocks the shared connection, and that a dead or silent Redis gives an error, not a hang.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from helpers import free_port_base, wait_until

from statelab.local import find_redis_server
from statelab.server.stores.resp import ReplyError, RespClient, RespConnectionError

SCRIPT = "return redis.call('INCRBY', KEYS[1], ARGV[1])"


def _start_redis(port: int, workdir: Path, *extra: str) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [find_redis_server(), "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(workdir), *extra],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    def up() -> bool:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return True
        except OSError:
            return False

    assert wait_until(up, 10), "redis-server did not start"
    return proc


@pytest.fixture
def start_redis(tmp_path: Path) -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """Start a redis-server on a port (extra arguments after it); all of them are killed after the test."""
    started: list[subprocess.Popen[bytes]] = []

    def start(port: int, *extra: str) -> subprocess.Popen[bytes]:
        started.append(_start_redis(port, tmp_path, *extra))
        return started[-1]

    yield start
    for proc in started:
        proc.kill()
        proc.wait()


@pytest.fixture
def redis_port(start_redis: Callable[..., subprocess.Popen[bytes]]) -> int:
    port = free_port_base(1)
    start_redis(port)
    return port


def run(coro):  # noqa: ANN001, ANN201 - a test helper
    return asyncio.run(coro)


def test_concurrent_callers_each_get_their_own_reply(redis_port: int) -> None:
    async def main() -> None:
        client = RespClient("127.0.0.1", redis_port)
        await asyncio.gather(*(client.call("SET", f"k{i}", f"v{i}") for i in range(300)))
        got = await asyncio.gather(*(client.call("GET", f"k{i}") for i in range(300)))
        assert got == [f"v{i}".encode() for i in range(300)]
        counts = await asyncio.gather(*(client.call("INCR", "counter") for _ in range(300)))
        assert sorted(counts) == list(range(1, 301))
        await client.close()

    run(main())


def test_an_error_reply_is_returned_and_the_connection_carries_on(redis_port: int) -> None:
    async def main() -> None:
        client = RespClient("127.0.0.1", redis_port)
        await client.call("SET", "plain", "x")
        wrong, after = await asyncio.gather(client.call("HGETALL", "plain"), client.call("GET", "plain"))
        assert isinstance(wrong, ReplyError) and str(wrong).startswith("WRONGTYPE")
        assert after == b"x"
        replies = await client.pipeline([("PING",), ("NOSUCHCOMMAND",), ("ECHO", "still here")])
        assert replies[0] == b"PONG" and isinstance(replies[1], ReplyError) and replies[2] == b"still here"
        assert await client.pipeline([]) == []
        await client.close()

    run(main())


def test_transactions_stay_contiguous_among_concurrent_commands(redis_port: int) -> None:
    async def main() -> None:
        client = RespClient("127.0.0.1", redis_port)
        blocks = [client.transaction([("INCR", "t"), ("INCR", "t"), ("INCR", "t")]) for _ in range(50)]
        noise = [client.call("INCR", "t") for _ in range(50)]
        results = await asyncio.gather(*blocks, *noise)
        for first, second, third in results[:50]:
            assert (second, third) == (first + 1, first + 2)  # nothing ran in between
        assert await client.call("GET", "t") == b"200"
        aborted = await client.transaction([("INCR", "t"), ("NOSUCHCOMMAND",)])
        assert isinstance(aborted, ReplyError) and str(aborted).startswith("EXECABORT")
        assert await client.call("GET", "t") == b"200"
        await client.close()

    run(main())


def test_a_blocking_command_on_an_exclusive_connection_does_not_hold_up_others(redis_port: int) -> None:
    async def main() -> None:
        client = RespClient("127.0.0.1", redis_port)
        await client.call("PING")
        started = time.perf_counter()
        # WAIT for a replica that does not exist blocks its connection for the whole timeout.
        blocked = asyncio.ensure_future(client.exclusive([("SET", "w", "1"), ("WAIT", 1, 500)]))
        await asyncio.sleep(0.05)
        assert await client.call("GET", "w") == b"1"
        quick = time.perf_counter() - started
        assert await blocked == [b"OK", 0]
        assert quick < 0.4 <= time.perf_counter() - started
        await client.close()

    run(main())


def test_scripts_are_loaded_on_every_new_connection(start_redis: Callable[..., subprocess.Popen[bytes]]) -> None:
    port = free_port_base(1)
    first = start_redis(port)

    async def main() -> None:
        client = RespClient("127.0.0.1", port, scripts=[SCRIPT], retries=5)
        sha = RespClient.sha(SCRIPT)
        assert await client.call("EVALSHA", sha, 1, "n", 5) == 5
        first.kill()
        first.wait()
        with pytest.raises(RespConnectionError):
            await client.call("EVALSHA", sha, 1, "n", 1)
        start_redis(port)  # a new Redis: empty, no scripts
        assert await client.call("EVALSHA", sha, 1, "n", 7) == 7  # reconnected and reloaded by itself
        await client.close()

    run(main())


def test_a_password_is_sent_and_a_wrong_one_is_an_error(start_redis: Callable[..., subprocess.Popen[bytes]]) -> None:
    port = free_port_base(1)
    start_redis(port, "--requirepass", "s3cret")

    async def main() -> None:
        good = RespClient("127.0.0.1", port, password="s3cret", db=2)
        await good.call("SET", "k", "in db 2")
        assert await good.call("GET", "k") == b"in db 2"
        await good.close()
        other_db = RespClient("127.0.0.1", port, password="s3cret")
        assert await other_db.call("GET", "k") is None
        await other_db.close()
        bad = RespClient("127.0.0.1", port, password="wrong")
        with pytest.raises(ReplyError, match="WRONGPASS|invalid"):
            await bad.call("PING")
        await bad.close()

    run(main())


def test_a_redis_that_never_answers_times_out_instead_of_hanging() -> None:
    async def main() -> None:
        async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.read(1 << 20)
            await asyncio.sleep(10)

        server = await asyncio.start_server(swallow, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        client = RespClient("127.0.0.1", port, read_timeout=0.3, retries=0)
        started = time.perf_counter()
        with pytest.raises(RespConnectionError, match="did not answer within 0.3s"):
            await client.call("PING")
        assert time.perf_counter() - started < 2
        await client.close()
        server.close()

    run(main())


def test_nothing_listening_is_a_connection_error_after_the_retries() -> None:
    async def main() -> None:
        port = free_port_base(1)
        client = RespClient("127.0.0.1", port, retries=2)
        started = time.perf_counter()
        with pytest.raises(RespConnectionError, match=f"dial tcp 127.0.0.1:{port}"):
            await client.call("PING")
        assert time.perf_counter() - started < 2
        await client.close()

    run(main())
