"""Memory-store footprint: RSS of a real proxy process as its memory store fills.

Run by hand (not part of the suite):

    .venv/bin/python bench/memory_rss.py --entries 200 --size 65536 --max-size 4MiB
    .venv/bin/python bench/memory_rss.py --entries 100000 --size 1024 --max-size 1GiB

Starts an aiohttp origin and ``sidecache run`` on loopback, requests N distinct URLs
of SIZE bytes each (incompressible), and prints RSS before and after with the store's
own byte count (from /proc and from the admin /stats or the store bound).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import port_for
from aiohttp import web

ROOT = Path(__file__).resolve().parents[1]


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--entries", type=int, default=200)
    parser.add_argument("--size", type=int, default=64 * 1024)
    parser.add_argument("--max-size", default="4MiB")
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()

    body = os.urandom(args.size)

    async def handler(request: web.Request) -> web.Response:
        return web.Response(body=body, content_type="application/octet-stream")

    app = web.Application()
    app.router.add_get("/{tail:.*}", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    origin_port = port_for.select_random()
    await web.TCPSite(runner, "127.0.0.1", origin_port).start()

    port, admin = port_for.select_random(), port_for.select_random()
    policy = (
        f"version: 1\norigin: http://127.0.0.1:{origin_port}\n"
        f"backends: {{local: {{type: memory, max_size: {args.max_size}}}}}\n"
        "defaults: {ttl: 1h, max_object_size: 16MiB, compression: {algorithm: none}}\n"
    )
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as handle:
        handle.write(policy)
    command = [sys.executable, "-m", "proxy", "run", "--policy", handle.name]
    command += ["--listen", f"127.0.0.1:{port}", "--admin-listen", f"127.0.0.1:{admin}"]
    proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL)  # noqa: ASYNC220
    try:
        async with aiohttp.ClientSession() as session:
            for _ in range(100):
                try:
                    async with session.get(f"http://127.0.0.1:{admin}/healthz") as r:
                        if r.status == 200:
                            break
                except aiohttp.ClientError:
                    await asyncio.sleep(0.1)
            await asyncio.sleep(0.3)
            before = rss_kib(proc.pid)
            started = time.monotonic()
            sem = asyncio.Semaphore(args.concurrency)

            async def fetch(i: int) -> None:
                async with sem, session.get(f"http://127.0.0.1:{port}/o/{i}") as r:
                    await r.read()

            await asyncio.gather(*(fetch(i) for i in range(args.entries)))
            elapsed = time.monotonic() - started
            after = rss_kib(proc.pid)
            first = await session.get(f"http://127.0.0.1:{port}/o/0")
            last = await session.get(f"http://127.0.0.1:{port}/o/{args.entries - 1}")
            print(f"entries requested: {args.entries} x {args.size} B in {elapsed:.1f}s")
            print(f"store bound: {args.max_size}")
            print(
                f"RSS before: {before / 1024:.1f} MiB, after: {after / 1024:.1f} MiB, "
                f"growth: {(after - before) / 1024:.1f} MiB"
            )
            print(
                f"oldest entry: {first.headers.get('X-Cache')}, "
                f"newest entry: {last.headers.get('X-Cache')}"
            )
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)
        await runner.cleanup()


if __name__ == "__main__":
    asyncio.run(main())
