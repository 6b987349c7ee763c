"""The lookup → fetch → store state machine, on ``Exchange`` in and ``ProxyResponse`` out.

The engine decides what a request gets: a stored response (HIT), a stale one while a
refresh runs (STALE), the origin's answer stored or streamed (MISS), or the origin's
answer untouched (BYPASS). It never sees aiohttp's server types nor a library's
exception: stores raise ``StoreError`` (a miss, or 503 where a route fails closed),
the origin raises ``OriginError`` (stale if allowed, else 502/504).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import math
import time
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Mapping,
    Sequence,
)
from dataclasses import dataclass, replace
from typing import Final

from proxy import __version__, ranges, replies
from proxy.cachecontrol import (
    CacheControl,
    accepts_gzip,
    parse_field_list,
    parse_vary,
)
from proxy.clock import Clock, SystemClock
from proxy.coalesce import Coalescer
from proxy.decoded import DecodedEntries
from proxy.entry import (
    CachedResponse,
    EntryError,
    VaryMarker,
    compress,
    decode,
    encode,
    encode_marker,
)
from proxy.errors import OriginError, StoreError
from proxy.exchange import Exchange, Headers, ProxyResponse, Ticket
from proxy.freshness import (
    ERROR_STATUSES,
    SAFE_METHODS,
    StoreDecision,
    Usability,
    assess,
    decide_storage,
    initial_age,
    invalidation_targets,
    is_not_modified,
    passed_through,
    request_cache_control,
    reusable_with_credentials,
    stale_if_error_window,
    transform_forbidden,
    within_stale_window,
)
from proxy.keys import (
    derive_key,
    path_tags,
    route_tag,
    target_tag,
    user_tag,
    variant_key,
    variant_of,
)
from proxy.logs import AccessLog
from proxy.metrics import Meter
from proxy.origin import OriginClient, OriginResponse
from proxy.policy import LoadedPolicy
from proxy.routing import Route, Router
from proxy.storedfields import (
    HOP_BY_HOP,
    first_header,
    freshen_headers,
    head_updates,
    header_values,
    selects_for_update,
    storable_headers,
)
from proxy.stores.base import Store
from proxy.wire import find_length

log = logging.getLogger("sidecache")

CACHEABLE_METHODS: Final = frozenset({"GET", "HEAD"})
_NOT_FORWARDED: Final = HOP_BY_HOP | {"host"}
_CONDITIONALS: Final = (
    "if-none-match",
    "if-modified-since",
    "if-match",
    "if-unmodified-since",
    "if-range",
    "range",
)
VIA: Final = f"1.1 sidecache/{__version__}"
RECENT_KEYS: Final = 4096  # bound of the repeat-request sample


@dataclass(slots=True)
class Fill:
    """The outcome of one origin fetch for a cacheable request."""

    entry: CachedResponse | None  # stored (or storable) response, shareable with followers
    live: ProxyResponse | None = None  # the leader's own answer when not shareable
    status: int = 0
    collapsed: bool = False  # filled by another replica's leader (cross-replica lock)
    own: Headers = ()  # the leader's Set-Cookie: for its client only, never stored nor shared


class Engine:
    """Routes, looks up, fetches, stores. One per worker process."""

    def __init__(
        self,
        loaded: LoadedPolicy,
        stores: Mapping[str, Store],
        origin: OriginClient,
        clock: Clock | None = None,
        meter: Meter | None = None,
    ) -> None:
        self.clock: Clock = clock or SystemClock()
        self.origin = origin
        self.stores = dict(stores)
        self.meter = meter or Meter()
        # Set by the invalidation wiring so unsafe-method purges reach every worker and
        # replica; without it they purge this process's stores only.
        self.purge_hook: Callable[[Sequence[str]], Awaitable[object]] | None = None
        # ``PURGE <path>`` on the proxy port, answered by the invalidation wiring (which
        # checks ``admin.purge_from``); without it PURGE is forwarded like any method.
        self.purge_method: Callable[[Exchange], Awaitable[ProxyResponse]] | None = None
        self.access_log: AccessLog | None = None  # off unless server.access_log says so
        # A bounded sample of keys this worker stored: key -> (stored at, lifetime, route),
        # to tell whether repeat requests come within the TTL (for the report's advice).
        self._recent: dict[str, tuple[float, float, str]] = {}
        self.coalescer: Coalescer[Fill] = Coalescer(self.clock)
        self.decoded = DecodedEntries()  # stored responses decoded once per version
        self._refreshing: set[str] = set()
        self._background: set[asyncio.Task[None]] = set()
        self.apply(loaded)

    def apply(self, loaded: LoadedPolicy) -> None:
        """Swap in a new policy's routes (stores are the caller's to rebuild)."""
        self.loaded = loaded
        self.router = Router(loaded.routes)

    # ------------------------------------------------------------------ entry point

    async def handle(self, ex: Exchange) -> ProxyResponse:
        start = time.perf_counter()
        route, params = self.router.match(ex.method, replies.hostname(ex.host), ex.path)
        response = await self._handle(ex, route, params)
        self._observe(ex, route.name, response, start)
        return response

    def _observe(self, ex: Exchange, route: str, response: ProxyResponse, start: float) -> None:
        seconds = time.perf_counter() - start
        response.route = route
        self.meter.request(route, response.cache, seconds)
        if self.access_log is not None:
            self.access_log.record(
                method=ex.method,
                target=ex.target,
                status=response.status,
                cache=response.cache,
                route=route,
                seconds=seconds,
                client=ex.client,
            )

    async def _handle(self, ex: Exchange, route: Route, params: dict[str, str]) -> ProxyResponse:
        if ex.method == "PURGE" and self.purge_method is not None:
            return await self.purge_method(ex)
        cfg = route.config
        if not cfg.cache:
            return await self._pass(ex, route, "bypass", "route")
        if ex.method not in CACHEABLE_METHODS:
            return await self._pass(ex, route, "method", None)
        if (ex.body is not None and ex.hmap.get("content-length", "0") != "0") or (
            "transfer-encoding" in ex.hmap
        ):
            return await self._pass(ex, route, "bypass", "body")  # fat GET: never keyed
        if (untouched := passed_through(ex.hmap)) is not None:
            return await self._pass(ex, route, "bypass", untouched)  # If-Match and the like
        request_cc = request_cache_control(cfg, ex.hmap)
        identity = replies.identity(ex.hmap, cfg.key.cookies) if cfg.cache_authorized else ""
        key = derive_key(cfg.name, ex.host, ex.path, ex.query, cfg.key, ex.hmap, identity)
        store = self.stores[cfg.backend]
        try:
            if store.shared:
                began = time.perf_counter()
                found = await self._lookup(store, key, ex)
                self.meter.store_time(cfg.backend, "get", time.perf_counter() - began)
            else:
                found = await self._lookup(store, key, ex)
        except StoreError as exc:
            if cfg.store_failure == "closed":
                return replies.plain(503, "cache unavailable", route, "detail=store-down")
            log.debug("store lookup failed: %s", exc)
            found = None
        return await self._answer(ex, route, params, key, store, found, request_cc)

    async def _answer(
        self,
        ex: Exchange,
        route: Route,
        params: dict[str, str],
        key: str,
        store: Store,
        found: tuple[CachedResponse, str] | None,
        request_cc: CacheControl,
    ) -> ProxyResponse:
        now = self.clock.time()
        if self._recent:
            self._note_repeat(key, now)
        stale: CachedResponse | None = None
        fwd = "vary-miss" if _VARY_MISS.get() else "uri-miss"  # RFC 9211 §2.2
        if found is not None and not replies.body_intact(found[0], ex):
            found = None  # a corrupt stored body is a miss; the fill overwrites it
        if found is not None:
            entry, entry_key = found
            usability = self._usability(entry, now, request_cc)
            if "authorization" in ex.hmap and not reusable_with_credentials(
                route.config, entry.headers
            ):
                usability = Usability.REFUSED
            if usability in (Usability.FRESH, Usability.STALE_ALLOWED):
                label = "HIT" if usability is Usability.FRESH else "STALE"
                if route.config.early_refresh is not None and replies.refresh_early(
                    entry, now, route.config.early_refresh.beta
                ):
                    self._refresh_in_background(ex, route, params, key, entry_key, store, entry)
                if usability is Usability.STALE_ALLOWED:
                    self.meter.stale_served(route.name, "client")
                return self._from_cache(ex, route, entry, now, label, "hit")
            stale = entry
            fwd = "request" if usability is Usability.REFUSED else "stale"
            if usability is Usability.STALE and self._within_swr(entry, now):
                self._refresh_in_background(ex, route, params, key, entry_key, store, entry)
                self.meter.stale_served(route.name, "revalidate")
                return self._from_cache(ex, route, entry, now, "STALE", _STALE_HIT)
        if request_cc.has("only-if-cached"):  # RFC 9111 §5.2.1.7
            return replies.plain(504, "not cached", route, "detail=only-if-cached")
        if "range" in ex.hmap and self.coalescer.is_uncacheable(key):
            # hit-for-miss: nothing will be stored to cut the range from; the origin's
            return await self._pass(ex, route, "bypass", "range")
        if ex.method == "HEAD":
            stored_key = found[1] if found is not None else key
            return await self._head(ex, route, params, key, store, stale, stored_key, fwd)
        return await self._miss(ex, route, params, key, store, stale, fwd=fwd)

    def _note_repeat(self, key: str, now: float) -> None:
        seen = self._recent.pop(key, None)
        if seen is not None:
            stored_at, lifetime, route = seen
            gap = now - stored_at
            self.meter.rerequest(route, expired=gap > lifetime, gap=gap)

    # ------------------------------------------------------------------ lookup

    async def _lookup(
        self, store: Store, key: str, ex: Exchange
    ) -> tuple[CachedResponse, str] | None:
        """The stored response selected for this request (RFC 9111 §4.1) and its key.
        A miss where the URI has responses, none for these headers, sets _VARY_MISS."""
        _VARY_MISS.set(False)
        raw = await store.get(key)
        if raw is None:
            return None
        value = self.decoded.get(key, raw)
        if value is None:
            return None  # corrupt or foreign: a miss, overwritten by the next fill
        if isinstance(value, VaryMarker):
            vkey = variant_key(key, variant_of(value.fields, ex.hmap))
            found = await store.get(vkey)
            variant = self.decoded.get(vkey, found) if found is not None else None
            selected = variant if isinstance(variant, CachedResponse) else None
            if selected is None or not replies.selects(selected, ex):
                _VARY_MISS.set(True)
                return None
            return selected, vkey
        if value.variant:
            return None  # a variant under a primary key: stale layout, refetch
        return value, key

    @staticmethod
    def _usability(entry: CachedResponse, now: float, request_cc: CacheControl) -> Usability:
        """The one freshness decision (RFC 9111 §4.2, §5.2.1) every path asks."""
        return assess(
            entry.lifetime,
            entry.age(now),
            no_cache=entry.no_cache,
            must_revalidate=entry.must_revalidate,
            request_cc=request_cc,
        )

    def _within_swr(self, entry: CachedResponse, now: float) -> bool:
        """RFC 5861 §3, never where a directive demands validation (RFC 9111 §4.2.4)."""
        if entry.must_revalidate or entry.no_cache:
            return False
        return within_stale_window(entry.lifetime, entry.age(now), entry.stale_while_revalidate)

    def _within_sie(self, entry: CachedResponse, now: float, request_cc: CacheControl) -> bool:
        """RFC 5861 §4 (the stored window, widened by the request's), same exceptions."""
        forbidden = entry.must_revalidate or entry.no_cache
        window = stale_if_error_window(entry.stale_if_error, request_cc, forbidden)
        return within_stale_window(entry.lifetime, entry.age(now), window)

    # ------------------------------------------------------------------ misses

    async def _miss(
        self,
        ex: Exchange,
        route: Route,
        params: dict[str, str],
        key: str,
        store: Store,
        stale: CachedResponse | None,
        *,
        fwd: str = "uri-miss",
    ) -> ProxyResponse:
        cfg = route.config
        coalesce = cfg.coalesce.enabled and not self.coalescer.is_uncacheable(key)
        if coalesce:
            flight = self.coalescer.in_flight(key)
            if flight is not None and flight.waiters < cfg.coalesce.max_waiters:
                fill = await self.coalescer.follow(flight, cfg.coalesce.timeout)
                now = self.clock.time()
                if (
                    fill is not None
                    and fill.entry is not None
                    and replies.answers(fill.entry, ex, route)
                ):
                    self.meter.follower(cfg.name)
                    status = replies.forwarded(fwd, fill.status, collapsed=True)
                    return self._from_cache(ex, route, fill.entry, now, "HIT", status)
                # leader failed, timed out, its answer was private or for other headers
                return await self._own_fill(ex, route, params, key, store, stale, fwd)
            if flight is None:
                task = self.coalescer.lead(
                    key, lambda: self._fill_locked(ex, route, params, key, store, stale)
                )
                fill = await _claim(task)
                return self._deliver(ex, route, fill, key, fwd)
        return await self._own_fill(ex, route, params, key, store, stale, fwd)

    async def _own_fill(
        self,
        ex: Exchange,
        route: Route,
        params: dict[str, str],
        key: str,
        store: Store,
        stale: CachedResponse | None,
        fwd: str = "uri-miss",
    ) -> ProxyResponse:
        fill = await self._fill(ex, route, params, key, store, stale)
        return self._deliver(ex, route, fill, key, fwd)

    def _deliver(
        self, ex: Exchange, route: Route, fill: Fill, key: str, fwd: str = "uri-miss"
    ) -> ProxyResponse:
        if fill.live is not None:
            if fill.entry is None and fill.status and fill.status < 500:
                self.coalescer.mark_uncacheable(key, route.config.coalesce.hit_for_miss)
            return replies.with_fwd(fill.live, fwd)
        assert fill.entry is not None
        now = self.clock.time()
        if fill.collapsed:
            status = replies.forwarded(fwd, fill.status, collapsed=True)
            return self._from_cache(ex, route, fill.entry, now, "HIT", status)
        status = replies.forwarded(fwd, fill.status, stored=True)
        response = self._from_cache(ex, route, fill.entry, now, "MISS", status)
        response.headers += fill.own
        return response

    async def _fill_locked(
        self,
        ex: Exchange,
        route: Route,
        params: dict[str, str],
        key: str,
        store: Store,
        stale: CachedResponse | None,
        *,
        wait: bool = True,
    ) -> Fill:
        """Cross-replica single-flight on a shared store: the replica holding the lease
        (``SET NX PX`` with a token) fetches; the others wait for its entry, polling
        with backoff up to ``coalesce.timeout``, then fetch themselves. A leader that
        dies blocks nobody longer than its lease. Without ``wait`` (background
        refreshes), a replica that does not get the lease leaves the work to its holder.
        """
        cfg = route.config
        if not store.shared or not cfg.coalesce.enabled:
            return await self._fill(ex, route, params, key, store, stale)
        lease = cfg.coalesce.timeout
        deadline = self.clock.monotonic() + lease
        delay = 0.005
        waited = False
        while True:
            try:
                token = await store.lock(key, lease)
            except StoreError:
                return await self._fill(ex, route, params, key, store, stale)
            if token is not None:
                try:
                    # another replica may have filled it between our lookup and the lease
                    # (a background refresh too: another's may have ended just before)
                    if waited or stale is None or not wait:
                        try:
                            filled = await self._filled_by_other(store, key, ex, stale)
                        except StoreError:  # a failing store is a miss, never a 5xx
                            filled = None
                        if filled is not None:
                            return filled
                    fill = await self._fill(ex, route, params, key, store, stale)
                    if fill.entry is None and 0 < fill.status < 500:
                        await _quiet(store.set(key + _HFM, b"1", cfg.coalesce.hit_for_miss))
                    return fill
                finally:
                    await _quiet(store.unlock(key, token))
            if not wait:
                return Fill(None, None, 0)
            if self.clock.monotonic() >= deadline:
                return await self._fill(ex, route, params, key, store, stale)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.05)
            waited = True
            try:
                filled = await self._filled_by_other(store, key, ex, stale)
                marked = await store.get(key + _HFM)
            except StoreError:
                return await self._fill(ex, route, params, key, store, stale)
            if filled is not None:
                return filled
            if marked is not None:
                return await self._fill(ex, route, params, key, store, stale)

    async def _filled_by_other(
        self, store: Store, key: str, ex: Exchange, stale: CachedResponse | None
    ) -> Fill | None:
        """A fresh entry stored since we looked (by the lease holder we waited for)."""
        found = await self._lookup(store, key, ex)
        if found is None:
            return None
        entry = found[0]
        newer = stale is None or entry.response_time > stale.response_time
        fresh = entry.age(self.clock.time()) < entry.lifetime
        if newer and fresh and replies.body_intact(entry, ex):
            return Fill(entry, None, entry.status, collapsed=True)
        return None

    async def _fill(
        self,
        ex: Exchange,
        route: Route,
        params: dict[str, str],
        key: str,
        store: Store,
        stale: CachedResponse | None,
    ) -> Fill:
        """Fetch from the origin (conditionally when a stale copy has validators)."""
        cfg = route.config
        request_cc = request_cache_control(cfg, ex.hmap)
        headers = self._forward_headers(ex, route, strip_conditionals=True)
        if stale is not None:
            headers += replies.validators(stale)
        request_time = self.clock.time()
        began = time.perf_counter()
        try:
            response = await self.origin.request(
                "GET", ex.target, headers, None, cfg.timeout, interim=ex.interim
            )
        except OriginError as exc:
            self.meter.origin_failed(cfg.name, replies.failure_kind(exc))
            if stale is not None and self._within_sie(stale, self.clock.time(), request_cc):
                return self._stale_on_error(ex, route, stale, None)
            return Fill(None, replies.origin_failed(exc, route), 0)
        self.meter.origin(cfg.name, response.status, time.perf_counter() - began)
        response_time = self.clock.time()
        if (
            stale is not None
            and response.status in ERROR_STATUSES
            and self._within_sie(stale, response_time, request_cc)
        ):
            response.release()
            return self._stale_on_error(ex, route, stale, response.status)
        if response.status == 304 and stale is not None:
            response.release()
            return await self._freshen(
                ex, route, params, key, store, stale, response, request_time, response_time
            )
        decision = decide_storage(
            cfg, "GET", ex.hmap, response.status, response.headers, response_time, request_cc
        )
        if not decision.store:
            self.meter.not_stored(cfg.name, decision.reason)
            return Fill(None, self._live(ex, route, response, decision.reason), response.status)
        if replies.is_personal(route, headers, response.headers):
            self.meter.not_stored(cfg.name, "cookie")
            # status 0: this request's credentials refused it, not the URL (no hit-for-miss)
            return Fill(None, self._live(ex, route, response, "cookie"), 0)
        try:
            body, complete = await response.read_up_to(cfg.max_object_size)
        except OriginError as exc:  # the origin failed mid-body: nothing to store
            return Fill(None, replies.origin_failed(exc, route), 0)
        if not complete:
            self.meter.not_stored(cfg.name, "size")
            live = self._live(ex, route, response, "size", head=body)
            return Fill(None, live, response.status)
        response.release()
        entry = self._make_entry(ex, route, response, body, decision, request_time, response_time)
        await self._store(ex, route, params, key, store, entry, decision.storage_ttl)
        return Fill(entry, None, response.status, own=replies.set_cookies(response.headers))

    def _stale_on_error(
        self, ex: Exchange, route: Route, stale: CachedResponse, status: int | None
    ) -> Fill:
        """RFC 5861 §4: the stale copy answers in place of the origin's failure."""
        self.meter.stale_served(route.name, "error")
        params = replies.forwarded("stale", status, detail="stale-if-error")
        live = self._from_cache(ex, route, stale, self.clock.time(), "STALE", params)
        return Fill(None, live, 0)

    async def _freshen(
        self,
        ex: Exchange,
        route: Route,
        params: dict[str, str],
        key: str,
        store: Store,
        stale: CachedResponse,
        response: OriginResponse,
        request_time: float,
        response_time: float,
    ) -> Fill:
        """RFC 9111 §4.3.4: a 304 freshens the stored response with its fields (§3.2).
        When the result may not be stored (the 304 brought Set-Cookie or no-store), it
        answers this client only. A 304 naming another ETag must not update the stored
        response: it answers this client as the origin put it, and the stored copy,
        now suspect, goes (the request is never re-sent: that would be a retry)."""
        cfg = route.config
        merged = freshen_headers(stale.headers, response.headers)
        request_cc = request_cache_control(cfg, ex.hmap)
        decision = decide_storage(
            cfg, "GET", ex.hmap, stale.status, merged, response_time, request_cc
        )
        entry = replies.refreshed(
            stale, merged, decision, response.headers, request_time, response_time
        )
        selected = selects_for_update(stale.headers, response.headers)
        if not (selected and decision.store):
            if not selected:
                stored_key = variant_key(key, stale.variant) if stale.variant else key
                await _quiet(store.delete([stored_key]))
            reason = decision.reason if selected else "unmatched-304"
            status = replies.forwarded("uri-miss", 304, detail=reason)
            own = replace(entry, headers=merged)
            return Fill(None, self._from_cache(ex, route, own, response_time, "MISS", status), 304)
        await self._store(ex, route, params, key, store, entry, decision.storage_ttl)
        return Fill(entry, None, 304, own=replies.set_cookies(response.headers))

    async def _head(
        self,
        ex: Exchange,
        route: Route,
        params: dict[str, str],
        key: str,
        store: Store,
        stored: CachedResponse | None,
        stored_key: str,
        fwd: str,
    ) -> ProxyResponse:
        """A HEAD the cache cannot answer goes to the origin as a HEAD; a 200 answer then
        updates the stored GET response when it matches, else makes it stale (§4.3.5)."""
        cfg = route.config
        headers = self._forward_headers(ex, route, strip_conditionals=False)
        request_time = self.clock.time()
        try:
            response = await self.origin.request(
                "HEAD", ex.target, headers, None, cfg.timeout, interim=ex.interim
            )
        except OriginError as exc:
            return replies.with_fwd(replies.origin_failed(exc, route), fwd)
        response_time = self.clock.time()
        updated = False
        if stored is not None and response.status == 200:
            length = len(stored.plain_body())
            if head_updates(stored.headers, length, response.headers):
                merged = freshen_headers(stored.headers, response.headers)
                request_cc = request_cache_control(cfg, ex.hmap)
                decision = decide_storage(
                    cfg, "GET", ex.hmap, stored.status, merged, response_time, request_cc
                )
                if decision.store:
                    entry = replies.refreshed(
                        stored, merged, decision, response.headers, request_time, response_time
                    )
                    await self._store(ex, route, params, key, store, entry, decision.storage_ttl)
                    updated = True
            else:
                await _quiet(store.delete([stored_key]))
        status = replies.forwarded(fwd, response.status, stored=updated)
        live = self._live(ex, route, response, None, cache_status=status)
        live.head_length = find_length(response.headers)
        return live

    def _make_entry(
        self,
        ex: Exchange,
        route: Route,
        response: OriginResponse,
        body: bytes,
        decision: StoreDecision,
        request_time: float,
        response_time: float,
    ) -> CachedResponse:
        cfg = route.config
        headers = storable_headers(response.headers, decision.strip, response_time)
        encoding: str | None = None
        stored_body = body
        compression = cfg.compression
        if (
            compression.algorithm == "gzip"
            and len(body) >= compression.min_size
            and first_header(headers, "Content-Encoding") is None
            and replies.compressible(first_header(headers, "Content-Type"))
            and not transform_forbidden(headers)
        ):
            stored_body = compress(body, compression.level)
            encoding = "gzip"
        vary = parse_vary(header_values(headers, "Vary"))
        return CachedResponse(
            status=response.status,
            headers=headers,
            body=stored_body,
            body_encoding=encoding,
            request_time=request_time,
            response_time=response_time,
            initial_age=initial_age(response.headers, request_time, response_time),
            lifetime=decision.lifetime,
            stale_while_revalidate=decision.stale_while_revalidate,
            stale_if_error=decision.stale_if_error,
            must_revalidate=decision.must_revalidate,
            no_cache=decision.no_cache,
            tags=self._tags(route, response.headers),
            variant=variant_of(vary, ex.hmap) if vary else (),
        )

    def _tags(self, route: Route, headers: list[tuple[str, str]]) -> tuple[str, ...]:
        tags: list[str] = []
        for name in route.config.tag_headers:
            tags += parse_field_list(header_values(headers, name))
        return tuple(tags[:64])

    async def _store(
        self,
        ex: Exchange,
        route: Route,
        params: dict[str, str],
        key: str,
        store: Store,
        entry: CachedResponse,
        ttl: float,
    ) -> None:
        cfg = route.config
        tags = [route_tag(cfg.name), *path_tags(ex.path)]
        tags += [user_tag(t) for t in entry.tags]
        for template in cfg.tags:
            try:
                tags.append(user_tag(template.format(**params)))
            except (KeyError, IndexError, ValueError):
                continue
        began = time.perf_counter()
        data = encode(entry)
        try:
            if entry.variant:
                await _store_variant(store, key, entry, data, ttl, tags, cfg.max_variants)
            else:
                await store.set(key, data, ttl, tags)
        except StoreError as exc:
            log.debug("store write failed: %s", exc)
            return
        if store.shared:
            self.meter.store_time(cfg.backend, "set", time.perf_counter() - began)
        self.meter.store_written(cfg.name, len(data), entry.lifetime)
        if len(self._recent) >= RECENT_KEYS:
            del self._recent[next(iter(self._recent))]
        self._recent[key] = (self.clock.time(), entry.lifetime, cfg.name)

    # ------------------------------------------------------------------ background refresh

    def _refresh_in_background(
        self,
        ex: Exchange,
        route: Route,
        params: dict[str, str],
        key: str,
        entry_key: str,
        store: Store,
        stale: CachedResponse,
    ) -> None:
        """RFC 5861 §3: one refresh per key while others are served the stale copy."""
        if key in self._refreshing or self.coalescer.in_flight(key) is not None:
            return
        self._refreshing.add(key)

        async def refresh() -> None:
            try:
                task = self.coalescer.lead(
                    key,
                    lambda: self._fill_locked(ex, route, params, key, store, stale, wait=False),
                )
                fill = await task
                if fill.live is not None and fill.live.stream is not None:
                    await _drain(fill.live.stream)
            except Exception:  # a failed refresh leaves the stale copy to its windows
                log.debug("background refresh failed", exc_info=True)
            finally:
                self._refreshing.discard(key)

        task = asyncio.ensure_future(refresh())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # ------------------------------------------------------------------ pass-through

    async def _pass(
        self, ex: Exchange, route: Route, fwd: str, detail: str | None
    ) -> ProxyResponse:
        cfg = route.config
        headers = self._forward_headers(ex, route, strip_conditionals=False)
        began = time.perf_counter()
        try:
            response = await self.origin.request(
                ex.method, ex.target, headers, ex.body, cfg.timeout, interim=ex.interim
            )
        except OriginError as exc:
            self.meter.origin_failed(cfg.name, replies.failure_kind(exc))
            return replies.origin_failed(exc, route)
        self.meter.origin(cfg.name, response.status, time.perf_counter() - began)
        if ex.method not in SAFE_METHODS and 200 <= response.status < 400:
            await self._invalidate_after_unsafe(ex, route, response.headers)
        label = "BYPASS" if fwd in ("bypass", "method", "request") else "MISS"
        status = f"fwd={fwd}; fwd-status={response.status}"
        if detail:
            status += f"; detail={detail}"
        return self._live(ex, route, response, None, label=label, cache_status=status)

    async def _invalidate_after_unsafe(
        self, ex: Exchange, route: Route, headers: list[tuple[str, str]]
    ) -> None:
        """RFC 9111 §4.4, plus the route's ``invalidates`` list."""
        hosts = [h for h in (ex.host, self.origin.host) if h]
        paths = invalidation_targets(ex.method, 200, headers, ex.target, hosts)
        tags = [target_tag(p) for p in paths]
        for target in route.config.invalidates:
            tags.append(target_tag(target) if target.startswith("/") else route_tag(target))
        if self.purge_hook is not None:
            await self.purge_hook(tags)
            return
        for store in self.stores.values():
            try:
                await store.purge_tags(tags)
            except StoreError:
                continue

    # ------------------------------------------------------------------ responses

    def _forward_headers(
        self, ex: Exchange, route: Route, *, strip_conditionals: bool
    ) -> list[tuple[str, str]]:
        """RFC 9110 §7.6: drop hop-by-hop fields, set Host and X-Forwarded-*, add Via."""
        cfg = route.config
        connection = {t.strip().lower() for t in ex.hmap.get("connection", "").split(",")}
        allowed = {h.lower() for h in cfg.forward_headers}
        drop = set(_NOT_FORWARDED) | connection | {"x-forwarded-for", "x-forwarded-proto"}
        drop |= {h.lower() for h in cfg.strip_headers} - allowed
        if strip_conditionals:
            drop |= set(_CONDITIONALS)
        out = [(k, v) for k, v in ex.headers if k.lower() not in drop]
        out.append(("Host", self.origin.host))
        forwarded_for = ex.hmap.get("x-forwarded-for")
        if ex.client:
            forwarded_for = f"{forwarded_for}, {ex.client}" if forwarded_for else ex.client
        if forwarded_for:
            out.append(("X-Forwarded-For", forwarded_for))
        out.append(("X-Forwarded-Proto", ex.scheme))
        if ex.host and "x-forwarded-host" not in allowed:
            out.append(("X-Forwarded-Host", ex.host))
        via = ex.hmap.get("via")
        out.append(("Via", f"{via}, {VIA}" if via else VIA))
        return out

    def _live(
        self,
        ex: Exchange,
        route: Route,
        response: OriginResponse,
        reason: str | None,
        *,
        head: bytes = b"",
        label: str = "MISS",
        cache_status: str | None = None,
    ) -> ProxyResponse:
        """Stream the origin's answer through, untouched but for hop-by-hop fields."""
        connection = {
            t.strip().lower()
            for v in header_values(response.headers, "Connection")
            for t in v.split(",")
        }
        drop = HOP_BY_HOP | connection
        headers = [(k, v) for k, v in response.headers if k.lower() not in drop]
        if cache_status is None:
            cache_status = f"fwd=uri-miss; fwd-status={response.status}"
            if reason:
                cache_status += f"; detail={reason}"
        headers += replies.cache_headers(label, cache_status)
        if ex.method == "HEAD" or response.status in (204, 304) or response.status < 200:
            response.release()
            return ProxyResponse(response.status, headers, cache=label)
        rest = response.complete_body()
        if rest is not None:  # the whole answer is here: one write, no stream
            return ProxyResponse(response.status, headers, head + rest, cache=label)
        return ProxyResponse(response.status, headers, stream=response.iter_rest(head), cache=label)

    def _from_cache(
        self,
        ex: Exchange,
        route: Route,
        entry: CachedResponse,
        now: float,
        label: str,
        status: str,
    ) -> ProxyResponse:
        """A stored response with Age (RFC 9111 §4.2.3, §5.1) and Cache-Status."""
        age = entry.age(now)
        gzip = (
            entry.body_encoding == "gzip"
            and accepts_gzip(ex.hmap.get("accept-encoding", ""))
            and not ("cache-control" in ex.hmap and transform_forbidden(ex.headers))
        )
        body = entry.body if gzip else entry.plain_body()
        stored, block, dated = replies.stored_view(entry, gzip)
        # RFC 9211 §2.7: the remaining freshness, negative once stale
        detail = f"{status}; ttl={math.floor(entry.lifetime - age)}"
        headers = [("Age", str(int(age))), *replies.cache_headers(label, detail)]
        if ("if-none-match" in ex.hmap or "if-modified-since" in ex.hmap) and is_not_modified(
            ex.hmap, entry.status, entry.headers, entry.response_time
        ):
            kept = [(k, v) for k, v in (*stored, *headers) if k.lower() in _KEPT_304]
            return ProxyResponse(304, kept, cache=label)
        if "range" in ex.hmap:  # RFC 9110 §14: a part of the body as served
            part = ranges.requested(ex.method, ex.hmap, entry.status, len(body), stored)
            if part is not None:
                return replies.ranged(part, body, headers, label, block, dated)
        if ex.method == "HEAD":
            return ProxyResponse(
                entry.status,
                headers,
                head_length=len(body),
                cache=label,
                block=block,
                dated=dated,
            )
        return ProxyResponse(entry.status, headers, body, cache=label, block=block, dated=dated)

    def answer_now(self, ex: Exchange) -> tuple[Ticket | None, ProxyResponse | None]:
        """The hit path without an await: the request's ticket (``None``: it never takes
        that path) and, when a fresh entry in process memory answers it at once, the
        answer. Anything else (a miss, a stale entry, Vary, request directives, a shared
        store) has no answer here and the caller goes through ``handle``.
        """
        start = time.perf_counter()
        ticket = self.ticket(ex)
        if ticket is None or ticket.get_now is None:
            return ticket, None
        raw = ticket.get_now(ticket.key)
        if raw is None:
            return ticket, None
        made = self.answer_ticket(ticket, raw, self.clock.time(), start)
        return ticket, made[0] if made is not None else None

    def ticket(self, ex: Exchange) -> Ticket | None:
        """What a request resolves to on the synchronous hit path (its route, key and
        the store's synchronous reader), or ``None`` when it can never take that path.

        It depends on the request and the policy only, so a server may keep it for
        requests identical to ``ex`` while ``ticket.router is engine.router``.
        """
        route, _ = self.router.match(ex.method, replies.hostname(ex.host), ex.path)
        cfg = route.config
        if not cfg.cache or ex.method not in CACHEABLE_METHODS or ex.body is not None:
            return None
        if cfg.client_cache_control == "honor" or cfg.cache_authorized or cfg.early_refresh:
            return None
        if passed_through(ex.hmap) is not None or "authorization" in ex.hmap:
            return None  # preconditions are the origin's; §3.5 needs a look
        store = self.stores[cfg.backend]
        get_now: Callable[[str], bytes | None] | None = getattr(store, "get_now", None)
        if get_now is None and not store.shared:
            return None
        key = derive_key(cfg.name, ex.host, ex.path, ex.query, cfg.key, ex.hmap)
        return Ticket(ex, route, key, get_now, store, self.router)

    async def fetch_ticket(self, ticket: Ticket) -> bytes | None:
        """What a shared store holds under a ticket's key (``None``: a miss, or the store
        failed: the caller then goes through ``handle``, which decides what that means)."""
        began = time.perf_counter()
        try:
            raw = await ticket.store.get(ticket.key)
        except StoreError:
            return None
        self.meter.store_time(ticket.route.config.backend, "get", time.perf_counter() - began)
        return raw

    def answer_ticket(
        self, ticket: Ticket, raw: bytes, now: float, start: float
    ) -> tuple[ProxyResponse, float] | None:
        """The answer to ``ticket``'s request from ``raw`` (what its store holds under
        its key) if that is a fresh entry servable without an await, and until when
        (``clock.time()``) the very same answer, Age and Cache-Status included, holds
        while the store keeps ``raw``; else ``None``."""
        key = ticket.key
        cached = self.decoded.get(key, raw)
        if not isinstance(cached, CachedResponse) or cached.variant:
            return None
        ex = ticket.ex
        request_cc = request_cache_control(ticket.route.config, ex.hmap)
        if self._usability(cached, now, request_cc) is not Usability.FRESH:
            return None
        if not replies.body_intact(cached, ex):
            return None
        if self._recent:
            self._note_repeat(key, now)
        response = self._from_cache(ex, ticket.route, cached, now, "HIT", "hit")
        self._observe(ex, ticket.route.name, response, start)
        return response, replies.same_answer_until(cached, now)

    def served_again(self, ticket: Ticket, now: float, start: float) -> None:
        """Account for a request a server answered with the bytes of an earlier answer
        ``answer_ticket`` made, while that answer's ``until`` had not passed.

        It decides nothing: the one freshness decision (``_usability``) was made when
        the answer was built, and ``until`` (``replies.same_answer_until``) never
        outlasts that freshness for the same stored bytes (a ticket's request carries
        no directives that could end it earlier: honoured request directives never
        take the ticket path)."""
        if self._recent:
            self._note_repeat(ticket.key, now)
        self.meter.request(ticket.route.name, "HIT", time.perf_counter() - start)

    async def aclose(self) -> None:
        for task in list(self._background):
            task.cancel()
        await self.origin.aclose()


# ---------------------------------------------------------------------- helpers


# Set by a lookup that found responses for the URI but none selected by the request's
# headers (RFC 9111 §4.1), so that Cache-Status says fwd=vary-miss (RFC 9211 §2.2).
# Request-scoped: each lookup resets it in the task that serves the request.
_VARY_MISS: Final = contextvars.ContextVar("sidecache_vary_miss", default=False)
_STALE_HIT: Final = "hit; detail=stale-while-revalidate"
# RFC 9110 §15.4.5: the fields a 304 answered from cache carries
_KEPT_304: Final = frozenset(
    {
        "etag",
        "last-modified",
        "cache-control",
        "expires",
        "vary",
        "date",
        "content-location",
        "age",
        "x-cache",
        "cache-status",
    }
)


async def _store_variant(
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


async def _claim(task: asyncio.Task[Fill]) -> Fill:
    """Await a detached fill; if our client goes away, release what nobody will read."""
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:

        def release(done: asyncio.Task[Fill]) -> None:
            if done.cancelled() or done.exception() is not None:
                return
            live = done.result().live
            if live is not None and live.stream is not None:
                _DRAINS.add(drain := asyncio.ensure_future(_drain(live.stream)))
                drain.add_done_callback(_DRAINS.discard)

        task.add_done_callback(release)
        raise


_DRAINS: set[asyncio.Future[None]] = set()
_HFM: Final = ":hfm"  # suffix of hit-for-miss marker keys on shared stores


async def _quiet(operation: Awaitable[object]) -> None:
    """A best-effort store call: a failure is the store's breaker's business."""
    try:
        await operation
    except StoreError as exc:
        log.debug("store call failed: %s", exc)


async def _drain(stream: AsyncIterator[bytes]) -> None:
    async for _ in stream:
        pass
