"""How an origin answer becomes a stored entry, table-driven: the stored fields, our
gzip encoding, the Vary selection, the tags, the validators. No event loop."""

from __future__ import annotations

import gzip
from dataclasses import replace
from typing import Any

import pytest

from proxy.core.admission import (
    MAX_ORIGIN_TAGS,
    compressible,
    entry_tags,
    make_entry,
    origin_tags,
    validators,
)
from proxy.core.cachecontrol import EMPTY
from proxy.core.freshness import decide_storage
from proxy.core.keys import path_tags, route_tag, user_tag
from proxy.policy.load import Match, RouteConfig
from proxy.policy.model import Compression

NOW = 1_700_000_000.0
ROUTE = RouteConfig(name="t", match=Match(), backend="local")
BIG = b"x" * 2048


def admit(
    fields: list[tuple[str, str]],
    body: bytes = BIG,
    cfg: RouteConfig = ROUTE,
    request: dict[str, str] | None = None,
) -> Any:
    fields = [("Cache-Control", "max-age=60"), *fields]
    decision = decide_storage(cfg, "GET", request or {}, 200, fields, NOW, EMPTY)
    assert decision.store
    return make_entry(cfg, request or {}, 200, fields, body, decision, NOW - 1, NOW)


@pytest.mark.parametrize(
    ("cfg", "fields", "body", "encoding"),
    [
        (ROUTE, [("Content-Type", "application/json")], BIG, "gzip"),
        (ROUTE, [("Content-Type", "image/png")], BIG, None),  # not compressible
        (ROUTE, [], BIG, None),  # no type: unknown, left alone
        (ROUTE, [("Content-Type", "text/html")], b"x" * 10, None),  # below min_size
        (ROUTE, [("Content-Type", "text/html"), ("Content-Encoding", "br")], BIG, None),
        # RFC 9110 §7.7: no-transform keeps the origin's bytes
        (ROUTE, [("Content-Type", "text/html"), ("Cache-Control", "no-transform")], BIG, None),
        (
            replace(ROUTE, compression=Compression(algorithm="none")),
            [("Content-Type", "text/html")],
            BIG,
            None,
        ),
    ],
)
def test_our_gzip_encoding(
    cfg: RouteConfig, fields: list[tuple[str, str]], body: bytes, encoding: str | None
):
    stored = admit(fields, body, cfg)
    assert stored.body_encoding == encoding
    assert (gzip.decompress(stored.body) if encoding else stored.body) == body
    assert stored.plain_body() == body


def test_the_entry_keeps_the_freshness_facts_and_storable_fields():
    stored = admit(
        [("Age", "5"), ("Connection", "close"), ("ETag", '"a"'), ("Vary", "Accept-Language")],
        request={"accept-language": "de"},
    )
    assert stored.lifetime == 60.0
    assert stored.initial_age == 6.0  # the origin's Age plus the response delay (§4.2.3)
    assert (stored.request_time, stored.response_time) == (NOW - 1, NOW)
    assert stored.header("Connection") is None  # hop-by-hop: never stored
    assert stored.variant == (("accept-language", "de"),)
    assert admit([]).variant == ()


def test_origin_tags_are_read_from_the_routes_tag_headers_and_capped():
    many = " ".join(f"t{i}" for i in range(100))
    assert origin_tags(ROUTE, [("Surrogate-Key", "a b"), ("Cache-Tag", "c,d")]) == (
        "a",
        "b",
        "c",
        "d",
    )
    assert len(origin_tags(ROUTE, [("Surrogate-Key", many)])) == MAX_ORIGIN_TAGS
    assert origin_tags(replace(ROUTE, tag_headers=()), [("Surrogate-Key", "a")]) == ()


def test_entry_tags():
    cfg = replace(ROUTE, tags=("product:{id}", "missing:{nope}", "bad:{0}", "broken:{"))
    stored = admit([("Surrogate-Key", "origin-tag")])
    tags = entry_tags(cfg, "/api/p/7", {"id": "7"}, stored.tags)
    assert tags == [
        route_tag("t"),
        *path_tags("/api/p/7"),
        user_tag("origin-tag"),
        user_tag("product:7"),
    ]


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ([("ETag", '"a"')], [("If-None-Match", '"a"')]),
        ([("Last-Modified", "x")], [("If-Modified-Since", "x")]),
        (
            [("ETag", '"a"'), ("Last-Modified", "x")],
            [("If-None-Match", '"a"'), ("If-Modified-Since", "x")],
        ),
        ([], []),
    ],
)
def test_validators(fields: list[tuple[str, str]], expected: list[tuple[str, str]]):
    assert validators(admit(fields)) == expected


@pytest.mark.parametrize(
    ("content_type", "yes"),
    [
        (None, False),
        ("", False),
        ("text/plain", True),
        ("Application/JSON; charset=utf-8", True),
        ("image/svg+xml", True),
        ("application/octet-stream", False),
    ],
)
def test_compressible(content_type: str | None, yes: bool):
    assert compressible(content_type) is yes
