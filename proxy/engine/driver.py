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
from typing import Any, Final, assert_never

from proxy.clock import Clock, SystemClock
from proxy.core.decide import (
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
)
from proxy.core.exchange import Exchange, ProxyResponse, Ticket
from proxy.core.replies import HIT, CacheStatus, PlainHit, from_cache, plain
from proxy.core.routing import Route, Router
from proxy.engine.coalesce import Coalescer, Fill, Leases, Refresher, claim
from proxy.engine.context import Context, FirstRead
from proxy.engine.entries import Entries
from proxy.engine.forward import Forwarder, PurgeHook
from proxy.engine.hitpath import HitPath
from proxy.errors import StoreError
from proxy.obs.logs import AccessLog
from proxy.obs.metrics import Meter
from proxy.origin.client import OriginClient
from proxy.policy.load import LoadedPolicy
from proxy.stores.base import Store

log = logging.getLogger("sidecache")

PurgeMethod = Callable[[Exchange], Awaitable[ProxyResponse]]
# Tickets kept between ``answer_now`` and ``handle``: about one per connection with a
# request on its way; past this many, the ones of requests never handled are dropped.
PENDING_TICKETS: Final = 4096


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
        self.hits = KeepingHitPath(
            Router(loaded.routes), {}, self.entries, self.meter, self._observe
        )
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
        self.router = self.hits.router = Router(loaded.routes)
        self.stores = self.forward.stores = self.hits.stores = dict(stores)
        self.hits.shared = frozenset(name for name, store in stores.items() if store.shared)
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

    # ------------------------------------------------------------ the general path

    async def handle(self, ex: Exchange) -> ProxyResponse:
        start = time.perf_counter()
        first: FirstRead | None = None
        ticket = self.hits.kept.pop(id(ex), None)  # it holds ``ex``: the id is ex's alone
        if ticket is not None and ticket.router is self.router:
            # a shared store's hit: answered from the ticket's key and the one read,
            # judged by the hit path as a synchronous hit is; anything else (a miss, a
            # stale entry, Vary, a store error) goes on below with the read made
            first = await self._read(ticket)
            if first.raw is not None:
                made = self.hits.answer_ticket(ticket, first.raw, self.clock.time(), start)
                if made is not None:
                    return made[0]
        route, params = self.router.match(ex.method, hostname(ex.host), ex.path)
        response = await self._handle(ex, route, params, first)
        self._observe(ex, route.name, response, start)
        return response

    async def _read(self, ticket: Ticket) -> FirstRead:
        began = time.perf_counter()
        try:
            raw = await ticket.store.get(ticket.key)
        except StoreError as exc:
            return FirstRead(ticket.key, None, exc)
        self.meter.store_time(ticket.route.config.backend, "get", time.perf_counter() - began)
        return FirstRead(ticket.key, raw)

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

    async def _handle(
        self, ex: Exchange, route: Route, params: dict[str, str], first: FirstRead | None = None
    ) -> ProxyResponse:
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
                    found = await self._lookup(ctx, first)
                except StoreError as exc:
                    if cfg.store_failure == "closed":
                        return plain(503, "cache unavailable", CacheStatus(detail="store-down"))
                    log.debug("store lookup failed: %s", exc)
                    found = Found(None, key)
                return await self._answer(ctx, found)
            case _:
                assert_never(intake)

    async def _lookup(self, ctx: Context, first: FirstRead | None = None) -> Found:
        if first is not None and first.key == ctx.key:
            if first.error is not None:
                raise first.error
            return await self.entries.select(ctx, first.raw)
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
    # (proxy.engine.hitpath; what a server asks, kept here as the engine's interface)

    def answer_now(self, ex: Exchange) -> tuple[Ticket | None, ProxyResponse | None]:
        """``HitPath.answer_now``: a fresh entry in process memory, at once."""
        return self.hits.answer_now(ex)

    async def fetch_ticket(self, ticket: Ticket) -> bytes | None:
        """``HitPath.fetch_ticket``: a shared store's bytes under a ticket's key."""
        return await self.hits.fetch_ticket(ticket)

    def answer_ticket(
        self, ticket: Ticket, raw: bytes, now: float, start: float
    ) -> tuple[ProxyResponse, float] | None:
        """``HitPath.answer_ticket``: the answer ``raw`` makes, and until when it holds."""
        return self.hits.answer_ticket(ticket, raw, now, start)

    def served_again(self, ticket: Ticket, now: float, start: float) -> None:
        """``HitPath.served_again``: a replayed answer, counted."""
        self.hits.served_again(ticket, now, start)

    async def aclose(self) -> None:
        self.refresher.cancel()
        await self.forward.origin.aclose()


class KeepingHitPath(HitPath):
    """``HitPath``, keeping for ``Engine.handle`` the ticket of a request it could not
    answer at once when its store is a shared one (whichever entry point a server
    asks): ``handle`` then neither matches its route nor derives its key again."""

    def __init__(self, *args: Any) -> None:  # HitPath's
        super().__init__(*args)
        self.shared: frozenset[str] = frozenset()  # backends whose store is shared
        self.kept: dict[int, Ticket] = {}  # id(ex) -> its ticket, until ``handle`` takes it

    def answer_now(self, ex: Exchange) -> tuple[Ticket | None, ProxyResponse | None]:
        ticket, answer = super().answer_now(ex)
        if answer is None and ticket is not None:
            self._keep(ex, ticket)
        return ticket, answer

    def answer_plain(self, ex: Exchange) -> tuple[Ticket | None, ProxyResponse | PlainHit | None]:
        ticket, answer = super().answer_plain(ex)
        if answer is None and ticket is not None:
            self._keep(ex, ticket)
        return ticket, answer

    def _keep(self, ex: Exchange, ticket: Ticket) -> None:
        if ticket.route.config.backend in self.shared:
            kept = self.kept
            if len(kept) >= PENDING_TICKETS:
                kept.clear()  # requests never handled (their connection went)
            kept[id(ex)] = ticket
