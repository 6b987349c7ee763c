"""``PurgeRequest``: the ``soft`` flag as ``POST /purge`` and the messages carry it."""

from __future__ import annotations

import orjson
import pytest

from proxy.ops.purgerequest import PurgeRequest


@pytest.mark.parametrize(
    ("body", "soft"),
    [
        (b'{"tags": ["a"]}', False),
        (b'{"tags": ["a"], "soft": false}', False),
        (b'{"tags": ["a"], "soft": true}', True),
    ],
)
def test_soft_is_read_from_the_body(body: bytes, soft: bool) -> None:
    assert PurgeRequest.decode(body).soft is soft


@pytest.mark.parametrize("value", ['"yes"', "1", "null", "[]"])
def test_soft_must_be_a_boolean(value: str) -> None:
    with pytest.raises(ValueError, match="soft: expected true or false"):
        PurgeRequest.decode(b'{"tags": ["a"], "soft": %s}' % value.encode())


def test_a_soft_purge_stays_soft_in_every_message() -> None:
    request = PurgeRequest(tags=tuple(f"tag-{i}" for i in range(2000)), soft=True, source="r")
    chunks = request.chunks(limit=4096)
    assert len(chunks) > 1
    parsed = [PurgeRequest.parse(orjson.loads(chunk)) for chunk in chunks]
    assert {p.soft for p in parsed} == {True}
    assert sum(len(p.tags) for p in parsed) == 2000
    assert orjson.loads(PurgeRequest(tags=("a",)).to_json()) == {"tags": ["a"]}  # no "soft"
