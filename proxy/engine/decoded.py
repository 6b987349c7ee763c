"""Stored responses kept decoded, once per stored version, for the hit path.

A store hands back bytes; decoding them (msgpack, header pairs) and preparing their
header views is work that depends only on those bytes, so it is done once and kept
while the store holds the very same bytes (identity for the memory store, equality for a
shared store's copy). Bounded in entries and in bytes; no I/O.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import ValuesView
from typing import Final

from proxy.core.entry import CachedResponse, EntryError, VaryMarker, decode

DECODED_CACHE: Final = 65536  # stored responses kept decoded, with their prepared views
# ... and the bytes they may hold (stored bytes and decoded body, each counted): entries
# evicted from a store stay alive here, outside the store's own bound
DECODED_BYTES: Final = 32 * 1024**2


class DecodedEntries:
    """key -> (the stored bytes, the response decoded from them), least recently used
    first, within ``DECODED_CACHE`` entries and ``DECODED_BYTES``."""

    def __init__(self) -> None:
        self._held: OrderedDict[str, tuple[bytes, CachedResponse]] = OrderedDict()
        self._bytes = 0

    def get(self, key: str, raw: bytes) -> CachedResponse | VaryMarker | None:
        """What ``raw``, stored under ``key``, holds (``None``: corrupt or foreign); a
        response is kept decoded, with the views prepared on it, while the store holds
        the same bytes."""
        held = self._held.get(key)
        if held is not None and (held[0] is raw or held[0] == raw):
            self._held.move_to_end(key)
            return held[1]
        try:
            value = decode(raw)
        except EntryError:
            return None
        if isinstance(value, CachedResponse):
            self._keep(key, raw, value)
        return value

    def values(self) -> ValuesView[tuple[bytes, CachedResponse]]:
        return self._held.values()

    def _keep(self, key: str, raw: bytes, value: CachedResponse) -> None:
        """One larger than a quarter of the budget is not kept."""
        old = self._held.pop(key, None)
        if old is not None:
            self._bytes -= 2 * len(old[0])
        size = 2 * len(raw)
        if size > DECODED_BYTES // 4:
            return
        held = self._held
        while held and (len(held) >= DECODED_CACHE or self._bytes + size > DECODED_BYTES):
            self._bytes -= 2 * len(held.popitem(last=False)[1][0])
        held[key] = (raw, value)
        self._bytes += size
