"""A raw HTTP/1.1 client connection for wire tests: it sends exact bytes and reads one
answer at a time, so a test controls every byte of the request head."""

from __future__ import annotations

import asyncio

from tests.conftest import RunningProxy


class Conn:
    """One keep-alive client connection that sends exact bytes and reads one answer."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, proxy: RunningProxy) -> Conn:
        host, port = proxy.url.removeprefix("http://").split(":")
        return cls(*await asyncio.open_connection(host, int(port)))

    async def ask(self, raw: bytes, *, head: bool = False) -> tuple[int, dict[str, str], bytes]:
        self.writer.write(raw)
        await self.writer.drain()
        block = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), 5)
        status_line, *lines = block.decode("latin-1").split("\r\n")[:-2]
        headers: dict[str, str] = {}
        for line in lines:
            name, _, value = line.partition(":")
            assert name.lower() not in headers, f"field twice: {name}"
            headers[name.lower()] = value.strip()
        status = int(status_line.split()[1])
        body = b""
        if not head and status not in (204, 304):
            body = await self.reader.readexactly(int(headers["content-length"]))
        return status, headers, body

    async def closed(self) -> bool:
        return await asyncio.wait_for(self.reader.read(1), 5) == b""

    def close(self) -> None:
        self.writer.close()
