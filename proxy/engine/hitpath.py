"""The synchronous hit path: a request answered from process memory without an await
(``answer_now``; ``answer_plain`` answers a plain HIT as the parts prepared on its
entry), and what a server that remembers answers asks to replay them (``ticket``,
``fetch_ticket``, ``answer_ticket``, ``served_again``). What depends only on the policy
and the stores (each route's store and reader, each target's key) is worked out once.

It decides nothing of its own: a stored response answers here only when
``decide.is_fresh_hit`` (the judgement ``decide_lookup`` makes) says it is a plain HIT;
everything else goes through ``Engine.handle``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Final

from proxy.core.decide import CACHEABLE_METHODS, hostname, is_fresh_hit
from proxy.core.entry import CachedResponse
from proxy.core.exchange import Exchange, ProxyResponse, Ticket
from proxy.core.freshness import passed_through
from proxy.core.keys import derive_key
from proxy.core.replies import HIT, PlainHit, from_cache, plain_hit, same_answer_until
from proxy.core.routing import Route, Router
from proxy.engine.entries import Entries
from proxy.errors import StoreError
from proxy.obs.metrics import Meter
from proxy.stores.base import Store

Observe = Callable[[Exchange, str, ProxyResponse, float], None]
Reader = Callable[[str], bytes | None]

KEYS_KEPT: Final = 16384  # targets whose key is kept worked out


class HitPath:
    """Answers fresh hits at once; the engine keeps its router and stores current."""

    def __init__(
        self,
        router: Router,
        stores: Mapping[str, Store],
        entries: Entries,
        meter: Meter,
        observe: Observe,
    ) -> None:
        self._router = router
        self._stores = stores
        self._entries = entries
        self._meter = meter
        self._observe = observe
        # Per route of the current policy and stores: its store and synchronous reader,
        # or None when the route never takes this path (``_plan``).
        self._plans: dict[int, tuple[Store, Reader | None] | None] = {}
        # derive_key's answers for routes whose key reads no request field: the key is
        # then a function of the route and the target alone (``_key``)
        self._keys: dict[tuple[str, str, str, str], str] = {}

    @property
    def router(self) -> Router:
        return self._router

    @router.setter
    def router(self, router: Router) -> None:
        """A new policy: what was worked out per route and per key under the old one
        goes with it."""
        self._router = router
        self._plans.clear()
        self._keys.clear()

    @property
    def stores(self) -> Mapping[str, Store]:
        return self._stores

    @stores.setter
    def stores(self, stores: Mapping[str, Store]) -> None:
        self._stores = stores
        self._plans.clear()

    def answer_now(self, ex: Exchange) -> tuple[Ticket | None, ProxyResponse | None]:
        """The request's ticket (``None``: it never takes this path) and, when a fresh
        entry in process memory answers it at once, the answer. Anything else (a miss, a
        stale entry, Vary, request directives, a shared store) has no answer here and
        the caller goes through ``Engine.handle``."""
        start = time.perf_counter()
        ticket, raw = self._read(ex)
        if ticket is None or raw is None:
            return ticket, None
        return ticket, self._hit(ticket, raw, self._entries.clock.time(), start)

    def answer_plain(self, ex: Exchange) -> tuple[Ticket | None, ProxyResponse | PlainHit | None]:
        """``answer_now``, with a plain HIT (``replies.plain_hit``) answered as its parts
        for the server to write, without a ``ProxyResponse``: for a server that keeps no
        access log (a plain HIT is counted here, and logged nowhere)."""
        start = time.perf_counter()
        ticket, raw = self._read(ex)
        if ticket is None or raw is None:
            return ticket, None
        now = self._entries.clock.time()
        cached = self._fresh(ticket, raw, now)
        if cached is None:
            return ticket, None
        parts = plain_hit(ex, cached, now)
        if parts is None:
            return ticket, self._from_cache(ticket, cached, now, start)
        self._meter.request(ticket.route.name, "HIT", time.perf_counter() - start)
        return ticket, parts

    def _read(self, ex: Exchange) -> tuple[Ticket | None, bytes | None]:
        """The request's ticket, and what process memory holds under its key."""
        ticket = self.ticket(ex)
        if ticket is None or ticket.get_now is None:
            return ticket, None
        return ticket, ticket.get_now(ticket.key)

    def ticket(self, ex: Exchange) -> Ticket | None:
        """What a request resolves to on this path (its route, key and the store's
        synchronous reader), or ``None`` when it can never take it. It depends on the
        request and the policy only, so a server may keep it for requests identical to
        ``ex`` while ``ticket.router`` is the engine's."""
        router = self._router
        route, _ = router.match(ex.method, hostname(ex.host), ex.path)
        try:
            plan = self._plans[id(route)]
        except KeyError:
            plan = self._plans[id(route)] = self._plan(route)
        if plan is None or ex.method not in CACHEABLE_METHODS or ex.body is not None:
            return None
        hmap = ex.hmap
        if passed_through(hmap) is not None or "authorization" in hmap:
            return None  # preconditions are the origin's; §3.5 needs a look
        store, get_now = plan
        return Ticket(ex, route, self._key(route, ex), get_now, store, router)

    def _plan(self, route: Route) -> tuple[Store, Reader | None] | None:
        """A route's store and its synchronous reader; ``None`` when no request on the
        route takes this path (its config needs the general path's judgement)."""
        cfg = route.config
        if not cfg.cache or cfg.client_cache_control == "honor":
            return None
        if cfg.cache_authorized or cfg.early_refresh:
            return None
        store = self._stores[cfg.backend]
        get_now = store.reader()
        if get_now is None and not store.shared:
            return None
        return store, get_now

    def _key(self, route: Route, ex: Exchange) -> str:
        """``derive_key`` for ``ex``: worked out once per target for a route whose key
        reads no request field (bounded: cleared when full)."""
        cfg = route.config
        spec = cfg.key
        if spec.headers or spec.cookies:
            return derive_key(cfg.name, ex.host, ex.path, ex.query, spec, ex.hmap)
        target = (cfg.name, ex.host, ex.path, ex.query)
        key = self._keys.get(target)
        if key is None:
            if len(self._keys) >= KEYS_KEPT:
                self._keys.clear()
            key = self._keys[target] = derive_key(*target, spec, ex.hmap)
        return key

    async def fetch_ticket(self, ticket: Ticket) -> bytes | None:
        """What a shared store holds under a ticket's key (``None``: a miss, or the store
        failed: the caller then goes through ``handle``, which decides what that means)."""
        began = time.perf_counter()
        try:
            raw = await ticket.store.get(ticket.key)
        except StoreError:
            return None
        self._meter.store_time(ticket.route.config.backend, "get", time.perf_counter() - began)
        return raw

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
        cached = self._entries.decoded.get(ticket.key, raw)
        assert isinstance(cached, CachedResponse)
        return response, same_answer_until(cached, now)

    def served_again(self, ticket: Ticket, now: float, start: float) -> None:
        """Account for a request a server answered with the bytes of an earlier answer
        ``answer_ticket`` made, while that answer's ``until`` had not passed. It decides
        nothing: ``until`` (``replies.same_answer_until``) never outlasts the freshness
        judged when the answer was made, for the same stored bytes (and a ticket's
        request carries no directive that could end it earlier)."""
        if self._entries.recent:
            self._entries.note_repeat(ticket.key, now)
        self._meter.request(ticket.route.name, "HIT", time.perf_counter() - start)

    def _hit(self, ticket: Ticket, raw: bytes, now: float, start: float) -> ProxyResponse | None:
        """The HIT ``raw`` makes for ``ticket``'s request, if it is a fresh entry as
        ``decide_lookup`` judges it; else ``None``."""
        cached = self._fresh(ticket, raw, now)
        return None if cached is None else self._from_cache(ticket, cached, now, start)

    def _from_cache(
        self, ticket: Ticket, cached: CachedResponse, now: float, start: float
    ) -> ProxyResponse:
        response = from_cache(ticket.ex, cached, now, "HIT", HIT)
        self._observe(ticket.ex, ticket.route.name, response, start)
        return response

    def _fresh(self, ticket: Ticket, raw: bytes, now: float) -> CachedResponse | None:
        """The entry ``raw`` holds, if it answers ``ticket``'s request as a HIT (counted
        for the report's repeat sample); else ``None``."""
        key = ticket.key
        cached = self._entries.decoded.get(key, raw)
        if not isinstance(cached, CachedResponse) or cached.variant:
            return None
        if not is_fresh_hit(ticket.ex, ticket.route.config, cached, now):
            return None
        if self._entries.recent:
            self._entries.note_repeat(key, now)
        return cached
