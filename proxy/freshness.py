"""RFC 9111 decisions as pure functions: may a response be stored, for how long, and may a
stored response answer a request. No I/O and no awaits; ``now`` is always passed in.

Each function cites the section it implements. The route policy can override the
origin (``origin_cache_control: ignore``) but never the security rules of §3
(Set-Cookie, Authorization) unless the route opts in explicitly.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Final

from proxy.cachecontrol import EMPTY, CacheControl, parse_cache_control, parse_http_date, parse_vary
from proxy.policy import RouteConfig

# RFC 9110 §15.1: heuristically cacheable status codes (206 left out: we do not
# store partial content, see docs).
HEURISTIC_STATUSES: Final = frozenset({200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501})
# Final statuses this cache understands (§3, must-understand).
UNDERSTOOD_STATUSES: Final = frozenset(range(200, 600)) - {206, 304}
HEURISTIC_FRACTION: Final = 0.1  # §4.2.2: "10% of the interval since Last-Modified"
# How long a response that is never fresh but carries validators is kept, so that
# it can be revalidated with a conditional request instead of fetched in full.
VALIDATION_KEEP: Final = 300.0
# RFC 9110 §7.6.1 hop-by-hop fields, never stored or forwarded.
HOP_BY_HOP: Final = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "proxy-authenticate",
        "proxy-authorization",
    }
)
# §3.2: headers a 304 must not overwrite in the stored response.
_NOT_UPDATED: Final = frozenset({"content-length", "content-encoding", "transfer-encoding"})


def header_values(headers: Sequence[tuple[str, str]], name: str) -> list[str]:
    lowered = name.lower()
    return [v for k, v in headers if k.lower() == lowered]


def first_header(headers: Sequence[tuple[str, str]], name: str) -> str | None:
    lowered = name.lower()
    for k, v in headers:
        if k.lower() == lowered:
            return v
    return None


def response_cache_control(route: RouteConfig, headers: Sequence[tuple[str, str]]) -> CacheControl:
    """The directives this cache obeys: CDN-Cache-Control when the route targets it
    (RFC 9213 §2.1), else Cache-Control; ``Pragma: no-cache`` counts as ``no-cache``
    only when no Cache-Control is present (RFC 9111 §5.4)."""
    if route.cdn_cache_control:
        targeted = header_values(headers, "CDN-Cache-Control")
        if targeted:
            return parse_cache_control(targeted)
    values = header_values(headers, "Cache-Control")
    if values:
        return parse_cache_control(values)
    pragma = ",".join(header_values(headers, "Pragma")).lower()
    if "no-cache" in pragma:
        return CacheControl({"no-cache": None})
    return EMPTY


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

    @property
    def storage_ttl(self) -> float:
        """How long the store keeps it: freshness plus the stale windows, and no longer."""
        keep = self.lifetime + (
            0.0 if self.must_revalidate else max(self.stale_while_revalidate, self.stale_if_error)
        )
        return max(keep, VALIDATION_KEEP) if self.no_cache or self.lifetime == 0 else keep


def _skip(reason: str) -> StoreDecision:
    return StoreDecision(False, reason)


def decide_storage(
    route: RouteConfig,
    method: str,
    request: Mapping[str, str],
    status: int,
    headers: Sequence[tuple[str, str]],
    response_time: float,
) -> StoreDecision:
    """RFC 9111 §3: may this response be stored, and with which freshness (§4.2.1).

    ``request`` maps lowercased request header names to values.
    """
    if method != "GET":
        return _skip("method")
    honor = route.origin_cache_control == "honor"
    cc = response_cache_control(route, headers) if honor else EMPTY
    if route.statuses is not None:
        if status not in route.statuses:
            return _skip("status")
    elif status < 200 or status not in UNDERSTOOD_STATUSES:
        return _skip("status")
    # §5.2.2.3 must-understand: we understand every status we store, so it lifts no-store.
    if cc.has("no-store") and not cc.has("must-understand"):
        return _skip("no-store")
    private = cc.fields("private")
    if private == ():
        return _skip("private")
    if "*" in parse_vary(header_values(headers, "Vary")):
        return _skip("vary-star")
    if header_values(headers, "Set-Cookie") and not route.strip_set_cookie:
        return _skip("set-cookie")
    # §3.5: a shared cache stores answers to Authorization only when the origin says so.
    authorized_ok = cc.has("public") or cc.has("s-maxage") or cc.has("must-revalidate")
    if "authorization" in request and not route.cache_authorized and not authorized_ok:
        return _skip("authorization")
    lifetime, explicit = freshness_lifetime(route, status, headers, cc, response_time)
    heuristic_ok = status in HEURISTIC_STATUSES or cc.has("public")
    if route.statuses is None and not explicit and not heuristic_ok:
        return _skip("status")
    strip = set(private or ()) | set(cc.fields("no-cache") or ())
    if route.strip_set_cookie:
        strip.add("set-cookie")
    no_cache = cc.fields("no-cache") == ()
    must_revalidate = any(cc.has(d) for d in ("must-revalidate", "proxy-revalidate", "s-maxage"))
    swr = _window(cc, "stale-while-revalidate", route.stale_while_revalidate)
    sie = _window(cc, "stale-if-error", route.stale_if_error)
    has_validator = bool(first_header(headers, "ETag") or first_header(headers, "Last-Modified"))
    if (lifetime <= 0 and not has_validator and not (swr or sie)) or (
        no_cache and not has_validator
    ):
        return _skip("not-fresh")
    return StoreDecision(
        True, "stored", lifetime, swr, sie, must_revalidate, no_cache, frozenset(strip)
    )


def _window(cc: CacheControl, directive: str, route_value: float) -> float:
    """RFC 5861 windows: the origin's directive when it sends one, else the route's."""
    value = cc.seconds(directive)
    return float(value) if value is not None else route_value


def freshness_lifetime(
    route: RouteConfig,
    status: int,
    headers: Sequence[tuple[str, str]],
    cc: CacheControl,
    response_time: float,
) -> tuple[float, bool]:
    """RFC 9111 §4.2.1 (and §4.2.2 heuristics): seconds of freshness, and whether the
    origin gave it explicitly. ``max_ttl`` caps the result."""
    lifetime: float | None = None
    explicit = True
    per_status = route.status_ttls.get(status)
    if route.origin_cache_control == "ignore":
        lifetime = per_status if per_status is not None else route.ttl or 0.0
    elif (s_maxage := cc.seconds("s-maxage")) is not None:
        lifetime = float(s_maxage)
    elif (max_age := cc.seconds("max-age")) is not None:
        lifetime = float(max_age)
    elif (expires := first_header(headers, "Expires")) is not None:
        expires_at = parse_http_date(expires)
        date = parse_http_date(first_header(headers, "Date")) or response_time
        # §5.3: an invalid Expires (e.g. "0") means already expired.
        lifetime = max(0.0, expires_at - date) if expires_at is not None else 0.0
    else:
        explicit = False
        if per_status is not None:
            lifetime = per_status
        elif route.ttl is not None:
            lifetime = route.ttl
        else:
            lifetime = _heuristic(route, status, headers, cc, response_time)
    if route.max_ttl is not None:
        lifetime = min(lifetime, route.max_ttl)
    return lifetime, explicit


def _heuristic(
    route: RouteConfig,
    status: int,
    headers: Sequence[tuple[str, str]],
    cc: CacheControl,
    response_time: float,
) -> float:
    """§4.2.2: a fraction of the time since Last-Modified, capped by max_heuristic_ttl."""
    if status not in HEURISTIC_STATUSES and not cc.has("public"):
        return 0.0
    modified = parse_http_date(first_header(headers, "Last-Modified"))
    if modified is None:
        return 0.0
    date = parse_http_date(first_header(headers, "Date")) or response_time
    return min(max(0.0, (date - modified) * HEURISTIC_FRACTION), route.max_heuristic_ttl)


def initial_age(
    headers: Sequence[tuple[str, str]], request_time: float, response_time: float
) -> float:
    """corrected_initial_age (RFC 9111 §4.2.3), from the origin's Age and Date."""
    age_value = 0.0
    raw_age = first_header(headers, "Age")
    if raw_age is not None and raw_age.strip().isdigit():
        age_value = float(raw_age.strip())
    date = parse_http_date(first_header(headers, "Date"))
    apparent_age = max(0.0, response_time - date) if date is not None else 0.0
    response_delay = max(0.0, response_time - request_time)
    return max(apparent_age, age_value + response_delay)


class Usability(Enum):
    """How a stored response may be used for one request (RFC 9111 §4, §5.2.1)."""

    FRESH = "fresh"
    STALE_ALLOWED = "stale-allowed"  # stale, but the client said max-stale
    STALE = "stale"
    MUST_VALIDATE = "must-validate"  # no-cache entry or request


def assess(
    lifetime: float,
    age: float,
    *,
    no_cache: bool,
    must_revalidate: bool,
    request_cc: CacheControl,
) -> Usability:
    """§4.2 freshness of a stored response, with the request's directives (§5.2.1)."""
    if no_cache or request_cc.has("no-cache"):
        return Usability.MUST_VALIDATE
    fresh_for = lifetime - age
    max_age = request_cc.seconds("max-age")
    if max_age is not None and age > max_age:
        return Usability.STALE
    min_fresh = request_cc.seconds("min-fresh")
    if min_fresh is not None and fresh_for < min_fresh:
        return Usability.STALE
    if fresh_for > 0:
        return Usability.FRESH
    if request_cc.has("max-stale") and not must_revalidate:
        max_stale = request_cc.directives["max-stale"]
        if max_stale is None or -fresh_for <= float(request_cc.seconds("max-stale") or 0):
            return Usability.STALE_ALLOWED
    return Usability.STALE


def freshen_headers(
    stored: Sequence[tuple[str, str]], fresh: Sequence[tuple[str, str]]
) -> tuple[tuple[str, str], ...]:
    """§3.2 / §4.3.4: a 304 (or HEAD) response's fields replace the stored ones of the
    same name, except those describing the stored body's framing and encoding."""
    replaced = {k.lower() for k, _ in fresh if k.lower() not in _NOT_UPDATED | HOP_BY_HOP}
    kept = [(k, v) for k, v in stored if k.lower() not in replaced]
    added = [(k, v) for k, v in fresh if k.lower() in replaced]
    return (*kept, *added)


def storable_headers(
    headers: Sequence[tuple[str, str]], strip: frozenset[str]
) -> tuple[tuple[str, str], ...]:
    """The fields kept with a stored response: no hop-by-hop (RFC 9110 §7.6.1), none the
    Connection header names, none ``private=``/``no-cache=`` listed (§5.2.2.4, §5.2.2.7),
    never Set-Cookie."""
    connection = {
        token.strip().lower()
        for v in header_values(headers, "Connection")
        for token in v.split(",")
    }
    drop = HOP_BY_HOP | connection | strip | {"set-cookie", "age"}
    return tuple((k, v) for k, v in headers if k.lower() not in drop)


UNSAFE_METHODS: Final = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def invalidation_targets(
    method: str, status: int, headers: Sequence[tuple[str, str]], origin_host: str
) -> list[str]:
    """§4.4: a non-error response to an unsafe method invalidates the target URI and the
    same-origin Location / Content-Location URIs. Answers extra paths to invalidate
    (the target's own path is the caller's)."""
    if method.upper() not in UNSAFE_METHODS and method.upper() not in ("MKCOL", "MOVE", "COPY"):
        return []
    if not 200 <= status < 400:
        return []
    from urllib.parse import urlsplit

    paths = []
    for name in ("Location", "Content-Location"):
        value = first_header(headers, name)
        if not value:
            continue
        parts = urlsplit(value)
        if parts.netloc and parts.netloc.lower() != origin_host.lower():
            continue  # §4.4: only same-origin URIs
        if parts.path.startswith("/"):
            paths.append(parts.path + (f"?{parts.query}" if parts.query else ""))
    return paths
