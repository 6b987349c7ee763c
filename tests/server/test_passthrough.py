"""A pass-through (``cache: false``) relays fields as bytes both ways: what reaches the
origin and what reaches the client, byte for byte, against a raw origin that records
the request heads it gets and answers with crafted bytes."""

from __future__ import annotations

import asyncio

import pytest

from proxy import __version__
from proxy.policy.load import parse_policy
from tests.conftest import MakeProxy, policy_text
from tests.raworigin import RawOrigin, Start, raw_origins  # noqa: F401  (fixture)
from tests.security.wire import exchange, parse, talk

Writer = asyncio.StreamWriter

VIA = f"1.1 sidecache/{__version__}"


class Relayed:
    """A raw origin answering every request with ``answer``, and the heads it got."""

    def __init__(self, origin: RawOrigin, answer: bytes) -> None:
        self.origin = origin
        self.answer = answer
        self.url = origin.url

    @property
    def heads(self) -> list[bytes]:
        return self.origin.requests

    def fields(self, index: int = -1) -> list[tuple[str, str]]:
        lines = self.heads[index].decode("latin-1").split("\r\n")[1:]
        return [(n, v.strip()) for n, _, v in (line.partition(":") for line in lines if line)]


@pytest.fixture
async def raw_origin(raw: Start) -> Relayed:
    async def serve(origin: RawOrigin, reader: asyncio.StreamReader, writer: Writer) -> None:
        while True:
            await origin.read_request(reader)
            writer.write(relayed.answer)

    relayed = Relayed(await raw(serve), b"")
    return relayed


POLICY = """\
defaults:
  cache: false
routes:
  - name: internal
    match: {prefix: /internal/}
    cache: false
    strip_headers: [X-Internal]
    forward_headers: [X-Forwarded-Host]
"""


def _answer(*fields: str, body: bytes = b"hello") -> bytes:
    head = "HTTP/1.1 200 OK\r\n" + "".join(f"{f}\r\n" for f in fields)
    return head.encode("latin-1") + b"Content-Length: %d\r\n\r\n" % len(body) + body


async def _proxy(make_proxy: MakeProxy, origin: Relayed) -> str:
    loaded = parse_policy(policy_text(origin.url, POLICY), "relay.yaml")
    return (await make_proxy(loaded=loaded)).url


async def test_request_fields_reach_the_origin_in_order_without_hop_by_hop(
    make_proxy: MakeProxy, raw_origin: Relayed
):
    raw_origin.answer = _answer()
    url = await _proxy(make_proxy, raw_origin)
    request = (
        b"GET /api/items?page=2 HTTP/1.1\r\nHost: shop.example\r\n"
        b"Connection: keep-alive, X-Secret\r\nX-Secret: 1\r\nKeep-Alive: timeout=5\r\n"
        b"TE: trailers\r\nProxy-Authorization: Basic eA==\r\nUpgrade: h2c\r\n"
        b"X-Dup: a\r\nX-Request-Id: r-1\r\nX-Dup: b\r\nX-Forwarded-For: 10.0.0.1\r\n"
        b"X-Forwarded-Proto: https\r\nX-Forwarded-Host: evil.example\r\nVia: 1.0 edge\r\n"
        b"X-Original-URL: /admin\r\nAccept: */*\r\n\r\n"
    )
    answers, _ = await talk(url, request)
    assert answers[0].status == 200
    assert raw_origin.heads[-1].startswith(b"GET /api/items?page=2 HTTP/1.1\r\n")
    assert raw_origin.fields() == [
        ("X-Dup", "a"),
        ("X-Request-Id", "r-1"),
        ("X-Dup", "b"),
        ("Accept", "*/*"),
        ("Host", raw_origin.url.removeprefix("http://")),
        ("X-Forwarded-For", "10.0.0.1, 127.0.0.1"),
        ("X-Forwarded-Proto", "http"),
        ("X-Forwarded-Host", "shop.example"),
        ("Via", f"1.0 edge, {VIA}"),
    ]


async def test_route_strip_and_forward_lists_apply(make_proxy: MakeProxy, raw_origin: Relayed):
    raw_origin.answer = _answer()
    url = await _proxy(make_proxy, raw_origin)
    request = (
        b"GET /internal/x HTTP/1.1\r\nHost: shop.example\r\nX-Internal: secret\r\n"
        b"X-Forwarded-Host: front.example\r\n\r\n"
    )
    await talk(url, request)
    names = [name for name, _ in raw_origin.fields()]
    assert "X-Internal" not in names  # the route strips it
    # the route forwards the client's X-Forwarded-Host, and adds none of its own
    assert [v for n, v in raw_origin.fields() if n == "X-Forwarded-Host"] == ["front.example"]


async def test_answer_fields_reach_the_client_in_order_without_hop_by_hop(
    make_proxy: MakeProxy, raw_origin: Relayed
):
    raw_origin.answer = _answer(
        "Date: Tue, 01 Dec 2026 10:00:00 GMT",
        "Connection: keep-alive, X-Hop",
        "X-Hop: 1",
        "Keep-Alive: timeout=30",
        "Set-Cookie: a=1",
        "Proxy-Authenticate: Basic",
        "Trailer: X-Sum",
        "Upgrade: h2c",
        "Set-Cookie: b=2",
        "Content-Type: text/plain",
    )
    url = await _proxy(make_proxy, raw_origin)
    answers, closed = await talk(url, b"GET /a HTTP/1.1\r\nHost: a\r\n\r\n")
    answer = answers[0]
    assert (answer.status, answer.body, closed) == (200, b"hello", False)
    assert answer.headers[:4] == [
        ("Date", "Tue, 01 Dec 2026 10:00:00 GMT"),
        ("Set-Cookie", "a=1"),
        ("Set-Cookie", "b=2"),
        ("Content-Type", "text/plain"),
    ]
    names = [name.lower() for name, _ in answer.headers]
    assert names[4:] == ["x-cache", "cache-status", "content-length"]
    assert answer.header("X-Cache") == "BYPASS"
    assert answer.header("Cache-Status") == "sidecache; fwd=bypass; fwd-status=200; detail=route"


async def test_our_date_when_the_origin_sends_none(make_proxy: MakeProxy, raw_origin: Relayed):
    raw_origin.answer = _answer("Content-Type: text/plain")
    url = await _proxy(make_proxy, raw_origin)
    answers, _ = await talk(url, b"GET /a HTTP/1.1\r\nHost: a\r\n\r\n")
    assert [n for n, _ in answers[0].headers].count("Date") == 1


async def test_keep_alive_and_pipelined_pass_throughs_stay_in_order(
    make_proxy: MakeProxy, raw_origin: Relayed
):
    raw_origin.answer = _answer("Content-Type: text/plain")
    url = await _proxy(make_proxy, raw_origin)
    requests = b"".join(b"GET /p/%d HTTP/1.1\r\nHost: a\r\n\r\n" % i for i in range(5))
    answers, closed = await talk(url, requests, expect=5)
    assert [a.status for a in answers] == [200] * 5
    assert not closed
    assert [h.split(b" ")[1] for h in raw_origin.heads] == [b"/p/%d" % i for i in range(5)]


async def test_http10_client_gets_a_closed_connection(make_proxy: MakeProxy, raw_origin: Relayed):
    raw_origin.answer = _answer("Content-Type: text/plain")
    url = await _proxy(make_proxy, raw_origin)
    data, closed = await exchange(url, b"GET /a HTTP/1.0\r\n\r\n")
    assert closed
    assert parse(data)[0].header("Connection") == "close"
