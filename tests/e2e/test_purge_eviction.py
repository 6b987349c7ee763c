"""A purge that answered 200 holds on Redis whatever happens to its index data.

Two proxy processes share one real redis-server started with a small ``maxmemory`` and
each eviction policy, filled past capacity through the proxies. Then purges by tag,
prefix, route and URL answer 200, and every purged URL is read through both proxies:
none may be answered from cache with the body it had before (the origin numbers each
answer). The same after the generation keys are deleted by hand, and after a Redis
restart without persistence (while Redis is down, the purge answers 503).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from mirakuru import TCPExecutor
from redis import Redis

from tests.conftest import Origin, ProxyProcess, SpawnProxy, free_port, policy_text
from tests.e2e.purgecheck import (
    DOCS,
    HOST,
    PRODUCTS,
    get,
    purge,
    purge_until_done,
    served_purged,
)
from tests.stores.conftest import redis_executor

LISTS = [f"/lists/{i}?page=2" for i in range(6)]
ALL = PRODUCTS + DOCS + LISTS
# At 2 MB with compressible fill bodies (stored gzipped: almost nothing), what filled Redis
# was mostly its own baseline and its clients' buffers, which grow with the connections
# two proxies open on a busy machine; the 24 test entries then did not fit at once (3 of 5
# full-suite runs failed in warm()). 4 MB of room, filled with 1,000 incompressible 4 KiB
# bodies: past capacity by the data itself.
MAXMEMORY = "4mb"
FILL = [f"/fill/{i}" for i in range(1000)]
PURGE = {
    "tags": ["product:0", "product:1", "product:2"],
    "prefixes": ["/docs"],
    "routes": ["lists"],
    "urls": [f"http://{HOST}/api/products/5"],
}
PURGED = [*PRODUCTS[:3], PRODUCTS[5], *DOCS, *LISTS]
POLICIES = ["noeviction", "allkeys-lru", "volatile-lru", "allkeys-lfu", "volatile-ttl"]


class Server:
    """A redis-server of this test's own: small, without persistence, restartable."""

    def __init__(self, datadir: Path, policy: str) -> None:
        self.port = free_port()
        extra = (
            "--maxmemory",
            MAXMEMORY,
            "--maxmemory-policy",
            policy,
            "--maxmemory-samples",
            "10",
        )
        self.executor: TCPExecutor = redis_executor(self.port, datadir, *extra)

    def client(self) -> Redis:
        return Redis(port=self.port)

    def info(self, section: str) -> dict[str, Any]:
        with self.client() as client:
            return dict(client.info(section))


@pytest.fixture
def make_server(tmp_path: Path) -> Iterator[Callable[[str], Server]]:
    servers: list[Server] = []

    def make(policy: str) -> Server:
        server = Server(tmp_path / f"redis-{len(servers)}", policy)
        server.executor.start()
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.executor.stop()


def lose_generations(server: Server) -> None:
    """Delete only the index data: every generation key, by hand."""
    with server.client() as client:
        generations = list(client.scan_iter(match="*~g:*", count=1000))
        assert generations
        client.delete(*generations)


def restart(server: Server) -> None:
    server.executor.stop()
    server.executor.start()


async def fill(session: aiohttp.ClientSession, proxy: ProxyProcess) -> None:
    for start in range(0, len(FILL), 20):
        await asyncio.gather(*(get(session, proxy.url + p) for p in FILL[start : start + 20]))


async def warm(session: aiohttp.ClientSession, a: ProxyProcess, b: ProxyProcess) -> dict:
    """Every test URL stored by A and served by B from Redis: the bodies cached. Under
    memory pressure Redis may evict one again while others are written: asked again (up
    to 20 rounds: under allkeys-lfu a just-written entry is the likeliest to go, and 5
    rounds failed once in a full-suite run on a busy machine)."""
    bodies: dict[str, bytes] = {}
    for _ in range(20):
        for path in ALL:
            cache, body = await get(session, b.url + path)
            if cache != "HIT":
                _, bodies[path] = await get(session, a.url + path)
            else:
                # the body cached now: an entry evicted and stored again (by B's own miss in
                # the check below) holds a newer body than the first one seen
                bodies[path] = body
        served = [await get(session, b.url + path) for path in ALL]
        if all(answer == ("HIT", bodies[path]) for path, answer in zip(ALL, served, strict=True)):
            return bodies
    missing = [path for path, answer in zip(ALL, served, strict=True) if answer[0] != "HIT"]
    raise AssertionError(f"the test URLs never were all cached at once: {missing} were not")


def policy(origin: Origin, server: Server) -> str:
    return policy_text(
        origin.url,
        f"""
        backends:
          shared:
            type: redis
            url: redis://127.0.0.1:{server.port}/0
            timeout: 500ms
            breaker: {{failures: 1000, cooldown: 1s}}
        defaults: {{backend: shared, ttl: 1h}}
        routes:
          - name: products
            match: {{path: "/api/products/{{id}}"}}
            tags: ["product:{{id}}"]
          - name: docs
            match: {{prefix: "/docs"}}
          - name: lists
            match: {{prefix: "/lists"}}
          - name: fill
            match: {{prefix: "/fill"}}
            ttl: 10m
        """,
    )


async def filled_past_capacity(
    origin: Origin,
    spawn_proxy: SpawnProxy,
    session: aiohttp.ClientSession,
    server: Server,
    eviction: str,
) -> tuple[ProxyProcess, ProxyProcess, dict]:
    for path in FILL:
        origin.reply(path, body=os.urandom(4096))  # incompressible: really 4 KiB stored
    text = policy(origin, server)
    a, b = spawn_proxy(text), spawn_proxy(text)
    if eviction == "noeviction":  # once full nothing more is stored: the test URLs first
        before = await warm(session, a, b)
        await fill(session, a)
    else:
        await fill(session, a)
        before = await warm(session, a, b)
    stats = await asyncio.to_thread(server.info, "stats")
    if eviction == "noeviction":
        errors = await asyncio.to_thread(server.info, "errorstats")
        assert errors.get("errorstat_OOM", {}).get("count", 0) > 0  # writes were refused
    else:
        assert stats["evicted_keys"] > 0
    return a, b, before


@pytest.mark.parametrize("eviction", POLICIES)
async def test_purges_hold_under_each_eviction_policy(
    origin: Origin,
    spawn_proxy: SpawnProxy,
    make_server: Callable[[str], Server],
    session: aiohttp.ClientSession,
    eviction: str,
) -> None:
    server = make_server(eviction)
    a, b, before = await filled_past_capacity(origin, spawn_proxy, session, server, eviction)
    assert await purge(session, a, PURGE) == 200
    assert await served_purged(session, [b, a], PURGED, before) == []
    # what was not purged is still served from cache
    kept = [p for p in ALL if p not in PURGED]
    answers = [await get(session, b.url + path) for path in kept]
    assert [cache for cache, _ in answers].count("HIT") >= len(kept) // 2
    with server.client() as client:  # every key the proxy wrote expires
        assert [key for key in client.keys("*") if client.pttl(key) == -1] == []


@pytest.mark.parametrize("lose", [lose_generations, restart])
async def test_purges_hold_after_index_data_is_lost(
    origin: Origin,
    spawn_proxy: SpawnProxy,
    make_server: Callable[[str], Server],
    session: aiohttp.ClientSession,
    lose: Callable[[Server], None],
) -> None:
    server = make_server("volatile-lru")
    a, b, before = await filled_past_capacity(origin, spawn_proxy, session, server, "volatile-lru")
    if lose is restart:
        await asyncio.to_thread(server.executor.stop)
        assert await purge(session, a, PURGE) == 503  # cannot be guaranteed: retry
        await asyncio.to_thread(server.executor.start)
    else:
        await asyncio.to_thread(lose, server)
    await purge_until_done(session, a, PURGE)
    assert await served_purged(session, [b, a], PURGED, before) == []
    # the proxies cache again, and the next purge holds as well
    before = await warm(session, a, b)
    await purge_until_done(session, b, PURGE)
    assert await served_purged(session, [a, b], PURGED, before) == []
