"""proxy/units.py: the duration and size spellings a policy file may use."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.units import format_duration, format_size, parse_duration, parse_size

KiB, MiB, GiB = 1024, 1024**2, 1024**3


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("30s", 30.0),
        ("5m", 300.0),
        ("1h", 3600.0),
        ("1d", 86400.0),
        ("250ms", 0.25),
        ("1500ms", 1.5),
        ("0s", 0.0),
        ("1.5s", 1.5),
        ("0.5m", 30.0),
        ("2.5h", 9000.0),
        ("30", 30.0),
        (" 30s ", 30.0),
        ("30 s", 30.0),
        (30, 30.0),
        (0, 0.0),
        (1.5, 1.5),
        (0.25, 0.25),
    ],
)
def test_parse_duration_accepts(value: object, seconds: float) -> None:
    result = parse_duration(value)
    assert isinstance(result, float)
    assert result == pytest.approx(seconds)


@pytest.mark.parametrize(
    "value",
    [
        "",
        " ",
        "s",
        "ms",
        "30x",
        "1w",
        "30S",
        "30sec",
        "1h30m",
        "1e3",
        "1_000s",
        ".5s",
        "5.s",
        "inf",
        "nan",
        "thirty seconds",
        "30s;",
        "\u0663s",  # ARABIC-INDIC DIGIT THREE: only ASCII digits are numbers here
        None,
        [30],
        {"s": 30},
        b"30s",
    ],
)
def test_parse_duration_rejects_bad_input(value: object) -> None:
    with pytest.raises(ValueError, match=r"duration"):
        parse_duration(value)


@pytest.mark.parametrize("value", [-1, -0.5, "-1", "-5s", "-250ms"])
def test_parse_duration_rejects_negatives(value: object) -> None:
    with pytest.raises(ValueError, match=r"negative|invalid duration"):
        parse_duration(value)


@pytest.mark.parametrize("value", [True, False])
def test_parse_duration_rejects_bools(value: bool) -> None:
    # YAML ``yes``/``true`` are bools, and bool is an int: it must not read as 1 second.
    with pytest.raises(ValueError, match=r"duration"):
        parse_duration(value)


@pytest.mark.parametrize(
    "value",
    [
        math.inf,
        -math.inf,
        math.nan,
        pytest.param(10**400, id="int-beyond-float"),
        pytest.param("9" * 400, id="digits-beyond-float"),
        pytest.param("9" * 400 + "d", id="days-beyond-float"),
    ],
)
def test_parse_duration_rejects_non_finite(value: object) -> None:
    with pytest.raises(ValueError, match=r"duration"):
        parse_duration(value)


@pytest.mark.parametrize(
    ("value", "size"),
    [
        ("512KiB", 512 * KiB),
        ("64MiB", 64 * MiB),
        ("1GiB", GiB),
        ("1TiB", 1024**4),
        ("1GB", 1000**3),
        ("1MB", 1000**2),
        ("1KB", 1000),
        ("1TB", 1000**4),
        ("1kib", KiB),
        ("1mb", 1000**2),
        ("1.5KiB", 1536),
        ("0.5MiB", MiB // 2),
        ("100B", 100),
        ("100", 100),
        (" 64 MiB ", 64 * MiB),
        (0, 0),
        (4096, 4096),
    ],
)
def test_parse_size_accepts(value: object, size: int) -> None:
    result = parse_size(value)
    assert isinstance(result, int)
    assert result == size


@pytest.mark.parametrize(
    "value",
    [
        "",
        "B",
        "MiB",
        "64MB/s",
        "64M",
        "64 mebibytes",
        "1PB",
        "1e6",
        "-1",
        "-1KiB",
        "inf",
        "\u0661\u0662",  # ARABIC-INDIC "12"
        pytest.param("9" * 400, id="digits-beyond-float"),
        pytest.param("9" * 400 + "KiB", id="kib-beyond-float"),
        1.5,
        math.nan,
        None,
        [1024],
        b"1KiB",
    ],
)
def test_parse_size_rejects_bad_input(value: object) -> None:
    with pytest.raises(ValueError, match=r"size"):
        parse_size(value)


def test_parse_size_rejects_negative_int() -> None:
    with pytest.raises(ValueError, match=r"negative"):
        parse_size(-1)


@pytest.mark.parametrize("value", [True, False])
def test_parse_size_rejects_bools(value: bool) -> None:
    with pytest.raises(ValueError, match=r"size"):
        parse_size(value)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.25, "250ms"),
        (0.0, "0s"),
        (1.0, "1s"),
        (30.0, "30s"),
        (90.0, "90s"),
        (300.0, "5m"),
        (3600.0, "1h"),
        (86400.0, "1d"),
        (1.5, "1.5s"),
    ],
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


@pytest.mark.parametrize("seconds", [0.25, 1.0, 30.0, 90.0, 300.0, 3600.0, 86400.0, 172800.0])
def test_format_duration_round_trips(seconds: float) -> None:
    assert parse_duration(format_duration(seconds)) == seconds


@pytest.mark.parametrize(
    ("size", "text"),
    [
        (0, "0B"),
        (1000, "1000B"),
        (KiB, "1KiB"),
        (1536, "1.5KiB"),
        (64 * MiB, "64MiB"),
        (GiB, "1GiB"),
    ],
)
def test_format_size(size: int, text: str) -> None:
    assert format_size(size) == text


@given(st.text())
def test_parse_duration_random_text_raises_only_value_error(text: str) -> None:
    try:
        result = parse_duration(text)
    except ValueError:
        return
    assert math.isfinite(result)
    assert result >= 0


@given(st.text())
def test_parse_size_random_text_raises_only_value_error(text: str) -> None:
    try:
        result = parse_size(text)
    except ValueError:
        return
    assert result >= 0


@given(
    st.from_regex(r"\A[0-9]{1,400}(\.[0-9]{1,20})?\s?(ms|s|m|h|d)?\Z")
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
)
def test_parse_duration_number_like_input_is_finite_or_rejected(value: object) -> None:
    try:
        result = parse_duration(value)
    except ValueError:
        return
    assert math.isfinite(result)
    assert result >= 0


@given(st.from_regex(r"\A[0-9]{1,400}(\.[0-9]{1,20})?\s?([KMGT]i?B|B)?\Z") | st.integers())
def test_parse_size_number_like_input_is_bytes_or_rejected(value: object) -> None:
    try:
        result = parse_size(value)
    except ValueError:
        return
    assert isinstance(result, int)
    assert result >= 0
