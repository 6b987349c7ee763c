"""Soft purges, what only some stores do: what marks an entry (Redis links, Memcached
counters), once lost or followed too far, turns it into a miss (never into an unmarked
entry); the memory store counts the bytes of its marks; a tiered store never copies a
marked entry into its L1. What every store promises of a soft purge (the entries stay,
marked stale since the purge, until written again; a purge after one still removes) is
in test_contract.py."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiomcache
import pytest
from redis.asyncio import Redis

from proxy.core.entry import SOFT_HEAD, soft_time
from proxy.stores.base import Store
from proxy.stores.memcached import MemcachedStore
from proxy.stores.memcached_tags import MAX_LINKS
from proxy.stores.memory import MemoryStore
from proxy.stores.redis import RedisStore
from proxy.stores.tiered import TieredStore

VALUE = b"\x9f" + b"v" * 200  # shaped like an envelope: an array's first byte


@pytest.fixture(params=["redis", "memcached"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[Store]:
    made: Store
    if request.param == "redis":
        made = RedisStore("r", request.getfixturevalue("redis_url"))
    else:
        made = MemcachedStore("mc", [request.getfixturevalue("memcached_addr")], timeout=1.0)
    yield made
    await made.aclose()


def marked(raw: bytes | None) -> float | None:
    """The soft purge time ``raw`` is framed with (the value inside checked whole)."""
    assert raw is not None
    at = soft_time(raw)
    assert (raw[SOFT_HEAD:] if at is not None else raw) == VALUE
    return at


async def test_more_soft_purges_than_links_followed_is_a_miss(store: Store) -> None:
    await store.set("sc:r:1", VALUE, 60, ["t:soft"])
    for _ in range(MAX_LINKS):
        await store.soften_tags(["t:soft"])
    assert marked(await store.get("sc:r:1")) is not None
    await store.soften_tags(["t:soft"])
    assert await store.get("sc:r:1") is None


async def test_redis_lost_links_or_generations_make_misses(
    redis_url: str, redis_raw: Redis
) -> None:
    store = RedisStore("r", redis_url, key_prefix="p:")
    try:
        for i in range(3):
            await store.set(f"sc:r:{i}", VALUE, 60, ["t:soft", "t:other"])
        await store.soften_tags(["t:soft"])
        await store.soften(["sc:r:2"])
        links = [key async for key in redis_raw.scan_iter("p:~s:*")]
        assert len(links) == 1
        assert 2_000 < await redis_raw.pttl(links[0]) <= 60_000  # lives as its generation
        assert marked(await store.get("sc:r:0")) is not None
        await redis_raw.delete(*links)  # evicted
        assert await store.get("sc:r:0") is None  # a miss, never an unmarked hit
        await store.set("sc:r:0", VALUE, 60, ["t:soft", "t:other"])
        await store.soften_tags(["t:soft"])
        generations = [key async for key in redis_raw.scan_iter("p:~g:*")]
        await redis_raw.delete(*generations)
        assert await store.get("sc:r:0") is None
        assert await store.get("sc:r:2") is None  # marked by key, but its tags are gone
    finally:
        await store.aclose()


async def test_memcached_lost_links_make_misses(
    memcached_addr: str, memcached_raw: aiomcache.Client
) -> None:
    store = MemcachedStore("mc", [memcached_addr], timeout=1.0)
    try:
        await store.set("sc:r:1", VALUE, 60, ["t:soft"])
        await store.set("sc:r:2", VALUE, 60, ["t:soft"])
        await store.soften_tags(["t:soft"])
        assert marked(await store.get("sc:r:1")) is not None
        gen = await memcached_raw.get(b"~g:t:soft")
        assert gen is not None
        assert await memcached_raw.get(b"~s:t:soft:%d" % (int(gen) - 1)) is not None
        await memcached_raw.delete(b"~s:t:soft:%d" % (int(gen) - 1))  # evicted
        assert await store.get("sc:r:1") is None
        assert await store.get("sc:r:2") is None
    finally:
        await store.aclose()


async def test_memory_counts_and_bounds_what_it_marks() -> None:
    store = MemoryStore("m", 4096)
    for i in range(3):
        await store.set(f"sc:r:{i}", VALUE, 60, ["t:soft"])
    size = store.stats().bytes
    assert size is not None
    assert await store.soften_tags(["t:soft", "t:none"]) == 3
    assert store.stats().bytes == size + 3 * SOFT_HEAD
    await store.purge_tags(["t:soft"])
    assert store.stats().bytes == 0


async def test_tiered_never_copies_a_marked_entry_into_l1(redis_url: str) -> None:
    """Every replica's L1 would keep a marked copy for ``l1_ttl`` after another replica
    stored the refreshed entry in L2: marked entries are always read from L2."""
    tiered = TieredStore("t", MemoryStore("l1", 1024**2), RedisStore("l2", redis_url), 60.0)
    try:
        await tiered.set("sc:r:1", VALUE, 60, ["t:soft"])
        await tiered.set("sc:r:2", VALUE, 60, ["t:soft"])
        await tiered.soften_tags(["t:soft"])
        assert marked(await tiered.get("sc:r:1")) is not None
        assert marked((await tiered.get_many(["sc:r:2"]))[0]) is not None
        assert await tiered.l1.get("sc:r:1") is None
        assert await tiered.l1.get("sc:r:2") is None
        await tiered.set("sc:r:1", VALUE, 60, ["t:soft"])  # refreshed by any replica
        assert marked(await tiered.get("sc:r:1")) is None
        await tiered.soften(["sc:r:1"])
        assert await tiered.l1.get("sc:r:1") is None
        assert marked(await tiered.get("sc:r:1")) is not None
    finally:
        await tiered.aclose()
