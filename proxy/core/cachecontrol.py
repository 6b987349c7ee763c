"""Parsing and formatting of the fields caching depends on: Cache-Control (RFC 9111 §5.2),
CDN-Cache-Control (RFC 9213), Age (§5.1), HTTP-dates (RFC 9110 §5.6.7), entity tags
(§8.8.3), Vary and Accept-Encoding (§12.5.3, §12.5.5) and Cache-Status (RFC 9211).

Pure functions over header strings; no I/O, no clock. Cache-Control parsing is
tolerant where RFC 9111 asks for it (case, quoting, empty members) and conservative
where a value is malformed: an invalid delta-seconds counts as 0, an invalid date as
"in the past".
"""

from __future__ import annotations

import calendar
import re
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from email.utils import formatdate
from typing import Final

DELTA_MAX: Final = 2**31  # RFC 9111 §1.2.2: larger delta-seconds are read as 2^31
_DIGITS: Final = re.compile(r"[0-9]+")
# A marker for a directive whose argument is malformed (e.g. ``max-age =5``): present,
# but with a value no parser accepts, so it reads as its most conservative meaning.
_MALFORMED: Final = "\x00"


@dataclass(frozen=True, slots=True)
class CacheControl:
    """Parsed cache directives (RFC 9111 §5.2), request or response side.

    ``directives`` maps each lowercased directive name to its unquoted argument, or to
    ``None`` when it had none. Duplicates keep the first occurrence (§4.2.1).
    """

    directives: dict[str, str | None]

    def has(self, name: str) -> bool:
        return name in self.directives

    def seconds(self, name: str) -> int | None:
        """A delta-seconds argument (§1.2.2): ``None`` when absent, ``0`` when invalid."""
        if name not in self.directives:
            return None
        return parse_delta(self.directives[name])

    def fields(self, name: str) -> tuple[str, ...] | None:
        """The field names of a qualified ``no-cache``/``private`` (§5.2.2.4, §5.2.2.7).

        ``None`` when the directive is absent, ``()`` when it is unqualified.
        """
        if name not in self.directives:
            return None
        value = self.directives[name]
        if not value or value == _MALFORMED:
            return ()
        return tuple(f.strip().lower() for f in value.split(",") if f.strip())

    @property
    def is_empty(self) -> bool:
        return not self.directives


EMPTY: Final = CacheControl({})


def parse_delta(value: str | None) -> int:
    """delta-seconds (RFC 9111 §1.2.2): ASCII digits only, capped at 2^31; anything else
    (absent, signed, decimal, padded) counts as 0, i.e. already stale (§4.2.1)."""
    if value is None or not _DIGITS.fullmatch(value):
        return 0
    return min(int(value), DELTA_MAX)


def parse_cache_control(values: Iterable[str]) -> CacheControl:
    """Every Cache-Control field line (RFC 9111 §5.2) as one ``CacheControl``.

    Names are case-insensitive; an argument may be a token or a quoted-string (both
    accepted for every directive, §5.2); commas inside quotes do not split members;
    empty members are skipped. Whitespace around ``=`` is not allowed by the grammar,
    so such an argument is malformed and reads as invalid (``max-age =5`` is stale).
    """
    directives: dict[str, str | None] = {}
    for line in values:
        for name, value in _members(line):
            directives.setdefault(name, value)
    return CacheControl(directives)


def _members(line: str) -> Iterator[tuple[str, str | None]]:
    i, n = 0, len(line)
    while i < n:
        while i < n and line[i] in " \t,":
            i += 1
        if i >= n:
            break
        start = i
        while i < n and line[i] not in "=,":
            i += 1
        raw_name = line[start:i]
        name = raw_name.strip().lower()
        value: str | None = None
        if i < n and line[i] == "=":
            i += 1
            if i < n and line[i] == '"':
                value, i = _quoted(line, i)
                while i < n and line[i] != ",":
                    i += 1
            else:
                start = i
                while i < n and line[i] != ",":
                    i += 1
                value = line[start:i].rstrip(" \t")
                if value[:1] in (" ", "\t"):
                    value = _MALFORMED
            if raw_name != raw_name.rstrip(" \t"):
                value = _MALFORMED
        if name:
            yield name, value


def _quoted(line: str, i: int) -> tuple[str, int]:
    """A quoted-string starting at ``line[i] == '"'``: its unescaped text and the index
    after the closing quote (RFC 9110 §5.6.4)."""
    chars: list[str] = []
    i += 1
    while i < len(line) and line[i] != '"':
        if line[i] == "\\" and i + 1 < len(line):
            i += 1
        chars.append(line[i])
        i += 1
    return "".join(chars), i + 1


# ---------------------------------------------------------------- CDN-Cache-Control


# Directives whose argument must be an sf-integer in a targeted field (RFC 9213 §2.1).
_TARGETED_INTEGERS: Final = frozenset(
    {"max-age", "s-maxage", "stale-while-revalidate", "stale-if-error"}
)
_TARGETED_FLAGS: Final = frozenset(
    {"no-store", "must-revalidate", "proxy-revalidate", "public", "must-understand", "immutable"}
)
_SF_KEY: Final = re.compile(r"[a-z*][a-z0-9_\-.*]*")
_SF_TOKEN: Final = re.compile(r"[A-Za-z*][!#$%&'*+\-.^_`|~0-9A-Za-z:/]*")
_SF_NUMBER: Final = re.compile(r"-?[0-9]{1,15}(\.[0-9]{1,3})?")
_SF_BYTES: Final = re.compile(r":[A-Za-z0-9+/=]*:")


class _SFError(ValueError):
    pass


def parse_targeted(values: Iterable[str]) -> CacheControl | None:
    """A targeted cache-control field such as CDN-Cache-Control (RFC 9213 §2.1): an
    RFC 8941 Dictionary whose members are cache directives.

    ``None`` when the field is absent, empty or invalid (not a Dictionary, or a known
    directive with an argument of the wrong type): the cache then ignores it and falls
    back to Cache-Control (§2.1). ``?0`` turns a directive off.
    """
    lines = [v for v in values if v.strip()]
    if not lines:
        return None
    try:
        members = _sf_dictionary(", ".join(lines))
    except _SFError:
        return None
    directives: dict[str, str | None] = {}
    for name, value in members.items():
        if name in _TARGETED_INTEGERS:
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                return None
            directives[name] = str(value)
        elif name in _TARGETED_FLAGS and not isinstance(value, bool):
            return None
        elif value is False:
            continue
        elif value is True:
            directives[name] = None
        else:
            directives[name] = str(value)
    return CacheControl(directives) if directives else None


def _sf_dictionary(text: str) -> dict[str, object]:
    """RFC 8941 §4.2.2 (members' parameters are parsed and dropped; last key wins)."""
    out: dict[str, object] = {}
    i = _skip(text, 0, " ")
    n = len(text)
    while True:  # an empty field is no Dictionary either: parse_targeted never asks
        found = _SF_KEY.match(text, i)
        if found is None:
            raise _SFError("bad key")
        key, i = found.group(), found.end()
        value: object = True
        if i < n and text[i] == "=":
            value, i = _sf_member(text, i + 1)
        else:
            i = _sf_parameters(text, i)
        out[key] = value
        i = _skip(text, i, " \t")
        if i >= n:
            return out
        if text[i] != ",":
            raise _SFError("expected a comma")
        i = _skip(text, i + 1, " \t")
        if i >= n:
            raise _SFError("trailing comma")


def _skip(text: str, i: int, chars: str) -> int:
    while i < len(text) and text[i] in chars:
        i += 1
    return i


def _sf_member(text: str, i: int) -> tuple[object, int]:
    if i < len(text) and text[i] == "(":  # inner list: kept as a marker string
        i += 1
        while True:
            i = _skip(text, i, " ")
            if i < len(text) and text[i] == ")":
                return "(list)", _sf_parameters(text, i + 1)
            _, i = _sf_bare_item(text, i)
            i = _sf_parameters(text, i)
            if i >= len(text) or text[i] not in " )":
                raise _SFError("bad inner list")
    value, i = _sf_bare_item(text, i)
    return value, _sf_parameters(text, i)


def _sf_parameters(text: str, i: int) -> int:
    while i < len(text) and text[i] == ";":
        i = _skip(text, i + 1, " ")
        found = _SF_KEY.match(text, i)
        if found is None:
            raise _SFError("bad parameter key")
        i = found.end()
        if i < len(text) and text[i] == "=":
            _, i = _sf_bare_item(text, i + 1)
    return i


def _sf_bare_item(text: str, i: int) -> tuple[object, int]:
    if i >= len(text):
        raise _SFError("missing value")
    char = text[i]
    if char == '"':
        end = i + 1
        while end < len(text) and text[end] != '"':
            if text[end] == "\\":
                end += 1
            elif not " " <= text[end] <= "~":
                raise _SFError("bad string")
            end += 1
        if end >= len(text):
            raise _SFError("unterminated string")
        value, after = _quoted(text, i)
        return value, after
    if char == "?":
        if text[i + 1 : i + 2] not in ("0", "1"):
            raise _SFError("bad boolean")
        return text[i + 1] == "1", i + 2
    for pattern in (_SF_NUMBER, _SF_TOKEN, _SF_BYTES):
        found = pattern.match(text, i)
        if found is not None:
            raw = found.group()
            if pattern is _SF_NUMBER:
                return (float(raw) if "." in raw else int(raw)), found.end()
            return raw, found.end()
    raise _SFError("bad item")


# ---------------------------------------------------------------- Age and dates


def parse_age(values: Iterable[str]) -> int | None:
    """The Age field (RFC 9111 §5.1): the first member of the (possibly repeated or
    list-valued) field, when it is a non-negative integer; ``None`` otherwise, in which
    case the field is ignored."""
    for line in values:
        first = line.split(",", 1)[0].strip()
        return min(int(first), DELTA_MAX) if _DIGITS.fullmatch(first) else None
    return None


_DAYS: Final = "mon|tue|wed|thu|fri|sat|sun"
_LONG_DAYS: Final = "monday|tuesday|wednesday|thursday|friday|saturday|sunday"
_MONTH: Final = "jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec"
_MONTHS: Final = _MONTH.split("|")
_TIME: Final = r"([0-9]{2}):([0-9]{2}):([0-9]{2})"
_IMF_FIXDATE: Final = re.compile(
    rf"(?:{_DAYS}), ([0-9]{{2}}) ({_MONTH}) ([0-9]{{4}}) {_TIME} gmt", re.IGNORECASE
)
_RFC850: Final = re.compile(
    rf"(?:{_LONG_DAYS}), ([0-9]{{2}})-({_MONTH})-([0-9]{{2}}) {_TIME} gmt", re.IGNORECASE
)
_ASCTIME: Final = re.compile(
    rf"(?:{_DAYS}) ({_MONTH}) ([0-9]{{2}}| [0-9]) {_TIME} ([0-9]{{4}})", re.IGNORECASE
)


def parse_http_date(value: str | None, now: float | None = None) -> float | None:
    """An HTTP-date (RFC 9110 §5.6.7) as epoch seconds; ``None`` if absent or invalid.

    Accepts IMF-fixdate and the obsolete RFC 850 and asctime forms, with names in any
    case; nothing else (no numeric zones, no "UTC", no missing comma, no one-digit
    hour). A two-digit RFC 850 year more than 50 years after ``now`` is in the
    previous century.
    """
    if not value:
        return None
    text = value.strip(" \t")
    if found := _IMF_FIXDATE.fullmatch(text):
        day, month, year, hh, mm, ss = found.groups()
    elif found := _RFC850.fullmatch(text):
        day, month, yy, hh, mm, ss = found.groups()
        year = str(_full_year(int(yy), now))
    elif found := _ASCTIME.fullmatch(text):
        month, day, hh, mm, ss, year = found.groups()
    else:
        return None
    fields = (int(year), _MONTHS.index(month.lower()) + 1, int(day), int(hh), int(mm))
    if not (1 <= fields[2] <= calendar.monthrange(fields[0], fields[1])[1]):
        return None
    if fields[3] > 23 or fields[4] > 59 or int(ss) > 60:
        return None
    return float(calendar.timegm((*fields, min(int(ss), 59))))


def _full_year(yy: int, now: float | None) -> int:
    this_year = time.gmtime(now).tm_year if now is not None else 2000
    year = this_year - this_year % 100 + yy
    return year - 100 if year > this_year + 50 else year


def format_http_date(epoch: float) -> str:
    """IMF-fixdate (RFC 9110 §5.6.7), as a cache adds ``Date`` to a response without one."""
    return formatdate(epoch, usegmt=True)


# ---------------------------------------------------------------- entity tags


def parse_entity_tags(value: str) -> list[str]:
    """The members of If-None-Match / If-Match (RFC 9110 §13.1.1): entity tags or ``*``,
    split on commas outside quotes."""
    tags: list[str] = []
    current: list[str] = []
    quoted = False
    for char in value:
        if char == '"':
            quoted = not quoted
        if char == "," and not quoted:
            tags.append("".join(current).strip())
            current = []
        else:
            current.append(char)
    tags.append("".join(current).strip())
    return [t for t in tags if t]


def weak_match(a: str, b: str) -> bool:
    """Weak comparison (RFC 9110 §8.8.3.2): opaque tags equal, weakness ignored."""
    return a.strip().removeprefix("W/") == b.strip().removeprefix("W/")


def strong_match(a: str, b: str) -> bool:
    """Strong comparison (RFC 9110 §8.8.3.2): both strong and identical."""
    a, b = a.strip(), b.strip()
    return not a.startswith("W/") and a == b


# ---------------------------------------------------------------- Vary


def parse_vary(values: Iterable[str]) -> tuple[str, ...]:
    """The lowercased, sorted, de-duplicated field names of Vary (RFC 9110 §12.5.5);
    ``("*",)`` is among them when any member is ``*``."""
    names: set[str] = set()
    for line in values:
        for part in line.split(","):
            part = part.strip().lower()
            if part:
                names.add(part)
    return tuple(sorted(names))


ABSENT: Final = "\x00absent"  # a selecting field missing from the request (§4.1)


def normalize_field_value(name: str, value: str | None) -> str:
    """A request field value as Vary compares it (RFC 9111 §4.1): whitespace around list
    members removed, repeated lines already combined by the caller, Accept-Encoding
    reduced to the set of acceptable codings. An absent field only matches absence."""
    if value is None:
        return ABSENT
    if name == "accept-encoding":
        return normalize_accept_encoding(value)
    members = (" ".join(member.split()) for member in value.split(","))
    return ", ".join(m for m in members if m)


def parse_field_list(values: Iterable[str]) -> tuple[str, ...]:
    """Comma- or space-separated tokens (Surrogate-Key is space-separated, Cache-Tag commas)."""
    out: list[str] = []
    for line in values:
        for part in line.replace(",", " ").split():
            if part not in out:
                out.append(part)
    return tuple(out)


def _codings(value: str) -> Iterator[tuple[str, float]]:
    """(coding, weight) pairs of an Accept-Encoding value (RFC 9110 §12.5.3)."""
    for part in value.lower().split(","):
        coding, _, params = part.partition(";")
        coding = coding.strip()
        if not coding:
            continue
        q = 1.0
        for param in params.split(";"):
            key, _, val = param.partition("=")
            if key.strip() == "q":
                try:
                    q = float(val.strip())
                except ValueError:
                    q = 0.0
        yield ("gzip" if coding == "x-gzip" else coding), q


def normalize_accept_encoding(value: str | None) -> str:
    """Accept-Encoding as a Vary key (RFC 9110 §12.5.3): the sorted set of codings the
    client accepts. Order, weights and spelling drop out, so browsers that accept the
    same codings share a variant, yet a response in any coding the origin may pick is
    only reused for clients that accept it."""
    if value is None:
        return ABSENT
    accepted = {coding for coding, q in _codings(value) if q > 0}
    return ",".join(sorted(accepted))


def accepts_gzip(value: str) -> bool:
    """Whether an Accept-Encoding value admits gzip with a non-zero weight (§12.5.3)."""
    return any(coding in ("gzip", "*") and q > 0 for coding, q in _codings(value))


# ---------------------------------------------------------------- Cache-Status

CACHE_NAME: Final = "sidecache"


def format_cache_status(
    *,
    hit: bool = False,
    fwd: str | None = None,
    fwd_status: int | None = None,
    stored: bool = False,
    collapsed: bool = False,
    ttl: float | None = None,
    detail: str | None = None,
) -> str:
    """One Cache-Status member (RFC 9211 §2) for this cache: ``hit`` or ``fwd`` (never
    both), then ``fwd-status``, ``stored``, ``collapsed`` (meaningful only with ``fwd``),
    ``ttl`` (an integer; negative once stale) and ``detail`` (a token, else a string)."""
    params = [CACHE_NAME]
    if hit:
        params.append("hit")
    elif fwd:
        params.append(f"fwd={fwd}")
        if fwd_status is not None:
            params.append(f"fwd-status={fwd_status}")
        if stored:
            params.append("stored")
        if collapsed:
            params.append("collapsed")
    if ttl is not None:
        params.append(f"ttl={int(ttl // 1)}")
    if detail:
        token = _SF_TOKEN.fullmatch(detail) is not None
        params.append(f"detail={detail}" if token else f'detail="{_escape(detail)}"')
    return "; ".join(params)


def _escape(text: str) -> str:
    printable = "".join(c if " " <= c <= "~" else "?" for c in text)
    return printable.replace("\\", "\\\\").replace('"', '\\"')
