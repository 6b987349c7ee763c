"""The decision module, table-driven: what a request gets, and what an origin answer
becomes. Pure functions on values with an injected ``now`` and ``draw`` (no event loop,
no sockets, no sleeps); the socket tests of tests/engine/test_semantics.py keep what only the
wire shows (Age and Date on the wire, coalescing, the stores)."""

from __future__ import annotations

import gzip
from dataclasses import replace
from typing import Any

import pytest

from proxy.core.cachecontrol import EMPTY, format_http_date, parse_cache_control
from proxy.core.decide import (
    SWR,
    Fetch,
    Fields,
    Found,
    Freshen,
    Keep,
    Look,
    Pass,
    Probe,
    Refuse,
    Serve,
    Stream,
    UseStale,
    answers,
    body_intact,
    classify,
    decide_answer,
    decide_head,
    decide_lookup,
    decide_update,
    filled_meanwhile,
    hostname,
    identity,
    is_fresh_hit,
    is_personal,
    on_origin_error,
    refresh_early,
    selects,
    within_sie,
    within_swr,
)
from proxy.core.entry import CachedResponse
from proxy.core.exchange import Exchange
from proxy.core.keys import derive_key
from proxy.policy.load import Match, RouteConfig
from proxy.policy.model import EarlyRefresh, KeySpec

NOW = 1_700_000_000.0
ROUTE = RouteConfig(name="t", match=Match(), backend="local")
HONOR = replace(ROUTE, client_cache_control="honor")


def route(**overrides: Any) -> RouteConfig:
    return replace(ROUTE, **overrides)


def request(method: str = "GET", *headers: tuple[str, str], body: bool = False) -> Exchange:
    async def empty() -> Any:  # pragma: no cover - never read by a decision
        yield b""

    return Exchange.build(
        method, "/a", "q=1", headers, host="example.com", body=empty() if body else None
    )


def entry(age: float = 0.0, lifetime: float = 60.0, **overrides: Any) -> CachedResponse:
    """A stored 200 received ``age`` seconds before NOW."""
    fields: dict[str, Any] = {
        "status": 200,
        "headers": (("ETag", '"v1"'), ("Date", format_http_date(NOW - age))),
        "body": b"hello",
        "body_encoding": None,
        "request_time": NOW - age - 0.1,
        "response_time": NOW - age,
        "initial_age": 0.0,
        "lifetime": lifetime,
    }
    fields.update(overrides)
    return CachedResponse(**fields)


def never() -> float:
    raise AssertionError("drawn on a route without early refresh")


# ---------------------------------------------------------------- request → action


@pytest.mark.parametrize(
    ("cfg", "ex", "expected"),
    [
        (route(cache=False), request(), Pass("bypass", "route")),
        (ROUTE, request("POST"), Pass("method")),
        (ROUTE, request("DELETE"), Pass("method")),
        (ROUTE, request("GET", ("Content-Length", "3"), body=True), Pass("bypass", "body")),
        (ROUTE, request("GET", ("Transfer-Encoding", "chunked")), Pass("bypass", "body")),
        (ROUTE, request("GET", ("If-Match", '"x"')), Pass("bypass", "precondition")),
        (ROUTE, request("HEAD", ("If-Unmodified-Since", "x")), Pass("bypass", "precondition")),
    ],
)
def test_requests_the_cache_takes_no_part_in(cfg: RouteConfig, ex: Exchange, expected: Pass):
    assert classify(ex, cfg) == expected


@pytest.mark.parametrize(
    ("cfg", "headers", "request_cc"),
    [
        (ROUTE, (), EMPTY),
        (ROUTE, (("Cache-Control", "no-cache"),), EMPTY),  # ignored by default
        (HONOR, (("Cache-Control", "max-age=5"),), parse_cache_control(["max-age=5"])),
        (HONOR, (("Pragma", "no-cache"),), parse_cache_control(["no-cache"])),
        # a GET with an empty body is keyed like any GET
        (ROUTE, (("Content-Length", "0"),), EMPTY),
    ],
)
def test_cacheable_requests_are_looked_up_under_their_key(
    cfg: RouteConfig, headers: tuple[tuple[str, str], ...], request_cc: Any
):
    ex = request("GET", *headers, body=bool(headers and headers[0][0] == "Content-Length"))
    key = derive_key("t", "example.com", "/a", "q=1", cfg.key, ex.hmap)
    assert classify(ex, cfg) == Look(key, request_cc)


def test_a_cache_authorized_route_keys_on_the_credentials():
    cfg = route(cache_authorized=True)
    alice = classify(request("GET", ("Authorization", "Bearer a")), cfg)
    bob = classify(request("GET", ("Authorization", "Bearer b")), cfg)
    anonymous = classify(request(), cfg)
    assert isinstance(alice, Look)
    assert isinstance(bob, Look)
    assert isinstance(anonymous, Look)
    assert len({alice.key, bob.key, anonymous.key}) == 3


@pytest.mark.parametrize(
    ("headers", "cookies", "same_as_anonymous"),
    [
        ({}, [], True),
        ({"cookie": "s=1"}, [], False),  # the whole Cookie identifies the user
        ({"cookie": "s=1"}, ["s"], True),  # keyed cookies: the key tells them apart
        ({"authorization": "Basic x", "cookie": "s=1"}, ["s"], False),
    ],
)
def test_identity(headers: dict[str, str], cookies: list[str], same_as_anonymous: bool):
    assert (identity(headers, cookies) == "") is same_as_anonymous


@pytest.mark.parametrize(
    ("host", "name"),
    [("a.example:8080", "a.example"), ("[::1]:8080", "[::1]"), ("[::1]", "[::1]"), ("", "")],
)
def test_hostname_drops_the_port(host: str, name: str):
    assert hostname(host) == name


# ---------------------------------------------------------------- lookup → action

SWR_ENTRY = {"stale_while_revalidate": 30.0}


@pytest.mark.parametrize(
    ("cfg", "headers", "stored", "expected"),
    [
        # §4.2 fresh: a HIT
        (ROUTE, (), entry(10), Serve(entry(10))),
        # stale, no window: revalidated with its validator
        (ROUTE, (), entry(70), Fetch(entry(70), "stale")),
        # RFC 5861 §3: stale inside stale-while-revalidate: STALE and one refresh
        (ROUTE, (), entry(70, **SWR_ENTRY), Serve(entry(70, **SWR_ENTRY), "revalidate", True)),
        # ... past the window: forward
        (ROUTE, (), entry(95, **SWR_ENTRY), Fetch(entry(95, **SWR_ENTRY), "stale")),
        # §4.2.4: never stale under must-revalidate or no-cache
        (
            ROUTE,
            (),
            entry(70, must_revalidate=True, **SWR_ENTRY),
            Fetch(entry(70, must_revalidate=True, **SWR_ENTRY), "stale"),
        ),
        (
            ROUTE,
            (),
            entry(1, no_cache=True, **SWR_ENTRY),
            Fetch(entry(1, no_cache=True, **SWR_ENTRY), "stale"),
        ),
        # §5.2.1: request directives, when the route honours them
        (HONOR, (("Cache-Control", "no-cache"),), entry(1), Fetch(entry(1), "request")),
        (HONOR, (("Cache-Control", "max-age=5"),), entry(10), Fetch(entry(10), "request")),
        (HONOR, (("Cache-Control", "min-fresh=55"),), entry(10), Fetch(entry(10), "request")),
        (HONOR, (("Cache-Control", "max-stale"),), entry(70), Serve(entry(70), "client")),
        (ROUTE, (("Cache-Control", "max-stale"),), entry(70), Fetch(entry(70), "stale")),
        # §3.5: a request with Authorization reuses only what allows shared caching
        (ROUTE, (("Authorization", "x"),), entry(1), Fetch(entry(1), "request")),
        (
            ROUTE,
            (("Authorization", "x"),),
            entry(1, headers=(("Cache-Control", "public, max-age=60"),)),
            Serve(entry(1, headers=(("Cache-Control", "public, max-age=60"),))),
        ),
        (route(cache_authorized=True), (("Authorization", "x"),), entry(1), Serve(entry(1))),
    ],
)
def test_what_a_stored_response_answers(
    cfg: RouteConfig, headers: tuple[tuple[str, str], ...], stored: CachedResponse, expected: Any
):
    ex = request("GET", *headers)
    found = Found(stored, "k")
    request_cc = classify(ex, cfg)
    assert isinstance(request_cc, Look)
    assert decide_lookup(ex, cfg, found, NOW, request_cc.request_cc, never) == expected


@pytest.mark.parametrize(
    ("found", "method", "directive", "expected"),
    [
        (Found(None, "k"), "GET", "", Fetch(None, "uri-miss")),
        (Found(None, "k", vary_miss=True), "GET", "", Fetch(None, "vary-miss")),  # RFC 9211 §2.2
        (Found(None, "k"), "HEAD", "", Probe(None, "k", "uri-miss")),
        (Found(entry(70), "v"), "HEAD", "", Probe(entry(70), "v", "stale")),
        (Found(None, "k"), "GET", "only-if-cached", Refuse()),  # RFC 9111 §5.2.1.7
        (Found(entry(70), "k"), "GET", "only-if-cached", Refuse()),
        (Found(entry(1), "k"), "GET", "only-if-cached", Serve(entry(1))),
    ],
)
def test_what_a_request_without_a_usable_entry_gets(
    found: Found, method: str, directive: str, expected: Any
):
    headers = (("Cache-Control", directive),) if directive else ()
    ex = request(method, *headers)
    request_cc = parse_cache_control([directive]) if directive else EMPTY
    assert decide_lookup(ex, HONOR, found, NOW, request_cc, never) == expected


@pytest.mark.parametrize(
    ("stored", "uncacheable", "expected"),
    [
        # a range is cut from a stored response (replies.from_cache), fresh or stale
        (entry(1), True, Serve(entry(1))),
        (entry(1, stale_while_revalidate=9.0), True, Serve(entry(1, stale_while_revalidate=9.0))),
        # a miss fetches the whole response to cut the range from it ...
        (None, False, Fetch(None, "uri-miss")),
        (entry(70), False, Fetch(entry(70), "stale")),
        # ... unless nothing will be stored (hit-for-miss): the Range goes to the origin
        (None, True, Pass("bypass", "range")),
        (entry(70), True, Pass("bypass", "range")),
    ],
)
def test_a_range_request(stored: CachedResponse | None, uncacheable: bool, expected: Any):
    ex = request("GET", ("Range", "bytes=0-1"))
    assert classify(ex, ROUTE) == Look(
        derive_key("t", "example.com", "/a", "q=1", ROUTE.key, ex.hmap), EMPTY
    )
    found = Found(stored, "k")
    assert decide_lookup(ex, ROUTE, found, NOW, EMPTY, never, uncacheable) == expected
    # hit-for-miss matters to a Range only
    plain = decide_lookup(request(), ROUTE, found, NOW, EMPTY, never, uncacheable)
    assert not isinstance(plain, Pass)


def test_a_corrupt_stored_body_is_a_miss():
    broken = entry(1, body=b"\x1f\x8bnot gzip", body_encoding="gzip")
    plain_client = request()
    gzip_client = request("GET", ("Accept-Encoding", "gzip"))
    assert decide_lookup(plain_client, ROUTE, Found(broken, "k"), NOW, EMPTY, never) == Fetch(
        None, "uri-miss"
    )
    # a client that takes the stored gzip as it is never inflates it
    assert decide_lookup(gzip_client, ROUTE, Found(broken, "k"), NOW, EMPTY, never) == Serve(broken)


@pytest.mark.parametrize(
    ("draw", "age", "refresh"),
    [(0.5, 10.0, False), (1e-300, 10.0, True), (0.0, 59.999, True), (0.999, 50.0, False)],
)
def test_early_refresh_draws_only_on_its_routes(draw: float, age: float, refresh: bool):
    cfg = route(early_refresh=EarlyRefresh(beta=1.0))
    stored = entry(age)
    decision = decide_lookup(request(), cfg, Found(stored, "k"), NOW, EMPTY, lambda: draw)
    assert decision == Serve(stored, None, refresh)
    assert refresh_early(stored, NOW, 1.0, draw) is refresh


def test_serve_labels_and_details():
    assert (Serve(entry()).label, Serve(entry()).detail) == ("HIT", None)
    assert (Serve(entry(), "client").label, Serve(entry(), "client").detail) == ("STALE", None)
    assert Serve(entry(), "revalidate").detail == SWR


@pytest.mark.parametrize(
    ("cfg", "headers", "stored", "fresh"),
    [
        (ROUTE, (), entry(10), True),
        (ROUTE, (), entry(70), False),
        (ROUTE, (), entry(1, no_cache=True), False),
        (ROUTE, (("Authorization", "x"),), entry(1), False),
        (HONOR, (("Cache-Control", "no-cache"),), entry(1), False),
        (HONOR, (("Cache-Control", "max-stale"),), entry(70), False),  # STALE, not a HIT
        (ROUTE, (), entry(1, status=103), False),
    ],
)
def test_the_synchronous_hit_path_asks_the_same_decision(
    cfg: RouteConfig, headers: tuple[tuple[str, str], ...], stored: CachedResponse, fresh: bool
):
    ex = request("GET", *headers)
    assert is_fresh_hit(ex, cfg, stored, NOW) is fresh
    look = classify(ex, cfg)
    assert isinstance(look, Look)
    decision = decide_lookup(ex, cfg, Found(stored, "k"), NOW, look.request_cc, never)
    assert (decision == Serve(stored)) is fresh


def test_the_synchronous_hit_path_leaves_early_refresh_routes_to_the_general_path():
    cfg = route(early_refresh=EarlyRefresh(beta=1.0))
    assert not is_fresh_hit(request(), cfg, entry(10), NOW)
    assert decide_lookup(request(), cfg, Found(entry(10), "k"), NOW, EMPTY, lambda: 0.5) == Serve(
        entry(10)
    )


# ---------------------------------------------------------------- judgements on entries


@pytest.mark.parametrize(
    ("stored", "accept", "intact"),
    [
        (entry(), "", True),
        (entry(status=101), "", False),  # never stored by us: would desync the client
        (entry(body=gzip.compress(b"x"), body_encoding="gzip"), "", True),
        (entry(body=b"\x1f\x8bjunk", body_encoding="gzip"), "", False),
        (entry(body=b"\x1f\x8bjunk", body_encoding="gzip"), "gzip", True),
    ],
)
def test_body_intact(stored: CachedResponse, accept: str, intact: bool):
    headers = (("Accept-Encoding", accept),) if accept else ()
    assert body_intact(stored, request("GET", *headers)) is intact


VARIANT = (("accept-language", "de"),)


@pytest.mark.parametrize(
    ("variant", "headers", "selected"),
    [
        ((), (), True),
        (VARIANT, (("Accept-Language", "de"),), True),
        (VARIANT, (("Accept-Language", "fr"),), False),
        (VARIANT, (), False),
    ],
)
def test_selects_by_the_vary_fields(
    variant: tuple[tuple[str, str], ...], headers: tuple[tuple[str, str], ...], selected: bool
):
    assert selects(entry(variant=variant), request("GET", *headers)) is selected


@pytest.mark.parametrize(
    ("cfg", "headers", "stored", "shared"),
    [
        (ROUTE, (), entry(), True),
        (ROUTE, (("Accept-Language", "fr"),), entry(variant=VARIANT), False),
        (ROUTE, (("Authorization", "x"),), entry(), False),
        (ROUTE, (("Authorization", "x"),), entry(headers=(("Cache-Control", "public"),)), True),
        (route(cache_authorized=True), (("Authorization", "x"),), entry(), True),
    ],
)
def test_a_leaders_answer_for_a_follower(
    cfg: RouteConfig, headers: tuple[tuple[str, str], ...], stored: CachedResponse, shared: bool
):
    assert answers(stored, request("GET", *headers), cfg) is shared


@pytest.mark.parametrize(
    ("found", "stale", "accept", "collapsible"),
    [
        (entry(1), None, "", True),
        (entry(1), entry(70), "", True),
        (entry(70), None, "", False),  # past its lifetime
        (entry(1), entry(0.5), "", False),  # not newer than our stale copy
        (entry(1, body=b"\x1f\x8bjunk", body_encoding="gzip"), None, "", False),
    ],
)
def test_an_entry_another_replica_filled(
    found: CachedResponse, stale: CachedResponse | None, accept: str, collapsible: bool
):
    assert filled_meanwhile(found, stale, request(), NOW) is collapsible


@pytest.mark.parametrize(
    ("stored", "swr", "sie", "request_sie"),
    [
        (entry(70, stale_while_revalidate=30.0, stale_if_error=30.0), True, True, ""),
        (entry(95, stale_while_revalidate=30.0, stale_if_error=30.0), False, False, ""),
        (entry(95, stale_if_error=30.0), False, True, "stale-if-error=60"),  # widened
        (entry(70, must_revalidate=True, stale_if_error=30.0), False, False, "stale-if-error=60"),
        (entry(70, no_cache=True, stale_while_revalidate=30.0), False, False, ""),
    ],
)
def test_stale_windows(stored: CachedResponse, swr: bool, sie: bool, request_sie: str):
    request_cc = parse_cache_control([request_sie]) if request_sie else EMPTY
    assert within_swr(stored, NOW) is swr
    assert within_sie(stored, NOW, request_cc) is sie


# ---------------------------------------------------------------- origin answer → action

STORABLE = [("Cache-Control", "max-age=60"), ("ETag", '"v2"')]
SIE = entry(70, stale_if_error=30.0)


@pytest.mark.parametrize(
    ("stale", "status", "headers", "forwarded", "expected"),
    [
        # RFC 5861 §4: an error status inside the window: the stale copy answers
        (SIE, 500, STORABLE, [], UseStale(SIE, 500)),
        (SIE, 503, [], [], UseStale(SIE, 503)),
        (entry(95, stale_if_error=30.0), 500, [], [], Stream("status", 500)),  # past it
        (None, 500, [], [], Stream("status", 500)),
        # §4.3.4: a 304 to our conditional request
        (entry(70), 304, [], [], Freshen(entry(70))),
        (None, 304, [], [], Stream("status", 304)),
        # §3: storable or not (the reason becomes Cache-Status' detail)
        (None, 200, STORABLE, [], "keep"),
        (None, 200, [("Cache-Control", "no-store")], [], Stream("no-store", 200)),
        (None, 200, [("Cache-Control", "private")], [], Stream("private", 200)),
        (None, 200, [*STORABLE, ("Set-Cookie", "a=1")], [], Stream("set-cookie", 200)),
        # a request whose Cookie reached the origin: no shared key for a personal answer
        (None, 200, STORABLE, [("Cookie", "s=1")], Stream("cookie", 0)),
        (None, 200, [*STORABLE, ("Vary", "Cookie")], [("Cookie", "s=1")], "keep"),
    ],
)
def test_what_an_origin_answer_becomes(
    stale: CachedResponse | None,
    status: int,
    headers: list[tuple[str, str]],
    forwarded: list[tuple[str, str]],
    expected: Any,
):
    decision = decide_answer(request(), ROUTE, stale, status, headers, forwarded, NOW, EMPTY)
    if expected == "keep":
        assert isinstance(decision, Keep)
        assert decision.decision.store
        assert decision.decision.lifetime == 60.0
    else:
        assert decision == expected


@pytest.mark.parametrize(
    ("stale", "request_cc", "expected"),
    [
        (None, "", None),
        (SIE, "", UseStale(SIE, None)),
        (entry(95, stale_if_error=30.0), "", None),
        (
            entry(95, stale_if_error=30.0),
            "stale-if-error=60",
            UseStale(entry(95, stale_if_error=30.0), None),
        ),
    ],
)
def test_an_origin_that_does_not_answer(
    stale: CachedResponse | None, request_cc: str, expected: UseStale | None
):
    rcc = parse_cache_control([request_cc]) if request_cc else EMPTY
    assert on_origin_error(stale, NOW, rcc) == expected


@pytest.mark.parametrize(
    ("cfg", "forwarded", "response", "personal"),
    [
        (ROUTE, [], [], False),
        (ROUTE, [("Cookie", "s=1")], [], True),
        (ROUTE, [("cookie", "s=1")], [("Vary", "Accept, Cookie")], False),
        (ROUTE, [("Cookie", "s=1")], [("Cache-Control", "public")], False),
        (ROUTE, [("Cookie", "s=1")], [("Cache-Control", "s-maxage=9")], False),
        (ROUTE, [("Cookie", "s=1")], [("Cache-Control", "max-age=9")], True),
        (
            route(origin_cache_control="ignore"),
            [("Cookie", "s=1")],
            [("Cache-Control", "public")],
            True,
        ),
        (route(cache_authorized=True), [("Cookie", "s=1")], [], False),
    ],
)
def test_is_personal(
    cfg: RouteConfig,
    forwarded: list[tuple[str, str]],
    response: list[tuple[str, str]],
    personal: bool,
):
    assert is_personal(cfg, forwarded, response) is personal


# ---------------------------------------------------------------- updates (§4.3.4, §4.3.5)

OLD = entry(70, headers=(("ETag", '"v1"'), ("Cache-Control", "max-age=60"), ("X-Old", "1")))


@pytest.mark.parametrize(
    ("fresh", "store", "reason", "drop"),
    [
        ([("ETag", '"v1"'), ("Cache-Control", "max-age=120")], True, "stored", False),
        ([("Cache-Control", "max-age=120")], True, "stored", False),  # no validator: selects
        ([("ETag", '"v2"'), ("Cache-Control", "max-age=120")], False, "unmatched-304", True),
        ([("ETag", '"v1"'), ("Cache-Control", "no-store")], False, "no-store", False),
    ],
)
def test_a_304_updates_the_stored_response(
    fresh: list[tuple[str, str]], store: bool, reason: str, drop: bool
):
    update = decide_update(request(), ROUTE, OLD, Fields(fresh, NOW - 0.1, NOW))
    assert (update.store, update.reason, update.drop) == (store, reason, drop)
    assert update.entry.header("X-Old") == "1"  # §3.2: the stored fields stay
    assert update.entry.header("Cache-Control") == fresh[-1][1]
    assert update.entry.response_time == NOW
    if store:
        assert update.entry.lifetime == 120.0
        assert update.ttl > 120.0
        assert update.entry.age(NOW) < 1.0  # the 304's Date, not the stored one
    else:
        assert update.ttl == 0.0


@pytest.mark.parametrize(
    ("fresh", "store", "drop"),
    [
        ([("ETag", '"v1"'), ("Cache-Control", "max-age=120")], True, False),
        ([("ETag", '"v2"')], False, True),  # another representation: the stored GET goes
        ([("ETag", '"v1"'), ("Content-Length", "99")], False, True),
        ([("ETag", '"v1"'), ("Cache-Control", "no-store")], False, False),
    ],
)
def test_a_head_answer_updates_or_drops_the_stored_get(
    fresh: list[tuple[str, str]], store: bool, drop: bool
):
    update = decide_head(request("HEAD"), ROUTE, OLD, Fields(fresh, NOW - 0.1, NOW))
    assert (update.store, update.drop) == (store, drop)
    if store:
        assert update.entry.lifetime == 120.0
        assert update.entry.header("X-Old") == "1"
    else:
        assert update.entry is OLD


def test_key_spec_cookies_are_what_the_identity_leaves_out():
    cfg = route(cache_authorized=True, key=KeySpec(cookies=["s"]))
    one = classify(request("GET", ("Cookie", "s=1; t=1")), cfg)
    two = classify(request("GET", ("Cookie", "s=1; t=2")), cfg)
    assert isinstance(one, Look)
    assert isinstance(two, Look)
    assert one.key == two.key
