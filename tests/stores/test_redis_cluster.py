"""RedisStore against a real 3-node Redis Cluster: entries, tags and leases across slots."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.crc import key_slot

from proxy.stores.redis import RedisStore
from proxy.stores.redis_layout import bucket_of, describe, tag_digest

ROUTES = [f"route{i}" for i in range(12)]


@pytest.fixture
async def store(cluster_nodes: list[str]) -> AsyncIterator[RedisStore]:
    store = RedisStore("rc", nodes=cluster_nodes, key_prefix="p:")
    yield store
    await store.aclose()


@pytest.fixture
async def raw(cluster_nodes: list[str]) -> AsyncIterator[RedisCluster]:
    host, port = cluster_nodes[0].split(":")
    client = RedisCluster(startup_nodes=[ClusterNode(host, int(port))])
    yield client
    await client.aclose()


async def masters(nodes: list[str]) -> dict[str, int]:
    """Each master's "host:port" and how many keys it holds."""
    sizes: dict[str, int] = {}
    for node in nodes:
        host, port = node.split(":")
        client = Redis(host=host, port=int(port))
        try:
            if (await client.info("replication"))["role"] == "master":
                sizes[node] = await client.dbsize()
        finally:
            await client.aclose()
    return sizes


async def test_one_routes_entries_spread_evenly_over_the_three_masters(
    store: RedisStore, cluster_nodes: list[str]
) -> None:
    keys = [f"sc:products:{i:032x}" for i in range(3000)]
    for chunk in range(0, 3000, 100):
        await asyncio.gather(*(store.set(key, b"v", 60) for key in keys[chunk : chunk + 100]))
    sizes = await masters(cluster_nodes)
    assert len(sizes) == 3
    assert sum(sizes.values()) == 3000
    assert all(800 <= size <= 1200 for size in sizes.values()), sizes  # within 20% of even
    assert await store.get_many(keys[:500]) == [b"v"] * 500


async def test_entries_across_slots(store: RedisStore) -> None:
    keys = [f"sc:{{{route}}}:{i:032x}" for i, route in enumerate(ROUTES)]
    assert await store.get_many(keys) == [None] * len(keys)
    for i, key in enumerate(keys):
        await store.set(key, f"body{i}".encode() + bytes(range(256)), 30)
    values = await store.get_many([*keys, "sc:{nowhere}:0"])
    assert values == [f"body{i}".encode() + bytes(range(256)) for i in range(12)] + [None]
    assert await store.get(keys[3]) == b"body3" + bytes(range(256))
    assert await store.delete([*keys[:6], "sc:{nowhere}:0"]) == 6
    assert await store.get_many(keys[:7]) == [None] * 6 + [b"body6" + bytes(range(256))]


async def test_concurrent_reads_across_slots_each_get_their_answer(store: RedisStore) -> None:
    keys = [f"sc:{{{route}}}:{i}" for i, route in enumerate(ROUTES)]
    for i, key in enumerate(keys):
        await store.set(key, f"body{i}".encode(), 30)
    wanted = [*keys, "sc:{nowhere}:0", keys[5], "plain key"]
    values = await asyncio.gather(*(store.get(key) for key in wanted))
    assert values == [f"body{i}".encode() for i in range(12)] + [None, b"body5", None]


async def test_entry_its_generations_and_lease_share_its_bucket_slot(
    store: RedisStore, raw: RedisCluster
) -> None:
    await store.set("sc:products:1", b"v", 30, tags=["catalog", "item:1"])
    await store.lock("sc:products:1", 5)
    bucket = bucket_of("sc:products:1")
    slot = key_slot(f"p:{bucket}sc:products:1".encode())
    for stored in (
        f"p:{bucket}sc:products:1",
        f"p:{bucket}~g:{tag_digest('catalog')}",
        f"p:{bucket}~g:{tag_digest('item:1')}",
        f"p:{bucket}~l:sc:products:1",
    ):
        assert key_slot(stored.encode()) == slot
        assert await raw.exists(stored) == 1
        assert await raw.pttl(stored) > 0
    assert describe(f"p:{bucket}sc:products:1", "p:") == ("entry", "products")
    assert describe(f"p:{bucket}~l:sc:products:1", "p:") == ("lease", "products")


async def test_tags_purge_entries_on_every_node(store: RedisStore) -> None:
    keys = [f"sc:r{i % 12}:{i}" for i in range(120)]
    for i, key in enumerate(keys):
        tags = ["r:all", f"p:/items/{i}"] + (["catalog"] if i % 2 == 0 else [])
        await store.set(key, b"v", 30, tags=tags)
        await store.set(key + ":untagged", b"v", 30)
    assert await store.purge_tags(["catalog"]) == -1
    assert [v is not None for v in await store.get_many(keys)] == [i % 2 == 1 for i in range(120)]
    assert await store.purge_tags(["p:/items/1", "p:/items/3"]) == -1
    left = [i for i, v in enumerate(await store.get_many(keys)) if v is not None]
    assert left == [i for i in range(5, 120, 2)]
    await store.purge_tags(["r:all"])
    assert await store.get_many(keys) == [None] * 120
    untagged = await store.get_many([key + ":untagged" for key in keys])
    assert untagged == [b"v"] * 120


async def test_keys_without_hash_tag_work_with_tags(store: RedisStore) -> None:
    for i in range(10):
        await store.set(f"plain-{i}", b"v", 30, tags=["plain"])
    assert await store.get_many([f"plain-{i}" for i in range(10)]) == [b"v"] * 10
    assert await store.purge_tags(["plain"]) == -1
    assert await store.get_many([f"plain-{i}" for i in range(10)]) == [None] * 10


async def test_leases_on_every_node(store: RedisStore) -> None:
    tokens = {route: await store.lock(f"sc:{{{route}}}:k", 5) for route in ROUTES}
    assert all(tokens.values())
    for route in ROUTES:
        assert await store.lock(f"sc:{{{route}}}:k", 5) is None
    for route, token in tokens.items():
        assert token is not None
        assert await store.unlock(f"sc:{{{route}}}:k", "wrong") is False
        assert await store.unlock(f"sc:{{{route}}}:k", token) is True
    assert await store.lock(f"sc:{{{ROUTES[0]}}}:k", 5) is not None


async def test_cluster_from_url_and_ping(cluster_nodes: list[str]) -> None:
    store = RedisStore("rc", f"redis://{cluster_nodes[1]}/0", cluster=True)
    try:
        assert await store.ping() is True
        await store.set("sc:{x}:1", b"v", 30)
        assert await store.get("sc:{x}:1") == b"v"
    finally:
        await store.aclose()


async def test_pubsub_on_the_cluster(store: RedisStore) -> None:
    pubsub = await store.pubsub()
    try:
        await pubsub.subscribe("sc:filled")
        assert await store.publish("sc:filled", b"k") >= 1
        message = None
        while message is None:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1)
        assert message["data"] == b"k"
    finally:
        await pubsub.aclose()
