"""Byte ranges cut from a stored whole response (RFC 9110 §14): the one range a GET's
``Range`` asks for, whether its ``If-Range`` lets the range be served (§13.1.5), and the
``Content-Range`` naming the answer (§14.4). Pure: no I/O, no awaits. The engine asks
``requested`` where a stored response becomes an answer; anything this module does not
serve as a part (several ranges, another unit, a bad value) is answered whole, as §14.2
allows a server to ignore Range.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from proxy.core.cachecontrol import parse_http_date, strong_match
from proxy.core.storedfields import Headers, first_header

# int-range / suffix-range of §14.1.2; other-range and anything else is not served
_SPEC: Final = re.compile(r"([0-9]+)-([0-9]*)|-([0-9]+)")
_MAX_DIGITS: Final = 18  # longer positions exceed any body (and int()'s digit limit)
_HUGE: Final = 10**_MAX_DIGITS
_OWS: Final = " \t"
# §8.8.2.2: a cache may take Last-Modified as strong when it is at least this long before
# the stored response's Date
_STRONG_DATE_GAP: Final = 60.0


@dataclass(frozen=True, slots=True)
class Part:
    """One satisfiable byte range of a representation of ``length`` bytes, ``last``
    included (RFC 9110 §14.1.2): answered 206."""

    first: int
    last: int
    length: int

    @property
    def content_range(self) -> str:
        """§14.4: ``bytes first-last/complete-length``."""
        return f"bytes {self.first}-{self.last}/{self.length}"


@dataclass(frozen=True, slots=True)
class Unsatisfiable:
    """A range outside a representation of ``length`` bytes: answered 416 (§15.5.17)."""

    length: int

    @property
    def content_range(self) -> str:
        """§14.4: an unsatisfied-range, ``bytes */complete-length``."""
        return f"bytes */{self.length}"


Ranged = Part | Unsatisfiable
Spec = tuple[int, int | None] | tuple[None, int]


def requested(
    method: str, request: Mapping[str, str], status: int, length: int, served: Headers
) -> Ranged | None:
    """The part of a stored response a request asks for, or ``None``: the whole
    response answers it. Ranges apply to GET only (§14.2) and to a 200 (the selected
    representation); ``If-Range`` that does not hold means the whole (§13.1.5).
    ``served`` are the fields of the representation as served (its ETag, Last-Modified
    and Date), ``length`` the length of the body as served; ``request`` maps lowercased
    field names to values."""
    value = request.get("range")
    if value is None or method != "GET" or status != 200:
        return None
    condition = request.get("if-range")
    if condition is not None and not if_range_holds(condition, served):
        return None
    spec = parse_range(value)
    return select(spec, length) if spec is not None else None


def parse_range(value: str) -> Spec | None:
    """The one byte-range-spec of a Range field (§14.1.2): ``(first, last)`` with
    ``last`` ``None`` for an open range, or ``(None, suffix_length)``. ``None`` when the
    value is not a single valid ``bytes`` range: another unit, bad syntax, ``last``
    before ``first`` (an invalid range-spec, §14.1.2) or several ranges."""
    unit, equals, ranges = value.strip(_OWS).partition("=")
    if not equals or unit.lower() != "bytes":
        return None
    # §5.6.1.2: empty list elements are ignored
    specs = [s.strip(_OWS) for s in ranges.split(",") if s.strip(_OWS)]
    if len(specs) != 1:
        return None
    found = _SPEC.fullmatch(specs[0])
    if found is None:
        return None
    first, last, suffix = found.groups()
    if suffix is not None:
        return None, _number(suffix)
    if not last:
        return _number(first), None
    start, end = _number(first), _number(last)
    return (start, end) if end >= start else None


def select(spec: Spec, length: int) -> Ranged | None:
    """§14.1.3: the bytes a range-spec selects from a representation of ``length``
    bytes (a last position past the end means the end; a suffix longer than the body,
    the whole body), ``Unsatisfiable`` when it selects none. ``None`` for a suffix of
    an empty body: satisfiable, yet no Content-Range can name it, so answered whole."""
    first, last = spec
    if first is None:  # suffix-range: ``last`` is its length
        assert last is not None
        if last == 0:
            return Unsatisfiable(length)
        if length == 0:
            return None
        return Part(max(length - last, 0), length - 1, length)
    if first >= length:
        return Unsatisfiable(length)
    end = length - 1 if last is None else min(last, length - 1)
    return Part(first, end, length)


def if_range_holds(value: str, served: Headers) -> bool:
    """RFC 9110 §13.1.5: an entity-tag holds if it matches the served ETag by strong
    comparison (a weak tag never does); an HTTP-date holds if it is the served
    Last-Modified and that is a strong validator: for a cache, at least 60 s before the
    response's Date (§8.8.2.2). Anything else does not hold."""
    text = value.strip(_OWS)
    if text.startswith(('"', 'W/"')):
        etag = first_header(served, "ETag")
        return etag is not None and strong_match(text, etag)
    date = parse_http_date(text)
    modified = parse_http_date(first_header(served, "Last-Modified"))
    sent = parse_http_date(first_header(served, "Date"))
    if date is None or modified is None or sent is None:
        return False
    return date == modified and sent - modified >= _STRONG_DATE_GAP


def _number(digits: str) -> int:
    digits = digits.lstrip("0") or "0"
    return int(digits) if len(digits) <= _MAX_DIGITS else _HUGE
