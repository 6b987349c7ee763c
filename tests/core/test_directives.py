"""RFC 9111's directives through the decisions, store then reuse, table-driven: what the
origin's fields make of an answer (§3, §4.2, §5.2.2, §5.3), what a request's directives
make of a stored response (§5.2.1, §5.4) and what RFC 5861's windows allow. Taken over
from tests/engine/test_semantics.py, which sent each case through a socket; no event loop here.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from proxy.core.admission import make_entry
from proxy.core.cachecontrol import EMPTY, format_http_date
from proxy.core.decide import (
    Fetch,
    Found,
    Keep,
    Look,
    Refuse,
    Serve,
    Stream,
    UseStale,
    classify,
    decide_answer,
    decide_lookup,
    on_origin_error,
)
from proxy.core.entry import CachedResponse
from proxy.core.exchange import Exchange
from proxy.policy.load import Match, RouteConfig, parse_policy
from tests.conftest import policy_text
from tests.engine.test_semantics import POLICY  # the routes the socket tests use

NOW = 1_700_000_000.0
ROUTE = RouteConfig(name="t", match=Match(), backend="local", stale_if_error=60.0)
HONOR = replace(ROUTE, client_cache_control="honor")
Fields = list[tuple[str, str]]
IN_AN_HOUR = format_http_date(NOW + 3600)


def never() -> float:
    raise AssertionError("no early refresh here")


def request(*headers: tuple[str, str]) -> Exchange:
    return Exchange.build("GET", "/a", "", headers, host="example.com")


def store(fields: Fields, status: int = 200, cfg: RouteConfig = ROUTE) -> CachedResponse | Stream:
    """What the cache keeps of an origin answer at NOW (its Date is NOW unless given)."""
    if not any(name == "Date" for name, _ in fields):
        fields = [*fields, ("Date", format_http_date(NOW))]
    ex = request()
    decision = decide_answer(ex, cfg, None, status, fields, [], NOW, EMPTY)
    if isinstance(decision, Stream):
        return decision
    assert isinstance(decision, Keep)
    return make_entry(cfg, ex.hmap, status, fields, b"x", decision.decision, NOW, NOW)


def reuse(
    stored: CachedResponse, later: float, *headers: tuple[str, str], cfg: RouteConfig = ROUTE
) -> Any:
    ex = request(*headers)
    look = classify(ex, cfg)
    assert isinstance(look, Look)
    return decide_lookup(ex, cfg, Found(stored, "k"), NOW + later, look.request_cc, never)


def reused(fields: Fields, status: int = 200, later: float = 2.0) -> bool:
    stored = store(fields, status)
    return isinstance(stored, CachedResponse) and reuse(stored, later) == Serve(stored)


# ---------------------------------------------------------------- §5.2 parsing, §5.3 Expires


@pytest.mark.parametrize(
    ("directives", "is_reused"),
    [
        ('MaX-AgE="60"', True),
        ("foo, , max-age=60,", True),
        ('ext="max-age=600", max-age=1', False),
        ("max-age =60", False),
        ("max-age=60a", False),
        ("max-age=60, No-StOrE", False),
    ],
)
def test_cache_control_parsing(directives: str, is_reused: bool):
    assert reused([("Cache-Control", directives)]) is is_reused


@pytest.mark.parametrize(
    ("expires", "is_reused"),
    [
        (format_http_date(NOW + 600), True),
        ("0", False),  # an invalid date: already expired (§5.3)
        ("Thu, 01 Jan 2099 00:00:00 UTC", False),  # not GMT: invalid
        (format_http_date(NOW - 600), False),
    ],
)
def test_expires(expires: str, is_reused: bool):
    assert reused([("Expires", expires)]) is is_reused


@pytest.mark.parametrize(
    ("fields", "later", "is_reused"),
    [
        # §5.2.2.10: s-maxage wins over max-age and Expires in a shared cache
        (
            [
                ("Cache-Control", "max-age=3600, s-maxage=5"),
                ("Expires", format_http_date(NOW + 3600)),
            ],
            6.0,
            False,
        ),
        ([("Cache-Control", "max-age=5"), ("Expires", "0")], 4.0, True),  # Expires ignored
        # §4.2.1: Expires counts from the origin's Date; an origin clock an hour slow
        # makes the response an hour old (§4.2.3 apparent age) ...
        (
            [("Date", format_http_date(NOW - 3600)), ("Expires", format_http_date(NOW - 3000))],
            0.0,
            False,
        ),
        # ... and one running ahead makes it no younger than received
        (
            [("Date", format_http_date(NOW + 300)), ("Expires", format_http_date(NOW + 900))],
            550.0,
            True,
        ),
    ],
)
def test_freshness_from_the_origins_fields(fields: Fields, later: float, is_reused: bool):
    assert reused(fields, later=later) is is_reused


def test_pragma_no_cache_means_no_cache_without_cache_control():
    etag = ("ETag", '"p1"')
    pragma = store([("Pragma", "no-cache"), ("Expires", format_http_date(NOW + 600)), etag])
    assert isinstance(pragma, CachedResponse)
    assert reuse(pragma, 1.0) == Fetch(pragma, "stale")  # revalidated on every use
    assert reused([("Pragma", "no-cache"), ("Cache-Control", "max-age=60")])


# ---------------------------------------------------------------- §3 storing


LAST_MODIFIED = ("Last-Modified", format_http_date(NOW - 30 * 86400))


@pytest.mark.parametrize(
    ("status", "fields", "is_reused"),
    [
        (200, [("Cache-Control", "max-age=60, private")], False),
        (200, [("Cache-Control", "max-age=60"), ("Vary", "Accept, *")], False),
        (200, [("Cache-Control", "max-age=60, no-store, must-understand")], True),
        (299, [("Cache-Control", "max-age=60, no-store, must-understand")], False),
        (299, [("Cache-Control", "max-age=60")], True),
        (201, [LAST_MODIFIED], False),  # not heuristically cacheable
        (404, [LAST_MODIFIED], True),
        (410, [LAST_MODIFIED], True),
        (501, [LAST_MODIFIED], True),
        (502, [LAST_MODIFIED], False),
        (206, [("Cache-Control", "max-age=60"), ("Content-Range", "bytes 0-4/10")], False),
    ],
)
def test_storability(status: int, fields: Fields, is_reused: bool):
    assert reused(fields, status) is is_reused


# ---------------------------------------------------------------- §4.2.4, RFC 5861 stale


@pytest.mark.parametrize(
    "directive", ["must-revalidate", "proxy-revalidate", "s-maxage=1", "no-cache"]
)
def test_directives_that_forbid_serving_stale(directive: str):
    fields = [("Cache-Control", f"max-age=1, {directive}, stale-if-error=60"), ("ETag", '"s"')]
    stored = store(fields)
    assert isinstance(stored, CachedResponse)
    # not served stale while revalidating (the route allows 60s) ...
    assert reuse(stored, 2.0) == Fetch(stored, "stale")
    # ... nor when the origin fails (the origin and the route allow 60s)
    assert on_origin_error(stored, NOW + 4.0, EMPTY) is None
    failed = decide_answer(request(), ROUTE, stored, 503, [], [], NOW + 4.0, EMPTY)
    assert failed == Stream("status", 503)


def test_stale_if_error_answers_for_an_origin_that_fails():
    stored = store([("Cache-Control", "max-age=1"), ("ETag", '"e"')])
    assert isinstance(stored, CachedResponse)
    assert on_origin_error(stored, NOW + 30.0, EMPTY) == UseStale(stored, None)
    failed = decide_answer(request(), ROUTE, stored, 500, [], [], NOW + 30.0, EMPTY)
    assert failed == UseStale(stored, 500)
    assert on_origin_error(stored, NOW + 62.0, EMPTY) is None  # past the route's 60s


@pytest.mark.parametrize(
    ("cache_control", "request_cc", "at", "stale_ok"),
    [
        ("max-age=1", "", 30.0, False),
        ("max-age=1", "stale-if-error=60", 30.0, True),  # the request widens the window
        ("max-age=1, must-revalidate", "stale-if-error=60", 2.0, False),  # never over it
    ],
)
def test_a_request_stale_if_error(cache_control: str, request_cc: str, at: float, stale_ok: bool):
    cfg = replace(HONOR, stale_if_error=0.0)
    stored = store([("Cache-Control", cache_control), ("ETag", '"e"')], cfg=cfg)
    assert isinstance(stored, CachedResponse)
    ex = request(*([("Cache-Control", request_cc)] if request_cc else []))
    look = classify(ex, cfg)
    assert isinstance(look, Look)
    failed = decide_answer(ex, cfg, stored, 500, [], [], NOW + at, look.request_cc)
    assert isinstance(failed, UseStale) is stale_ok


# ---------------------------------------------------------------- §5.2.1 request directives

FRESH = [("Cache-Control", "max-age=60"), ("ETag", '"f"')]


def stored_fresh(fields: Fields = FRESH) -> CachedResponse:
    stored = store(fields)
    assert isinstance(stored, CachedResponse)
    return stored


@pytest.mark.parametrize(
    "header",
    [
        ("Cache-Control", "no-cache"),
        ("Cache-Control", "max-age=0"),
        ("Cache-Control", "no-store"),
        ("Pragma", "no-cache"),
    ],
)
def test_request_directives_are_ignored_by_default(header: tuple[str, str]):
    stored = stored_fresh()
    assert reuse(stored, 1.0, header) == Serve(stored)
    assert isinstance(decide_answer(request(header), ROUTE, None, 200, FRESH, [], NOW, EMPTY), Keep)


@pytest.mark.parametrize(
    ("fields", "later", "header", "expected"),
    [
        (FRESH, 10.0, ("Cache-Control", "max-age=20"), "hit"),
        (FRESH, 10.0, ("Cache-Control", "max-age=5"), "request"),  # §5.2.1.1
        (FRESH, 20.0, ("Cache-Control", "min-fresh=55"), "request"),  # §5.2.1.3
        (FRESH, 1.0, ("Cache-Control", "no-cache"), "request"),  # §5.2.1.4
        (FRESH, 1.0, ("Pragma", "no-cache"), "request"),  # §5.4
        ([("Cache-Control", "max-age=10")], 15.0, ("Cache-Control", "max-stale=10"), "stale"),
        ([("Cache-Control", "max-age=10")], 15.0, ("Cache-Control", "max-stale=2"), "forward"),
        # §5.2.2.2: max-stale never overrides must-revalidate
        (
            [("Cache-Control", "max-age=10, must-revalidate")],
            15.0,
            ("Cache-Control", "max-stale"),
            "forward",
        ),
    ],
)
def test_honoured_request_directives(
    fields: Fields, later: float, header: tuple[str, str], expected: str
):
    stored = stored_fresh(fields)
    decision = reuse(stored, later, header, cfg=HONOR)
    outcomes = {
        "hit": Serve(stored),
        "stale": Serve(stored, "client"),
        "request": Fetch(stored, "request"),
        "forward": Fetch(stored, "stale"),
    }
    assert decision == outcomes[expected]


def test_only_if_cached():
    only = ("Cache-Control", "only-if-cached")
    ex = request(only)
    look = classify(ex, HONOR)
    assert isinstance(look, Look)
    missing = decide_lookup(ex, HONOR, Found(None, "k"), NOW, look.request_cc, never)
    assert missing == Refuse()  # 504, and the origin never asked
    stored = stored_fresh()
    assert reuse(stored, 1.0, only, cfg=HONOR) == Serve(stored)
    assert reuse(stored, 61.0, only, cfg=HONOR) == Refuse()


def test_a_request_no_store_when_honoured():
    ex = request(("Cache-Control", "no-store"))
    look = classify(ex, HONOR)
    assert isinstance(look, Look)
    answer = decide_answer(ex, HONOR, None, 200, FRESH, [], NOW, look.request_cc)
    assert answer == Stream("request-no-store", 200)


# ---------------------------------------------------------------- the route's settings

ROUTES = {
    cfg.name: cfg
    for cfg in parse_policy(policy_text("http://127.0.0.1:9", POLICY), "p.yaml").routes
}
HOURS_OLD = ("Last-Modified", format_http_date(NOW - 10 * 3600))


@pytest.mark.parametrize(
    ("route_name", "status", "fields", "later", "is_reused"),
    [
        # the origin's freshness beats the route's ttl; the route's for a silent origin
        ("ttl", 200, [("Cache-Control", "max-age=5")], 6.0, False),
        ("ttl", 200, [], 6.0, True),
        ("ttl", 200, [], 66.0, False),
        # origin_cache_control: ignore applies the route's ttl whatever the origin says
        (
            "ignore",
            200,
            [("Cache-Control", "no-cache, private"), ("Expires", format_http_date(NOW - 1))],
            59.0,
            True,
        ),
        # without a ttl: the origin's freshness, or the heuristic (§4.2.2: 10% of the time
        # since Last-Modified), else nothing says it may be reused
        ("default", 200, [], 0.0, False),
        ("default", 200, [HOURS_OLD], 3590.0, True),
        ("default", 200, [HOURS_OLD], 3610.0, False),
        # max_ttl caps the origin's freshness, max_heuristic_ttl the heuristic one
        ("capped", 200, [("Cache-Control", "max-age=3600")], 11.0, False),
        ("heuristic", 200, [HOURS_OLD], 11.0, True),
        ("heuristic", 200, [HOURS_OLD], 31.0, False),
        # the statuses map: which codes are stored, and for how long
        ("statuses", 500, [], 0.0, True),
        ("statuses", 500, [], 6.0, False),
        ("statuses", 404, [("Cache-Control", "max-age=60")], 0.0, False),  # not listed
        ("default", 500, [], 0.0, False),
        # RFC 9213: with cdn_cache_control, CDN-Cache-Control is the targeted field
        ("cdn", 200, [("Cache-Control", "no-store"), ("CDN-Cache-Control", "max-age=60")], 1, True),
        (
            "default",
            200,
            [("Cache-Control", "no-store"), ("CDN-Cache-Control", "max-age=60")],
            1,
            False,
        ),
        (
            "cdn",
            200,
            [("Cache-Control", "no-store"), ("CDN-Cache-Control", 'max-age="60"')],
            1,
            False,
        ),
    ],
)
def test_route_settings_and_lifetimes(
    route_name: str, status: int, fields: Fields, later: float, is_reused: bool
):
    cfg = ROUTES[route_name]
    stored = store(fields, status, cfg)
    hit = isinstance(stored, CachedResponse) and reuse(stored, later, cfg=cfg) == Serve(stored)
    assert hit is is_reused


@pytest.mark.parametrize(
    ("cache_control", "stored"),
    [("max-age=60", False), ("max-age=60, public", True), ("max-age=60, s-maxage=60", True)],
)
def test_authorization_is_stored_only_as_section_3_5_permits(cache_control: str, stored: bool):
    ex = request(("Authorization", "Bearer one"))
    fields = [("Cache-Control", cache_control)]
    answer = decide_answer(ex, ROUTE, None, 200, fields, [], NOW, EMPTY)
    if stored:
        assert isinstance(answer, Keep)
    else:
        assert answer == Stream("authorization", 200)


@pytest.mark.parametrize(
    ("route_name", "fields", "kept"),
    [
        # strip_set_cookie: stored without it (the first client keeps it: engine tests)
        ("cookies", [("Cache-Control", "max-age=60"), ("Set-Cookie", "session=abc")], True),
        ("default", [("Cache-Control", "max-age=60"), ("Set-Cookie", "session=abc")], False),
        # no-cache="Set-Cookie" (§5.2.2.4): the rest may be stored
        (
            "default",
            [("Cache-Control", 'max-age=60, no-cache="Set-Cookie"'), ("Set-Cookie", "a=b")],
            True,
        ),
    ],
)
def test_set_cookie_is_never_stored(route_name: str, fields: Fields, kept: bool):
    stored = store(fields, cfg=ROUTES[route_name])
    if not kept:
        assert stored == Stream("set-cookie", 200)
        return
    assert isinstance(stored, CachedResponse)
    assert stored.header("Set-Cookie") is None
    assert reuse(stored, 1.0, cfg=ROUTES[route_name]) == Serve(stored)


def test_qualified_private_and_no_cache_fields_are_not_stored():
    stored = store(
        [
            ("Cache-Control", 'max-age=60, private="X-User", no-cache="X-Token, X-Other"'),
            ("X-User", "alice"),
            ("X-Token", "t"),
            ("X-Other", "o"),
            ("X-Kept", "k"),
        ]
    )
    assert isinstance(stored, CachedResponse)
    assert stored.header("X-Kept") == "k"
    assert [stored.header(name) for name in ("X-User", "X-Token", "X-Other")] == [None] * 3
    assert reuse(stored, 1.0) == Serve(stored)
