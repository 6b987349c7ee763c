"""The keep-alive pool of connections to the one origin (``upstream.Connection``): at
most ``size`` open, requests beyond that wait in order; idle connections are reused
most recently used first and closed before the origin's idle timeout. It raises only
builtin errors (``TimeoutError``, ``OSError``), as ``upstream`` does.
"""

from __future__ import annotations

import asyncio
import collections
import ssl
from collections.abc import Sequence
from typing import Final

from proxy.origin.upstream import Connection, Stream
from proxy.wire.codec import Body, Interim, encode_head
from proxy.wire.relay import request_head

IDLE_TIMEOUT: Final = 30.0  # an idle pooled connection is closed after this
SWEEP_EVERY: Final = 1.0


class Pool:
    """At most ``size`` connections to one host; requests beyond wait in order."""

    def __init__(
        self,
        address: tuple[str, int],
        size: int,
        tls: ssl.SSLContext | None = None,
        idle_timeout: float = IDLE_TIMEOUT,
    ) -> None:
        self.address = address  # host and port
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
        headers: Sequence[tuple[str, str]] | bytes,
        body: Body,
        connect_timeout: float,
        total: float,
        interim: Interim | None = None,
    ) -> Stream:
        """Send one request; answer once the response head arrived. Interim answers
        (1xx) that come before it are handed to ``interim``."""
        if isinstance(headers, bytes):  # a bodyless request's field lines, as relayed
            head, length, chunked = request_head(method, target, headers), None, False
        else:
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
                    *self.address,
                    ssl=self.tls,
                    server_hostname=self.address[0] if self.tls is not None else None,
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
