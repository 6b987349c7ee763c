"""The wire pieces the server and the origin client share, table-driven, no event loop."""

from __future__ import annotations

import pytest

from proxy.wire.codec import (
    LAST_CHUNK,
    content_length,
    encode_chunk,
    encode_head,
    find_length,
    interim_head,
    is_clean,
    serialize_fields,
    status_line,
)


@pytest.mark.parametrize(
    ("value", "length"),
    [
        ("0", 0),
        ("1024", 1024),
        (" 12 ", 12),
        ("007", 7),
        (None, None),
        ("", None),
        ("-1", None),
        ("+5", None),
        ("1,1", None),
        ("1 2", None),
        ("0x10", None),
        ("²", None),  # a digit to str.isdigit, not to RFC 9110 §8.6 (int() raises on it)
        ("١٢", None),  # Arabic-Indic digits: int() would take them
    ],
)
def test_content_length(value: str | None, length: int | None):
    assert content_length(value) == length


def test_find_length_takes_the_first_valid_field_in_any_case():
    assert find_length([("X", "1"), ("content-LENGTH", "bad"), ("Content-Length", "9")]) == 9
    assert find_length([("Content-Type", "text/plain")]) is None


@pytest.mark.parametrize(
    ("method", "headers", "body", "head", "length", "chunked"),
    [
        ("GET", [("Host", "o")], None, b"GET / HTTP/1.1\r\nHost: o\r\n\r\n", None, False),
        ("POST", [], None, b"POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\n", None, False),
        (  # a declared empty body is not announced twice
            "POST",
            [("Content-Length", "0")],
            None,
            b"POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
            None,
            False,
        ),
        ("PUT", [], b"abc", b"PUT / HTTP/1.1\r\nContent-Length: 3\r\n\r\n", 3, False),
        (
            "PUT",
            [("Content-Length", "3")],
            b"abc",
            b"PUT / HTTP/1.1\r\nContent-Length: 3\r\n\r\n",
            3,
            False,
        ),
    ],
)
def test_encode_head(method, headers, body, head, length, chunked):
    assert encode_head(method, "/", headers, body) == (head, length, chunked)


async def _pieces():
    yield b"x"


@pytest.mark.parametrize(
    ("headers", "head", "length", "chunked"),
    [
        ([], b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", None, True),
        (  # the client's own chunked framing is kept, never doubled
            [("Transfer-Encoding", "chunked")],
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            None,
            True,
        ),
        ([("Content-Length", "9")], b"POST / HTTP/1.1\r\nContent-Length: 9\r\n\r\n", 9, False),
    ],
)
def test_a_streamed_body_goes_with_its_length_or_chunked(headers, head, length, chunked):
    assert encode_head("POST", "/", headers, _pieces()) == (head, length, chunked)


def test_a_declared_length_must_match_a_whole_body():
    with pytest.raises(ValueError, match="disagrees"):
        encode_head("PUT", "/", [("Content-Length", "5")], b"abc")


@pytest.mark.parametrize(
    ("target", "headers", "message"),
    [
        ("/", [("X", "a\r\nInjected: 1")], "CR, LF"),
        ("/", [("X", "a\nb")], "CR, LF"),
        ("/", [("X", "a\0")], "CR, LF"),
        ("/", [("X", "€")], "CR, LF"),
        ("/a\r\nGET /b", [], "CR, LF"),
        ("/a b", [], "space"),
        ("/", [("Content-Length", "²")], "bad Content-Length"),
    ],
)
def test_encode_head_refuses_a_split_head(target, headers, message):
    with pytest.raises(ValueError, match=message):
        encode_head("PUT", target, headers, None)


def test_serialize_fields_and_is_clean_share_one_rule():
    fields = [("A", "1"), ("Content-Length", "5"), ("Date", "x"), ("Connection", "close")]
    assert serialize_fields(fields) == (b"A: 1\r\nDate: x\r\n", True)
    for unsafe in ("a\rb", "a\nb", "a\0b", "€"):
        assert serialize_fields([("A", unsafe)]) == (None, False)
        assert not is_clean("A", unsafe)
    assert is_clean("A", "café")


def test_chunks_and_status_lines():
    assert encode_chunk(b"hello world") == b"b\r\nhello world\r\n"
    assert LAST_CHUNK == b"0\r\n\r\n"
    assert status_line(103) == b"HTTP/1.1 103 Early Hints\r\n"
    assert status_line(299) == b"HTTP/1.1 299 Unknown\r\n"


def test_interim_head_drops_hop_by_hop_fields():
    fields = [(b"Link", b"</a.css>; rel=preload"), (b"Connection", b"x"), (b"X-Hint", b"1")]
    assert interim_head(103, fields, {"connection"}) == (
        b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\nX-Hint: 1\r\n\r\n"
    )
