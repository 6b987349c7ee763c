"""HTTP/1.1 to the one origin: one keep-alive connection, an ``asyncio.Protocol`` on
llhttp (httptools), and the response stream of each exchange, read with flow control
(``proxy/origin/pool.py`` keeps the connections).

It raises only builtin errors (``TimeoutError``, ``OSError`` and its ``ConnectionError``
family); ``proxy/origin/client.py`` maps them. A connection carries one exchange at a time and
goes back to the pool only once its response ended cleanly on the wire; it never retries.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable
from typing import TYPE_CHECKING, Final

import httptools

from proxy.wire.bytequeue import ByteQueue
from proxy.wire.codec import LAST_CHUNK, Body, Interim, encode_chunk

if TYPE_CHECKING:
    from proxy.origin.pool import Pool

HIGH_WATER: Final = 256 * 1024  # body bytes buffered before the origin socket is paused
LOW_WATER: Final = 64 * 1024  # ... and resumed
MAX_HEAD: Final = 256 * 1024  # bytes of one response head
INLINE_BODY: Final = 64 * 1024  # a bytes body this small goes out in one write with the head


class BadResponse(ConnectionError):
    """The origin sent bytes that are not a well-formed HTTP/1.1 response."""


class _HeadEnd(Exception):
    """Raised in the parser's callback: a HEAD response ends with its fields."""


class Stream(ByteQueue):
    """One exchange: the response head once it arrived, then its body as it arrives
    (a byte queue pausing the connection's reading while the consumer lags)."""

    __slots__ = ("_conn", "_headers", "head", "interim", "raw", "status")

    def __init__(
        self, conn: Connection, read_timeout: float, interim: Interim | None = None
    ) -> None:
        super().__init__(conn, HIGH_WATER, LOW_WATER, read_timeout)
        self._conn: Connection | None = conn  # while the body is still on the wire
        # resolved with None when the head arrived, or with the error that ended the exchange
        self.head: asyncio.Future[BaseException | None] = conn.loop.create_future()
        self.status = 0
        self.raw: list[tuple[bytes, bytes]] = []  # the answer's fields as they came
        self._headers: list[tuple[str, str]] | None = None
        self.interim = interim  # where the 1xx answers before the final one go

    @property
    def headers(self) -> list[tuple[str, str]]:
        """The answer's fields as text, decoded when first asked for (a pass-through
        relays ``raw`` and never asks)."""
        if self._headers is None:
            self._headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in self.raw]
        return self._headers

    # ---------------------------------------------------------------- the connection's side

    def end(self) -> None:
        self._conn = None
        self.detach()  # the connection may carry the next exchange now
        super().end()

    def fail(self, exc: BaseException) -> None:
        self._conn = None
        self.detach()
        if not self.head.done():
            self.head.set_result(exc)
        super().fail(exc)

    # ---------------------------------------------------------------- the consumer's side

    def complete_body(self) -> bytes | None:
        """The whole body if it has arrived (nothing left on the wire), else None."""
        return self.take_all()

    def stalled(self) -> None:
        conn = self._conn
        if conn is not None:
            conn.fail(TimeoutError(f"origin sent no body bytes for {self._read_timeout:g}s"))

    def release(self) -> None:
        """Done with this response: a connection whose response was not read to its end
        is closed, never reused (its next bytes would be taken for the next answer)."""
        self.clear()
        conn = self._conn
        if conn is not None and not self.done:
            conn.fail(ConnectionAbortedError("response abandoned before its end"))


class Connection(asyncio.Protocol):
    """One keep-alive connection to the origin, carrying one exchange at a time."""

    def __init__(self, pool: Pool, loop: asyncio.AbstractEventLoop) -> None:
        self.pool = pool
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.counted = False  # holds one of the pool's slots
        self.paused = False
        self.expires = 0.0  # when idle: the loop time it is closed at
        self._keep_for = pool.idle_timeout
        self._parser = httptools.HttpResponseParser(self)
        self._raw: list[tuple[bytes, bytes]] = []
        self._head_size = 0
        self._stream: Stream | None = None  # the exchange in progress
        self._total = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._is_head = False
        self._interim = False
        self._complete = False  # the exchange's message ended during this feed
        self._junk = False  # bytes followed the message
        self._keep_alive = False
        self._close_delimited = False
        self._upload: asyncio.Task[None] | None = None
        self._drained: asyncio.Future[None] | None = None  # set while writing is paused

    # ---------------------------------------------------------------- transport callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)
        if self._stream is not None:
            self.fail(exc or ConnectionResetError("origin closed the connection mid-response"))
        self.pool.forget(self)

    def eof_received(self) -> bool:
        stream = self._stream
        if stream is not None and self._close_delimited and stream.head.done():
            # RFC 9112 §6.3 (8): a body without a length ends when the connection does
            self._stream = None
            self._cancel_timer()
            stream.end()
        return False  # the transport closes; connection_lost follows

    def pause_writing(self) -> None:
        self._drained = self.loop.create_future()

    def resume_writing(self) -> None:
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)
        self._drained = None

    def data_received(self, data: bytes) -> None:
        if self._stream is None:
            self.close()  # bytes nobody asked for: this connection's framing is lost
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._ended(reuse=False)  # a 101: what follows is another protocol
            return
        except httptools.HttpParserError as exc:
            cause = exc.__context__
            if isinstance(cause, _HeadEnd):
                # a HEAD answer is its head: reusable when no byte followed it
                self._parser = httptools.HttpResponseParser(self)
                self._ended(reuse=data.endswith(b"\r\n\r\n"))
            elif isinstance(cause, BadResponse):
                self.fail(cause)
            else:
                self.fail(BadResponse(f"malformed response from the origin: {exc}"))
            return
        if self._complete:
            self._complete = False
            self._ended(reuse=not self._junk)

    # ---------------------------------------------------------------- parser callbacks

    def on_message_begin(self) -> None:
        if self._stream is None:
            self._junk = True  # a second message after the answer

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_size += len(name) + len(value)
        if self._head_size > MAX_HEAD:
            raise BadResponse("response head too large")
        self._raw.append((name, value))

    def on_headers_complete(self) -> None:
        stream = self._stream
        if stream is None:
            raise BadResponse("a response nobody asked for")
        parser = self._parser
        status = parser.get_status_code()
        raw, self._raw, self._head_size = self._raw, [], 0
        if 100 <= status < 200 and status != 101:
            # RFC 9110 §15.2: informational (103 Early Hints, 100 Continue...), relayed
            # to whoever asked; the final answer follows on this connection
            self._interim = True
            if stream.interim is not None:
                stream.interim(status, raw)
            return
        self._keep_alive = parser.should_keep_alive()
        self._framing(raw, status)
        stream.status = status
        stream.raw = raw
        self._cancel_timer()  # the head came in time; body reads have their own timer
        if not stream.head.done():  # cancelled if the caller gave up waiting
            stream.head.set_result(None)
        if self._is_head:
            raise _HeadEnd  # the parser cannot know a HEAD answer has no body

    def _framing(self, raw: list[tuple[bytes, bytes]], status: int) -> None:
        """Whether the body ends with the connection (RFC 9112 §6.3), and the origin's
        ``Keep-Alive: timeout`` (an idle connection is let go a second before)."""
        length = chunked = encoded = False
        for name, value in raw:
            size = len(name)
            if size == 14 and name.lower() == b"content-length":
                length = True
            elif size == 17 and name.lower() == b"transfer-encoding":
                encoded = True
                chunked = value.rsplit(b",", 1)[-1].strip().lower() == b"chunked"
            elif size == 10 and name.lower() == b"keep-alive":
                for param in value.split(b","):
                    key, _, number = param.partition(b"=")
                    if key.strip().lower() == b"timeout" and number.strip().isdigit():
                        self._keep_for = min(self._keep_for, max(int(number) - 1.0, 0.5))
        no_body = self._is_head or status in (101, 204, 304)
        self._close_delimited = not no_body and (
            not (chunked or length) or (encoded and not chunked)
        )

    def on_body(self, chunk: bytes) -> None:
        if self._stream is not None:
            self._stream.feed(chunk)

    def on_message_complete(self) -> None:
        if self._interim:
            self._interim = False
            return
        stream = self._stream
        if stream is None:
            return
        self._stream = None  # any byte from now on is unsolicited
        self._complete = True
        self._keep_alive = self._keep_alive and self._parser.should_keep_alive()
        stream.end()

    # ---------------------------------------------------------------- exchanges

    def send(
        self,
        head: bytes,
        body: Body,
        length: int | None,
        chunked: bool,
        deadline: float,
        total: float,
        is_head: bool,
        interim: Interim | None = None,
    ) -> Stream:
        """Write one request; the returned stream's ``head`` resolves when the answer's
        head arrives, or with the error that ended the exchange (``total`` past)."""
        assert self.transport is not None
        stream = self._stream = Stream(self, total, interim)
        self._is_head = is_head
        self._keep_alive = self._junk = self._complete = self._interim = False
        self._close_delimited = False
        self._raw, self._head_size = [], 0
        self._total = total
        self._timer = self.loop.call_at(deadline, self._head_timed_out)
        if body is None:
            self.transport.write(head)
        elif isinstance(body, bytes):
            if len(body) <= INLINE_BODY:
                self.transport.write(head + body)
            else:
                self.transport.write(head)
                self.transport.write(body)
        else:
            self.transport.write(head)
            self._upload = self.loop.create_task(self._send_body(body, length, chunked))
        return stream

    async def _send_body(
        self, body: AsyncIterable[bytes], length: int | None, chunked: bool
    ) -> None:
        """Stream a request body (chunked when its length is unknown) at the pace the
        origin reads it; an error here ends the exchange."""
        assert self.transport is not None
        sent = 0
        try:
            async for piece in body:
                chunk = piece if length is None else piece[: length - sent]
                if self.closed:
                    return
                if not chunk:
                    continue
                sent += len(chunk)
                self.transport.write(encode_chunk(chunk) if chunked else chunk)
                if self._drained is not None:
                    await self._drained
            if chunked and not self.closed:
                self.transport.write(LAST_CHUNK)
            if length is not None and sent < length:
                raise ConnectionError("request body shorter than its Content-Length")
        except Exception as exc:
            self._upload = None
            self.fail(ConnectionError(f"request body failed: {exc!r}"))
            return
        self._upload = None

    def _ended(self, *, reuse: bool) -> None:
        """The answer was delivered: pool the connection, or close it."""
        stream, self._stream = self._stream, None
        if stream is not None:  # a HEAD or 101 answer: no body
            stream.end()
        self._cancel_timer()
        if reuse and self._keep_alive and self._upload is None and not self.closed:
            if self.paused:
                self.resume_reading()
            self.expires = self.loop.time() + self._keep_for
            self.pool.release(self)
        else:
            self.close()

    def _head_timed_out(self) -> None:
        self._timer = None
        self.fail(TimeoutError(f"origin did not answer within {self._total:g}s"))

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def fail(self, exc: BaseException) -> None:
        """End the exchange with ``exc`` and drop the connection."""
        stream, self._stream = self._stream, None
        if stream is not None:
            stream.fail(exc)
        self.close(abort=True)

    def close(self, *, abort: bool = False) -> None:
        self._cancel_timer()
        if self._upload is not None:
            self._upload.cancel()
            self._upload = None
        self.closed = True
        if self.transport is not None and not self.transport.is_closing():
            if abort:
                self.transport.abort()
            else:
                self.transport.close()

    def pause_reading(self) -> None:
        if not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.paused and self.transport is not None and not self.closed:
            self.paused = False
            self.transport.resume_reading()

    @property
    def usable(self) -> bool:
        transport = self.transport
        return not self.closed and transport is not None and not transport.is_closing()
