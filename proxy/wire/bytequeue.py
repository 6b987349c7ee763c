"""A flow-controlled byte queue: the chunks a protocol's ``data_received`` produces, read
by one coroutine. Above ``high`` buffered bytes the producer's reading is paused, and
resumed once the reader has brought them down to ``low``, so a slow reader never makes
the proxy buffer a whole body. The proxy port's request bodies (``http1``) and the
origin's response bodies (``upstream``) are such queues. No parsing, no policy.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator
from typing import Protocol


class Flow(Protocol):
    """The producer's side of a transport: what the queue pauses and resumes."""

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...


class ByteQueue:
    """Chunks in arrival order, then a clean end (``end``) or an error (``fail``); the
    reader gets the chunks first, then ``b""`` or the error."""

    __slots__ = (
        "_buffered",
        "_chunks",
        "_flow",
        "_high",
        "_low",
        "_paused",
        "_read_timeout",
        "_waiter",
        "done",
        "error",
        "received",
    )

    def __init__(
        self, flow: Flow | None, high: int, low: int, read_timeout: float | None = None
    ) -> None:
        self._flow = flow
        self._high = high
        self._low = low
        self._read_timeout = read_timeout  # a read waiting longer calls ``stalled``
        self._chunks: collections.deque[bytes] = collections.deque()
        self._buffered = 0
        self._paused = False  # the producer's reading paused by this queue
        self._waiter: asyncio.Future[None] | None = None
        self.done = False  # ended cleanly: nothing more will come
        self.error: BaseException | None = None
        self.received = 0  # bytes fed in all

    # ---------------------------------------------------------------- the producer's side

    def feed(self, chunk: bytes) -> None:
        if not chunk:
            return  # b"" is what the reader gets at the end
        self._chunks.append(chunk)
        self._buffered += len(chunk)
        self.received += len(chunk)
        if self._buffered > self._high and not self._paused and self._flow is not None:
            self._paused = True
            self._flow.pause_reading()  # the reader lags: let the socket fill
        self._wake()

    def end(self) -> None:
        self.done = True
        self._wake()

    def fail(self, exc: BaseException) -> None:
        self.error = exc
        self._wake()

    def detach(self) -> None:
        """The producer no longer feeds this queue (it serves another): never resume it."""
        self._flow = None

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # ---------------------------------------------------------------- the reader's side

    def take_all(self) -> bytes | None:
        """Everything, if it has all arrived (the queue ended cleanly), else None."""
        if not self.done or self.error is not None:
            return None
        data = b"".join(self._chunks)
        self.clear()
        return data

    def clear(self) -> None:
        self._chunks.clear()
        self._buffered = 0

    async def read(self) -> bytes:
        """The next chunk; ``b""`` at the end."""
        while True:
            if self._chunks:
                chunk = self._chunks.popleft()
                self._buffered -= len(chunk)
                if self._paused and self._buffered <= self._low:
                    self._paused = False
                    if self._flow is not None:
                        self._flow.resume_reading()
                return chunk
            if self.error is not None:
                raise self.error
            if self.done:
                return b""
            loop = asyncio.get_running_loop()
            self._waiter = loop.create_future()
            timeout = self._read_timeout
            timer = None if timeout is None else loop.call_later(timeout, self.stalled)
            try:
                await self._waiter
            finally:
                if timer is not None:
                    timer.cancel()
                self._waiter = None

    def stalled(self) -> None:
        """A read waited ``read_timeout`` for a chunk: it fails."""
        self.fail(TimeoutError(f"no bytes for {self._read_timeout:g}s"))

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while chunk := await self.read():
            yield chunk
