"""The proxy port's listener: one ``HttpServer`` per listening socket makes an
``HttpProtocol`` (``proxy/server/http1.py``) per client connection, keeps them in a registry,
expires their head and idle deadlines from one sweeper task (a timer per request would
cost the hit path), and drains them on stop.
"""

from __future__ import annotations

import asyncio
import socket
import time
from dataclasses import dataclass
from typing import Final

from proxy.engine.driver import Engine
from proxy.engine.memo import WireMemo
from proxy.policy.load import Server
from proxy.server.http1 import NEVER, HttpProtocol

# Slowloris: a request head (or a new connection's first one) must arrive in this time
# (408); an idle keep-alive connection is closed after KEEPALIVE_TIMEOUT; a client that
# reads nothing of a response for SEND_TIMEOUT loses its connection.
HEADER_TIMEOUT: Final = 10.0
KEEPALIVE_TIMEOUT: Final = 75.0
SEND_TIMEOUT: Final = 60.0
DRAIN_GRACE: Final = 1.0  # on stop, how long idle keep-alive connections may still ask
LINGER: Final = 2.0  # after refusing a request, how long its remaining input is discarded


@dataclass(frozen=True, slots=True)
class Limits:
    """What one client may ask of the proxy port: sizes (413, 414, 431 above), open
    connections (503 above), and the time a head, an idle connection, a client that
    reads nothing and a lingering close get."""

    max_body_size: int
    max_header_size: int
    max_connections: int
    header_timeout: float = HEADER_TIMEOUT
    keepalive_timeout: float = KEEPALIVE_TIMEOUT
    send_timeout: float = SEND_TIMEOUT
    linger: float = LINGER

    @classmethod
    def of(cls, server: Server, **timeouts: float) -> Limits:
        """The policy's ``server:`` limits, with the default timeouts unless given."""
        return cls(server.max_body_size, server.max_header_size, server.max_connections, **timeouts)


class HttpServer:
    """Factory and registry of connections for one listening socket."""

    def __init__(self, engine: Engine, limits: Limits) -> None:
        self.engine = engine
        self.limits = limits
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
        limits = self.limits
        tick = min(1.0, limits.header_timeout / 4, limits.keepalive_timeout / 4)
        while True:
            await asyncio.sleep(tick)
            now = time.monotonic()
            for connection in [c for c in self.connections if c._deadline <= now]:
                connection._deadline = NEVER
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
