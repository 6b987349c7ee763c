"""RedisStore against a real 3-node Redis Cluster: what only a cluster does (entries spread
over the masters, an entry's generations and lease in its slot, URLs, pub/sub). What every
store promises, the cluster included, is in test_contract.py."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.crc import key_slot

from proxy.stores.redis import RedisStore
from proxy.stores.redis_layout import bucket_of, describe, tag_digest


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


async def connections(nodes: list[str]) -> int:
    """How many connections the cluster's nodes have accepted since they started (this
    count's own included: each count adds one per node)."""
    total = 0
    for node in nodes:
        host, port = node.split(":")
        client = Redis(host=host, port=int(port))
        try:
            total += int((await client.info("stats"))["total_connections_received"])
        finally:
            await client.aclose()
    return total


async def test_a_soft_purge_on_a_fresh_client_opens_one_connection_per_node(
    cluster_nodes: list[str],
) -> None:
    """Each soften/soften_tags call runs its 64 buckets' scripts as one pipeline: on a
    fresh client, one connection per node, not one per bucket at once."""
    for call in ("soften_tags", "soften"):
        store = RedisStore("rc", nodes=cluster_nodes, key_prefix="p:")
        try:
            assert await store.ping()  # learns the slot map (its own connections)
            before = await connections(cluster_nodes)
            if call == "soften_tags":
                assert await store.soften_tags(["t1", "t2"]) == -1
            else:
                keys = [f"sc:r:{i:032x}" for i in range(300)]  # in every bucket
                await asyncio.gather(*(store.set(k, b"\x9fv", 60) for k in keys[:1]))
                before = await connections(cluster_nodes)
                assert await store.soften(keys) == 1
            opened = await connections(cluster_nodes) - before - len(cluster_nodes)
            assert opened <= len(cluster_nodes), (call, opened)
        finally:
            await store.aclose()
