"""TieredStore: process memory in front of a real Redis (and Memcached) behind the guard:
what each layer holds and answers. What every store promises is in test_contract.py."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from mirakuru import TCPExecutor
from redis.asyncio import Redis

from proxy.clock import FakeClock
from proxy.errors import StoreError
from proxy.stores.guard import GuardedStore
from proxy.stores.memcached import MemcachedStore
from proxy.stores.memory import MemoryStore
from proxy.stores.redis import RedisStore
from proxy.stores.tiered import TieredStore

L1_TTL = 5.0


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def tiered(redis_url: str, clock: FakeClock) -> AsyncIterator[TieredStore]:
    l2 = GuardedStore(RedisStore("l2", redis_url), 0.5, breaker_failures=2, clock=clock)
    store = TieredStore("tiered", MemoryStore("l1", 1024**2, clock), l2, L1_TTL)
    yield store
    await store.aclose()


def test_health_and_layers_are_the_l2_breakers(tiered: TieredStore) -> None:
    assert tiered.health().breaker == "closed"
    tiers = tiered.tiers()
    assert tiers.l1.name == "l1"
    breaker = tiers.l2.breaker()
    assert breaker is not None
    assert breaker.state == "closed"
    assert tiered.breaker() is None  # its layers are backends of their own


async def test_miss_then_hit_from_both_layers(tiered: TieredStore) -> None:
    assert await tiered.get("sc:{r}:1") is None
    await tiered.set("sc:{r}:1", b"v", 60)
    assert await tiered.l1.get("sc:{r}:1") == b"v"
    assert await tiered.l2.get("sc:{r}:1") == b"v"
    assert await tiered.get("sc:{r}:1") == b"v"


async def test_l1_ttl_is_the_shorter_of_entry_and_l1(
    tiered: TieredStore, clock: FakeClock, redis_raw: Redis
) -> None:
    await tiered.set("sc:{r}:long", b"v", 60)
    await tiered.set("sc:{r}:short", b"v", 2)
    assert 59_000 < await redis_raw.pttl("sc:{r}:long") <= 60_000  # L2 keeps the entry's TTL
    clock.advance(2.5)
    assert await tiered.l1.get("sc:{r}:short") is None
    assert await tiered.l1.get("sc:{r}:long") == b"v"
    clock.advance(L1_TTL)
    assert await tiered.l1.get("sc:{r}:long") is None
    assert await tiered.get("sc:{r}:long") == b"v"  # from L2, and back into L1


async def test_l1_hits_need_no_await(tiered: TieredStore, clock: FakeClock) -> None:
    await tiered.set("sc:{r}:1", b"v", 60)
    assert tiered.get_now("sc:{r}:1") == b"v"
    assert tiered.get_now("sc:{r}:none") is None
    clock.advance(L1_TTL)
    assert tiered.get_now("sc:{r}:1") is None  # L2 still has it: the async path finds it
    assert await tiered.get("sc:{r}:1") == b"v"
    assert tiered.get_now("sc:{r}:1") == b"v"


async def test_l2_hits_fill_l1(tiered: TieredStore, clock: FakeClock) -> None:
    await tiered.l2.set("sc:{r}:1", b"from-l2", 60)
    await tiered.l2.set("sc:{r}:2", b"two", 60)
    assert await tiered.l1.get("sc:{r}:1") is None
    assert await tiered.get("sc:{r}:1") == b"from-l2"
    assert await tiered.l1.get("sc:{r}:1") == b"from-l2"
    assert await tiered.get_many(["sc:{r}:1", "sc:{r}:2", "x"]) == [b"from-l2", b"two", None]
    assert await tiered.l1.get("sc:{r}:2") == b"two"
    clock.advance(L1_TTL)
    assert await tiered.l1.get_many(["sc:{r}:1", "sc:{r}:2"]) == [None, None]


async def test_hot_entries_survive_an_l2_outage(own_redis: TCPExecutor) -> None:
    l2 = GuardedStore(RedisStore("l2", f"redis://127.0.0.1:{own_redis.port}/0"), 0.5)
    store = TieredStore("t", MemoryStore("l1", 1024**2), l2, L1_TTL)
    try:
        await store.set("sc:{r}:hot", b"v", 60)
        await asyncio.to_thread(own_redis.stop)
        assert await store.get("sc:{r}:hot") == b"v"  # L1 answers, L2 untouched
        assert l2.counters["get"].ops == 0
        with pytest.raises(StoreError):
            await store.get("sc:{r}:cold")
    finally:
        await store.aclose()


async def test_delete_and_purge_reach_both_layers(tiered: TieredStore) -> None:
    await tiered.set("sc:{r}:1", b"v", 60, tags=["t"])
    await tiered.set("sc:{r}:2", b"v", 60)
    await tiered.l2.set("sc:{r}:3", b"v", 60, tags=["t"])
    assert await tiered.get("sc:{r}:3") == b"v"  # an L1 fill: L1 does not know its tags
    assert await tiered.purge_tags(["t"]) == -1  # the Redis L2 cannot count (generations)
    for layer in (tiered.l1, tiered.l2):
        assert await layer.get_many(["sc:{r}:1", "sc:{r}:3"]) == [None, None]
    assert await tiered.get("sc:{r}:2") == b"v"
    assert await tiered.delete(["sc:{r}:2"]) == 1
    assert await tiered.l1.get("sc:{r}:2") is None
    assert await tiered.get("sc:{r}:2") is None


async def test_leases_live_in_l2(tiered: TieredStore) -> None:
    token = await tiered.lock("sc:{r}:1", 5)
    assert token is not None
    assert await tiered.l2.lock("sc:{r}:1", 5) is None
    assert await tiered.unlock("sc:{r}:1", token) is True


async def test_over_memcached(memcached_server: TCPExecutor, memcached_addr: str) -> None:
    l2 = GuardedStore(MemcachedStore("mc", [memcached_addr]), 0.5)
    store = TieredStore("t", MemoryStore("l1", 1024**2), l2, L1_TTL)
    try:
        await store.set("sc:{r}:1", b"v", 60, tags=["t"])
        assert await store.get("sc:{r}:1") == b"v"
        assert await store.purge_tags(["t"]) == -1
        assert await store.get("sc:{r}:1") is None
    finally:
        await store.aclose()
