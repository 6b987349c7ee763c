"""HTTP/1.1 wire pieces the proxy port's server (``http1``) and the origin client
(``upstream``) share: status lines, the Date field, the check of header fields against
response splitting, the Content-Length parser and interim (1xx) heads.

Pure functions and constants: no sockets, no asyncio, nothing of the engine.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Sequence
from email.utils import formatdate
from typing import Final

_REASONS: Final = {
    100: "Continue", 102: "Processing", 103: "Early Hints",
    200: "OK", 201: "Created", 202: "Accepted", 203: "Non-Authoritative Information",
    204: "No Content", 206: "Partial Content", 300: "Multiple Choices", 301: "Moved Permanently",
    302: "Found", 303: "See Other", 304: "Not Modified", 307: "Temporary Redirect",
    308: "Permanent Redirect", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden",
    404: "Not Found", 405: "Method Not Allowed", 408: "Request Timeout", 409: "Conflict",
    410: "Gone", 412: "Precondition Failed", 413: "Content Too Large", 414: "URI Too Long",
    415: "Unsupported Media Type", 429: "Too Many Requests",
    431: "Request Header Fields Too Large", 500: "Internal Server Error",
    501: "Not Implemented", 502: "Bad Gateway", 503: "Service Unavailable",
    504: "Gateway Timeout",
}  # fmt: skip
_STATUS_LINES: dict[int, bytes] = {}

# Where an origin's interim answers to one request go: called with the status (1xx, never
# 101) and the fields as the origin sent them, before the final answer's head arrives.
Interim = Callable[[int, Sequence[tuple[bytes, bytes]]], None]


def status_line(status: int) -> bytes:
    """``HTTP/1.1 <status> <reason>`` and its CRLF, built once per status."""
    line = _STATUS_LINES.get(status)
    if line is None:
        reason = _REASONS.get(status, "Unknown")
        line = _STATUS_LINES[status] = f"HTTP/1.1 {status} {reason}\r\n".encode()
    return line


class Date:
    """The Date header, formatted once a second."""

    value = b""
    second = -1

    @classmethod
    def get(cls) -> bytes:
        now = int(time.time())
        if now != cls.second:
            cls.second = now
            cls.value = b"Date: " + formatdate(now, usegmt=True).encode() + b"\r\n"
        return cls.value


def interim_head(
    status: int, fields: Sequence[tuple[bytes, bytes]], drop: Collection[str]
) -> bytes:
    """An interim answer's head as relayed to a client (RFC 9110 §15.2), without the
    fields named in ``drop`` (hop-by-hop: they address only the hop they came over)."""
    out = bytearray(status_line(status))
    for name, value in fields:
        if name.decode("latin-1").lower() not in drop:
            out += b"%b: %b\r\n" % (name, value)
    out += b"\r\n"
    return bytes(out)
