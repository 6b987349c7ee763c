"""Parsing of the human units used in policy files: durations and byte sizes.

Pure functions; they raise ``ValueError`` with a message fit for a policy error.
"""

from __future__ import annotations

import math
import re
from typing import Final

# re.ASCII: \d must not admit other scripts' digits, which float() would then accept.
_DURATION: Final = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$", re.ASCII)
_DURATION_FACTORS: Final = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}

_SIZE: Final = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B|B)?\s*$", re.IGNORECASE | re.ASCII)
_SIZE_FACTORS: Final = {
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}


def parse_duration(value: object) -> float:
    """Seconds from ``30s``, ``5m``, ``1h``, ``1d``, ``250ms`` or an integer of seconds."""
    if isinstance(value, bool):
        raise ValueError(f"expected a duration like 30s, 5m, 1h, not {value!r}")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError("a duration cannot be negative")
        return _finite(value, "duration")
    if not isinstance(value, str):
        raise ValueError(f"expected a duration like 30s, 5m, 1h, not {value!r}")
    found = _DURATION.match(value)
    if found is None:
        raise ValueError(f"invalid duration {value!r}: use 250ms, 30s, 5m, 1h, 1d or seconds")
    number, unit = found.groups()
    return _finite(float(number) * _DURATION_FACTORS[unit or "s"], "duration")


def parse_size(value: object) -> int:
    """Bytes from ``512KiB``, ``64MiB``, ``1GB`` or an integer of bytes."""
    if isinstance(value, bool):
        raise ValueError(f"expected a size like 64MiB, not {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("a size cannot be negative")
        return value
    if not isinstance(value, str):
        raise ValueError(f"expected a size like 512KiB, 64MiB or 1GB, not {value!r}")
    found = _SIZE.match(value)
    if found is None:
        raise ValueError(f"invalid size {value!r}: use 512KiB, 64MiB, 1GB or bytes")
    number, unit = found.groups()
    return int(_finite(float(number) * _SIZE_FACTORS[(unit or "b").lower()], "size"))


def _finite(number: float, what: str) -> float:
    # NaN passes a ``< 0`` check, and huge digit strings overflow to inf (or, as ints,
    # raise OverflowError in float()): neither is a usable TTL or bound.
    try:
        result = float(number)
    except OverflowError:
        result = math.inf
    if not math.isfinite(result):
        raise ValueError(f"a {what} must be a finite number, not {number!r:.40}")
    return result


def format_duration(seconds: float) -> str:
    """The shortest exact spelling of a duration, for summaries."""
    if seconds and seconds < 1:
        return f"{round(seconds * 1000)}ms"
    for unit, factor in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= factor and seconds % factor == 0:
            return f"{int(seconds // factor)}{unit}"
    return f"{seconds:g}s"


def format_size(size: int) -> str:
    """A binary-unit spelling of a byte count, for summaries."""
    for unit, factor in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if size >= factor:
            return f"{size / factor:.4g}{unit}"
    return f"{size}B"
