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
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Final

import httptools

from proxy.core.exchange import Exchange, ProxyResponse, Ticket
from proxy.core.replies import PlainHit
from proxy.core.storedfields import HOP_BY_HOP
from proxy.engine.memo import MEMO_INLINE, Memo
from proxy.server.requesthead import HttpError, Request, read_head
from proxy.server.responsehead import refusal, render_answer, render_hit, render_stream_head
from proxy.wire.bytequeue import ByteQueue
from proxy.wire.codec import LAST_CHUNK, Date, encode_chunk, interim_head

if TYPE_CHECKING:
    from proxy.server.listener import HttpServer

log = logging.getLogger("sidecache")

BODY_HIGH_WATER: Final = 1024 * 1024  # request body bytes buffered before reading pauses
PIPELINE_DEPTH: Final = 32
FULL_INLINE: Final = 65536  # a body this small goes out in one write with its head
NEVER: Final = float("inf")


class HttpProtocol(asyncio.Protocol):
    """One client connection."""

    def __init__(self, server: HttpServer) -> None:
        self.server = server
        self.engine = server.engine
        self.limits = server.limits
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.client = ""
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._header_bytes = 0
        self._pending: collections.deque[Request] = collections.deque()
        self._current_body: ByteQueue | None = None
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._reading_paused = False
        self._write_ready = asyncio.Event()
        self._write_ready.set()
        self._input_done = False  # after a refused request or an upgrade: parse nothing
        self._in_message = False  # the parser holds part of a request
        self._began = 0  # requests begun in the current data_received
        self._answered: Ticket | None = None  # the synchronous hit answered in it
        self._last: Request | None = None  # the last request parsed
        self._late_error: tuple[int, str] | None = None  # sent once earlier answers are out
        self._answering: Exchange | None = None  # whose origin 1xx answers go out now
        # One deadline at a time (the head's, or the idle connection's), checked by the
        # server's sweeper: a timer handle per request would cost the hit path.
        self._deadline = NEVER
        self._expire: Callable[[], None] = self._close
        self._stalled: asyncio.TimerHandle | None = None  # the client stopped reading

    # ------------------------------------------------------------ transport callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._loop = asyncio.get_running_loop()
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass
        peer = transport.get_extra_info("peername")
        self.client = peer[0] if peer else ""
        self.server.connections.add(self)
        if len(self.server.connections) > self.limits.max_connections:
            self._fail(503, "too many connections")
            return
        self._arm(self.limits.header_timeout, self._head_timed_out)

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connections.discard(self)
        self._closing = True
        self._deadline = NEVER
        if self._stalled is not None:
            self._stalled.cancel()
        body = self._current_body
        if body is not None and not body.done:
            body.fail(HttpError(400, "client went away"))
            body.end()
        self._write_ready.set()

    def pause_writing(self) -> None:
        self._write_ready.clear()
        # a pipelining client that does not read must not make us buffer its answers,
        # nor hold an origin stream forever
        self.pause_reading()
        if self._stalled is None:
            loop = asyncio.get_running_loop()
            self._stalled = loop.call_later(self.limits.send_timeout, self._abort)

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
            # identical bytes will mean the identical request.
            last = self._last
            whole = memoable and self._began == 1 and not self._in_message
            if whole and last is not None and last.body is None:
                self.server.memo.note(data, self._answered_hit(), last.keep_alive, last.http11)

    def _answered_hit(self) -> Ticket | None:
        """The ticket of the last ``feed_data``'s request: a hit answered from memory, or
        one whose store is a shared one (a method: the parser's callbacks set it)."""
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
            parts, dated = render_answer(response, ticket.ex, memo.keep_alive, MEMO_INLINE)
            date_until = Date.second + 1 if dated else NEVER
            self.server.memo.keep(memo, raw, until, date_until, parts)
        if len(memo.parts) == 1:
            transport.write(memo.parts[0])
        else:
            transport.writelines(memo.parts)
        if memo.keep_alive:
            self._deadline = time.monotonic() + self.limits.keepalive_timeout
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
            if body.error is None:
                body.fail(HttpError(status, message))
            body.end()  # nothing more is read of it
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
        self._arm(self.limits.header_timeout, self._head_timed_out)

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > self.limits.max_header_size:
            raise HttpError(414, "request target too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_bytes += len(name) + len(value) + 4
        if self._header_bytes > self.limits.max_header_size or len(self._headers) > 200:
            raise HttpError(431, "request headers too large")
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        self._deadline = NEVER
        parser = self.parser
        version = parser.get_http_version()
        method = parser.get_method().decode("ascii", "replace")
        max_body = self.limits.max_body_size
        path, query, host, hmap, has_body = read_head(
            version, method, self._url, self._headers, max_body
        )
        body = ByteQueue(self, BODY_HIGH_WATER, BODY_HIGH_WATER // 2) if has_body else None
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
        self._last = Request(exchange, parser.should_keep_alive(), http11, body)
        self._pending.append(self._last)
        if len(self._pending) > PIPELINE_DEPTH:
            self.pause_reading()
        if body is not None and self._task is None:
            self._run_ready()  # the body streams to the origin as it arrives

    def on_body(self, chunk: bytes) -> None:
        body = self._current_body
        if body is None:
            return
        if body.received + len(chunk) > self.limits.max_body_size:
            error = HttpError(413, "request body too large")
            body.fail(error)  # the upload reading it fails too
            raise error
        body.feed(chunk)

    def on_message_complete(self) -> None:
        self._in_message = False
        if self._current_body is not None:
            self._current_body.end()
            self._current_body = None
        if self._task is None:
            self._run_ready()

    # ------------------------------------------------------------ answering

    def _run_ready(self) -> None:
        """Answer queued requests: from memory at once where possible, else in a task."""
        while self._pending and self._task is None and not self._closing:
            if not self._write_ready.is_set():
                break  # the client is not reading: resume_writing carries on
            pending = self._pending[0]
            if pending.body is None:
                engine = self.engine
                if engine.access_log is None:  # a plain HIT is then written from its parts
                    ticket, fast = engine.hits.answer_plain(pending.exchange)
                else:
                    ticket, fast = engine.answer_now(pending.exchange)
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
            elif self._deadline == NEVER:
                self._arm(self.limits.keepalive_timeout, self._idle_timed_out)

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
                    self._pending.appendleft(Request(ex, memo.keep_alive, memo.http11, None))
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

    def _write_full(self, response: ProxyResponse | PlainHit, pending: Request) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        keep_alive = pending.keep_alive and not self.server.draining
        ex = pending.exchange
        if isinstance(response, ProxyResponse):
            parts, _ = render_answer(response, ex, keep_alive, FULL_INLINE)
        else:  # a plain HIT, from the parts prepared on its entry
            parts = render_hit(*response, keep_alive, ex.method == "HEAD", FULL_INLINE)
        for part in parts:  # two writes, never a join copying a large body
            transport.write(part)
        if not keep_alive:
            self._close()

    async def _write_stream(self, response: ProxyResponse, pending: Request) -> None:
        assert response.stream is not None
        transport = self.transport
        keep_alive = pending.keep_alive and not self.server.draining
        head, length, chunked, keep_alive = render_stream_head(response, pending.http11, keep_alive)
        stream = response.stream
        try:
            if transport is None or transport.is_closing():
                raise ConnectionError("client went away")
            transport.write(head)
            sent = 0
            async for chunk in stream:
                if self._closing:
                    raise ConnectionError("client went away")
                if chunked:
                    transport.write(encode_chunk(chunk))
                else:
                    transport.write(chunk)
                sent += len(chunk)
                if not self._write_ready.is_set():
                    await self._write_ready.wait()
            if chunked:
                transport.write(LAST_CHUNK)
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
            transport.write(refusal(status, message))
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
        self._deadline = NEVER
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
            asyncio.get_running_loop().call_later(self.limits.linger, transport.close)
            return
        transport.close()
