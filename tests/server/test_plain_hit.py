"""The plain HIT: a fresh entry in process memory written from parts prepared once per
entry version (``replies.plain_hit``, ``responsehead.render_hit``), with only Age,
X-Cache, Cache-Status, our Date and the framing written per answer. It must write the
very bytes the general rendering writes, and every request it must not answer (a
conditional, a Range, HEAD's framing, a client without gzip) must get what the general
path gives. Every request here carries its own X-Request-Id, as real traffic does, so
the wire memo never answers one."""

from __future__ import annotations

import asyncio
import gzip
import itertools
import time
import uuid
from dataclasses import replace
from email.utils import parsedate_to_datetime

import pytest
from aiohttp import web

from proxy.clock import FakeClock
from proxy.core.entry import CachedResponse, decode, encode
from proxy.core.exchange import Exchange
from proxy.core.replies import HIT, from_cache, plain_hit
from proxy.core.routing import Router
from proxy.engine.driver import Engine
from proxy.origin.client import OriginClient
from proxy.policy.load import parse_policy
from proxy.server.responsehead import render_answer, render_hit
from proxy.stores.base import Store
from proxy.stores.factory import build_stores, close_stores
from proxy.wire.codec import Date
from tests.conftest import MakeProxy, Origin, Reply, RunningProxy, policy_text
from tests.server.rawclient import Conn

POLICY = """
defaults: {ttl: 10s, compression: {algorithm: none}}
"""

# ---------------------------------------------------------------- the same bytes


def _entry(**changes: object) -> CachedResponse:
    entry = CachedResponse(
        status=200,
        headers=(
            ("Content-Type", "text/plain"),
            ("Date", "Tue, 01 Dec 2026 10:00:00 GMT"),
            ("Content-Length", "11"),
            ("ETag", '"v1"'),
        ),
        body=b"hello world",
        body_encoding=None,
        request_time=1000.0,
        response_time=1000.0,
        initial_age=2.0,
        lifetime=60.0,
    )
    return replace(entry, **changes)  # type: ignore[arg-type]


_ENTRIES = {
    "dated": _entry(),
    "undated": _entry(headers=(("Content-Type", "text/plain"),)),
    "not found": _entry(status=404),
    "gzip": _entry(body=gzip.compress(b"hello world" * 50), body_encoding="gzip"),
    "vary": _entry(headers=(("Vary", "Accept"), ("ETag", '"v2"'))),
    "unsafe field": _entry(headers=(("X-Bad", "a\r\nSet-Cookie: x=1"), ("X-Ok", "1"))),
}
_REQUESTS = {
    "GET": ("GET", {}),
    "HEAD": ("HEAD", {}),
    "gzip client": ("GET", {"accept-encoding": "gzip, deflate"}),
    "no-transform": ("GET", {"accept-encoding": "gzip", "cache-control": "no-transform"}),
}


@pytest.fixture
def fixed_date(monkeypatch: pytest.MonkeyPatch) -> None:
    # both renderings in one second: the comparison never straddles a new Date
    monkeypatch.setattr(Date, "get", classmethod(lambda cls: b"Date: Fixed\r\n"))


@pytest.mark.usefixtures("fixed_date")
@pytest.mark.parametrize("entry_name", list(_ENTRIES))
@pytest.mark.parametrize("request_name", list(_REQUESTS))
@pytest.mark.parametrize("now", [1000.0, 1000.4, 1017.99, 1057.5])
@pytest.mark.parametrize("keep_alive", [True, False])
@pytest.mark.parametrize("inline", [65536, 16])
def test_the_bytes_of_the_general_rendering(
    entry_name: str, request_name: str, now: float, keep_alive: bool, inline: int
):
    entry = _ENTRIES[entry_name]
    method, hmap = _REQUESTS[request_name]
    headers = tuple(hmap.items())
    ex = Exchange(method, "/a", "", headers, hmap)
    hit = plain_hit(ex, entry, now)
    assert hit is not None
    general, _ = render_answer(from_cache(ex, entry, now, "HIT", HIT), ex, keep_alive, inline)
    # a fresh copy: nothing prepared on the entry yet, then the prepared parts again
    for _ in range(2):
        written = render_hit(*hit, keep_alive, method == "HEAD", inline)
        assert written == general
        hit = plain_hit(ex, entry, now)
        assert hit is not None


@pytest.mark.parametrize(
    "hmap",
    [
        {"range": "bytes=0-1"},
        {"if-none-match": '"v1"'},
        {"if-none-match": '"other"'},
        {"if-modified-since": "Tue, 01 Dec 2026 10:00:00 GMT"},
    ],
)
def test_what_only_the_general_path_answers(hmap: dict[str, str]):
    ex = Exchange("GET", "/a", "", tuple(hmap.items()), hmap)
    assert plain_hit(ex, _entry(), 1001.0) is None
    for status in (204, 304):
        assert plain_hit(Exchange("GET", "/a", "", (), {}), _entry(status=status), 1001.0) is None


def test_a_new_entry_version_is_prepared_anew():
    ex = Exchange("GET", "/a", "", (), {})
    old = _entry()
    first = plain_hit(ex, old, 1001.0)
    newer = replace(old, body=b"other")  # a 304 freshening, a refill: a new object
    second = plain_hit(ex, newer, 1001.0)
    assert first is not None
    assert second is not None
    assert (first[0].body, second[0].body) == (b"hello world", b"other")
    assert second[0].length == b"Content-Length: 5\r\n"


# ---------------------------------------------------------------- on the wire


def _head(target: str = "/r/1", *fields: str, method: str = "GET", version: str = "1.1") -> bytes:
    """A request head with its own X-Request-Id."""
    lines = [f"{method} {target} HTTP/{version}", "Host: a", *fields]
    lines.append(f"X-Request-Id: {uuid.uuid4()}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def _stored(proxy: RunningProxy) -> tuple[Store, str, CachedResponse]:
    """The store, key and entry a plain GET of /r/1 is answered from."""
    ex = Exchange.build("GET", "/r/1", "", (("Host", "a"),), host="a")
    ticket = proxy.engine.hits.ticket(ex)
    assert ticket is not None
    store = proxy.stores[ticket.route.config.backend]
    entry = decode(await store.get(ticket.key) or b"")
    assert isinstance(entry, CachedResponse)
    return store, ticket.key, entry


async def test_age_and_ttl_move_with_the_second_and_freshness_ends(
    make_proxy: MakeProxy, origin: Origin
):
    # a whole second, so the origin's Date (one-second resolution) adds no initial age
    clock = FakeClock(start=float(int(time.time())))
    origin.clock = clock
    proxy = await make_proxy(POLICY, clock=clock)
    conn = await Conn.open(proxy)
    status, headers, first = await conn.ask(_head())
    assert (status, headers["x-cache"]) == (200, "MISS")
    ages, ttls = [], []
    for step in (0.0, 0.4, 0.7, 0.0, 3.2, 5.0):
        clock.advance(step)
        status, headers, body = await conn.ask(_head())
        assert (status, headers["x-cache"], body) == (200, "HIT", first)
        ages.append(int(headers["age"]))
        ttls.append(int(headers["cache-status"].partition("ttl=")[2]))
    assert ages == [0, 0, 1, 1, 4, 9]
    assert ttls == [10, 9, 8, 8, 5, 0]
    assert proxy.http is not None
    assert len(proxy.http.memo) == 0  # never the memo's answer
    clock.advance(0.75)  # age 10.05 of 10 s: no longer fresh
    _, headers, _ = await conn.ask(_head())
    assert headers["x-cache"] != "HIT"
    assert origin.hits["/r/1"] == 2
    conn.close()


async def test_a_purged_or_replaced_entry_is_not_answered(make_proxy: MakeProxy, origin: Origin):
    proxy = await make_proxy(POLICY)
    conn = await Conn.open(proxy)
    for label in ("MISS", "HIT", "HIT"):
        assert (await conn.ask(_head()))[1]["x-cache"] == label
    store, key, entry = await _stored(proxy)
    await store.set(key, encode(replace(entry, body=b"replaced")), 60)
    _, headers, body = await conn.ask(_head())
    assert (headers["x-cache"], body, headers["content-length"]) == ("HIT", b"replaced", "8")
    assert await store.delete([key]) == 1
    _, headers, body = await conn.ask(_head())
    assert headers["x-cache"] == "MISS"
    assert b'"hit": 2' in body
    assert origin.hits["/r/1"] == 2
    conn.close()


async def test_our_date_moves_with_the_wall_clock(make_proxy: MakeProxy, origin: Origin):
    # A stored response without Date is answered with ours (RFC 9110 §6.6.1), written
    # once a second, while the engine clock (frozen here) keeps Age and ttl unchanged.
    clock = FakeClock(start=int(time.time()) + 0.5)
    origin.clock = clock
    proxy = await make_proxy(POLICY, clock=clock)
    conn = await Conn.open(proxy)
    await conn.ask(_head())
    store, key, entry = await _stored(proxy)
    undated = tuple((k, v) for k, v in entry.headers if k.lower() != "date")
    await store.set(key, encode(replace(entry, headers=undated)), 60)
    _, headers, _ = await conn.ask(_head())
    assert (headers["x-cache"], headers["age"]) == ("HIT", "0")
    before = parsedate_to_datetime(headers["date"]).timestamp()
    await asyncio.sleep(max(0.0, before + 1 - time.time()))  # the next second, no more
    _, headers, _ = await conn.ask(_head())
    assert (headers["x-cache"], headers["age"]) == ("HIT", "0")
    assert parsedate_to_datetime(headers["date"]).timestamp() > before
    conn.close()


async def test_a_new_policy_applies_at_once(make_proxy: MakeProxy, origin: Origin):
    proxy = await make_proxy(POLICY)
    conn = await Conn.open(proxy)
    for label in ("MISS", "HIT"):
        assert (await conn.ask(_head()))[1]["x-cache"] == label
    loaded = parse_policy(policy_text(origin.url, "defaults: {cache: false}"), "p.yaml")
    proxy.engine.reconfigure(loaded, proxy.engine.stores)
    assert (await conn.ask(_head()))[1]["x-cache"] == "BYPASS"
    assert origin.hits["/r/1"] == 2
    conn.close()


async def test_vary_selects_the_variant(make_proxy: MakeProxy, origin: Origin):
    async def by_language(request: web.Request) -> web.Response:
        language = request.headers.get("Accept-Language", "none")
        return web.Response(body=language.encode(), headers={"Vary": "Accept-Language"})

    origin.reply("/v", by_language)
    proxy = await make_proxy(POLICY)
    conn = await Conn.open(proxy)
    for language, label in itertools.product(("en", "fr"), ("MISS", "HIT", "HIT")):
        _, headers, body = await conn.ask(_head("/v", f"Accept-Language: {language}"))
        if label == "HIT":  # the variant is read through the general path
            assert headers["x-cache"] == "HIT"
        assert body == language.encode()
        assert headers["vary"] == "Accept-Language"
    assert origin.hits["/v"] == 2
    conn.close()


async def test_conditional_range_and_head(make_proxy: MakeProxy, origin: Origin):
    modified = "Tue, 01 Dec 2026 10:00:00 GMT"
    origin.reply(
        "/r/1", Reply(body=b"0123456789", headers={"ETag": '"v1"', "Last-Modified": modified})
    )
    proxy = await make_proxy(POLICY)
    conn = await Conn.open(proxy)
    assert (await conn.ask(_head()))[1]["x-cache"] == "MISS"
    for _ in range(2):
        status, headers, body = await conn.ask(_head("/r/1", 'If-None-Match: "v1"'))
        assert (status, headers["x-cache"], body) == (304, "HIT", b"")
        assert "content-length" not in headers
        status, headers, body = await conn.ask(_head("/r/1", f"If-Modified-Since: {modified}"))
        assert (status, headers["x-cache"], body) == (304, "HIT", b"")
        status, headers, body = await conn.ask(_head("/r/1", 'If-None-Match: "v0"'))
        assert (status, body) == (200, b"0123456789")
        status, headers, body = await conn.ask(_head("/r/1", "Range: bytes=2-4"))
        assert (status, body, headers["content-range"]) == (206, b"234", "bytes 2-4/10")
        status, headers, _ = await conn.ask(_head("/r/1", "Range: bytes=10-"))
        assert (status, headers["content-range"]) == (416, "bytes */10")
        status, headers, _ = await conn.ask(_head(method="HEAD"), head=True)
        assert (status, headers["x-cache"], headers["content-length"]) == (200, "HIT", "10")
        status, headers, body = await conn.ask(_head())  # the framing held after all of them
        assert (status, headers["x-cache"], body) == (200, "HIT", b"0123456789")
    assert origin.hits["/r/1"] == 1
    conn.close()


async def test_gzip_is_served_only_to_who_accepts_it(make_proxy: MakeProxy, origin: Origin):
    text = b"compressible " * 200
    origin.reply("/r/1", Reply(body=text))
    proxy = await make_proxy("defaults: {ttl: 10s, compression: {algorithm: gzip}}\n")
    conn = await Conn.open(proxy)
    await conn.ask(_head())
    for _ in range(2):
        _, headers, body = await conn.ask(_head("/r/1", "Accept-Encoding: gzip"))
        assert (headers["x-cache"], headers["content-encoding"]) == ("HIT", "gzip")
        assert gzip.decompress(body) == text
        assert headers["vary"] == "Accept-Encoding"
        _, headers, body = await conn.ask(_head())
        assert (headers["x-cache"], body) == ("HIT", text)
        assert "content-encoding" not in headers
        _, headers, body = await conn.ask(
            _head("/r/1", "Accept-Encoding: gzip", "Cache-Control: no-transform")
        )
        assert (headers["x-cache"], body) == ("HIT", text)
    conn.close()


@pytest.mark.parametrize(
    ("fields", "version"), [(("Connection: close",), "1.1"), ((), "1.0")], ids=["close", "1.0"]
)
async def test_the_connection_closes_when_asked(
    make_proxy: MakeProxy, origin: Origin, fields: tuple[str, ...], version: str
):
    proxy = await make_proxy(POLICY)
    conn = await Conn.open(proxy)
    _, _, first = await conn.ask(_head())
    conn.close()
    conn = await Conn.open(proxy)
    status, headers, body = await conn.ask(_head("/r/1", *fields, version=version))
    assert (status, headers["x-cache"], headers["connection"], body) == (200, "HIT", "close", first)
    assert await conn.closed()
    conn.close()


async def test_a_draining_server_closes_after_a_hit(make_proxy: MakeProxy, origin: Origin):
    proxy = await make_proxy(POLICY)
    assert proxy.http is not None
    conn = await Conn.open(proxy)
    for label in ("MISS", "HIT"):
        _, headers, _ = await conn.ask(_head())
        assert (headers["x-cache"], "connection" in headers) == (label, False)
    stopping = asyncio.ensure_future(proxy.http.stop(5.0))
    await asyncio.sleep(0)  # the stop has begun: draining
    _, headers, _ = await conn.ask(_head())
    assert (headers["x-cache"], headers["connection"]) == ("HIT", "close")
    assert await conn.closed()
    conn.close()
    await stopping


async def test_hits_are_counted(make_proxy: MakeProxy, origin: Origin):
    proxy = await make_proxy(POLICY)
    conn = await Conn.open(proxy)
    for _ in range(4):
        await conn.ask(_head())
    conn.close()
    text = proxy.engine.meter.exposition().decode()
    hits = [line for line in text.splitlines() if line.startswith("sidecache_requests_total")]
    assert any('cache="HIT"' in line and line.endswith(" 3.0") for line in hits), hits


async def test_a_new_key_spec_applies_at_once(make_proxy: MakeProxy, origin: Origin):
    # the hit path keeps each target's key worked out: a reload must drop them
    proxy = await make_proxy(POLICY)
    conn = await Conn.open(proxy)
    for label in ("MISS", "HIT"):
        assert (await conn.ask(_head("/r/1?a=1&b=1")))[1]["x-cache"] == label
    only_a = "defaults: {ttl: 10s, key: {query: [a]}, compression: {algorithm: none}}"
    loaded = parse_policy(policy_text(origin.url, only_a), "p.yaml")
    proxy.engine.reconfigure(loaded, proxy.engine.stores)
    _, headers, body = await conn.ask(_head("/r/1?a=1&b=2"))
    assert (headers["x-cache"], b"b=2" in body) == ("MISS", True)
    # b is no longer in the key: b=1 is the entry b=2 filled, not the one stored before
    _, headers, body = await conn.ask(_head("/r/1?a=1&b=1"))
    assert (headers["x-cache"], b"b=2" in body) == ("HIT", True)
    assert origin.hits["/r/1"] == 2
    conn.close()


def test_the_hit_path_follows_its_router_and_stores():
    # what it keeps per route (store, reader) is dropped with either
    text = policy_text("http://127.0.0.1:9", "defaults: {ttl: 10s}")
    loaded = parse_policy(text, "p.yaml")
    engine = Engine(
        loaded, build_stores(loaded.policy.backends), OriginClient(loaded.policy.origin)
    )
    ex = Exchange.build("GET", "/r/1", "", (("Host", "a"),), host="a")
    first = engine.hits.ticket(ex)
    assert first is not None
    fresh = build_stores(loaded.policy.backends)
    engine.hits.stores = fresh
    again = engine.hits.ticket(ex)
    assert again is not None
    assert again.store is fresh[first.route.config.backend] is not first.store
    off = parse_policy(policy_text("http://127.0.0.1:9", "defaults: {cache: false}"), "p.yaml")
    engine.hits.router = Router(off.routes)
    assert engine.hits.ticket(ex) is None


async def test_new_stores_apply_at_once(make_proxy: MakeProxy, origin: Origin):
    # the hit path keeps each route's store and reader: new stores must replace them
    proxy = await make_proxy(POLICY)
    conn = await Conn.open(proxy)
    for label in ("MISS", "HIT"):
        assert (await conn.ask(_head()))[1]["x-cache"] == label
    loaded = proxy.engine.loaded
    fresh = build_stores(loaded.policy.backends)
    proxy.engine.reconfigure(loaded, fresh)
    for label in ("MISS", "HIT"):
        assert (await conn.ask(_head()))[1]["x-cache"] == label
    assert origin.hits["/r/1"] == 2
    conn.close()
    await close_stores(fresh)  # the fixture closes the ones it built
