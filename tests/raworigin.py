"""A raw origin for wire tests: an asyncio-streams server that sends exact bytes (framing,
interim answers, misbehaviour) and counts its connections and requests."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

Handler = Callable[["RawOrigin", asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class RawOrigin:
    """A TCP server running ``handler(server, reader, writer)`` per connection; it counts
    the connections and keeps every request (head, body) read through ``read_request``."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.requests: list[bytes] = []
        self.bodies: list[bytes] = []
        self.url = ""
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []

    async def start(self, ssl_context: ssl.SSLContext | None = None) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=ssl_context)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"{'https' if ssl_context else 'http'}://127.0.0.1:{port}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.append(writer)
        try:
            await self.handler(self, reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def read_request(self, reader: asyncio.StreamReader) -> bytes:
        """One request head and its body (Content-Length or chunked)."""
        head = await reader.readuntil(b"\r\n\r\n")
        self.requests.append(head)
        lowered = head.lower()
        body = b""
        if b"transfer-encoding: chunked" in lowered:
            while True:
                size = int((await reader.readuntil(b"\r\n")).strip(), 16)
                chunk = await reader.readexactly(size + 2)
                if size == 0:
                    break
                body += chunk[:-2]
        elif b"content-length:" in lowered:
            length = int(lowered.split(b"content-length:")[1].split(b"\r\n")[0])
            body = await reader.readexactly(length)
        self.bodies.append(body)
        return head

    async def close(self) -> None:
        for writer in self._writers:
            writer.close()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


Start = Callable[[Handler], Awaitable[RawOrigin]]


@pytest.fixture(name="raw")
async def raw_origins() -> AsyncIterator[Start]:
    started: list[RawOrigin] = []

    async def start(handler: Handler) -> RawOrigin:
        server = RawOrigin(handler)
        await server.start()
        started.append(server)
        return server

    yield start
    for server in started:
        await server.close()


def answer(body: bytes, *extra: bytes, status: bytes = b"200 OK") -> bytes:
    fields = b"".join(line + b"\r\n" for line in extra)
    head = b"HTTP/1.1 " + status + b"\r\nContent-Length: %d\r\n" % len(body) + fields
    return head + b"\r\n" + body
