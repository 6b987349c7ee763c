"""RedisStore on a real 3-master Redis Cluster with replicas: a master dies, its replica is
promoted, and nothing is lost but (at most) that shard's entries; purges still reach every
master, the promoted one included."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster

from proxy.errors import StoreError
from proxy.stores.redis import RedisStore
from proxy.stores.redis_layout import bucket_of
from tests.stores.conftest import ReplicatedCluster

KEYS = [f"sc:products:{i:032x}" for i in range(3000)]


def tags_of(i: int) -> list[str]:
    return ["r:products", f"p:/products/{i}", f"t:group:{i % 10}"]


@pytest.fixture
async def store(replicated_cluster: ReplicatedCluster) -> AsyncIterator[RedisStore]:
    store = RedisStore("rc", nodes=replicated_cluster.nodes, key_prefix="f:")
    yield store
    await store.aclose()


async def client(node: str) -> Redis:
    host, port = node.split(":")
    return Redis(host=host, port=int(port))


async def wait_until(check: object, what: str, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if await check():  # type: ignore[operator]
                return
        except Exception:  # a node still down or moving: ask again
            pass
        await asyncio.sleep(0.1)
    raise AssertionError(f"never happened within {seconds}s: {what}")


async def read_all(store: RedisStore) -> list[bytes | None]:
    """Every key, once the store answers again after the failover."""
    values: list[bytes | None] = []

    async def answered() -> bool:
        nonlocal values
        try:
            values = await store.get_many(KEYS)
        except StoreError:
            return False
        return True

    await wait_until(answered, "the store answers every read")
    return values


async def test_a_failover_loses_at_most_that_shards_entries_and_purges_still_hold(
    store: RedisStore, replicated_cluster: ReplicatedCluster
) -> None:
    for start in range(0, len(KEYS), 100):
        await asyncio.gather(
            *(store.set(KEYS[i], b"v", 120, tags_of(i)) for i in range(start, start + 100))
        )
    victim, heir = next(iter(replicated_cluster.replica_of.items()))

    async def replica_caught_up() -> bool:
        master, replica = await client(victim), await client(heir)
        try:
            return bool(await master.dbsize() == await replica.dbsize())
        finally:
            await master.aclose()
            await replica.aclose()

    await wait_until(replica_caught_up, "the victim's replica holds what it holds")
    raw = RedisCluster(startup_nodes=[ClusterNode(*victim.split(":"))])  # type: ignore[arg-type]
    await raw.initialize()
    owners = [raw.get_node_from_key(f"f:{bucket_of(key)}{key}").name for key in KEYS]
    on_victim = {i for i, owner in enumerate(owners) if owner == victim}
    await raw.aclose()
    assert 800 <= len(on_victim) <= 1200

    # the master dies (SIGKILL: no goodbye); its replica takes over its slots
    replicated_cluster.executors[victim].kill(sig=signal.SIGKILL)

    async def promoted() -> bool:
        heir_client = await client(heir)
        try:
            role = (await heir_client.info("replication"))["role"]
            state = await heir_client.execute_command("CLUSTER", "INFO")
            return bool(role == "master" and b"cluster_state:ok" in state)
        finally:
            await heir_client.aclose()

    await wait_until(promoted, "the replica is promoted and the cluster is ok")
    values = await read_all(store)
    kept = {i for i, value in enumerate(values) if value == b"v"}
    assert set(range(len(KEYS))) - on_victim <= kept  # every other shard's entry is intact
    assert all(value in (b"v", None) for value in values)

    # writes, exact deletes and purges reach every master, the promoted one included
    victim_keys = sorted(on_victim)
    await store.set(KEYS[victim_keys[0]], b"new", 120, tags_of(victim_keys[0]))
    assert await store.get(KEYS[victim_keys[0]]) == b"new"
    assert await store.delete([KEYS[victim_keys[0]], KEYS[victim_keys[1]]]) >= 1
    await store.purge_tags(["t:group:3"])  # a tag
    await store.purge_tags(["p:/products/4", "p:/products/5"])  # URLs' paths (prefixes)
    values = await read_all(store)
    gone = {3, 4, 5} | {i for i in range(len(KEYS)) if i % 10 == 3} | set(victim_keys[:2])
    assert {i for i, value in enumerate(values) if value is not None} == kept - gone
    await store.purge_tags(["r:products"])  # the route
    assert await read_all(store) == [None] * len(KEYS)
