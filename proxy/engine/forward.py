"""Requests that go to the origin, performed as ``decide`` says: a pass-through, a fill
(conditional when a stale copy has validators) and what its answer becomes, a HEAD the
cache could not answer. The only place the engine's paths call the origin client.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Final, assert_never

from proxy import __version__
from proxy.clock import Clock
from proxy.core.admission import make_entry, validators
from proxy.core.decide import (
    Fields,
    Freshen,
    Keep,
    Stream,
    UseStale,
    decide_answer,
    decide_head,
    decide_update,
    on_origin_error,
)
from proxy.core.entry import CachedResponse
from proxy.core.exchange import Exchange, ProxyResponse
from proxy.core.freshness import SAFE_METHODS, invalidation_targets
from proxy.core.keys import route_tag, target_tag, variant_key
from proxy.core.replies import (
    CacheStatus,
    failure_kind,
    from_cache,
    live_headers,
    origin_failed,
    set_cookies,
)
from proxy.core.routing import Route
from proxy.core.storedfields import HOP_BY_HOP
from proxy.engine.coalesce import Fill, quiet
from proxy.engine.context import Context
from proxy.engine.entries import Entries
from proxy.errors import OriginError, StoreError
from proxy.obs.metrics import Meter
from proxy.origin.client import OriginClient, OriginResponse
from proxy.policy.load import RouteConfig
from proxy.stores.base import Store
from proxy.wire.codec import find_length
from proxy.wire.relay import FRAMING, answer_lines, connection_options, field_lines, lowered

log = logging.getLogger("sidecache")

VIA: Final = f"1.1 sidecache/{__version__}"
_NOT_FORWARDED: Final = HOP_BY_HOP | {"host"}
_CONDITIONALS: Final = frozenset(
    {"if-none-match", "if-modified-since", "if-match", "if-unmodified-since", "if-range", "range"}
)
_RANGE_REQUEST: Final = frozenset({"range", "if-range"})
# the client's own are replaced by ours (its values carried into them)
_REPLACED: Final = frozenset({"x-forwarded-for", "x-forwarded-proto", "via"})
_RELAYED_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})  # no body to frame
_ANSWER_DROP: Final = lowered(HOP_BY_HOP) | FRAMING
PurgeHook = Callable[[Sequence[str]], Awaitable[object]]


class Forwarder:
    """Calls the origin for the engine and turns its answers into fills and replies."""

    def __init__(self, origin: OriginClient, clock: Clock, meter: Meter, entries: Entries) -> None:
        self.origin = origin
        self._clock = clock
        self._meter = meter
        self._entries = entries
        self.stores: dict[str, Store] = {}
        # Where unsafe-method purges go (every worker and replica, when the invalidation
        # wiring sets it); without it they purge this process's stores only.
        self.purge_hook: PurgeHook | None = None
        # per route config (by identity, kept alive here): the request fields never
        # forwarded, as lowered bytes, and whether we add X-Forwarded-Host
        self._drops: dict[int, tuple[RouteConfig, frozenset[bytes], bool]] = {}
        self._members: dict[tuple[str, int, str | None], str] = {}

    # ------------------------------------------------------------ pass-through

    async def pass_through(
        self, ex: Exchange, route: Route, fwd: str, detail: str | None
    ) -> ProxyResponse:
        cfg = route.config
        headers = self._relayed(ex, cfg) or self.forward_headers(
            ex, route, strip_conditionals=False
        )
        began = time.perf_counter()
        try:
            response = await self.origin.request(
                ex.method, ex.target, headers, ex.body, cfg.timeout, interim=ex.interim
            )
        except OriginError as exc:
            self._meter.origin_failed(cfg.name, failure_kind(exc))
            return self._failed(exc, route, "uri-miss")
        self._meter.origin(cfg.name, response.status, time.perf_counter() - began)
        if ex.method not in SAFE_METHODS and 200 <= response.status < 400:
            await self._invalidate_after_unsafe(ex, route, response.headers)
        label = "BYPASS" if fwd in ("bypass", "method", "request") else "MISS"
        relayed = self._relay_answer(ex, response, label, fwd, detail)
        if relayed is not None:
            return relayed
        status = CacheStatus(fwd=fwd, fwd_status=response.status, detail=detail)
        return self.live(ex, response, label, status)

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

    # ------------------------------------------------------------ fills

    async def fill(self, ctx: Context) -> Fill:
        """Fetch from the origin (conditionally when a stale copy has validators)."""
        ex, route, stale = ctx.ex, ctx.route, ctx.stale
        cfg = route.config
        headers = self.forward_headers(ex, route, strip_conditionals=True)
        if stale is not None:
            headers += validators(stale)
        request_time = self._clock.time()
        began = time.perf_counter()
        try:
            response = await self.origin.request(
                "GET", ex.target, headers, None, cfg.timeout, interim=ex.interim
            )
        except OriginError as exc:
            self._meter.origin_failed(cfg.name, failure_kind(exc))
            use = on_origin_error(stale, self._clock.time(), ctx.request_cc)
            if use is not None:
                return self._stale_on_error(ctx, use)
            return Fill(None, self._failed(exc, route, ctx.fwd), 0)
        self._meter.origin(cfg.name, response.status, time.perf_counter() - began)
        response_time = self._clock.time()
        decision = decide_answer(
            ex,
            cfg,
            stale,
            response.status,
            response.headers,
            headers,
            response_time,
            ctx.request_cc,
        )
        match decision:
            case UseStale():
                response.release()
                return self._stale_on_error(ctx, decision)
            case Freshen(stale=stored):
                response.release()
                fresh = Fields(response.headers, request_time, response_time)
                return await self._freshen(ctx, stored, fresh)
            case Stream(reason=reason, status=status):
                self._meter.not_stored(cfg.name, reason)
                return Fill(None, self._live_fill(ctx, response, reason), status)
            case Keep():
                return await self._keep(ctx, response, decision, request_time, response_time)
            case _:
                assert_never(decision)

    async def _keep(
        self,
        ctx: Context,
        response: OriginResponse,
        decision: Keep,
        request_time: float,
        response_time: float,
    ) -> Fill:
        cfg = ctx.route.config
        try:
            body, complete = await response.read_up_to(cfg.max_object_size)
        except OriginError as exc:  # the origin failed mid-body: nothing to store
            return Fill(None, self._failed(exc, ctx.route, ctx.fwd), 0)
        if not complete:
            self._meter.not_stored(cfg.name, "size")
            return Fill(None, self._live_fill(ctx, response, "size", body), response.status)
        response.release()
        stored = decision.decision
        entry = make_entry(
            cfg,
            ctx.ex.hmap,
            response.status,
            response.headers,
            body,
            stored,
            request_time,
            response_time,
        )
        await self._entries.store(ctx, entry, stored.storage_ttl)
        return Fill(entry, None, response.status, own=set_cookies(response.headers))

    def _stale_on_error(self, ctx: Context, use: UseStale) -> Fill:
        """RFC 5861 §4: the stale copy answers in place of the origin's failure."""
        self._meter.stale_served(ctx.route.name, "error")
        cache_status = CacheStatus(fwd="stale", fwd_status=use.status, detail="stale-if-error")
        live = from_cache(ctx.ex, use.stale, self._clock.time(), "STALE", cache_status)
        return Fill(None, live, 0)

    async def _freshen(
        self,
        ctx: Context,
        stale: CachedResponse,
        fresh: Fields,
    ) -> Fill:
        """RFC 9111 §4.3.4: a 304 freshens the stored response with its fields (§3.2).
        When the result may not be stored (the 304 brought Set-Cookie or no-store, or
        named another ETag), it answers this client only."""
        cfg = ctx.route.config
        update = decide_update(ctx.ex, cfg, stale, fresh)
        if not update.store:
            if update.drop:
                stored_key = variant_key(ctx.key, stale.variant) if stale.variant else ctx.key
                await quiet(ctx.store.delete([stored_key]))
            status = CacheStatus(fwd=ctx.fwd, fwd_status=304, detail=update.reason)
            own = from_cache(ctx.ex, update.entry, fresh.response_time, "MISS", status)
            return Fill(None, own, 304)
        await self._entries.store(ctx, update.entry, update.ttl)
        return Fill(update.entry, None, 304, own=set_cookies(fresh.headers))

    # ------------------------------------------------------------ HEAD

    async def head(self, ctx: Context, stored_key: str) -> ProxyResponse:
        """A HEAD the cache cannot answer goes to the origin as a HEAD; a 200 answer then
        updates the stored GET response when it matches, else makes it go (§4.3.5)."""
        ex, route, stored = ctx.ex, ctx.route, ctx.stale
        headers = self.forward_headers(ex, route, strip_conditionals=False)
        # RFC 9110 §14.2: Range is for GET; this HEAD is for the whole, as one from cache is
        headers = [(k, v) for k, v in headers if k.lower() not in _RANGE_REQUEST]
        request_time = self._clock.time()
        try:
            response = await self.origin.request(
                "HEAD", ex.target, headers, None, route.config.timeout, interim=ex.interim
            )
        except OriginError as exc:
            return self._failed(exc, route, ctx.fwd)
        response_time = self._clock.time()
        updated = False
        if stored is not None and response.status == 200:
            fresh = Fields(response.headers, request_time, response_time)
            update = decide_head(ex, route.config, stored, fresh)
            if update.store:
                await self._entries.store(ctx, update.entry, update.ttl)
                updated = True
            elif update.drop:
                await quiet(ctx.store.delete([stored_key]))
        status = CacheStatus(fwd=ctx.fwd, fwd_status=response.status, stored=updated)
        live = self.live(ex, response, "MISS", status)
        live.head_length = find_length(response.headers)
        return live

    # ------------------------------------------------------------ messages

    def forward_headers(
        self, ex: Exchange, route: Route, *, strip_conditionals: bool
    ) -> list[tuple[str, str]]:
        """RFC 9110 §7.6: drop hop-by-hop fields, set Host and X-Forwarded-*, add Via."""
        cfg = route.config
        connection = {t.strip().lower() for t in ex.hmap.get("connection", "").split(",")}
        allowed = {h.lower() for h in cfg.forward_headers}
        drop = set(_NOT_FORWARDED) | connection | _REPLACED
        drop |= {h.lower() for h in cfg.strip_headers} - allowed
        if strip_conditionals:
            drop |= _CONDITIONALS
        out = [(k, v) for k, v in ex.headers if k.lower() not in drop]
        return out + self._added(ex, "x-forwarded-host" not in allowed)

    def _added(self, ex: Exchange, forwarded_host: bool) -> list[tuple[str, str]]:
        """Host, X-Forwarded-For/-Proto (and -Host unless the route forwards the
        client's), and Via."""
        out = [("Host", self.origin.host)]
        forwarded_for = ex.hmap.get("x-forwarded-for")
        if ex.client:
            forwarded_for = f"{forwarded_for}, {ex.client}" if forwarded_for else ex.client
        if forwarded_for:
            out.append(("X-Forwarded-For", forwarded_for))
        out.append(("X-Forwarded-Proto", ex.scheme))
        if ex.host and forwarded_host:
            out.append(("X-Forwarded-Host", ex.host))
        via = ex.hmap.get("via")
        out.append(("Via", f"{via}, {VIA}" if via else VIA))
        return out

    def _relayed(self, ex: Exchange, cfg: RouteConfig) -> bytes | None:
        """``forward_headers`` of a pass-through without a body, as the field lines
        relayed byte for byte (``None``: it cannot be, and takes ``forward_headers``)."""
        fields = ex.wire_fields
        if fields is None or ex.body is not None or ex.method not in _RELAYED_METHODS:
            return None
        held = self._drops.get(id(cfg))
        if held is None or held[0] is not cfg:
            allowed = {h.lower() for h in cfg.forward_headers}
            drop = set(_NOT_FORWARDED) | _REPLACED
            drop |= {h.lower() for h in cfg.strip_headers} - allowed
            held = self._drops[id(cfg)] = (cfg, lowered(drop), "x-forwarded-host" not in allowed)
        _, drop_lines, forwarded_host = held
        connection = ex.hmap.get("connection")
        if connection is not None and connection.lower() not in ("keep-alive", "close"):
            drop_lines = drop_lines | connection_options(fields)  # they address this hop
        lines = field_lines(fields, drop_lines)
        if lines is None:
            return None
        added = "".join([f"{k}: {v}\r\n" for k, v in self._added(ex, forwarded_host)])
        return lines + added.encode("latin-1")

    def _relay_answer(
        self, ex: Exchange, response: OriginResponse, label: str, fwd: str, detail: str | None
    ) -> ProxyResponse | None:
        """``live`` for a pass-through whose whole body is here: the origin's field
        lines relayed as they came, without decoding them (``None``: ``live`` it is)."""
        code = response.status
        if ex.method == "HEAD" or code in (204, 304) or code < 200:
            return None
        relayed = answer_lines(response.raw, _ANSWER_DROP)
        if relayed is None:
            return None
        body = response.complete_body()
        if body is None:
            return None
        block, dated = relayed
        # a pass-through's few (fwd, origin status, detail) make the same text every time
        member = self._members.get((fwd, code, detail))
        if member is None:
            member = CacheStatus(fwd=fwd, fwd_status=code, detail=detail).member()
            if len(self._members) < 1024:
                self._members[(fwd, code, detail)] = member
        headers = [("X-Cache", label), ("Cache-Status", member)]
        return ProxyResponse(code, headers, body, cache=label, block=block, dated=dated)

    def live(
        self,
        ex: Exchange,
        response: OriginResponse,
        label: str,
        status: CacheStatus,
        head: bytes = b"",
    ) -> ProxyResponse:
        """Stream the origin's answer through, untouched but for hop-by-hop fields;
        ``head``: body bytes already read from it."""
        headers = live_headers(response.headers, label, status)
        if ex.method == "HEAD" or response.status in (204, 304) or response.status < 200:
            response.release()
            return ProxyResponse(response.status, headers, cache=label)
        rest = response.complete_body()
        if rest is not None:  # the whole answer is here: one write, no stream
            return ProxyResponse(response.status, headers, head + rest, cache=label)
        return ProxyResponse(response.status, headers, stream=response.iter_rest(head), cache=label)

    def _live_fill(
        self, ctx: Context, response: OriginResponse, reason: str, head: bytes = b""
    ) -> ProxyResponse:
        status = CacheStatus(fwd=ctx.fwd, fwd_status=response.status, detail=reason)
        return self.live(ctx.ex, response, "MISS", status, head)

    @staticmethod
    def _failed(exc: OriginError, route: Route, fwd: str) -> ProxyResponse:
        log.warning("origin error on route %s: %s", route.name, exc)
        return origin_failed(exc, fwd)
