"""The rendering module, table-driven: Cache-Status as a value, answers from a stored
response (Age, X-Cache, Cache-Status, 304s, HEAD, our gzip view), an origin answer's
fields passed on, plain answers, header lines. No event loop, no sockets."""

from __future__ import annotations

import gzip
from typing import Any

import pytest

from proxy.core.cachecontrol import format_http_date
from proxy.core.entry import CachedResponse
from proxy.core.exchange import Exchange
from proxy.core.replies import (
    HIT,
    CacheStatus,
    as_gzip,
    cache_headers,
    failure_kind,
    from_cache,
    is_clean,
    live_headers,
    origin_failed,
    plain,
    same_answer_until,
    serialize_fields,
    set_cookies,
    stored_view,
)
from proxy.errors import OriginTimeout, OriginUnreachable

NOW = 1_700_000_000.0


def entry(age: float = 0.0, lifetime: float = 60.0, **overrides: Any) -> CachedResponse:
    fields: dict[str, Any] = {
        "status": 200,
        "headers": (
            ("Content-Type", "text/plain"),
            ("Content-Length", "5"),
            ("ETag", '"v1"'),
            ("Date", format_http_date(NOW - age)),
        ),
        "body": b"hello",
        "body_encoding": None,
        "request_time": NOW - age,
        "response_time": NOW - age,
        "initial_age": 0.0,
        "lifetime": lifetime,
    }
    fields.update(overrides)
    return CachedResponse(**fields)


def request(method: str = "GET", *headers: tuple[str, str]) -> Exchange:
    return Exchange.build(method, "/a", "", headers, host="example.com")


@pytest.mark.parametrize(
    ("status", "member"),
    [
        (HIT, "sidecache; hit"),
        (CacheStatus(hit=True, ttl=-3), "sidecache; hit; ttl=-3"),
        (
            CacheStatus(hit=True, detail="stale-while-revalidate", ttl=-5),
            "sidecache; hit; detail=stale-while-revalidate; ttl=-5",
        ),
        (CacheStatus(fwd="uri-miss", fwd_status=200), "sidecache; fwd=uri-miss; fwd-status=200"),
        (
            CacheStatus(fwd="vary-miss", fwd_status=200, stored=True, ttl=60),
            "sidecache; fwd=vary-miss; fwd-status=200; stored; ttl=60",
        ),
        (
            CacheStatus(fwd="uri-miss", fwd_status=200, collapsed=True, ttl=59),
            "sidecache; fwd=uri-miss; fwd-status=200; collapsed; ttl=59",
        ),
        (
            CacheStatus(fwd="stale", fwd_status=500, detail="stale-if-error", ttl=-10),
            "sidecache; fwd=stale; fwd-status=500; detail=stale-if-error; ttl=-10",
        ),
        (CacheStatus(detail="store-down"), "sidecache; detail=store-down"),
        (
            CacheStatus(fwd="bypass", detail="not a token"),
            'sidecache; fwd=bypass; detail="not a token"',
        ),
    ],
)
def test_cache_status_members(status: CacheStatus, member: str):
    assert status.member() == member
    assert cache_headers("HIT", status) == [("X-Cache", "HIT"), ("Cache-Status", member)]


def test_a_hit_from_cache():
    answer = from_cache(request(), entry(age=10.6), NOW, "HIT", HIT)
    assert (answer.status, answer.body, answer.cache) == (200, b"hello", "HIT")
    assert answer.headers == [
        ("Age", "10"),
        ("X-Cache", "HIT"),
        ("Cache-Status", "sidecache; hit; ttl=49"),
    ]
    # the stored fields go out as prepared lines (Content-Length is the server's)
    date = format_http_date(NOW - 10.6)
    lines = f'Content-Type: text/plain\r\nETag: "v1"\r\nDate: {date}\r\nAccept-Ranges: bytes\r\n'
    assert answer.block == lines.encode()
    assert answer.dated


def test_a_forwarded_answer_from_cache_carries_its_ttl():
    status = CacheStatus(fwd="uri-miss", fwd_status=200, stored=True)
    answer = from_cache(request(), entry(lifetime=30.0), NOW, "MISS", status)
    assert dict(answer.headers)["Cache-Status"] == (
        "sidecache; fwd=uri-miss; fwd-status=200; stored; ttl=30"
    )


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ((("If-None-Match", '"v1"'),), 304),
        ((("If-None-Match", 'W/"v1"'),), 304),  # weak comparison (RFC 9110 §13.1.2)
        ((("If-None-Match", '"v2"'),), 200),
        ((("If-Modified-Since", format_http_date(NOW)),), 304),
        ((("If-Modified-Since", format_http_date(NOW - 3600)),), 200),
    ],
)
def test_a_clients_conditional_request(headers: tuple[tuple[str, str], ...], status: int):
    answer = from_cache(request("GET", *headers), entry(age=1), NOW, "HIT", HIT)
    assert answer.status == status
    if status == 304:  # RFC 9110 §15.4.5: only the fields a 304 carries
        names = [name for name, _ in answer.headers]
        assert names == ["ETag", "Date", "Age", "X-Cache", "Cache-Status"]
        assert answer.body == b""


def test_a_head_from_cache_has_the_length_a_get_would_have():
    answer = from_cache(request("HEAD"), entry(), NOW, "HIT", HIT)
    assert (answer.body, answer.head_length) == (b"", 5)


ZIPPED = gzip.compress(b"hello" * 100)


@pytest.mark.parametrize(
    ("headers", "body", "encoding"),
    [
        ((("Accept-Encoding", "gzip"),), ZIPPED, "gzip"),
        ((), b"hello" * 100, None),
        ((("Accept-Encoding", "gzip;q=0"),), b"hello" * 100, None),
        # no-transform from the client: the origin's bytes (RFC 9111 §5.2.1.6)
        ((("Accept-Encoding", "gzip"), ("Cache-Control", "no-transform")), b"hello" * 100, None),
        ((("Accept-Encoding", "gzip"), ("Cache-Control", "max-age=5")), ZIPPED, "gzip"),
    ],
)
def test_our_gzip_view(headers: tuple[tuple[str, str], ...], body: bytes, encoding: str | None):
    stored = entry(body=ZIPPED, body_encoding="gzip")
    answer = from_cache(request("GET", *headers), stored, NOW, "HIT", HIT)
    assert answer.body == body
    fields = stored_view(stored, encoding == "gzip")[0]
    assert dict(fields).get("Content-Encoding") == encoding
    assert (dict(fields)["ETag"] == 'W/"v1"') is (encoding == "gzip")


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        (
            [("ETag", '"a"')],
            [("ETag", 'W/"a"'), ("Content-Encoding", "gzip"), ("Vary", "Accept-Encoding")],
        ),
        (
            [("ETag", 'W/"a"')],
            [("ETag", 'W/"a"'), ("Content-Encoding", "gzip"), ("Vary", "Accept-Encoding")],
        ),
        ([("Vary", "Accept")], [("Vary", "Accept, Accept-Encoding"), ("Content-Encoding", "gzip")]),
        (
            [("vary", "accept-encoding")],
            [("vary", "accept-encoding"), ("Content-Encoding", "gzip")],
        ),
    ],
)
def test_as_gzip(fields: list[tuple[str, str]], expected: list[tuple[str, str]]):
    assert as_gzip(fields) == expected


def test_stored_view_is_built_once_and_drops_unsafe_fields():
    unsafe = (("X-Ok", "1"), ("X-Bad", "a\r\nInjected: 1"), ("X-Wide", "€"))
    stored = entry(status=404, headers=unsafe)
    fields, block, dated = stored_view(stored, False)
    assert fields == (("X-Ok", "1"),)
    assert (block, dated) == (b"X-Ok: 1\r\n", False)
    assert stored_view(stored, False)[1] is block


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ([("A", "1"), ("Date", "x")], (b"A: 1\r\nDate: x\r\n", True)),
        (
            [("Content-Length", "5"), ("Transfer-Encoding", "chunked"), ("Connection", "close")],
            (b"", False),
        ),
        ([("A", "1\r\nB: 2")], (None, False)),
        ([("A", "1\n")], (None, False)),
        ([("A", "\0")], (None, False)),
        ([("A", "€")], (None, False)),
    ],
)
def test_serialize_fields(fields: list[tuple[str, str]], expected: tuple[bytes | None, bool]):
    assert serialize_fields(fields) == expected


@pytest.mark.parametrize(
    ("name", "value", "clean"),
    [
        ("A", "b", True),
        ("A", "b\r", False),
        ("A\n", "b", False),
        ("A", "\0", False),
        ("A", "€", False),
        ("A", "é", True),
    ],
)
def test_is_clean(name: str, value: str, clean: bool):
    assert is_clean(name, value) is clean


def test_a_stored_200_serves_ranges_and_keeps_no_range_fields_of_its_own():
    stored = entry(headers=(("Accept-Ranges", "none"), ("Content-Range", "bytes 0-4/5")))
    assert stored_view(stored, False)[0] == (("Accept-Ranges", "bytes"),)


@pytest.mark.parametrize(
    ("method", "headers", "status", "body", "content_range"),
    [
        ("GET", (("Range", "bytes=1-2"),), 206, b"el", "bytes 1-2/5"),
        ("GET", (("Range", "bytes=-2"),), 206, b"lo", "bytes 3-4/5"),
        ("GET", (("Range", "bytes=9-"),), 416, b"", "bytes */5"),
        ("GET", (("Range", "bytes=0-0,2-3"),), 200, b"hello", None),  # several: the whole
        ("GET", (("Range", "bytes=0-1"), ("If-Range", '"v2"')), 200, b"hello", None),
        ("HEAD", (("Range", "bytes=0-1"),), 200, b"", None),
    ],
)
def test_a_range_of_a_stored_response(
    method: str,
    headers: tuple[tuple[str, str], ...],
    status: int,
    body: bytes,
    content_range: str | None,
):
    answer = from_cache(request(method, *headers), entry(age=3), NOW, "HIT", HIT)
    assert (answer.status, answer.body) == (status, body)
    fields = dict(answer.headers)
    assert fields.get("Content-Range") == content_range
    if status == 416:  # no stored fields, no Age: nothing a cache downstream would keep
        assert answer.block == b""
        assert "Age" not in fields
        assert fields["Accept-Ranges"] == "bytes"
    elif status == 206:
        assert fields["Age"] == "3"
        assert b"Accept-Ranges: bytes" in answer.block


def test_live_headers_drop_hop_by_hop_fields():
    fields = [
        ("Content-Type", "text/plain"),
        ("Connection", "close, X-Hop"),
        ("X-Hop", "1"),
        ("Keep-Alive", "timeout=5"),
        ("Transfer-Encoding", "chunked"),
        ("X-Kept", "1"),
    ]
    status = CacheStatus(fwd="bypass", fwd_status=200, detail="route")
    assert live_headers(fields, "BYPASS", status) == [
        ("Content-Type", "text/plain"),
        ("X-Kept", "1"),
        ("X-Cache", "BYPASS"),
        ("Cache-Status", "sidecache; fwd=bypass; fwd-status=200; detail=route"),
    ]


@pytest.mark.parametrize(
    ("exc", "code", "detail", "kind"),
    [
        (OriginTimeout("slow"), 504, "origin-timeout", "timeout"),
        (OriginUnreachable("down"), 502, "origin-down", "unreachable"),
    ],
)
def test_origin_failures(exc: Any, code: int, detail: str, kind: str):
    answer = origin_failed(exc, "stale")
    assert answer.status == code
    assert dict(answer.headers)["Cache-Status"] == f"sidecache; fwd=stale; detail={detail}"
    assert dict(answer.headers)["Cache-Control"] == "no-store"
    assert failure_kind(exc) == kind


def test_plain():
    answer = plain(503, "cache unavailable", CacheStatus(detail="store-down"))
    assert (answer.status, answer.body) == (503, b"cache unavailable\n")
    assert answer.headers == [
        ("Content-Type", "text/plain; charset=utf-8"),
        ("Cache-Control", "no-store"),
        ("X-Cache", "MISS"),
        ("Cache-Status", "sidecache; detail=store-down"),
    ]


def test_set_cookies():
    fields = [("Set-Cookie", "a=1"), ("X", "1"), ("set-cookie", "b=2")]
    assert set_cookies(fields) == (("Set-Cookie", "a=1"), ("set-cookie", "b=2"))


@pytest.mark.parametrize(
    ("age", "lifetime", "now", "until"),
    [
        (10.25, 60.0, NOW, NOW + 0.75),  # the next whole second of Age
        (10.0, 60.5, NOW, NOW + 0.5),  # ... or of ttl
        (59.5, 60.0, NOW, NOW + 0.5),  # ... never after the end of freshness
        (10.0, 60.0, NOW, NOW + 1e-9),  # both change right now: the next instant
        (0.0, 60.0, NOW - 2.0, NOW),  # a clock behind the origin's: Age waits for it
        (0.0, 1.0, NOW - 2.0, NOW - 1.0),  # ... unless freshness ends first
    ],
)
def test_same_answer_until(age: float, lifetime: float, now: float, until: float):
    stored = entry(age=age, lifetime=lifetime)
    assert same_answer_until(stored, now) == pytest.approx(until)
