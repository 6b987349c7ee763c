"""A full memcached is loud: ``SERVER_ERROR out of memory`` becomes ``StoreFull``, counted,
logged (rate-limited) and shown by ``health()``, without opening the breaker.

The server is a real memcached with 2 MiB and ``-M`` (refuse writes instead of evicting),
filled with 50 KB values until it refuses them.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import pytest

from proxy.clock import FakeClock
from proxy.errors import StoreFull
from proxy.stores.guard import REFUSAL_LOG_EVERY, GuardedStore
from proxy.stores.memcached import MemcachedStore

from .conftest import own_memcached

VALUE = b"x" * 50_000


@pytest.fixture
async def guard(full_memcached: str) -> AsyncIterator[tuple[GuardedStore, FakeClock]]:
    clock = FakeClock()
    store = MemcachedStore("mc", [full_memcached], timeout=1.0)
    guard = GuardedStore(store, 1.0, breaker_failures=2, clock=clock)
    yield guard, clock
    await guard.aclose()


async def fill(guard: GuardedStore, start: int, count: int) -> int:
    """Write ``count`` 50 KB entries; answers how many the server refused."""
    refusals: list[str] = []
    for i in range(start, start + count):
        try:
            await guard.set(f"/big/{i}", VALUE, 600, tags=["t"])
        except StoreFull as exc:
            refusals.append(str(exc))
    assert all("SERVER_ERROR out of memory" in message for message in refusals)
    return len(refusals)


async def test_out_of_memory_is_store_full_counted_and_not_a_breaker_failure(
    guard: tuple[GuardedStore, FakeClock],
) -> None:
    store, _ = guard
    refused = await fill(store, 0, 80)
    assert refused > 40  # 2 MiB hold about 38 of them
    counters = store.counters["set"]
    assert counters.oom == refused
    assert counters.errors == counters.timeouts == counters.rejected == 0
    assert store.state == "closed"  # full, not down: reads still answer
    assert await store.get("/big/0") == VALUE
    health = store.health()
    assert health.breaker == "closed"
    assert health.write_refusals == refused
    assert health.last_refusal == "set"
    assert health.last_refusal_at == FakeClock().time()


async def test_refusals_are_logged_once_per_interval_with_the_count_not_logged(
    guard: tuple[GuardedStore, FakeClock], caplog: pytest.LogCaptureFixture
) -> None:
    store, clock = guard
    caplog.set_level(logging.WARNING, logger="proxy.stores.guard")
    first = await fill(store, 0, 80)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert getattr(warnings[0], "backend", None) == "mc"
    assert getattr(warnings[0], "command", None) == "set"
    assert "backend mc refused a write (set): " in warnings[0].getMessage()
    assert "0 more refusals" in warnings[0].getMessage()

    clock.advance(REFUSAL_LOG_EVERY)
    second = await fill(store, 80, 5)
    assert second == 5
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2
    # the refusals after the first warning, up to the interval's end, are counted in
    assert f"{first - 1} more refusals in the last 10 s not logged" in warnings[1].getMessage()


async def test_an_item_over_the_servers_limit_is_a_refusal_not_a_breaker_failure() -> None:
    # item_size_max 1 MiB (the default) over a memcached started with -I 512k: a 700 KB
    # value is one item to the store, and the server refuses it every time
    executor = own_memcached("-I", "512k")
    port = executor.port
    executor.start()
    guard = GuardedStore(MemcachedStore("mc", [f"127.0.0.1:{port}"]), 1.0, breaker_failures=2)
    try:
        for i in range(5):
            with pytest.raises(StoreFull, match="too large for cache"):
                await guard.set(f"/big/{i}", b"x" * 700_000, 60)
        assert guard.counters["set"].oom == 5
        assert guard.state == "closed"
        await guard.set("/small", b"s", 60)
        assert await guard.get("/small") == b"s"
    finally:
        await guard.aclose()
        executor.stop()
