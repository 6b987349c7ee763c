"""In-process micro benchmark of the synchronous memory hit (``Engine.answer_now``).

No sockets, no HTTP parsing: N warm URLs in a memory store, requests drawn at random,
each with its own X-Request-Id and traceparent and the headers a client library sends
(as ``bench/run --scenario real`` does). Prints the CPU µs per answered hit, best of R
rounds.

    .venv/bin/python bench/micro.py [--urls 10000] [--requests 50000] [--rounds 5]

Runs the ``proxy`` package found first on ``sys.path``: with ``PYTHONPATH=DIR`` it
measures another checkout (e.g. a ``git worktree`` of an older commit), so a change
can be compared with its parent on the same machine, one right after the other.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time

from proxy.core.entry import CachedResponse, encode
from proxy.core.exchange import Exchange
from proxy.core.keys import derive_key
from proxy.engine.driver import Engine
from proxy.origin.client import OriginClient
from proxy.policy.load import parse_policy
from proxy.stores.factory import build_stores

POLICY = """
version: 1
origin: http://127.0.0.1:9
backends:
  local: {type: memory, max_size: 256MiB}
defaults: {backend: local, ttl: 1h}
routes:
  - name: api
    match: {prefix: /}
"""


async def warm(engine: Engine, urls: int, size: int) -> None:
    route = engine.loaded.routes[0]
    store = engine.stores["local"]
    now = time.time()
    body = b"x" * size
    for i in range(urls):
        entry = CachedResponse(
            status=200,
            headers=(
                ("Content-Type", "application/json"),
                ("Cache-Control", "max-age=3600"),
                ("ETag", f'"{i}"'),
                ("Date", "Wed, 02 Dec 2026 12:00:00 GMT"),
            ),
            body=body,
            body_encoding=None,
            request_time=now,
            response_time=now,
            initial_age=0.0,
            lifetime=3600.0,
        )
        key = derive_key(route.name, "bench", f"/item/{i}", "", route.key, {})
        await store.set(key, encode(entry), 3600.0)


def requests(urls: int, count: int) -> list[Exchange]:
    rng = random.Random(7)
    out = []
    for n in range(count):
        path = f"/item/{rng.randrange(urls)}"
        headers = (
            ("Host", "bench"),
            ("User-Agent", "python-httpx/0.28.1"),
            ("Accept", "application/json"),
            ("Accept-Encoding", "gzip, deflate"),
            ("X-Request-Id", f"{n:032x}"),
            ("traceparent", f"00-{n:032x}-{n:016x}-01"),
        )
        out.append(Exchange.build("GET", path, "", headers, host="bench"))
    return out


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--urls", type=int, default=10_000)
    parser.add_argument("--requests", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--size", type=int, default=1024)
    args = parser.parse_args()
    loaded = parse_policy(POLICY, "micro.yaml")
    engine = Engine(
        loaded, build_stores(loaded.policy.backends), OriginClient("http://127.0.0.1:9")
    )
    await warm(engine, args.urls, args.size)
    batch = requests(args.urls, args.requests)
    best = float("inf")
    for _ in range(args.rounds):
        began = time.process_time()  # this process's CPU: less shaken by a busy machine
        for ex in batch:
            _, answer = engine.answer_now(ex)
            if answer is None or answer.cache != "HIT":
                raise SystemExit(f"not a hit: {ex.path}")
        best = min(best, time.process_time() - began)
    print(f"answer_now: {best / len(batch) * 1e6:.2f} µs of CPU per hit (best of {args.rounds})")
    await engine.aclose()


if __name__ == "__main__":
    asyncio.run(main())
