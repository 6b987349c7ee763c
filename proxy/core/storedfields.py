"""RFC 9111's rules for a stored response's header fields, as pure functions: which
fields are stored (§3.1), how a 304 or HEAD response updates them (§3.2), whether a 304
selects the stored response (§4.3.4) and whether a HEAD response may update it (§4.3.5).
``proxy.core.freshness`` holds the other decisions. No I/O and no awaits.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from proxy.core.cachecontrol import format_http_date, strong_match, weak_match

Headers = Sequence[tuple[str, str]]

# RFC 9110 §7.6.1 hop-by-hop fields (and the proxy-auth ones, which address the next
# hop only): never stored, never forwarded.
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
        "proxy-authentication-info",
        "proxy-authorization",
    }
)
# §3.2: fields a 304 or HEAD response must not change in a stored response, because
# they describe the stored body's length, framing and coding.
_NOT_UPDATED: Final = HOP_BY_HOP | {"content-length", "content-encoding", "content-range", "age"}


def header_values(headers: Headers, name: str) -> list[str]:
    lowered = name.lower()
    return [v for k, v in headers if k.lower() == lowered]


def first_header(headers: Headers, name: str) -> str | None:
    lowered = name.lower()
    for k, v in headers:
        if k.lower() == lowered:
            return v
    return None


def _connection_listed(headers: Headers) -> set[str]:
    return {t.strip().lower() for v in header_values(headers, "Connection") for t in v.split(",")}


def storable_headers(
    headers: Headers, strip: frozenset[str], response_time: float | None = None
) -> tuple[tuple[str, str], ...]:
    """The fields kept with a stored response (§3.1): no hop-by-hop fields, none the
    Connection field lists, none ``private=``/``no-cache=`` lists (§5.2.2.4, §5.2.2.7),
    never Set-Cookie nor Age; a Date is added when the origin sent none (RFC 9110
    §6.6.1)."""
    drop = HOP_BY_HOP | _connection_listed(headers) | strip | {"set-cookie", "age"}
    kept = tuple((k, v) for k, v in headers if k.lower() not in drop)
    if response_time is not None and first_header(kept, "Date") is None:
        kept += (("Date", format_http_date(response_time)),)
    return kept


def freshen_headers(stored: Headers, fresh: Headers) -> tuple[tuple[str, str], ...]:
    """§3.2 (for §4.3.4 and §4.3.5): each field of the new response replaces the stored
    field of that name, except those describing the stored body (Content-Length,
    Content-Encoding, Content-Range), hop-by-hop ones and those Connection lists."""
    excluded = _NOT_UPDATED | _connection_listed(fresh)
    replaced = {k.lower() for k, _ in fresh if k.lower() not in excluded}
    kept = [(k, v) for k, v in stored if k.lower() not in replaced]
    added = [(k, v) for k, v in fresh if k.lower() in replaced]
    return (*kept, *added)


def selects_for_update(stored: Headers, fresh: Headers) -> bool:
    """§4.3.4: whether a 304 identifies the stored response. A strong ETag must match
    strongly; else a weak ETag weakly, else Last-Modified exactly. A 304 without any
    validator answers the validators we sent, so it selects the stored response."""
    etag, stored_etag = first_header(fresh, "ETag"), first_header(stored, "ETag")
    if etag is not None:
        if not etag.strip().startswith("W/"):
            return stored_etag is not None and strong_match(etag, stored_etag)
        return stored_etag is not None and weak_match(etag, stored_etag)
    modified = first_header(fresh, "Last-Modified")
    if modified is not None:
        return modified.strip() == (first_header(stored, "Last-Modified") or "").strip()
    return True


def head_updates(stored: Headers, stored_length: int, head: Headers) -> bool:
    """§4.3.5: a 200 answer to HEAD updates a stored GET response only when every
    validator it carries (ETag, Last-Modified) matches the stored one and its
    Content-Length, if any, equals the stored body's length."""
    for name in ("ETag", "Last-Modified"):
        value = first_header(head, name)
        if value is not None and value.strip() != (first_header(stored, name) or "").strip():
            return False
    length = first_header(head, "Content-Length")
    return length is None or length.strip() == str(stored_length)
