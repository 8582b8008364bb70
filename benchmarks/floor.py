"""The floor for scenario 1: the least an HTTP server on this stack can do per request.

A bare uvloop + httptools protocol that writes a fixed 204 from inside ``data_received``: no routing, no
store, no request object. hey's latency against it is what the machine, the kernel and hey itself cost;
the sidecar's latency above it is ours. Measured in the same run, it makes the scenario readable on a
noisy machine, where the floor itself moved between 0.41 and 0.55 ms (mean) within an hour.

    .venv/bin/python -m benchmarks.floor PORT
"""

from __future__ import annotations

import asyncio
import sys

import httptools
import uvloop

ANSWER = b"HTTP/1.1 204 No Content\r\nDate: Thu, 01 Jan 2026 00:00:00 GMT\r\n\r\n"


class Floor(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.parser = httptools.HttpRequestParser(self)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.transport.close()

    def on_message_complete(self) -> None:
        self.transport.write(ANSWER)  # type: ignore[attr-defined]


async def serve(port: int) -> None:
    server = await asyncio.get_running_loop().create_server(Floor, "127.0.0.1", port, reuse_address=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    uvloop.run(serve(int(sys.argv[1])))
