"""In-process CPU per shared-store hit through the proxy port's HTTP/1.1 server
(``bench/wire_cost.py`` does the same for memory hits and pass-throughs).

A real ``redis-server`` and ``memcached`` on free loopback ports; the proxy's server
protocol on transports that only count what is written; 64 connections each sending its
next request as soon as the last one is answered (wrk's closed loop, without sockets on
the client side). 1,000 warm URLs drawn in turn, every request with its own X-Request-Id
and traceparent (the wire memo never answers it).

- ``redis``, ``memcached``: every request a hit read from that store.
- ``tiered``: memory L1 + Redis L2, L1 emptied before each pass over the URLs, so every
  request is an L1 miss read from L2 and copied into L1 (the share of requests that pay
  this depends on ``l1_ttl``; an L1 hit costs what ``wire_cost.py hit`` measures).

Prints the CPU µs per request of this process (``time.process_time``: neither the store's
CPU nor what a loaded machine steals counts), best and median of R rounds.

    .venv/bin/python bench/store_cost.py [redis|memcached|tiered] [--rounds 5]

Runs the ``proxy`` package found first on ``sys.path``: with ``PYTHONPATH=DIR`` (e.g.
``git archive REV proxy | tar -x -C DIR``) it measures another tree.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
from collections.abc import Iterator
from typing import Any

import uvloop
from wire_cost import URLS, _Counting, _origin, _request, _server  # bench/ is on sys.path

from proxy.engine.driver import Engine
from proxy.origin.client import OriginClient
from proxy.policy.load import parse_policy
from proxy.stores.factory import build_stores, close_stores

CONNECTIONS = 64


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _wait_tcp(port: int) -> None:
    deadline = time.monotonic() + 15
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


@contextlib.contextmanager
def _stores() -> Iterator[tuple[int, int]]:
    """A redis-server and a memcached of our own, stopped when the block ends."""
    redis_port, memcached_port = _free_port(), _free_port()
    with tempfile.TemporaryDirectory() as tmp:
        redis = [shutil.which("redis-server") or "redis-server", "--port", str(redis_port)]
        redis += ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", tmp]
        memcached = [shutil.which("memcached") or "memcached", "-l", "127.0.0.1"]
        memcached += ["-p", str(memcached_port), "-U", "0", "-m", "256"]
        memcached += ["-u", "nobody"] if os.geteuid() == 0 else []
        procs = [subprocess.Popen(argv, stdout=subprocess.DEVNULL) for argv in (redis, memcached)]
        try:
            _wait_tcp(redis_port)
            _wait_tcp(memcached_port)
            yield redis_port, memcached_port
        finally:
            for proc in procs:
                proc.terminate()
                proc.wait(10)


def _policy(origin: int, backend: str, redis: int, memcached: int) -> str:
    return (
        f"version: 1\norigin: http://127.0.0.1:{origin}\n"
        "backends:\n"
        "  memory: {type: memory, max_size: 256MiB}\n"
        f"  redis: {{type: redis, url: 'redis://127.0.0.1:{redis}/0'}}\n"
        f"  memcached: {{type: memcached, servers: ['127.0.0.1:{memcached}']}}\n"
        "  tiered: {type: tiered, l1: memory, l2: redis, l1_ttl: 1h}\n"
        f"defaults: {{backend: {backend}, ttl: 1h, compression: {{algorithm: none}}}}\n"
    )


class _Client(_Counting):
    """One connection of the closed loop: each answer sends the next request."""

    def __init__(self, run: _Run) -> None:
        super().__init__()
        self.run = run
        self.protocol: Any = None
        self._due = False

    def write(self, data: bytes) -> None:
        super().write(data)
        if not self._due:  # an answer's parts are written in one go: next on the next tick
            self._due = True
            if b"\r\nX-Cache: HIT\r\n" not in data:
                self.run.misses += 1
            asyncio.get_running_loop().call_soon(self._next)

    def writelines(self, parts: list[bytes]) -> None:
        self.write(b"".join(parts))

    def _next(self) -> None:
        self._due = False
        self.run.answered(self)


class _Run:
    """Requests sent and answered over ``CONNECTIONS`` connections."""

    def __init__(self, engine: Engine, settings: Any) -> None:
        self.factory = _server(engine, settings)
        self.clients = [_Client(self) for _ in range(CONNECTIONS)]
        for client in self.clients:
            client.protocol = self.factory()
            client.protocol.connection_made(client)
        self.batch: list[bytes] = []
        self.sent = self.done = 0
        self.misses = 0  # answers that were not a HIT
        self.finished = asyncio.Event()

    def answered(self, client: _Client) -> None:
        self.done += 1
        if self.done >= len(self.batch):
            self.finished.set()
        self.send(client)

    def send(self, client: _Client) -> None:
        if self.sent < len(self.batch):
            self.sent += 1
            client.protocol.data_received(self.batch[self.sent - 1])

    async def go(self, batch: list[bytes]) -> None:
        self.batch, self.sent, self.done = batch, 0, 0
        self.finished.clear()
        for client in self.clients:
            self.send(client)
        await asyncio.wait_for(self.finished.wait(), 120)


async def measure(backend: str, rounds: int, requests: int, size: int) -> list[float]:
    origin, port = await _origin(size)
    with _stores() as (redis, memcached):
        loaded = parse_policy(_policy(port, backend, redis, memcached), "store-cost.yaml")
        stores = build_stores(loaded.policy.backends)
        engine = Engine(loaded, stores, OriginClient(loaded.policy.origin))
        run = _Run(engine, loaded.policy.server)
        await run.go([_request(i) for i in range(URLS)])  # misses: every URL stored
        run.misses = 0
        memory = stores["memory"]
        out = []
        for _ in range(rounds):
            spent = 0.0
            # tiered: L1 emptied before each pass over the URLs, so each is one L2 read
            step = URLS if backend == "tiered" else requests
            for first in range(0, requests, step):
                batch = [_request(j % URLS) for j in range(first, first + step)]
                if backend == "tiered":
                    await memory.delete(memory.keys())  # type: ignore[attr-defined]
                started = time.process_time()
                await run.go(batch)
                spent += time.process_time() - started
            out.append(spent / requests * 1e6)
        missed = run.misses  # a store read past its deadline is a miss (fail open)
        await engine.aclose()
        await close_stores(stores)
        origin.close()
    if missed:
        print(f"{missed} answers of the rounds were not HITs")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("backend", choices=("redis", "memcached", "tiered"), nargs="?")
    parser.add_argument("--size", type=int, default=1024, help="body bytes")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=20000, help="per round")
    args = parser.parse_args()
    backend = args.backend or "redis"
    out = uvloop.run(measure(backend, args.rounds, args.requests, args.size))
    print(
        f"{backend} {args.size} B: {min(out):.2f} µs CPU per request (best), "
        f"{statistics.median(out):.2f} (median of {args.rounds})"
    )


if __name__ == "__main__":
    main()
