"""How purges travel: between the workers of one replica, and between replicas.

``WorkerBus`` is one Unix datagram socket per worker, bound by the supervisor before it
forks; ``Subscriber`` listens on the policy's Redis pub/sub channel and resubscribes by
itself after Redis restarts or goes silent. Both only carry bytes: what a message means
is ``invalidation.py``'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Final

from proxy.obs.logs import event
from proxy.obs.metrics import Meter
from proxy.stores.base import Channel

log = logging.getLogger("sidecache")

RECONNECT_MAX: Final = 2.0  # seconds between subscribe attempts while Redis is away
PING_AFTER: Final = 5.0  # silence on the subscription before we ask Redis for a pong
DEAD_AFTER: Final = 15.0  # silence after which the subscription is rebuilt


class WorkerBus:
    """Purge messages between the workers of one replica: one Unix datagram socket each.

    The supervisor binds every worker's socket before forking, so messages sent while a
    worker restarts wait in its socket for the new process.
    """

    def __init__(self, sock: socket.socket, peers: Sequence[str], index: int = 0) -> None:
        self.sock = sock
        self.peers = tuple(peers)
        self.index = index  # this worker's place among them (0: the one that polls backends)
        self._reading = False

    @staticmethod
    def create(directory: str, count: int) -> list[WorkerBus]:
        paths = [os.path.join(directory, f"worker-{i}.sock") for i in range(count)]
        socks = []
        for path in paths:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            sock.bind(path)
            sock.setblocking(False)
            socks.append(sock)
        return [WorkerBus(socks[i], paths[:i] + paths[i + 1 :], i) for i in range(count)]

    def send_all(self, payloads: Sequence[bytes], meter: Meter) -> int:
        """Send to every peer; answers how many got every message."""
        told = 0
        for peer in self.peers:
            try:
                for payload in payloads:
                    self.sock.sendto(payload, peer)
                    meter.message("workers", "out")
            except OSError as exc:  # full queue (EAGAIN), or a worker between lives
                meter.message_failed("workers")
                log.warning("could not tell worker %s about a purge: %s", peer, exc)
                continue
            told += 1
        return told

    def listen(self, on_message: Callable[[bytes], None]) -> None:
        def readable() -> None:
            while True:
                try:
                    payload = self.sock.recv(65536)
                except BlockingIOError:
                    return
                except OSError:
                    log.warning("worker bus read failed", exc_info=True)
                    return
                on_message(payload)

        asyncio.get_running_loop().add_reader(self.sock.fileno(), readable)
        self._reading = True

    def close(self) -> None:
        if self._reading:
            asyncio.get_running_loop().remove_reader(self.sock.fileno())
            self._reading = False


class Subscriber:
    """Listens on a Redis pub/sub channel; resubscribes after Redis restarts or hangs."""

    def __init__(
        self,
        backend: Channel,
        channel: str,
        meter: Meter,
        on_message: Callable[[bytes, str], Awaitable[object]],
    ) -> None:
        self.backend = backend
        self.channel = channel
        self.meter = meter
        self.on_message = on_message
        self.subscribed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._lost_at: float | None = None

    def start(self) -> None:
        self._task = asyncio.ensure_future(self.run())

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def wait(self) -> None:
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def run(self) -> None:
        delay = 0.1
        while True:
            try:
                await self._listen()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the reconnect boundary: any failure means resubscribe
                if self._lost_at is None:
                    self._lost_at = time.monotonic()
                    event(
                        "invalidation",
                        f"channel {self.channel!r} unavailable: {exc}; resubscribing",
                        level=logging.WARNING,
                    )
                self.meter.message_failed("redis")
            if self.subscribed.is_set():
                delay = 0.1  # it worked until now: try again at once
            self.subscribed.clear()
            self.meter.subscribed.set(0)
            await asyncio.sleep(delay)
            delay = min(delay * 2, RECONNECT_MAX)

    async def _listen(self) -> None:
        pubsub = await self.backend.subscription()
        try:
            await pubsub.subscribe(self.channel)
            last = time.monotonic()
            pinged = False
            while True:
                message = await pubsub.get_message(timeout=1.0)
                now = time.monotonic()
                if message is None:
                    if now - last > DEAD_AFTER:
                        raise ConnectionError(f"no answer from Redis for {DEAD_AFTER:.0f}s")
                    if now - last > PING_AFTER and not pinged:
                        await pubsub.ping()
                        pinged = True
                    continue
                last, pinged = now, False
                kind = message.get("type")
                if kind == "subscribe":
                    self.subscribed.set()
                    self.meter.subscribed.set(1)
                    lost, self._lost_at = self._lost_at, None
                    after = f" again after {now - lost:.1f}s" if lost is not None else ""
                    event("invalidation", f"subscribed to channel {self.channel!r}{after}")
                elif kind == "message":
                    await self.on_message(message["data"], "redis")
        finally:
            with contextlib.suppress(Exception):
                await pubsub.aclose()
