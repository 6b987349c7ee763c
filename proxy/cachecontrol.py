"""Cache-Control, Pragma, Vary and HTTP-date parsing (RFC 9111 §5, RFC 9110 §5.6.7).

Pure functions over header strings. Parsing is tolerant as §4 of RFC 9111 asks:
directive names are case-insensitive, values may be quoted, members may be empty,
and an invalid value makes a directive behave as its most conservative reading.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Final

_DELTA_MAX: Final = 2**31  # RFC 9111 §1.2.2: treat larger delta-seconds as 2^31


@dataclass(frozen=True, slots=True)
class CacheControl:
    """Parsed Cache-Control directives (RFC 9111 §5.2), request or response side.

    ``directives`` maps each lowercased directive name to its unquoted value, or to
    ``None`` when it had none. Duplicate directives keep the first occurrence.
    """

    directives: dict[str, str | None]

    def has(self, name: str) -> bool:
        return name in self.directives

    def seconds(self, name: str) -> int | None:
        """A delta-seconds directive (§1.2.2); ``None`` when absent, ``0`` when invalid."""
        if name not in self.directives:
            return None
        return parse_delta(self.directives[name])

    def fields(self, name: str) -> tuple[str, ...] | None:
        """The field-name list of a qualified ``no-cache``/``private`` (§5.2.2.4, §5.2.2.7).

        ``None`` when the directive is absent, ``()`` when it is unqualified.
        """
        if name not in self.directives:
            return None
        value = self.directives[name]
        if not value:
            return ()
        return tuple(f.strip().lower() for f in value.split(",") if f.strip())

    @property
    def is_empty(self) -> bool:
        return not self.directives


EMPTY: Final = CacheControl({})


def parse_delta(value: str | None) -> int:
    """delta-seconds (RFC 9111 §1.2.2): digits only; anything else counts as 0."""
    if value is None:
        return 0
    value = value.strip()
    if not value.isdigit():
        return 0
    return min(int(value), _DELTA_MAX)


def parse_cache_control(values: Iterable[str]) -> CacheControl:
    """Parse every Cache-Control field line (RFC 9111 §5.2) into one ``CacheControl``."""
    directives: dict[str, str | None] = {}
    for line in values:
        for name, value in _members(line):
            directives.setdefault(name, value)
    return CacheControl(directives)


def _members(line: str) -> Iterable[tuple[str, str | None]]:
    """Split one field line on commas that are outside quoted strings."""
    i, n = 0, len(line)
    while i < n:
        # skip separators and empty members
        while i < n and line[i] in " \t,":
            i += 1
        if i >= n:
            break
        start = i
        while i < n and line[i] not in "=,":
            i += 1
        name = line[start:i].strip().lower()
        value: str | None = None
        if i < n and line[i] == "=":
            i += 1
            while i < n and line[i] in " \t":
                i += 1
            if i < n and line[i] == '"':
                i += 1
                chars = []
                while i < n and line[i] != '"':
                    if line[i] == "\\" and i + 1 < n:
                        i += 1
                    chars.append(line[i])
                    i += 1
                i += 1  # closing quote
                value = "".join(chars)
                while i < n and line[i] != ",":
                    i += 1
            else:
                start = i
                while i < n and line[i] != ",":
                    i += 1
                value = line[start:i].strip()
        if name:
            yield name, value


def parse_http_date(value: str | None) -> float | None:
    """An HTTP-date (RFC 9110 §5.6.7) as epoch seconds; ``None`` if absent or invalid."""
    if not value:
        return None
    try:
        parsed = parsedate_to_datetime(value.strip())
    except (TypeError, ValueError, IndexError):
        return None
    if parsed.tzinfo is None:
        # RFC 850 and asctime forms carry no zone: HTTP dates are always GMT.
        from datetime import UTC

        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


def parse_vary(values: Iterable[str]) -> tuple[str, ...]:
    """The lowercased, sorted, de-duplicated field names of Vary (RFC 9110 §12.5.5)."""
    names: set[str] = set()
    for line in values:
        for part in line.split(","):
            part = part.strip().lower()
            if part:
                names.add(part)
    return tuple(sorted(names))


def parse_field_list(values: Iterable[str]) -> tuple[str, ...]:
    """Comma- or space-separated tokens (Surrogate-Key is space-separated, Cache-Tag commas)."""
    out: list[str] = []
    for line in values:
        for part in line.replace(",", " ").split():
            if part not in out:
                out.append(part)
    return tuple(out)


def normalize_accept_encoding(value: str | None) -> str:
    """Reduce Accept-Encoding to what changes our answer: ``gzip`` or ``identity``.

    Varnish does the same (RFC 9110 §12.5.3): variants keyed on raw Accept-Encoding
    multiply with every browser's spelling of the same preference.
    """
    return "gzip" if value is not None and accepts_gzip(value) else "identity"


def accepts_gzip(value: str) -> bool:
    """Whether an Accept-Encoding value admits gzip with a non-zero weight (§12.5.3)."""
    for part in value.lower().split(","):
        coding, _, params = part.partition(";")
        coding = coding.strip()
        if coding not in ("gzip", "x-gzip", "*"):
            continue
        q = 1.0
        for param in params.split(";"):
            key, _, val = param.partition("=")
            if key.strip() == "q":
                try:
                    q = float(val.strip())
                except ValueError:
                    q = 0.0
        if q > 0:
            return True
    return False
