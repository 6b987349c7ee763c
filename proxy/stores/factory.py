"""Turn the policy's backend configs into running stores (memory only, for now)."""

from __future__ import annotations

from collections.abc import Mapping

from proxy.clock import Clock
from proxy.policy import Backend, MemoryBackend
from proxy.stores.base import Store
from proxy.stores.memory import MemoryStore


def build_stores(backends: Mapping[str, Backend], clock: Clock | None = None) -> dict[str, Store]:
    stores: dict[str, Store] = {}
    for name, config in backends.items():
        if isinstance(config, MemoryBackend):
            stores[name] = MemoryStore(name, config.max_size, clock)
        else:
            raise NotImplementedError(f"backend type {config.type} arrives with the stores work")
    return stores


async def close_stores(stores: Mapping[str, Store]) -> None:
    for store in stores.values():
        await store.aclose()
