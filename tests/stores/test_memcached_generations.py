"""Memcached generation counters expire, and never before the entries they vouch for.

Read back as an operator would: ``lru_crawler metadump all`` on a real memcached, whose
``exp=`` is the unix time a key expires (``-1``: never).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import aiomcache
import pytest

from proxy.stores.aiomcache_adapter import Counter
from proxy.stores.memcached import MemcachedStore
from proxy.stores.memcached_tags import GEN_SLACK

from .conftest import memcached_expiries

DAY = 86400


@pytest.fixture
async def store(memcached_addr: str) -> AsyncIterator[MemcachedStore]:
    store = MemcachedStore("m", [memcached_addr], timeout=1.0)
    yield store
    await store.aclose()


async def expiries(addr: str) -> dict[bytes, int]:
    return await asyncio.to_thread(memcached_expiries, int(addr.rsplit(":", 1)[1]))


async def test_no_key_the_store_writes_lives_forever(
    store: MemcachedStore, memcached_addr: str
) -> None:
    for i in range(20):
        await store.set(f"/p/{i}", b"v" * 100, 30 + i, tags=[f"product:{i % 3}", "all"])
    await store.set("/big", b"b" * (3 * 1024**2), 600, tags=["big"])  # chunks too
    token = await store.lock("/p/0", 5)
    assert token is not None
    await store.purge_tags(["product:1"])  # incr keeps an exptime
    held = await expiries(memcached_addr)
    assert any(key.startswith(b"~g:") for key in held)
    assert any(key.startswith(b"~c:") for key in held)
    assert [key for key, exp in held.items() if exp == -1] == []


async def test_a_counter_outlives_the_longest_entry_it_guards(
    store: MemcachedStore, memcached_addr: str
) -> None:
    now = time.time()
    await store.set("/short", b"s", 10, tags=["t"])
    first = (await expiries(memcached_addr))[b"~g:t"]
    assert first >= now + 10 + GEN_SLACK - 2  # short TTLs: at least GEN_SLACK s more
    await store.set("/long", b"l", 2 * DAY, tags=["t"])
    held = await expiries(memcached_addr)
    assert held[b"~g:t"] >= held[b"/long"] + 1  # extended for the longer entry
    assert held[b"~g:t"] <= now + 4 * DAY + 10  # twice the entry's TTL, not forever
    # a shorter entry written later never shortens it
    await store.set("/short2", b"s", 5, tags=["t"])
    assert (await expiries(memcached_addr))[b"~g:t"] == held[b"~g:t"]
    assert await store.get_many(["/short", "/long", "/short2"]) == [b"s", b"l", b"s"]


async def test_a_counter_that_never_expired_is_given_an_exptime_and_keeps_its_value(
    store: MemcachedStore, memcached_raw: aiomcache.Client, memcached_addr: str
) -> None:
    # as the store wrote them before counters expired (exptime 0)
    await memcached_raw.set(b"~g:legacy", b"41", 0)
    assert (await expiries(memcached_addr))[b"~g:legacy"] == -1
    await store.set("/a", b"a", 300, tags=["legacy"])
    held = await expiries(memcached_addr)
    assert held[b"~g:legacy"] >= held[b"/a"] + 1
    assert await memcached_raw.get(b"~g:legacy") == b"41"  # same generation: entries stay valid
    assert await store.get("/a") == b"a"
    await store.purge_tags(["legacy"])
    assert await store.get("/a") is None


async def test_an_extension_never_undoes_a_purge_in_between(
    store: MemcachedStore, memcached_raw: aiomcache.Client
) -> None:
    # the adapter: a counter read, bumped by a purge, then extended with what was read
    await store.set("/a", b"a", 30, tags=["t"])
    pool = store._servers
    node = next(iter(pool.nodes.values()))
    read = (await pool.counters(node, [b"~g:t"]))[b"~g:t"]
    assert isinstance(read, Counter)
    assert await memcached_raw.incr(b"~g:t") == int(read.value) + 1  # the purge
    assert await pool.extend(node, b"~g:t", read, 3 * DAY) is False
    assert await memcached_raw.get(b"~g:t") == b"%d" % (int(read.value) + 1)
    assert await store.get("/a") is None
    # a counter read afresh is extended
    fresh = (await pool.counters(node, [b"~g:t"]))[b"~g:t"]
    assert await pool.extend(node, b"~g:t", fresh, 3 * DAY) is True
    assert (await pool.counters(node, [b"~g:t"]))[b"~g:t"].ttl > 2 * DAY
