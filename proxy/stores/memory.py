"""The embedded memory store: a byte-bounded LRU with TTLs, a tag index and local leases.

Everything lives in this process (one per worker). The bound counts keys, values, tags
and a fixed per-entry overhead, so the store never exceeds ``max_size`` however many
distinct keys arrive. No awaits happen inside: every method completes in one step.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from typing import Final, TypeAlias

from proxy.clock import Clock, SystemClock
from proxy.stores.base import StoreStats

# What an entry costs beyond the characters of its key, value and tags, as allocated
# (bench/memory_rss.py --breakdown, docs/benchmarks.md): the str and bytes headers, its
# dict slot, the entry tuple and its deadline float; per tag, its tuple slot and its
# place in the tag index (a tag naming one entry costs a str and a dict slot, a shared
# tag one list slot).
ENTRY_OVERHEAD: Final = 256
TAG_OVERHEAD: Final = 64
# A shared tag's key list is compacted once it holds this many more keys than twice
# the entries that still carry the tag.
_SLACK: Final = 16

# (value, deadline on the monotonic clock, key, *tags): one tuple per entry, nothing else.
# The key is there so a read can move an entry with its own key object: reinserted
# under the caller's equal string, the tag index would keep the first as a copy.
Entry: TypeAlias = tuple[bytes, float, str, *tuple[str, ...]]
_TAGS: Final = 3  # where an entry's tags start


class _Members:
    """The keys of a tag several entries carry. Keys are appended, never searched for:
    an entry that leaves is dropped from the list lazily (``live`` counts the entries
    that still carry the tag), which costs one list slot per key instead of a set's
    three or four."""

    __slots__ = ("keys", "live", "name")

    def __init__(self, name: str, keys: list[str]) -> None:
        self.name = name  # the one copy of the tag the entries carrying it share
        self.keys = keys
        self.live = len(keys)


class MemoryStore:
    """An in-process LRU bounded by bytes; entries expire after their TTL.

    Recency without a linked list: ``_data`` holds the young entries in use order (a
    read moves its entry to the end). When room is needed and the old generation is
    used up, the young one becomes old and a new young one starts; eviction walks the
    old generation in the order it was last used (``_order``, a snapshot of its keys).
    An old entry that is read moves to the young generation, so the first key in
    ``_order`` still in ``_old`` is always the least recently used entry.
    """

    shared = False

    def __init__(self, name: str, max_size: int, clock: Clock | None = None) -> None:
        self.name = name
        self.max_size = max_size
        self._monotonic = (clock or SystemClock()).monotonic
        self._data: dict[str, Entry] = {}  # the young generation
        self._old: dict[str, Entry] = {}
        self._order: list[str] = []  # _old's keys at the switch, most recent first
        self._stale = 0  # keys in _order that have left _old other than by eviction
        # tag -> its one key, or _Members once several entries carry it
        self._tags: dict[str, str | _Members] = {}
        self._locks: dict[str, tuple[str, float]] = {}
        self._size = 0
        self.evictions = 0

    # -- reads

    async def get(self, key: str) -> bytes | None:
        return self.get_now(key)

    def get_now(self, key: str) -> bytes | None:
        """The synchronous read the hit path uses: no await, no task switch."""
        data = self._data
        item = data.pop(key, None)
        if item is None:
            item = self._old.pop(key, None)
            if item is None:
                return None
            self._stale += 1
        if item[1] <= self._monotonic():
            self._forget(item)
            return None
        data[item[2]] = item
        return item[0]

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        return [self.get_now(key) for key in keys]

    # -- writes

    async def set(self, key: str, value: bytes, ttl: float, tags: Sequence[str] = ()) -> None:
        self._remove(key)
        if not ttl > 0:  # also NaN, whose deadline would never come
            return
        size = len(key) + len(value) + ENTRY_OVERHEAD
        for tag in tags:
            size += TAG_OVERHEAD + len(tag)
        if size > self.max_size:
            return
        index = self._tags
        names: list[str] = []
        for tag in tags:
            held = index.get(tag)
            if held is None:
                index[tag] = key
            elif isinstance(held, str):
                index[tag] = _Members(tag, [held, key])
            else:
                held.keys.append(key)
                held.live += 1
                tag = held.name
            names.append(tag)
        self._data[key] = (value, self._monotonic() + ttl, key, *names)
        self._size += size
        while self._size > self.max_size:
            self._remove(self._least_recent())
            self._stale -= 1  # _remove counted the evicted key as stale
            self.evictions += 1
        if self._stale > 1024 and self._stale * 2 > len(self._order):
            # keys of old entries read or removed since the switch, waiting in _order to
            # be skipped: dropped in one pass once they are most of it
            old = self._old
            self._order = [k for k in self._order if k in old]
            self._stale = 0

    async def delete(self, keys: Sequence[str]) -> int:
        return sum(self._remove(key) for key in keys)

    async def purge_tags(self, tags: Sequence[str]) -> int:
        removed = 0
        for tag in tags:
            # unindexed first: the removals below need not update this tag's entry
            held = self._tags.pop(tag, None)
            if isinstance(held, str):
                removed += self._remove(held)
            elif held is not None:
                for key in dict.fromkeys(held.keys):
                    item = self._peek(key)
                    if item is not None and tag in item[_TAGS:]:
                        removed += self._remove(key)
        return removed

    # -- internals

    def _peek(self, key: str) -> Entry | None:
        item = self._data.get(key)
        return item if item is not None else self._old.get(key)

    def _remove(self, key: str) -> int:
        item = self._data.pop(key, None)
        if item is None:
            item = self._old.pop(key, None)
            if item is None:
                return 0
            self._stale += 1
        self._forget(item)
        return 1

    def _forget(self, item: Entry) -> None:
        """Take a popped entry out of the byte count and the tag index."""
        key = item[2]
        size = len(key) + len(item[0]) + ENTRY_OVERHEAD
        index = self._tags
        for tag in item[_TAGS:]:
            size += TAG_OVERHEAD + len(tag)
            held = index.get(tag)
            if held is None:  # being purged
                continue
            if isinstance(held, str):
                if held == key:
                    del index[tag]
                continue
            held.live -= 1
            if held.live <= 0:
                del index[tag]
            elif len(held.keys) > 2 * held.live + _SLACK:
                held.keys = [
                    k
                    for k in dict.fromkeys(held.keys)
                    if (entry := self._peek(k)) is not None and tag in entry[_TAGS:]
                ]
        self._size -= size

    def _least_recent(self) -> str:
        """The key to evict: the oldest of the old generation (switching generations
        when it is used up). Only called while the store holds entries."""
        order, old = self._order, self._old
        while True:
            while order:
                key = order.pop()
                if key in old:
                    return key
                self._stale -= 1
            if not self._data:
                raise RuntimeError("memory store: nothing left to evict")
            self._order = order = list(self._data)
            order.reverse()
            self._old = old = self._data
            self._data = {}
            self._stale = 0

    # -- leases (one process: the coalescer already serialises; these keep the protocol)

    async def lock(self, key: str, ttl: float) -> str | None:
        now = self._monotonic()
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
        entries = len(self._data) + len(self._old)
        return StoreStats(entries=entries, bytes=self._size, evictions=self.evictions)

    def keys(self) -> list[str]:
        """Every stored key, least recently used first (for reports and tests)."""
        return [*self._old, *self._data]

    async def aclose(self) -> None:
        self._data.clear()
        self._old.clear()
        self._order.clear()
        self._stale = 0
        self._tags.clear()
        self._size = 0
