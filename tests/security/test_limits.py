"""Limits with clear answers: body (413), request line (414), headers (431), slowloris
(408), idle and non-reading clients, concurrent connections (503), the origin pool and
the coalescing queue per key. Each limit holds without starving other clients."""

from __future__ import annotations

import asyncio
import contextlib
import io
import time

import aiohttp
from aiohttp import web

from tests.conftest import Origin
from tests.security.conftest import Serve, Served
from tests.security.wire import get, parse, talk

POLICY = """
server: {max_body_size: 64KiB, max_header_size: 2KiB, max_connections: 20}
defaults: {ttl: 60s}
"""


async def _open(served: Served) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", served.port)


async def _read_all(reader: asyncio.StreamReader, timeout: float) -> tuple[bytes, float]:
    """Everything until EOF, and how long EOF took."""
    began = time.monotonic()
    data = b""
    while chunk := await asyncio.wait_for(reader.read(65536), timeout):
        data += chunk
    return data, time.monotonic() - began


async def test_size_limits_answer_413_414_431_and_close(serve: Serve, origin: Origin):
    served = await serve(POLICY)
    cases = {
        413: b"POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: 70000\r\n\r\n",
        414: b"GET /" + b"a" * 3000 + b" HTTP/1.1\r\nHost: a\r\n\r\n",
        431: b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: " + b"b" * 3000 + b"\r\n\r\n",
    }
    many = b"".join(b"X-%d: 1\r\n" % i for i in range(250))
    cases_many = b"GET / HTTP/1.1\r\nHost: a\r\n" + many + b"\r\n"
    for status, raw in [*cases.items(), (431, cases_many)]:
        answers, closed = await talk(served.url, raw + get("/after"))
        assert [a.status for a in answers] == [status]
        assert answers[0].header("Connection") == "close"
        assert closed
    # a chunked body is counted as it arrives: 413 once it passes the limit
    chunk = b"8000\r\n" + b"c" * 0x8000 + b"\r\n"
    raw = b"POST /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n" + chunk * 3
    answers, closed = await talk(served.url, raw + b"0\r\n\r\n")
    assert [a.status for a in answers] == [413]
    assert closed
    assert origin.hits["/after"] == 0


async def test_413_reaches_a_client_that_is_still_uploading(serve: Serve, origin: Origin):
    """Refused at its headers, a big upload is already in our socket buffer: closing with
    unread input sends a reset, which destroys the 413 before the client reads it; the
    lingering close sends FIN and discards the rest for a moment instead."""
    served = await serve(POLICY)
    reader, writer = await _open(served)
    writer.write(b"PUT /up HTTP/1.1\r\nHost: a\r\nContent-Length: 4000000\r\n\r\n")
    writer.write(b"u" * (512 * 1024))  # sent before reading anything, as clients do
    with contextlib.suppress(ConnectionError):
        await writer.drain()
    await asyncio.sleep(0.3)  # the server has answered and closed (or reset) by now
    data, _ = await _read_all(reader, 5)
    writer.close()
    assert [a.status for a in parse(data)] == [413]
    assert origin.requests == []


async def test_slow_second_head_on_a_keep_alive_connection_gets_408(serve: Serve, origin: Origin):
    """The head deadline restarts with each request, not only with the connection."""
    served = await serve(POLICY, header_timeout=0.5, keepalive_timeout=30)
    reader, writer = await _open(served)
    writer.write(get("/first"))
    head = await reader.readuntil(b"\r\n\r\n")
    await reader.readexactly(int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0]))
    collector = asyncio.ensure_future(_read_all(reader, 5))
    began = time.monotonic()
    for byte in get("/second")[:-2]:
        if collector.done():
            break
        writer.write(bytes([byte]))
        await asyncio.sleep(0.1)
    data, _ = await collector
    writer.close()
    assert [a.status for a in parse(data)] == [408]
    assert time.monotonic() - began < 2.5
    assert origin.hits["/second"] == 0


async def test_upload_over_the_buffer_high_water_streams_through(serve: Serve, origin: Origin):
    """A body larger than the read buffer's high-water mark (1 MiB) must stream to the
    origin; before the fix reading paused and the request waited forever."""
    sizes: list[int] = []

    async def upload(request: web.Request) -> web.Response:
        sizes.append(len(await request.read()))
        return web.Response(status=201)

    origin.reply("/up", upload)
    served = await serve("server: {max_body_size: 8MiB}\n")
    async with aiohttp.ClientSession() as session:
        timeout = aiohttp.ClientTimeout(total=10)
        body = io.BytesIO(bytes(3 << 20))
        async with session.put(served.url + "/up", data=body, timeout=timeout) as r:
            assert r.status == 201
    assert sizes == [3 << 20]


async def test_slowloris_head_gets_408_within_the_header_timeout(serve: Serve, origin: Origin):
    """One byte every 0.1 s would take 4 s to finish the head: the head's deadline (0.5 s)
    cuts it, however steadily bytes arrive (it is not a per-read timeout)."""
    served = await serve(POLICY, header_timeout=0.5)
    reader, writer = await _open(served)
    collector = asyncio.ensure_future(_read_all(reader, 5))
    began = time.monotonic()
    for byte in get("/slow")[:-2]:
        if collector.done():
            break
        writer.write(bytes([byte]))
        await asyncio.sleep(0.1)
    data, _ = await collector
    writer.close()
    assert [a.status for a in parse(data)] == [408]
    assert time.monotonic() - began < 2.5
    assert origin.requests == []


async def test_silent_and_idle_connections_are_closed(serve: Serve, origin: Origin):
    served = await serve(POLICY, header_timeout=0.3, keepalive_timeout=0.6)
    silent_reader, silent = await _open(served)
    data, took = await _read_all(silent_reader, 3)
    assert [a.status for a in parse(data)] == [408]
    assert took < 1.5
    reader, writer = await _open(served)
    writer.write(get("/k"))
    data, took = await _read_all(reader, 3)  # answered, then closed once idle
    assert [a.status for a in parse(data)] == [200]
    assert 0.5 < took < 2.5
    silent.close()
    writer.close()
    await asyncio.sleep(0.05)
    assert not served.http.connections


async def test_slowloris_crowd_does_not_starve_a_real_client(serve: Serve, origin: Origin):
    policy = "server: {max_connections: 200}\ndefaults: {ttl: 60s}\n"
    served = await serve(policy, header_timeout=1.0, linger=0.3)
    crowd = [await _open(served) for _ in range(100)]
    for _, writer in crowd:
        writer.write(b"GET /x HTTP/1.1\r\nHo")
    began = time.monotonic()
    answers, _ = await talk(served.url, get("/real"))
    assert answers[0].status == 200
    assert time.monotonic() - began < 0.5
    for reader, _ in crowd:  # every dribbler is answered 408 at its head's deadline
        data, _ = await _read_all(reader, 3)
        assert [a.status for a in parse(data)] == [408]
    assert time.monotonic() - began < 2.5
    await asyncio.sleep(0.5)
    assert len(served.http.connections) <= 1  # and let go after the lingering close
    for _, writer in crowd:
        writer.close()


async def test_connection_cap_answers_503_and_recovers(serve: Serve, origin: Origin):
    served = await serve("server: {max_connections: 3}\ndefaults: {ttl: 60s}\n")
    held = [await _open(served) for _ in range(3)]
    answers, closed = await talk(served.url, get("/over"))
    assert [a.status for a in answers] == [503]
    assert closed
    held[0][1].close()
    await asyncio.sleep(0.1)
    answers, _ = await talk(served.url, get("/under"))
    assert [a.status for a in answers] == [200]
    for _, writer in held[1:]:
        writer.close()


async def test_a_client_that_does_not_read_cannot_grow_our_buffers(serve: Serve, origin: Origin):
    """Pipelined hits for a 256 KiB body, never read: the proxy stops reading and
    answering instead of buffering every answer (memory DoS)."""
    origin.reply("/big", body=b"x" * (256 * 1024))
    served = await serve("server: {max_connections: 10}\ndefaults: {ttl: 60s}\n", send_timeout=1.0)
    warm, _ = await talk(served.url, get("/big"))
    assert warm[0].status == 200
    _, writer = await _open(served)
    writer.transport.set_write_buffer_limits(high=1 << 24)
    writer.write(get("/big") * 2000)  # ~500 MB of answers if all were buffered
    await asyncio.sleep(0.5)
    buffered = [c.transport.get_write_buffer_size() for c in served.http.connections if c.transport]
    assert max(buffered) < 8 << 20
    await asyncio.sleep(1.5)  # send_timeout: the non-reader is dropped, not flushed to
    assert not served.http.connections
    writer.close()


async def test_origin_pool_bounds_concurrent_origin_connections(serve: Serve, origin: Origin):
    active = peak = 0

    async def slow(request: web.Request) -> web.Response:
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        await asyncio.sleep(0.2)
        active -= 1
        return web.Response(text=request.path, headers={"Cache-Control": "no-store"})

    for i in range(12):
        origin.reply(f"/p{i}", slow)
    served = await serve("server: {origin_connections: 3}\n")
    async with aiohttp.ClientSession() as session:

        async def one(i: int) -> int:
            async with session.get(f"{served.url}/p{i}") as response:
                await response.read()
                return response.status

        statuses = await asyncio.gather(*(one(i) for i in range(12)))
    assert statuses == [200] * 12
    assert peak == 3


async def test_coalescing_queue_is_capped_per_key(serve: Serve, origin: Origin):
    """``coalesce.max_waiters``: followers beyond the cap do not queue behind the leader;
    they fetch on their own (and are answered, never refused)."""
    origin.reply("/hot", body=b"hot", delay=0.3)
    served = await serve("defaults: {ttl: 60s, coalesce: {max_waiters: 4}}\n")
    async with aiohttp.ClientSession() as session:

        async def one() -> tuple[int, bytes]:
            async with session.get(f"{served.url}/hot") as response:
                return response.status, await response.read()

        first = asyncio.ensure_future(one())
        await asyncio.sleep(0.05)  # the leader is in flight
        rest = await asyncio.gather(*(one() for _ in range(10)))
        answers = [await first, *rest]
    assert answers == [(200, b"hot")] * 11
    assert origin.hits["/hot"] == 1 + (10 - 4)  # leader + everyone past the 4 waiters
