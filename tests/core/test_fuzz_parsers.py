"""Property-based attacks on the parsers that see untrusted text: durations and sizes
(policy), Cache-Control and the other response/request fields (from the origin and the
client), request paths and queries (from the client), and stored envelopes (from a
shared store). Each answers a value or its documented clean error, never a traceback.
"""

from __future__ import annotations

import contextlib
import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy.core.cachecontrol import (
    DELTA_MAX,
    accepts_gzip,
    normalize_accept_encoding,
    normalize_field_value,
    parse_age,
    parse_cache_control,
    parse_delta,
    parse_entity_tags,
    parse_field_list,
    parse_http_date,
    parse_targeted,
    parse_vary,
)
from proxy.core.entry import EntryError, decode
from proxy.core.freshness import (
    assess,
    decide_storage,
    initial_age,
    invalidation_targets,
    request_cache_control,
)
from proxy.core.keys import derive_key, normalize_path, normalize_query
from proxy.core.storedfields import freshen_headers, storable_headers
from proxy.policy.load import KeySpec, Match, QueryExclude, RouteConfig
from proxy.units import parse_duration, parse_size

FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# Field values as they arrive: latin-1 text (any byte), with the grammar's punctuation
# over-represented so the parsers' branches are reached.
FIELD = st.lists(
    st.sampled_from(
        [
            *",;=\"\\ \t()<>@:/[]?{}*!#$%&'+-.^_`|~0123456789",
            "max-age",
            "s-maxage",
            "no-cache",
            "no-store",
            "private",
            "public",
            "immutable",
            "must-revalidate",
            "stale-while-revalidate",
            "stale-if-error",
            "?0",
            "?1",
            "gzip",
            "br",
            "identity",
            "q=0",
            "q=1.0",
            "W/",
            "GMT",
            "Sun",
            "Nov",
            "1994",
            "\x00",
            "\x7f",
            "\xff",
            "é",
        ]
    ),
    max_size=30,
).map("".join)
ANY_TEXT = st.text(max_size=80) | FIELD
HEADERS = st.lists(
    st.tuples(
        st.sampled_from(
            [
                "Cache-Control",
                "CDN-Cache-Control",
                "Expires",
                "Date",
                "Age",
                "Last-Modified",
                "ETag",
                "Vary",
                "Set-Cookie",
                "Pragma",
                "Content-Location",
                "Location",
                "Content-Type",
                "Connection",
                "Surrogate-Key",
                "X-Other",
            ]
        ),
        FIELD,
    ),
    max_size=8,
)


def _route(**settings: object) -> RouteConfig:
    return RouteConfig(name="r", match=Match(), backend="local", **settings)  # type: ignore[arg-type]


ROUTES = st.sampled_from(
    [
        _route(ttl=60.0),
        _route(origin_cache_control="ignore", ttl=10.0),
        _route(cdn_cache_control=True),
        _route(client_cache_control="honor", cache_authorized=True),
        _route(strip_set_cookie=True, statuses=(200, 404)),
    ]
)


@FAST
@given(
    st.one_of(
        ANY_TEXT, st.integers(), st.floats(), st.none(), st.booleans(), st.lists(st.integers())
    )
)
def test_units_answer_a_finite_value_or_value_error(value: object) -> None:
    for parse in (parse_duration, parse_size):
        try:
            result = parse(value)
        except ValueError:
            continue
        assert math.isfinite(result)
        assert result >= 0


@FAST
@given(st.lists(ANY_TEXT, max_size=4))
def test_cache_control_fields_never_raise(values: list[str]) -> None:
    cc = parse_cache_control(values)
    for name in ("max-age", "s-maxage", "no-cache", "private"):
        cc.has(name)
        cc.fields(name)
        seconds = cc.seconds(name)
        assert seconds is None or 0 <= seconds <= DELTA_MAX
        assert 0 <= parse_delta(cc.directives.get(name)) <= DELTA_MAX
    targeted = parse_targeted(values)
    assert targeted is None or not targeted.is_empty
    age = parse_age(values)
    assert age is None or 0 <= age <= DELTA_MAX
    parse_vary(values)
    parse_field_list(values)


@FAST
@given(ANY_TEXT | st.none(), st.floats(0, 4e9) | st.none())
def test_http_dates_are_a_time_or_none(value: str | None, now: float | None) -> None:
    parsed = parse_http_date(value, now)
    assert parsed is None or math.isfinite(parsed)


@FAST
@given(ANY_TEXT)
def test_request_fields_never_raise(value: str) -> None:
    parse_entity_tags(value)
    accepts_gzip(value)
    normalize_accept_encoding(value)
    for name in ("accept-encoding", "accept-language", "cookie"):
        assert isinstance(normalize_field_value(name, value), str)


@FAST
@given(
    ROUTES,
    HEADERS,
    st.integers(100, 599),
    st.dictionaries(
        st.sampled_from(["cache-control", "authorization", "pragma", "cookie"]), FIELD, max_size=3
    ),
)
def test_storage_decisions_on_random_fields_are_clean(
    route: RouteConfig, headers: list[tuple[str, str]], status: int, request: dict[str, str]
) -> None:
    now = 1_700_000_000.0
    decision = decide_storage(
        route, "GET", request, status, headers, now, request_cache_control(route, request)
    )
    if decision.store:
        assert math.isfinite(decision.lifetime)
        assert decision.storage_ttl > 0
        stored = storable_headers(headers, decision.strip, now)
        # RFC 9111 §3 and the policy: a stored response never carries Set-Cookie
        assert not any(k.lower() == "set-cookie" for k, _ in stored)
    age = initial_age(headers, now - 1, now)
    assert math.isfinite(age)
    assert age >= 0
    request_cc = request_cache_control(route, request)
    assess(decision.lifetime, age, no_cache=False, must_revalidate=False, request_cc=request_cc)
    freshen_headers(headers, list(reversed(headers)))
    invalidation_targets("POST", 200, headers, "/a/b?c", ["example.com"])


# ---------------------------------------------------------------- paths and queries

SEGMENT = st.sampled_from(
    [
        "a",
        "b",
        ".",
        "..",
        "",
        "%2e",
        "%2E%2e",
        ".%2e",
        "%2f",
        "%2F",
        "%5c",
        "%41",
        "%7e",
        "%zz",
        "%",
        "%0",
        "%00",
        ";x",
        "x.css",
        "\\",
        "~",
        "%C3%A9",
        "..;",
        "%252e",
    ]
)
PATHS = st.lists(SEGMENT, max_size=8).map(lambda parts: "/" + "/".join(parts))


@FAST
@given(PATHS | st.text(max_size=40).map(lambda t: "/" + t))
def test_normalized_paths_are_canonical(path: str) -> None:
    try:
        normal = normalize_path(path)
    except ValueError:
        return
    assert normal.startswith("/")
    assert normalize_path(normal) == normal  # idempotent: one spelling per path
    segments = normal.split("/")[1:]
    assert "." not in segments
    assert ".." not in segments
    assert "//" not in normal
    assert "%00" not in normal
    assert "\\" not in normal
    lowered = normal.lower()
    for unreserved in ("%2e", "%41", "%7e", "%5f", "%2d"):
        assert unreserved not in lowered


@FAST
@given(
    st.text(max_size=60),
    st.sampled_from(
        [
            KeySpec(),
            KeySpec(query="ignore"),
            KeySpec(query=["a", "b"]),
            KeySpec(query=QueryExclude(exclude=["utm"])),
        ]
    ),
)
def test_queries_and_keys_never_raise(query: str, spec: KeySpec) -> None:
    normal = normalize_query(query, spec)
    assert normalize_query(normal, spec) == normal
    key = derive_key("r", "h", "/p", query, spec, {"cookie": query})
    assert key.startswith("sc:r:")
    assert len(key) == len("sc:r:") + 32


# ---------------------------------------------------------------- stored envelopes


@FAST
@given(st.binary(max_size=200))
def test_foreign_store_values_decode_or_raise_entry_error(raw: bytes) -> None:
    with contextlib.suppress(EntryError):
        decode(raw)


@pytest.mark.parametrize(
    "raw",
    [
        b"\xdd\xff\xff\xff\xff",
        b"\xc6\xff\xff\xff\xff",
        b"\xdf\xff\xff\xff\xff",
        b"\x91" * 200_000,
        b"\xc1",
        b"\xd4\x01\x01",
    ],
    ids=["array32", "bin32", "map32", "deep", "never-used", "ext"],
)
def test_hostile_msgpack_headers_are_entry_errors(raw: bytes) -> None:
    with pytest.raises(EntryError):
        decode(raw)
