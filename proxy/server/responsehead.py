"""The head of an answer on the proxy port: the status line, the stored response's
field block, the fields of this answer, a Date (ours when the response has none) and
the framing (Content-Length, ``Connection: close``); and the plain answer a refused
request gets. Pure: bytes out, no I/O.
"""

from __future__ import annotations

from typing import Final

from proxy.core.cachecontrol import CACHE_NAME
from proxy.core.entry import Prepared
from proxy.core.exchange import Exchange, ProxyResponse
from proxy.wire.codec import Date, find_length, is_clean, serialize_fields, status_line

# The fields of a plain HIT written per answer (``replies.from_cache``'s, in its order)
_HIT_FIELDS: Final = f"Age: %d\r\nX-Cache: HIT\r\nCache-Status: {CACHE_NAME}; hit; ttl=%d\r\n"
_HIT: Final = _HIT_FIELDS.encode()
_CLOSE_END: Final = b"Connection: close\r\n\r\n"


def render_head(
    response: ProxyResponse, length: int | None, keep_alive: bool
) -> tuple[bytearray, bool]:
    """The status line and header fields (no final CRLF), and whether the Date in
    it is ours (the current second) rather than the response's."""
    out = bytearray(status_line(response.status))
    has_date = False
    if response.block:
        out += response.block
        has_date = response.dated
    fields, dated = serialize_fields(response.headers)
    if fields is None:
        # CR/LF/NUL inside a field (response splitting) or a field not in latin-1:
        # only a foreign store value can carry one. Such fields are dropped.
        response.headers = [(k, v) for k, v in response.headers if is_clean(k, v)]
        return render_head(response, length, keep_alive)
    out += fields
    has_date = has_date or dated
    if not has_date:
        out += Date.get()
    if length is not None:
        out += b"Content-Length: %d\r\n" % length
    if not keep_alive:
        out += b"Connection: close\r\n"
    return out, not has_date


def render_answer(
    response: ProxyResponse, request: Exchange, keep_alive: bool, inline: int
) -> tuple[tuple[bytes, ...], bool]:
    """A response written whole, as the pieces to write: the head with the body when the
    body is under ``inline`` bytes (one write), else the head and the body; and whether
    the Date in it is ours."""
    head, dated = render_head(response, answer_length(response, request), keep_alive)
    head += b"\r\n"
    status = response.status
    if request.method == "HEAD" or status in (204, 304) or status < 200:
        return (bytes(head),), dated
    if len(response.body) < inline:
        head += response.body
        return (bytes(head),), dated
    return (bytes(head), response.body), dated


def render_hit(
    hit: Prepared, age: int, ttl: int, keep_alive: bool, head_only: bool, inline: int
) -> tuple[bytes, ...]:
    """A plain HIT (``replies.plain_hit``) as the pieces to write: the bytes
    ``render_answer`` writes for ``from_cache``'s answer, without building it."""
    head = b"".join(
        (
            hit.head,
            _HIT % (age, ttl),
            b"" if hit.dated else Date.get(),
            hit.length,
            b"\r\n" if keep_alive else _CLOSE_END,
        )
    )
    if head_only:
        return (head,)
    body = hit.body
    if len(body) < inline:
        return (head + body,)
    return head, body


def render_stream_head(
    response: ProxyResponse, http11: bool, keep_alive: bool
) -> tuple[bytes, int | None, bool, bool]:
    """A streamed answer's head and framing (RFC 9112 §6.3): the origin's length; else
    chunked to an HTTP/1.1 client; else delimited by closing the connection. Answers the
    head, the length, whether chunked, and whether the connection stays open."""
    length = find_length(response.headers)
    chunked = length is None and http11
    keep_alive = keep_alive and (length is not None or chunked)
    head, _ = render_head(response, length, keep_alive)
    if chunked:
        head += b"Transfer-Encoding: chunked\r\n"
    head += b"\r\n"
    return bytes(head), length, chunked, keep_alive


def answer_length(response: ProxyResponse, request: Exchange) -> int | None:
    """The Content-Length of a response written whole (``None``: it has none)."""
    if response.head_length is not None:
        return response.head_length
    if request.method == "HEAD":  # a HEAD passed through: announce the origin's length
        return find_length(response.headers)
    if response.status in (204, 304) or response.status < 200:
        return None
    return len(response.body)


def refusal(status: int, message: str) -> bytes:
    """The whole answer to a request refused before it reached the engine (the
    connection closes after it)."""
    body = (message + "\n").encode()
    return (
        status_line(status)
        + Date.get()
        + b"Content-Type: text/plain; charset=utf-8\r\nCache-Control: no-store\r\n"
        + b"X-Cache: BYPASS\r\nConnection: close\r\n"
        + b"Content-Length: %d\r\n\r\n" % len(body)
        + body
    )
