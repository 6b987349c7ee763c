"""MemcachedStore against a real memcached: what only Memcached does (key hashing, chunks
behind a verified manifest, foreign values, generation counters, server errors). What
every store promises is in test_contract.py."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator

import aiomcache
import msgpack
import pytest

from proxy.errors import StoreError
from proxy.stores.memcached import MemcachedStore

from .conftest import memcached_keys

MIB = 1024**2


@pytest.fixture
async def store(memcached_addr: str) -> AsyncIterator[MemcachedStore]:
    store = MemcachedStore("m", [memcached_addr], key_prefix="t1:", timeout=1.0)
    yield store
    await store.aclose()


async def stored_keys(memcached_raw: aiomcache.Client) -> set[bytes]:
    return await asyncio.to_thread(memcached_keys, memcached_raw._pool._port)


async def test_long_spaced_and_unicode_keys_are_hashed(
    store: MemcachedStore, memcached_raw: aiomcache.Client
) -> None:
    keys = ["k" * 600, "with space", "tab\there", "naïve/ключ", "new\nline"]
    for i, key in enumerate(keys):
        await store.set(key, f"v{i}".encode(), 30)
    assert await store.get_many(keys) == [f"v{i}".encode() for i in range(len(keys))]
    stored = await stored_keys(memcached_raw)
    assert all(len(k) <= 250 and b" " not in k for k in stored)
    assert len({k for k in stored if k.startswith(b"t1:~h:")}) == 4  # all but the unicode one


async def test_three_mib_value_is_chunked_and_byte_identical(
    store: MemcachedStore, memcached_raw: aiomcache.Client
) -> None:
    body = os.urandom(3 * MIB)
    await store.set("sc:{big}:1", body, 30)
    assert await store.get("sc:{big}:1") == body
    chunks = {k for k in await stored_keys(memcached_raw) if k.startswith(b"t1:~c:")}
    assert len(chunks) == 4  # 3 MiB in items under 1 MiB each


async def test_a_deleted_chunk_is_a_clean_miss(
    store: MemcachedStore, memcached_raw: aiomcache.Client
) -> None:
    body = os.urandom(3 * MIB)
    await store.set("sc:{big}:1", body, 30)
    chunk = sorted(k for k in await stored_keys(memcached_raw) if k.startswith(b"t1:~c:"))[1]
    assert await memcached_raw.delete(chunk)
    assert await store.get("sc:{big}:1") is None
    assert await store.get_many(["sc:{big}:1"]) == [None]


async def test_an_overwritten_chunk_is_a_clean_miss(
    store: MemcachedStore, memcached_raw: aiomcache.Client
) -> None:
    body = os.urandom(2 * MIB + 17)
    await store.set("sc:{big}:1", body, 30)
    chunk = sorted(k for k in await stored_keys(memcached_raw) if k.startswith(b"t1:~c:"))[0]
    original = await memcached_raw.get(chunk)
    assert original is not None
    # same length, one byte different: only the digest can tell
    await memcached_raw.set(chunk, original[:-1] + bytes([original[-1] ^ 1]))
    assert await store.get("sc:{big}:1") is None
    await memcached_raw.set(chunk, original[: len(original) // 2])  # truncated
    assert await store.get("sc:{big}:1") is None


async def test_foreign_values_are_misses(
    store: MemcachedStore, memcached_raw: aiomcache.Client
) -> None:
    await memcached_raw.set(b"t1:foreign", b"\xc1 not msgpack")
    shapes = [
        [7, [], b"x"],  # unknown kind
        [0, 5, b"x"],  # generations not a list
        [0, [[1, 2]], b"x"],  # a tag that is not a string
        [0, [["t"]], b"x"],  # a pair that is not a pair
        [1, [], ["n", "two", 1, b""]],  # a manifest with a bad count
        [1, [], ["n", 1]],  # a short manifest
        "just a string",
    ]
    for i, shape in enumerate(shapes):
        await memcached_raw.set(f"t1:shape{i}".encode(), msgpack.packb(shape))
    keys = ["foreign"] + [f"shape{i}" for i in range(len(shapes))]
    assert await store.get_many(keys) == [None] * len(keys)


async def test_evicted_generation_counter_invalidates(
    store: MemcachedStore, memcached_raw: aiomcache.Client
) -> None:
    await store.set("sc:{p}:1", b"v", 30, tags=["t"])
    assert await memcached_raw.delete(b"t1:~g:t")  # as if LRU evicted it
    assert await store.get("sc:{p}:1") is None
    await store.set("sc:{p}:1", b"v2", 30, tags=["t"])
    assert await store.get("sc:{p}:1") == b"v2"


async def test_server_errors_become_store_errors(memcached_addr: str) -> None:
    # claim 4 MiB items while the server takes 1 MiB: the server refuses, we map it
    store = MemcachedStore("m", [memcached_addr], item_size_max=4 * MIB)
    try:
        with pytest.raises(StoreError) as caught:
            await store.set("too-big", os.urandom(3 * MIB), 30)
        assert caught.value.backend == "m"
    finally:
        await store.aclose()


def test_bad_prefix_is_refused(memcached_addr: str) -> None:
    with pytest.raises(ValueError, match="key_prefix"):
        MemcachedStore("m", [memcached_addr], key_prefix="has space")
