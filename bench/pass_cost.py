"""In-process CPU per pass-through request (a route with ``cache: false``), wire included.

Real loopback sockets: an origin and a client that are bare ``asyncio.Protocol``s
sending prebuilt bytes (a few µs each, the same for every tree), the proxy's HTTP/1.1
server and origin client between them. ``--connections`` clients each keep one request
in flight, as wrk's connections do; 1,000 distinct URLs, every request with its own
X-Request-Id and traceparent and the headers python-requests sends.

Prints the CPU µs per request (``time.process_time``: what a loaded machine steals does
not count), best and median of R rounds. ``PYTHONPATH=DIR`` measures another tree
(``git archive REV proxy | tar -x -C DIR``), also one from before the package split
(874a222 and older), so a change is compared with its parent one process after the other:

    .venv/bin/python bench/pass_cost.py [--size 1024] [--rounds 5] [--connections 16]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid
from typing import Any

import uvloop

try:  # the package layout of 99f382c and later
    from proxy.engine.driver import Engine
    from proxy.origin.client import OriginClient
    from proxy.policy.load import parse_policy
    from proxy.server.listener import HttpServer, Limits
    from proxy.server.worker import bind
    from proxy.stores.factory import build_stores

    def _server(engine: Any, settings: Any) -> Any:
        return HttpServer(engine, Limits.of(settings))

except ImportError:  # a flat tree (874a222 and older)
    from proxy.http1 import HttpServer  # type: ignore[attr-defined, no-redef]

    from proxy.engine import Engine  # type: ignore[no-redef]
    from proxy.origin import OriginClient  # type: ignore[no-redef]
    from proxy.policy import parse_policy  # type: ignore[no-redef]
    from proxy.server import bind  # type: ignore[no-redef]
    from proxy.stores.factory import build_stores

    def _server(engine: Any, settings: Any) -> Any:
        fields = ("max_body_size", "max_header_size", "max_connections")
        return HttpServer(engine, **{name: getattr(settings, name) for name in fields})


URLS = 1000


def _request(i: int) -> bytes:
    return (
        f"GET /r/{i % URLS}.json?page={i % 7} HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n"
        "User-Agent: python-requests/2.32.3\r\nAccept-Encoding: gzip, deflate\r\n"
        f"Accept: */*\r\nConnection: keep-alive\r\nX-Request-Id: {uuid.uuid4()}\r\n"
        f"traceparent: 00-{uuid.uuid4().hex}-{uuid.uuid4().hex[:16]}-01\r\n\r\n"
    ).encode()


class _Origin(asyncio.Protocol):
    """Answers every request head with the same prebuilt answer."""

    def __init__(self, reply: bytes) -> None:
        self.reply = reply
        self.buffer = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: Any = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        heads = self.buffer.count(b"\r\n\r\n")
        if heads:
            self.buffer = self.buffer[self.buffer.rindex(b"\r\n\r\n") + 4 :]
            self.transport.write(self.reply * heads)


class _Client(asyncio.Protocol):
    """One connection sending its next request once the previous answer is whole."""

    def __init__(self, answer_size: int, batch: list[bytes], done: asyncio.Future[None]) -> None:
        self.answer_size = answer_size  # bytes of one whole answer (checked once)
        self.batch = batch
        self.done = done
        self.got = 0
        self.left = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: Any = transport

    def send(self, count: int) -> None:
        self.left = count
        self.got = 0
        self.transport.write(self.batch[count % len(self.batch)])

    def data_received(self, data: bytes) -> None:
        self.got += len(data)
        while self.got >= self.answer_size and self.left:
            self.got -= self.answer_size
            self.left -= 1
            if self.left:
                self.transport.write(self.batch[self.left % len(self.batch)])
            elif not self.done.done():
                self.done.set_result(None)


async def _answer_size(port: int) -> int:
    """Bytes of one answer of the proxy (its head varies only in Date, a fixed width)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(_request(0))
    head = await reader.readuntil(b"\r\n\r\n")
    length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
    writer.close()
    return len(head) + length


async def measure(size: int, rounds: int, requests: int, connections: int) -> list[float]:
    loop = asyncio.get_running_loop()
    reply = b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nETag: "v1"\r\n'
    reply += b"Cache-Control: max-age=3600\r\nContent-Length: %d\r\n\r\n" % size + b"a" * size
    origin = await loop.create_server(lambda: _Origin(reply), "127.0.0.1", 0)
    port = origin.sockets[0].getsockname()[1]
    text = f"version: 1\norigin: http://127.0.0.1:{port}\ndefaults: {{cache: false}}\n"
    loaded = parse_policy(text, "pass-cost.yaml")
    stores = build_stores(loaded.policy.backends)
    engine = Engine(loaded, stores, OriginClient(loaded.policy.origin))
    http = _server(engine, loaded.policy.server)
    sock = bind(("127.0.0.1", 0), reuse_port=False)
    await http.start(sock)
    proxy_port = sock.getsockname()[1]
    answer = await _answer_size(proxy_port)
    batch = [_request(i) for i in range(URLS)]
    clients = []
    for _ in range(connections):
        _, client = await loop.create_connection(
            lambda: _Client(answer, batch, loop.create_future()), "127.0.0.1", proxy_port
        )
        clients.append(client)
    per_client = requests // connections
    out = []
    for round_ in range(rounds + 1):  # the first round warms the pools
        for client in clients:
            client.done = loop.create_future()
        started = time.process_time()
        for client in clients:
            client.send(per_client)
        await asyncio.wait_for(asyncio.gather(*(c.done for c in clients)), 60)
        if round_:
            out.append((time.process_time() - started) / (per_client * connections) * 1e6)
    for client in clients:
        client.transport.close()
    await http.stop(0)
    await engine.aclose()
    origin.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=1024, help="body bytes")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=8000, help="per round")
    parser.add_argument("--connections", type=int, default=16)
    args = parser.parse_args()
    out = uvloop.run(measure(args.size, args.rounds, args.requests, args.connections))
    print(
        f"pass {args.size} B, {args.connections} connections: {min(out):.2f} µs CPU per "
        f"request (best), {statistics.median(out):.2f} (median of {args.rounds})"
    )


if __name__ == "__main__":
    main()
