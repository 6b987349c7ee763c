"""MemcachedStore's read path: one round trip per hit, concurrent reads batched per server.

The relay in front of memcached counts what reaches the server, so "one round trip"
is checked as the server sees it, not by timing.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator

import pytest
from mirakuru import TCPExecutor

from proxy.errors import StoreUnavailable
from proxy.stores import memcached
from proxy.stores.memcached import MemcachedStore

from .conftest import MakeRelay, Relay

MIB = 1024**2


@pytest.fixture
async def relay(memcached_addr: str, make_relay: MakeRelay) -> Relay:
    return await make_relay(memcached_addr)


@pytest.fixture
async def store(relay: Relay) -> AsyncIterator[MemcachedStore]:
    store = MemcachedStore("m", [f"127.0.0.1:{relay.port}"], key_prefix="b:", timeout=1.0)
    yield store
    await store.aclose()


@pytest.fixture
async def writer(memcached_addr: str) -> AsyncIterator[MemcachedStore]:
    """Another process's store on the same server (direct, not through the relay)."""
    store = MemcachedStore("w", [memcached_addr], key_prefix="b:", timeout=1.0)
    yield store
    await store.aclose()


async def held_back_read(
    store: MemcachedStore, relay: Relay, key: str, hold: float = 1.0
) -> asyncio.Task[bytes | None]:
    """A read whose reply the relay holds for ``hold`` seconds (later replies pass at once)."""
    relay.delay = hold
    read = asyncio.ensure_future(store.get(key))
    await asyncio.sleep(0.1)  # its reply has reached the relay and waits there
    relay.delay = 0
    return read


async def test_a_tagged_hit_is_one_round_trip(store: MemcachedStore, relay: Relay) -> None:
    await store.set("sc:{r}:1", b"v", 30, tags=["r:r", "p:/a", "p:/a/1"])
    before = relay.requests
    assert await store.get("sc:{r}:1") == b"v"
    assert relay.requests - before == 1  # entry and its three counters in one multi-get


async def test_concurrent_reads_share_one_multi_get(store: MemcachedStore, relay: Relay) -> None:
    keys = [f"sc:{{r}}:{i}" for i in range(50)]
    for i, key in enumerate(keys):
        await store.set(key, f"value-{i}".encode(), 30, tags=["r:r", f"p:/{i}"])
    before = relay.requests
    values = await asyncio.gather(*(store.get(key) for key in keys))
    assert relay.requests - before == 1
    assert values == [f"value-{i}".encode() for i in range(50)]


async def test_reads_queued_while_one_is_out_leave_together(relay: Relay) -> None:
    # queue_wait longer than the round trip: the queued reads wait for the read out
    store = MemcachedStore("m", [f"127.0.0.1:{relay.port}"], timeout=1.0, queue_wait=10)
    try:
        keys = [f"sc:{{r}}:{i}" for i in range(8)]
        for key in keys:
            await store.set(key, key.encode(), 30, tags=["r:r"])
        before = relay.requests
        first = await held_back_read(store, relay, keys[0], hold=0.3)
        queued = [asyncio.ensure_future(store.get(key)) for key in keys[1:]]
        await asyncio.sleep(0.05)  # time enough to go out, were they not waiting
        assert relay.requests - before == 1  # the others wait for the read out...
        assert await first == keys[0].encode()
        assert await asyncio.gather(*queued) == [key.encode() for key in keys[1:]]
        assert relay.requests - before == 2  # ...then leave as one multi-get
    finally:
        await store.aclose()


async def test_keys_beyond_the_remembered_ones_still_hit_and_purge(
    store: MemcachedStore, relay: Relay, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(memcached, "_PLANS", 4)
    keys = [f"sc:{{r}}:{i}" for i in range(10)]
    for key in keys:
        await store.set(key, key.encode(), 30, tags=["r:r", f"p:/{key}"])
    before = relay.requests
    assert await store.get(keys[0]) == keys[0].encode()  # forgotten: its tags are learned
    assert relay.requests - before == 2
    before = relay.requests
    assert await store.get(keys[-1]) == keys[-1].encode()  # remembered
    assert relay.requests - before == 1
    await store.purge_tags(["r:r"])
    assert await store.get_many(keys) == [None] * len(keys)


async def test_each_caller_of_a_batch_gets_its_own_answer(store: MemcachedStore) -> None:
    big = os.urandom(MIB + 3)
    await store.set("sc:{r}:hit", b"hit", 30, tags=["keep"])
    await store.set("sc:{r}:purged", b"gone", 30, tags=["drop"])
    await store.set("sc:{r}:plain", b"plain", 30)
    await store.set("sc:{r}:big", big, 30, tags=["keep"])
    await store.purge_tags(["drop"])
    keys = ["sc:{r}:hit", "sc:{r}:purged", "sc:{r}:missing", "sc:{r}:plain", "sc:{r}:big"]
    keys += ["sc:{r}:hit"]  # the same key twice in one batch
    expected = [b"hit", None, None, b"plain", big, b"hit"]
    assert await asyncio.gather(*(store.get(key) for key in keys)) == expected
    assert await store.get_many(keys) == expected


async def test_a_cancelled_reader_leaves_the_batch_to_the_others(
    store: MemcachedStore, relay: Relay
) -> None:
    keys = [f"sc:{{r}}:{i}" for i in range(20)]
    for key in keys:
        await store.set(key, key.encode(), 30, tags=["t"])
    relay.delay = 0.2
    reads = [asyncio.ensure_future(store.get(key)) for key in keys]
    await asyncio.sleep(0.05)  # the multi-get is on the wire
    for read in reads[::2]:
        read.cancel()
    results = await asyncio.gather(*reads, return_exceptions=True)
    relay.delay = 0
    for i, (key, result) in enumerate(zip(keys, results, strict=True)):
        if i % 2:
            assert result == key.encode()
        else:
            assert isinstance(result, asyncio.CancelledError)
    # the connection carried the whole reply: every later read gets its own value
    for _ in range(3):
        assert await store.get_many(keys) == [key.encode() for key in keys]


async def test_a_tag_this_process_never_saw_is_still_checked(
    store: MemcachedStore, writer: MemcachedStore, relay: Relay
) -> None:
    """The tags a process remembers for a key are only a hint: another process may have
    rewritten the entry with more tags, and a purge of one of those must still count."""
    await writer.set("sc:{r}:1", b"v1", 30, tags=["a"])
    assert await store.get("sc:{r}:1") == b"v1"  # learns ["a"] here
    await writer.set("sc:{r}:1", b"v2", 30, tags=["a", "b"])
    before = relay.requests
    assert await store.get("sc:{r}:1") == b"v2"
    assert relay.requests - before == 2  # the counter of "b" needed one more round trip
    await writer.purge_tags(["b"])
    assert await store.get("sc:{r}:1") is None
    assert await store.get_many(["sc:{r}:1"]) == [None]


async def test_a_tag_dropped_elsewhere_is_forgotten(
    store: MemcachedStore, writer: MemcachedStore
) -> None:
    await store.set("sc:{r}:1", b"v1", 30, tags=["a", "b"])
    await writer.set("sc:{r}:1", b"v2", 30, tags=["a"])
    await store.purge_tags(["b"])  # no longer the entry's tag: it stays
    assert await store.get("sc:{r}:1") == b"v2"
    await writer.set("sc:{r}:1", b"v3", 30)
    assert await store.get("sc:{r}:1") == b"v3"
    await store.purge_tags(["a"])
    assert await store.get("sc:{r}:1") == b"v3"


async def test_a_batch_to_a_stopped_server_fails_every_reader(
    memcached_pair: list[TCPExecutor],
) -> None:
    inner = MemcachedStore("m", [f"127.0.0.1:{memcached_pair[0].port}"], node_retry=5)
    try:
        await inner.set("sc:{r}:1", b"v", 30, tags=["t"])
        await asyncio.to_thread(memcached_pair[0].stop)
        results = await asyncio.gather(
            *(inner.get("sc:{r}:1") for _ in range(5)), return_exceptions=True
        )
        assert all(isinstance(r, StoreUnavailable) for r in results), results
        # skipped from now on: misses at once, never an error per reader
        assert await asyncio.gather(*(inner.get("sc:{r}:1") for _ in range(5))) == [None] * 5
    finally:
        await inner.aclose()


async def test_reads_pending_at_close_fail_cleanly(store: MemcachedStore) -> None:
    await store.set("sc:{r}:1", b"v", 30)
    read = asyncio.ensure_future(store.get("sc:{r}:1"))
    await asyncio.sleep(0)  # queued in this tick's batch, not yet sent
    await store.aclose()
    with pytest.raises(StoreUnavailable):
        await read
    with pytest.raises(StoreUnavailable):
        await store.get("sc:{r}:1")


async def test_reads_queued_behind_a_slow_read_are_not_held_by_it(
    store: MemcachedStore, relay: Relay
) -> None:
    for key in ("a", "b", "c"):
        await store.set(key, key.encode(), 30)
    slow = await held_back_read(store, relay, "a")
    before = relay.requests
    # after queue_wait the queued reads leave together on another connection
    assert await asyncio.gather(store.get("b"), store.get("c")) == [b"b", b"c"]
    assert relay.requests - before == 1
    assert not slow.done()
    assert await slow == b"a"
    assert await store.get_many(["a", "b", "c"]) == [b"a", b"b", b"c"]


async def test_a_slow_read_does_not_hold_back_writes(store: MemcachedStore, relay: Relay) -> None:
    await store.set("a", b"a", 30)
    slow = await held_back_read(store, relay, "a")
    await store.set("b", b"b", 30, tags=["t"])  # on a connection of its own
    assert not slow.done()
    assert await slow == b"a"
    assert await store.get("b") == b"b"
