"""The proxy port's HTTP/1.1 server: an ``asyncio.Protocol`` on llhttp (httptools).

aiohttp's server machinery costs more than the whole cache hit, so the proxy port is
served here: bytes → ``Exchange`` → ``Engine`` → ``ProxyResponse`` → bytes. It is a
strict HTTP/1.1 server: keep-alive, pipelining (answers in request order), limits on
the request line, headers and body (414/431/413), and llhttp's strict parsing, which
refuses conflicting ``Content-Length``/``Transfer-Encoding`` and other smuggling
vectors with a 400 and a closed connection. Hits served from process memory are
answered inside ``data_received`` without creating a task.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import re
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Final
from urllib.parse import urlsplit

import httptools

from proxy.engine import Engine
from proxy.exchange import Exchange, ProxyResponse, Ticket
from proxy.keys import normalize_path
from proxy.memo import MEMO_HEAD_MAX, MEMO_INLINE, Memo, WireMemo
from proxy.replies import is_clean, serialize_fields
from proxy.storedfields import HOP_BY_HOP
from proxy.wire import Date, interim_head, status_line

log = logging.getLogger("sidecache")

BODY_HIGH_WATER: Final = 1024 * 1024
PIPELINE_DEPTH: Final = 32
# Slowloris: a request head (or a new connection's first one) must arrive in this time
# (408); an idle keep-alive connection is closed after KEEPALIVE_TIMEOUT; a client that
# reads nothing of a response for SEND_TIMEOUT loses its connection.
HEADER_TIMEOUT: Final = 10.0
KEEPALIVE_TIMEOUT: Final = 75.0
SEND_TIMEOUT: Final = 60.0
DRAIN_GRACE: Final = 1.0  # on stop, how long idle keep-alive connections may still ask
LINGER: Final = 2.0  # after refusing a request, how long its remaining input is discarded
_NEVER: Final = float("inf")
# RFC 9110 §7.2 / RFC 3986 §3.2.2: reg-name, IPv4 or IP-literal, and an optional port
_HOST: Final = re.compile(r"(?:\[[0-9A-Za-z:.]+\]|[A-Za-z0-9._~!$&'()*+,;=%-]*)(?::[0-9]*)?")


class HttpError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class _Body:
    """A request body arriving from the parser, read by the origin upload."""

    def __init__(self, protocol: HttpProtocol) -> None:
        self._protocol = protocol
        self._chunks: collections.deque[bytes] = collections.deque()
        self._size = 0
        self._seen = 0
        self.done = False
        self.error: HttpError | None = None
        self._waiter: asyncio.Future[None] | None = None

    def feed(self, chunk: bytes, limit: int) -> None:
        self._seen += len(chunk)
        if self._seen > limit:
            self.error = HttpError(413, "request body too large")
            self._wake()
            raise self.error
        self._chunks.append(chunk)
        self._size += len(chunk)
        if self._size > BODY_HIGH_WATER:
            self._protocol.pause_reading()
        self._wake()

    def finish(self) -> None:
        self.done = True
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while True:
            if self._chunks:
                chunk = self._chunks.popleft()
                self._size -= len(chunk)
                if self._size <= BODY_HIGH_WATER // 2:
                    self._protocol.resume_reading()
                yield chunk
                continue
            if self.error is not None:
                raise self.error
            if self.done:
                return
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
            self._waiter = None


class _Pending:
    """One parsed request waiting for its turn on the connection."""

    __slots__ = ("body", "exchange", "head", "http11", "keep_alive")

    def __init__(
        self, exchange: Exchange, keep_alive: bool, http11: bool, body: _Body | None
    ) -> None:
        self.exchange = exchange
        self.keep_alive = keep_alive
        self.http11 = http11
        self.head = exchange.method == "HEAD"
        self.body = body


Handler = Callable[[Exchange], Awaitable[ProxyResponse]]


class HttpProtocol(asyncio.Protocol):
    """One client connection."""

    def __init__(self, server: HttpServer) -> None:
        self.server = server
        self.engine = server.engine
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.client = ""
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._header_bytes = 0
        self._pending: collections.deque[_Pending] = collections.deque()
        self._current_body: _Body | None = None
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._reading_paused = False
        self._write_ready = asyncio.Event()
        self._write_ready.set()
        self._input_done = False  # after a refused request or an upgrade: parse nothing
        self._in_message = False  # the parser holds part of a request
        self._began = 0  # requests begun in the current data_received
        self._answered: Ticket | None = None  # the synchronous hit answered in it
        self._last: _Pending | None = None  # the last request parsed
        self._late_error: tuple[int, str] | None = None  # sent once earlier answers are out
        self._answering: Exchange | None = None  # whose origin 1xx answers go out now
        # One deadline at a time (the head's, or the idle connection's), checked by the
        # server's sweeper: a timer handle per request would cost the hit path.
        self._deadline = _NEVER
        self._expire: Callable[[], None] = self._close
        self._stalled: asyncio.TimerHandle | None = None  # the client stopped reading

    # ------------------------------------------------------------ transport callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._loop = asyncio.get_running_loop()
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass
        peer = transport.get_extra_info("peername")
        self.client = peer[0] if peer else ""
        self.server.connections.add(self)
        if len(self.server.connections) > self.server.max_connections:
            self._fail(503, "too many connections")
            return
        self._arm(self.server.header_timeout, self._head_timed_out)

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connections.discard(self)
        self._closing = True
        self._deadline = _NEVER
        if self._stalled is not None:
            self._stalled.cancel()
        if self._current_body is not None and not self._current_body.done:
            self._current_body.error = HttpError(400, "client went away")
            self._current_body.finish()
        self._write_ready.set()

    def pause_writing(self) -> None:
        self._write_ready.clear()
        # a pipelining client that does not read must not make us buffer its answers,
        # nor hold an origin stream forever
        self.pause_reading()
        if self._stalled is None:
            loop = asyncio.get_running_loop()
            self._stalled = loop.call_later(self.server.send_timeout, self._abort)

    def resume_writing(self) -> None:
        self._write_ready.set()
        if self._stalled is not None:
            self._stalled.cancel()
            self._stalled = None
        if self._task is None and not self._closing:
            self._run_ready()  # the answers held back while the client did not read
        elif len(self._pending) <= PIPELINE_DEPTH // 2:
            self.resume_reading()

    def pause_reading(self) -> None:
        if not self._reading_paused and self.transport is not None:
            self._reading_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if not self._write_ready.is_set() or self._input_done:
            return
        if self._reading_paused and self.transport is not None and not self._closing:
            self._reading_paused = False
            self.transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        if self._closing or self._input_done:
            return
        memoable = not (self._in_message or self._pending or self._task is not None)
        if memoable:
            memo = self.server.memo.lookup(data)
            if memo is not None and self._replay(memo):
                return
        self._began = 0
        self._answered = None
        try:
            self.parser.feed_data(data)
        except HttpError as exc:
            self._reject(exc.status, str(exc))
        except httptools.HttpParserUpgrade:
            # Upgrades are not proxied: the request is answered as plain HTTP, and what
            # follows is the other protocol's bytes, never parsed as requests.
            self._input_done = True
            if self._pending:
                self._pending[-1].keep_alive = False
            elif self._task is None:
                self._close()
        except httptools.HttpParserError as exc:
            # an HttpError raised in a parser callback arrives wrapped
            cause = exc.__context__ or exc.__cause__
            if isinstance(cause, HttpError):
                self._reject(cause.status, str(cause))
            else:
                self._reject(400, f"bad request: {exc}")
        else:
            # One whole request without a body, alone in this chunk, nothing left over:
            # identical bytes will mean the identical request. Remembered when it was a
            # hit from memory, or (before its answer) when its store is a shared one.
            last = self._last
            if (
                memoable
                and self._began == 1
                and not self._in_message
                and last is not None
                and last.body is None
                and len(data) <= MEMO_HEAD_MAX
            ):
                ticket = self._answered_hit()
                memos = self.server.memo
                if ticket is not None and memos.seen_before(data):
                    memos.remember(Memo(data, ticket, last.keep_alive, last.http11))

    def _answered_hit(self) -> Ticket | None:
        """The ticket of the last ``feed_data``'s request: a hit answered from memory, or
        one whose store is a shared one."""
        return self._answered

    def _replay(self, memo: Memo) -> bool:
        """Answer a request whose head is byte for byte one answered from memory before:
        the same ticket, and the same answer bytes while the entry, its Age and its
        Cache-Status are unchanged. ``False``: parse and answer it the usual way."""
        start = time.perf_counter()
        engine = self.engine
        ticket = memo.ticket
        if ticket.router is not engine.router or self.server.draining or engine.access_log:
            return False
        if self.transport is None or not self._write_ready.is_set():
            return False
        if ticket.get_now is None:
            self._task = self._loop.create_task(self._serve((memo, start)))
            return True
        raw = ticket.get_now(ticket.key)
        return raw is not None and self._answer_memo(memo, raw, start)

    def _answer_memo(self, memo: Memo, raw: bytes, start: float) -> bool:
        """Write the remembered answer, rebuilt first if it is no longer exact; ``False``
        when ``raw`` cannot be answered without the engine's full path."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return True  # the client is gone: nothing to answer
        engine = self.engine
        ticket = memo.ticket
        now = engine.clock.time()
        if memo.exact(raw, now):
            engine.served_again(ticket, now, start)
        else:
            made = engine.answer_ticket(ticket, raw, now, start)
            if made is None:
                return False
            response, until = made
            head, dated = self._head(response, _length(response, ticket.ex), memo.keep_alive)
            head += b"\r\n"
            parts: tuple[bytes, ...]
            if response.status in (204, 304) or ticket.ex.method == "HEAD":
                parts = (bytes(head),)
            elif len(response.body) < MEMO_INLINE:
                parts = (bytes(head + response.body),)
            else:
                parts = (bytes(head), response.body)
            date_until = Date.second + 1 if dated else _NEVER
            self.server.memo.keep(memo, raw, until, date_until, parts)
        if len(memo.parts) == 1:
            transport.write(memo.parts[0])
        else:
            transport.writelines(memo.parts)
        if memo.keep_alive:
            self._deadline = time.monotonic() + self.server.keepalive_timeout
            self._expire = self._idle_timed_out
        else:
            self._close()
        return True

    def _reject(self, status: int, message: str) -> None:
        """Refuse the message being parsed: its error is answered after every request
        queued before it (answered early, it would be read as theirs), then we close."""
        self._input_done = True
        self.pause_reading()
        body = self._current_body
        if body is not None and not body.done:
            body.error = body.error or HttpError(status, message)
            body.finish()
            if self._pending and self._pending[-1].body is body:
                if self._task is not None and len(self._pending) == 1:
                    self._fail(status, message)  # it is the request in flight: answer now
                    return
                self._pending.pop()  # queued, never run
        if self._task is None and not self._pending:
            self._fail(status, message)
        else:
            self._late_error = (status, message)

    def _arm(self, delay: float, expire: Callable[[], None]) -> None:
        self._deadline = time.monotonic() + delay
        self._expire = expire

    def _head_timed_out(self) -> None:
        if not self._closing and not self._input_done:
            self._reject(408, "request header timeout")

    def _idle_timed_out(self) -> None:
        if not self._pending and self._task is None:
            self._close()

    # ------------------------------------------------------------ parser callbacks

    def on_message_begin(self) -> None:
        self._in_message = True
        self._began += 1
        self._url = b""
        self._headers = []
        self._header_bytes = 0
        self._arm(self.server.header_timeout, self._head_timed_out)

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > self.server.max_header_size:
            raise HttpError(414, "request target too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_bytes += len(name) + len(value) + 4
        if self._header_bytes > self.server.max_header_size or len(self._headers) > 200:
            raise HttpError(431, "request headers too large")
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        self._deadline = _NEVER
        parser = self.parser
        version = parser.get_http_version()
        if version not in ("1.1", "1.0"):
            raise HttpError(400, f"HTTP/{version} is not served")
        method = parser.get_method().decode("ascii", "replace")
        if method == "CONNECT":
            raise HttpError(405, "CONNECT is not proxied")
        path, query, authority = self._target(self._url)
        # Only the map decisions read is made here; the fields as sent are decoded from
        # the byte pairs when a miss or a pass-through forwards them.
        hmap: dict[str, str] = {}
        for name, value in self._headers:
            lowered = name.decode("latin-1").lower()
            text = value.decode("latin-1")
            held = hmap.get(lowered)
            if held is None:
                hmap[lowered] = text
            elif lowered == "host":
                raise HttpError(400, "more than one Host")
            else:
                hmap[lowered] = f"{held}, {text}"
        host = hmap.get("host")
        if host is not None:
            host = host.strip().lower()
            if not _HOST.fullmatch(host):
                raise HttpError(400, "bad Host")
        has_body = "transfer-encoding" in hmap
        if has_body and version == "1.0":  # RFC 9112 §6.1: faulty framing, never guessed at
            raise HttpError(400, "Transfer-Encoding in HTTP/1.0")
        declared = hmap.get("content-length")
        if declared is not None:
            length = int(declared) if declared.strip().isdigit() else -1
            if length < 0:
                raise HttpError(400, "bad Content-Length")
            if length > self.server.max_body_size:
                raise HttpError(413, "request body too large")
            has_body = has_body or length > 0
        if authority is not None:
            host = authority  # RFC 9112 §3.2.2: the target's authority replaces Host
        if not host:
            if version == "1.1":
                raise HttpError(400, "missing Host")
            host = ""
        body = _Body(self) if has_body else None
        self._current_body = body
        exchange = Exchange(
            method,
            path,
            query,
            None,
            hmap,
            host=host,
            client=self.client,
            body=body,
            raw=self._headers,
        )
        http11 = version == "1.1"
        self._last = _Pending(exchange, parser.should_keep_alive(), http11, body)
        self._pending.append(self._last)
        if len(self._pending) > PIPELINE_DEPTH:
            self.pause_reading()
        if body is not None and self._task is None:
            self._run_ready()  # the body streams to the origin as it arrives

    def on_body(self, chunk: bytes) -> None:
        if self._current_body is not None:
            self._current_body.feed(chunk, self.server.max_body_size)

    def on_message_complete(self) -> None:
        self._in_message = False
        if self._current_body is not None:
            self._current_body.finish()
            self._current_body = None
        if self._task is None:
            self._run_ready()

    @staticmethod
    def _target(url: bytes) -> tuple[str, str, str | None]:
        """Path, query and (absolute-form only) authority of a request target; the path
        normalised once, so routing, the cache key and the origin agree on it."""
        authority: str | None = None
        if url[:1] != b"/":
            if url == b"*":
                raise HttpError(400, "asterisk-form is not proxied")
            # absolute-form: only its path and query are used; the origin is fixed
            parts = urlsplit(url.decode("latin-1"))
            if parts.scheme not in ("http", "https") or not parts.path.startswith("/"):
                raise HttpError(400, "bad request target")
            authority = parts.netloc.lower()
            if not authority or not _HOST.fullmatch(authority):
                raise HttpError(400, "bad request target")
            url = (parts.path + (f"?{parts.query}" if parts.query else "")).encode("latin-1")
        if b"\x00" in url or b"#" in url:
            raise HttpError(400, "bad request target")
        path, _, query = url.partition(b"?")
        try:
            normal = normalize_path(path.decode("latin-1"))
        except ValueError as exc:
            raise HttpError(400, f"bad request target: {exc}") from None
        return normal, query.decode("latin-1"), authority

    # ------------------------------------------------------------ answering

    def _run_ready(self) -> None:
        """Answer queued requests: from memory at once where possible, else in a task."""
        while self._pending and self._task is None and not self._closing:
            if not self._write_ready.is_set():
                break  # the client is not reading: resume_writing carries on
            pending = self._pending[0]
            if pending.body is None:
                ticket, fast = self.engine.answer_now(pending.exchange)
                if fast is not None:
                    self._pending.popleft()
                    self._answered = ticket
                    self._write_full(fast, pending)
                    continue
                if ticket is not None and ticket.get_now is None:
                    self._answered = ticket  # a shared store's: remembered before its answer
            # not asyncio.ensure_future: on 3.11 its running-loop lookup costs a getpid()
            self._task = self._loop.create_task(self._serve())
        if self._closing:
            return
        if len(self._pending) <= PIPELINE_DEPTH // 2:
            self.resume_reading()
        if self._task is None and not self._pending:
            if self._late_error is not None:
                self._fail(*self._late_error)
            elif self._deadline == _NEVER:
                self._arm(self.server.keepalive_timeout, self._idle_timed_out)

    async def _serve(self, replay: tuple[Memo, float] | None = None) -> None:
        """Answer the queued requests in order; first, a ``_replay`` from a shared store
        (requests pipelined meanwhile queue behind it): when the stored answer changed
        shape (stale, a miss, Vary...), its request is answered the usual way."""
        try:
            if replay is not None:
                memo, start = replay
                raw = await self.engine.fetch_ticket(memo.ticket)
                if self._closing:
                    return
                if raw is None or not self._answer_memo(memo, raw, start):
                    ex = memo.ticket.ex.with_client(self.client)
                    self._pending.appendleft(_Pending(ex, memo.keep_alive, memo.http11, None))
            while self._pending and not self._closing:
                if not self._write_ready.is_set():
                    await self._write_ready.wait()  # never buffer answers nobody reads
                pending = self._pending[0]
                if pending.http11:  # RFC 9110 §15.2: no 1xx to an HTTP/1.0 client
                    pending.exchange.relay = self
                self._answering = pending.exchange
                try:
                    response = await self.engine.handle(pending.exchange)
                except HttpError as exc:
                    self._fail(exc.status, str(exc))
                    return
                finally:
                    self._answering = None
                if self._pending:  # emptied if the connection closed meanwhile
                    self._pending.popleft()
                if response.stream is None:
                    self._write_full(response, pending)
                else:
                    await self._write_stream(response, pending)
                if pending.body is not None and not pending.body.done:
                    # the handler did not read the whole body: the connection is unusable;
                    # the rest of the upload is discarded (lingering close) so no reset
                    # destroys the answer just written
                    self._input_done = True
                    self._close()
                    return
        except Exception:
            log.exception("request failed")
            self._fail(500, "internal error")
        finally:
            self._task = None
        if not self._closing:
            self._run_ready()

    def send_interim(
        self, ex: Exchange, status: int, fields: Sequence[tuple[bytes, bytes]]
    ) -> None:
        """Relay an origin's interim answer to ``ex`` while ``ex`` is the request being
        answered, before its final answer; later (a background refresh), it is dropped."""
        transport = self.transport
        if ex is not self._answering or transport is None or transport.is_closing():
            return
        transport.write(interim_head(status, fields, HOP_BY_HOP))

    def _head(
        self, response: ProxyResponse, length: int | None, keep_alive: bool
    ) -> tuple[bytearray, bool]:
        """The status line and header fields (no final CRLF), and whether the Date in
        it is ours (the current second) rather than the response's."""
        out = bytearray(status_line(response.status))
        has_date = False
        if response.block:
            out += response.block
            has_date = response.dated
        fields, dated = serialize_fields(response.headers)
        if fields is None:
            # CR/LF/NUL inside a field (response splitting) or a field not in latin-1:
            # only a foreign store value can carry one. Such fields are dropped.
            response.headers = [(k, v) for k, v in response.headers if is_clean(k, v)]
            return self._head(response, length, keep_alive)
        out += fields
        has_date = has_date or dated
        if not has_date:
            out += Date.get()
        if length is not None:
            out += b"Content-Length: %d\r\n" % length
        if not keep_alive:
            out += b"Connection: close\r\n"
        return out, not has_date

    def _write_full(self, response: ProxyResponse, pending: _Pending) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        no_body = response.status in (204, 304) or response.status < 200
        length = _length(response, pending.exchange)
        keep_alive = pending.keep_alive and not self.server.draining
        head, _ = self._head(response, length, keep_alive)
        head += b"\r\n"
        if pending.head or no_body:
            transport.write(head)
        elif len(response.body) < 65536:
            transport.write(bytes(head + response.body))
        else:
            transport.write(head)
            transport.write(response.body)
        if not keep_alive:
            self._close()

    async def _write_stream(self, response: ProxyResponse, pending: _Pending) -> None:
        assert response.stream is not None
        transport = self.transport
        length: int | None = None
        for name, value in response.headers:
            if name.lower() == "content-length" and value.strip().isdigit():
                length = int(value)
        # framing: the origin's length; else chunked for HTTP/1.1; else close-delimited
        chunked = length is None and pending.http11
        keep_alive = pending.keep_alive and not self.server.draining
        keep_alive = keep_alive and (length is not None or chunked)
        head, _ = self._head(response, length, keep_alive)
        if chunked:
            head += b"Transfer-Encoding: chunked\r\n"
        head += b"\r\n"
        stream = response.stream
        try:
            if transport is None or transport.is_closing():
                raise ConnectionError("client went away")
            transport.write(bytes(head))
            sent = 0
            async for chunk in stream:
                if self._closing:
                    raise ConnectionError("client went away")
                if chunked:
                    transport.write(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
                else:
                    transport.write(chunk)
                sent += len(chunk)
                if not self._write_ready.is_set():
                    await self._write_ready.wait()
            if chunked:
                transport.write(b"0\r\n\r\n")
            if length is not None and sent != length:
                raise ConnectionError("origin body shorter than its Content-Length")
        except Exception as exc:
            # cannot change the status any more: cut the connection, never end cleanly
            log.debug("stream aborted: %s", exc)
            aclose = getattr(stream, "aclose", None)
            if aclose is not None:
                await aclose()
            self._close()
            return
        if not keep_alive:
            self._close()

    def _fail(self, status: int, message: str) -> None:
        transport = self.transport
        if transport is not None and not transport.is_closing():
            body = (message + "\n").encode()
            transport.write(
                status_line(status)
                + Date.get()
                + b"Content-Type: text/plain; charset=utf-8\r\nCache-Control: no-store\r\n"
                + b"X-Cache: BYPASS\r\nConnection: close\r\n"
                + b"Content-Length: %d\r\n\r\n" % len(body)
                + body
            )
        self._close()

    def _abort(self) -> None:
        """Drop a client that reads nothing: ``close`` would wait to flush to it forever."""
        self._stalled = None
        self._close()
        if self.transport is not None:
            self.transport.abort()

    def _close(self) -> None:
        self._closing = True
        self._pending.clear()
        self._deadline = _NEVER
        if self._stalled is not None:
            self._stalled.cancel()
            self._stalled = None
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if self._input_done and transport.can_write_eof():
            # Lingering close (as nginx): the client may still be sending what we refused
            # to read, and closing with unread input resets the connection, which can
            # destroy our answer (a 408/413/400) before the client reads it. Send FIN,
            # discard what still comes (data_received ignores it) for a moment, then close.
            transport.write_eof()
            if self._reading_paused:
                self._reading_paused = False
                transport.resume_reading()
            asyncio.get_running_loop().call_later(self.server.linger, transport.close)
            return
        transport.close()


def _length(response: ProxyResponse, request: Exchange) -> int | None:
    """The Content-Length of a response written whole (``None``: it has none)."""
    if response.head_length is not None:
        return response.head_length
    if request.method == "HEAD":  # a HEAD passed through: announce the origin's length
        for name, value in response.headers:
            if name.lower() == "content-length" and value.strip().isdigit():
                return int(value)
        return None
    if response.status in (204, 304) or response.status < 200:
        return None
    return len(response.body)


class HttpServer:
    """Factory and registry of connections for one listening socket."""

    def __init__(
        self,
        engine: Engine,
        *,
        max_body_size: int,
        max_header_size: int,
        max_connections: int,
        header_timeout: float = HEADER_TIMEOUT,
        keepalive_timeout: float = KEEPALIVE_TIMEOUT,
        send_timeout: float = SEND_TIMEOUT,
        linger: float = LINGER,
    ) -> None:
        self.engine = engine
        self.max_body_size = max_body_size
        self.max_header_size = max_header_size
        self.max_connections = max_connections
        self.header_timeout = header_timeout
        self.keepalive_timeout = keepalive_timeout
        self.send_timeout = send_timeout
        self.linger = linger
        self.connections: set[HttpProtocol] = set()
        self.draining = False
        self._server: asyncio.base_events.Server | None = None
        self._sweeper: asyncio.Task[None] | None = None
        # request head bytes -> what they resolved to and their last answer (hits only)
        self.memo = WireMemo()

    def __call__(self) -> HttpProtocol:
        return HttpProtocol(self)

    async def start(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self, sock=sock)
        self._sweeper = asyncio.ensure_future(self._sweep())

    async def _sweep(self) -> None:
        """Expire the connections whose head or idle deadline has passed."""
        tick = min(1.0, self.header_timeout / 4, self.keepalive_timeout / 4)
        while True:
            await asyncio.sleep(tick)
            now = time.monotonic()
            for connection in [c for c in self.connections if c._deadline <= now]:
                connection._deadline = _NEVER
                connection._expire()

    async def stop(self, timeout: float) -> None:
        """Stop accepting; let in-flight requests finish up to ``timeout``; close."""
        self.draining = True
        if self._server is not None:
            self._server.close()
        if self._sweeper is not None:
            self._sweeper.cancel()
        deadline = time.monotonic() + timeout
        # An idle keep-alive connection may have a request on its way: closing it now
        # would lose that request. For a grace period such requests are answered with
        # Connection: close (we are draining), then what is still idle is closed.
        grace = time.monotonic() + min(DRAIN_GRACE, timeout)
        while time.monotonic() < deadline:
            busy = [c for c in self.connections if c._task is not None or c._pending]
            if not busy and (not self.connections or time.monotonic() >= grace):
                break
            await asyncio.sleep(0.05)
        for connection in list(self.connections):
            connection._close()
