"""In-process CPU per request through the proxy port's HTTP/1.1 server, wire included
(``bench/micro.py`` measures ``Engine.answer_now`` alone).

- ``hit``: a memory hit answered inside ``HttpProtocol.data_received`` (a transport that
  only counts what is written), 1,000 warm URLs (``--urls``) asked at random, every
  request with its own X-Request-Id and traceparent, so the wire memo never answers it.
- ``pass``: a pass-through route (``cache: false``) over real loopback sockets: a raw
  asyncio origin sending prebuilt bytes, the proxy's server and origin client, one
  keep-alive client. The origin and the client cost the same for every tree, so a
  difference between two trees is the proxy's.

Prints the CPU µs per request (``time.process_time``: what a loaded machine steals does
not count), best and median of R rounds.

    .venv/bin/python bench/wire_cost.py [hit|pass] [--size 1024] [--rounds 5]

Runs the ``proxy`` package found first on ``sys.path``: with ``PYTHONPATH=DIR`` (e.g.
``git archive REV proxy | tar -x -C DIR``) it measures another tree, so a change can be
compared with its parent, one process right after the other, alternating.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import time
import uuid
from typing import Any

import uvloop

from proxy.engine.driver import Engine
from proxy.origin.client import OriginClient
from proxy.policy.load import parse_policy
from proxy.server.worker import bind
from proxy.stores.factory import build_stores

try:
    from proxy.server.listener import HttpServer, Limits
except ImportError:  # a tree from before the split of http1.py
    from proxy.server.http1 import HttpServer  # type: ignore[attr-defined, no-redef]

    Limits = None  # type: ignore[assignment, misc]

URLS = 1000


def _server(engine: Engine, settings: Any) -> Any:
    if Limits is not None:
        return HttpServer(engine, Limits.of(settings))
    fields = ("max_body_size", "max_header_size", "max_connections")
    return HttpServer(engine, **{name: getattr(settings, name) for name in fields})


def _request(i: int) -> bytes:
    return (
        f"GET /r/{i}.json HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n"
        "User-Agent: python-requests/2.32.3\r\nAccept-Encoding: gzip, deflate\r\n"
        f"Accept: */*\r\nConnection: keep-alive\r\nX-Request-Id: {uuid.uuid4()}\r\n"
        f"traceparent: 00-{uuid.uuid4().hex}-{uuid.uuid4().hex[:16]}-01\r\n\r\n"
    ).encode()


class _Counting:
    """The transport of the hit mode: counts writes, never blocks."""

    def __init__(self) -> None:
        self.writes = 0
        self.written = asyncio.Event()  # set by each write: a miss was answered

    def write(self, data: bytes) -> None:
        self.writes += 1
        self.written.set()

    def writelines(self, parts: list[bytes]) -> None:
        self.writes += len(parts)

    def is_closing(self) -> bool:
        return False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 5555) if name == "peername" else default

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...

    def close(self) -> None: ...


async def _origin(size: int) -> tuple[asyncio.Server, int]:
    reply = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
    reply += b"Cache-Control: max-age=3600\r\nContent-Length: %d\r\n\r\n" % size + b"a" * size

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                await reader.readuntil(b"\r\n\r\n")
                writer.write(reply)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


def _engine(port: int, defaults: str) -> tuple[Engine, Any]:
    text = f"version: 1\norigin: http://127.0.0.1:{port}\ndefaults: {defaults}\n"
    loaded = parse_policy(text, "wire-cost.yaml")
    stores = build_stores(loaded.policy.backends)
    engine = Engine(loaded, stores, OriginClient(loaded.policy.origin))
    return engine, loaded.policy.server


async def hits(size: int, rounds: int, requests: int, urls: int = URLS) -> list[float]:
    origin, port = await _origin(size)
    engine, settings = _engine(port, "{ttl: 1h, compression: {algorithm: none}}")
    protocol = _server(engine, settings)()
    transport = _Counting()
    protocol.connection_made(transport)
    for i in range(urls):  # warm: each a miss answered in a task
        transport.written.clear()
        protocol.data_received(_request(i))
        await asyncio.wait_for(transport.written.wait(), 10)
    out = []
    for _ in range(rounds):
        batch = [_request(random.randrange(urls)) for _ in range(requests)]
        before = transport.writes
        started = time.process_time()
        for data in batch:
            protocol.data_received(data)
        out.append((time.process_time() - started) / requests * 1e6)
        assert transport.writes - before >= requests, "not every request was a memory hit"
    await engine.aclose()
    origin.close()
    return out


async def passes(size: int, rounds: int, requests: int) -> list[float]:
    origin, port = await _origin(size)
    engine, settings = _engine(port, "{cache: false}")
    http = _server(engine, settings)
    sock = bind(("127.0.0.1", 0), reuse_port=False)
    await http.start(sock)
    reader, writer = await asyncio.open_connection("127.0.0.1", sock.getsockname()[1])

    async def one(i: int) -> None:
        writer.write(_request(i))
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
        await reader.readexactly(length)

    for i in range(200):
        await one(i)
    out = []
    for _ in range(rounds):
        started = time.process_time()
        for i in range(requests):
            await one(i)
        out.append((time.process_time() - started) / requests * 1e6)
    writer.close()
    await http.stop(0)
    await engine.aclose()
    origin.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", choices=("hit", "pass"), nargs="?", default="hit")
    parser.add_argument("--size", type=int, default=1024, help="body bytes")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=0, help="per round")
    parser.add_argument("--urls", type=int, default=URLS, help="hit: distinct warm URLs")
    args = parser.parse_args()
    requests = args.requests or (30000 if args.mode == "hit" else 2000)
    if args.mode == "hit":
        out = uvloop.run(hits(args.size, args.rounds, requests, args.urls))
    else:
        out = uvloop.run(passes(args.size, args.rounds, requests))
    print(
        f"{args.mode} {args.size} B: {min(out):.2f} µs CPU per request (best), "
        f"{statistics.median(out):.2f} (median of {args.rounds})"
    )


if __name__ == "__main__":
    main()
