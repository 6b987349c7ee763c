"""The lifecycle of one worker: stores, origin pool, engine, both listeners, signals,
draining. The proxy port's HTTP/1.1 server is ``http1.py``; the admin API ``admin.py``;
process management (``--workers``) is ``supervisor.py``'s.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import time
from dataclasses import dataclass, field

from proxy import __version__
from proxy.engine.driver import Engine
from proxy.obs.logs import configure, event
from proxy.ops.admin import AdminState, Operations
from proxy.ops.fanout import WorkerBus
from proxy.ops.invalidation import new_replica_id
from proxy.ops.reload import Loader
from proxy.ops.snapshot import Snapshots
from proxy.origin.client import OriginClient
from proxy.policy.load import LoadedPolicy, load_policy
from proxy.server.listener import HttpServer, Limits
from proxy.stores.base import Store
from proxy.stores.factory import build_stores, close_stores

log = logging.getLogger("sidecache")


def parse_address(value: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` too) → (host, port)."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"{value!r} is not HOST:PORT")
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port)


def bind(address: tuple[str, int], *, reuse_port: bool) -> socket.socket:
    """A listening socket, bound now so errors surface before the loop starts."""
    host, port = address
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(1024)
    sock.setblocking(False)
    return sock


@dataclass
class Worker:
    """One worker process's running proxy: both listeners around one engine."""

    loaded: LoadedPolicy
    proxy_sock: socket.socket
    admin_sock: socket.socket | None
    stores: dict[str, Store] = field(default_factory=dict)
    engine: Engine | None = None
    http: HttpServer | None = None
    state: AdminState | None = None
    loader: Loader = load_policy  # for reloads (the CLI's applies --origin)
    bus: WorkerBus | None = None  # purge fan-out to the other workers (--workers N)
    replica: str = field(default_factory=new_replica_id)
    ops: Operations | None = None
    snapshots: Snapshots | None = None  # server.snapshot: warm restart
    _stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def start(self) -> None:
        policy = self.loaded.policy
        self.stores = build_stores(policy.backends)
        origin = OriginClient(policy.origin, policy.server.origin_connections)
        self.engine = Engine(self.loaded, self.stores, origin)
        if policy.server.snapshot is not None:  # loaded before the proxy port accepts
            worker = self.bus.index if self.bus is not None else None
            self.snapshots = Snapshots(policy.server.snapshot, worker, self._current)
            await self.snapshots.load()
        self.http = HttpServer(self.engine, Limits.of(policy.server))
        await self.http.start(self.proxy_sock)
        self.ops = Operations(self.engine, loader=self.loader, replica=self.replica, bus=self.bus)
        self.state = await self.ops.start(self.admin_sock)
        self.state.ready = True
        if self.snapshots is not None:
            self.snapshots.start()

    def _current(self) -> tuple[LoadedPolicy, dict[str, Store]]:
        if self.engine is None:
            return self.loaded, self.stores
        return self.engine.loaded, self.engine.stores

    def request_stop(self) -> None:
        if self.state is not None:
            self.state.ready = False
        self._stop.set()

    async def wait(self) -> None:
        await self._stop.wait()

    async def stop(self) -> None:
        """Stop accepting, drain in-flight requests up to shutdown_timeout, write the
        snapshot in what is left of it (at least 1 s), close pools."""
        if self.state is not None:
            self.state.ready = False
        # the running policy's timeout: a reload may have changed it
        timeout = self._current()[0].policy.server.shutdown_timeout
        deadline = time.monotonic() + timeout
        if self.http is not None:
            await self.http.stop(timeout)
        if self.snapshots is not None:
            await self.snapshots.stop(max(deadline, time.monotonic() + 1.0))
        if self.ops is not None:
            await self.ops.aclose()  # the admin listener answered /readyz 503 until now
        if self.engine is not None:
            await self.engine.aclose()
        # a reload may have replaced stores: the engine holds the current ones
        await close_stores(self.engine.stores if self.engine is not None else self.stores)


async def serve(
    loaded: LoadedPolicy,
    proxy_sock: socket.socket,
    admin_sock: socket.socket | None,
    *,
    loader: Loader = load_policy,
    bus: WorkerBus | None = None,
    replica: str | None = None,
) -> None:
    """Run one worker until SIGTERM/SIGINT, then drain and exit; SIGHUP reloads."""
    configure()
    worker = Worker(loaded, proxy_sock, admin_sock, loader=loader, bus=bus)
    if replica is not None:
        worker.replica = replica
    await worker.start()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, worker.request_stop)
    assert worker.ops is not None
    loop.add_signal_handler(signal.SIGHUP, worker.ops.reload)
    event(
        "start",
        f"sidecache {__version__} worker serving: {loaded.summary()}",
        listen=_address(proxy_sock),
        admin=_address(admin_sock),
        policy=loaded.path,
        digest=loaded.digest,
    )
    try:
        await worker.wait()
    finally:
        event("stop", "draining")
        await worker.stop()
        event("stop", "stopped")


def _address(sock: socket.socket | None) -> str | None:
    if sock is None:
        return None
    host, port = sock.getsockname()[:2]
    return f"{host}:{port}"
