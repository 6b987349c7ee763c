"""Soft purges by ``PURGE`` on the proxy port, across the workers of one replica and
across replicas sharing Redis: every copy is revalidated, none is served as fresh, and a
shared entry is refreshed once whichever replica is asked."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest
from redis.asyncio import Redis

from proxy.core.keys import route_tag
from proxy.policy.load import parse_policy
from tests.conftest import MakeProxy, Origin, ProxyProcess, SpawnProxy
from tests.e2e.softcheck import (
    SWR,
    URLS,
    Versioned,
    backends,
    fetch,
    get_all,
    items_policy,
    purge,
    settle,
    until,
    warm,
)
from tests.ops.conftest import eventually, scrape

STORES = ["memory", "redis", "memcached", "tiered"]


async def purge_url(
    session: aiohttp.ClientSession, proxy: ProxyProcess, path: str, **headers: str
) -> tuple[int, dict[str, Any]]:
    async with session.request("PURGE", proxy.url + path, headers=headers) as response:
        return response.status, await response.json()


@pytest.mark.parametrize("store_policy", STORES, indirect=True)
async def test_purge_with_sidecache_soft_marks_the_url_and_its_variants(
    origin: Origin,
    spawn_proxy: SpawnProxy,
    store_policy: Callable[..., str],
    client: aiohttp.ClientSession,
) -> None:
    items = Versioned(origin, "max-age=3600", URLS[:2])
    langs = Versioned(origin, "max-age=3600", ["/vary/1"], vary="Accept-Language")
    proxy = spawn_proxy(store_policy())
    en, de = {"Accept-Language": "en"}, {"Accept-Language": "de"}
    for _ in range(2):  # fetched, then answered from cache
        await get_all(client, proxy.url, URLS[:2])
        await fetch(client, proxy.url + "/vary/1", headers=en)
        await fetch(client, proxy.url + "/vary/1", headers=de)
    assert items.full == Counter(URLS[:2])
    assert langs.full == Counter({"/vary/1": 2})  # two variants stored

    status, answer = await purge_url(client, proxy, URLS[0], **{"Sidecache-Soft": "1"})
    assert status == 200, answer
    assert (answer["removed"], answer["softened"]) == (0, 1)
    status, _ = await purge_url(client, proxy, "/vary/1", **{"Sidecache-Soft": "1"})
    assert status == 200
    assert (await fetch(client, proxy.url + URLS[0]))[2]["version"] == 1
    assert (await fetch(client, proxy.url + URLS[1]))[1] == "HIT"  # not named: untouched
    for headers in (en, de, en, de):
        assert (await fetch(client, proxy.url + "/vary/1", headers=headers))[0] == 200
    assert items.conditional == Counter(URLS[:1])  # revalidated, not fetched again
    assert langs.conditional == Counter({"/vary/1": 2})  # each variant, once
    assert items.full == Counter(URLS[:2])
    assert langs.full == Counter({"/vary/1": 2})

    status, answer = await purge_url(client, proxy, URLS[1])  # no Sidecache-Soft: removes
    assert (status, answer["removed"], answer["softened"]) == (200, 1, 0)
    assert (await fetch(client, proxy.url + URLS[1]))[1] == "MISS"
    assert items.full[URLS[1]] == 2
    status, answer = await purge_url(client, proxy, URLS[1], **{"Sidecache-Soft": "yes"})
    assert status == 400
    assert "Sidecache-Soft" in answer["error"]


async def spread(proxy: ProxyProcess, paths: list[str]) -> list[Any]:
    """``paths`` asked on fresh connections: spread over the workers of ``proxy``."""
    connector = aiohttp.TCPConnector(force_close=True, limit=64)
    async with aiohttp.ClientSession(connector=connector) as session:
        return await get_all(session, proxy.url, paths)


async def test_a_soft_purge_marks_every_workers_copy(
    origin: Origin, spawn_proxy: SpawnProxy, client: aiohttp.ClientSession
) -> None:
    paths = URLS[:20]
    versioned = Versioned(origin, "max-age=3600", paths)
    policy = items_policy(origin, backends("memory", None, None))
    proxy = spawn_proxy(policy, "--workers", "2")
    await spread(proxy, paths * 16)
    copies = Counter(versioned.full)  # each worker holds its own copy: one or two each
    assert set(copies) == set(paths)
    assert set(copies.values()) <= {1, 2}
    answer = await purge(client, proxy, {"tags": ["items"], "soft": True})
    assert answer["workers"] == 1

    async def told() -> bool:
        return await scrape(proxy.admin_url, "sidecache_purges_total", source="workers") >= 1

    await eventually(told, 10, "the other worker's purge")
    versioned.version = 2  # an answer of version 1 now would be a copy served as fresh
    answers = await spread(proxy, paths * 16)
    assert {body["version"] for _, _, body in answers} == {2}
    assert versioned.full == copies  # nothing fetched in full again: every copy revalidated
    assert versioned.conditional == copies
    assert proxy.stop() == 0


@pytest.mark.parametrize("kind", ["redis", "tiered"])
async def test_a_soft_purge_holds_across_replicas_with_one_refresh_per_url(
    origin: Origin,
    spawn_proxy: SpawnProxy,
    redis_url: str,
    session: aiohttp.ClientSession,
    kind: str,
) -> None:
    """``session`` names one Host for both replicas, as behind one Service."""
    channel = "sidecache:soft"
    bus = "shared" if kind == "tiered" else "local"
    extra = f"invalidation: {{channel: '{channel}', redis: {bus}}}"
    text = items_policy(origin, backends(kind, redis_url, None), extra=extra)
    versioned = Versioned(origin, SWR)
    a, b = spawn_proxy(text), spawn_proxy(text)
    for proxy in (a, b):

        async def subscribed(proxy: ProxyProcess = proxy) -> bool:
            return await scrape(proxy.admin_url, "sidecache_invalidation_subscribers") == 1

        await eventually(subscribed, 15, "the subscription")
    await warm(session, a, versioned)  # stored by A
    assert {cache for _, cache, _ in await get_all(session, b.url, URLS)} == {"HIT"}  # and B
    answer = await purge(session, a, {"tags": ["items"], "soft": True})
    assert answer["replicas"] == 2

    async def received() -> bool:
        return await scrape(b.admin_url, "sidecache_purges_total", source="redis") >= 1

    await eventually(received, 10, "the purge message")
    versioned.gate = asyncio.Event()  # refreshes wait while both replicas are asked
    answers = await asyncio.gather(get_all(session, a.url, URLS), get_all(session, b.url, URLS))
    assert {cache for replica in answers for _, cache, _ in replica} == {"STALE"}
    versioned.gate.set()
    await until(lambda: len(versioned.conditional) == len(URLS), "the refreshes")
    await settle(lambda: versioned.conditional.total())
    assert versioned.conditional == Counter(URLS)  # one refresh per URL for both replicas
    assert versioned.full.total() == 0
    for proxy in (a, b):
        # the origin counts a refresh before the proxy has stored its answer: on a busy
        # machine the last writes land after the count settles (meanwhile STALE; the
        # holder of the key's lease is still at work, so nobody else refreshes it)

        async def all_hit(proxy: ProxyProcess = proxy) -> bool:
            return {cache for _, cache, _ in await get_all(session, proxy.url, URLS)} == {"HIT"}

        await eventually(all_hit, 30, f"every URL a HIT on {proxy.url}")
    assert versioned.conditional == Counter(URLS)  # and those STALE answers refreshed nothing


async def test_a_refresh_that_gets_the_lease_after_another_replicas_refresh_fetches_nothing(
    origin: Origin, make_proxy: MakeProxy, redis_url: str
) -> None:
    """Replica B reads the marked entry and starts its refresh; replica A refreshes and
    stores first; B then takes the lease A released: it finds A's entry, newer and fresh,
    and asks the origin nothing."""
    versioned = Versioned(origin, SWR, URLS[:1])
    host = {"Host": "api.internal"}  # one name for both replicas: one key
    text = items_policy(origin, backends("redis", redis_url, None))
    loaded = parse_policy(text, "soft.yaml")
    a, b = await make_proxy(loaded=loaded), await make_proxy(loaded=loaded)
    assert (await a.get(URLS[0], headers=host)).headers["X-Cache"] == "MISS"
    await a.stores["local"].soften_tags([route_tag("items")])
    store = b.stores["local"]
    lock, may_lock = store.lock, asyncio.Event()

    async def late_lock(key: str, ttl: float) -> str | None:
        await may_lock.wait()
        return await lock(key, ttl)

    store.lock = late_lock  # type: ignore[method-assign]
    assert (await b.get(URLS[0], headers=host)).headers["X-Cache"] == "STALE"  # B's refresh waits
    assert (await a.get(URLS[0], headers=host)).headers["X-Cache"] == "STALE"  # A's refresh runs
    await until(lambda: versioned.conditional.total() == 1, "A's refresh")

    async def refreshed() -> bool:
        return (await a.get(URLS[0], headers=host)).headers["X-Cache"] == "HIT"

    await eventually(refreshed, 10, "A's refreshed entry")
    may_lock.set()
    await settle(lambda: versioned.conditional.total())
    assert versioned.conditional == Counter(URLS[:1])  # B fetched nothing
    assert (await b.get(URLS[0], headers=host)).headers["X-Cache"] == "HIT"


async def test_a_soft_purge_published_by_another_service_reaches_every_replica(
    origin: Origin, spawn_proxy: SpawnProxy, redis_url: str, session: aiohttp.ClientSession
) -> None:
    """A message without ``source`` (not from a sidecache) is applied by every replica
    to every store, softly when it says ``"soft": true``."""
    channel = "sidecache:soft"
    stores = f"local: {{type: memory}}, bus: {{type: redis, url: '{redis_url}'}}"
    text = items_policy(origin, stores, extra=f"invalidation: {{channel: '{channel}', redis: bus}}")
    versioned = Versioned(origin, "max-age=3600", URLS[:10])
    replicas = [spawn_proxy(text), spawn_proxy(text)]
    for proxy in replicas:
        await warm_some(session, proxy, URLS[:10])

        async def subscribed(proxy: ProxyProcess = proxy) -> bool:
            return await scrape(proxy.admin_url, "sidecache_invalidation_subscribers") == 1

        await eventually(subscribed, 15, "the subscription")
    client = Redis.from_url(redis_url)
    try:
        assert await client.publish(channel, b'{"tags": ["items"], "soft": true}') == 2
    finally:
        await client.aclose()
    for proxy in replicas:

        async def received(proxy: ProxyProcess = proxy) -> bool:
            return await scrape(proxy.admin_url, "sidecache_purges_total", source="redis") >= 1

        await eventually(received, 10, "the message")
    versioned.version = 2
    for proxy in replicas:
        answers = await get_all(session, proxy.url, URLS[:10])
        assert {body["version"] for _, _, body in answers} == {2}
    assert versioned.conditional == Counter({path: 2 for path in URLS[:10]})  # both copies
    assert versioned.full == Counter({path: 2 for path in URLS[:10]})  # the first fills only


async def warm_some(session: aiohttp.ClientSession, proxy: ProxyProcess, paths: list[str]) -> None:
    await get_all(session, proxy.url, paths)
    assert {cache for _, cache, _ in await get_all(session, proxy.url, paths)} == {"HIT"}
