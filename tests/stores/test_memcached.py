"""MemcachedStore against a real memcached: entries, TTLs, key hashing, chunking, tags, leases."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator

import aiomcache
import msgpack
import pytest

from proxy.errors import StoreError
from proxy.stores.base import Store
from proxy.stores.memcached import MemcachedStore

from .conftest import memcached_keys

BINARY = bytes(range(256)) * 64 + b"\x00\r\nEND\r\nVALUE x 0 1\r\n" + os.urandom(4096)
MIB = 1024**2


@pytest.fixture
async def store(memcached_addr: str) -> AsyncIterator[MemcachedStore]:
    store = MemcachedStore("m", [memcached_addr], key_prefix="t1:", timeout=1.0)
    yield store
    await store.aclose()


async def stored_keys(memcached_raw: aiomcache.Client) -> set[bytes]:
    return await asyncio.to_thread(memcached_keys, memcached_raw._pool._port)


def test_satisfies_the_protocol(memcached_addr: str) -> None:
    assert isinstance(MemcachedStore("m", [memcached_addr]), Store)


async def test_miss_then_hit(store: MemcachedStore) -> None:
    assert await store.get("sc:{r}:1") is None
    await store.set("sc:{r}:1", b"body", 30)
    assert await store.get("sc:{r}:1") == b"body"


async def test_binary_values_are_intact(store: MemcachedStore) -> None:
    await store.set("sc:{r}:bin", BINARY, 30)
    assert await store.get("sc:{r}:bin") == BINARY
    await store.set("sc:{r}:empty", b"", 30)
    assert await store.get("sc:{r}:empty") == b""


async def test_ttl_is_honoured_by_the_server(
    store: MemcachedStore, memcached_raw: aiomcache.Client
) -> None:
    await store.set("sc:{r}:short", b"v", 1)
    await store.set("sc:{r}:long", b"v", 30)
    assert await store.get("sc:{r}:short") == b"v"
    # memcached counts whole seconds: after 2.1 s a 1 s item is surely gone
    await asyncio.sleep(2.1)
    assert await store.get("sc:{r}:short") is None
    assert await store.get("sc:{r}:long") == b"v"
    assert await memcached_raw.get(b"t1:sc:{r}:short") is None


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


async def test_get_many_keeps_order_and_misses(store: MemcachedStore) -> None:
    await store.set("a", b"1", 30)
    await store.set("b", b"2", 30)
    assert await store.get_many(["b", "zz", "a", "b"]) == [b"2", None, b"1", b"2"]
    assert await store.get_many([]) == []


async def test_delete_counts(store: MemcachedStore) -> None:
    await store.set("a", b"1", 30)
    await store.set("b", b"2", 30)
    assert await store.delete(["a", "b", "c"]) == 2
    assert await store.get("a") is None


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


async def test_rewriting_a_big_value_never_mixes_writes(store: MemcachedStore) -> None:
    first, second = os.urandom(2 * MIB), os.urandom(2 * MIB)
    await store.set("sc:{big}:1", first, 30)
    await store.set("sc:{big}:1", second, 30)
    assert await store.get("sc:{big}:1") == second


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


async def test_purge_tags_by_generation(store: MemcachedStore) -> None:
    await store.set("sc:{p}:1", b"p1", 30, tags=["product:1", "all"])
    await store.set("sc:{p}:2", b"p2", 30, tags=["product:2", "all"])
    await store.set("sc:{s}:9", b"s", 30, tags=["product:1"])
    await store.set("sc:{o}:0", b"o", 30)
    assert await store.purge_tags(["product:1"]) == -1  # generations cannot count
    assert await store.get_many(["sc:{p}:1", "sc:{s}:9", "sc:{p}:2", "sc:{o}:0"]) == [
        None,
        None,
        b"p2",
        b"o",
    ]
    # written again after the purge: visible, and purgeable again
    await store.set("sc:{p}:1", b"p1-new", 30, tags=["product:1"])
    assert await store.get("sc:{p}:1") == b"p1-new"
    await store.purge_tags(["all", "never-used"])
    assert await store.get("sc:{p}:2") is None
    assert await store.get("sc:{p}:1") == b"p1-new"


async def test_tags_on_chunked_values(store: MemcachedStore) -> None:
    body = os.urandom(MIB + 5)
    await store.set("sc:{big}:1", body, 30, tags=["big"])
    assert await store.get("sc:{big}:1") == body
    await store.purge_tags(["big"])
    assert await store.get("sc:{big}:1") is None


async def test_evicted_generation_counter_invalidates(
    store: MemcachedStore, memcached_raw: aiomcache.Client
) -> None:
    await store.set("sc:{p}:1", b"v", 30, tags=["t"])
    assert await memcached_raw.delete(b"t1:~g:t")  # as if LRU evicted it
    assert await store.get("sc:{p}:1") is None
    await store.set("sc:{p}:1", b"v2", 30, tags=["t"])
    assert await store.get("sc:{p}:1") == b"v2"


async def test_generations_are_shared_between_processes(memcached_addr: str) -> None:
    one = MemcachedStore("a", [memcached_addr])
    two = MemcachedStore("b", [memcached_addr])
    try:
        await one.set("sc:{p}:1", b"v", 30, tags=["t"])
        assert await two.get("sc:{p}:1") == b"v"
        await two.purge_tags(["t"])
        assert await one.get("sc:{p}:1") is None
    finally:
        await one.aclose()
        await two.aclose()


async def test_lock_is_exclusive_and_fenced(store: MemcachedStore) -> None:
    token = await store.lock("sc:{r}:1", 5)
    assert token is not None
    assert await store.lock("sc:{r}:1", 5) is None
    assert await store.unlock("sc:{r}:1", "wrong") is False
    assert await store.unlock("sc:{r}:1", token) is True
    assert await store.unlock("sc:{r}:1", token) is False
    assert await store.lock("sc:{r}:1", 5) is not None
    assert await store.get("sc:{r}:1") is None


async def test_ping(store: MemcachedStore) -> None:
    assert await store.ping() is True


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
