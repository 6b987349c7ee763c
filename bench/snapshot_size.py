"""Warm-restart snapshot: time to write and to load a memory store, and RSS across it.

Run by hand (not part of the suite):

    .venv/bin/python bench/snapshot_size.py --total 100MiB --value-size 10KiB
    .venv/bin/python bench/snapshot_size.py --total 100MiB --value-size 1KiB

Two fresh processes, as a restart is. The first fills a ``MemoryStore`` with
``--total`` bytes of values (incompressible, a route tag and three path tags each, keys
as the engine makes them), prints its RSS, then writes the snapshot the way SIGTERM does
(``Snapshots.stop``) while a ticker task measures how long the event loop is held (the
longest gap between 1 ms ticks). The second loads it the way a start does
(``Snapshots.load``, before the proxy port accepts) and prints the time and its RSS.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from proxy.ops.snapshot import Snapshots  # noqa: E402
from proxy.policy.load import LoadedPolicy, parse_policy  # noqa: E402
from proxy.stores.base import Store  # noqa: E402
from proxy.stores.factory import build_stores  # noqa: E402
from proxy.units import parse_size  # noqa: E402

POLICY = """\
version: 1
origin: http://127.0.0.1:9
backends: {local: {type: memory, max_size: 4GiB}}
server: {snapshot: {path: "PATH", interval: 5m}}
routes: [{name: items, match: {prefix: /items}}]
"""


def rss_mib() -> float:
    with open("/proc/self/statm") as statm:
        pages = int(statm.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 1024**2


def setup(path: str) -> tuple[LoadedPolicy, dict[str, Store], Snapshots]:
    loaded = parse_policy(POLICY.replace("PATH", path))
    stores = build_stores(loaded.policy.backends)
    assert loaded.policy.server.snapshot is not None
    snapshots = Snapshots(loaded.policy.server.snapshot, None, lambda: (loaded, stores))
    return loaded, stores, snapshots


async def longest_gap(done: asyncio.Event) -> float:
    worst, last = 0.0, time.perf_counter()
    while not done.is_set():
        await asyncio.sleep(0.001)
        now = time.perf_counter()
        worst, last = max(worst, now - last), now
    return worst


async def write(path: str, total: int, size: int) -> dict[str, float]:
    _, stores, snapshots = setup(path)
    store = stores["local"]
    count = total // size
    for i in range(count):
        tags = ["r:items", "p:/items", f"p:/items/{i // 100}", f"p:/items/{i // 100}/{i}"]
        await store.set(f"sc:items:{i:032x}", os.urandom(size), 3600, tags)
    before = rss_mib()
    done = asyncio.Event()
    ticker = asyncio.create_task(longest_gap(done))
    began = time.perf_counter()
    written = await snapshots.stop(time.monotonic() + 60)
    seconds = time.perf_counter() - began
    done.set()
    assert written is not None
    return {
        "entries": written.entries,
        "file_mib": written.size / 1024**2,
        "write_s": seconds,
        "longest_loop_gap_ms": await ticker * 1000,
        "rss_before_restart_mib": before,
    }


async def load(path: str) -> dict[str, float]:
    _, stores, snapshots = setup(path)
    began = time.perf_counter()
    result = await snapshots.load()
    seconds = time.perf_counter() - began
    assert result is not None
    return {
        "loaded": result.entries,
        "load_s": seconds,
        "rss_after_load_mib": rss_mib(),
        "peak_rss_during_load_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "store_mib": (stores["local"].stats().bytes or 0) / 1024**2,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--total", default="100MiB", help="bytes of values")
    parser.add_argument("--value-size", default="10KiB")
    parser.add_argument("--phase", choices=["write", "load"], help=argparse.SUPPRESS)
    parser.add_argument("--path", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase == "write":
        total, size = parse_size(args.total), parse_size(args.value_size)
        print(json.dumps(asyncio.run(write(args.path, total, size))))
        return
    if args.phase == "load":
        print(json.dumps(asyncio.run(load(args.path))))
        return
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "snap")
        figures: dict[str, float] = {}
        for phase in ("write", "load"):
            command = [sys.executable, __file__, "--phase", phase, "--path", path]
            command += ["--total", args.total, "--value-size", args.value_size]
            out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
            figures.update(json.loads(out.strip().splitlines()[-1]))
    for name, value in figures.items():
        print(f"{name:28} {value:10.3f}" if isinstance(value, float) else f"{name:28} {value}")


if __name__ == "__main__":
    main()
