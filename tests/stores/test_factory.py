"""build_stores/close_stores: policy backends become guarded, shared, closable stores."""

from __future__ import annotations

from proxy.clock import FakeClock
from proxy.policy.load import parse_policy
from proxy.stores.factory import build_stores, close_stores, replaced
from proxy.stores.guard import GuardedStore
from proxy.stores.memcached import MemcachedStore
from proxy.stores.memory import MemoryStore
from proxy.stores.redis import RedisStore
from proxy.stores.tiered import TieredStore


def policy(redis_url: str, memcached_addr: str, cluster: str) -> str:
    return f"""
version: 1
origin: http://127.0.0.1:9
backends:
  local: {{type: memory, max_size: 1MiB}}
  shared:
    type: redis
    url: {redis_url}
    timeout: 500ms
    key_prefix: "app:"
    breaker: {{failures: 3, cooldown: 2s}}
  cluster: {{type: redis, nodes: ["{cluster}"], timeout: 1s}}
  mc: {{type: memcached, servers: ["{memcached_addr}"], item_size_max: 1MiB, timeout: 400ms}}
  hot: {{type: tiered, l1: local, l2: shared, l1_ttl: 3s}}
  hot_mc: {{type: tiered, l1: local, l2: mc}}
defaults: {{backend: shared}}
"""


async def test_every_backend_type_is_built_and_works(
    redis_url: str, memcached_addr: str, cluster_nodes: list[str]
) -> None:
    loaded = parse_policy(policy(redis_url, memcached_addr, cluster_nodes[0]), "p.yaml")
    clock = FakeClock()
    stores = build_stores(loaded.policy.backends, clock)
    try:
        assert set(stores) == {"local", "shared", "cluster", "mc", "hot", "hot_mc"}
        assert isinstance(stores["local"], MemoryStore)
        shared, cluster, mc = stores["shared"], stores["cluster"], stores["mc"]
        assert isinstance(shared, GuardedStore)
        assert isinstance(shared.inner, RedisStore)
        assert (shared.timeout, shared.breaker_failures, shared.breaker_cooldown) == (0.5, 3, 2)
        assert isinstance(cluster, GuardedStore)
        assert isinstance(cluster.inner, RedisStore)
        assert cluster.inner.cluster is True
        assert cluster.timeout == 1.0  # the first call also learns the slot map
        assert isinstance(mc, GuardedStore)
        assert isinstance(mc.inner, MemcachedStore)
        assert mc.timeout == 0.4
        hot = stores["hot"]
        assert isinstance(hot, TieredStore)
        # the layers are the very instances the policy names: one pool, one breaker
        assert hot.l1 is stores["local"]
        assert hot.l2 is shared
        assert hot.l1_ttl == 3
        hot_mc = stores["hot_mc"]
        assert isinstance(hot_mc, TieredStore)
        assert hot_mc.l2 is mc
        for name, store in stores.items():
            await store.set(f"sc:{{{name}}}:1", name.encode(), 30)
            assert await store.get(f"sc:{{{name}}}:1") == name.encode()
            assert await store.ping() is True
    finally:
        await close_stores(stores)
    await close_stores(stores)  # closing twice is harmless


RELOADED = """
version: 1
origin: http://127.0.0.1:9
backends:
  local: {{type: memory, max_size: 1MiB}}
  shared: {{type: redis, url: {redis_url}, timeout: {timeout}}}
  hot: {{type: tiered, l1: local, l2: shared}}
defaults: {{backend: shared}}
"""


async def test_a_reload_keeps_what_did_not_change_and_retires_the_rest(redis_url: str) -> None:
    """One factory for start and reload: unchanged backends keep their running store (and
    its entries), a changed one is made anew, a tiered one is rebuilt over the layers now
    in use, and ``replaced`` names what the reload no longer uses, layers only."""
    first = parse_policy(RELOADED.format(redis_url=redis_url, timeout="500ms"), "p.yaml")
    second = parse_policy(RELOADED.format(redis_url=redis_url, timeout="1s"), "p.yaml")
    running = build_stores(first.policy.backends)
    await running["local"].set("sc:{r}:kept", b"entry", 30)
    unchanged = {
        name: store
        for name, store in running.items()
        if first.policy.backends[name] == second.policy.backends[name]
    }
    assert set(unchanged) == {"local", "hot"}  # hot's own settings did not change
    stores = build_stores(second.policy.backends, keep=unchanged)
    try:
        assert stores["local"] is running["local"]
        assert await stores["local"].get("sc:{r}:kept") == b"entry"
        shared = stores["shared"]
        assert shared is not running["shared"]
        assert isinstance(shared, GuardedStore)
        assert shared.timeout == 1.0
        hot = stores["hot"]
        assert isinstance(hot, TieredStore)
        assert hot is not running["hot"]
        assert hot.l1 is running["local"]
        assert hot.l2 is shared
        assert replaced(running, stores) == {"shared": running["shared"]}
        assert replaced(stores, stores) == {}
    finally:
        await close_stores(replaced(running, stores))
        await close_stores(stores)
