"""A soft purge under eviction: what it leaves in Redis (new generations, links) may be
evicted or lost like any index data; an entry is then a miss, never served as fresh, and
a purge after a soft purge removes whatever happened to its links.

Two proxy processes share a small redis-server filled past capacity (the set-up of
``test_purge_eviction``). The origin numbers its answers, so the body a URL had before
the purge tells an entry kept from one fetched again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import aiohttp
import pytest

from tests.conftest import Origin, ProxyProcess, SpawnProxy
from tests.e2e.purgecheck import get, purge_until_done, served_purged
from tests.e2e.test_purge_eviction import (
    PURGE,
    PURGED,
    Server,
    filled_past_capacity,
    lose_generations,
    warm,
)

SOFT = {**PURGE, "soft": True}


def lose_links(server: Server) -> None:
    """Delete what a soft purge wrote that READ follows: every link, by hand."""
    with server.client() as client:
        links = list(client.scan_iter(match="*~s:*", count=1000))
        assert links
        client.delete(*links)


async def served_fresh(
    session: aiohttp.ClientSession, proxies: list[ProxyProcess], before: dict[str, bytes]
) -> list[str]:
    """Every purged URL answered as fresh (HIT) with the body it had before the purge."""
    wrong = []
    for proxy in proxies:
        for path in PURGED:
            cache, body = await get(session, proxy.url + path)
            if cache == "HIT" and body == before[path]:
                wrong.append(f"{proxy.port}{path}")
    return wrong


@pytest.mark.parametrize("eviction", ["allkeys-lru", "volatile-lru", "allkeys-lfu"])
async def test_soft_purges_hold_under_eviction(
    origin: Origin,
    spawn_proxy: SpawnProxy,
    make_server: Callable[[str], Server],
    session: aiohttp.ClientSession,
    eviction: str,
) -> None:
    server = make_server(eviction)
    a, b, before = await filled_past_capacity(origin, spawn_proxy, session, server, eviction)
    await purge_until_done(session, a, SOFT)
    assert await served_fresh(session, [b, a], before) == []
    # links lost: the marked entries are misses
    before = await warm(session, a, b)
    await purge_until_done(session, b, SOFT)
    await asyncio.to_thread(lose_links, server)
    assert await served_purged(session, [a, b], PURGED, before) == []
    # generations lost after a soft purge: the same
    before = await warm(session, a, b)
    await purge_until_done(session, a, SOFT)
    await asyncio.to_thread(lose_generations, server)
    assert await served_purged(session, [b, a], PURGED, before) == []
    # a purge after a soft purge removes, links or not
    before = await warm(session, a, b)
    await purge_until_done(session, a, SOFT)
    await purge_until_done(session, b, PURGE)
    assert await served_purged(session, [a, b], PURGED, before) == []


async def test_a_soft_purge_refused_by_a_full_redis_is_a_503_and_a_purge_still_removes(
    origin: Origin,
    spawn_proxy: SpawnProxy,
    make_server: Callable[[str], Server],
    session: aiohttp.ClientSession,
) -> None:
    """``noeviction``: a soft purge writes (links, generations) and Redis refuses writes
    once full: it answers 503 with the refusal in ``errors``; a purge (deletes) goes
    through."""
    server = make_server("noeviction")
    a, b, before = await filled_past_capacity(origin, spawn_proxy, session, server, "noeviction")
    async with session.post(a.admin_url + "/purge", json=SOFT) as response:
        answer = await response.json()
    assert response.status == 503, answer  # refused, and said so: retry, or purge
    assert "OOM" in str(answer["errors"]), answer
    await purge_until_done(session, b, PURGE)
    assert await served_purged(session, [a, b], PURGED, before) == []
