"""RedisStore against a real 3-node Redis Cluster: entries, tags and leases across slots."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.crc import key_slot

from proxy.stores.redis import RedisStore

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


async def test_routes_spread_over_all_three_masters(raw: RedisCluster) -> None:
    await raw.initialize()
    owners = {raw.get_node_from_key(f"sc:{{{route}}}:x").name for route in ROUTES}
    assert len(owners) == 3  # so the tests below really cross nodes


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


async def test_entry_tag_sets_and_lease_share_the_route_slot(
    store: RedisStore, raw: RedisCluster
) -> None:
    await store.set("sc:{products}:1", b"v", 30, tags=["catalog", "item:1"])
    await store.lock("sc:{products}:1", 5)
    slot = key_slot(b"p:sc:{products}:1")
    for stored in (
        "p:~t:{products}:catalog",
        "p:~t:{products}:item:1",
        "p:~l:{products}:sc:{products}:1",
    ):
        assert key_slot(stored.encode()) == slot
        assert await raw.exists(stored) == 1


async def test_tags_purge_entries_on_every_node(store: RedisStore) -> None:
    for i, route in enumerate(ROUTES):
        tags = ["catalog", f"item:{i}"] if i % 2 == 0 else [f"item:{i}"]
        await store.set(f"sc:{{{route}}}:1", b"v", 30, tags=tags)
        await store.set(f"sc:{{{route}}}:untagged", b"v", 30)
    assert await store.purge_tags(["catalog"]) == 6
    assert await store.purge_tags(["item:1", "item:2", "item:3"]) == 2  # item:2 already gone
    remaining = await store.get_many([f"sc:{{{route}}}:1" for route in ROUTES])
    assert [v is not None for v in remaining] == [False, False, False, False] + [
        i % 2 == 1 for i in range(4, 12)
    ]
    untagged = await store.get_many([f"sc:{{{route}}}:untagged" for route in ROUTES])
    assert untagged == [b"v"] * 12


async def test_keys_without_hash_tag_work_with_tags(store: RedisStore) -> None:
    for i in range(10):
        await store.set(f"plain-{i}", b"v", 30, tags=["plain"])
    assert await store.get_many([f"plain-{i}" for i in range(10)]) == [b"v"] * 10
    assert await store.purge_tags(["plain"]) == 10


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
