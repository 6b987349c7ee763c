"""The embedded memory store: a byte-bounded LRU with TTLs, a tag index and local leases.

Everything lives in this process (one per worker). The bound counts keys, values and
a fixed per-entry overhead, so the store never exceeds ``max_size`` however many
distinct keys arrive. No awaits happen inside: every method completes in one step.
"""

from __future__ import annotations

import secrets
from collections import OrderedDict
from collections.abc import Sequence
from typing import Final

from proxy.clock import Clock, SystemClock
from proxy.stores.base import StoreStats

# What one entry costs beyond its key and value: the OrderedDict node, the tuple,
# the float, the str/bytes object headers. Measured with tracemalloc at ~230 bytes.
ENTRY_OVERHEAD: Final = 256
TAG_OVERHEAD: Final = 96


class MemoryStore:
    """An in-process LRU bounded by bytes; entries expire after their TTL."""

    shared = False

    def __init__(self, name: str, max_size: int, clock: Clock | None = None) -> None:
        self.name = name
        self.max_size = max_size
        self._clock = clock or SystemClock()
        # key -> (value, expires_at (monotonic), tags, size)
        self._data: OrderedDict[str, tuple[bytes, float, tuple[str, ...], int]] = OrderedDict()
        # tag -> its one key, or a set once it has several: most path tags name a single
        # entry, and a set per entry would cost more than a small body (issue 8 target)
        self._tags: dict[str, str | set[str]] = {}
        self._locks: dict[str, tuple[str, float]] = {}
        self._size = 0
        self.evictions = 0

    # -- reads

    async def get(self, key: str) -> bytes | None:
        return self.get_now(key)

    def get_now(self, key: str) -> bytes | None:
        """The synchronous read the hit path uses: no await, no task switch."""
        item = self._data.get(key)
        if item is None:
            return None
        if item[1] <= self._clock.monotonic():
            self._remove(key)
            return None
        self._data.move_to_end(key)
        return item[0]

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        return [self.get_now(key) for key in keys]

    # -- writes

    async def set(self, key: str, value: bytes, ttl: float, tags: Sequence[str] = ()) -> None:
        if not ttl > 0:  # also NaN, whose deadline would never come
            self._remove(key)
            return
        size = len(key) + len(value) + ENTRY_OVERHEAD + TAG_OVERHEAD * len(tags)
        self._remove(key)
        if size > self.max_size:
            return
        self._data[key] = (value, self._clock.monotonic() + ttl, tuple(tags), size)
        self._size += size
        index = self._tags
        for tag in tags:
            held = index.get(tag)
            if held is None:
                index[tag] = key
            elif isinstance(held, set):
                held.add(key)
            elif held != key:
                index[tag] = {held, key}
        while self._size > self.max_size:
            oldest = next(iter(self._data))
            self._remove(oldest)
            self.evictions += 1

    async def delete(self, keys: Sequence[str]) -> int:
        return sum(self._remove(key) for key in keys)

    async def purge_tags(self, tags: Sequence[str]) -> int:
        removed = 0
        for tag in tags:
            held = self._tags.get(tag)
            keys = [held] if isinstance(held, str) else list(held or ())
            for key in keys:
                removed += self._remove(key)
        return removed

    def _remove(self, key: str) -> int:
        item = self._data.pop(key, None)
        if item is None:
            return 0
        self._size -= item[3]
        index = self._tags
        for tag in item[2]:
            held = index.get(tag)
            if held is None:
                continue
            if isinstance(held, str):
                if held == key:
                    del index[tag]
            else:
                held.discard(key)
                if len(held) == 1:
                    index[tag] = held.pop()
                elif not held:
                    del index[tag]
        return 1

    # -- leases (one process: the coalescer already serialises; these keep the protocol)

    async def lock(self, key: str, ttl: float) -> str | None:
        now = self._clock.monotonic()
        held = self._locks.get(key)
        if held is not None and held[1] > now:
            return None
        token = secrets.token_hex(8)
        self._locks[key] = (token, now + ttl)
        return token

    async def unlock(self, key: str, token: str) -> bool:
        held = self._locks.get(key)
        if held is None or held[0] != token:
            return False
        del self._locks[key]
        return True

    # -- housekeeping

    async def ping(self) -> bool:
        return True

    def stats(self) -> StoreStats:
        return StoreStats(entries=len(self._data), bytes=self._size, evictions=self.evictions)

    def keys(self) -> list[str]:
        """Every stored key, oldest first (for reports and tests)."""
        return list(self._data)

    async def aclose(self) -> None:
        self._data.clear()
        self._tags.clear()
        self._size = 0
