"""MemcachedStore under faults: the aiomcache cancellation hazard, a stopped or hung server."""

from __future__ import annotations

import asyncio
import contextlib

import aiomcache
import pytest
from mirakuru import TCPExecutor

from proxy.errors import StoreError, StoreTimeout, StoreUnavailable
from proxy.stores.guard import GuardedStore
from proxy.stores.memcached import MemcachedStore

from .conftest import MakeRelay, Relay

TIMEOUT = 0.05


@pytest.fixture
async def relay(memcached_addr: str, make_relay: MakeRelay) -> Relay:
    return await make_relay(memcached_addr)


async def test_control_a_cancelled_aiomcache_call_poisons_its_connection(
    relay: Relay, memcached_raw: aiomcache.Client
) -> None:
    """The hazard itself, with aiomcache alone: this is what the store must prevent."""
    await memcached_raw.set(b"a", b"value-of-a")
    await memcached_raw.set(b"b", b"value-of-b")
    client = aiomcache.Client("127.0.0.1", relay.port, pool_size=1)
    try:
        assert await client.get(b"a") == b"value-of-a"
        relay.delay = 0.2
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(client.get(b"a"), TIMEOUT)
        relay.delay = 0
        await asyncio.sleep(0.3)  # a's late reply now waits unread on the pooled socket
        # b exists, yet the desynchronised connection answers "get b" with a's reply
        assert await client.get(b"b") is None
        assert await client.get(b"a") is None  # ...and it stays one reply behind
    finally:
        await client.close()


async def test_a_timed_out_get_never_returns_another_keys_value(
    relay: Relay, memcached_raw: aiomcache.Client
) -> None:
    # pool_size=1: every call shares the one connection a cancelled call would poison
    inner = MemcachedStore("m", [f"127.0.0.1:{relay.port}"], pool_size=1, timeout=TIMEOUT)
    store = GuardedStore(inner, TIMEOUT, breaker_failures=100)
    try:
        keys = [f"sc:{{r}}:{i}" for i in range(6)]
        for key in keys:
            await inner.set(key, f"value-of-{key}".encode(), 30)
        for i, key in enumerate(keys):
            relay.delay = 0.3
            with pytest.raises(StoreTimeout):
                await store.get(key)  # the guard's deadline cancels the waiter
            relay.delay = 0
            await asyncio.sleep(0.4)
            # the same (only) connection answers the next calls, each with its own reply
            other = keys[(i + 1) % len(keys)]
            assert await inner.get(other) == f"value-of-{other}".encode()
            assert await inner.get(key) == f"value-of-{key}".encode()
        assert store.counters["get"].timeouts == len(keys)
    finally:
        await store.aclose()


async def test_many_concurrent_timeouts_leave_every_connection_clean(relay: Relay) -> None:
    inner = MemcachedStore("m", [f"127.0.0.1:{relay.port}"], pool_size=4, timeout=TIMEOUT)
    store = GuardedStore(inner, TIMEOUT, breaker_failures=1000)
    try:
        keys = [f"sc:{{r}}:{i}" for i in range(40)]
        for key in keys:
            await inner.set(key, key.encode() * 3, 30)
        relay.delay = 0.07
        results = await asyncio.gather(*(store.get(k) for k in keys), return_exceptions=True)
        assert any(isinstance(r, StoreTimeout) for r in results)
        assert all(
            r is None or isinstance(r, StoreError) or r == k.encode() * 3
            for r, k in zip(results, keys, strict=True)
        )
        relay.delay = 0
        await asyncio.sleep(1.0)  # every late reply has been read by its own call
        for _ in range(3):
            assert await inner.get_many(keys) == [k.encode() * 3 for k in keys]
            for key in keys:
                assert await inner.get(key) == key.encode() * 3
    finally:
        await store.aclose()


async def test_two_servers_one_stopped(memcached_pair: list[TCPExecutor]) -> None:
    servers = [f"127.0.0.1:{e.port}" for e in memcached_pair]
    inner = MemcachedStore("m", servers, timeout=0.5, node_retry=0.5)
    store = GuardedStore(inner, 0.5, breaker_failures=3, breaker_cooldown=5)
    try:
        keys = [f"sc:{{r{i % 7}}}:{i:04x}" for i in range(300)]
        for key in keys:
            await store.set(key, key.encode(), 60)
        owner = {key: inner.node_of(key) for key in keys}
        counts = {server: list(owner.values()).count(server) for server in servers}
        assert min(counts.values()) > 60, counts  # keys really spread across both
        assert await store.get_many(keys) == [k.encode() for k in keys]

        dead, alive = memcached_pair[0], servers[1]
        await asyncio.to_thread(dead.stop)
        errors = 0
        for key in keys:
            try:
                value = await store.get(key)
            except StoreError:
                errors += 1  # the call that finds the server gone; later ones skip it
                value = None
            assert value == (key.encode() if owner[key] == alive else None)
        assert errors <= 2
        assert store.state == "closed"  # a lost server is not a lost backend
        assert await store.get_many(keys) == [
            k.encode() if owner[k] == alive else None for k in keys
        ]
        # writes to the dead server are skipped, writes to the live one land
        for key in keys[:20]:
            await store.set(key, b"new", 60)
        assert await store.get_many(keys[:20]) == [
            b"new" if owner[k] == alive else None for k in keys[:20]
        ]
        assert inner.node_health()[servers[0]]["down"] is True
        assert await store.ping() is False  # degraded, reported, not raised

        # the server comes back on the same port, empty: its keys refill
        await asyncio.to_thread(dead.start)
        await asyncio.sleep(0.6)
        dead_keys = [k for k in keys if owner[k] == servers[0]][:10]
        assert await store.get_many(dead_keys) == [None] * 10
        for key in dead_keys:
            await store.set(key, b"back", 60)
        assert await store.get_many(dead_keys) == [b"back"] * 10
        assert await store.ping() is True
    finally:
        await store.aclose()


async def test_a_hung_server_is_skipped_after_a_stall(
    memcached_pair: list[TCPExecutor], make_relay: MakeRelay
) -> None:
    relay = await make_relay(f"127.0.0.1:{memcached_pair[0].port}")
    servers = [f"127.0.0.1:{relay.port}", f"127.0.0.1:{memcached_pair[1].port}"]
    inner = MemcachedStore("m", servers, timeout=TIMEOUT, node_retry=5)
    store = GuardedStore(inner, TIMEOUT, breaker_failures=5)
    try:
        keys = [f"sc:{{r}}:{i}" for i in range(100)]
        for key in keys:
            await store.set(key, key.encode(), 60)
        hung = [k for k in keys if inner.node_of(k) == servers[0]]
        fine = [k for k in keys if inner.node_of(k) == servers[1]]
        relay.delay = 3.0
        timeouts = 0
        for _ in range(3):
            try:
                await store.get(hung[0])
            except StoreTimeout:
                timeouts += 1
        await asyncio.sleep(0.3)  # no reply for longer than the stall limit
        loop = asyncio.get_running_loop()
        start = loop.time()
        assert await store.get_many(hung) == [None] * len(hung)
        assert [await store.get(k) for k in hung[:10]] == [None] * 10
        assert loop.time() - start < 0.05  # skipped, not waited for
        assert await store.get_many(fine) == [k.encode() for k in fine]
        assert timeouts == 3
        assert inner.node_health()[servers[0]]["down"] is True
        assert store.state == "closed"  # skipped keys are misses, not failures
    finally:
        relay.delay = 0
        await store.aclose()


async def test_a_shared_tag_does_not_tie_servers_together(
    memcached_pair: list[TCPExecutor],
) -> None:
    """Every entry carries its route's tag; losing one server must still cost only its keys."""
    servers = [f"127.0.0.1:{e.port}" for e in memcached_pair]
    inner = MemcachedStore("m", servers, timeout=0.5, node_retry=5)
    store = GuardedStore(inner, 0.5, breaker_failures=3)
    try:
        keys = [f"sc:r:{i:04x}" for i in range(100)]
        for key in keys:
            await store.set(key, key.encode(), 60, tags=["r:route", f"p:{key}"])
        alive = servers[1]
        await asyncio.to_thread(memcached_pair[0].stop)
        with contextlib.suppress(StoreError):
            await store.get(next(k for k in keys if inner.node_of(k) == servers[0]))
        expected = [k.encode() if inner.node_of(k) == alive else None for k in keys]
        assert await store.get_many(keys) == expected
        assert any(expected)
        # a purge still reaches the live server, and says it cannot count
        assert await store.purge_tags(["r:route"]) == -1
        assert await store.get_many(keys) == [None] * len(keys)
    finally:
        await store.aclose()


@pytest.mark.parametrize("soft", [False, True])
async def test_a_purge_missed_by_an_unreachable_server_is_replayed_on_it(
    memcached_pair: list[TCPExecutor], make_relay: MakeRelay, soft: bool
) -> None:
    """A soft purge too, as a purge: what the server missed is not known to have marked
    anything there (see ``TagCounters.replay``)."""
    relay = await make_relay(f"127.0.0.1:{memcached_pair[0].port}")
    servers = [f"127.0.0.1:{relay.port}", f"127.0.0.1:{memcached_pair[1].port}"]
    inner = MemcachedStore("m", servers, timeout=0.5, node_retry=0.3)
    store = GuardedStore(inner, 0.5, breaker_failures=50)
    try:
        keys = [f"sc:r:{i:04x}" for i in range(60)]
        for key in keys:
            tags = ["purged"] if int(key[-1], 16) % 2 else ["kept"]
            await store.set(key, key.encode(), 60, tags=tags)
        behind = [k for k in keys if inner.node_of(k) == servers[0]]
        assert behind
        # the server stays up with its data, but this proxy cannot reach it
        relay.refuse = True
        await relay.cut()
        with contextlib.suppress(StoreError):
            await store.get(behind[0])
        purge = store.soften_tags if soft else store.purge_tags
        assert await purge(["purged"]) == -1
        assert inner.node_health()[servers[0]]["down"] is True
        # reachable again: the missed purge is applied before its entries are served
        relay.refuse = False
        await asyncio.sleep(0.35)
        assert await store.get(behind[0]) is None  # triggers the replay, serves nothing yet
        for _ in range(50):
            if not inner.node_health()[servers[0]]["down"]:
                break
            await asyncio.sleep(0.02)
        values = await store.get_many(behind)
        assert values == [None if int(k[-1], 16) % 2 else k.encode() for k in behind]
    finally:
        await store.aclose()


async def test_a_server_hanging_up_mid_command_never_spins_the_loop() -> None:
    """Raw aiomcache spins forever (never yielding) when the server closes a connection
    while a set/add/incr/delete waits for its reply; the store must raise instead."""

    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readline()
        await asyncio.sleep(0.2)
        writer.close()  # FIN, no reply

    server = await asyncio.start_server(hang_up, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.01)

    ticker = asyncio.create_task(tick())
    store = GuardedStore(MemcachedStore("m", [f"127.0.0.1:{port}"], node_retry=0.01), 1.0)
    try:
        with pytest.raises(StoreUnavailable):
            await store.lock("k", 5)  # add: a simple command
        with pytest.raises(StoreUnavailable):
            await store.inner.delete(["k"])  # straight to the backend: delete is simple too
        assert ticks > 5  # the loop kept running throughout
    finally:
        ticker.cancel()
        await store.aclose()
        server.close()
        await server.wait_closed()
