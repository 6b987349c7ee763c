"""Fields relayed as bytes, for a pass-through: the client's request fields on to the
origin, and the origin's answer fields back, each without the hop-by-hop ones (RFC 9110
§7.6.1), never decoded into ``str`` pairs and encoded again.

Both sides come from llhttp, which refuses CR and LF inside a field (a request or an
answer carrying one never gets here), so a field line is written as it was read; NUL is
checked once per block. Pure: bytes in, bytes out.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Final

Fields = Sequence[tuple[bytes, bytes]]

# Fields a server writes from the body it sends (``proxy.wire.codec._FRAMING``), as bytes
FRAMING: Final = frozenset({b"content-length", b"transfer-encoding", b"connection"})


def lowered(names: Collection[str]) -> frozenset[bytes]:
    """Field names as the lowercased bytes ``field_lines`` compares with."""
    return frozenset(name.lower().encode("latin-1") for name in names)


def connection_options(fields: Fields) -> frozenset[bytes]:
    """The field names listed in ``Connection`` (RFC 9110 §7.6.1), lowercased; they
    address this hop only. Empty when there is no Connection field."""
    options: set[bytes] = set()
    for name, value in fields:
        if len(name) == 10 and name.lower() == b"connection":
            options.update(token.strip().lower() for token in value.split(b","))
    options.discard(b"")
    return frozenset(options)


def field_lines(fields: Fields, drop: Collection[bytes]) -> bytes | None:
    """``name: value`` lines (each with its CRLF) of the fields not named in ``drop``
    (lowercased names); ``None`` when one holds a NUL, which nothing may relay."""
    block = b"".join([b"%b: %b\r\n" % (n, v) for n, v in fields if n.lower() not in drop])
    return None if b"\0" in block else block


def answer_lines(fields: Fields, drop: frozenset[bytes]) -> tuple[bytes, bool] | None:
    """An origin answer's fields as passed on, without those named in ``drop`` (the
    hop-by-hop ones and ``FRAMING``, which the server writes itself) and those its
    Connection field names; and whether Date is among them. ``None``: a field cannot be
    relayed as it is."""
    options = connection_options(fields)
    block = field_lines(fields, drop | options if options else drop)
    if block is None:
        return None
    dated = any(len(n) == 4 and n.lower() == b"date" for n, _ in fields)
    return block, dated


def request_head(method: str, target: str, lines: bytes) -> bytes:
    """A bodyless request's head from its field ``lines`` (``field_lines``). Refuses
    (``ValueError``) a target that would split the head or the request line."""
    line = f"{method} {target} HTTP/1.1\r\n".encode("latin-1")
    if line.count(b"\n") != 1 or line.count(b"\r") != 1 or b"\0" in line or " " in target:
        raise ValueError("CR, LF, NUL or a space in the request target")
    return line + lines + b"\r\n"
