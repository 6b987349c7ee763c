"""proxy.wire.relay: fields relayed as bytes (no event loop)."""

from __future__ import annotations

import pytest

from proxy.wire.relay import (
    FRAMING,
    answer_lines,
    connection_options,
    field_lines,
    lowered,
    request_head,
)

FIELDS = [
    (b"Date", b"Tue, 01 Dec 2026 10:00:00 GMT"),
    (b"Connection", b"keep-alive, X-Hop"),
    (b"X-Hop", b"1"),
    (b"Content-Length", b"5"),
    (b"Set-Cookie", b"a=1"),
    (b"Keep-Alive", b"timeout=3"),
    (b"set-cookie", b"b=2"),
]


def test_connection_options_are_lowered_and_combined():
    fields = [(b"connection", b"Close, X-A"), (b"CONNECTION", b" x-b ,"), (b"X-A", b"1")]
    assert connection_options(fields) == {b"close", b"x-a", b"x-b"}
    assert connection_options([(b"Host", b"a")]) == frozenset()


def test_field_lines_keep_order_case_and_repeats():
    lines = field_lines(FIELDS, lowered(["Keep-Alive", "connection"]))
    assert lines == (
        b"Date: Tue, 01 Dec 2026 10:00:00 GMT\r\nX-Hop: 1\r\nContent-Length: 5\r\n"
        b"Set-Cookie: a=1\r\nset-cookie: b=2\r\n"
    )


def test_a_nul_is_never_relayed():
    assert field_lines([(b"X-A", b"a\0b")], frozenset()) is None
    assert answer_lines([(b"X-A", b"a\0b")], FRAMING) is None


def test_answer_lines_drop_framing_and_what_connection_names():
    block, dated = answer_lines(FIELDS, FRAMING | lowered(["keep-alive"])) or (b"", False)
    assert block == b"Date: Tue, 01 Dec 2026 10:00:00 GMT\r\nSet-Cookie: a=1\r\nset-cookie: b=2\r\n"
    assert dated
    assert answer_lines([(b"X-A", b"1")], FRAMING) == (b"X-A: 1\r\n", False)


def test_request_head():
    head = request_head("GET", "/a?b=1", b"Host: o\r\n")
    assert head == b"GET /a?b=1 HTTP/1.1\r\nHost: o\r\n\r\n"


@pytest.mark.parametrize("target", ["/a b", "/a\r\nX: 1", "/a\n", "/a\0"])
def test_request_head_refuses_a_split_target(target: str):
    with pytest.raises(ValueError, match="request target"):
        request_head("GET", target, b"")
