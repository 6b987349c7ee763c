"""Stored responses on a store: the lookup that selects the variant for a request
(RFC 9111 §4.1), the write of a response (under its variant key when it varies), and a
bounded sample of what was stored, for the report's repeat-request advice.

A store failure is the caller's to decide (``StoreError`` goes up from ``lookup``; a
failed write is logged and skipped: the answer does not depend on it).
"""

from __future__ import annotations

import logging
import time
from typing import Final

from proxy.clock import Clock
from proxy.core.admission import entry_tags
from proxy.core.decide import Found, selects
from proxy.core.entry import CachedResponse, EntryError, VaryMarker, decode, encode, encode_marker
from proxy.core.keys import variant_key, variant_of
from proxy.engine.context import Context
from proxy.engine.decoded import DecodedEntries
from proxy.errors import StoreError
from proxy.obs.metrics import Meter
from proxy.stores.base import Store

log = logging.getLogger("sidecache")

RECENT_KEYS: Final = 4096  # bound of the repeat-request sample


class Entries:
    """Reads and writes stored responses for the engine, one per worker process."""

    def __init__(self, clock: Clock, meter: Meter) -> None:
        self.clock = clock
        self._meter = meter
        self.decoded = DecodedEntries()  # stored responses decoded once per version
        # A bounded sample of keys this worker stored: key -> (stored at, lifetime, route),
        # to tell whether repeat requests come within the TTL (for the report's advice).
        self.recent: dict[str, tuple[float, float, str]] = {}

    async def lookup(self, ctx: Context) -> Found:
        """The stored response selected for this request (RFC 9111 §4.1) and its key."""
        return await self.select(ctx, await ctx.store.get(ctx.key))

    async def select(self, ctx: Context, raw: bytes | None) -> Found:
        """``lookup`` once the store has answered ``raw`` under the request's key (a
        variant is then read under its own key)."""
        store, key = ctx.store, ctx.key
        if raw is None:
            return Found(None, key)
        value = self.decoded.get(key, raw)
        if value is None:
            return Found(None, key)  # corrupt or foreign: a miss, overwritten by the next fill
        if isinstance(value, VaryMarker):
            vkey = variant_key(key, variant_of(value.fields, ctx.ex.hmap))
            found = await store.get(vkey)
            variant = self.decoded.get(vkey, found) if found is not None else None
            if not isinstance(variant, CachedResponse) or not selects(variant, ctx.ex):
                return Found(None, key, vary_miss=True)
            return Found(variant, vkey)
        if value.variant:
            return Found(None, key)  # a variant under a primary key: stale layout, refetch
        return Found(value, key)

    def note_repeat(self, key: str, now: float) -> None:
        """A request for a key this worker stored: how long after, against its TTL."""
        seen = self.recent.pop(key, None)
        if seen is not None:
            stored_at, lifetime, route = seen
            gap = now - stored_at
            self._meter.rerequest(route, expired=gap > lifetime, gap=gap)

    async def store(self, ctx: Context, entry: CachedResponse, ttl: float) -> None:
        """Write ``entry`` for ``ttl`` seconds under the request's key, indexed by tags."""
        cfg = ctx.route.config
        store, key = ctx.store, ctx.key
        tags = entry_tags(cfg, ctx.ex.path, ctx.params, entry.tags)
        began = time.perf_counter()
        data = encode(entry)
        try:
            if entry.variant:
                await store_variant(store, key, entry, data, ttl, tags, cfg.max_variants)
            else:
                await store.set(key, data, ttl, tags)
        except StoreError as exc:
            log.debug("store write failed: %s", exc)
            return
        if store.shared:
            self._meter.store_time(cfg.backend, "set", time.perf_counter() - began)
        self._meter.store_written(cfg.name, len(data), entry.lifetime)
        recent = self.recent
        if len(recent) >= RECENT_KEYS:
            del recent[next(iter(recent))]
        recent[key] = (self.clock.time(), entry.lifetime, cfg.name)


async def store_variant(
    store: Store,
    key: str,
    entry: CachedResponse,
    data: bytes,
    ttl: float,
    tags: list[str],
    limit: int,
) -> None:
    """RFC 9111 §4.1: a response that varies is stored under its variant key, and the
    primary key holds a marker naming the selecting fields of the latest response. A
    changed Vary set drops the variants stored under the old one; past ``limit``
    variants the oldest go (faraday-http-cache #112: no unbounded growth per URL).
    Two concurrent fills may each miss the other's variant in the list: it then
    escapes the cap until it expires, never the lookup."""
    fields = tuple(name for name, _ in entry.variant)
    vkey = variant_key(key, entry.variant)
    try:
        current = decode(raw) if (raw := await store.get(key)) is not None else None
    except EntryError:
        current = None
    listed = current.variants if isinstance(current, VaryMarker) else ()
    same_set = isinstance(current, VaryMarker) and current.fields == fields
    kept = [k for k in (listed if same_set else ()) if k != vkey] + [vkey]
    dropped = [k for k in listed if k not in kept[-limit:]]
    await store.set(vkey, data, ttl, tags)
    await store.set(key, encode_marker(VaryMarker(fields, tuple(kept[-limit:]))), ttl, tags)
    if dropped:
        await store.delete(dropped)
