"""Turn the policy's backend configs into running stores, and close them again.

This is the one place that knows which class serves which ``type:`` and that every
shared backend (Redis, Memcached) is wrapped in ``GuardedStore`` with its own deadline
and breaker. A tiered backend reuses the very stores its ``l1``/``l2`` names build, so
memory budgets, pools and breakers are never duplicated.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from proxy.clock import Clock
from proxy.policy.load import Backend, MemcachedBackend, MemoryBackend, RedisBackend, TieredBackend
from proxy.stores.base import Store
from proxy.stores.guard import GuardedStore
from proxy.stores.memcached import MemcachedStore
from proxy.stores.memory import MemoryStore
from proxy.stores.redis import RedisStore
from proxy.stores.tiered import TieredStore

log = logging.getLogger(__name__)


def build_store(name: str, config: Backend, clock: Clock | None = None) -> Store:
    """One non-tiered backend (tiered ones need their layers: see ``build_stores``)."""
    if isinstance(config, MemoryBackend):
        return MemoryStore(name, config.max_size, clock)
    if isinstance(config, RedisBackend):
        redis = RedisStore(
            name,
            config.url,
            cluster=config.cluster,
            nodes=config.nodes,
            pool_size=config.pool_size,
            connect_timeout=config.connect_timeout,
            key_prefix=config.key_prefix,
        )
        return _guard(redis, config, clock)
    if isinstance(config, MemcachedBackend):
        memcached = MemcachedStore(
            name,
            config.servers,
            pool_size=config.pool_size,
            timeout=config.timeout,
            item_size_max=config.item_size_max,
            key_prefix=config.key_prefix,
            node_retry=config.breaker.cooldown,
            clock=clock,
        )
        return _guard(memcached, config, clock)
    raise TypeError(f"backend {name!r}: a {config.type} backend is built by build_stores")


def _guard(store: Store, config: RedisBackend | MemcachedBackend, clock: Clock | None) -> Store:
    return GuardedStore(
        store, config.timeout, config.breaker.failures, config.breaker.cooldown, clock
    )


def build_stores(
    backends: Mapping[str, Backend],
    clock: Clock | None = None,
    *,
    keep: Mapping[str, Store] | None = None,
) -> dict[str, Store]:
    """Every backend of a policy by name; tiered ones share their layers' instances.

    ``keep``: running stores (by backend name) to use instead of new ones, for a reload
    that left their configuration unchanged; a tiered store is always made anew over
    its layers.
    """
    keep = keep or {}
    stores: dict[str, Store] = {}
    for name, config in backends.items():
        if not isinstance(config, TieredBackend):
            stores[name] = keep[name] if name in keep else build_store(name, config, clock)
    for name, config in backends.items():
        if isinstance(config, TieredBackend):
            # the policy loader has checked l1 is memory and l2 redis/memcached
            stores[name] = TieredStore(name, stores[config.l1], stores[config.l2], config.l1_ttl)
    return stores


def replaced(running: Mapping[str, Store], stores: Mapping[str, Store]) -> dict[str, Store]:
    """The stores of ``running`` that ``stores`` no longer uses, to close once nothing
    does (``close_stores``); tiered stores are left out: their layers are listed under
    their own names, and one may be kept."""
    kept = {id(store) for store in stores.values()}
    return {
        name: store
        for name, store in running.items()
        if id(store) not in kept and not isinstance(store, TieredStore)
    }


async def close_stores(stores: Mapping[str, Store]) -> None:
    """Close every distinct underlying store once (tiered layers are in the mapping too)."""
    closed: set[int] = set()
    layers: list[Store] = []
    for store in stores.values():
        layers.extend((store.l1, store.l2) if isinstance(store, TieredStore) else (store,))
    for store in layers:
        if id(store) in closed:
            continue
        closed.add(id(store))
        try:
            await store.aclose()
        except Exception:
            log.exception("closing store %r failed", store.name)
