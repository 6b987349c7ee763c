"""The stored envelope: ``CachedResponse`` and its msgpack codec with body compression.

What a store keeps under a key is either a response or a Vary marker (the list of
request headers that select a variant stored under a second key). Decoding is
strict: anything that is not a well-formed envelope of this version raises
``EntryError``, which the engine treats as a miss and overwrites. A store answers an
entry a soft purge marked stale framed as ``SOFT`` + the purge's time + the envelope
(``soften``); ``decode`` reads the frame back as the entry stale from that time on.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field, replace
from typing import Final

import msgpack

VERSION: Final = 1
# A softened value: this byte (msgpack's bin32, never the first byte of an envelope, an
# array), the soft purge's unix time as 17 ASCII characters ("%017.6f"), the envelope.
SOFT: Final = b"\xc6"
SOFT_HEAD: Final = 18
_KIND_RESPONSE: Final = 0
_KIND_VARY: Final = 1

Headers = tuple[tuple[str, str], ...]


class EntryError(ValueError):
    """A stored value is not a valid sidecache envelope (corrupt, foreign or old)."""


@dataclass(frozen=True, slots=True)
class Prepared:
    """What every plain HIT on one stored entry version writes, in one view (plain or
    our gzip): the status line with the stored fields, the Content-Length line, the body,
    and whether Date is among the stored fields. Built by ``replies.prepared_hit``; only
    Age, X-Cache, Cache-Status and the framing are written per answer."""

    head: bytes
    length: bytes
    body: bytes
    dated: bool


@dataclass(frozen=True, slots=True)
class CachedResponse:
    """A stored response and the facts freshness needs (RFC 9111 §4.2.3).

    ``body`` is stored compressed when ``body_encoding`` is ``"gzip"``; the origin's own
    ``Content-Encoding`` (if any) stays in ``headers`` and is never touched.
    """

    status: int
    headers: Headers
    body: bytes
    body_encoding: str | None
    request_time: float
    response_time: float
    initial_age: float
    lifetime: float
    stale_while_revalidate: float = 0.0
    stale_if_error: float = 0.0
    must_revalidate: bool = False
    no_cache: bool = False
    tags: tuple[str, ...] = ()
    # The request headers this variant was selected by: ((name, normalized value), ...)
    variant: Headers = ()
    _plain: list[bytes] = field(default_factory=list, compare=False, repr=False)
    # The stored fields as served (plain or gzip view), their header lines and whether
    # Date is among them, built once per entry version (``replies.stored_view``).
    # init=False: ``dataclasses.replace`` (a 304 freshening the headers) starts a new,
    # empty cache.
    views: dict[bool, tuple[Headers, bytes, bool]] = field(
        default_factory=dict, init=False, compare=False, repr=False
    )
    # The plain HIT's parts per view (``replies.prepared_hit``), with the same lifetime.
    answers: dict[bool, Prepared] = field(
        default_factory=dict, init=False, compare=False, repr=False
    )

    def age(self, now: float) -> float:
        """current_age (RFC 9111 §4.2.3): corrected initial age plus resident time."""
        return self.initial_age + max(0.0, now - self.response_time)

    def stale_since(self, at: float) -> CachedResponse:
        """This response as a soft purge at ``at`` (unix time) leaves it: its freshness
        lifetime cut to its age then, so it is stale from that moment on (RFC 9111
        §4.2.1 with the purge as the end of freshness) while its stale windows, counted
        from there, still apply. A response already stale then is unchanged."""
        lifetime = min(self.lifetime, self.age(at))
        return self if lifetime == self.lifetime else replace(self, lifetime=lifetime)

    def plain_body(self) -> bytes:
        """The body as the origin sent it (decompressing our storage encoding once).

        ``decode`` checks only the gzip magic (hits served to gzip clients never inflate),
        so a damaged stream surfaces here, as the codec's ``EntryError``.
        """
        if self.body_encoding is None:
            return self.body
        if not self._plain:
            try:
                self._plain.append(zlib.decompress(self.body, wbits=31))
            except zlib.error as exc:
                raise EntryError(f"stored gzip body is corrupt: {exc}") from None
        return self._plain[0]

    def header(self, name: str) -> str | None:
        lowered = name.lower()
        for key, value in self.headers:
            if key.lower() == lowered:
                return value
        return None


@dataclass(frozen=True, slots=True)
class VaryMarker:
    """Stored under the primary key when responses vary: the header names to select by,
    and the keys of the variants stored under it, oldest first (to cap their number)."""

    fields: tuple[str, ...]
    variants: tuple[str, ...] = ()


def compress(body: bytes, level: int) -> bytes:
    """gzip framing, so a stored body can go to a client that accepts gzip as it is."""
    compressor = zlib.compressobj(level, zlib.DEFLATED, 31)
    return compressor.compress(body) + compressor.flush()


def encode(entry: CachedResponse) -> bytes:
    """Pack a response envelope (msgpack, one array; no pickles, no class names)."""
    flat: list[str] = []
    for name, value in entry.headers:
        flat += (name, value)
    variant: list[str] = []
    for name, value in entry.variant:
        variant += (name, value)
    return msgpack.packb(
        [
            VERSION,
            _KIND_RESPONSE,
            entry.status,
            flat,
            entry.body,
            entry.body_encoding or "",
            entry.request_time,
            entry.response_time,
            entry.initial_age,
            entry.lifetime,
            entry.stale_while_revalidate,
            entry.stale_if_error,
            (1 if entry.must_revalidate else 0) | (2 if entry.no_cache else 0),
            list(entry.tags),
            variant,
        ],
        use_bin_type=True,
    )


def encode_marker(marker: VaryMarker) -> bytes:
    return msgpack.packb(
        [VERSION, _KIND_VARY, list(marker.fields), list(marker.variants)], use_bin_type=True
    )


def soften(value: bytes, at: float) -> bytes:
    """``value`` framed as marked stale by a soft purge at ``at`` (unix time); a value
    framed already keeps its earlier mark (the entry has been stale since then)."""
    if value[:1] == SOFT:
        return value
    return b"%s%017.6f%s" % (SOFT, at, value)


def soft_time(raw: bytes) -> float | None:
    """The time of the soft purge ``raw`` is framed with, ``None`` when it is not."""
    if raw[:1] != SOFT:
        return None
    try:
        return float(raw[1:SOFT_HEAD])
    except ValueError:
        raise EntryError("bad soft purge frame") from None


def decode(raw: bytes) -> CachedResponse | VaryMarker:
    """Unpack an envelope, validating every field; raise ``EntryError`` otherwise. A
    softened value decodes to the response stale since its soft purge (a Vary marker
    stays as it is: its variants carry their own marks)."""
    at = soft_time(raw)
    if at is not None:
        value = decode(raw[SOFT_HEAD:])
        return value.stale_since(at) if isinstance(value, CachedResponse) else value
    try:
        data = msgpack.unpackb(raw, raw=False, use_list=True, strict_map_key=True)
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
        raise EntryError(f"not a msgpack envelope: {exc}") from None
    if not isinstance(data, list) or len(data) < 3 or data[0] != VERSION:
        raise EntryError("not a sidecache envelope of this version")
    try:
        if data[1] == _KIND_VARY:
            fields, variants = data[2], data[3] if len(data) > 3 else []
            for names in (fields, variants):
                if not isinstance(names, list) or not all(isinstance(f, str) for f in names):
                    raise EntryError("bad vary marker")
            return VaryMarker(tuple(fields), tuple(variants))
        return _decode_response(data)
    except (TypeError, IndexError, ValueError) as exc:
        raise EntryError(f"malformed envelope: {exc}") from None


def _pairs(flat: object) -> Headers:
    if not isinstance(flat, list) or len(flat) % 2 or not all(isinstance(x, str) for x in flat):
        raise EntryError("bad header list")
    return tuple(zip(flat[::2], flat[1::2], strict=True))


def _decode_response(data: list[object]) -> CachedResponse:
    if data[1] != _KIND_RESPONSE or len(data) != 15:
        raise EntryError("unknown envelope kind")
    (_, _, status, headers, body, encoding, req, resp, age, life, swr, sie, flags, tags, var) = data
    if not isinstance(status, int) or not 100 <= status <= 599:
        raise EntryError("bad status")
    if not isinstance(body, bytes) or not isinstance(encoding, str):
        raise EntryError("bad body")
    if encoding not in ("", "gzip"):
        raise EntryError("unknown body encoding")
    numbers = (req, resp, age, life, swr, sie)
    if not all(isinstance(x, int | float) and not isinstance(x, bool) for x in numbers):
        raise EntryError("bad times")
    if not isinstance(flags, int) or not isinstance(tags, list):
        raise EntryError("bad flags")
    if not all(isinstance(t, str) for t in tags):
        raise EntryError("bad tags")
    if encoding and body[:2] != b"\x1f\x8b":
        raise EntryError("body is not gzip")
    return CachedResponse(
        status=status,
        headers=_pairs(headers),
        body=body,
        body_encoding=encoding or None,
        request_time=float(req),  # type: ignore[arg-type]
        response_time=float(resp),  # type: ignore[arg-type]
        initial_age=float(age),  # type: ignore[arg-type]
        lifetime=float(life),  # type: ignore[arg-type]
        stale_while_revalidate=float(swr),  # type: ignore[arg-type]
        stale_if_error=float(sie),  # type: ignore[arg-type]
        must_revalidate=bool(flags & 1),
        no_cache=bool(flags & 2),
        tags=tuple(tags),
        variant=_pairs(var),
    )
