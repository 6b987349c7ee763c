"""Answers rendered: the head of an answer from a stored response (Age, X-Cache,
``Cache-Status`` built from a value, our gzip view of the stored fields), the head of an
origin answer streamed through, plain error answers, and header lines prepared once per
stored entry. Pure: no store, no origin, no logging, no clock, no randomness.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from proxy.core.cachecontrol import CACHE_NAME, accepts_gzip, format_cache_status
from proxy.core.entry import CachedResponse, Prepared
from proxy.core.exchange import Exchange, Headers, ProxyResponse
from proxy.core.freshness import is_not_modified, transform_forbidden
from proxy.core.ranges import Ranged, Unsatisfiable, requested
from proxy.core.storedfields import HOP_BY_HOP, header_values
from proxy.errors import OriginError, OriginTimeout
from proxy.wire.codec import is_clean, serialize_fields, status_line

_RANGE_FIELDS: Final = frozenset({"accept-ranges", "content-range"})
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


@dataclass(frozen=True, slots=True)
class CacheStatus:
    """One RFC 9211 ``Cache-Status`` member of this cache, as a value: ``hit`` or a
    forward (``fwd``, §2.2, with the origin's status §2.3, ``stored`` §2.5, ``collapsed``
    §2.6), a ``detail`` (§2.8) and the remaining freshness ``ttl`` (§2.7, negative once
    stale)."""

    hit: bool = False
    fwd: str | None = None
    fwd_status: int | None = None
    stored: bool = False
    collapsed: bool = False
    detail: str | None = None
    ttl: int | None = None

    def member(self) -> str:
        text = format_cache_status(
            hit=self.hit,
            fwd=self.fwd,
            fwd_status=self.fwd_status,
            stored=self.stored,
            collapsed=self.collapsed,
            detail=self.detail,
        )
        return text if self.ttl is None else f"{text}; ttl={self.ttl}"


HIT: Final = CacheStatus(hit=True)
# A plain HIT's answer as written: its prepared parts, Age and Cache-Status' ttl
PlainHit = tuple[Prepared, int, int]


def cache_headers(label: str, status: CacheStatus) -> list[tuple[str, str]]:
    """X-Cache (``HIT``, ``STALE``, ``MISS``, ``BYPASS``) and Cache-Status."""
    return [("X-Cache", label), ("Cache-Status", status.member())]


def plain(code: int, text: str, status: CacheStatus) -> ProxyResponse:
    """A short text answer of ours (never stored by anyone)."""
    headers = [("Content-Type", "text/plain; charset=utf-8"), ("Cache-Control", "no-store")]
    headers += cache_headers("MISS", status)
    return ProxyResponse(code, headers, f"{text}\n".encode())


def failure_kind(exc: OriginError) -> str:
    return "timeout" if isinstance(exc, OriginTimeout) else "unreachable"


def origin_failed(exc: OriginError, fwd: str) -> ProxyResponse:
    """504 when the origin timed out, 502 when it could not be reached."""
    if isinstance(exc, OriginTimeout):
        return plain(504, "origin timeout", CacheStatus(fwd=fwd, detail="origin-timeout"))
    return plain(502, "origin unreachable", CacheStatus(fwd=fwd, detail="origin-down"))


def from_cache(
    ex: Exchange, entry: CachedResponse, now: float, label: str, status: CacheStatus
) -> ProxyResponse:
    """A stored response with Age (RFC 9111 §4.2.3, §5.1) and Cache-Status (its ``ttl``
    filled here); a 304 for a client's matching conditional request (§4.3.2)."""
    age = entry.age(now)
    hmap = ex.hmap
    gzip = serves_gzip(ex, entry)
    body = entry.body if gzip else entry.plain_body()
    stored, block, dated = stored_view(entry, gzip)
    ttl = math.floor(entry.lifetime - age)
    cache_status = (
        f"{CACHE_NAME}; hit; ttl={ttl}"  # the common answer, without building a value
        if status is HIT
        else CacheStatus(
            status.hit,
            status.fwd,
            status.fwd_status,
            status.stored,
            status.collapsed,
            status.detail,
            ttl,
        ).member()
    )
    headers = [("Age", str(int(age))), ("X-Cache", label), ("Cache-Status", cache_status)]
    if ("if-none-match" in hmap or "if-modified-since" in hmap) and is_not_modified(
        hmap, entry.status, entry.headers, entry.response_time
    ):
        kept = [(k, v) for k, v in (*stored, *headers) if k.lower() in _KEPT_304]
        return ProxyResponse(304, kept, cache=label)
    if "range" in hmap:  # RFC 9110 §14: a part of the body as served
        part = requested(ex.method, hmap, entry.status, len(body), stored)
        if part is not None:
            return ranged(part, body, headers, label, block, dated)
    if ex.method == "HEAD":
        return ProxyResponse(
            entry.status, headers, head_length=len(body), cache=label, block=block, dated=dated
        )
    return ProxyResponse(entry.status, headers, body, cache=label, block=block, dated=dated)


def serves_gzip(ex: Exchange, entry: CachedResponse) -> bool:
    """Whether ``ex`` gets our stored gzip body as it is: the client accepts gzip and its
    request does not forbid transforming the content (RFC 9110 §7.7)."""
    if entry.body_encoding != "gzip":
        return False
    hmap = ex.hmap
    return accepts_gzip(hmap.get("accept-encoding", "")) and not (
        "cache-control" in hmap and transform_forbidden(ex.headers)
    )


def plain_hit(ex: Exchange, entry: CachedResponse, now: float) -> PlainHit | None:
    """The HIT ``from_cache`` makes of a fresh ``entry`` for ``ex``, as its parts prepared
    once per entry version with Age and the ttl of ``Cache-Status`` (RFC 9111 §5.1,
    RFC 9211 §2.7), when nothing but those differs between answers; ``None`` when
    ``from_cache`` has more to decide: a conditional request (§4.3.2), a Range, a status
    answered without a body."""
    hmap = ex.hmap
    if "range" in hmap or "if-none-match" in hmap or "if-modified-since" in hmap:
        return None
    if entry.status in (204, 304):
        return None
    prepared = prepared_hit(entry, serves_gzip(ex, entry))
    age = entry.age(now)
    return prepared, int(age), math.floor(entry.lifetime - age)


def prepared_hit(entry: CachedResponse, gzip: bool) -> Prepared:
    """What every plain HIT on ``entry`` writes in a view, built once per entry version."""
    prepared = entry.answers.get(gzip)
    if prepared is None:
        _, block, dated = stored_view(entry, gzip)
        body = entry.body if gzip else entry.plain_body()
        length = b"Content-Length: %d\r\n" % len(body)
        prepared = Prepared(status_line(entry.status) + block, length, body, dated)
        entry.answers[gzip] = prepared
    return prepared


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


def live_headers(
    headers: Sequence[tuple[str, str]], label: str, status: CacheStatus
) -> list[tuple[str, str]]:
    """An origin answer's fields as passed on: hop-by-hop ones dropped (RFC 9110 §7.6.1),
    X-Cache and Cache-Status added."""
    connection = {
        t.strip().lower() for v in header_values(headers, "Connection") for t in v.split(",")
    }
    drop = HOP_BY_HOP | connection
    kept = [(k, v) for k, v in headers if k.lower() not in drop]
    return kept + cache_headers(label, status)


def set_cookies(headers: Sequence[tuple[str, str]]) -> Headers:
    return tuple((k, v) for k, v in headers if k.lower() == "set-cookie")


def same_answer_until(entry: CachedResponse, now: float) -> float:
    """When a hit's answer at ``now`` stops being exact: the next whole second of Age,
    the next whole second of Cache-Status' ``ttl``, or the end of freshness."""
    age = entry.age(now)
    left = entry.lifetime - age
    if now < entry.response_time:  # a clock behind the origin's: Age waits for it
        return min(entry.response_time, now + left)
    return now + min(1.0 - age % 1.0, left % 1.0 or 1e-9, left)


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
