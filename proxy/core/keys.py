"""Cache keys: what identifies a stored response, digested into ``sc:<route>:<hex>``.

The key covers the method class (GET and HEAD share), the host (normalized; left out
with ``key.host: false``), the path, the normalized query (sorted; filtered as the
route's ``key.query`` says) and the values of the route's ``key.headers`` and
``key.cookies``. It is a blake2b digest:
keys carry untrusted URL parts in a shared cache, so a fast non-cryptographic hash
would let a client forge collisions.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Final
from urllib.parse import parse_qsl, quote

from proxy.core.cachecontrol import normalize_field_value
from proxy.policy.load import KeySpec, QueryExclude

PREFIX: Final = "sc"


def normalize_query(query: str, spec: KeySpec) -> str:
    """Sorted ``name=value`` pairs, filtered by ``key.query`` (list, exclude or ignore)."""
    rule = spec.query
    if rule == "ignore" or not query:
        return ""
    # surrogateescape: bytes that are not UTF-8 must survive the round trip; decoded with
    # 'replace' every one of them became U+FFFD, so ?id=%FF and ?id=%FE shared a key.
    pairs = parse_qsl(query, keep_blank_values=True, errors="surrogateescape")
    if isinstance(rule, list):
        wanted = set(rule)
        pairs = [p for p in pairs if p[0] in wanted]
    elif isinstance(rule, QueryExclude):
        unwanted = set(rule.exclude)
        pairs = [p for p in pairs if p[0] not in unwanted]
    pairs.sort()
    return "&".join(f"{_quote(k)}={_quote(v)}" for k, v in pairs)


def _quote(text: str) -> str:
    return quote(text, safe="", errors="surrogateescape")


_UNRESERVED: Final = frozenset(
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~"
)
_HEX: Final = frozenset("0123456789abcdefABCDEF")


def normalize_path(path: str) -> str:
    """The one spelling of a request path that routing, the key and the origin all see.

    RFC 3986 §6.2.2: percent-encoded unreserved characters are decoded and the other
    escapes upper-cased; §5.2.4: dot segments are removed; empty segments are merged
    (``//``), as nginx's ``merge_slashes`` does. A path the origin could read as a
    different one (``%00``, a backslash, a dot segment hidden behind ``%2F``/``%5C``, a
    broken escape) raises ``ValueError``: refused, never guessed at.
    """
    if "%" not in path and "/." not in path and "//" not in path and "\\" not in path:
        return path  # the common case, unchanged
    if "\\" in path:
        raise ValueError("backslash in path")
    out: list[str] = []
    pieces = path.split("%")
    out.append(pieces[0])
    for piece in pieces[1:]:
        code = piece[:2]
        if len(code) < 2 or not set(code) <= _HEX:
            raise ValueError("bad percent-encoding in path")
        byte = int(code, 16)
        if byte == 0:
            raise ValueError("NUL in path")
        out.append(chr(byte) if byte in _UNRESERVED else "%" + code.upper())
        out.append(piece[2:])
    decoded = "".join(out)
    hidden = decoded.replace("%2F", "/").replace("%5C", "/")
    if hidden != decoded and any(s in (".", "..") for s in hidden.split("/")):
        raise ValueError("dot segment behind an encoded slash")
    segments: list[str] = []
    parts = decoded.split("/")
    for part in parts[1:-1]:
        if part == "..":
            if segments:
                segments.pop()
        elif part not in (".", ""):
            segments.append(part)
    last = parts[-1] if len(parts) > 1 else ""
    if last == "..":
        if segments:
            segments.pop()
        last = ""
    elif last == ".":
        last = ""
    return "/" + "".join(s + "/" for s in segments) + last


def _cookie(headers: Mapping[str, str], name: str) -> str:
    for part in headers.get("cookie", "").split(";"):
        key, _, value = part.strip().partition("=")
        if key == name:
            return value
    return ""


def normalize_host(host: str) -> str:
    """The Host as keys see it: lowercased, the default port dropped (``Example.COM:80``
    and ``example.com`` name one resource, RFC 3986 §6.2.3)."""
    host = host.lower()
    return host[:-3] if host.endswith(":80") else host


def derive_key(
    route: str,
    host: str,
    path: str,
    query: str,
    spec: KeySpec,
    headers: Mapping[str, str],
    identity: str = "",
) -> str:
    """The primary key of a request. ``headers`` maps lowercased names to values."""
    digest = hashlib.blake2b(digest_size=16)
    if spec.host:  # key.host: false keys every name of the service alike
        digest.update(normalize_host(host).encode("utf-8", "surrogateescape"))
    digest.update(b"\0")
    digest.update(path.encode("utf-8", "surrogateescape"))
    digest.update(b"\0")
    digest.update(normalize_query(query, spec).encode())
    for name in spec.headers:
        digest.update(b"\0h")
        digest.update(headers.get(name.lower(), "").encode("utf-8", "surrogateescape"))
    for name in spec.cookies:
        digest.update(b"\0c")
        digest.update(_cookie(headers, name).encode("utf-8", "surrogateescape"))
    if identity:
        digest.update(b"\0i")
        digest.update(identity.encode("utf-8", "surrogateescape"))
    # no hash tag: the Redis store puts each entry in a bucket of its own key's (so one
    # route spreads over a cluster); proxy/stores/redis_layout.py describes the layout
    return f"{PREFIX}:{route}:{digest.hexdigest()}"


def normalize_header(name: str, value: str | None) -> str:
    """A request header value as Vary compares it (RFC 9111 §4.1): whitespace folded,
    Accept-Encoding reduced to the set of acceptable codings, absence kept apart."""
    return normalize_field_value(name, value)


def variant_of(fields: Sequence[str], headers: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    """The (name, normalized value) pairs of a request for the given Vary fields."""
    return tuple((name, normalize_header(name, headers.get(name))) for name in fields)


def variant_key(primary: str, variant: Iterable[tuple[str, str]]) -> str:
    """The key of one Vary variant, under its primary key."""
    digest = hashlib.blake2b(digest_size=12)
    for name, value in variant:
        digest.update(name.encode())
        digest.update(b"\0")
        digest.update(value.encode("utf-8", "surrogateescape"))
        digest.update(b"\0")
    return f"{primary}:v:{digest.hexdigest()}"


def path_tags(path: str) -> tuple[str, ...]:
    """Index tags for prefix purges: one per leading path segment run.

    ``/api/products/7`` → ``p:/api``, ``p:/api/products``, ``p:/api/products/7``; a purge
    of prefix ``/api/products`` purges tag ``p:/api/products``.
    """
    segments = [s for s in path.split("/") if s][:8]
    tags, current = [], ""
    for segment in segments:
        current += "/" + segment
        tags.append("p:" + current)
    return tuple(tags) or ("p:/",)


def target_tag(target: str) -> str:
    """The index tag that covers ``target`` (``path?query``) and the paths below it, as
    entries were tagged: the path spelled as the proxy port spells it (a Location of
    ``/a/%62`` or ``/a/x/../b`` names ``/a/b``), at most 8 segments deep (``path_tags``)."""
    path = target.split("?", 1)[0] or "/"
    with contextlib.suppress(ValueError):  # a path the port refuses was never stored
        path = normalize_path(path)
    return path_tags(path)[-1]


def route_tag(route: str) -> str:
    return "r:" + route


def user_tag(tag: str) -> str:
    return "t:" + tag
