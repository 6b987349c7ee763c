"""RedisStore's index data: bounded, expiring, and never trusted for a hit.

A churn run writes entries with the three tags the engine gives ``/products/N`` (the
route tag, ``p:/products``, ``p:/products/N``), each key several times over; then every
key Redis holds is read back: all have a TTL, the generation keys number the distinct
tags (not the writes), and their bytes stay a small fraction of the entries'
(``MEMORY USAGE``). The full-size figure (100,000 entries x 3 tags, 5 writes each) is
``bench/redis_index.py``'s, recorded in docs/reliability.md.
"""

from __future__ import annotations

import asyncio
import os
from collections import Counter
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from proxy.errors import StoreUnavailable
from proxy.stores.redis import RedisStore
from proxy.stores.redis_layout import describe, tag_digest

ENTRIES = 2000
WRITES = 5


def tags_of(i: int) -> list[str]:
    return ["r:products", "p:/products", f"p:/products/{i}"]


@pytest.fixture
async def store(redis_url: str) -> AsyncIterator[RedisStore]:
    store = RedisStore("r", redis_url, connect_timeout=5.0)
    yield store
    await store.aclose()


async def census(redis_raw: Redis) -> tuple[Counter[str], Counter[str], list[bytes]]:
    """Keys and ``MEMORY USAGE`` bytes by kind, and the keys without a TTL."""
    keys, sizes, no_ttl = Counter[str](), Counter[str](), []
    async for key in redis_raw.scan_iter(count=1000):
        kind, _ = describe(key.decode())
        keys[kind] += 1
        sizes[kind] += await redis_raw.memory_usage(key, samples=0) or 0
        if await redis_raw.pttl(key) == -1:
            no_ttl.append(key)
    return keys, sizes, no_ttl


async def test_churn_leaves_every_key_expiring_and_the_index_small(
    store: RedisStore, redis_raw: Redis
) -> None:
    value = os.urandom(1024)
    for write in range(WRITES):
        ttl = 600 + 60 * write  # each rewrite with a longer lifetime than the one before
        for first in range(0, ENTRIES, 200):
            await asyncio.gather(
                *(
                    store.set(f"sc:products:{i:032x}", value, ttl, tags_of(i))
                    for i in range(first, first + 200)
                )
            )
    keys, sizes, no_ttl = await census(redis_raw)
    assert no_ttl == []
    assert keys == {"entry": ENTRIES, "generation": ENTRIES + 2}  # one per distinct tag
    assert sizes["generation"] <= 0.10 * sizes["entry"]
    # a generation lives as long as the longest entry it guards
    assert await redis_raw.pttl(f"~g:{tag_digest('r:products')}") > 800_000
    assert await store.get_many([f"sc:products:{i:032x}" for i in range(5)]) == [value] * 5


async def test_lost_generations_make_misses_never_hits(store: RedisStore, redis_raw: Redis) -> None:
    keys = [f"sc:products:{i:032x}" for i in range(50)]
    for i, key in enumerate(keys):
        await store.set(key, b"v", 60, tags_of(i))
        await store.set(key + ":plain", b"v", 60)  # untagged: nothing to lose
    # deleted by hand (or evicted, or lost in a restart): the even entries' own path tags
    await redis_raw.delete(*(f"~g:{tag_digest(f'p:/products/{i}')}" for i in range(0, 50, 2)))
    values = await store.get_many(keys)
    assert values == [None if i % 2 == 0 else b"v" for i in range(50)]
    # and those misses were dropped on the way: the memory is given back
    assert [await redis_raw.exists(key) for key in keys] == [i % 2 for i in range(50)]
    await redis_raw.delete(f"~g:{tag_digest('r:products')}")  # one every entry names
    assert await store.get_many(keys) == [None] * len(keys)
    assert await store.get_many([key + ":plain" for key in keys]) == [b"v"] * len(keys)


async def test_a_purge_that_cannot_reach_redis_raises() -> None:
    store = RedisStore("down", "redis://127.0.0.1:1/0", connect_timeout=0.5)
    try:
        with pytest.raises(StoreUnavailable):
            await store.purge_tags(["t:product:1"])  # the admin API answers 503 with it
    finally:
        await store.aclose()
