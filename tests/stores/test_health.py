"""``Store.health()``: what ``/readyz`` and the report read of each store, without I/O."""

from __future__ import annotations

import pytest

from proxy.errors import StoreUnavailable
from proxy.stores.base import StoreHealth
from proxy.stores.guard import GuardedStore
from proxy.stores.memcached import MemcachedStore
from proxy.stores.memory import MemoryStore
from proxy.stores.redis import RedisStore
from proxy.stores.tiered import TieredStore


async def test_a_guarded_store_shows_its_breaker_and_a_tiered_one_its_l2s(
    memcached_addr: str,
) -> None:
    down = GuardedStore(RedisStore("down", "redis://127.0.0.1:1/0"), 0.5, breaker_failures=2)
    up = GuardedStore(MemcachedStore("up", [memcached_addr]), 0.5)
    tiered = TieredStore("t", MemoryStore("l1", 1024**2), down, l1_ttl=5)
    try:
        await up.set("k", b"v", 10)
        assert up.health() == StoreHealth(breaker="closed", write_refusals=0)
        assert tiered.health().breaker == "closed"
        for _ in range(2):
            with pytest.raises(StoreUnavailable):
                await down.set("k", b"v", 10)
        assert down.health().breaker == "open"
        assert tiered.health() == down.health()
        assert down.health().write_refusals == 0  # unreachable is not full
    finally:
        await tiered.aclose()
        await up.aclose()
