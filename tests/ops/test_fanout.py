"""Purges reach every replica and every worker: two real proxy processes on one real
Redis channel (also across a Redis restart), and one proxy with ``--workers 2``."""

from __future__ import annotations

import asyncio

from tests.conftest import Origin, ProxyProcess, SpawnProxy, policy_text
from tests.ops.conftest import RedisServer, eventually, fetch, scrape

CHANNEL = "sc-test-invalidate"


def replica_policy(origin: Origin, redis: RedisServer) -> str:
    return policy_text(
        origin.url,
        f"""
        backends:
          local: {{type: memory}}
          bus: {{type: redis, url: "{redis.url}"}}
        defaults: {{backend: local, ttl: 60s}}
        invalidation: {{channel: {CHANNEL}, redis: bus}}
        routes:
          - name: items
            match: {{prefix: /items}}
        """,
    )


async def cache_of(proxy: ProxyProcess, path: str) -> str:
    return (await fetch("GET", proxy.url + path)).cache


async def two_warm_replicas(
    origin: Origin, redis: RedisServer, spawn_proxy: SpawnProxy, *paths: str
) -> tuple[ProxyProcess, ProxyProcess]:
    text = replica_policy(origin, redis)
    a, b = spawn_proxy(text), spawn_proxy(text)
    await subscribed(redis, 2)
    for proxy in (a, b):
        for path in paths:
            await cache_of(proxy, path)
            assert await cache_of(proxy, path) == "HIT"
    return a, b


async def subscribed(redis: RedisServer, count: int) -> None:
    async def check() -> bool:
        return await asyncio.to_thread(redis.subscribers, CHANNEL) == count

    await eventually(check, 15, f"{count} subscribers on {CHANNEL}")


async def purges_received(proxy: ProxyProcess, count: int) -> None:
    async def check() -> bool:
        return await scrape(proxy.admin_url, "sidecache_purges_total", source="redis") >= count

    await eventually(check, 10, "the purge message")


async def test_purge_on_one_replica_empties_the_others_memory(
    origin: Origin, redis_server: RedisServer, spawn_proxy: SpawnProxy
):
    a, b = await two_warm_replicas(origin, redis_server, spawn_proxy, "/items/1", "/items/2")
    answer = await fetch("POST", a.admin_url + "/purge", json={"urls": ["/items/1"]})
    assert answer.status == 200, answer.body
    assert answer.json()["removed"] == 1  # A's own memory store
    assert answer.json()["replicas"] == 2  # both subscribers got the message
    await purges_received(b, 1)
    assert await cache_of(b, "/items/1") == "MISS"
    assert await cache_of(a, "/items/1") == "MISS"
    assert await cache_of(b, "/items/2") == "HIT"
    # A ignores its own message: its purge counted once, from the admin API
    assert await scrape(a.admin_url, "sidecache_purges_total", source="admin") == 1
    assert await scrape(a.admin_url, "sidecache_purges_total", source="redis") == 0


async def test_any_service_may_publish_a_purge(
    origin: Origin, redis_server: RedisServer, spawn_proxy: SpawnProxy
):
    origin.reply("/items/tagged", headers={"Surrogate-Key": "sale"})
    a, b = await two_warm_replicas(origin, redis_server, spawn_proxy, "/items/tagged", "/items/x")
    receivers = await asyncio.to_thread(redis_server.publish, CHANNEL, '{"tags": ["sale"]}')
    assert receivers == 2
    for proxy in (a, b):
        await purges_received(proxy, 1)
        assert await cache_of(proxy, "/items/tagged") == "MISS"
        assert await cache_of(proxy, "/items/x") == "HIT"


async def test_the_subscription_survives_a_redis_restart(
    origin: Origin, redis_server: RedisServer, spawn_proxy: SpawnProxy
):
    a, b = await two_warm_replicas(origin, redis_server, spawn_proxy, "/items/1")
    await asyncio.to_thread(redis_server.executor.stop)
    await asyncio.sleep(0.5)  # both subscribers notice and start retrying
    await asyncio.to_thread(redis_server.executor.start)  # same port
    await subscribed(redis_server, 2)
    answer = await fetch("POST", a.admin_url + "/purge", json={"prefixes": ["/items"]})
    assert answer.status == 200, answer.body
    assert answer.json()["replicas"] == 2
    await purges_received(b, 1)
    assert await cache_of(b, "/items/1") == "MISS"
    assert await scrape(b.admin_url, "sidecache_invalidation_subscribers") == 1


async def test_a_purge_reaches_every_worker_of_a_replica(origin: Origin, spawn_proxy: SpawnProxy):
    proxy = spawn_proxy(policy_text(origin.url, "defaults: {ttl: 60s}\n"), "--workers", "2")
    # fresh connections spread over both workers: each fills its own memory store once
    for _ in range(30):
        assert (await fetch("GET", proxy.url + "/page")).status == 200
    assert origin.hits["/page"] == 2
    answer = await fetch("POST", proxy.admin_url + "/purge", json={"urls": ["/page"]})
    assert answer.status == 200, answer.body
    assert answer.json()["workers"] == 1  # the other worker was told over the bus
    for _ in range(30):
        assert (await fetch("GET", proxy.url + "/page")).status == 200
    assert origin.hits["/page"] == 4  # both workers fetched again, once each
    assert proxy.stop() == 0


async def test_a_purge_empties_the_other_replicas_tiered_l1(
    origin: Origin, redis_server: RedisServer, spawn_proxy: SpawnProxy
):
    origin.reply("/items/tagged", headers={"Surrogate-Key": "sale"})
    text = policy_text(
        origin.url,
        f"""
        backends:
          l1: {{type: memory}}
          l2: {{type: redis, url: "{redis_server.url}", timeout: 500ms}}
          hot: {{type: tiered, l1: l1, l2: l2, l1_ttl: 60s}}
        defaults: {{backend: hot, ttl: 60s}}
        invalidation: {{channel: {CHANNEL}, redis: l2}}
        """,
    )
    a, b = spawn_proxy(text), spawn_proxy(text)
    await subscribed(redis_server, 2)

    async def get(proxy: ProxyProcess) -> str:  # one Host for both, as behind a Service
        answer = await fetch("GET", proxy.url + "/items/tagged", headers={"Host": "shop"})
        return answer.cache

    assert await get(a) == "MISS"  # stored in A's L1 and in L2
    assert await get(b) == "HIT"  # from L2, and now in B's L1 too
    assert origin.hits["/items/tagged"] == 1
    answer = await fetch("POST", a.admin_url + "/purge", json={"tags": ["sale"]})
    assert answer.status == 200, answer.body
    assert answer.json()["stores"]["l2"] == -1  # Redis invalidates by generation: no count
    await purges_received(b, 1)
    assert await get(b) == "MISS"  # B's L1 copy is gone too
    assert origin.hits["/items/tagged"] == 2
    assert await scrape(a.admin_url, "sidecache_store_operations_total", backend="l2") > 0
