"""RedisStore's read path: the reads of a round trip share one command on the store's own
connection; cancelled readers, a stuck or dropped connection and a restarted Redis.

Commands are counted as the server sees them (``INFO commandstats``), not by timing.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from mirakuru import TCPExecutor
from redis.asyncio import Redis

from proxy.errors import StoreError, StoreUnavailable
from proxy.stores.redis import RedisStore

from .conftest import MakeRelay, Relay, free_port, redis_executor

MIB = 1024**2


@pytest.fixture
async def raw(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    await client.config_resetstat()
    yield client
    await client.aclose()


@pytest.fixture
async def relay(redis_url: str, make_relay: MakeRelay) -> Relay:
    return await make_relay(redis_url.removeprefix("redis://").removesuffix("/0"))


@pytest.fixture
async def store(relay: Relay) -> AsyncIterator[RedisStore]:
    store = RedisStore("r", f"redis://127.0.0.1:{relay.port}/0", key_prefix="b:")
    yield store
    await store.aclose()


async def read_commands(raw: Redis) -> int:
    """How many read calls (the READ script, by SHA1 or text) the server has run since the
    fixture reset."""
    stats = await raw.info("commandstats")
    return sum(stats.get(f"cmdstat_{name}", {}).get("calls", 0) for name in ("evalsha", "eval"))


async def test_concurrent_reads_share_one_command(store: RedisStore, raw: Redis) -> None:
    keys = [f"sc:{{r{i % 7}}}:{i}" for i in range(50)]
    for i, key in enumerate(keys):
        await store.set(key, f"value-{i}".encode(), 30)
    values = await asyncio.gather(*(store.get(key) for key in keys))
    assert values == [f"value-{i}".encode() for i in range(50)]
    assert await read_commands(raw) == 1


async def test_each_caller_of_a_batch_gets_its_own_answer(store: RedisStore, raw: Redis) -> None:
    big = os.urandom(MIB + 3)
    await store.set("sc:{r}:hit", b"hit", 30)
    await store.set("plain key", b"plain", 30)
    await store.set("sc:{r}:big", big, 30)
    keys = ["sc:{r}:hit", "sc:{r}:missing", "plain key", "sc:{r}:big", "sc:{r}:hit"]
    expected = [b"hit", None, b"plain", big, b"hit"]
    assert await asyncio.gather(*(store.get(key) for key in keys)) == expected
    # one hot key read by many requests at once is asked for once
    assert await asyncio.gather(*(store.get("sc:{r}:hit") for _ in range(30))) == [b"hit"] * 30
    assert await read_commands(raw) == 2


async def test_reads_arriving_while_one_is_out_leave_together(
    store: RedisStore, relay: Relay, raw: Redis
) -> None:
    keys = [f"sc:{{r}}:{i}" for i in range(21)]
    for key in keys:
        await store.set(key, key.encode(), 30)
    relay.delay = 0.1
    first = asyncio.ensure_future(store.get(keys[0]))
    await asyncio.sleep(0.03)  # the GET is out, its answer held back
    rest = [asyncio.ensure_future(store.get(key)) for key in keys[1:]]
    assert await asyncio.gather(first, *rest) == [key.encode() for key in keys]
    assert await read_commands(raw) == 2


async def test_a_small_read_does_not_wait_behind_a_big_one(store: RedisStore, relay: Relay) -> None:
    """A reply that takes long to arrive (here: many chunks, each held back) keeps its
    connection busy; reads that come meanwhile go on another connection."""
    big = os.urandom(8 * MIB)
    await store.set("sc:{r}:big", big, 30)
    await store.set("sc:{r}:small", b"small", 30)
    relay.delay = 0.02  # per chunk of at most 64 KiB: the big reply takes seconds
    slow = asyncio.ensure_future(store.get("sc:{r}:big"))
    await asyncio.sleep(0.05)
    quick = asyncio.ensure_future(store.get("sc:{r}:small"))
    done, _ = await asyncio.wait([slow, quick], return_when=asyncio.FIRST_COMPLETED)
    assert done == {quick}
    assert quick.result() == b"small"
    relay.delay = 0
    assert await slow == big


async def test_a_cancelled_reader_leaves_the_batch_to_the_others(
    store: RedisStore, relay: Relay
) -> None:
    keys = [f"sc:{{r}}:{i}" for i in range(20)]
    for key in keys:
        await store.set(key, key.encode(), 30)
    relay.delay = 0.2
    reads = [asyncio.ensure_future(store.get(key)) for key in keys]
    await asyncio.sleep(0.05)  # the MGET is out
    for read in reads[::2]:
        read.cancel()
    results = await asyncio.gather(*reads, return_exceptions=True)
    relay.delay = 0
    for i, (key, result) in enumerate(zip(keys, results, strict=True)):
        if i % 2:
            assert result == key.encode()
        else:
            assert isinstance(result, asyncio.CancelledError)
    for _ in range(3):  # the connection is in step: every later read gets its own value
        assert await asyncio.gather(*(store.get(key) for key in keys)) == [
            key.encode() for key in keys
        ]


async def test_a_reply_nobody_waits_for_never_reaches_a_later_read(
    store: RedisStore, relay: Relay
) -> None:
    """Every reader of the command out gave up (their deadline): the next read does not
    queue behind that reply on the same connection, nor receive it."""
    await store.set("sc:{r}:a", b"a", 30)
    await store.set("sc:{r}:b", b"b", 30)
    relay.delay = 0.5
    late = asyncio.ensure_future(store.get("sc:{r}:a"))
    await asyncio.sleep(0.05)
    late.cancel()
    relay.delay = 0
    assert await store.get("sc:{r}:b") == b"b"
    assert await store.get("sc:{r}:a") == b"a"


async def test_a_dropped_connection_fails_the_reads_out_then_reconnects(
    store: RedisStore, relay: Relay
) -> None:
    await store.set("sc:{r}:1", b"v", 30)
    relay.delay = 0.5
    reads = [asyncio.ensure_future(store.get("sc:{r}:1")) for _ in range(5)]
    await asyncio.sleep(0.05)
    await relay.cut()
    results = await asyncio.gather(*reads, return_exceptions=True)
    assert all(isinstance(result, StoreUnavailable) for result in results), results
    relay.delay = 0
    assert await store.get("sc:{r}:1") == b"v"


async def test_reads_pending_at_close_fail(store: RedisStore, relay: Relay) -> None:
    await store.set("sc:{r}:1", b"v", 30)
    relay.delay = 0.5
    reads = [asyncio.ensure_future(store.get("sc:{r}:1")) for _ in range(3)]
    await asyncio.sleep(0.05)
    await store.aclose()
    results = await asyncio.gather(*reads, return_exceptions=True)
    assert all(isinstance(result, StoreUnavailable) for result in results), results
    with pytest.raises(StoreUnavailable):
        await store.get("sc:{r}:1")


async def test_every_operation_works_at_once_after_a_redis_restart(
    own_redis: TCPExecutor,
) -> None:
    """Idle connections (the read connection, pooled ones) closed by the restart are
    noticed before use: no operation fails because of the restart."""
    store = RedisStore("r", f"redis://127.0.0.1:{own_redis.port}/0")
    try:
        await store.set("sc:{r}:1", b"before", 30)
        assert await store.get("sc:{r}:1") == b"before"
        await asyncio.to_thread(own_redis.stop)
        await asyncio.to_thread(own_redis.start)  # same port, empty
        await asyncio.sleep(0.05)  # the closed sockets' EOF reaches the loop
        assert await store.get("sc:{r}:1") is None
        await store.set("sc:{r}:1", b"after", 30)
        assert await store.lock("sc:{r}:1", 5) is not None
        assert await store.get("sc:{r}:1") == b"after"
    finally:
        await store.aclose()


async def test_password_and_database_of_the_url_apply_to_reads(tmp_path: Path) -> None:
    port = free_port()
    server = redis_executor(port, tmp_path / "redis", "--requirepass", "s3cret")
    server.start()
    try:
        store = RedisStore("r", f"redis://:s3cret@127.0.0.1:{port}/3")
        other_db = RedisStore("r", f"redis://:s3cret@127.0.0.1:{port}/0")
        wrong = RedisStore("r", f"redis://:nope@127.0.0.1:{port}/3")
        try:
            await store.set("sc:{r}:1", b"v", 30)
            assert await asyncio.gather(store.get("sc:{r}:1"), store.get("sc:{r}:2")) == [
                b"v",
                None,
            ]
            assert await other_db.get("sc:{r}:1") is None
            with pytest.raises(StoreError):
                await wrong.get("sc:{r}:1")
        finally:
            for each in (store, other_db, wrong):
                await each.aclose()
    finally:
        server.stop()
