"""HTTP/1.1 wire pieces the proxy port's server (``http1``) and the origin client
(``upstream``) share: status lines, the Date field, header field lines with their one
check against response splitting (CR, LF, NUL), the Content-Length parser, request
heads and interim (1xx) heads.

Pure functions and constants: no sockets, no asyncio, nothing of the engine.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterable, Callable, Collection, Sequence
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
LAST_CHUNK: Final = b"0\r\n\r\n"  # RFC 9112 §7.1: the end of a chunked body, no trailers
# Fields a server writes from the body it sends, never copied from a stored answer
_FRAMING: Final = frozenset({"content-length", "transfer-encoding", "connection"})
# RFC 9110 §8.6: methods whose requests carry no content unless given; others announce
# ``Content-Length: 0`` (as aiohttp did)
_BODYLESS: Final = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})

# Where an origin's interim answers to one request go: called with the status (1xx, never
# 101) and the fields as the origin sent them, before the final answer's head arrives.
Interim = Callable[[int, Sequence[tuple[bytes, bytes]]], None]
# A request body as the origin client sends it: whole, streamed, or none
Body = bytes | AsyncIterable[bytes] | None


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


def encode_chunk(data: bytes) -> bytes:
    """One chunk of a chunked body (RFC 9112 §7.1); never empty (that would end it)."""
    return b"%x\r\n%b\r\n" % (len(data), data)


def content_length(value: str | None) -> int | None:
    """A Content-Length value (RFC 9110 §8.6: 1*DIGIT, spaces around allowed) as a
    number; ``None`` when absent or not one (a sign, a list, a non-ASCII digit)."""
    if value is None:
        return None
    value = value.strip()
    return int(value) if value.isascii() and value.isdigit() else None


def find_length(headers: Sequence[tuple[str, str]]) -> int | None:
    """The first valid Content-Length among ``headers``."""
    for name, value in headers:
        if len(name) == 14 and name.lower() == "content-length":
            length = content_length(value)
            if length is not None:
                return length
    return None


def is_clean(name: str, value: str) -> bool:
    """Whether a field can be written as it is: no CR, LF or NUL, only latin-1."""
    return _encode_lines([f"{name}: {value}\r\n"]) is not None


def _encode_lines(lines: list[str]) -> bytes | None:
    """Lines that each end with CRLF, as bytes; ``None`` when one holds a CR, LF or NUL
    of its own (response splitting, a smuggled request) or is not latin-1."""
    try:
        out = "".join(lines).encode("latin-1")
    except UnicodeEncodeError:
        return None
    count = len(lines)
    if out.count(b"\n") != count or out.count(b"\r") != count or b"\0" in out:
        return None
    return out


def serialize_fields(headers: Sequence[tuple[str, str]]) -> tuple[bytes | None, bool]:
    """Header lines without framing fields, and whether Date is among them; ``None``
    when a field is unsafe to send (CR/LF/NUL: response splitting, or not latin-1)."""
    lines = []
    has_date = False
    for name, value in headers:
        lowered = name.lower()
        if lowered in _FRAMING:
            continue
        if lowered == "date":
            has_date = True
        lines.append(f"{name}: {value}\r\n")
    out = _encode_lines(lines)
    return (out, has_date) if out is not None else (None, False)


def encode_head(
    method: str, target: str, headers: Sequence[tuple[str, str]], body: Body
) -> tuple[bytes, int | None, bool]:
    """The request head, the body's declared length and whether it goes chunked (RFC 9112
    §6). Refuses (``ValueError``) a CR, LF or NUL in a field or the target: a split head."""
    lines = [f"{method} {target} HTTP/1.1\r\n"]
    lines += [f"{name}: {value}\r\n" for name, value in headers]
    length: int | None = None
    chunked = False
    if body is not None or method not in _BODYLESS:
        declared, encoded = None, False
        for name, value in headers:
            lowered = name.lower()
            if lowered == "content-length":
                declared = content_length(value)
                if declared is None:
                    raise ValueError("bad Content-Length in the request")
            elif lowered == "transfer-encoding":
                encoded = True
        if isinstance(body, bytes):
            if declared is not None and declared != len(body):
                raise ValueError("Content-Length disagrees with the request body")
            length = len(body)
            if declared is None:
                lines.append(f"Content-Length: {length}\r\n")
        elif body is not None:
            length = declared
            chunked = declared is None
            if chunked and not encoded:
                lines.append("Transfer-Encoding: chunked\r\n")
        elif declared is None and not encoded:
            lines.append("Content-Length: 0\r\n")
    lines.append("\r\n")
    data = _encode_lines(lines)
    if data is None:
        raise ValueError("CR, LF or NUL in the request target or a field")
    if " " in target:
        raise ValueError("space in the request target")
    return data, length, chunked
