"""Redis index bytes against entry bytes under churn (issue 14 item 2).

Run by hand (not part of the suite; a smaller version is in
tests/stores/test_redis_integrity.py):

    .venv/bin/python bench/redis_index.py --entries 100000 --rewrites 5
    .venv/bin/python bench/redis_index.py --entries 100000 --rewrites 5 --tags unique
    git show ae7c409:proxy/stores/redis.py > /tmp/redis_before.py
    .venv/bin/python bench/redis_index.py --entries 100000 --against /tmp/redis_before.py

Starts a redis-server of its own (no persistence, no maxmemory) on a free port, writes
ENTRIES keys of SIZE bytes through ``RedisStore.set`` with three tags each, every key
REWRITES times over, then reads every key Redis holds: its ``MEMORY USAGE`` summed by
kind (``redis_layout.describe``: entries, generations; ``index`` for the tag sets of the
layout before generations), keys without a TTL, and ``INFO memory``'s ``used_memory``
before and after. Tags: ``engine`` (what the engine gives an entry of ``/products/N``:
the route tag, ``p:/products`` and ``p:/products/N``; one of the three per entry),
``unique`` (three tags of its own per entry: the worst case), ``none`` (untagged: the
entries alone, to read ``used_memory``'s share of the index off the difference).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import os
import shutil
import subprocess
import tempfile
import time
from collections import Counter
from typing import Any

from redis.asyncio import Redis

from proxy.stores.redis import RedisStore
from proxy.stores.redis_layout import describe


def tags_of(i: int, kind: str) -> list[str]:
    if kind == "none":
        return []
    if kind == "unique":
        return [f"t:product:{i}", f"t:offer:{i}", f"t:stock:{i}"]
    return ["r:products", "p:/products", f"p:/products/{i}"]


def store_class(path: str | None) -> Any:
    if path is None:
        return RedisStore
    spec = importlib.util.spec_from_file_location("redis_before", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.RedisStore


async def measure(port: int, args: argparse.Namespace) -> None:
    raw = Redis(port=port)
    await raw.flushall()
    start = (await raw.info("memory"))["used_memory"]
    store = store_class(args.against)("bench", f"redis://127.0.0.1:{port}/0", connect_timeout=5.0)
    value = os.urandom(args.size)
    began = time.perf_counter()
    for _ in range(args.rewrites):
        for first in range(0, args.entries, 500):
            await asyncio.gather(
                *(
                    store.set(f"sc:products:{i:032x}", value, 3600, tags_of(i, args.tags))
                    for i in range(first, min(first + 500, args.entries))
                )
            )
    took = time.perf_counter() - began
    used = (await raw.info("memory"))["used_memory"]
    usage: Counter[str] = Counter()
    count: Counter[str] = Counter()
    no_ttl = 0
    keys = [key async for key in raw.scan_iter(count=1000)]
    for first in range(0, len(keys), 1000):
        batch = keys[first : first + 1000]
        pipe = raw.pipeline(transaction=False)
        for key in batch:
            pipe.memory_usage(key, samples=0)
            pipe.pttl(key)
        answers = await pipe.execute()
        for key, size, ttl in zip(batch, answers[::2], answers[1::2], strict=True):
            kind, _ = describe(key.decode(errors="replace"))
            usage[kind] += size or 0
            count[kind] += 1
            no_ttl += ttl == -1
    await store.aclose()
    await raw.aclose()
    entry_bytes = usage["entry"]
    index_bytes = usage["generation"] + usage["index"]
    print(f"{args.entries} entries x {args.size} B, tags {args.tags}, {args.rewrites} writes each")
    print(f"  written in {took:.1f} s ({args.against or 'this tree'})")
    for kind in sorted(count):
        print(f"  {kind:10} {count[kind]:8d} keys {usage[kind]:12d} B (MEMORY USAGE)")
    print(f"  index / entries: {index_bytes / max(entry_bytes, 1):.1%}")
    print(f"  keys without TTL: {no_ttl}")
    print(f"  used_memory: {start} -> {used} (+{used - start} B)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--rewrites", type=int, default=5)
    parser.add_argument("--tags", choices=["engine", "unique", "none"], default="engine")
    parser.add_argument("--against", help="another version of proxy/stores/redis.py")
    args = parser.parse_args()
    server = shutil.which("redis-server") or "/usr/bin/redis-server"
    with tempfile.TemporaryDirectory() as datadir:
        port = 16400 + os.getpid() % 1000
        command = [server, "--port", str(port), "--save", "", "--appendonly", "no"]
        process = subprocess.Popen([*command, "--dir", datadir], stdout=subprocess.DEVNULL)
        try:
            time.sleep(0.5)
            asyncio.run(measure(port, args))
        finally:
            process.terminate()
            process.wait()


if __name__ == "__main__":
    main()
