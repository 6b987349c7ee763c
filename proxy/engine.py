"""The driver of one worker's cache: it asks ``decide`` what a request gets and
performs it, dispatching on the decision's type: a pass-through, a stored response
(HIT, or STALE while one refresh runs), a fill from the origin, coalesced in this
process and across replicas (MISS), a HEAD forwarded, a 504 for ``only-if-cached``.

It never sees a server's types nor a library's exception: stores raise ``StoreError``
(a miss, or 503 where a route fails closed), the origin ``OriginError`` (stale if
allowed, else 502/504).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import replace
from typing import assert_never

from proxy.clock import Clock, SystemClock
from proxy.coalesce import Coalescer, Fill, Leases, Refresher, claim
from proxy.context import Context
from proxy.decide import (
    CACHEABLE_METHODS,
    Fetch,
    Found,
    Look,
    Pass,
    Probe,
    Refuse,
    Serve,
    answers,
    classify,
    decide_lookup,
    hostname,
    is_fresh_hit,
)
from proxy.entries import Entries
from proxy.entry import CachedResponse
from proxy.errors import StoreError
from proxy.exchange import Exchange, ProxyResponse, Ticket
from proxy.forward import Forwarder, PurgeHook
from proxy.freshness import passed_through
from proxy.keys import derive_key
from proxy.logs import AccessLog
from proxy.metrics import Meter
from proxy.origin import OriginClient
from proxy.policy import LoadedPolicy
from proxy.replies import HIT, CacheStatus, from_cache, plain, same_answer_until
from proxy.routing import Route, Router
from proxy.stores.base import Store

log = logging.getLogger("sidecache")

PurgeMethod = Callable[[Exchange], Awaitable[ProxyResponse]]


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
        self.meter = meter or Meter()
        self.entries = Entries(self.clock, self.meter)
        self.forward = Forwarder(origin, self.clock, self.meter, self.entries)
        self.coalescer: Coalescer[Fill] = Coalescer(self.clock)
        self.leases = Leases(self.clock, self.forward.fill, self.entries.lookup)
        self.refresher = Refresher(self.coalescer, self.leases)
        # ``PURGE <path>`` on the proxy port, answered by the invalidation wiring (which
        # checks ``admin.purge_from``); without it PURGE is forwarded like any method.
        self.purge_method: PurgeMethod | None = None
        self.access_log: AccessLog | None = None  # off unless server.access_log says so
        self.stores: dict[str, Store] = {}
        self.reconfigure(loaded, stores)

    # ------------------------------------------------------------ wiring

    def reconfigure(
        self,
        loaded: LoadedPolicy,
        stores: Mapping[str, Store],
        origin: OriginClient | None = None,
        access_log: AccessLog | None = None,
    ) -> None:
        """Swap in a policy's routes, its stores, and (when given) a new origin pool and
        access log, with no await between the parts (stores are the caller's to build
        and to close)."""
        self.loaded = loaded
        self.router = Router(loaded.routes)
        self.stores = self.forward.stores = dict(stores)
        if origin is not None:
            self.forward.origin = origin
        self.access_log = access_log

    def handle_purges(self, after_unsafe: PurgeHook, purge_method: PurgeMethod) -> None:
        """Route purges through the invalidation wiring: what an unsafe method purges
        (RFC 9111 §4.4) reaches every worker and replica, and ``PURGE`` is answered."""
        self.forward.purge_hook = after_unsafe
        self.purge_method = purge_method

    @property
    def origin(self) -> OriginClient:
        return self.forward.origin

    @property
    def purge_hook(self) -> PurgeHook | None:
        return self.forward.purge_hook

    @purge_hook.setter
    def purge_hook(self, hook: PurgeHook | None) -> None:
        self.forward.purge_hook = hook

    # ------------------------------------------------------------ the general path

    async def handle(self, ex: Exchange) -> ProxyResponse:
        start = time.perf_counter()
        route, params = self.router.match(ex.method, hostname(ex.host), ex.path)
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
        intake = classify(ex, cfg)
        match intake:
            case Pass(fwd=fwd, detail=detail):
                return await self.forward.pass_through(ex, route, fwd, detail)
            case Look(key=key, request_cc=request_cc):
                store = self.stores[cfg.backend]
                ctx = Context(ex, route, params, key, store, request_cc)
                try:
                    found = await self._lookup(ctx)
                except StoreError as exc:
                    if cfg.store_failure == "closed":
                        return plain(503, "cache unavailable", CacheStatus(detail="store-down"))
                    log.debug("store lookup failed: %s", exc)
                    found = Found(None, key)
                return await self._answer(ctx, found)
            case _:
                assert_never(intake)

    async def _lookup(self, ctx: Context) -> Found:
        if not ctx.store.shared:
            return await self.entries.lookup(ctx)
        began = time.perf_counter()
        found = await self.entries.lookup(ctx)
        self.meter.store_time(ctx.route.config.backend, "get", time.perf_counter() - began)
        return found

    async def _answer(self, ctx: Context, found: Found) -> ProxyResponse:
        ex, route = ctx.ex, ctx.route
        now = self.clock.time()
        if self.entries.recent:
            self.entries.note_repeat(ctx.key, now)
        # hit-for-miss: a Range then goes to the origin as it is (RFC 9110 §14.2)
        uncacheable = "range" in ex.hmap and self.coalescer.is_uncacheable(ctx.key)
        decision = decide_lookup(
            ex, route.config, found, now, ctx.request_cc, random.random, uncacheable
        )
        match decision:
            case Serve(entry=entry):
                if decision.refresh:
                    self.refresher.start(replace(ctx, stale=entry))
                if decision.stale is not None:
                    self.meter.stale_served(route.name, decision.stale)
                status = (
                    HIT if decision.detail is None else CacheStatus(True, detail=decision.detail)
                )
                return from_cache(ex, entry, now, decision.label, status)
            case Fetch(stale=stale, fwd=fwd):
                return await self._miss(replace(ctx, stale=stale, fwd=fwd))
            case Probe(stale=stale, stored_key=stored_key, fwd=fwd):
                return await self.forward.head(replace(ctx, stale=stale, fwd=fwd), stored_key)
            case Refuse():
                return plain(504, "not cached", CacheStatus(detail="only-if-cached"))
            case Pass(fwd=fwd, detail=detail):
                return await self.forward.pass_through(ex, route, fwd, detail)
            case _:
                assert_never(decision)

    async def _miss(self, ctx: Context) -> ProxyResponse:
        """Fill ``ctx``'s key: follow a fill in flight, lead one, or (coalescing off, a
        hit-for-miss key, a full waiting list) fetch on our own."""
        cfg = ctx.route.config
        coalescer = self.coalescer
        if cfg.coalesce.enabled and not coalescer.is_uncacheable(ctx.key):
            flight = coalescer.in_flight(ctx.key)
            if flight is None:
                task = coalescer.lead(ctx.key, lambda: self.leases.fill(ctx))
                return self._deliver(ctx, await claim(task))
            if flight.waiters < cfg.coalesce.max_waiters:
                fill = await coalescer.follow(flight, cfg.coalesce.timeout)
                if fill is not None and fill.entry is not None and answers(fill.entry, ctx.ex, cfg):
                    self.meter.follower(cfg.name)
                    status = CacheStatus(fwd=ctx.fwd, fwd_status=fill.status, collapsed=True)
                    return from_cache(ctx.ex, fill.entry, self.clock.time(), "HIT", status)
                # leader failed, timed out, its answer was private or for other headers
        return self._deliver(ctx, await self.forward.fill(ctx))

    def _deliver(self, ctx: Context, fill: Fill) -> ProxyResponse:
        if fill.live is not None:
            if fill.entry is None and 0 < fill.status < 500:
                self.coalescer.mark_uncacheable(ctx.key, ctx.route.config.coalesce.hit_for_miss)
            return fill.live
        assert fill.entry is not None
        now = self.clock.time()
        if fill.collapsed:
            status = CacheStatus(fwd=ctx.fwd, fwd_status=fill.status, collapsed=True)
            return from_cache(ctx.ex, fill.entry, now, "HIT", status)
        status = CacheStatus(fwd=ctx.fwd, fwd_status=fill.status, stored=True)
        response = from_cache(ctx.ex, fill.entry, now, "MISS", status)
        response.headers += fill.own
        return response

    # ------------------------------------------------------------ the synchronous hit path

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
        return ticket, self._hit(ticket, raw, self.clock.time(), start)

    def ticket(self, ex: Exchange) -> Ticket | None:
        """What a request resolves to on the synchronous hit path (its route, key and
        the store's synchronous reader), or ``None`` when it can never take that path.

        It depends on the request and the policy only, so a server may keep it for
        requests identical to ``ex`` while ``ticket.router is engine.router``.
        """
        route, _ = self.router.match(ex.method, hostname(ex.host), ex.path)
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

    def _hit(self, ticket: Ticket, raw: bytes, now: float, start: float) -> ProxyResponse | None:
        """The HIT ``raw`` makes for ``ticket``'s request, if it is a fresh entry as
        ``decide_lookup`` judges it (``decide.is_fresh_hit``); else ``None``."""
        key = ticket.key
        cached = self.entries.decoded.get(key, raw)
        if not isinstance(cached, CachedResponse) or cached.variant:
            return None
        ex = ticket.ex
        if not is_fresh_hit(ex, ticket.route.config, cached, now):
            return None
        if self.entries.recent:
            self.entries.note_repeat(key, now)
        response = from_cache(ex, cached, now, "HIT", HIT)
        self._observe(ex, ticket.route.name, response, start)
        return response

    def answer_ticket(
        self, ticket: Ticket, raw: bytes, now: float, start: float
    ) -> tuple[ProxyResponse, float] | None:
        """The answer to ``ticket``'s request from ``raw`` (what its store holds under
        its key) if that is a fresh entry servable without an await, and until when
        (``clock.time()``) the very same answer, Age and Cache-Status included, holds
        while the store keeps ``raw``; else ``None``."""
        response = self._hit(ticket, raw, now, start)
        if response is None:
            return None
        cached = self.entries.decoded.get(ticket.key, raw)
        assert isinstance(cached, CachedResponse)
        return response, same_answer_until(cached, now)

    def served_again(self, ticket: Ticket, now: float, start: float) -> None:
        """Account for a request a server answered with the bytes of an earlier answer
        ``answer_ticket`` made, while that answer's ``until`` had not passed.

        It decides nothing: the one freshness decision was made when the answer was
        built, and ``until`` (``replies.same_answer_until``) never outlasts that
        freshness for the same stored bytes (a ticket's request carries no directives
        that could end it earlier: honoured request directives never take the ticket
        path)."""
        if self.entries.recent:
            self.entries.note_repeat(ticket.key, now)
        self.meter.request(ticket.route.name, "HIT", time.perf_counter() - start)

    async def aclose(self) -> None:
        self.refresher.cancel()
        await self.forward.origin.aclose()
