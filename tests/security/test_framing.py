"""Request smuggling and framing: every ambiguous message is refused, and a refused
message never desynchronises the connection (no request hides in another's body, no
answer is sent for the wrong request).
"""

from __future__ import annotations

import pytest
from aiohttp import web

from tests.conftest import MakeProxy, Origin
from tests.security.wire import exchange, get, parse, talk

POLICY = """
server: {max_body_size: 1KiB, max_header_size: 2KiB}
defaults: {ttl: 60s}
"""
SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n"

# Each case is followed on the same connection by a request for /smuggled: a parser that
# framed the case differently from us would run it; we must refuse and close instead.
AMBIGUOUS = {
    "CL and TE": b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "TE and CL": b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n"
    b"Content-Length: 40\r\n\r\n0\r\n\r\n",
    "two CL": b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nContent-Length: 38\r\n\r\n",
    "two equal CL": b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n"
    b"Content-Length: 0\r\n\r\n",
    "CL list": b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 0, 0\r\n\r\n",
    "CL sign": b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: +0\r\n\r\n",
    "CL space before colon": b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length : 0\r\n\r\n",
    "TE xchunked": b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
    "TE chunked not last": b"POST /x HTTP/1.1\r\nHost: a\r\n"
    b"Transfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
    "TE twice": b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "TE vertical tab": b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: \x0bchunked\r\n\r\n"
    b"0\r\n\r\n",
    "TE in HTTP/1.0": b"POST /x HTTP/1.0\r\nHost: a\r\nConnection: keep-alive\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "obs-fold": b"GET /x HTTP/1.1\r\nHost: a\r\nX-Fold: a\r\n b\r\n\r\n",
    "obs-fold of TE": b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\r\n chunked\r\n\r\n"
    b"0\r\n\r\n",
    "fold before first header": b"GET /x HTTP/1.1\r\n Host: a\r\n\r\n",
    "bare LF": b"GET /x HTTP/1.1\nHost: a\n\n",
    "bare CR": b"GET /x HTTP/1.1\rHost: a\r\r\n",
    "space in header name": b"GET /x HTTP/1.1\r\nHost: a\r\nX Y: 1\r\n\r\n",
    "NUL in header value": b"GET /x HTTP/1.1\r\nHost: a\r\nX: a\x00b\r\n\r\n",
    "control char in header": b"GET /x HTTP/1.1\r\nHost: a\r\nX: a\x01b\r\n\r\n",
    "negative chunk size": b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"-1\r\nhello\r\n0\r\n\r\n",
    "hex prefix chunk size": b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"0x5\r\nhello\r\n0\r\n\r\n",
    "overflowing chunk size": b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"fffffffffffffffff\r\nhello\r\n0\r\n\r\n",
    "chunk size with space": b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"5 5\r\nhello\r\n0\r\n\r\n",
    "chunk data too long": b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"3\r\nhello\r\n0\r\n\r\n",
    "chunk lines with bare LF": b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"5\nhello\n0\n\n",
    "HTTP/0.9": b"GET /x\r\n\r\n",
    "HTTP/1.2": b"GET /x HTTP/1.2\r\nHost: a\r\n\r\n",
    "HTTP/2 preface": b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    "lower-case method": b"get /x HTTP/1.1\r\nHost: a\r\n\r\n",
}


@pytest.mark.parametrize("raw", AMBIGUOUS.values(), ids=AMBIGUOUS.keys())
async def test_ambiguous_framing_is_refused_and_closes(
    make_proxy: MakeProxy, origin: Origin, raw: bytes
):
    proxy = await make_proxy(POLICY)
    answers, closed = await talk(proxy.url, raw + SMUGGLED)
    assert [a.status for a in answers] == [400]
    assert answers[0].header("Connection") == "close"
    assert closed
    assert origin.hits["/smuggled"] == 0
    assert origin.hits["/x"] == 0  # nothing of an ambiguous message reached the origin


async def test_good_requests_before_a_bad_one_are_answered_in_order(
    make_proxy: MakeProxy, origin: Origin
):
    """A bad request in a pipeline gets its 400 only after the answers of the requests
    before it, even when those are slow: a 400 written early would be read as the answer
    to the slow request (a response desync)."""
    origin.reply("/slow", body=b"slow body", delay=0.3)
    proxy = await make_proxy(POLICY)
    raw = get("/slow") + get("/fast") + b"GET /bad HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n"
    answers, closed = await talk(proxy.url, raw + SMUGGLED, expect=3)
    assert [a.status for a in answers] == [200, 200, 400]
    assert answers[0].body == b"slow body"
    assert b'"/fast"' in answers[1].body
    assert closed
    assert origin.hits["/smuggled"] == 0


async def test_bad_chunk_of_a_queued_request_never_reaches_the_origin(
    make_proxy: MakeProxy, origin: Origin
):
    origin.reply("/slow", body=b"slow body", delay=0.3)
    proxy = await make_proxy(POLICY)
    bad = b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX"
    answers, closed = await talk(proxy.url, get("/slow") + bad + SMUGGLED, expect=2)
    assert [a.status for a in answers] == [200, 400]
    assert answers[0].body == b"slow body"
    assert closed
    assert origin.hits["/x"] == origin.hits["/smuggled"] == 0


async def test_a_request_after_a_refused_one_is_never_run(make_proxy: MakeProxy, origin: Origin):
    proxy = await make_proxy(POLICY)
    raw = b"GET /x HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n" + SMUGGLED
    answers, closed = await talk(proxy.url, raw)
    assert [a.status for a in answers] == [400]
    assert closed
    assert origin.hits["/smuggled"] == 0


async def test_body_bytes_are_never_parsed_as_a_request(make_proxy: MakeProxy, origin: Origin):
    """A request line inside a body (declared by Content-Length or chunks) stays body."""
    received: list[bytes] = []

    async def echo(request: web.Request) -> web.Response:
        received.append(await request.read())
        return web.Response(body=b"ok", headers={"Cache-Control": "no-store"})

    origin.reply("/echo", echo)
    proxy = await make_proxy(POLICY)
    by_length = b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % len(SMUGGLED)
    chunked = b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
    chunked += b"%x\r\n" % len(SMUGGLED) + SMUGGLED + b"\r\n0\r\n\r\n"
    answers, closed = await talk(proxy.url, by_length + SMUGGLED + chunked + get("/z"), expect=3)
    assert [a.status for a in answers] == [200, 200, 200]
    assert received == [SMUGGLED, SMUGGLED]
    assert origin.hits["/smuggled"] == 0
    assert not closed  # well-framed requests keep the connection


async def test_pipelined_burst_stays_in_order_with_mixed_hits_and_misses(
    make_proxy: MakeProxy, origin: Origin
):
    origin.reply("/slow", body=b"SLOW", delay=0.2)
    proxy = await make_proxy(POLICY)
    await proxy.get("/hot")  # cached: answered inline, while /slow is still in flight
    paths = ["/slow", "/hot", "/cold1", "/hot", "/slow2", "/hot"]
    raw = b"".join(get(p) for p in paths)
    answers, _ = await talk(proxy.url, raw, expect=len(paths))
    assert [a.status for a in answers] == [200] * len(paths)
    assert answers[0].body == b"SLOW"
    for path, answer in zip(paths[1:], answers[1:], strict=True):
        assert f'"path": "{path}"'.encode() in answer.body


async def test_upgrade_request_is_answered_once_and_closed(make_proxy: MakeProxy, origin: Origin):
    """Upgrades are not proxied: the request is answered as plain HTTP (one response)
    and whatever the client sends next (the other protocol's bytes) is never parsed."""
    proxy = await make_proxy(POLICY)
    await proxy.get("/hot")  # a cached answer is written inline, before the upgrade
    for path in ("/hot", "/cold"):
        raw = f"GET {path} HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
        data, closed = await exchange(proxy.url, raw.encode() + SMUGGLED)
        answers = parse(data)
        assert [a.status for a in answers] == [200], data
        assert closed
        assert origin.hits["/smuggled"] == 0
