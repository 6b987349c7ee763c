"""What the proxy port takes from a request head llhttp has parsed, checked: the target
(origin-form or absolute-form, its path normalised once), the map of fields decisions
read, the Host, and whether a body follows (RFC 9112 §3, §6); and the parsed request as
a connection queues it. What the proxy does not serve is refused with an ``HttpError``
(status and message). No I/O.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Final
from urllib.parse import urlsplit

from proxy.core.exchange import Exchange
from proxy.core.keys import normalize_path
from proxy.wire.bytequeue import ByteQueue
from proxy.wire.codec import content_length

# RFC 9110 §7.2 / RFC 3986 §3.2.2: reg-name, IPv4 or IP-literal, and an optional port
_HOST: Final = re.compile(r"(?:\[[0-9A-Za-z:.]+\]|[A-Za-z0-9._~!$&'()*+,;=%-]*)(?::[0-9]*)?")


class HttpError(Exception):
    """A request refused with ``status`` (and the connection closed after it)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class Request:
    """One parsed request waiting for its turn on the connection, with its framing."""

    __slots__ = ("body", "exchange", "http11", "keep_alive")

    def __init__(
        self, exchange: Exchange, keep_alive: bool, http11: bool, body: ByteQueue | None
    ) -> None:
        self.exchange = exchange
        self.keep_alive = keep_alive
        self.http11 = http11
        self.body = body


def read_head(
    version: str, method: str, url: bytes, fields: Sequence[tuple[bytes, bytes]], max_body: int
) -> tuple[str, str, str, dict[str, str], bool]:
    """Path, query, host, the field map (lowercased names, repeated fields combined)
    and whether a body follows."""
    if version not in ("1.1", "1.0"):
        raise HttpError(400, f"HTTP/{version} is not served")
    if method == "CONNECT":
        raise HttpError(405, "CONNECT is not proxied")
    path, query, authority = parse_target(url)
    # Only the map decisions read is made here; the fields as sent are decoded from
    # the byte pairs when a miss or a pass-through forwards them.
    hmap: dict[str, str] = {}
    for name, value in fields:
        lowered = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        held = hmap.get(lowered)
        if held is None:
            hmap[lowered] = text
        elif lowered == "host":
            raise HttpError(400, "more than one Host")
        else:
            hmap[lowered] = f"{held}, {text}"
    host = hmap.get("host")
    if host is not None:
        host = host.strip().lower()
        if not _HOST.fullmatch(host):
            raise HttpError(400, "bad Host")
    has_body = "transfer-encoding" in hmap
    if has_body and version == "1.0":  # RFC 9112 §6.1: faulty framing, never guessed at
        raise HttpError(400, "Transfer-Encoding in HTTP/1.0")
    declared = hmap.get("content-length")
    if declared is not None:
        length = content_length(declared)
        if length is None:
            raise HttpError(400, "bad Content-Length")
        if length > max_body:
            raise HttpError(413, "request body too large")
        has_body = has_body or length > 0
    if authority is not None:
        host = authority  # RFC 9112 §3.2.2: the target's authority replaces Host
    if not host:
        if version == "1.1":
            raise HttpError(400, "missing Host")
        host = ""
    return path, query, host, hmap, has_body


def parse_target(url: bytes) -> tuple[str, str, str | None]:
    """Path, query and (absolute-form only) authority of a request target; the path
    normalised once, so routing, the cache key and the origin agree on it."""
    authority: str | None = None
    if url[:1] != b"/":
        if url == b"*":
            raise HttpError(400, "asterisk-form is not proxied")
        # absolute-form: only its path and query are used; the origin is fixed
        parts = urlsplit(url.decode("latin-1"))
        if parts.scheme not in ("http", "https") or not parts.path.startswith("/"):
            raise HttpError(400, "bad request target")
        authority = parts.netloc.lower()
        if not authority or not _HOST.fullmatch(authority):
            raise HttpError(400, "bad request target")
        url = (parts.path + (f"?{parts.query}" if parts.query else "")).encode("latin-1")
    if b"\x00" in url or b"#" in url:
        raise HttpError(400, "bad request target")
    path, _, query = url.partition(b"?")
    try:
        normal = normalize_path(path.decode("latin-1"))
    except ValueError as exc:
        raise HttpError(400, f"bad request target: {exc}") from None
    return normal, query.decode("latin-1"), authority
