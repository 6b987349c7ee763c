"""The embedded memory store: a byte-bounded LRU with TTLs, a tag index and local leases.

Everything lives in this process (one per worker). The bound counts keys, values, tags
and a fixed per-entry overhead, so the store never exceeds ``max_size`` however many
distinct keys arrive. No awaits happen inside: every method completes in one step. A soft
purge replaces the values it finds by their softened frame (``proxy.core.entry.soften``), so
reads stay as they are: nothing is checked per hit.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterable, Sequence
from typing import Final

from proxy.clock import Clock, SystemClock
from proxy.core.entry import SOFT_HEAD, soften
from proxy.stores.base import Entry, OfNoKind, Snapshottable, StoreHealth, StoreStats

# What an entry costs beyond the characters of its key, value and tags, as allocated
# while the store evicts (then its dicts are the most spread out): the str and bytes
# headers, its slots in the young and old dicts and in the eviction order, the entry
# tuple and its deadline float; per tag, its tuple slot and its place in the tag index
# (a tag naming one entry: a str and a dict slot, ~130 B; a tag several entries share:
# a set slot, ~45 B). 100,000 entries of a 1,218-byte value with a route tag and two
# path tags count 1,846 B each and take 1,711 B (no eviction) to 1,853 B (evicting):
# bench/memory_rss.py --store-only, docs/benchmarks.md.
ENTRY_OVERHEAD: Final = 320
TAG_OVERHEAD: Final = 80
# ``Entry`` (proxy.stores.base): one tuple per entry, nothing else. The key is there so
# a read can move an entry with its own key object: reinserted under the caller's equal
# string, the tag index would keep the first as a copy.
_TAGS: Final = 3  # where an entry's tags start


class _Members(set[str]):
    """The keys of a tag several entries carry, with the one copy of the tag they share
    (each request brings its own equal string; entries keep this one instead)."""

    __slots__ = ("name",)

    def __init__(self, name: str, keys: tuple[str, ...]) -> None:
        super().__init__(keys)
        self.name = name


class MemoryStore(OfNoKind):
    """An in-process LRU bounded by bytes; entries expire after their TTL.

    Exact LRU without a linked list (an OrderedDict's costs ~90 B per entry): ``_data``
    holds the young generation in use order, a read moving its entry to the end. When
    room is needed and the old generation is used up, the young one becomes old and a
    new one starts. Eviction takes the old generation's keys in the order they were
    last used from ``_order``, a snapshot taken at the switch (a dict cannot give its
    first key cheaply once many were removed from its front). An old entry that is read
    moves to the young generation, so the oldest key in ``_order`` still in ``_old`` is
    always the least recently used entry of the store.
    """

    shared = False

    def __init__(self, name: str, max_size: int, clock: Clock | None = None) -> None:
        self.name = name
        self.max_size = max_size
        clock = clock or SystemClock()
        self._monotonic = clock.monotonic
        self._time = clock.time  # a soft purge's mark: wall clock, as response times are
        self._data: dict[str, Entry] = {}  # the young generation
        self._old: dict[str, Entry] = {}
        self._order: list[str] = []  # _old's keys at the switch, most recent first
        self._stale = 0  # keys in _order that have left _old other than by eviction
        # tag -> its one key, or _Members once several entries carry it
        self._tags: dict[str, str | _Members] = {}
        self._locks: dict[str, tuple[str, float]] = {}
        self._size = 0
        self.evictions = 0
        # proxy.ops.snapshot: told of every delete and purge (a snapshot taken before is outdated)
        self.on_removal: Callable[[], None] | None = None

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
        size = len(key) + len(value) + ENTRY_OVERHEAD + TAG_OVERHEAD * len(tags)
        for tag in tags:
            size += len(tag)
        if size > self.max_size:
            return
        index = self._tags
        names: list[str] = []
        for tag in tags:
            held = index.get(tag)
            if held is None:
                index[tag] = key
            elif isinstance(held, str):
                index[tag] = _Members(tag, (held, key))
            else:
                held.add(key)
                tag = held.name
            names.append(tag)
        self._data[key] = (value, self._monotonic() + ttl, key, *names)
        self._size += size
        while self._size > self.max_size:
            self._evict()
        if self._stale > 1024 and self._stale * 2 > len(self._order):
            # keys of old entries read or removed since the switch, waiting in _order to
            # be skipped: dropped in one pass once they are most of it
            old = self._old
            self._order = [k for k in self._order if k in old]
            self._stale = 0

    async def delete(self, keys: Sequence[str]) -> int:
        if self.on_removal is not None:
            self.on_removal()
        return sum(self._remove(key) for key in keys)

    async def purge_tags(self, tags: Sequence[str]) -> int:
        if self.on_removal is not None:
            self.on_removal()
        removed = 0
        for tag in tags:
            # unindexed first: the removals below need not update this tag's entry
            held = self._tags.pop(tag, None)
            if isinstance(held, str):
                removed += self._remove(held)
            elif held is not None:
                for key in held:
                    removed += self._remove(key)
        return removed

    async def soften(self, keys: Sequence[str]) -> int:
        at = self._time()
        return self._soften_all(dict.fromkeys(keys), at)  # a key given twice counts once

    async def soften_tags(self, tags: Sequence[str]) -> int:
        at = self._time()
        keys: list[str] = []
        for tag in tags:
            held = self._tags.get(tag)
            if isinstance(held, str):
                keys.append(held)
            elif held is not None:
                keys += held
        return self._soften_all(dict.fromkeys(keys), at)

    # -- internals

    def _soften_all(self, keys: Iterable[str], at: float) -> int:
        """Mark the entries under ``keys`` stale since ``at``; answers how many are."""
        if self.on_removal is not None:
            self.on_removal()  # a snapshot taken before holds them unmarked
        now = self._monotonic()
        marked = 0
        for key in keys:
            held = self._data if key in self._data else self._old
            item = held.get(key)
            if item is None or item[1] <= now:
                continue
            marked += 1
            value = soften(item[0], at)
            if value is not item[0]:
                held[key] = (value, item[1], item[2], *item[_TAGS:])
                self._size += SOFT_HEAD
        while self._size > self.max_size:
            self._evict()
        return marked

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
        size = len(key) + len(item[0]) + ENTRY_OVERHEAD + TAG_OVERHEAD * (len(item) - _TAGS)
        index = self._tags
        for tag in item[_TAGS:]:
            size += len(tag)
            held = index.get(tag)
            if held is None:  # being purged
                continue
            if isinstance(held, str):
                if held == key:
                    del index[tag]
                continue
            held.discard(key)
            if len(held) == 1:
                index[tag] = held.pop()
            elif not held:
                del index[tag]
        self._size -= size

    def _evict(self) -> None:
        """Drop the least recently used entry: the oldest of the old generation
        (switching generations when it is used up). Only while entries are held."""
        order, old = self._order, self._old
        while True:
            while order:
                item = old.pop(order.pop(), None)
                if item is not None:
                    self._forget(item)
                    self.evictions += 1
                    return
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

    def health(self) -> StoreHealth:
        return StoreHealth()  # never refuses a write: it evicts

    def reader(self) -> Callable[[str], bytes | None]:
        return self.get_now

    def snapshottable(self) -> Snapshottable:
        return self

    def snapshot_entries(self) -> tuple[float, list[Entry]]:
        """For ``proxy.ops.snapshot``: the monotonic now and every entry tuple, least recently
        used first. A copy of references (the tuples are immutable), taken in one step."""
        return self._monotonic(), [*self._old.values(), *self._data.values()]

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
