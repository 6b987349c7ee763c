"""The cache's decisions, as values: what a request gets (forwarded untouched, answered
from a stored response, fetched), and what an origin answer becomes (stored, streamed,
replaced by a stale copy, or merged into the stored response).

Pure: no awaits, no I/O, no clock (``now`` is an argument) and no randomness (``draw``
is). The engine performs what a decision asks and dispatches on its type.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Final

from proxy.core.admission import freshness_facts
from proxy.core.cachecontrol import CacheControl, accepts_gzip, parse_cache_control, parse_vary
from proxy.core.entry import CachedResponse, EntryError
from proxy.core.exchange import Exchange, Headers
from proxy.core.freshness import (
    ERROR_STATUSES,
    StoreDecision,
    Usability,
    assess,
    decide_storage,
    initial_age,
    passed_through,
    request_cache_control,
    reusable_with_credentials,
    stale_if_error_window,
    within_stale_window,
)
from proxy.core.keys import derive_key, variant_of
from proxy.core.storedfields import (
    freshen_headers,
    head_updates,
    header_values,
    selects_for_update,
    storable_headers,
)
from proxy.policy.load import RouteConfig

CACHEABLE_METHODS: Final = frozenset({"GET", "HEAD"})
SWR: Final = "stale-while-revalidate"  # the Cache-Status detail of an RFC 5861 §3 answer

# ---------------------------------------------------------------- request → action


@dataclass(frozen=True, slots=True)
class Pass:
    """Forward the request untouched: not a request the cache answers (RFC 9211 §2.2
    ``fwd``, and why in ``detail``)."""

    fwd: str
    detail: str | None = None


@dataclass(frozen=True, slots=True)
class Look:
    """A request the cache may answer: look ``key`` up."""

    key: str
    request_cc: CacheControl


def classify(ex: Exchange, cfg: RouteConfig) -> Pass | Look:
    """Whether the cache takes part in this request, and under which key."""
    if not cfg.cache:
        return Pass("bypass", "route")
    if ex.method not in CACHEABLE_METHODS:
        return Pass("method")
    if (ex.body is not None and ex.hmap.get("content-length", "0") != "0") or (
        "transfer-encoding" in ex.hmap
    ):
        return Pass("bypass", "body")  # a GET with a body is never keyed
    if (untouched := passed_through(ex.hmap)) is not None:
        return Pass("bypass", untouched)  # If-Match and the like: the origin's
    request_cc = request_cache_control(cfg, ex.hmap)
    who = identity(ex.hmap, cfg.key.cookies) if cfg.cache_authorized else ""
    return Look(derive_key(cfg.name, ex.host, ex.path, ex.query, cfg.key, ex.hmap, who), request_cc)


def identity(request: Mapping[str, str], keyed_cookies: Sequence[str]) -> str:
    """Whom a request speaks for, on a ``cache_authorized`` route: its Authorization and,
    unless the route keys on named cookies (which then identify the user), its Cookie."""
    credentials = request.get("authorization", "")
    if not keyed_cookies:
        credentials += "\0" + request.get("cookie", "")
    if credentials in ("", "\0"):
        return ""
    return hashlib.blake2b(credentials.encode(), digest_size=16).hexdigest()


def hostname(host: str) -> str:
    """The Host header without its port (``[::1]:8080`` → ``[::1]``)."""
    if host.startswith("["):
        return host[: host.find("]") + 1]
    return host.partition(":")[0]


# ---------------------------------------------------------------- lookup → action


@dataclass(frozen=True, slots=True)
class Found:
    """What a lookup found: the stored response selected for the request (RFC 9111
    §4.1) and the key it is stored under, or none; ``vary_miss`` when the URI has
    responses but none for this request's selecting fields (RFC 9211 §2.2)."""

    entry: CachedResponse | None
    key: str
    vary_miss: bool = False


@dataclass(frozen=True, slots=True)
class Serve:
    """Answer from the stored response: fresh (``HIT``) or stale (``STALE``, and why:
    ``client`` for a request's max-stale, ``revalidate`` inside stale-while-revalidate);
    ``refresh``: start one background refresh."""

    entry: CachedResponse
    stale: str | None = None
    refresh: bool = False

    @property
    def label(self) -> str:
        return "HIT" if self.stale is None else "STALE"

    @property
    def detail(self) -> str | None:
        return SWR if self.stale == "revalidate" else None


@dataclass(frozen=True, slots=True)
class Fetch:
    """Go to the origin for the response to store, conditionally when ``stale`` (the
    stored response that could not answer) has validators; ``fwd`` says why."""

    stale: CachedResponse | None
    fwd: str


@dataclass(frozen=True, slots=True)
class Probe:
    """A HEAD the cache cannot answer: forwarded as a HEAD; a 200 may update ``stale``
    (stored under ``stored_key``) or make it go (RFC 9111 §4.3.5)."""

    stale: CachedResponse | None
    stored_key: str
    fwd: str


@dataclass(frozen=True, slots=True)
class Refuse:
    """``only-if-cached`` and nothing stored answers: 504 (RFC 9111 §5.2.1.7)."""


def usability(entry: CachedResponse, now: float, request_cc: CacheControl) -> Usability:
    """The one freshness decision (RFC 9111 §4.2, §5.2.1) every path asks."""
    return assess(
        entry.lifetime,
        entry.age(now),
        no_cache=entry.no_cache,
        must_revalidate=entry.must_revalidate,
        request_cc=request_cc,
    )


def decide_lookup(
    ex: Exchange,
    cfg: RouteConfig,
    found: Found,
    now: float,
    request_cc: CacheControl,
    draw: Callable[[], float],
    uncacheable: bool = False,
) -> Serve | Fetch | Probe | Refuse | Pass:
    """What a looked-up request gets. ``draw`` gives a uniform number in [0, 1) for the
    early-refresh lottery (asked only on routes with ``early_refresh``); ``uncacheable``:
    the key is remembered as one whose answers are not stored (hit-for-miss)."""
    entry = found.entry
    if entry is not None and not body_intact(entry, ex):
        entry = None  # a corrupt stored body is a miss; the fill overwrites it
    fwd = "vary-miss" if found.vary_miss else "uri-miss"  # RFC 9211 §2.2
    stale: CachedResponse | None = None
    if entry is not None:
        usable = judge(ex, cfg, entry, now, request_cc)
        if usable is Usability.FRESH or usable is Usability.STALE_ALLOWED:
            early = cfg.early_refresh
            refresh = early is not None and refresh_early(entry, now, early.beta, draw())
            return Serve(entry, None if usable is Usability.FRESH else "client", refresh)
        if usable is Usability.STALE and within_swr(entry, now):
            return Serve(entry, "revalidate", refresh=True)
        stale = entry
        fwd = "request" if usable is Usability.REFUSED else "stale"
    if request_cc.has("only-if-cached"):
        return Refuse()
    if uncacheable and "range" in ex.hmap:
        return Pass("bypass", "range")  # nothing will be stored to cut the range from
    if ex.method == "HEAD":
        return Probe(stale, found.key, fwd)
    return Fetch(stale, fwd)


def judge(
    ex: Exchange, cfg: RouteConfig, entry: CachedResponse, now: float, request_cc: CacheControl
) -> Usability:
    """How a stored response may answer this request: its freshness with the request's
    directives, and §3.5 read for reuse (a request with Authorization takes only what
    allows shared caching)."""
    usable = usability(entry, now, request_cc)
    if "authorization" in ex.hmap and not reusable_with_credentials(cfg, entry.headers):
        return Usability.REFUSED
    return usable


def is_fresh_hit(ex: Exchange, cfg: RouteConfig, entry: CachedResponse, now: float) -> bool:
    """Whether ``entry`` answers ``ex`` as a plain HIT, as ``decide_lookup`` judges it
    (``judge``, ``body_intact``), for the synchronous hit path: a route without early
    refresh (a HIT there may also start a refresh, which needs the general path)."""
    if cfg.early_refresh is not None or not body_intact(entry, ex):
        return False
    request_cc = request_cache_control(cfg, ex.hmap)
    return judge(ex, cfg, entry, now, request_cc) is Usability.FRESH


def within_swr(entry: CachedResponse, now: float) -> bool:
    """RFC 5861 §3, never where a directive demands validation (RFC 9111 §4.2.4)."""
    if entry.must_revalidate or entry.no_cache:
        return False
    return within_stale_window(entry.lifetime, entry.age(now), entry.stale_while_revalidate)


def within_sie(entry: CachedResponse, now: float, request_cc: CacheControl) -> bool:
    """RFC 5861 §4 (the stored window, widened by the request's), same exceptions."""
    forbidden = entry.must_revalidate or entry.no_cache
    window = stale_if_error_window(entry.stale_if_error, request_cc, forbidden)
    return within_stale_window(entry.lifetime, entry.age(now), window)


def refresh_early(entry: CachedResponse, now: float, beta: float, draw: float) -> bool:
    """XFetch (Vattani et al., "Optimal probabilistic cache stampede prevention"): refresh
    before expiry with a probability that rises as expiry nears and with the fetch cost;
    ``draw`` is uniform in [0, 1)."""
    cost = max(entry.response_time - entry.request_time, 0.001)
    return entry.age(now) - cost * beta * math.log(draw or 1e-12) >= entry.lifetime


def body_intact(entry: CachedResponse, ex: Exchange) -> bool:
    """Whether the body this client will get can be produced (a stored gzip body that
    does not inflate is a corrupt entry). Inflating is cached on the entry."""
    if entry.status < 200:  # never stored by us; written out, it would desync the client
        return False
    if entry.body_encoding is None or accepts_gzip(ex.hmap.get("accept-encoding", "")):
        return True
    try:
        entry.plain_body()
    except EntryError:
        return False
    return True


def selects(entry: CachedResponse, ex: Exchange) -> bool:
    """RFC 9111 §4.1: a stored (or just fetched) response answers this request only if
    the request's selecting fields match those of the request it was stored for."""
    names = tuple(name for name, _ in entry.variant)
    return not names or entry.variant == variant_of(names, ex.hmap)


def answers(entry: CachedResponse, ex: Exchange, cfg: RouteConfig) -> bool:
    """Whether a response a leader fetched may answer this follower too: the same Vary
    selection (RFC 9111 §4.1) and, for a request with Authorization, a response that
    allows shared caching (§3.5)."""
    if "authorization" in ex.hmap and not reusable_with_credentials(cfg, entry.headers):
        return False
    return selects(entry, ex)


def filled_meanwhile(
    entry: CachedResponse, stale: CachedResponse | None, ex: Exchange, now: float
) -> bool:
    """Whether an entry found after waiting for another replica's fill answers for it:
    newer than the stale copy we had, still within its lifetime, and servable."""
    newer = stale is None or entry.response_time > stale.response_time
    return newer and entry.age(now) < entry.lifetime and body_intact(entry, ex)


# ---------------------------------------------------------------- origin answer → action


@dataclass(frozen=True, slots=True)
class UseStale:
    """RFC 5861 §4: the stale copy answers in place of the origin's failure (``status``:
    the origin's error status, ``None`` when it did not answer)."""

    stale: CachedResponse
    status: int | None


@dataclass(frozen=True, slots=True)
class Freshen:
    """RFC 9111 §4.3.4: a 304 to our conditional request freshens the stale copy."""

    stale: CachedResponse


@dataclass(frozen=True, slots=True)
class Stream:
    """Not stored (``reason``: the Cache-Status detail): the answer streams through;
    ``status`` is what hit-for-miss remembers (0: this request's credentials refused
    it, not the URL)."""

    reason: str
    status: int


@dataclass(frozen=True, slots=True)
class Keep:
    """Store the answer (read up to the route's ``max_object_size``)."""

    decision: StoreDecision


def on_origin_error(
    stale: CachedResponse | None, now: float, request_cc: CacheControl
) -> UseStale | None:
    """The origin did not answer: the stale copy if its stale-if-error window allows."""
    if stale is not None and within_sie(stale, now, request_cc):
        return UseStale(stale, None)
    return None


def decide_answer(
    ex: Exchange,
    cfg: RouteConfig,
    stale: CachedResponse | None,
    status: int,
    headers: Headers | list[tuple[str, str]],
    forwarded: Sequence[tuple[str, str]],
    now: float,
    request_cc: CacheControl,
) -> UseStale | Freshen | Stream | Keep:
    """What the origin's answer to a fill becomes (RFC 9111 §3, §4.3.3, §4.3.4)."""
    if stale is not None and status in ERROR_STATUSES and within_sie(stale, now, request_cc):
        return UseStale(stale, status)
    if status == 304 and stale is not None:
        return Freshen(stale)
    decision = decide_storage(cfg, "GET", ex.hmap, status, headers, now, request_cc)
    if not decision.store:
        return Stream(decision.reason, status)
    if is_personal(cfg, forwarded, headers):
        return Stream("cookie", 0)
    return Keep(decision)


def is_personal(
    cfg: RouteConfig,
    forwarded: Sequence[tuple[str, str]],
    response: Headers | list[tuple[str, str]],
) -> bool:
    """Whether an answer to a request whose Cookie reached the origin may be personal,
    so not for a shared key (web cache deception): unless the route keys by identity,
    the origin varies on Cookie, or it marks the answer shareable (``public``,
    ``s-maxage``, as RFC 9111 §3.5 allows for Authorization)."""
    if cfg.cache_authorized or not any(k.lower() == "cookie" for k, _ in forwarded):
        return False
    if "cookie" in parse_vary(header_values(response, "Vary")):
        return False
    if cfg.origin_cache_control != "honor":
        return True
    cc = parse_cache_control(header_values(response, "Cache-Control"))
    return not (cc.has("public") or cc.has("s-maxage"))


@dataclass(frozen=True, slots=True)
class Update:
    """A stored response merged with a 304's or a HEAD's fields (RFC 9111 §3.2):
    ``entry`` replaces the stored one when ``store``; else it answers this client only,
    ``reason`` says why, and ``drop``: the stored copy is suspect and goes."""

    entry: CachedResponse
    store: bool
    reason: str
    drop: bool
    ttl: float


@dataclass(frozen=True, slots=True)
class Fields:
    """An origin answer's header fields, and when it was asked for and received."""

    headers: list[tuple[str, str]]
    request_time: float
    response_time: float


def decide_update(ex: Exchange, cfg: RouteConfig, stored: CachedResponse, fresh: Fields) -> Update:
    """RFC 9111 §4.3.4: a 304 freshens the stored response with its fields. A 304 naming
    another ETag must not update it: it answers this client as the origin put it, and
    the stored copy goes (the request is never re-sent: that would be a retry)."""
    merged = freshen_headers(stored.headers, fresh.headers)
    decision = _restore(ex, cfg, stored, merged, fresh.response_time)
    entry = refreshed(stored, merged, decision, fresh)
    selected = selects_for_update(stored.headers, fresh.headers)
    if selected and decision.store:
        return Update(entry, True, decision.reason, False, decision.storage_ttl)
    reason = decision.reason if selected else "unmatched-304"
    return Update(replace(entry, headers=merged), False, reason, not selected, 0.0)


def refreshed(
    stale: CachedResponse, merged: Headers, decision: StoreDecision, fresh: Fields
) -> CachedResponse:
    """A stored response updated by a 304 or a HEAD response (RFC 9111 §3.2, §4.3.4)."""
    return replace(
        stale,
        headers=storable_headers(merged, decision.strip, fresh.response_time),
        request_time=fresh.request_time,
        response_time=fresh.response_time,
        initial_age=initial_age(fresh.headers, fresh.request_time, fresh.response_time),
        **freshness_facts(decision),
    )


def decide_head(ex: Exchange, cfg: RouteConfig, stored: CachedResponse, fresh: Fields) -> Update:
    """RFC 9111 §4.3.5: a 200 answer to a HEAD updates the stored GET response when it
    matches it (validators, length), else the stored response goes."""
    if not head_updates(stored.headers, len(stored.plain_body()), fresh.headers):
        return Update(stored, False, "", True, 0.0)
    merged = freshen_headers(stored.headers, fresh.headers)
    decision = _restore(ex, cfg, stored, merged, fresh.response_time)
    if not decision.store:
        return Update(stored, False, decision.reason, False, 0.0)
    entry = refreshed(stored, merged, decision, fresh)
    return Update(entry, True, decision.reason, False, decision.storage_ttl)


def _restore(
    ex: Exchange, cfg: RouteConfig, stored: CachedResponse, merged: Headers, now: float
) -> StoreDecision:
    """§3 asked again of a stored response with updated fields."""
    request_cc = request_cache_control(cfg, ex.hmap)
    return decide_storage(cfg, "GET", ex.hmap, stored.status, merged, now, request_cc)
