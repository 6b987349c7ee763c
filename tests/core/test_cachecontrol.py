"""Field parsing and formatting, table-driven and grouped by the section they implement:
RFC 9111 §5.2 / §1.2.2 / §5.1, RFC 9213, RFC 9110 §5.6.7 / §8.8.3 / §12.5, RFC 9211."""

from __future__ import annotations

import pytest

from proxy.core.cachecontrol import (
    ABSENT,
    DELTA_MAX,
    accepts_gzip,
    format_cache_status,
    format_http_date,
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
    strong_match,
    weak_match,
)

NOW = 1_700_000_000.0  # 2023-11-14
FUTURE = 2544400878.0  # Thu, 18 Aug 2050 02:01:18 GMT

# ---------------------------------------------------------------- RFC 9111 §1.2.2


@pytest.mark.parametrize(
    ("raw", "seconds"),
    [
        ("3600", 3600),
        ("003600", 3600),
        ("0", 0),
        (None, 0),
        ("", 0),
        ("-100", 0),
        ("+100", 0),
        ("3600.0", 0),
        ("3600a", 0),
        ("a3600", 0),
        (" 3600", 0),
        ("٣", 0),  # a non-ASCII digit is not a DIGIT
        ("2147483648", DELTA_MAX),
        ("99999999999", DELTA_MAX),
    ],
)
def test_delta_seconds_invalid_is_zero_and_large_is_capped(raw: str | None, seconds: int):
    assert parse_delta(raw) == seconds


# ---------------------------------------------------------------- RFC 9111 §5.2


@pytest.mark.parametrize(
    ("lines", "name", "seconds"),
    [
        (["max-age=3600"], "max-age", 3600),
        (["MaX-aGe=3600"], "max-age", 3600),
        (['max-age="3600"'], "max-age", 3600),  # §5.2: accept both forms
        (["max-age='3600'"], "max-age", 0),
        (["max-age =3600"], "max-age", 0),  # no whitespace around "=" in the grammar
        (["max-age= 3600"], "max-age", 0),
        (["max-age=1800, max-age=1"], "max-age", 1800),  # §4.2.1: the first one
        (["max-age=1", "max-age=1800"], "max-age", 1),
        (['extension="max-age=3600", max-age=1'], "max-age", 1),
        (['max-age=1, extension="max-age=3600"'], "max-age", 1),
        (['extension="a, max-age=9", max-age="1"'], "max-age", 1),
        (["foobar, max-age=3600"], "max-age", 3600),
        ([",, ,max-age=5,,"], "max-age", 5),
        (["=5, max-age=3"], "max-age", 3),  # a member without a name is no directive
        (["max-age=5 , no-store"], "max-age", 5),
        (["no-store"], "max-age", None),
        (["s-maxage=10", "max-age=1"], "s-maxage", 10),
        ([""], "max-age", None),
    ],
)
def test_cache_control_delta_directives(lines: list[str], name: str, seconds: int | None):
    assert parse_cache_control(lines).seconds(name) == seconds


@pytest.mark.parametrize(
    ("lines", "present", "absent"),
    [
        (["No-StOrE"], {"no-store"}, {"no-cache"}),
        (["max-age=10000, No-CaChE"], {"no-cache", "max-age"}, set()),
        (["public,private"], {"public", "private"}, set()),
        (["max-age =5, no-store"], {"max-age", "no-store"}, set()),
        (['private="a,b", max-age=1'], {"private", "max-age"}, {"a", "b"}),
        (["\tmust-revalidate\t"], {"must-revalidate"}, set()),
    ],
)
def test_cache_control_names_case_and_members(
    lines: list[str], present: set[str], absent: set[str]
):
    cc = parse_cache_control(lines)
    assert all(cc.has(name) for name in present)
    assert not any(cc.has(name) for name in absent)


@pytest.mark.parametrize(
    ("line", "directive", "fields"),
    [
        ("no-cache", "no-cache", ()),
        ('no-cache="Set-Cookie"', "no-cache", ("set-cookie",)),
        ('no-cache="a, b"', "no-cache", ("a", "b")),
        ('private="X-Secret,  x-other"', "private", ("x-secret", "x-other")),
        ("private=x-token", "private", ("x-token",)),  # token form, tolerated
        ('private=""', "private", ()),  # empty list: the unqualified meaning
        ('no-cache= "a"', "no-cache", ()),  # malformed: the conservative meaning
        ("max-age=1", "no-cache", None),
    ],
)
def test_qualified_no_cache_and_private(line: str, directive: str, fields: tuple[str, ...] | None):
    assert parse_cache_control([line]).fields(directive) == fields


def test_a_field_without_directives_is_empty():
    assert parse_cache_control(["", " , "]).is_empty
    assert not parse_cache_control(["no-store"]).is_empty


def test_text_after_a_quoted_argument_is_skipped_up_to_the_next_member():
    cc = parse_cache_control(['private="x-a"junk, max-age=5'])
    assert cc.fields("private") == ("x-a",)
    assert cc.seconds("max-age") == 5


def test_quoted_pair_unescapes():
    cc = parse_cache_control(['ext="a\\"b, c", max-age=3'])
    assert cc.directives["ext"] == 'a"b, c'
    assert cc.seconds("max-age") == 3


# ---------------------------------------------------------------- RFC 9213 §2.1


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        (["max-age=3600"], {"max-age": "3600"}),
        (["foobar, max-age=3600"], {"foobar": None, "max-age": "3600"}),
        (["max-age=99999999999"], {"max-age": "99999999999"}),
        (["no-store"], {"no-store": None}),
        (["private"], {"private": None}),
        (['no-cache="a, b"'], {"no-cache": "a, b"}),
        (["max-age=60, no-store=?0"], {"max-age": "60"}),
        (["max-age=60;foo=bar, public"], {"max-age": "60", "public": None}),
        (["max-age=60;foo;bar=?1, public"], {"max-age": "60", "public": None}),
        (["max-age=1", "max-age=9"], {"max-age": "9"}),  # a Dictionary: last wins
        (["ext=(a b), max-age=2"], {"ext": "(list)", "max-age": "2"}),
        (['ext="a\\"b", max-age=2'], {"ext": 'a"b', "max-age": "2"}),  # an escaped quote
    ],
)
def test_targeted_field_is_a_structured_dictionary(
    lines: list[str], expected: dict[str, str | None]
):
    targeted = parse_targeted(lines)
    assert targeted is not None
    assert targeted.directives == expected


@pytest.mark.parametrize(
    "lines",
    [
        [],
        [""],
        ["max-age=10000, &&&&&"],  # not a Dictionary
        ['max-age="10000"'],  # wrong type: a String where an Integer belongs
        ["max-age=-1"],
        ["max-age=1.5"],
        ["no-store=1"],
        ["max-age =100"],
        ["max-age= 100"],
        ["MaX-aGe=3600"],  # keys are lowercase
        ["max-age=1,"],
        ['ext="unterminated'],
        ['ext="escaped at the end\\"'],  # its last quote is escaped: still unterminated
        ["no-store=?0"],  # nothing left: an empty field is ignored too
        ["ext=(a,b), max-age=2"],  # inner-list items are separated by spaces
        ["max-age=2;1x=y"],  # a parameter key starts with a letter or *
        ["max-age=2, ext="],  # "=" and no value
        ['ext="a\tb", max-age=2'],  # a String holds printable ASCII only
        ["ext=?2, max-age=2"],  # a Boolean is ?0 or ?1
    ],
)
def test_invalid_or_empty_targeted_field_is_ignored(lines: list[str]):
    assert parse_targeted(lines) is None


# ---------------------------------------------------------------- RFC 9111 §5.1


@pytest.mark.parametrize(
    ("lines", "age"),
    [
        (["7200"], 7200),
        (["0"], 0),
        (["abc"], None),
        (["-7200"], None),
        (["7200.0"], None),
        (["7200,0"], 7200),  # list-valued: the first member
        (["0,7200"], 0),
        (["0, 0"], 0),
        (["7200", "0"], 7200),  # repeated: the first line
        (["0", "7200"], 0),
        ([], None),
        (["99999999999"], DELTA_MAX),
    ],
)
def test_age_uses_the_first_member_and_ignores_invalid(lines: list[str], age: int | None):
    assert parse_age(lines) == age


# ---------------------------------------------------------------- RFC 9110 §5.6.7


@pytest.mark.parametrize(
    ("value", "epoch"),
    [
        ("Thu, 18 Aug 2050 02:01:18 GMT", FUTURE),
        ("THU, 18 Aug 2050 02:01:18 GMT", FUTURE),
        ("Thu, 18 AUG 2050 02:01:18 GMT", FUTURE),
        ("Thu, 18 Aug 2050 02:01:18 gMT", FUTURE),
        ("  Thu, 18 Aug 2050 02:01:18 GMT ", FUTURE),
        ("Thursday, 18-Aug-50 02:01:18 GMT", FUTURE),  # RFC 850
        ("Thu Aug 18 02:01:18 2050", FUTURE),  # asctime
        ("Sun Nov  6 08:49:37 1994", 784111777.0),
        ("Sunday, 06-Nov-94 08:49:37 GMT", 784111777.0),  # > 50 years ahead: last century
        ("Sun, 06 Nov 1994 08:49:37 GMT", 784111777.0),
    ],
)
def test_http_date_forms(value: str, epoch: float):
    assert parse_http_date(value, NOW) == epoch


@pytest.mark.parametrize(
    "value",
    [
        None,
        "",
        "0",
        "-1",
        "Thu, 18 Aug 2050 02:01:18 UTC",
        "Thu, 18 Aug 2050 02:01:18 +0000",
        "Thu, 18 Aug 50 02:01:18 GMT",
        "Thu 18 Aug 2050 02:01:18 GMT",
        "Thu, 18  Aug  2050 02:01:18 GMT",
        "Thu, 18-Aug-2050 02:01:18 GMT",
        "Thu, 18 Aug 2050 02.01.18 GMT",
        "Thu, 18 Aug 2050 2:01:18 GMT",
        "Thu, 31 Feb 2050 02:01:18 GMT",
        "Thu, 18 Aug 2050 24:01:18 GMT",
        "tomorrow",
    ],
)
def test_invalid_http_dates(value: str | None):
    assert parse_http_date(value, NOW) is None


def test_format_http_date_round_trips():
    text = format_http_date(FUTURE)
    assert text == "Thu, 18 Aug 2050 02:01:18 GMT"
    assert parse_http_date(text) == FUTURE


# ---------------------------------------------------------------- RFC 9110 §8.8.3


@pytest.mark.parametrize(
    ("value", "tags"),
    [
        ('"a"', ['"a"']),
        ('"a", W/"b" ,"c"', ['"a"', 'W/"b"', '"c"']),
        ('"a,b", "c"', ['"a,b"', '"c"']),
        ("*", ["*"]),
        ("abc", ["abc"]),
        (" , ", []),
    ],
)
def test_entity_tag_lists(value: str, tags: list[str]):
    assert parse_entity_tags(value) == tags


@pytest.mark.parametrize(
    ("a", "b", "weak", "strong"),
    [
        ('"1"', '"1"', True, True),
        ('W/"1"', '"1"', True, False),
        ('W/"1"', 'W/"1"', True, False),
        ('"1"', '"2"', False, False),
        ('"abcdefü"', '"abcdefü"', True, True),
    ],
)
def test_weak_and_strong_comparison(a: str, b: str, weak: bool, strong: bool):
    assert weak_match(a, b) is weak
    assert strong_match(a, b) is strong


# ---------------------------------------------------------------- RFC 9110 §12.5.5, RFC 9111 §4.1


@pytest.mark.parametrize(
    ("lines", "names"),
    [
        (["Accept-Encoding"], ("accept-encoding",)),
        (["Foo, Bar", "baz"], ("bar", "baz", "foo")),
        (["FOO, foo"], ("foo",)),
        (["*"], ("*",)),
        (["*, *"], ("*",)),
        (["", "*"], ("*",)),
        ([", *"], ("*",)),
        (["Foo, *"], ("*", "foo")),
        ([""], ()),
    ],
)
def test_vary_names(lines: list[str], names: tuple[str, ...]):
    assert parse_vary(lines) == names


@pytest.mark.parametrize(
    ("first", "second", "same"),
    [
        ("1,2", " 1, 2 ", True),  # whitespace around list members
        ("1, 2", "1,  2", True),
        ("a  b", "a b", True),
        ("1, 2", "2, 1", False),  # order may matter for an unknown field
        ("A", "a", False),  # so may case
        ("", None, False),  # absent only matches absent (§4.1)
        (None, None, True),
    ],
)
def test_selecting_field_normalization(first: str | None, second: str | None, same: bool):
    a = normalize_field_value("foo", first)
    b = normalize_field_value("foo", second)
    assert (a == b) is same


@pytest.mark.parametrize(
    ("value", "normalized"),
    [
        ("gzip", "gzip"),
        ("x-gzip", "gzip"),
        ("GZIP, br", "br,gzip"),
        ("br;q=0.5, gzip;q=0.9", "br,gzip"),
        ("gzip, deflate, br, zstd", "br,deflate,gzip,zstd"),
        ("br, gzip;q=0", "br"),
        ("gzip;q=bad", ""),
        ("identity", "identity"),
        ("", ""),
        (None, ABSENT),
    ],
)
def test_accept_encoding_is_the_set_of_acceptable_codings(value: str | None, normalized: str):
    assert normalize_accept_encoding(value) == normalized
    assert normalize_field_value("accept-encoding", value) == normalized


@pytest.mark.parametrize(
    ("value", "gzip"),
    [("gzip", True), ("br", False), ("*", True), ("gzip;q=0", False), ("br, x-gzip", True)],
)
def test_accepts_gzip(value: str, gzip: bool):
    assert accepts_gzip(value) is gzip


def test_tag_lists_split_on_commas_and_spaces():
    assert parse_field_list(["a b,c", "a d"]) == ("a", "b", "c", "d")


# ---------------------------------------------------------------- RFC 9211 §2


@pytest.mark.parametrize(
    ("kwargs", "text"),
    [
        ({"hit": True, "ttl": 59.7}, "sidecache; hit; ttl=59"),
        ({"hit": True, "ttl": -0.5}, "sidecache; hit; ttl=-1"),
        (
            {"fwd": "uri-miss", "fwd_status": 200, "stored": True, "ttl": 60},
            "sidecache; fwd=uri-miss; fwd-status=200; stored; ttl=60",
        ),
        (
            {"fwd": "vary-miss", "fwd_status": 200, "collapsed": True},
            "sidecache; fwd=vary-miss; fwd-status=200; collapsed",
        ),
        (
            {"fwd": "bypass", "fwd_status": 201, "detail": "route"},
            ("sidecache; fwd=bypass; fwd-status=201; detail=route"),
        ),
        ({"fwd": "method", "detail": "two words"}, 'sidecache; fwd=method; detail="two words"'),
        # hit and fwd are exclusive; stored/collapsed only mean something with fwd
        ({"hit": True, "fwd": "stale", "stored": True}, "sidecache; hit"),
        ({"stored": True, "collapsed": True, "fwd_status": 200}, "sidecache"),
    ],
)
def test_cache_status_member_syntax(kwargs: dict[str, object], text: str):
    assert format_cache_status(**kwargs) == text  # type: ignore[arg-type]
