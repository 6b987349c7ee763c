"""Soft purges on every store: the entries stay, marked stale since the purge, until they
are written again; a purge after a soft purge still removes; what marks an entry, once
lost, turns it into a miss (never into an unmarked entry)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import aiomcache
import pytest
from redis.asyncio import Redis

from proxy.entry import SOFT_HEAD, soft_time
from proxy.stores.base import Store
from proxy.stores.guard import GuardedStore
from proxy.stores.memcached import MemcachedStore
from proxy.stores.memcached_tags import MAX_LINKS
from proxy.stores.memory import MemoryStore
from proxy.stores.redis import RedisStore
from proxy.stores.tiered import TieredStore

BACKENDS = ["memory", "redis", "redis-cluster", "memcached", "tiered"]
VALUE = b"\x9f" + b"v" * 200  # shaped like an envelope: an array's first byte


@pytest.fixture(params=BACKENDS)
async def store(request: pytest.FixtureRequest) -> AsyncIterator[Store]:
    kind = request.param
    made: Store
    if kind == "memory":
        made = MemoryStore("m", 1024**2)
    elif kind == "redis":
        made = RedisStore("r", request.getfixturevalue("redis_url"))
    elif kind == "redis-cluster":
        made = RedisStore("c", nodes=request.getfixturevalue("cluster_nodes"))
    elif kind == "memcached":
        made = MemcachedStore("mc", [request.getfixturevalue("memcached_addr")], timeout=1.0)
    else:
        l2 = GuardedStore(RedisStore("l2", request.getfixturevalue("redis_url")), 1.0)
        made = TieredStore("t", MemoryStore("l1", 1024**2), l2, 5.0)
    yield made
    await made.aclose()


def marked(raw: bytes | None) -> float | None:
    """The soft purge time ``raw`` is framed with (the value inside checked whole)."""
    assert raw is not None
    at = soft_time(raw)
    assert (raw[SOFT_HEAD:] if at is not None else raw) == VALUE
    return at


async def test_a_soft_purge_of_a_tag_marks_its_entries_only(store: Store) -> None:
    for i in range(5):
        await store.set(f"sc:r:{i}", VALUE, 60, ["t:soft", "r"])
    await store.set("sc:r:other", VALUE, 60, ["t:other", "r"])
    before = time.time()
    answer = await store.soften_tags(["t:soft"])
    after = time.time()
    assert answer in (5, -1)  # counted, or a store that cannot count
    for i in range(5):
        at = marked(await store.get(f"sc:r:{i}"))
        assert at is not None
        assert before - 1 <= at <= after + 1
    assert marked(await store.get("sc:r:other")) is None
    assert [marked(v) is not None for v in await store.get_many(["sc:r:0", "sc:r:other"])] == [
        True,
        False,
    ]


async def test_a_write_after_a_soft_purge_is_fresh_again(store: Store) -> None:
    await store.set("sc:r:1", VALUE, 60, ["t:soft"])
    await store.set("sc:r:2", VALUE, 60, ["t:soft"])
    await store.soften_tags(["t:soft"])
    await store.set("sc:r:1", VALUE, 60, ["t:soft"])
    assert marked(await store.get("sc:r:1")) is None
    assert marked(await store.get("sc:r:2")) is not None


async def test_the_first_soft_purge_marks_an_entry_the_later_ones_keep_it(store: Store) -> None:
    await store.set("sc:r:1", VALUE, 60, ["t:a", "t:b"])
    await store.soften_tags(["t:a"])
    first = marked(await store.get("sc:r:1"))
    await store.soften_tags(["t:b"])
    await store.soften_tags(["t:a"])
    await store.soften(["sc:r:1"])
    assert marked(await store.get("sc:r:1")) == first


async def test_a_purge_after_a_soft_purge_removes(store: Store) -> None:
    await store.set("sc:r:1", VALUE, 60, ["t:soft"])
    await store.set("sc:r:2", VALUE, 60, ["t:soft"])
    await store.soften_tags(["t:soft"])
    await store.soften(["sc:r:2"])
    assert marked(await store.get("sc:r:1")) is not None
    await store.purge_tags(["t:soft"])
    assert await store.get("sc:r:1") is None
    assert await store.get("sc:r:2") is None


async def test_a_purge_between_soft_purges_removes_for_good(store: Store) -> None:
    await store.set("sc:r:1", VALUE, 60, ["t:soft"])
    await store.soften_tags(["t:soft"])
    await store.purge_tags(["t:soft"])
    await store.set("sc:r:2", VALUE, 60, ["t:soft"])  # the tag is written again
    await store.soften_tags(["t:soft"])
    assert await store.get("sc:r:1") is None
    assert marked(await store.get("sc:r:2")) is not None


async def test_a_soft_purge_by_key(store: Store) -> None:
    await store.set("sc:r:1", VALUE, 60, ["t:x"])
    await store.set("sc:r:2", VALUE, 60)
    await store.set("sc:r:3", VALUE, 60)
    assert await store.soften(["sc:r:1", "sc:r:2", "sc:r:missing"]) == 2
    assert marked(await store.get("sc:r:1")) is not None
    assert marked(await store.get("sc:r:2")) is not None
    assert marked(await store.get("sc:r:3")) is None
    await store.set("sc:r:2", VALUE, 60)
    assert marked(await store.get("sc:r:2")) is None
    await store.delete(["sc:r:1"])
    assert await store.get("sc:r:1") is None


@pytest.mark.parametrize("store", ["redis", "memcached"], indirect=True)
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
