"""Interim (1xx) answers of the origin are relayed to the client before the final answer
(issue 16 item 3, RFC 9110 §15.2), never stored. Raw sockets on both sides: an origin
on asyncio streams sends the 103's bytes, a client reads the bytes the proxy wrote."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple

from proxy.core.entry import CachedResponse, decode
from proxy.policy.load import parse_policy
from tests.conftest import MakeProxy, RunningProxy, policy_text
from tests.raworigin import RawOrigin, Start, answer, raw_origins  # noqa: F401  (fixture)
from tests.security.wire import exchange, get, parse

EARLY = b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload; as=style\r\n\r\n"
WAIT: float = 10.0  # bound on every wait of these tests; none is a timing assert
POLICY = """
defaults: {ttl: 60s}
routes:
  - name: pass
    match: {prefix: /pass}
    cache: false
  - name: swr
    match: {prefix: /swr}
    ttl: 1s
    stale_while_revalidate: 30s
"""

Script = Callable[[asyncio.StreamWriter], Awaitable[None]]


class Held(NamedTuple):
    origin: RawOrigin
    proxy: RunningProxy
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    release: asyncio.Event


async def scripted(raw: Start, scripts: dict[bytes, Script]) -> RawOrigin:
    """An origin answering each request on a connection with its path's script."""

    async def handler(
        origin: RawOrigin, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        while True:
            head = await origin.read_request(reader)
            await scripts[head.split(b" ", 2)[1]](writer)
            await writer.drain()

    return await raw(handler)


def hints_then(body: bytes, release: asyncio.Event | None = None) -> Script:
    """Send the 103 at once; the final answer once ``release`` is set (if given)."""

    async def script(writer: asyncio.StreamWriter) -> None:
        writer.write(EARLY)
        await writer.drain()
        if release is not None:
            await asyncio.wait_for(release.wait(), WAIT)
        writer.write(answer(body, b"Cache-Control: max-age=60"))

    return script


async def start(make_proxy: MakeProxy, origin: RawOrigin, **kwargs: Any) -> RunningProxy:
    loaded = parse_policy(policy_text(origin.url, POLICY), "interim.yaml")
    return await make_proxy(loaded=loaded, **kwargs)


async def connect(proxy: RunningProxy) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, port = proxy.url.removeprefix("http://").split(":")
    return await asyncio.open_connection(host, int(port))


async def read_answer(reader: asyncio.StreamReader) -> bytes:
    """One answer (head and Content-Length body), or one interim head."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WAIT)
    if head.startswith(b"HTTP/1.1 1"):
        return head
    length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
    return head + await asyncio.wait_for(reader.readexactly(length), WAIT)


async def until(condition: Callable[[], bool]) -> None:
    for _ in range(int(WAIT / 0.01)):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached")


def stored(proxy: RunningProxy) -> list[CachedResponse]:
    store: Any = proxy.stores["local"]
    entries = [decode(raw) for raw in map(store.get_now, store.keys()) if raw]
    return [e for e in entries if isinstance(e, CachedResponse)]


async def held(make_proxy: MakeProxy, raw: Start, path: str, body: bytes) -> Held:
    """A client that asked for ``path`` and read its 103 while the origin still holds
    the final answer back (until ``release`` is set)."""
    release = asyncio.Event()
    origin = await scripted(raw, {path.encode(): hints_then(body, release)})
    proxy = await start(make_proxy, origin)
    reader, writer = await connect(proxy)
    writer.write(get(path))
    assert await read_answer(reader) == EARLY
    return Held(origin, proxy, reader, writer, release)


async def test_103_goes_out_before_the_answer_and_is_never_stored(make_proxy, raw):
    origin, proxy, reader, writer, release = await held(make_proxy, raw, "/a", b"hello")
    release.set()
    (miss,) = parse(await read_answer(reader))
    assert (miss.status, miss.body, miss.header("X-Cache")) == (200, b"hello", "MISS")
    assert miss.header("Link") is None
    writer.write(get("/a"))
    hit_bytes = await read_answer(reader)
    writer.close()
    (hit,) = parse(hit_bytes)
    assert (hit.status, hit.body, hit.header("X-Cache")) == (200, b"hello", "HIT")
    assert b"103" not in hit_bytes
    assert b"style.css" not in hit_bytes
    (entry,) = stored(proxy)
    assert entry.status == 200
    assert all(name.lower() != "link" for name, _ in entry.headers)
    assert len(origin.requests) == 1


async def test_no_interim_answer_to_an_http10_client(make_proxy, raw):
    origin = await scripted(raw, {b"/old": hints_then(b"for 1.0")})
    proxy = await start(make_proxy, origin)
    data, _ = await exchange(proxy.url, b"GET /old HTTP/1.0\r\n\r\n")
    assert [a.status for a in parse(data)] == [200]
    assert b"103" not in data.split(b"\r\n", 1)[1]
    assert data.endswith(b"for 1.0")


async def test_pass_through_relays_every_interim_answer(make_proxy, raw):
    origin = await scripted(raw, {b"/pass/x": hints_then(b"passed")})
    proxy = await start(make_proxy, origin)
    data, _ = await exchange(proxy.url, get("/pass/x") * 2, expect=4)
    answers = parse(data)
    assert [a.status for a in answers] == [103, 200, 103, 200]
    assert answers[0].header("Link") == "</style.css>; rel=preload; as=style"
    assert [a.header("X-Cache") for a in answers[1::2]] == ["BYPASS", "BYPASS"]
    assert len(origin.requests) == 2


async def test_coalesced_followers_get_the_final_answer_only(make_proxy, raw):
    origin, proxy, leader, leader_out, release = await held(make_proxy, raw, "/hot", b"shared")
    follower, follower_out = await connect(proxy)
    follower_out.write(get("/hot"))
    await until(lambda: proxy.engine.coalescer.collapsed == 1)
    release.set()
    (first,) = parse(await read_answer(leader))
    follower_bytes = await read_answer(follower)
    leader_out.close()
    follower_out.close()
    (second,) = parse(follower_bytes)
    assert (first.status, first.body, first.header("X-Cache")) == (200, b"shared", "MISS")
    assert (second.status, second.body, second.header("X-Cache")) == (200, b"shared", "HIT")
    assert "collapsed" in (second.header("Cache-Status") or "")
    assert len(origin.requests) == 1


async def test_a_background_refresh_sends_no_interim_answer(make_proxy, raw, fake_clock):
    """A refresh runs after its request was answered (STALE): its 103 must not land in
    the answer to the next request on that connection."""
    slow_arrived = asyncio.Event()
    fills = 0

    async def swr(writer: asyncio.StreamWriter) -> None:
        nonlocal fills
        fills += 1
        if fills == 2:  # the background refresh: once the next request is in flight
            await asyncio.wait_for(slow_arrived.wait(), WAIT)
            writer.write(EARLY)
        writer.write(answer(b"swr %d" % fills, b"Cache-Control: max-age=1"))

    async def slow(writer: asyncio.StreamWriter) -> None:
        slow_arrived.set()
        await until(lambda: not proxy.engine.refresher.background)  # the refresh has ended
        writer.write(answer(b"slow", b"Cache-Control: no-store"))

    origin = await scripted(raw, {b"/swr/a": swr, b"/swr/slow": slow})
    proxy = await start(make_proxy, origin, clock=fake_clock)
    reader, writer = await connect(proxy)
    writer.write(get("/swr/a"))
    data = await read_answer(reader)
    fake_clock.advance(5)
    writer.write(get("/swr/a"))
    data += await read_answer(reader)
    writer.write(get("/swr/slow"))
    data += await read_answer(reader)
    writer.close()
    answers = parse(data)
    assert [a.status for a in answers] == [200, 200, 200]
    assert [a.header("X-Cache") for a in answers] == ["MISS", "STALE", "MISS"]
    assert answers[2].body == b"slow"
    assert fills == 2


async def test_100_continue_reaches_a_waiting_upload(make_proxy, raw):
    """A client that sends ``Expect: 100-continue`` holds its body back until the 100:
    the origin's 100 reaches it through the proxy, then the body goes up."""

    async def handler(
        origin: RawOrigin, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        origin.requests.append(head)
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        body = await reader.readexactly(5)
        writer.write(answer(b"got " + body, status=b"201 Created"))
        await reader.read()

    origin = await raw(handler)
    proxy = await start(make_proxy, origin)
    reader, writer = await connect(proxy)
    writer.write(
        b"PUT /pass/up HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n"
    )
    assert await read_answer(reader) == b"HTTP/1.1 100 Continue\r\n\r\n"
    writer.write(b"hello")
    (created,) = parse(await read_answer(reader))
    writer.close()
    assert (created.status, created.body) == (201, b"got hello")
    assert b"expect: 100-continue" in origin.requests[0].lower()
