"""HTTP/1.1 to the one origin: a keep-alive pool of ``asyncio.Protocol`` connections on
llhttp (httptools), and the response stream of each exchange, read with flow control.

It raises only builtin errors (``TimeoutError``, ``OSError`` and its ``ConnectionError``
family); ``proxy/origin.py`` maps them. A connection carries one exchange at a time and
goes back to the pool only once its response ended cleanly on the wire; it never retries.
"""

from __future__ import annotations

import asyncio
import collections
import ssl
from collections.abc import AsyncIterable, Sequence
from typing import Final

import httptools

from proxy.wire import Interim

HIGH_WATER: Final = 256 * 1024  # body bytes buffered before the origin socket is paused
LOW_WATER: Final = 64 * 1024  # ... and resumed
MAX_HEAD: Final = 256 * 1024  # bytes of one response head
IDLE_TIMEOUT: Final = 30.0  # an idle pooled connection is closed after this
SWEEP_EVERY: Final = 1.0
INLINE_BODY: Final = 64 * 1024  # a bytes body this small goes out in one write with the head
# RFC 9110 §8.6: methods whose requests carry no content unless given; others announce
# ``Content-Length: 0`` (as aiohttp did)
_BODYLESS: Final = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
Body = bytes | AsyncIterable[bytes] | None


class BadResponse(ConnectionError):
    """The origin sent bytes that are not a well-formed HTTP/1.1 response."""


class _HeadEnd(Exception):
    """Raised in the parser's callback: a HEAD response ends with its fields."""


def encode_head(
    method: str, target: str, headers: Sequence[tuple[str, str]], body: Body
) -> tuple[bytes, int | None, bool]:
    """The request head, the body's declared length and whether it goes chunked (RFC 9112
    §6). Refuses (``ValueError``) a CR, LF or NUL in a field or the target: a split head."""
    lines = [f"{method} {target} HTTP/1.1"]
    lines += [f"{name}: {value}" for name, value in headers]
    length: int | None = None
    chunked = False
    if body is not None or method not in _BODYLESS:
        declared, encoded = None, False
        for name, value in headers:
            lowered = name.lower()
            if lowered == "content-length":
                declared = int(value) if value.strip().isdigit() else -1
            elif lowered == "transfer-encoding":
                encoded = True
        if declared is not None and declared < 0:
            raise ValueError("bad Content-Length in the request")
        if isinstance(body, bytes):
            if declared is not None and declared != len(body):
                raise ValueError("Content-Length disagrees with the request body")
            length = len(body)
            if declared is None:
                lines.append(f"Content-Length: {length}")
        elif body is not None:
            length = declared
            chunked = declared is None
            if chunked and not encoded:
                lines.append("Transfer-Encoding: chunked")
        elif declared is None and not encoded:
            lines.append("Content-Length: 0")
    data = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    breaks = len(lines) + 1
    if data.count(b"\n") != breaks or data.count(b"\r") != breaks or b"\0" in data:
        raise ValueError("CR, LF or NUL in the request target or a field")
    if " " in target:
        raise ValueError("space in the request target")
    return data, length, chunked


class Stream:
    """One exchange: the response head once it arrived, then its body as it arrives."""

    __slots__ = (
        "_buffered",
        "_chunks",
        "_conn",
        "_error",
        "_read_timeout",
        "_waiter",
        "done",
        "head",
        "headers",
        "interim",
        "status",
    )

    def __init__(
        self, conn: Connection, read_timeout: float, interim: Interim | None = None
    ) -> None:
        self._conn: Connection | None = conn  # while the body is still on the wire
        # resolved with None when the head arrived, or with the error that ended the exchange
        self.head: asyncio.Future[BaseException | None] = conn.loop.create_future()
        self.status = 0
        self.headers: list[tuple[str, str]] = []
        self.done = False
        self._chunks: collections.deque[bytes] = collections.deque()
        self._buffered = 0
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._read_timeout = read_timeout
        self.interim = interim  # where the 1xx answers before the final one go

    # ---------------------------------------------------------------- the connection's side

    def feed(self, chunk: bytes) -> None:
        self._chunks.append(chunk)
        self._buffered += len(chunk)
        if self._buffered > HIGH_WATER and self._conn is not None:
            self._conn.pause_reading()  # the consumer lags: let the origin's socket fill
        self._wake()

    def end(self) -> None:
        self._conn = None
        self.done = True
        self._wake()

    def fail(self, exc: BaseException) -> None:
        self._conn = None
        self._error = exc
        if not self.head.done():
            self.head.set_result(exc)
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # ---------------------------------------------------------------- the consumer's side

    def complete_body(self) -> bytes | None:
        """The whole body if it has arrived (nothing left on the wire), else None."""
        if not self.done or self._error is not None:
            return None
        body = b"".join(self._chunks)
        self._chunks.clear()
        self._buffered = 0
        return body

    async def read(self) -> bytes:
        """The next piece of the body; ``b""`` at its end."""
        while True:
            if self._chunks:
                chunk = self._chunks.popleft()
                self._buffered -= len(chunk)
                conn = self._conn
                if conn is not None and conn.paused and self._buffered <= LOW_WATER:
                    conn.resume_reading()
                return chunk
            if self._error is not None:
                raise self._error
            if self.done:
                return b""
            loop = asyncio.get_running_loop()
            self._waiter = loop.create_future()
            timer = loop.call_later(self._read_timeout, self._timed_out)
            try:
                await self._waiter
            finally:
                timer.cancel()
                self._waiter = None

    def _timed_out(self) -> None:
        conn = self._conn
        if conn is not None:
            conn.fail(TimeoutError(f"origin sent no body bytes for {self._read_timeout:g}s"))

    def release(self) -> None:
        """Done with this response: a connection whose response was not read to its end
        is closed, never reused (its next bytes would be taken for the next answer)."""
        self._chunks.clear()
        self._buffered = 0
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
        stream.headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in raw]
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
                self.transport.write(b"%x\r\n%b\r\n" % (len(chunk), chunk) if chunked else chunk)
                if self._drained is not None:
                    await self._drained
            if chunked and not self.closed:
                self.transport.write(b"0\r\n\r\n")
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


class Pool:
    """At most ``size`` connections to one host; requests beyond wait in order."""

    def __init__(
        self,
        host: str,
        port: int,
        size: int,
        tls: ssl.SSLContext | None = None,
        idle_timeout: float = IDLE_TIMEOUT,
    ) -> None:
        self.host = host
        self.port = port
        self.size = size
        self.tls = tls
        self.idle_timeout = idle_timeout
        self._loop: asyncio.AbstractEventLoop | None = None  # bound on first use
        self._count = 0  # connections open or being opened
        self._idle: list[Connection] = []  # most recently used last
        self._open: set[Connection] = set()
        self._waiters: collections.deque[asyncio.Future[Connection | None]] = collections.deque()
        self._sweeper: asyncio.TimerHandle | None = None
        self._closed = False

    async def request(
        self,
        method: str,
        target: str,
        headers: Sequence[tuple[str, str]],
        body: Body,
        connect_timeout: float,
        total: float,
        interim: Interim | None = None,
    ) -> Stream:
        """Send one request; answer once the response head arrived. Interim answers
        (1xx) that come before it are handed to ``interim``."""
        head, length, chunked = encode_head(method, target, headers, body)
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        deadline = loop.time() + total
        conn = self._take(loop) or await self._acquire(loop, min(connect_timeout, total))
        is_head = method == "HEAD"
        stream = conn.send(head, body, length, chunked, deadline, total, is_head, interim)
        try:
            error = await stream.head
        except BaseException:  # cancelled: the request may be half sent, never reuse it
            conn.fail(ConnectionAbortedError("request cancelled"))
            raise
        if error is not None:
            raise error
        return stream

    def _take(self, loop: asyncio.AbstractEventLoop) -> Connection | None:
        idle = self._idle
        while idle:
            conn = idle.pop()
            if conn.usable and conn.expires > loop.time():
                return conn
            conn.close()  # the origin closed it while idle, or it is too old to trust
        return None

    async def _acquire(self, loop: asyncio.AbstractEventLoop, timeout: float) -> Connection:
        deadline = loop.time() + timeout
        while True:
            if self._closed:
                raise ConnectionAbortedError("the origin client is closed")
            conn = self._take(loop)
            if conn is not None:
                return conn
            if self._count < self.size and not self._waiters:
                self._count += 1
                return await self._connect(loop, timeout)
            waiter: asyncio.Future[Connection | None] = loop.create_future()
            self._waiters.append(waiter)
            try:
                async with asyncio.timeout_at(deadline):
                    got = await waiter
            except BaseException as exc:
                if waiter.done() and not waiter.cancelled():
                    self._give_back(waiter.result())
                if isinstance(exc, TimeoutError):
                    raise TimeoutError(
                        f"all {self.size} origin connections stayed busy for {timeout:g}s"
                    ) from None
                raise
            if got is None:  # a connection closed and passed its slot to us
                return await self._connect(loop, timeout, deadline - loop.time())
            if got.usable:
                return got
            # closed between its hand-over and now: wait or connect again

    def _give_back(self, got: Connection | None) -> None:
        if got is None:
            self._free_slot()
        else:
            self.release(got)

    async def _connect(
        self, loop: asyncio.AbstractEventLoop, timeout: float, left: float | None = None
    ) -> Connection:
        """Open a connection in a slot already counted as ours."""
        try:
            if self._closed:
                raise ConnectionAbortedError("the origin client is closed")
            async with asyncio.timeout(max(timeout if left is None else left, 0)):
                _, conn = await loop.create_connection(
                    lambda: Connection(self, loop),
                    self.host,
                    self.port,
                    ssl=self.tls,
                    server_hostname=self.host if self.tls is not None else None,
                )
        except BaseException as exc:
            self._free_slot()
            if isinstance(exc, TimeoutError):
                raise TimeoutError(f"origin accepted no connection within {timeout:g}s") from None
            raise
        if not conn.usable:
            self._free_slot()
            raise ConnectionResetError("origin closed a new connection at once")
        conn.counted = True
        self._open.add(conn)
        return conn

    def release(self, conn: Connection) -> None:
        """A connection whose exchange ended cleanly: to the first waiter, else idle."""
        if self._closed:
            conn.close()
            return
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(conn)
                return
        self._idle.append(conn)
        if self._sweeper is None:
            self._sweeper = conn.loop.call_later(SWEEP_EVERY, self._sweep)

    def forget(self, conn: Connection) -> None:
        """A connection closed: its slot goes to a waiter, or back to the pool."""
        if conn in self._idle:
            self._idle.remove(conn)
        if conn.counted:
            conn.counted = False
            self._open.discard(conn)
            self._free_slot()

    def _free_slot(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot is the waiter's now
                return
        self._count -= 1

    def _sweep(self) -> None:
        """Close idle connections past their time (before the origin's idle timeout)."""
        self._sweeper = None
        assert self._loop is not None
        now = self._loop.time()
        expired = [conn for conn in self._idle if conn.expires <= now]
        self._idle = [conn for conn in self._idle if conn.expires > now]
        for conn in expired:
            conn.close()
        if self._idle:
            self._sweeper = self._loop.call_later(SWEEP_EVERY, self._sweep)

    async def aclose(self) -> None:
        """Close every connection (answers still streaming fail) and refuse new requests."""
        self._closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
        for conn in list(self._open):
            conn.fail(ConnectionAbortedError("the origin client is closed"))
        self._idle.clear()
        await asyncio.sleep(0)  # let the transports report their close
