"""The proxy port's HTTP/1.1 server over raw sockets: framing, limits, pipelining."""

from __future__ import annotations

import asyncio
import re

from aiohttp import web

from tests.conftest import MakeProxy, Origin

POLICY = """
server: {max_body_size: 1KiB, max_header_size: 2KiB}
defaults: {ttl: 60s}
"""


async def _exchange(url: str, raw: bytes, *, read_for: float = 1.0) -> bytes:
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(raw)
    await writer.drain()
    chunks = []
    try:
        while True:
            chunk = await asyncio.wait_for(reader.read(65536), read_for)
            if not chunk:
                break
            chunks.append(chunk)
    except TimeoutError:
        pass
    writer.close()
    return b"".join(chunks)


def _statuses(data: bytes) -> list[int]:
    return [int(code) for code in re.findall(rb"HTTP/1\.[01] (\d{3}) ", data)]


async def test_keep_alive_and_pipelining_answer_in_order(make_proxy: MakeProxy, origin: Origin):
    proxy = await make_proxy(POLICY)
    raw = b"".join(f"GET /p/{i} HTTP/1.1\r\nHost: a\r\n\r\n".encode() for i in range(5))
    data = await _exchange(proxy.url, raw)
    assert _statuses(data) == [200] * 5
    positions = [data.index(f'"/p/{i}"'.encode()) for i in range(5)]
    assert positions == sorted(positions)


async def test_smuggling_attempts_are_refused(make_proxy: MakeProxy, origin: Origin):
    proxy = await make_proxy(POLICY)
    cases = [
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 7\r\n\r\nhello",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nX-Fold: a\r\n b\r\n\r\n",
    ]
    for raw in cases:
        data = await _exchange(proxy.url, raw)
        assert _statuses(data)[:1] == [400], raw
    assert origin.hits["/smuggled"] == 0


async def test_limits(make_proxy: MakeProxy, origin: Origin):
    proxy = await make_proxy(POLICY)
    long_url = b"GET /" + b"a" * 5000 + b" HTTP/1.1\r\nHost: a\r\n\r\n"
    assert _statuses(await _exchange(proxy.url, long_url)) == [414]
    big_header = b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: " + b"b" * 5000 + b"\r\n\r\n"
    assert _statuses(await _exchange(proxy.url, big_header)) == [431]
    big_body = b"POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: 5000\r\n\r\n" + b"c" * 5000
    assert _statuses(await _exchange(proxy.url, big_body)) == [413]
    chunked = b"POST /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
    chunked += b"800\r\n" + b"d" * 2048 + b"\r\n0\r\n\r\n"
    assert _statuses(await _exchange(proxy.url, chunked))[-1] in (413, 502)
    assert origin.hits["/up"] <= 1


async def test_target_forms_and_host(make_proxy: MakeProxy, origin: Origin):
    proxy = await make_proxy(POLICY)
    absolute = b"GET http://evil.example/abs?x=1 HTTP/1.1\r\nHost: a\r\n\r\n"
    data = await _exchange(proxy.url, absolute)
    assert _statuses(data) == [200]
    assert origin.hits["/abs"] == 1  # the path went to our origin, never to evil.example
    assert _statuses(await _exchange(proxy.url, b"CONNECT evil:443 HTTP/1.1\r\nHost: a\r\n\r\n"))[
        0
    ] in (400, 405)
    assert _statuses(await _exchange(proxy.url, b"GET / HTTP/1.1\r\n\r\n")) == [400]
    two_hosts = b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"
    assert _statuses(await _exchange(proxy.url, two_hosts)) == [400]


async def test_request_body_streams_to_origin(make_proxy: MakeProxy, origin: Origin):
    received: list[bytes] = []

    async def upload(request: web.Request) -> web.Response:
        received.append(await request.read())
        return web.Response(status=201, body=b"created")

    origin.reply("/upload", upload)
    proxy = await make_proxy(POLICY)
    response = await proxy.request("PUT", "/upload", data=b"x" * 900)
    assert response.status == 201
    assert received == [b"x" * 900]
    raw = b"POST /upload HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
    raw += b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
    data = await _exchange(proxy.url, raw)
    assert _statuses(data) == [201]
    assert received[-1] == b"hello world"


async def test_streamed_response_without_length_is_chunked(make_proxy: MakeProxy, origin: Origin):
    async def stream(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Cache-Control": "no-store"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        for part in (b"one,", b"two,", b"three"):
            await response.write(part)
            await asyncio.sleep(0.05)  # still arriving when the proxy answers
        await response.write_eof()
        return response

    origin.reply("/stream", stream)
    proxy = await make_proxy(POLICY)
    data = await _exchange(proxy.url, b"GET /stream HTTP/1.1\r\nHost: a\r\n\r\n")
    head, _, body = data.partition(b"\r\n\r\n")
    assert b"Transfer-Encoding: chunked" in head
    assert b"one," in body
    assert body.endswith(b"0\r\n\r\n")
    got = await proxy.get("/stream")
    assert await got.read() == b"one,two,three"


async def test_head_passthrough_keeps_origin_length(make_proxy: MakeProxy, origin: Origin):
    origin.reply("/h", body=b"x" * 321, headers={"Cache-Control": "no-store"})
    proxy = await make_proxy(POLICY)
    response = await proxy.request("HEAD", "/h")
    assert response.status == 200
    assert response.headers["Content-Length"] == "321"


async def test_http10_close_delimited(make_proxy: MakeProxy, origin: Origin):
    proxy = await make_proxy(POLICY)
    data = await _exchange(proxy.url, b"GET /old HTTP/1.0\r\n\r\n")
    assert _statuses(data) == [200]
    assert b'"/old"' in data
