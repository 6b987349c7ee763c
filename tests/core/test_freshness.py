"""RFC 9111 decisions, table-driven and grouped by section; pure functions with an
injected ``now`` (no event loop, no sleeps)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from proxy.core.cachecontrol import EMPTY, format_http_date, parse_cache_control
from proxy.core.freshness import (
    VALIDATION_KEEP,
    Usability,
    assess,
    decide_storage,
    freshness_lifetime,
    initial_age,
    invalidation_targets,
    is_not_modified,
    passed_through,
    request_cache_control,
    response_cache_control,
    reusable_with_credentials,
    stale_if_error_window,
    transform_forbidden,
    within_stale_window,
)
from proxy.core.storedfields import (
    freshen_headers,
    head_updates,
    selects_for_update,
    storable_headers,
)
from proxy.policy.load import Match, RouteConfig

NOW = 1_700_000_000.0
HOUR = 3600.0
ROUTE = RouteConfig(name="t", match=Match(), backend="local")
Headers = list[tuple[str, str]]


def route(**overrides: Any) -> RouteConfig:
    return replace(ROUTE, **overrides)


def date(offset: float) -> str:
    return format_http_date(NOW + offset)


def decide(
    headers: Headers,
    status: int = 200,
    *,
    request: dict[str, str] | None = None,
    cfg: RouteConfig = ROUTE,
    request_cc: str | None = None,
) -> Any:
    rcc = parse_cache_control([request_cc]) if request_cc else EMPTY
    return decide_storage(cfg, "GET", request or {}, status, headers, NOW, rcc)


# ---------------------------------------------------------------- §3 storing responses


@pytest.mark.parametrize("method", ["HEAD", "POST", "PUT", "DELETE", "OPTIONS"])
def test_only_answers_to_get_are_stored(method: str):
    headers = [("Cache-Control", "public, max-age=60")]
    assert decide_storage(ROUTE, method, {}, 200, headers, NOW).reason == "method"
    assert decide_storage(ROUTE, "GET", {}, 200, headers, NOW).store


@pytest.mark.parametrize(
    ("headers", "status", "reason"),
    [
        ([("Cache-Control", "max-age=60")], 200, "stored"),
        ([("Cache-Control", "no-store")], 200, "no-store"),
        ([("Cache-Control", "No-StOrE, max-age=60")], 200, "no-store"),
        ([("Cache-Control", "private, max-age=60")], 200, "private"),
        ([("Cache-Control", "max-age=60"), ("Vary", "Foo, *")], 200, "vary-star"),
        ([("Cache-Control", "max-age=60"), ("Set-Cookie", "a=b")], 200, "set-cookie"),
        (
            [("Cache-Control", 'max-age=60, no-cache="Set-Cookie"'), ("Set-Cookie", "a=b")],
            200,
            "stored",
        ),
        (
            [("Cache-Control", 'max-age=60, private="set-cookie"'), ("Set-Cookie", "a=b")],
            200,
            "stored",
        ),
        ([("Cache-Control", "max-age=60")], 206, "status"),  # no Range support
        ([("Cache-Control", "max-age=60")], 304, "status"),
        ([("Cache-Control", "max-age=60")], 100, "status"),
        ([("Cache-Control", "max-age=60")], 500, "stored"),  # explicit freshness: any final
        ([("Cache-Control", "max-age=60")], 599, "stored"),
        ([("Cache-Control", "max-age=60")], 302, "stored"),
        ([], 200, "not-fresh"),  # no freshness, no validator: nothing to gain
        ([("Last-Modified", date(-10 * HOUR))], 200, "stored"),  # heuristic
        ([("Last-Modified", date(-10 * HOUR))], 201, "status"),
        ([("Last-Modified", date(-10 * HOUR))], 599, "status"),
        ([("Last-Modified", date(-HOUR)), ("Cache-Control", "public")], 599, "stored"),
        ([("Cache-Control", "max-age=0")], 200, "not-fresh"),
        ([("Cache-Control", "max-age=0"), ("ETag", '"a"')], 200, "stored"),  # for a 304
        ([("Cache-Control", "max-age=0, stale-if-error=60")], 200, "stored"),
        ([("Cache-Control", "no-cache")], 200, "not-fresh"),
        ([("Cache-Control", "no-cache"), ("ETag", '"a"')], 200, "stored"),
    ],
)
def test_storability(headers: Headers, status: int, reason: str):
    decision = decide(headers, status)
    assert decision.reason == reason
    assert decision.store is (reason == "stored")


@pytest.mark.parametrize(
    ("headers", "status", "reason"),
    [
        # §5.2.2.3: must-understand lifts no-store for a status this cache implements
        ([("Cache-Control", "max-age=60, no-store, must-understand")], 200, "stored"),
        ([("Cache-Control", "max-age=60, no-store, must-understand")], 299, "must-understand"),
        ([("Cache-Control", "max-age=60, must-understand")], 599, "must-understand"),
    ],
)
def test_must_understand(headers: Headers, status: int, reason: str):
    assert decide(headers, status).reason == reason


def test_request_no_store_forbids_storing():  # §5.2.1.5
    decision = decide([("Cache-Control", "max-age=60")], request_cc="no-store")
    assert decision.reason == "request-no-store"


def test_statuses_override_which_codes_are_stored():
    cfg = route(statuses=(200, 500), ttl=30.0)
    assert decide([], 500, cfg=cfg).lifetime == 30.0
    assert decide([("Cache-Control", "max-age=60")], 404, cfg=cfg).reason == "status"
    per_status = route(statuses=(200, 404), status_ttls={200: 60.0, 404: 5.0})
    assert decide([("ETag", '"x"')], 404, cfg=per_status).lifetime == 5.0
    assert decide([("Cache-Control", "max-age=9")], 404, cfg=per_status).lifetime == 9.0


def test_strip_set_cookie_stores_without_it():
    decision = decide(
        [("Cache-Control", "max-age=60"), ("Set-Cookie", "a=b")], cfg=route(strip_set_cookie=True)
    )
    assert decision.store
    assert "set-cookie" in decision.strip


def test_qualified_private_and_no_cache_name_fields_to_strip():  # §5.2.2.4, §5.2.2.7
    decision = decide([("Cache-Control", 'max-age=60, private="X-A", no-cache="x-b, X-C"')])
    assert decision.store
    assert decision.strip == {"x-a", "x-b", "x-c"}
    assert not decision.no_cache


@pytest.mark.parametrize(
    ("directives", "stored"),
    [
        ("max-age=60", False),
        ("max-age=60, public", True),
        ("s-maxage=60", True),
        ("max-age=60, must-revalidate", True),
        ("max-age=60, proxy-revalidate", False),
    ],
)
def test_authorization_needs_an_explicit_permission(directives: str, stored: bool):  # §3.5
    headers = [("Cache-Control", directives)]
    assert decide(headers, request={"authorization": "Bearer x"}).store is stored
    assert decide(headers, request={"authorization": "x"}, cfg=route(cache_authorized=True)).store


@pytest.mark.parametrize(
    ("cfg", "directives", "reusable"),
    [
        (ROUTE, "max-age=60", False),
        (ROUTE, "max-age=60, public", True),
        (ROUTE, "s-maxage=60", True),
        (ROUTE, "max-age=60, must-revalidate", True),
        (route(cache_authorized=True), "max-age=60", True),
    ],
)
def test_reuse_for_a_request_with_authorization(cfg: RouteConfig, directives: str, reusable: bool):
    assert reusable_with_credentials(cfg, [("Cache-Control", directives)]) is reusable


def test_ignore_applies_the_route_ttl_but_keeps_the_security_rules():
    cfg = route(origin_cache_control="ignore", ttl=30.0)
    assert decide([("Cache-Control", "no-store, private")], cfg=cfg).lifetime == 30.0
    assert decide([("Cache-Control", "max-age=999")], cfg=cfg).lifetime == 30.0
    assert decide([("Set-Cookie", "a=b")], cfg=cfg).reason == "set-cookie"
    assert decide([], request={"authorization": "x"}, cfg=cfg).reason == "authorization"
    assert decide([], 500, cfg=cfg).reason == "status"  # not heuristically cacheable


# ---------------------------------------------------------------- §4.2.1 freshness lifetime


@pytest.mark.parametrize(
    ("headers", "lifetime", "explicit"),
    [
        ([("Cache-Control", "max-age=60")], 60, True),
        ([("Cache-Control", "max-age=60, s-maxage=5")], 5, True),  # s-maxage first
        ([("Cache-Control", "max-age=1, s-maxage=3600")], 3600, True),
        ([("Cache-Control", "max-age=3600"), ("Cache-Control", "s-maxage=1")], 1, True),
        ([("Cache-Control", "max-age=60"), ("Expires", date(-HOUR))], 60, True),
        ([("Cache-Control", "max-age=60"), ("Expires", "0")], 60, True),
        ([("Cache-Control", "max-age=0"), ("Expires", date(HOUR))], 0, True),
        ([("Expires", date(HOUR)), ("Date", date(0))], HOUR, True),
        ([("Expires", date(HOUR)), ("Date", date(-HOUR))], 2 * HOUR, True),  # Expires - Date
        ([("Expires", date(300)), ("Date", date(400))], 0, True),
        ([("Expires", date(HOUR))], HOUR, True),  # no Date: the arrival time
        ([("Expires", date(HOUR)), ("Date", "foo")], HOUR, True),
        ([("Expires", "0"), ("Date", date(0))], 0, True),  # §5.3: invalid = expired
        ([("Expires", "Thu, 18 Aug 2050 02:01:18 UTC")], 0, True),
        ([("Expires", date(HOUR)), ("Expires", date(-HOUR))], HOUR, True),  # the first
        ([("Cache-Control", "max-age=a100")], 0, True),
        ([("Cache-Control", "max-age=-1")], 0, True),
        ([("Cache-Control", "max-age=99999999999")], 2**31, True),
        ([], 0, False),
    ],
)
def test_explicit_freshness(headers: Headers, lifetime: float, explicit: bool):
    cc, targeted = response_cache_control(ROUTE, headers)
    assert freshness_lifetime(ROUTE, 200, headers, cc, NOW, targeted) == (lifetime, explicit)


@pytest.mark.parametrize(
    ("cfg", "headers", "lifetime"),
    [
        (route(ttl=30.0), [], 30),  # the route's ttl only without origin freshness
        (route(ttl=30.0), [("Cache-Control", "max-age=5")], 5),
        (route(ttl=30.0, max_ttl=10.0), [], 10),
        (route(max_ttl=10.0), [("Cache-Control", "max-age=500")], 10),
        (route(ttl=30.0, status_ttls={200: 7.0}), [], 7),
        (route(origin_cache_control="ignore", ttl=30.0), [("Cache-Control", "max-age=5")], 30),
    ],
)
def test_route_ttls(cfg: RouteConfig, headers: Headers, lifetime: float):
    cc, targeted = response_cache_control(cfg, headers)
    assert freshness_lifetime(cfg, 200, headers, cc, NOW, targeted)[0] == lifetime


# ---------------------------------------------------------------- §4.2.2 heuristic freshness


@pytest.mark.parametrize(
    ("status", "headers", "lifetime"),
    [
        (200, [("Last-Modified", date(-10 * HOUR)), ("Date", date(0))], HOUR),
        (404, [("Last-Modified", date(-100.0))], 10),
        (200, [("Last-Modified", date(-1000 * HOUR))], 86400),  # max_heuristic_ttl
        (200, [("Last-Modified", date(HOUR))], 0),  # modified in the future
        (200, [("Last-Modified", "garbage")], 0),
        (200, [], 0),
        (201, [("Last-Modified", date(-10 * HOUR))], 0),
        (599, [("Last-Modified", date(-10 * HOUR)), ("Cache-Control", "public")], HOUR),
    ],
)
def test_heuristic_lifetime(status: int, headers: Headers, lifetime: float):
    cc, _ = response_cache_control(ROUTE, headers)
    assert freshness_lifetime(ROUTE, status, headers, cc, NOW) == (lifetime, False)


def test_heuristic_cap_is_configurable():
    headers = [("Last-Modified", date(-10 * HOUR))]
    cfg = route(max_heuristic_ttl=60.0)
    assert freshness_lifetime(cfg, 200, headers, EMPTY, NOW) == (60, False)


# ---------------------------------------------------------------- §4.2.3 age


@pytest.mark.parametrize(
    ("headers", "request_time", "age"),
    [
        ([], NOW, 0),
        ([("Age", "30")], NOW, 30),
        ([("Age", "30")], NOW - 2, 32),  # plus the response delay
        ([("Date", date(-100))], NOW, 100),  # apparent age
        ([("Date", date(-100)), ("Age", "30")], NOW, 100),  # the larger one
        ([("Date", date(-10)), ("Age", "25")], NOW, 25),
        ([("Date", date(60))], NOW, 0),  # a fast origin clock
        ([("Age", "abc")], NOW, 0),
        ([("Age", "-7200")], NOW, 0),
        ([("Age", "7200,0")], NOW, 7200),
        ([("Age", "0"), ("Age", "7200")], NOW, 0),
    ],
)
def test_initial_age(headers: Headers, request_time: float, age: float):
    assert initial_age(headers, request_time, NOW) == age


# ---------------------------------------------------------------- §4.2, §5.2.1 reuse


@pytest.mark.parametrize(
    ("lifetime", "age", "flags", "directives", "usability"),
    [
        (60, 10, {}, None, Usability.FRESH),
        (60, 60, {}, None, Usability.STALE),
        (60, 10, {"no_cache": True}, None, Usability.MUST_VALIDATE),
        (60, 10, {}, "no-cache", Usability.REFUSED),  # §5.2.1.4
        (60, 10, {}, "max-age=5", Usability.REFUSED),  # §5.2.1.1
        (60, 10, {}, "max-age=10", Usability.FRESH),
        (60, 10, {}, "min-fresh=55", Usability.REFUSED),  # §5.2.1.3
        (60, 10, {}, "min-fresh=50", Usability.FRESH),
        (60, 70, {}, "max-stale=20", Usability.STALE_ALLOWED),  # §5.2.1.2
        (60, 90, {}, "max-stale=20", Usability.STALE),
        (60, 9999, {}, "max-stale", Usability.STALE_ALLOWED),
        (60, 70, {}, "max-stale=abc", Usability.STALE),
        (60, 70, {"must_revalidate": True}, "max-stale", Usability.STALE),  # §5.2.2.2
        (60, 70, {}, "max-stale, no-cache", Usability.STALE),
        (60, 70, {}, "max-stale, max-age=65", Usability.STALE),
        (60, 10, {}, "only-if-cached", Usability.FRESH),
    ],
)
def test_assess(
    lifetime: float,
    age: float,
    flags: dict[str, bool],
    directives: str | None,
    usability: Usability,
):
    request_cc = parse_cache_control([directives]) if directives else EMPTY
    options = {"no_cache": False, "must_revalidate": False, **flags}
    assert assess(lifetime, age, request_cc=request_cc, **options) is usability


@pytest.mark.parametrize(
    ("hmap", "honor", "directives"),
    [
        ({"cache-control": "no-cache"}, True, {"no-cache": None}),
        ({"cache-control": "no-cache"}, False, {}),  # the default: ignore, as nginx/Varnish
        ({"pragma": "no-cache"}, True, {"no-cache": None}),  # §5.4
        ({"pragma": "no-cache", "cache-control": "max-age=5"}, True, {"max-age": "5"}),
        ({"pragma": "x-ext"}, True, {}),
    ],
)
def test_request_directives(hmap: dict[str, str], honor: bool, directives: dict[str, Any]):
    cfg = route(client_cache_control="honor" if honor else "ignore")
    assert request_cache_control(cfg, hmap).directives == directives


# ---------------------------------------------------------------- §4.2.4, RFC 5861


@pytest.mark.parametrize(
    ("directives", "route_windows", "swr", "sie"),
    [
        ("max-age=1, stale-while-revalidate=30, stale-if-error=60", {}, 30, 60),
        ("max-age=1", {"stale_while_revalidate": 5.0, "stale_if_error": 9.0}, 5, 9),
        ("max-age=1, stale-if-error=0", {"stale_if_error": 9.0}, 0, 0),
        ("max-age=1, must-revalidate, stale-if-error=60", {"stale_if_error": 9.0}, 0, 0),
        ("max-age=1, proxy-revalidate", {"stale_while_revalidate": 5.0}, 0, 0),
        ("s-maxage=1, stale-while-revalidate=30", {}, 0, 0),
        ("max-age=1, no-cache, stale-if-error=60", {}, 0, 0),
    ],
)
def test_stale_windows_and_what_forbids_them(
    directives: str, route_windows: dict[str, float], swr: float, sie: float
):
    decision = decide([("Cache-Control", directives), ("ETag", '"e"')], cfg=route(**route_windows))
    assert (decision.stale_while_revalidate, decision.stale_if_error) == (swr, sie)


def test_windows():
    assert within_stale_window(60, 70, 30)
    assert not within_stale_window(60, 95, 30)
    assert not within_stale_window(60, 61, 0)
    widened = stale_if_error_window(0.0, parse_cache_control(["stale-if-error=100"]), False)
    assert widened == 100
    assert stale_if_error_window(50.0, parse_cache_control(["stale-if-error=10"]), False) == 50
    assert stale_if_error_window(50.0, parse_cache_control(["stale-if-error=100"]), True) == 0


def test_storage_ttl_covers_freshness_windows_and_revalidation():
    plain = decide([("Cache-Control", "max-age=60, stale-if-error=100")])
    assert plain.storage_ttl == 60 + 100
    short = decide([("Cache-Control", "max-age=60")])
    assert short.storage_ttl == 60 + 60  # as long again, for HEAD updates and max-stale
    long = decide([("Cache-Control", "max-age=6000")])
    assert long.storage_ttl == 6000 + VALIDATION_KEEP
    validated = decide([("Cache-Control", "max-age=60"), ("ETag", '"x"')])
    assert validated.storage_ttl == 60 + VALIDATION_KEEP


def test_max_ttl_caps_the_stale_windows_the_origin_grants():
    # a year of stale-if-error from the origin kept the entry (and, in Redis, its tags'
    # generation keys) a year, whatever max_ttl said
    year = "max-age=60, stale-while-revalidate=31536000, stale-if-error=31536000"
    capped = decide([("Cache-Control", year)], cfg=route(max_ttl=86400.0))
    assert (capped.stale_while_revalidate, capped.stale_if_error) == (86400, 86400)
    assert capped.storage_ttl == 60 + 86400
    # the route's own windows are its own choice, as its ttl is: the cap rises to them
    own = route(max_ttl=86400.0, stale_if_error=2 * 86400.0)
    assert decide([("Cache-Control", year)], cfg=own).stale_if_error == 2 * 86400
    assert decide([("Cache-Control", "max-age=60")], cfg=own).stale_if_error == 2 * 86400
    # max_ttl: none lifts it
    assert decide([("Cache-Control", year)], cfg=route(max_ttl=None)).stale_if_error == 31536000


# ---------------------------------------------------------------- RFC 9213, §5.4


@pytest.mark.parametrize(
    ("headers", "store", "lifetime"),
    [
        ([("CDN-Cache-Control", "max-age=3600")], True, 3600),
        ([("Cache-Control", "max-age=1"), ("CDN-Cache-Control", "max-age=3600")], True, 3600),
        ([("Cache-Control", "max-age=3600"), ("CDN-Cache-Control", "max-age=1")], True, 1),
        ([("Cache-Control", "no-store"), ("CDN-Cache-Control", "max-age=100")], True, 100),
        ([("Cache-Control", "max-age=100"), ("CDN-Cache-Control", "no-store")], False, 0),
        ([("Cache-Control", "max-age=100"), ("CDN-Cache-Control", "private")], False, 0),
        ([("CDN-Cache-Control", "max-age=0"), ("Expires", date(HOUR))], False, 0),
        ([("CDN-Cache-Control", "max-age=9"), ("Expires", "0")], True, 9),
        ([("CDN-Cache-Control", 'max-age="10"'), ("Cache-Control", "no-store")], False, 0),
        ([("CDN-Cache-Control", "max-age=10, &&"), ("Cache-Control", "max-age=5")], True, 5),
    ],
)
def test_cdn_cache_control_is_targeted_at_this_cache(
    headers: Headers, store: bool, lifetime: float
):
    decision = decide(headers, cfg=route(cdn_cache_control=True))
    assert decision.store is store
    assert decision.lifetime == lifetime


def test_cdn_cache_control_is_ignored_unless_enabled():
    headers = [("Cache-Control", "max-age=5"), ("CDN-Cache-Control", "max-age=3600")]
    assert decide(headers).lifetime == 5


@pytest.mark.parametrize(
    ("headers", "no_cache"),
    [
        ([("Pragma", "no-cache"), ("ETag", '"e"')], True),
        ([("Pragma", "no-cache"), ("Cache-Control", "max-age=60")], False),
        ([("Pragma", "x-ext"), ("ETag", '"e"'), ("Cache-Control", "max-age=6")], False),
    ],
)
def test_pragma_no_cache_only_without_cache_control(headers: Headers, no_cache: bool):
    assert decide(headers).no_cache is no_cache


# ---------------------------------------------------------------- §3.1, §3.2 stored fields


def test_storable_headers_drop_hop_by_hop_connection_listed_and_stripped():
    headers = [
        ("Connection", "a, B"),
        ("a", "1"),
        ("b", "2"),
        ("c", "3"),
        ("Keep-Alive", "timeout=5"),
        ("Transfer-Encoding", "chunked"),
        ("Proxy-Authenticate", "Basic"),
        ("Set-Cookie", "s=1"),
        ("Age", "4"),
        ("X-Private", "p"),
        ("Date", date(0)),
    ]
    kept = storable_headers(headers, frozenset({"x-private"}), NOW)
    assert kept == (("c", "3"), ("Date", date(0)))


def test_storable_headers_add_a_missing_date():  # RFC 9110 §6.6.1
    assert storable_headers([("A", "1")], frozenset(), NOW) == (("A", "1"), ("Date", date(0)))


def test_freshen_replaces_fields_but_not_the_body_framing():
    stored = [
        ("Content-Length", "5"),
        ("Content-Encoding", "gzip"),
        ("Test-Header", "A"),
        ("Cache-Control", "max-age=1"),
        ("X-Keep", "k"),
    ]
    fresh = [
        ("Content-Length", "10"),
        ("Content-Encoding", "br"),
        ("Test-Header", "B"),
        ("Cache-Control", "max-age=3600"),
        ("Connection", "x-hop"),
        ("X-Hop", "h"),
        ("Age", "3"),
    ]
    merged = dict(freshen_headers(stored, fresh))
    assert merged == {
        "Content-Length": "5",
        "Content-Encoding": "gzip",
        "X-Keep": "k",
        "Test-Header": "B",
        "Cache-Control": "max-age=3600",
    }


@pytest.mark.parametrize(
    ("stored", "fresh", "selected"),
    [
        ([("ETag", '"a"')], [("ETag", '"a"')], True),
        ([("ETag", '"a"')], [("ETag", '"b"')], False),  # §4.3.4: must not update
        ([("ETag", 'W/"a"')], [("ETag", '"a"')], False),  # strong needs strong
        ([("ETag", '"a"')], [("ETag", 'W/"a"')], True),
        ([("Last-Modified", date(-9))], [("Last-Modified", date(-9))], True),
        ([("Last-Modified", date(-9))], [("Last-Modified", date(-8))], False),
        ([("ETag", '"a"')], [], True),
    ],
)
def test_a_304_selects_the_stored_response_it_validates(
    stored: Headers, fresh: Headers, selected: bool
):
    assert selects_for_update(stored, fresh) is selected


@pytest.mark.parametrize(
    ("stored", "head", "updates"),
    [
        ([("ETag", '"a"')], [("ETag", '"a"'), ("Content-Length", "5")], True),
        ([("ETag", '"a"')], [("ETag", '"b"')], False),
        ([("Last-Modified", date(-9))], [("Last-Modified", date(-1))], False),
        ([], [("Content-Length", "6")], False),
        ([], [("X-New", "1")], True),
    ],
)
def test_head_updates_a_stored_get_only_when_it_matches(
    stored: Headers, head: Headers, updates: bool
):  # §4.3.5
    assert head_updates(stored, 5, head) is updates


# ---------------------------------------------------------------- §4.3.2 client validation


@pytest.mark.parametrize(
    ("conditionals", "status", "stored", "not_modified"),
    [
        ({"if-none-match": '"a"'}, 200, [("ETag", '"a"')], True),
        ({"if-none-match": 'W/"a"'}, 200, [("ETag", '"a"')], True),  # weak comparison
        ({"if-none-match": '"x", "a"'}, 200, [("ETag", 'W/"a"')], True),
        ({"if-none-match": '"b"'}, 200, [("ETag", '"a"')], False),
        ({"if-none-match": "*"}, 200, [], True),
        ({"if-none-match": '"a"'}, 404, [("ETag", '"a"')], False),
        ({"if-modified-since": date(-100)}, 200, [("Last-Modified", date(-100))], True),
        ({"if-modified-since": date(-50)}, 200, [("Last-Modified", date(-100))], True),
        ({"if-modified-since": date(-200)}, 200, [("Last-Modified", date(-100))], False),
        ({"if-modified-since": "garbage"}, 200, [("Last-Modified", date(-100))], False),
        ({"if-modified-since": date(-10)}, 200, [("Date", date(-20))], True),  # Date stands in
        # If-None-Match takes precedence over If-Modified-Since (RFC 9110 §13.2.2)
        (
            {"if-none-match": '"b"', "if-modified-since": date(0)},
            200,
            [("ETag", '"a"'), ("Last-Modified", date(-100))],
            False,
        ),
    ],
)
def test_client_conditionals(
    conditionals: dict[str, str], status: int, stored: Headers, not_modified: bool
):
    assert is_not_modified(conditionals, status, stored, NOW) is not_modified


# ---------------------------------------------------------------- §4.4 invalidation

HOSTS = ["proxy.test", "origin.test:8080"]


@pytest.mark.parametrize(
    ("method", "status", "headers", "paths"),
    [
        ("POST", 200, [], ["/a/b"]),
        ("PUT", 201, [], ["/a/b"]),
        ("DELETE", 204, [], ["/a/b"]),
        ("M-SEARCH", 200, [], ["/a/b"]),  # unknown safety: invalidate
        ("POST", 303, [], ["/a/b"]),
        ("POST", 500, [], []),
        ("POST", 404, [], []),
        ("GET", 200, [], []),
        ("OPTIONS", 200, [], []),
        ("POST", 201, [("Location", "/items/7")], ["/a/b", "/items/7"]),
        ("POST", 200, [("Location", "c?x=1")], ["/a/b", "/a/c?x=1"]),
        ("POST", 200, [("Content-Location", "http://proxy.test/z")], ["/a/b", "/z"]),
        ("POST", 200, [("Content-Location", "http://origin.test:8080/y")], ["/a/b", "/y"]),
        ("POST", 200, [("Location", "https://elsewhere.test/y")], ["/a/b"]),  # not same origin
        ("POST", 200, [("Location", "//elsewhere.test/y")], ["/a/b"]),
        ("POST", 200, [("Location", "mailto:x@y")], ["/a/b"]),
    ],
)
def test_invalidation_targets(method: str, status: int, headers: Headers, paths: list[str]):
    assert invalidation_targets(method, status, headers, "/a/b", HOSTS) == paths


@pytest.mark.parametrize(
    ("request_fields", "detail"),
    [
        ({"range": "bytes=0-1"}, None),  # cut from the stored response (proxy.core.ranges)
        ({"if-match": '"a"'}, "precondition"),
        ({"if-unmodified-since": date(0)}, "precondition"),
        ({"if-none-match": '"a"'}, None),  # the cache answers this one (§4.3.2)
        ({}, None),
    ],
)
def test_requests_passed_through(request_fields: dict[str, str], detail: str | None):
    assert passed_through(request_fields) == detail


@pytest.mark.parametrize(
    ("headers", "forbidden"),
    [
        ([("Cache-Control", "max-age=60, No-Transform")], True),
        ([("Cache-Control", "max-age=60"), ("Cache-Control", "no-transform")], True),
        ([("Cache-Control", "max-age=60")], False),
        ([], False),
    ],
)
def test_no_transform(headers: Headers, forbidden: bool):  # §5.2.2.6, RFC 9110 §7.7
    assert transform_forbidden(headers) is forbidden
