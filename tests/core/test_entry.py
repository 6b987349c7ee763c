"""proxy/core/entry.py: the stored envelope and its strict msgpack codec."""

from __future__ import annotations

import gzip
import zlib
from dataclasses import replace
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.core.entry import (
    SOFT_HEAD,
    VERSION,
    CachedResponse,
    EntryError,
    VaryMarker,
    compress,
    decode,
    encode,
    encode_marker,
    soft_time,
    soften,
)

BASE = CachedResponse(
    status=200,
    headers=(("Content-Type", "application/json"), ("ETag", '"v1"')),
    body=b'{"id": 1}',
    body_encoding=None,
    request_time=1_700_000_000.25,
    response_time=1_700_000_000.5,
    initial_age=3.0,
    lifetime=60.0,
)


def packed(*fields: Any) -> bytes:
    return msgpack.packb(list(fields), use_bin_type=True)


def envelope() -> list[Any]:
    """The wire form of ``BASE``, as a list to break one field at a time."""
    return list(msgpack.unpackb(encode(BASE), raw=False))


# ---------------------------------------------------------------- round trips


@pytest.mark.parametrize(
    "entry",
    [
        pytest.param(BASE, id="plain"),
        pytest.param(replace(BASE, body=b""), id="empty-body"),
        pytest.param(replace(BASE, body=bytes(range(256)) * 64), id="binary-body"),
        pytest.param(replace(BASE, body=b"\x1f\x8b not really gzip"), id="gzip-magic-plain"),
        pytest.param(replace(BASE, headers=()), id="no-headers"),
        pytest.param(
            replace(
                BASE,
                headers=(
                    ("Content-Disposition", "attachment; filename*=UTF-8''caf%C3%A9"),
                    ("X-Title", "café — 東京 🚀"),
                    ("Link", "</a>; rel=preload"),
                    ("Link", "</b>; rel=preload"),
                ),
            ),
            id="unicode-and-repeated-headers",
        ),
        pytest.param(replace(BASE, status=404, lifetime=0.0), id="404"),
        pytest.param(replace(BASE, status=599), id="599"),
        pytest.param(replace(BASE, status=100), id="100"),
        pytest.param(
            replace(
                BASE,
                stale_while_revalidate=30.0,
                stale_if_error=600.0,
                must_revalidate=True,
                no_cache=True,
            ),
            id="revalidation-facts",
        ),
        pytest.param(replace(BASE, must_revalidate=True), id="must-revalidate-only"),
        pytest.param(replace(BASE, no_cache=True), id="no-cache-only"),
        pytest.param(replace(BASE, tags=("p:/api", "r:products", "t:sale")), id="tags"),
        pytest.param(
            replace(BASE, variant=(("accept-encoding", "gzip"), ("accept-language", "en"))),
            id="variant",
        ),
        pytest.param(replace(BASE, request_time=0.0, response_time=0.0), id="zero-times"),
    ],
)
def test_round_trip(entry: CachedResponse) -> None:
    decoded = decode(encode(entry))
    assert decoded == entry
    assert isinstance(decoded, CachedResponse)
    assert decoded.plain_body() == entry.body


@pytest.mark.parametrize("level", [1, 6, 9])
@pytest.mark.parametrize("body", [b"", b"x", b"hello " * 5000, bytes(range(256)) * 40])
def test_gzip_storage_round_trip(body: bytes, level: int) -> None:
    stored = compress(body, level)
    assert stored[:2] == b"\x1f\x8b"
    entry = replace(BASE, body=stored, body_encoding="gzip")
    decoded = decode(encode(entry))
    assert isinstance(decoded, CachedResponse)
    assert decoded.body_encoding == "gzip"
    assert decoded.body == stored
    assert decoded.plain_body() == body
    assert decoded.plain_body() == body  # second call answers from the memo


def test_compress_is_real_gzip() -> None:
    body = b'{"items": []}' * 100
    assert gzip.decompress(compress(body, 6)) == body
    assert len(compress(body, 6)) < len(body)


def test_origin_content_encoding_is_left_alone() -> None:
    # the origin's own gzip stays the body; body_encoding is only our storage encoding
    origin_gzip = gzip.compress(b"payload")
    entry = replace(BASE, headers=(("Content-Encoding", "gzip"),), body=origin_gzip)
    decoded = decode(encode(entry))
    assert isinstance(decoded, CachedResponse)
    assert decoded.body_encoding is None
    assert decoded.plain_body() == origin_gzip
    assert decoded.header("content-encoding") == "gzip"


@pytest.mark.parametrize(
    "fields",
    [(), ("accept-encoding",), ("Accept-Language", "X-Tenant"), ("x-é",)],
)
def test_vary_marker_round_trip(fields: tuple[str, ...]) -> None:
    assert decode(encode_marker(VaryMarker(fields))) == VaryMarker(fields)


def test_header_lookup_is_case_insensitive_and_first_wins() -> None:
    entry = replace(BASE, headers=(("Link", "</a>"), ("link", "</b>"), ("ETag", '"x"')))
    assert entry.header("LINK") == "</a>"
    assert entry.header("etag") == '"x"'
    assert entry.header("Age") is None


@pytest.mark.parametrize(
    ("initial_age", "response_time", "now", "age"),
    [
        (0.0, 1000.0, 1000.0, 0.0),
        (0.0, 1000.0, 1030.0, 30.0),
        (5.0, 1000.0, 1030.0, 35.0),
        (5.0, 1000.0, 990.0, 5.0),  # a clock that stepped back never makes age negative
    ],
)
def test_age(initial_age: float, response_time: float, now: float, age: float) -> None:
    entry = replace(BASE, initial_age=initial_age, response_time=response_time)
    assert entry.age(now) == age


HEADER_TEXT = st.text(st.characters(codec="utf-8"), max_size=20)
TIMES = st.floats(min_value=0, max_value=2e9, allow_nan=False)


@given(
    status=st.integers(100, 599),
    headers=st.lists(st.tuples(HEADER_TEXT, HEADER_TEXT), max_size=8),
    body=st.binary(max_size=2048),
    gzipped=st.booleans(),
    times=st.tuples(TIMES, TIMES, TIMES, TIMES, TIMES, TIMES),
    flags=st.tuples(st.booleans(), st.booleans()),
    tags=st.lists(HEADER_TEXT, max_size=4),
    variant=st.lists(st.tuples(HEADER_TEXT, HEADER_TEXT), max_size=3),
)
def test_round_trip_property(
    status: int,
    headers: list[tuple[str, str]],
    body: bytes,
    gzipped: bool,
    times: tuple[float, float, float, float, float, float],
    flags: tuple[bool, bool],
    tags: list[str],
    variant: list[tuple[str, str]],
) -> None:
    entry = CachedResponse(
        status=status,
        headers=tuple(headers),
        body=compress(body, 6) if gzipped else body,
        body_encoding="gzip" if gzipped else None,
        request_time=times[0],
        response_time=times[1],
        initial_age=times[2],
        lifetime=times[3],
        stale_while_revalidate=times[4],
        stale_if_error=times[5],
        must_revalidate=flags[0],
        no_cache=flags[1],
        tags=tuple(tags),
        variant=tuple(variant),
    )
    decoded = decode(encode(entry))
    assert decoded == entry
    assert isinstance(decoded, CachedResponse)
    assert decoded.plain_body() == body


# ---------------------------------------------------------------- rejection


def broken(index: int, value: Any) -> bytes:
    fields = envelope()
    fields[index] = value
    return packed(*fields)


REJECTED = [
    pytest.param(b"", id="empty"),
    pytest.param(b"\xc1", id="never-used-msgpack-byte"),
    pytest.param(b"GET / HTTP/1.1\r\n", id="foreign-text"),
    pytest.param(b'{"status": 200}', id="json"),
    pytest.param(b"\x80\x04\x95", id="pickle-header"),
    pytest.param(packed(), id="empty-array"),
    pytest.param(msgpack.packb({"v": 1}), id="map"),
    pytest.param(msgpack.packb(1), id="int"),
    pytest.param(msgpack.packb("sc"), id="str"),
    pytest.param(packed(VERSION, 0), id="too-short"),
    pytest.param(packed(2, *envelope()[1:]), id="newer-version"),
    pytest.param(packed(0, *envelope()[1:]), id="older-version"),
    pytest.param(packed("1", *envelope()[1:]), id="version-as-text"),
    pytest.param(packed(*envelope(), "extra"), id="extra-field"),
    pytest.param(packed(*envelope()[:-1]), id="missing-field"),
    pytest.param(broken(1, 7), id="unknown-kind"),
    pytest.param(broken(2, 99), id="status-too-low"),
    pytest.param(broken(2, 600), id="status-too-high"),
    pytest.param(broken(2, "200"), id="status-as-text"),
    pytest.param(broken(2, True), id="status-as-bool"),
    pytest.param(broken(3, ["Content-Type"]), id="odd-header-list"),
    pytest.param(broken(3, [b"Content-Type", b"text/plain"]), id="headers-as-bytes"),
    pytest.param(broken(3, {"a": "b"}), id="headers-as-map"),
    pytest.param(broken(4, "text body"), id="body-as-text"),
    pytest.param(broken(4, None), id="body-missing"),
    pytest.param(broken(5, "br"), id="unknown-body-encoding"),
    pytest.param(broken(5, None), id="body-encoding-nil"),
    pytest.param(broken(5, "gzip"), id="gzip-without-gzip-body"),
    pytest.param(broken(6, "yesterday"), id="time-as-text"),
    pytest.param(broken(9, None), id="lifetime-nil"),
    pytest.param(broken(9, True), id="lifetime-as-bool"),
    pytest.param(broken(12, "1"), id="flags-as-text"),
    pytest.param(broken(13, "tag"), id="tags-as-text"),
    pytest.param(broken(13, [1, 2]), id="tags-as-ints"),
    pytest.param(broken(14, ["accept-encoding"]), id="odd-variant"),
    pytest.param(packed(VERSION, 1, "accept-encoding"), id="marker-fields-as-text"),
    pytest.param(packed(VERSION, 1, [1]), id="marker-fields-as-ints"),
    pytest.param(packed(VERSION, 1, None), id="marker-fields-nil"),
    pytest.param(encode(BASE)[:-1], id="truncated-by-one"),
    pytest.param(encode(BASE)[: len(encode(BASE)) // 2], id="truncated-by-half"),
    pytest.param(encode(BASE) + b"\x00", id="trailing-byte"),
    pytest.param(encode(BASE) + encode(BASE), id="two-envelopes"),
    pytest.param(encode_marker(VaryMarker(("a",)))[:-1], id="truncated-marker"),
]


@pytest.mark.parametrize("raw", REJECTED)
def test_corrupt_foreign_truncated_or_other_version_raises_entry_error(raw: bytes) -> None:
    with pytest.raises(EntryError):
        decode(raw)


def test_entry_error_is_a_value_error() -> None:
    # callers that only know "a bad value" can still catch it
    assert issubclass(EntryError, ValueError)


def test_corrupt_gzip_body_raises_entry_error_when_read() -> None:
    stored = compress(b"hello " * 100, 6)
    entry = decode(encode(replace(BASE, body=stored[:-10], body_encoding="gzip")))
    assert isinstance(entry, CachedResponse)
    with pytest.raises(EntryError):
        entry.plain_body()


def test_gzip_body_corrupted_in_the_middle_raises_entry_error_when_read() -> None:
    stored = bytearray(compress(bytes(range(256)) * 40, 6))
    stored[len(stored) // 2] ^= 0xFF
    entry = decode(encode(replace(BASE, body=bytes(stored), body_encoding="gzip")))
    assert isinstance(entry, CachedResponse)
    with pytest.raises(EntryError):
        entry.plain_body()


@settings(max_examples=500)
@given(st.binary(max_size=512))
def test_arbitrary_bytes_decode_or_raise_entry_error(raw: bytes) -> None:
    try:
        value = decode(raw)
    except EntryError:
        return
    assert isinstance(value, CachedResponse | VaryMarker)


MSGPACK_LEAF = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=6)
    | st.binary(max_size=6)
)
MSGPACK_TREE = st.recursive(
    MSGPACK_LEAF,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=3), inner),
    max_leaves=16,
)


@settings(max_examples=500)
@given(
    st.sampled_from([0, 1]),
    st.lists(MSGPACK_TREE, min_size=1, max_size=15),
)
def test_arbitrary_envelopes_decode_or_raise_entry_error(kind: int, rest: list[Any]) -> None:
    # well-formed msgpack with the right version and kind gets past the first checks
    try:
        value = decode(packed(VERSION, kind, *rest))
    except EntryError:
        return
    assert isinstance(value, CachedResponse | VaryMarker)


@settings(max_examples=200)
@given(st.integers(0, 200), st.integers(0, 255))
def test_flipped_byte_decodes_or_raises_entry_error(position: int, flip: int) -> None:
    raw = bytearray(encode(replace(BASE, tags=("t:a",), variant=(("accept-encoding", "gzip"),))))
    raw[position % len(raw)] ^= flip
    try:
        value = decode(bytes(raw))
    except EntryError:
        return
    assert isinstance(value, CachedResponse | VaryMarker)


def test_zlib_is_the_gzip_codec() -> None:
    # compress() frames with gzip (wbits=31), which zlib reads back the same way
    assert zlib.decompress(compress(b"abc", 9), wbits=31) == b"abc"


# A soft purge at ``at``: BASE was received at 1_700_000_000.5 aged 3 s, fresh for 60 s.
@pytest.mark.parametrize(
    ("at", "lifetime"),
    [
        (1_700_000_000.5, 3.0),  # purged as it arrived (3 s old): its freshness ends there
        (1_700_000_010.5, 13.0),  # 13 s old when purged
        (1_700_000_100.5, 60.0),  # stale already then: unchanged
        (1_699_999_990.0, 3.0),  # a mark before the response (clocks apart): stale at once
    ],
)
def test_a_softened_response_is_stale_since_the_soft_purge(at: float, lifetime: float) -> None:
    raw = soften(encode(BASE), at)
    assert raw[:1] == b"\xc6"
    assert soft_time(raw) == pytest.approx(at, abs=1e-6)
    decoded = decode(raw)
    assert isinstance(decoded, CachedResponse)
    assert decoded.lifetime == pytest.approx(lifetime, abs=1e-6)
    assert replace(decoded, lifetime=BASE.lifetime) == BASE  # nothing else changes
    assert decoded.age(at) >= decoded.lifetime  # stale from the purge on


def test_the_first_soft_purge_stays() -> None:
    first = soften(encode(BASE), 1_700_000_010.5)
    assert soften(first, 1_700_000_020.5) is first
    assert soft_time(encode(BASE)) is None


def test_a_softened_vary_marker_is_the_marker() -> None:
    marker = VaryMarker(("accept-language",), ("k1", "k2"))
    assert decode(soften(encode_marker(marker), 1_700_000_000.0)) == marker


@pytest.mark.parametrize("frame", [b"\xc6" + b"x" * 17, b"\xc6" + b"1" * 5])
def test_a_broken_soft_frame_is_an_entry_error(frame: bytes) -> None:
    with pytest.raises(EntryError):
        decode(frame + encode(BASE)[: max(0, SOFT_HEAD - len(frame))])
