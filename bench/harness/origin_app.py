"""A counting origin for the stampede scenario (and ``--origin aiohttp``).

Serves a JSON body for any path: 64 KB when the path contains ``kb64``, else ~1 KB.
Paths under ``--slow-prefix`` wait ``--delay`` seconds and carry ``max-age=--slow-max-age``;
the rest answer at once with ``max-age=--max-age``. Every request's arrival time is
recorded per path: ``GET /__stats?prefix=P`` returns them for the paths under P,
``GET /__reset`` clears them.

Run: ``python -m harness.origin_app --port 8000``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

import uvloop
from aiohttp import web


def make_body(size: int) -> bytes:
    """A JSON document of exactly ``size`` bytes (the same bytes the nginx origin serves)."""
    head = b'{"id":12345,"name":"benchmark item","tags":["a","b","c"],"pad":"'
    tail = b'"}\n'
    return head + b"x" * (size - len(head) - len(tail)) + tail


BODIES = {"kb1": make_body(1024), "kb64": make_body(64 * 1024)}


class Origin:
    def __init__(self, slow_prefix: str, delay: float, max_age: int, slow_max_age: int) -> None:
        self.slow_prefix = slow_prefix
        self.delay = delay
        self.max_age = max_age
        self.slow_max_age = slow_max_age
        self.arrivals: dict[str, list[float]] = {}

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        path = request.path
        if path == "/__stats":
            prefix = request.query.get("prefix", "\0")
            paths = {p: t for p, t in self.arrivals.items() if p.startswith(prefix)}
            total = sum(len(v) for v in self.arrivals.values())
            return web.Response(
                body=json.dumps({"paths": paths, "total": total}).encode(),
                content_type="application/json",
            )
        if path == "/__reset":
            self.arrivals.clear()
            return web.Response(text="ok")
        self.arrivals.setdefault(path, []).append(time.monotonic())
        body = BODIES["kb64"] if "kb64" in path else BODIES["kb1"]
        max_age = self.max_age
        if path.startswith(self.slow_prefix):
            max_age = self.slow_max_age
            await asyncio.sleep(self.delay)
        return web.Response(
            body=body,
            headers={"Content-Type": "application/json", "Cache-Control": f"max-age={max_age}"},
        )


async def serve(args: argparse.Namespace) -> None:
    origin = Origin(args.slow_prefix, args.delay, args.max_age, args.slow_max_age)
    # The low-level server: the origin should cost as little as an aiohttp origin can.
    server = web.Server(origin.handle, access_log=None)
    runner = web.ServerRunner(server)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", args.port, backlog=1024)
    await site.start()
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--slow-prefix", default="/stampede/")
    parser.add_argument("--delay", type=float, default=0.3)
    parser.add_argument("--max-age", type=int, default=3600)
    parser.add_argument("--slow-max-age", type=int, default=1)
    uvloop.run(serve(parser.parse_args()))


if __name__ == "__main__":
    main()
