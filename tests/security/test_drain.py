"""Graceful stop (SIGTERM of a worker) under keep-alive: a request already on its way on
an idle keep-alive connection is answered (with ``Connection: close``), not cut off.
Closing idle connections at once loses exactly those requests: found by bench/chaos
(``sigterm-worker``: one error per connection the stopped worker held)."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from tests.conftest import Origin
from tests.security.conftest import Serve
from tests.security.wire import get, parse


async def test_requests_racing_a_drain_on_idle_connections_are_answered(
    serve: Serve, origin: Origin
):
    served = await serve("defaults: {ttl: 60s}\n")
    connections = [await asyncio.open_connection("127.0.0.1", served.port) for _ in range(8)]
    for reader, writer in connections:  # each becomes an idle keep-alive connection
        writer.write(get("/warm"))
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
        await reader.readexactly(length)
    stopping = asyncio.ensure_future(served.http.stop(5.0))
    await asyncio.sleep(0.1)  # draining has begun; these requests were "already sent"
    for _, writer in connections:
        writer.write(get("/racing"))
    for reader, writer in connections:
        data = await asyncio.wait_for(reader.read(), 5)  # read to EOF
        answers = parse(data)
        assert [a.status for a in answers] == [200]
        assert answers[0].header("Connection") == "close"
        writer.close()
    began = time.monotonic()
    await stopping
    assert time.monotonic() - began < 1.0  # no connection left: the drain ends at once


async def test_a_silent_idle_connection_does_not_hold_the_drain(serve: Serve, origin: Origin):
    served = await serve("defaults: {ttl: 60s}\n")
    reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
    writer.write(get("/warm"))
    await reader.readuntil(b"\r\n\r\n")
    began = time.monotonic()
    await served.http.stop(30.0)
    assert time.monotonic() - began < 3.0  # the idle grace, not the shutdown timeout
    assert await asyncio.wait_for(reader.read(), 5) is not None
    writer.close()


async def test_a_request_outliving_the_drain_is_dropped_quietly(
    serve: Serve, origin: Origin, caplog: pytest.LogCaptureFixture
):
    """Past shutdown_timeout the connection is closed under an in-flight request: its
    late answer is discarded without an 'internal error' traceback."""
    origin.reply("/slow", body=b"late", delay=0.5)
    served = await serve("defaults: {ttl: 60s}\n")
    reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
    writer.write(get("/slow"))
    await asyncio.sleep(0.1)
    await served.http.stop(0.1)
    assert await asyncio.wait_for(reader.read(), 5) == b""  # closed, no answer
    await asyncio.sleep(0.6)  # the origin answers; the request task finishes
    writer.close()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
