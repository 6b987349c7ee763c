"""The pieces answers are made of, and the judgements on stored entries the engine's
paths share: Cache-Status members, plain error answers, which stored response answers
which request, validators, our gzip view of a stored body. Pure functions: no store,
no origin, no engine state.
"""

from __future__ import annotations

import hashlib
import logging
import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Final

from proxy.cachecontrol import (
    CACHE_NAME,
    accepts_gzip,
    format_cache_status,
    parse_cache_control,
    parse_vary,
)
from proxy.entry import CachedResponse, EntryError, decode
from proxy.errors import OriginError, OriginTimeout
from proxy.exchange import Exchange, Headers, ProxyResponse
from proxy.freshness import (
    StoreDecision,
    initial_age,
    reusable_with_credentials,
)
from proxy.keys import variant_of
from proxy.ranges import Ranged, Unsatisfiable
from proxy.routing import Route
from proxy.storedfields import header_values, storable_headers
from proxy.wire import is_clean, serialize_fields

log = logging.getLogger("sidecache")

_COMPRESSIBLE: Final = ("text/", "json", "xml", "javascript", "ecmascript", "svg", "csv", "yaml")
_RANGE_FIELDS: Final = frozenset({"accept-ranges", "content-range"})


def hostname(host: str) -> str:
    """The Host header without its port (``[::1]:8080`` → ``[::1]``)."""
    if host.startswith("["):
        return host[: host.find("]") + 1]
    return host.partition(":")[0]


def same_answer_until(entry: CachedResponse, now: float) -> float:
    """When a hit's answer at ``now`` stops being exact: the next whole second of Age,
    the next whole second of Cache-Status' ``ttl``, or the end of freshness."""
    age = entry.age(now)
    left = entry.lifetime - age
    if now < entry.response_time:  # a clock behind the origin's: Age waits for it
        return min(entry.response_time, now + left)
    return now + min(1.0 - age % 1.0, left % 1.0 or 1e-9, left)


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


def identity(request: Mapping[str, str], keyed_cookies: Sequence[str]) -> str:
    """Whom a request speaks for, on a ``cache_authorized`` route: its Authorization and,
    unless the route keys on named cookies (which then identify the user), its Cookie."""
    credentials = request.get("authorization", "")
    if not keyed_cookies:
        credentials += "\0" + request.get("cookie", "")
    if credentials in ("", "\0"):
        return ""
    return hashlib.blake2b(credentials.encode(), digest_size=16).hexdigest()


def is_personal(
    route: Route, forwarded: Sequence[tuple[str, str]], response: list[tuple[str, str]]
) -> bool:
    """Whether an answer to a request whose Cookie reached the origin may be personal,
    so not for a shared key (web cache deception): unless the route keys by identity,
    the origin varies on Cookie, or it marks the answer shareable (``public``,
    ``s-maxage``, as RFC 9111 §3.5 allows for Authorization)."""
    if route.config.cache_authorized or not any(k.lower() == "cookie" for k, _ in forwarded):
        return False
    if "cookie" in parse_vary(header_values(response, "Vary")):
        return False
    if route.config.origin_cache_control != "honor":
        return True
    cc = parse_cache_control(header_values(response, "Cache-Control"))
    return not (cc.has("public") or cc.has("s-maxage"))


def refresh_early(entry: CachedResponse, now: float, beta: float) -> bool:
    """XFetch (Vattani et al., "Optimal probabilistic cache stampede prevention"): refresh
    before expiry with a probability that rises as expiry nears and with the fetch cost."""
    cost = max(entry.response_time - entry.request_time, 0.001)
    return entry.age(now) - cost * beta * math.log(random.random() or 1e-12) >= entry.lifetime


def cache_headers(label: str, status: str) -> list[tuple[str, str]]:
    return [("X-Cache", label), ("Cache-Status", f"{CACHE_NAME}; {status}")]


def forwarded(
    fwd: str,
    status: int | None,
    *,
    stored: bool = False,
    collapsed: bool = False,
    detail: str | None = None,
) -> str:
    """Cache-Status parameters of a forwarded request (RFC 9211 §2.2-§2.6, §2.8)."""
    member = format_cache_status(
        fwd=fwd, fwd_status=status, stored=stored, collapsed=collapsed, detail=detail
    )
    return member.removeprefix(f"{CACHE_NAME}; ")


def with_fwd(response: ProxyResponse, fwd: str) -> ProxyResponse:
    """Name why the request went forward (RFC 9211 §2.2) in an answer a fill built."""
    if fwd != "uri-miss":
        response.headers = [
            (k, v.replace("; fwd=uri-miss", f"; fwd={fwd}", 1) if k == "Cache-Status" else v)
            for k, v in response.headers
        ]
    return response


def answers(entry: CachedResponse, ex: Exchange, route: Route) -> bool:
    """Whether a response a leader fetched may answer this follower too: the same Vary
    selection (RFC 9111 §4.1) and, for a request with Authorization, a response that
    allows shared caching (§3.5)."""
    if "authorization" in ex.hmap and not reusable_with_credentials(route.config, entry.headers):
        return False
    return selects(entry, ex)


def selects(entry: CachedResponse, ex: Exchange) -> bool:
    """RFC 9111 §4.1: a stored (or just fetched) response answers this request only if
    the request's selecting fields match those of the request it was stored for."""
    names = tuple(name for name, _ in entry.variant)
    return not names or entry.variant == variant_of(names, ex.hmap)


def decoded_response(raw: bytes | None) -> CachedResponse | None:
    """A stored variant, or ``None`` when missing, corrupt (the next fill overwrites it)
    or not a response."""
    try:
        value = decode(raw) if raw is not None else None
    except EntryError:
        return None
    return value if isinstance(value, CachedResponse) else None


def set_cookies(headers: list[tuple[str, str]]) -> Headers:
    return tuple((k, v) for k, v in headers if k.lower() == "set-cookie")


def refreshed(
    stale: CachedResponse,
    merged: Headers,
    decision: StoreDecision,
    fresh: list[tuple[str, str]],
    request_time: float,
    response_time: float,
) -> CachedResponse:
    """A stored response updated by a 304 or a HEAD response (RFC 9111 §3.2, §4.3.4)."""
    return replace(
        stale,
        headers=storable_headers(merged, decision.strip, response_time),
        request_time=request_time,
        response_time=response_time,
        initial_age=initial_age(fresh, request_time, response_time),
        lifetime=decision.lifetime,
        stale_while_revalidate=decision.stale_while_revalidate,
        stale_if_error=decision.stale_if_error,
        must_revalidate=decision.must_revalidate,
        no_cache=decision.no_cache,
    )


def plain(code: int, text: str, route: Route, status: str) -> ProxyResponse:
    headers = [("Content-Type", "text/plain; charset=utf-8"), ("Cache-Control", "no-store")]
    headers += cache_headers("MISS", status)
    return ProxyResponse(code, headers, f"{text}\n".encode())


def failure_kind(exc: OriginError) -> str:
    return "timeout" if isinstance(exc, OriginTimeout) else "unreachable"


def origin_failed(exc: OriginError, route: Route) -> ProxyResponse:
    code = 504 if isinstance(exc, OriginTimeout) else 502
    log.warning("origin error on route %s: %s", route.name, exc)
    return plain(
        code,
        "origin " + ("timeout" if code == 504 else "unreachable"),
        route,
        f"fwd=uri-miss; detail={'origin-timeout' if code == 504 else 'origin-down'}",
    )


def stored_view(entry: CachedResponse, gzip: bool) -> tuple[Headers, bytes, bool]:
    """A stored response's own fields as served (our gzip view or the plain one, its
    Content-Length left to the server), their header lines and whether Date is among
    them: built once per stored entry version and view, written on every answer.
    Unsafe fields (only a foreign store value can carry one) are dropped."""
    view = entry.views.get(gzip)
    if view is None:
        plain = [(k, v) for k, v in entry.headers if k.lower() != "content-length"]
        if entry.status == 200:  # RFC 9110 §14.3: its ranges are cut from the stored body
            plain = [(k, v) for k, v in plain if k.lower() not in _RANGE_FIELDS]
            plain.append(("Accept-Ranges", "bytes"))
        fields = tuple(as_gzip(plain) if gzip else plain)
        block, dated = serialize_fields(fields)
        if block is None:
            fields = tuple((k, v) for k, v in fields if is_clean(k, v))
            block, dated = serialize_fields(fields)
        view = entry.views[gzip] = (fields, block or b"", dated)
    return view


def ranged(
    part: Ranged,
    body: bytes,
    headers: list[tuple[str, str]],
    label: str,
    block: bytes,
    dated: bool,
) -> ProxyResponse:
    """A stored 200 cut to the one range asked for: 206 with the fields a 200 carries
    and Content-Range (RFC 9110 §15.3.7), or 416 naming the length (§15.5.17) without
    the stored fields (their freshness would let a cache downstream keep the 416)."""
    headers.append(("Content-Range", part.content_range))
    if isinstance(part, Unsatisfiable):
        kept = [(k, v) for k, v in headers if k != "Age"]
        kept.append(("Accept-Ranges", "bytes"))
        return ProxyResponse(416, kept, cache=label)
    cut = body[part.first : part.last + 1]
    return ProxyResponse(206, headers, cut, cache=label, block=block, dated=dated)


def validators(entry: CachedResponse) -> list[tuple[str, str]]:
    """RFC 9111 §4.3.1: validate a stored response with its ETag and Last-Modified."""
    out = []
    etag = entry.header("ETag")
    if etag:
        out.append(("If-None-Match", etag))
    modified = entry.header("Last-Modified")
    if modified:
        out.append(("If-Modified-Since", modified))
    return out


def compressible(content_type: str | None) -> bool:
    if not content_type:
        return False
    lowered = content_type.lower()
    return any(marker in lowered for marker in _COMPRESSIBLE)


def as_gzip(headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Serve our stored gzip as is: Content-Encoding, Vary and a weakened ETag (the
    representation differs from the origin's bytes, RFC 9110 §8.8.3)."""
    out: list[tuple[str, str]] = []
    vary_done = False
    for name, value in headers:
        lowered = name.lower()
        if lowered == "etag" and not value.startswith("W/"):
            value = "W/" + value
        elif lowered == "vary":
            if "accept-encoding" not in value.lower():
                value = f"{value}, Accept-Encoding"
            vary_done = True
        out.append((name, value))
    out.append(("Content-Encoding", "gzip"))
    if not vary_done:
        out.append(("Vary", "Accept-Encoding"))
    return out
