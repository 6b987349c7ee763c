"""The ``Store`` protocol every cache backend implements: bytes and TTLs, nothing more.

A store knows nothing of HTTP. It keeps opaque values under string keys for a
bounded time, indexes them by tag, and (where it can) offers short leases for
coalescing. Library exceptions never leave a store: they become ``StoreError``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable


@dataclass(frozen=True, slots=True)
class StoreStats:
    """Point-in-time figures a store can report (memory stores count exactly)."""

    entries: int | None = None
    bytes: int | None = None
    evictions: int | None = None


@dataclass(frozen=True, slots=True)
class StoreHealth:
    """What ``/readyz`` and ``sidecache report`` show of one store, by backend name.

    ``breaker`` is ``closed``, ``open`` or ``half_open`` for a guarded shared store and
    ``n/a`` for a store without one. ``write_refusals`` counts the writes the backend
    refused since start while answering (``StoreFull``: Redis ``OOM``, Memcached
    ``SERVER_ERROR out of memory`` above all): its breaker stays closed, but it caches
    nothing new. ``last_refusal`` names the operation of the latest one and
    ``last_refusal_at`` its wall-clock time (unix seconds).
    """

    breaker: str = "n/a"
    write_refusals: int = 0
    last_refusal: str | None = None
    last_refusal_at: float | None = None


@runtime_checkable
class Store(Protocol):
    """An async key/value cache with TTLs, tags and leases.

    - ``get``/``get_many`` return ``None`` for a miss, never raise for a missing key.
    - ``set`` stores ``value`` for ``ttl`` seconds (> 0; nothing lives forever) and,
      when ``tags`` are given, indexes the key under each tag so ``purge_tags`` finds it.
    - ``delete`` and ``purge_tags`` answer how many entries were removed, or ``-1`` when
      the backend cannot count (the purge is then only queued or approximate).
    - ``soften`` and ``soften_tags`` are the soft purge: the entries stay, but from now
      on every read answers them framed as stale since now (``proxy.entry.soften``),
      until they are written again; they answer how many they marked, or ``-1``. A
      store that loses what marks them (eviction, restart) answers them as misses,
      never as unmarked: a soft purge may degrade to a purge, never to nothing.
    - ``lock`` takes a lease for ``ttl`` seconds and answers its token, or ``None`` when
      somebody else holds it; ``unlock`` releases only a lease whose token matches.
    - ``shared`` is true when other processes see the same entries (Redis, Memcached).
    - ``health`` answers at once, without I/O: breaker state and write refusals.
    """

    name: str
    shared: bool

    async def get(self, key: str) -> bytes | None: ...

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]: ...

    async def set(self, key: str, value: bytes, ttl: float, tags: Sequence[str] = ()) -> None: ...

    async def delete(self, keys: Sequence[str]) -> int: ...

    async def purge_tags(self, tags: Sequence[str]) -> int: ...

    async def soften(self, keys: Sequence[str]) -> int: ...

    async def soften_tags(self, tags: Sequence[str]) -> int: ...

    async def lock(self, key: str, ttl: float) -> str | None: ...

    async def unlock(self, key: str, token: str) -> bool: ...

    async def ping(self) -> bool: ...

    def stats(self) -> StoreStats: ...

    def health(self) -> StoreHealth: ...

    async def aclose(self) -> None: ...
