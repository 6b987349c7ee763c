"""RFC 9111 decisions as pure functions: may a response be stored, for how long, may a
stored response answer a request, whether a client's conditional request is answered
with 304, and what an unsafe request invalidates (which header fields are stored and how a
validation or HEAD response updates them: ``proxy.core.storedfields``). No I/O and no awaits;
``now`` is always passed in.

Each function cites the section it implements. A route can override the origin
(``origin_cache_control: ignore``) but never the security rules of §3 (Set-Cookie,
Authorization) unless it opts in explicitly.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Final
from urllib.parse import urljoin, urlsplit

from proxy.core.cachecontrol import (
    EMPTY,
    CacheControl,
    parse_age,
    parse_cache_control,
    parse_entity_tags,
    parse_http_date,
    parse_targeted,
    parse_vary,
    weak_match,
)
from proxy.core.storedfields import (
    Headers,
    first_header,
    header_values,
)
from proxy.policy.load import RouteConfig

# RFC 9110 §15.1: heuristically cacheable status codes. 206 is left out: this cache
# never stores partial content (it fetches whole responses and cuts ranges from them).
HEURISTIC_STATUSES: Final = frozenset({200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501})
# RFC 9110 §15: the codes whose caching requirements this cache implements, for
# must-understand (§5.2.2.3). Any other final status may still be stored when the
# origin gives it explicit freshness (§3).
UNDERSTOOD_STATUSES: Final = frozenset(
    {200, 201, 202, 203, 204, 205, 300, 301, 302, 303, 307, 308}
    | {*range(400, 418), 421, 422, 426, *range(500, 506)}
)
# RFC 5861 §4: the statuses stale-if-error treats as errors (besides a failed connection).
ERROR_STATUSES: Final = frozenset({500, 502, 503, 504})
SAFE_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})  # RFC 9110 §9.2.1
HEURISTIC_FRACTION: Final = 0.1  # §4.2.2: "10% of the interval since Last-Modified"
# How much longer than its freshness (and stale windows) a response with validators is
# kept, so that once stale it can be revalidated with a 304 instead of fetched in full.
# Without validators a stale response is kept as long again as it was fresh, up to
# this, for HEAD updates (§4.3.5), max-stale and a request's stale-if-error.
VALIDATION_KEEP: Final = 300.0


# ---------------------------------------------------------------- directives


def response_cache_control(route: RouteConfig, headers: Headers) -> tuple[CacheControl, bool]:
    """The response directives this cache obeys, and whether they came from a targeted
    field. With ``cdn_cache_control``, a valid CDN-Cache-Control wins and Cache-Control
    and Expires are ignored (RFC 9213 §2.1); else Cache-Control; ``Pragma: no-cache``
    counts as ``no-cache`` only when there is no Cache-Control (RFC 9111 §5.4)."""
    if route.cdn_cache_control:
        targeted = parse_targeted(header_values(headers, "CDN-Cache-Control"))
        if targeted is not None:
            return targeted, True
    values = header_values(headers, "Cache-Control")
    if values:
        return parse_cache_control(values), False
    if _pragma_no_cache(header_values(headers, "Pragma")):
        return CacheControl({"no-cache": None}), False
    return EMPTY, False


def request_cache_control(route: RouteConfig, request: Mapping[str, str]) -> CacheControl:
    """The request directives honoured (RFC 9111 §5.2.1), or none when the route says
    ``client_cache_control: ignore``; ``Pragma: no-cache`` without Cache-Control means
    ``no-cache`` (§5.4). ``request`` maps lowercased names to combined values."""
    if route.client_cache_control != "honor":
        return EMPTY
    value = request.get("cache-control")
    if value is not None:
        return parse_cache_control([value])
    if _pragma_no_cache([request.get("pragma", "")]):
        return CacheControl({"no-cache": None})
    return EMPTY


def _pragma_no_cache(values: list[str]) -> bool:
    return any(t.strip().lower() == "no-cache" for v in values for t in v.split(","))


def passed_through(request: Mapping[str, str]) -> str | None:
    """Requests this cache forwards untouched, as a Cache-Status detail: those with the
    preconditions meant for the origin, ``If-Match`` and ``If-Unmodified-Since``
    (RFC 9110 §13.1.1, §13.1.4; RFC 9111 §4.3.2 leaves them to the origin). ``Range``
    is not among them: ranges are cut from the stored whole response (``proxy.core.ranges``)."""
    if "if-match" in request or "if-unmodified-since" in request:
        return "precondition"
    return None


# ---------------------------------------------------------------- storing (§3)


@dataclass(frozen=True, slots=True)
class StoreDecision:
    """Whether and how to store one response (RFC 9111 §3, §4.2.1)."""

    store: bool
    reason: str
    lifetime: float = 0.0
    stale_while_revalidate: float = 0.0
    stale_if_error: float = 0.0
    must_revalidate: bool = False
    no_cache: bool = False
    strip: frozenset[str] = frozenset()
    has_validator: bool = False
    ceiling: float | None = None  # the route's max_ttl

    @property
    def storage_ttl(self) -> float:
        """How long the store keeps it: freshness, then as long as a stale copy is of
        use (its stale windows, or the grace of ``VALIDATION_KEEP``); never forever
        (hishel #287). ``max_ttl`` bounds freshness and grace; stale windows come on top."""
        grace = VALIDATION_KEEP if self.has_validator else min(self.lifetime, VALIDATION_KEEP)
        windows = max(self.stale_while_revalidate, self.stale_if_error)
        kept = self.lifetime + max(windows, grace)
        return (
            kept if self.ceiling is None else min(kept, max(self.ceiling, self.lifetime) + windows)
        )


def _skip(reason: str) -> StoreDecision:
    return StoreDecision(False, reason)


def decide_storage(
    route: RouteConfig,
    method: str,
    request: Mapping[str, str],
    status: int,
    headers: Headers,
    response_time: float,
    request_cc: CacheControl = EMPTY,
) -> StoreDecision:
    """RFC 9111 §3: may this response be stored, and with which freshness (§4.2.1).

    ``request`` maps lowercased request field names to values; ``request_cc`` holds the
    honoured request directives (``no-store`` forbids storing, §5.2.1.5).
    """
    honor = route.origin_cache_control == "honor"
    cc, targeted = response_cache_control(route, headers) if honor else (EMPTY, False)
    refusal = _refusal(route, method, request, status, headers, cc, request_cc)
    if refusal is not None:
        return _skip(refusal)
    lifetime, explicit = freshness_lifetime(route, status, headers, cc, response_time, targeted)
    # §3: without explicit freshness, only heuristically cacheable statuses (or ones the
    # route lists, an out-of-band contract) may be stored.
    if not explicit and not (status in HEURISTIC_STATUSES or cc.has("public") or route.statuses):
        return _skip("status")
    no_cache = cc.fields("no-cache") == ()
    must_revalidate = any(cc.has(d) for d in ("must-revalidate", "proxy-revalidate", "s-maxage"))
    # §4.2.4: no stale serving of any kind where a directive demands validation.
    forbid_stale = no_cache or must_revalidate
    swr = _window(cc, "stale-while-revalidate", route.stale_while_revalidate, forbid_stale, route)
    sie = _window(cc, "stale-if-error", route.stale_if_error, forbid_stale, route)
    validator = bool(first_header(headers, "ETag") or first_header(headers, "Last-Modified"))
    if not validator and (no_cache or (lifetime <= 0 and not (swr or sie))):
        return _skip("not-fresh")  # could only ever be fetched again in full
    strip = set(cc.fields("private") or ()) | set(cc.fields("no-cache") or ())
    if route.strip_set_cookie:
        strip.add("set-cookie")
    return StoreDecision(
        True,
        "stored",
        lifetime,
        swr,
        sie,
        must_revalidate,
        no_cache,
        frozenset(strip),
        validator,
        route.max_ttl,
    )


def _refusal(
    route: RouteConfig,
    method: str,
    request: Mapping[str, str],
    status: int,
    headers: Headers,
    cc: CacheControl,
    request_cc: CacheControl,
) -> str | None:
    """The first §3 rule that forbids storing, as a Cache-Status detail; ``None`` if none."""
    if method != "GET":
        return "method"
    if request_cc.has("no-store"):
        return "request-no-store"
    # final statuses only; 206 and 304 need an understanding of ranges/validation
    # that a stored entry does not have
    if not 200 <= status <= 599 or status in (206, 304):
        return "status"
    if route.statuses and status not in route.statuses:
        return "status"
    if cc.has("must-understand"):
        if status not in UNDERSTOOD_STATUSES:
            return "must-understand"
    elif cc.has("no-store"):  # §5.2.2.3: must-understand overrides no-store
        return "no-store"
    if cc.fields("private") == ():
        return "private"
    if "*" in parse_vary(header_values(headers, "Vary")):
        return "vary-star"
    stripped = set(cc.fields("private") or ()) | set(cc.fields("no-cache") or ())
    if (
        header_values(headers, "Set-Cookie")
        and not route.strip_set_cookie
        and "set-cookie" not in stripped
    ):
        return "set-cookie"
    # §3.5: a response to a request with Authorization only when the origin says so
    if "authorization" in request and not route.cache_authorized and not _shared_ok(cc):
        return "authorization"
    return None


def _shared_ok(cc: CacheControl) -> bool:
    return cc.has("public") or cc.has("s-maxage") or cc.has("must-revalidate")


def reusable_with_credentials(route: RouteConfig, stored: Headers) -> bool:
    """§3.5 read for reuse as well (as Apache Traffic Server does; nginx #824): a request
    with Authorization is answered from a response stored for someone else only when
    that response explicitly allows shared caching (public, s-maxage, must-revalidate).
    Otherwise it goes forward, conditionally: a 304 vouches for the stored copy."""
    if route.cache_authorized:
        return True  # stored per credentials: the key already tells them apart
    cc, _ = response_cache_control(route, stored)
    return _shared_ok(cc)


def _window(
    cc: CacheControl, directive: str, route_value: float, forbidden: bool, route: RouteConfig
) -> float:
    """RFC 5861 windows: the origin's directive when it sends one, else the route's. The
    origin's is capped at ``max_ttl`` as its freshness is (``stale-if-error=31536000``
    would keep the entry a year), never below the route's own window."""
    if forbidden:
        return 0.0
    value = cc.seconds(directive)
    if value is None:
        return route_value
    if route.max_ttl is not None:
        return min(float(value), max(route.max_ttl, route_value))
    return float(value)


# ---------------------------------------------------------------- freshness (§4.2)


def freshness_lifetime(
    route: RouteConfig,
    status: int,
    headers: Headers,
    cc: CacheControl,
    response_time: float,
    targeted: bool = False,
) -> tuple[float, bool]:
    """RFC 9111 §4.2.1: seconds of freshness, and whether the origin gave them
    (``s-maxage`` > ``max-age`` > ``Expires`` − ``Date``; Expires is ignored under a
    targeted field, RFC 9213 §2.1). Without explicit freshness: the route's per-status
    TTL, its ``ttl``, else the §4.2.2 heuristic. ``max_ttl`` caps the result."""
    lifetime: float
    explicit = False
    per_status = route.status_ttls.get(status)
    if route.origin_cache_control == "ignore":
        lifetime = per_status if per_status is not None else route.ttl or 0.0
    elif (s_maxage := cc.seconds("s-maxage")) is not None:
        lifetime, explicit = float(s_maxage), True
    elif (max_age := cc.seconds("max-age")) is not None:
        lifetime, explicit = float(max_age), True
    elif not targeted and (expires := header_values(headers, "Expires")):
        # §5.3: the first Expires counts; an invalid date (e.g. "0") is in the past
        expires_at = parse_http_date(expires[0], response_time)
        date = _date(headers, response_time)
        lifetime = max(0.0, expires_at - date) if expires_at is not None else 0.0
        explicit = True
    elif per_status is not None:
        lifetime = per_status
    elif route.ttl is not None:
        lifetime = route.ttl
    else:
        lifetime = heuristic_lifetime(route, status, headers, cc, response_time)
    if route.max_ttl is not None:
        lifetime = min(lifetime, route.max_ttl)
    return lifetime, explicit


def _date(headers: Headers, response_time: float) -> float:
    """The Date field, or when it is absent or invalid the time the response arrived
    (RFC 9110 §6.6.1)."""
    date = parse_http_date(first_header(headers, "Date"), response_time)
    return date if date is not None else response_time


def heuristic_lifetime(
    route: RouteConfig, status: int, headers: Headers, cc: CacheControl, response_time: float
) -> float:
    """§4.2.2: 10% of the time between Last-Modified and Date, for heuristically
    cacheable statuses (or ``public`` ones), capped by ``max_heuristic_ttl``."""
    if status not in HEURISTIC_STATUSES and not cc.has("public"):
        return 0.0
    modified = parse_http_date(first_header(headers, "Last-Modified"), response_time)
    if modified is None:
        return 0.0
    age_of_content = _date(headers, response_time) - modified
    return min(max(0.0, age_of_content * HEURISTIC_FRACTION), route.max_heuristic_ttl)


def initial_age(headers: Headers, request_time: float, response_time: float) -> float:
    """corrected_initial_age (RFC 9111 §4.2.3): the larger of the apparent age (Date
    against our clock) and the origin's Age (§5.1) plus the response delay."""
    age_value = parse_age(header_values(headers, "Age")) or 0
    date = parse_http_date(first_header(headers, "Date"), response_time)
    apparent_age = max(0.0, response_time - date) if date is not None else 0.0
    response_delay = max(0.0, response_time - request_time)
    return max(apparent_age, age_value + response_delay)


class Usability(Enum):
    """How a stored response may be used for one request (RFC 9111 §4, §5.2.1)."""

    FRESH = "fresh"
    STALE_ALLOWED = "stale-allowed"  # stale, but the client said max-stale
    REFUSED = "refused"  # fresh, but the request's directives want a newer one
    STALE = "stale"
    MUST_VALIDATE = "must-validate"  # stored with no-cache


def assess(
    lifetime: float,
    age: float,
    *,
    no_cache: bool,
    must_revalidate: bool,
    request_cc: CacheControl,
) -> Usability:
    """§4.2 freshness of a stored response, with the request's directives (§5.2.1):
    ``no-cache`` (§5.2.1.4), ``max-age`` (§5.2.1.1), ``min-fresh`` (§5.2.1.3) and
    ``max-stale`` (§5.2.1.2), which never overrides must-revalidate (§5.2.2.2)."""
    if no_cache:
        return Usability.MUST_VALIDATE
    fresh_for = lifetime - age
    max_age = request_cc.seconds("max-age")
    too_old = max_age is not None and age > max_age
    if fresh_for > 0:
        min_fresh = request_cc.seconds("min-fresh")
        too_close = min_fresh is not None and fresh_for < min_fresh
        if request_cc.has("no-cache") or too_old or too_close:
            return Usability.REFUSED
        return Usability.FRESH
    if request_cc.has("max-stale") and not (must_revalidate or request_cc.has("no-cache")):
        limit = request_cc.directives["max-stale"]
        stale_ok = limit is None or -fresh_for <= (request_cc.seconds("max-stale") or 0)
        if stale_ok and not too_old:
            return Usability.STALE_ALLOWED
    return Usability.STALE


def within_stale_window(lifetime: float, age: float, window: float) -> bool:
    """RFC 5861 §3/§4: a stale response is still inside a stale-while-revalidate or
    stale-if-error window (zero when a directive forbids serving stale, §4.2.4)."""
    return window > 0 and age < lifetime + window


def stale_if_error_window(stored: float, request_cc: CacheControl, forbidden: bool) -> float:
    """RFC 5861 §4: the origin's (or route's) window, widened by a request's
    ``stale-if-error``; none under must-revalidate, proxy-revalidate, s-maxage or
    no-cache (RFC 9111 §4.2.4)."""
    if forbidden:
        return 0.0
    requested = request_cc.seconds("stale-if-error")
    return max(stored, float(requested)) if requested is not None else stored


def transform_forbidden(headers: Headers) -> bool:
    """``no-transform`` (RFC 9111 §5.2.1.6, §5.2.2.6; RFC 9110 §7.7): no intermediary
    may change the content, so this cache neither compresses it for storage nor serves
    its gzip in place of the origin's bytes."""
    values = header_values(headers, "Cache-Control")
    return bool(values) and parse_cache_control(values).has("no-transform")


# ---------------------------------------------------------------- validation (§4.3.2)


def is_not_modified(
    request: Mapping[str, str], status: int, stored: Headers, response_time: float
) -> bool:
    """§4.3.2: answer a client's conditional GET/HEAD from a stored 2xx response.
    If-None-Match (weak comparison, RFC 9110 §13.1.2) takes precedence; else
    If-Modified-Since (§13.1.3) against Last-Modified, else Date, else arrival."""
    if not 200 <= status < 300:
        return False
    inm = request.get("if-none-match")
    if inm is not None:
        tags = parse_entity_tags(inm)
        etag = first_header(stored, "ETag")
        return "*" in tags or (etag is not None and any(weak_match(t, etag) for t in tags))
    since = parse_http_date(request.get("if-modified-since"), response_time)
    if since is None:
        return False
    modified = parse_http_date(first_header(stored, "Last-Modified"), response_time)
    if modified is None:
        modified = _date(stored, response_time)
    return modified <= since


# ---------------------------------------------------------------- invalidation (§4.4)


def invalidation_targets(
    method: str, status: int, headers: Headers, target: str, hosts: Sequence[str]
) -> list[str]:
    """§4.4: a non-error (2xx/3xx) response to an unsafe method, including one whose
    safety is unknown, invalidates the target URI and the same-origin URIs in Location
    and Content-Location (resolved against the target). Answers ``path?query`` strings;
    ``hosts`` are the authorities that count as this origin."""
    if method.upper() in SAFE_METHODS or not 200 <= status < 400:
        return []
    base = f"http://{hosts[0] if hosts else 'origin'}{target}"
    own = {h.lower() for h in hosts}
    paths = [target]
    for name in ("Location", "Content-Location"):
        value = first_header(headers, name)
        if value is None:
            continue
        parts = urlsplit(urljoin(base, value.strip()))
        if parts.scheme in ("http", "https") and parts.netloc.lower() in own:
            path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            if path not in paths:
                paths.append(path)
    return paths
