"""Every handler runs inside a task from its first line (on 3.12+ an eager one, answered inside the read
callback when it never waits), and nothing is lost on the way: order of answers, exceptions, task
context before and after the first wait, cancellation.

These run the server in-process with handlers written for the purpose, so each path is taken on purpose.
"""

from __future__ import annotations

import asyncio

from statelab.server.sidecar import http


async def _handler(req: http.Request, seen: dict[str, object]) -> http.Response:
    if req.path == "/fast":
        return http.Response(200, b"fast")
    if req.path == "/boom":
        raise RuntimeError("handler bug")
    if req.path == "/slow":
        await asyncio.sleep(0.05)
        return http.Response(200, b"slow")
    if req.path == "/context":
        # The first line of a handler: wait_for is asyncio.timeout from 3.12 on, which refuses to run
        # outside a task (the bug that broke every strong Redis save on 3.12 and 3.13).
        before = asyncio.current_task() is not None
        await asyncio.wait_for(asyncio.sleep(0), 1)
        after = asyncio.current_task() is not None
        return http.Response(200, b"task" if before and after else b"no task")
    if req.path == "/hang":
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            seen["cancelled"] = True
            raise
    return http.Response(404, b"")


async def _serve(seen: dict[str, object]) -> tuple[asyncio.base_events.Server, int]:
    servers = await http.serve(
        lambda req: _handler(req, seen),
        ["127.0.0.1"],
        0,
        max_body=1 << 20,
        on_error=lambda req: http.Response(500, b"internal"),
    )
    return servers[0], servers[0].sockets[0].getsockname()[1]


async def _read_answers(reader: asyncio.StreamReader, count: int) -> list[tuple[int, bytes]]:
    answers = []
    for _ in range(count):
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        length = next((int(h.split(":")[1]) for h in lines if h.lower().startswith("content-length:")), 0)
        answers.append((status, await reader.readexactly(length)))
    return answers


def _get(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode()


def test_pipelined_answers_keep_request_order_across_fast_slow_and_failing_handlers() -> None:
    async def main() -> list[tuple[int, bytes]]:
        server, port = await _serve({})
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        paths = ["/fast", "/slow", "/fast", "/boom", "/context", "/fast", "/slow", "/boom", "/fast"]
        writer.write(b"".join(_get(p) for p in paths))
        answers = await _read_answers(reader, len(paths))
        writer.close()
        server.close()
        return answers

    assert asyncio.run(main()) == [
        (200, b"fast"), (200, b"slow"), (200, b"fast"), (500, b"internal"), (200, b"task"),
        (200, b"fast"), (200, b"slow"), (500, b"internal"), (200, b"fast"),
    ]


def test_a_handler_that_suspends_runs_on_inside_a_task() -> None:
    async def main() -> list[tuple[int, bytes]]:
        server, port = await _serve({})
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(_get("/context"))
        answers = await _read_answers(reader, 1)
        writer.write(_get("/fast"))
        answers += await _read_answers(reader, 1)
        writer.close()
        server.close()
        return answers

    assert asyncio.run(main()) == [(200, b"task"), (200, b"fast")]


def test_a_client_that_goes_away_cancels_its_suspended_handler() -> None:
    seen: dict[str, object] = {}

    async def main() -> None:
        server, port = await _serve(seen)
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(_get("/hang"))
        await writer.drain()
        await asyncio.sleep(0.1)
        writer.close()
        for _ in range(50):
            if seen.get("cancelled"):
                break
            await asyncio.sleep(0.02)
        server.close()

    asyncio.run(main())
    assert seen.get("cancelled") is True
