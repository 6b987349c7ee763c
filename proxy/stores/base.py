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


@runtime_checkable
class Store(Protocol):
    """An async key/value cache with TTLs, tags and leases.

    - ``get``/``get_many`` return ``None`` for a miss, never raise for a missing key.
    - ``set`` stores ``value`` for ``ttl`` seconds (> 0; nothing lives forever) and,
      when ``tags`` are given, indexes the key under each tag so ``purge_tags`` finds it.
    - ``delete`` and ``purge_tags`` answer how many entries were removed, or ``-1`` when
      the backend cannot count (the purge is then only queued or approximate).
    - ``lock`` takes a lease for ``ttl`` seconds and answers its token, or ``None`` when
      somebody else holds it; ``unlock`` releases only a lease whose token matches.
    - ``shared`` is true when other processes see the same entries (Redis, Memcached).
    """

    name: str
    shared: bool

    async def get(self, key: str) -> bytes | None: ...

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]: ...

    async def set(self, key: str, value: bytes, ttl: float, tags: Sequence[str] = ()) -> None: ...

    async def delete(self, keys: Sequence[str]) -> int: ...

    async def purge_tags(self, tags: Sequence[str]) -> int: ...

    async def lock(self, key: str, ttl: float) -> str | None: ...

    async def unlock(self, key: str, token: str) -> bool: ...

    async def ping(self) -> bool: ...

    def stats(self) -> StoreStats: ...

    async def aclose(self) -> None: ...
