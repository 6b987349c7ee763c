"""The flow-controlled byte queue behind request bodies and origin response bodies: what
the reader gets, and when the producer's reading is paused and resumed."""

from __future__ import annotations

import asyncio

import pytest

from proxy.wire.bytequeue import ByteQueue


class Producer:
    """The transport side a queue pauses and resumes: records the calls in order."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def pause_reading(self) -> None:
        self.calls.append("pause")

    def resume_reading(self) -> None:
        self.calls.append("resume")


async def test_chunks_in_order_then_the_end():
    queue = ByteQueue(None, 100, 50)
    for chunk in (b"a", b"", b"bc"):
        queue.feed(chunk)
    queue.end()
    assert [chunk async for chunk in queue] == [b"a", b"bc"]
    assert queue.received == 3


async def test_reading_pauses_above_high_water_and_resumes_at_low_water():
    producer = Producer()
    queue = ByteQueue(producer, 10, 4)
    for size in (5, 3, 2):
        queue.feed(b"x" * size)  # 10 bytes: at high water, not above it
    assert producer.calls == []
    queue.feed(b"x" * 4)  # 14: above, paused once
    queue.feed(b"")
    assert producer.calls == ["pause"]
    await queue.read()  # 9 left
    await queue.read()  # 6 left: still above low water
    assert producer.calls == ["pause"]
    await queue.read()  # 4 left: low water reached
    assert producer.calls == ["pause", "resume"]


async def test_a_detached_producer_is_never_resumed():
    producer = Producer()
    queue = ByteQueue(producer, 2, 0)
    queue.feed(b"xyz")
    queue.detach()  # e.g. the origin connection went back to the pool
    queue.end()
    assert await queue.read() == b"xyz"
    assert producer.calls == ["pause"]


async def test_the_error_comes_after_the_chunks_already_there():
    queue = ByteQueue(None, 100, 50)
    queue.feed(b"kept")
    queue.fail(ConnectionResetError("gone"))
    assert queue.take_all() is None  # not whole: it failed
    assert await queue.read() == b"kept"
    with pytest.raises(ConnectionResetError):
        await queue.read()


async def test_a_waiting_reader_is_woken_by_feed_and_end():
    queue = ByteQueue(None, 100, 50)
    reader = asyncio.ensure_future(queue.read())
    await asyncio.sleep(0)
    queue.feed(b"late")
    assert await reader == b"late"
    ending = asyncio.ensure_future(queue.read())
    await asyncio.sleep(0)
    queue.end()
    assert await ending == b""


async def test_a_read_waiting_past_its_timeout_fails():
    queue = ByteQueue(None, 100, 50, read_timeout=0.01)
    with pytest.raises(TimeoutError, match="no bytes"):
        await asyncio.wait_for(queue.read(), 10)


async def test_take_all_once_ended():
    queue = ByteQueue(None, 100, 50)
    queue.feed(b"a")
    assert queue.take_all() is None  # still arriving
    queue.feed(b"b")
    queue.end()
    assert queue.take_all() == b"ab"
    assert await queue.read() == b""
