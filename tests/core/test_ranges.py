"""proxy.core.ranges, table-driven, no event loop: parsing Range (RFC 9110 §14.1.2), the
bytes a range selects (§14.1.3), If-Range (§13.1.5) and what a request gets."""

from __future__ import annotations

import pytest

from proxy.core.cachecontrol import format_http_date
from proxy.core.ranges import (
    Part,
    Ranged,
    Spec,
    Unsatisfiable,
    if_range_holds,
    parse_range,
    requested,
    select,
)

T0 = 1_700_000_000.0
MODIFIED = format_http_date(T0 - 3600)
SERVED = (
    ("ETag", '"v1"'),
    ("Last-Modified", MODIFIED),
    ("Date", format_http_date(T0)),
)


@pytest.mark.parametrize(
    ("value", "spec"),
    [
        ("bytes=0-99", (0, 99)),
        ("bytes=5-", (5, None)),
        ("bytes=-20", (None, 20)),
        ("bytes=-0", (None, 0)),
        ("bytes=7-7", (7, 7)),
        ("BYTES=1-2", (1, 2)),  # the unit is case-insensitive (§14.1)
        ("  bytes=1-2\t", (1, 2)),  # OWS around the field value
        ("bytes= 1-2 ", (1, 2)),  # OWS around a list member
        ("bytes=1-2,", (1, 2)),  # empty list elements are ignored (§5.6.1.2)
        ("bytes=,,1-2", (1, 2)),
        ("bytes=007-010", (7, 10)),  # leading zeros
        ("bytes=" + "0" * 40 + "3-", (3, None)),  # ... however many
        ("bytes=" + "9" * 5000 + "-", (10**18, None)),  # past any body, no int() error
        ("bytes=0-" + "9" * 30, (0, 10**18)),
        ("bytes=-" + "9" * 30, (None, 10**18)),
        ("bytes=5-4", None),  # last before first: an invalid range-spec
        ("bytes=0-1,3-4", None),  # several ranges: answered whole
        ("bytes=0-1, -3", None),
        ("items=0-1", None),  # another unit
        ("bytes 0-1", None),  # no "="
        ("bytes=", None),  # no range at all
        ("bytes=,", None),
        ("bytes=-", None),
        ("bytes=a-b", None),
        ("bytes=1-2-3", None),
        ("bytes=+1-2", None),
        ("bytes=1 - 2", None),
        ("bytes = 1-2", None),  # no whitespace around "=" in the grammar
        ("", None),
    ],
)
def test_parse_range(value: str, spec: Spec | None) -> None:
    assert parse_range(value) == spec


@pytest.mark.parametrize(
    ("spec", "length", "ranged"),
    [
        ((0, 0), 10, Part(0, 0, 10)),  # first byte
        ((0, 9), 10, Part(0, 9, 10)),  # all of it, as a part
        ((0, 99), 10, Part(0, 9, 10)),  # last past the end: the end
        ((9, None), 10, Part(9, 9, 10)),  # last byte, open range
        ((3, 5), 10, Part(3, 5, 10)),
        ((10, None), 10, Unsatisfiable(10)),  # first at the end
        ((10, 20), 10, Unsatisfiable(10)),
        ((10**18, None), 10, Unsatisfiable(10)),
        ((None, 1), 10, Part(9, 9, 10)),  # suffix: last byte
        ((None, 4), 10, Part(6, 9, 10)),
        ((None, 10), 10, Part(0, 9, 10)),
        ((None, 50), 10, Part(0, 9, 10)),  # suffix longer than the body: all of it
        ((None, 0), 10, Unsatisfiable(10)),  # a zero suffix selects nothing
        ((0, None), 0, Unsatisfiable(0)),  # an empty body has no first byte
        ((None, 5), 0, None),  # satisfiable, yet no Content-Range names it: whole
        ((None, 0), 0, Unsatisfiable(0)),
    ],
)
def test_select(spec: Spec, length: int, ranged: Ranged | None) -> None:
    assert select(spec, length) == ranged


def test_content_range() -> None:
    assert Part(0, 4, 10).content_range == "bytes 0-4/10"
    assert Unsatisfiable(10).content_range == "bytes */10"


@pytest.mark.parametrize(
    ("value", "served", "holds"),
    [
        ('"v1"', SERVED, True),
        (' "v1" ', SERVED, True),
        ('"v2"', SERVED, False),
        ('W/"v1"', SERVED, False),  # a weak tag never matches strongly
        ('"v1"', (("ETag", 'W/"v1"'),), False),  # nor does a weak served ETag
        ('"v1"', (), False),  # no ETag served
        (MODIFIED, SERVED, True),  # the Last-Modified, 1 h before Date: strong
        (format_http_date(T0 - 3601), SERVED, False),  # another date
        ("Sunday, 06-Nov-94 08:49:37 GMT", SERVED, False),
        ("not a date", SERVED, False),
        ("", SERVED, False),
        (MODIFIED, (("Last-Modified", MODIFIED),), False),  # no Date: weak
        (MODIFIED, (("Date", format_http_date(T0)),), False),  # no Last-Modified
        # Last-Modified under 60 s before Date: weak (§8.8.2.2), never a match
        (
            format_http_date(T0 - 59),
            (("Last-Modified", format_http_date(T0 - 59)), ("Date", format_http_date(T0))),
            False,
        ),
        (
            format_http_date(T0 - 60),
            (("Last-Modified", format_http_date(T0 - 60)), ("Date", format_http_date(T0))),
            True,
        ),
    ],
)
def test_if_range_holds(value: str, served: tuple[tuple[str, str], ...], holds: bool) -> None:
    assert if_range_holds(value, served) is holds


@pytest.mark.parametrize(
    ("method", "request_fields", "status", "length", "ranged"),
    [
        ("GET", {"range": "bytes=0-4"}, 200, 10, Part(0, 4, 10)),
        ("GET", {"range": "bytes=-3"}, 200, 10, Part(7, 9, 10)),
        ("GET", {"range": "bytes=20-"}, 200, 10, Unsatisfiable(10)),
        ("GET", {}, 200, 10, None),  # no Range
        ("GET", {"if-range": '"v1"'}, 200, 10, None),  # If-Range alone is ignored
        ("HEAD", {"range": "bytes=0-4"}, 200, 10, None),  # Range is for GET only
        ("GET", {"range": "bytes=0-4"}, 404, 10, None),  # only a 200 is cut
        ("GET", {"range": "bytes=0-4"}, 203, 10, None),
        ("GET", {"range": "bytes=0-1,4-5"}, 200, 10, None),  # several ranges: whole
        ("GET", {"range": "bytes=5-1"}, 200, 10, None),  # invalid: whole
        ("GET", {"range": "bytes=0-4", "if-range": '"v1"'}, 200, 10, Part(0, 4, 10)),
        ("GET", {"range": "bytes=0-4", "if-range": '"v0"'}, 200, 10, None),
        ("GET", {"range": "bytes=0-4", "if-range": MODIFIED}, 200, 10, Part(0, 4, 10)),
        ("GET", {"range": "bytes=0-4", "if-range": "yesterday"}, 200, 10, None),
        # If-Range that fails means the whole, even for an unsatisfiable range
        ("GET", {"range": "bytes=20-", "if-range": '"v0"'}, 200, 10, None),
    ],
)
def test_requested(
    method: str, request_fields: dict[str, str], status: int, length: int, ranged: Ranged | None
) -> None:
    assert requested(method, request_fields, status, length, SERVED) == ranged
