"""The wire memo on shared stores (real Redis and Memcached): a repeated request head is
answered from the bytes of its last answer while the store still holds the same entry;
what another replica stores, a deletion, the end of freshness and a store that fails
all show through exactly as without the memo."""

from __future__ import annotations

import asyncio
import time

import pytest
from mirakuru import TCPExecutor

from proxy.clock import FakeClock
from tests.conftest import MakeProxy, Origin
from tests.server.test_replay import Conn

GET = b"GET /s/1 HTTP/1.1\r\nHost: a\r\nAccept: */*\r\n\r\n"


def _policy(kind: str, address: str) -> str:
    target = f"url: redis://{address}/0" if kind == "redis" else f"servers: [{address}]"
    return f"""
backends:
  shared:
    type: {kind}
    {target}
    timeout: 200ms
    breaker: {{failures: 3, cooldown: 1s}}
defaults: {{backend: shared, ttl: 10s}}
"""


@pytest.fixture(params=["redis", "memcached"])
def shared(request: pytest.FixtureRequest) -> tuple[str, str]:
    if request.param == "redis":
        url: str = request.getfixturevalue("redis_url")
        return "redis", url.removeprefix("redis://").removesuffix("/0")
    return "memcached", request.getfixturevalue("memcached_addr")


async def test_replays_follow_the_shared_entry(
    make_proxy: MakeProxy, origin: Origin, shared: tuple[str, str]
):
    clock = FakeClock(start=float(int(time.time())))
    origin.clock = clock
    proxy = await make_proxy(_policy(*shared), clock=clock)
    other = await make_proxy(_policy(*shared), clock=clock)  # a second replica
    conn = await Conn.open(proxy)
    _, headers, first = await conn.ask(GET)
    assert headers["x-cache"] == "MISS"
    ages = []
    for step in (0.0, 0.0, 0.6, 0.6, 3.0):
        clock.advance(step)
        status, headers, body = await conn.ask(GET)
        assert (status, headers["x-cache"], body) == (200, "HIT", first)
        ages.append(headers["age"])
    assert ages == ["0", "0", "0", "1", "4"]
    assert proxy.http is not None
    assert len(proxy.http.memo) == 1
    # the other replica stores a new entry (its refresh, after expiry): replays follow it
    clock.advance(6.0)
    other_conn = await Conn.open(other)
    _, headers, second = await other_conn.ask(GET)
    assert headers["x-cache"] == "MISS"
    assert second != first
    _, headers, body = await conn.ask(GET)
    assert (headers["x-cache"], headers["age"], body) == ("HIT", "0", second)
    assert origin.hits["/s/1"] == 2
    # a deleted entry is a miss, answered the usual way
    ticket = proxy.http.memo.entries[GET].ticket
    await ticket.store.delete([ticket.key])
    _, headers, third = await conn.ask(GET)
    assert headers["x-cache"] == "MISS"
    assert b'"hit": 3' in third
    conn.close()
    other_conn.close()


async def test_requests_sent_during_a_replay_wait_their_turn(
    make_proxy: MakeProxy, origin: Origin, shared: tuple[str, str]
):
    proxy = await make_proxy(_policy(*shared))
    conn = await Conn.open(proxy)
    for _ in range(2):
        await conn.ask(GET)
    others = [f"GET /s/{i} HTTP/1.1\r\nHost: a\r\n\r\n".encode() for i in range(2, 5)]
    for _ in range(3):
        conn.writer.write(GET)
        for raw in others:
            conn.writer.write(raw)
        for path in ["/s/1", "/s/2", "/s/3", "/s/4"]:
            block = await asyncio.wait_for(conn.reader.readuntil(b"\r\n\r\n"), 5)
            length = int(block.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            body = await conn.reader.readexactly(length)
            assert f'"path": "{path}"'.encode() in body
    assert origin.hits["/s/1"] == 1
    conn.close()


async def test_a_store_that_goes_away_fails_open(
    make_proxy: MakeProxy, origin: Origin, own_redis: TCPExecutor
):
    proxy = await make_proxy(_policy("redis", f"127.0.0.1:{own_redis.port}"))
    conn = await Conn.open(proxy)
    for _ in range(3):
        await conn.ask(GET)
    assert origin.hits["/s/1"] == 1
    await asyncio.to_thread(own_redis.stop)
    for _ in range(5):
        status, headers, _ = await conn.ask(GET)
        assert status == 200
        assert headers["x-cache"] != "HIT"
    assert origin.hits["/s/1"] == 6
    conn.close()
