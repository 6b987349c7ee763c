"""Memory-store footprint: RSS of a real proxy process as its memory store fills.

Run by hand (not part of the suite):

    .venv/bin/python bench/memory_rss.py --entries 200 --size 65536 --max-size 4MiB
    .venv/bin/python bench/memory_rss.py --entries 100000 --size 1024 --max-size 1GiB
    .venv/bin/python bench/memory_rss.py --entries 100000 --size 1024 --max-size 1GiB \
        --hits --breakdown
    git show HEAD~1:proxy/stores/memory.py > /tmp/before.py
    .venv/bin/python bench/memory_rss.py --store-only --entries 100000 --against /tmp/before.py

Starts an aiohttp origin and ``sidecache run`` on loopback, requests N distinct URLs
of SIZE bytes each (incompressible), and prints RSS before and after with the store's
own figures (entries, bytes, from the admin /metrics). ``--hits`` requests each URL a
second time right after the first (a hit while it is stored: hits fill the engine's
and the HTTP server's per-entry caches, which may keep entries the store has evicted).
``--breakdown`` runs the proxy under a small wrapper that, on SIGUSR1, walks the store
and the engine's and the HTTP server's per-entry structures and reports what each holds
(bytes as allocated: object sizes rounded up as pymalloc and malloc do); a structure's
row counts only what the rows above it did not.

``--store-only`` skips the proxy: it fills a ``MemoryStore`` in a fresh process the way
the engine does (a 1,218-byte envelope per 1 KiB body, a route tag and the path tags
of ``/o/N``), prints the RSS growth per entry and times ``get_now`` (hits on random
keys, hits on a few hot keys, misses); ``--against FILE`` does the same for another
version of ``proxy/stores/memory.py``, alternating rounds, for a side-by-side figure.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import port_for
from aiohttp import web

ROOT = Path(__file__).resolve().parents[1]
MiB = 1024 * 1024
ENVELOPE = 1218  # what proxy/core/entry.py stores for a 1 KiB body from the bench origin

# Runs in the proxy process (python -c). On SIGUSR1 it writes a JSON breakdown of the
# per-entry structures to $SIDECACHE_BREAKDOWN. Objects are counted once, in the order
# below: what the engine or the server holds beyond the store shows as theirs.
WRAPPER = r"""
import gc, json, os, runpy, signal, sys, types
SKIP = (type, types.ModuleType, types.FunctionType, types.BuiltinFunctionType,
        types.MethodType, types.CodeType, types.FrameType)

def allocated(obj):
    n = sys.getsizeof(obj)
    return (n + 15) // 16 * 16 if n <= 512 else (n + 8 + 15) // 16 * 16

def walk(root, seen, stop):
    sizes = {"envelopes": [0, 0], "other": [0, 0]}
    stack = [root]
    while stack:
        obj = stack.pop()
        if id(obj) in seen or id(obj) in stop or isinstance(obj, SKIP):
            continue
        seen.add(id(obj))
        row = sizes["envelopes" if isinstance(obj, bytes) and len(obj) > 256 else "other"]
        row[0] += 1
        row[1] += allocated(obj)
        stack.extend(gc.get_referents(obj))
        if isinstance(obj, dict):
            stack.extend(obj)  # gc does not report the str keys of a dict
    return sizes

def dump(signum, frame):
    from proxy.engine.driver import Engine
    from proxy.server.listener import HttpServer
    from proxy.stores.memory import MemoryStore
    objs = gc.get_objects()
    stores = [o for o in objs if isinstance(o, MemoryStore)]
    engines = [o for o in objs if isinstance(o, Engine)]
    servers = [o for o in objs if isinstance(o, HttpServer)]
    stop = {id(o) for o in stores + engines + servers}
    seen, rows = set(), []
    for owner, names in ((stores, None), (engines, ("_decoded", "_recent")),
                         (servers, ("_wire", "memo"))):
        for obj in owner:
            for name in names or [n for n in vars(obj) if n != "_clock"]:
                if hasattr(obj, name):
                    part = walk(getattr(obj, name), seen, stop)
                    label = f"{type(obj).__name__}.{name}"
                    try:
                        length = len(getattr(obj, name))
                    except TypeError:
                        length = None
                    rows.append([label, length, part])
    figures = [[s.name, s.stats().entries, s.stats().bytes] for s in stores]
    path = os.environ["SIDECACHE_BREAKDOWN"]
    with open(path + ".tmp", "w") as handle:
        json.dump({"rows": rows, "stores": figures}, handle)
    os.replace(path + ".tmp", path)

signal.signal(signal.SIGUSR1, dump)
sys.argv[0] = "sidecache"
runpy.run_module("proxy", run_name="__main__", alter_sys=True)
"""


def load_store(path: str, name: str) -> Any:
    """The MemoryStore class of one version of proxy/stores/memory.py."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.MemoryStore


def workload(entries: int) -> Iterator[tuple[str, bytes, list[str]]]:
    """What the engine stores for GET /o/N: its key, a 1,218-byte envelope of a 1 KiB
    body and the route and path tags, all new objects as each request makes them."""
    sys.path.insert(0, str(ROOT))
    from proxy.core.keys import derive_key, path_tags, route_tag
    from proxy.policy.load import KeySpec

    spec, template = KeySpec(), os.urandom(ENVELOPE)
    for i in range(entries):
        key = derive_key("default", "127.0.0.1:8080", f"/o/{i}", "", spec, {})
        yield (
            key,
            template[:-4] + i.to_bytes(4, "big"),
            [route_tag("default"), *path_tags(f"/o/{i}")],
        )


def store_only_child(path: str, entries: int, bound: int) -> None:
    """In a fresh process: fill one version's store, print its memory figures as JSON."""
    import gc

    store = load_store(path, "candidate")("local", bound)
    list(workload(1))  # imports done before the first reading
    gc.collect()
    before = rss_kib(os.getpid())
    worst = 0.0
    last: list[str] = []

    async def fill() -> None:
        nonlocal worst
        for key, value, tags in workload(entries):
            started = time.perf_counter()
            await store.set(key, value, 3600, tags)
            worst = max(worst, time.perf_counter() - started)
            last[:] = [*last[-15:], key]

    asyncio.run(fill())
    gc.collect()
    growth = (rss_kib(os.getpid()) - before) * 1024
    stats = store.stats()
    held = stats.entries or 1
    figures = {"held": held, "growth": growth / held, "bytes": stats.bytes / held}
    # the longest single read among 4 per entry held on 16 hot keys (a read that
    # reorders a dict may meet its compaction)
    worst_read, get_now = 0.0, store.get_now
    for key in last * (held // 4):
        started = time.perf_counter()
        get_now(key)
        worst_read = max(worst_read, time.perf_counter() - started)
    print(json.dumps(figures | {"worst": worst * 1e3, "worst_read": worst_read * 1e3}))


def paired_timings(paths: dict[str, str], entries: int, bound: int) -> None:
    """Both versions in one process, driven in lockstep with the same inputs, batches
    alternating: the ratios hold up on a noisy machine where separate runs do not."""
    import random
    import statistics

    stores = {label: load_store(path, label)("local", bound) for label, path in paths.items()}
    items = list(workload(entries))
    first, second = list(stores)

    def race(op: str, batches: list[list[Any]], run: Any) -> None:
        spent = {label: 0.0 for label in stores}
        ratios = []
        for n, batch in enumerate(batches):
            took = {}
            for label in (first, second) if n % 2 else (second, first):
                started = time.perf_counter()
                run(stores[label], batch)
                took[label] = time.perf_counter() - started
                spent[label] += took[label]
            ratios.append(took[first] / took[second])
        count = sum(len(b) for b in batches)
        print(
            f"  {op:<16} {spent[first] / count * 1e9:>8.0f} {spent[second] / count * 1e9:>8.0f}"
            f" {statistics.median(ratios):>13.2f}"
            f" {sum(r < 1 for r in ratios) / len(ratios):>14.0%}"
        )

    def sets(store: Any, batch: list[tuple[str, bytes, list[str]]]) -> None:
        for key, value, tags in batch:
            coroutine = store.set(key, value, 3600, tags)
            with contextlib.suppress(StopIteration):
                coroutine.send(None)  # set never awaits: one step runs it

    def reads(store: Any, batch: list[str]) -> None:
        get_now = store.get_now
        for key in batch:
            get_now(key)

    print(
        f"  {'ns per call':<16} {first:>8} {second:>8} {'median ratio':>13} {first + ' faster':>14}"
    )
    race("set", [items[i : i + 500] for i in range(0, entries, 500)], sets)
    held = min(store.stats().entries for store in stores.values())
    keys = [key for key, _, _ in items[entries - held :]]
    # 4 reads per entry held, so the figures include the dicts' compactions: a read
    # that reorders a dict may meet one (O(entries), once per as many reorderings)
    reads_n = max(100_000, 4 * held) // 1000 * 1000
    random.seed(8)
    fresh = [key[:-1] + key[-1] for key in random.choices(keys, k=reads_n)]  # new strings
    hot = [key[:-1] + key[-1] for key in keys[-16:]] * (reads_n // 16)
    misses = [key[:-1] + "g" for key in random.choices(keys, k=reads_n)]
    for op, probes in (
        ("get_now random", fresh),
        ("get_now hot 16", hot),
        ("get_now miss", misses),
    ):
        race(op, [probes[i : i + 1000] for i in range(0, len(probes), 1000)], reads)


def store_only(args: argparse.Namespace) -> None:
    from proxy.units import parse_size

    paths = {"in tree": str(ROOT / "proxy" / "stores" / "memory.py")}
    if args.against:
        paths["against"] = args.against
    bound = parse_size(args.max_size) if args.max_size else 1 << 40
    print(
        f"{args.entries} sets of a {ENVELOPE}-byte envelope (tags r:default, p:/o, p:/o/N), "
        f"store bound {args.max_size or 'none'}"
    )
    print(
        f"  {'store':<8} {'held':>7} {'RSS B/entry':>12} {'counted B/entry':>16}"
        f" {'worst set ms':>13} {'worst read ms':>14}"
    )
    for label, path in paths.items():
        command = [sys.executable, __file__, "--store-only-child", path]
        command += ["--entries", str(args.entries), "--max-size", str(bound)]
        row = json.loads(subprocess.run(command, capture_output=True, check=True).stdout)
        print(
            f"  {label:<8} {row['held']:>7} {row['growth']:>12.0f} {row['bytes']:>16.0f}"
            f" {row['worst']:>13.1f} {row['worst_read']:>14.1f}"
        )
    if args.against:
        paired_timings(paths, args.entries, bound)


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


async def store_figures(session: aiohttp.ClientSession, admin: int) -> tuple[int, int]:
    """(entries, bytes) of the memory store, from /metrics (refreshed once a second)."""
    await asyncio.sleep(1.2)
    async with session.get(f"http://127.0.0.1:{admin}/metrics") as r:
        text = await r.text()
    found = []
    for name in ("sidecache_store_entries", "sidecache_store_bytes"):
        match = re.search(rf"^{name}\{{[^}}]*\}} ([0-9.e+]+)$", text, re.M)
        found.append(int(float(match.group(1))) if match else -1)
    return found[0], found[1]


def read_breakdown(proc: subprocess.Popen[bytes], path: Path) -> dict[str, Any]:
    path.unlink(missing_ok=True)
    proc.send_signal(signal.SIGUSR1)
    for _ in range(600):
        if path.exists():
            break
        time.sleep(0.1)
    data: dict[str, Any] = json.loads(path.read_text())
    return data


async def breakdown(proc: subprocess.Popen[bytes], path: Path, entries: int) -> None:
    data = await asyncio.to_thread(read_breakdown, proc, path)
    print(f"  {'structure':<24} {'len':>8} {'objects':>9} {'MiB':>8} {'B/entry':>8}")
    total = 0
    for label, length, part in data["rows"]:
        for kind, (count, size) in part.items():
            if not count:
                continue
            total += size
            name = label if kind == "other" else f"{label} (envelopes)"
            print(
                f"  {name:<24} {length if length is not None else '':>8} {count:>9} "
                f"{size / MiB:>8.1f} {size / max(entries, 1):>8.0f}"
            )
    print(f"  {'total':<24} {'':>8} {'':>9} {total / MiB:>8.1f} {total / max(entries, 1):>8.0f}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--entries", type=int, default=200)
    parser.add_argument("--size", type=int, default=64 * 1024)
    parser.add_argument("--max-size", help="the store bound (4MiB; --store-only: none)")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--hits", action="store_true", help="request each URL twice in a row")
    parser.add_argument("--breakdown", action="store_true", help="per-structure sizes")
    parser.add_argument("--store-only", action="store_true", help="in-process store figures")
    parser.add_argument("--against", help="another memory.py for --store-only")
    parser.add_argument("--store-only-child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.store_only_child:
        store_only_child(args.store_only_child, args.entries, int(args.max_size))
    elif args.store_only:
        store_only(args)
    else:
        args.max_size = args.max_size or "4MiB"
        asyncio.run(fill_proxy(args))


async def fill_proxy(args: argparse.Namespace) -> None:

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
    workdir = Path(tempfile.mkdtemp(prefix="memory-rss-"))
    (workdir / "policy.yaml").write_text(policy)
    dump_path = workdir / "breakdown.json"
    launcher = ["-c", WRAPPER] if args.breakdown else ["-m", "proxy"]
    command = [sys.executable, *launcher, "run", "--policy", str(workdir / "policy.yaml")]
    command += ["--listen", f"127.0.0.1:{port}", "--admin-listen", f"127.0.0.1:{admin}"]
    env = {**os.environ, "SIDECACHE_BREAKDOWN": str(dump_path)}
    proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, env=env)  # noqa: ASYNC220
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
            sem = asyncio.Semaphore(args.concurrency)
            labels: dict[str, int] = {}

            async def fetch(i: int) -> None:
                async with sem:
                    for _ in range(2 if args.hits else 1):
                        async with session.get(f"http://127.0.0.1:{port}/o/{i}") as r:
                            await r.read()
                        label = r.headers.get("X-Cache", "?")
                        labels[label] = labels.get(label, 0) + 1

            started = time.monotonic()
            await asyncio.gather(*(fetch(i) for i in range(args.entries)))
            elapsed = time.monotonic() - started
            after = rss_kib(proc.pid)
            entries, held = await store_figures(session, admin)
            print(f"entries requested: {args.entries} x {args.size} B in {elapsed:.1f}s {labels}")
            print(f"store bound: {args.max_size}; store holds {entries} entries, {held} B")
            bodies = entries * args.size
            print(
                f"RSS before: {before / 1024:.1f} MiB, after: {after / 1024:.1f} MiB, "
                f"growth: {(after - before) / 1024:.1f} MiB "
                f"({(after - before) * 1024 / max(bodies, 1):.2f}x the bodies held, "
                f"{(after - before) * 1024 / max(entries, 1):.0f} B per entry held)"
            )
            if args.breakdown:
                await breakdown(proc, dump_path, entries)
            first = await session.get(f"http://127.0.0.1:{port}/o/0")
            last = await session.get(f"http://127.0.0.1:{port}/o/{args.entries - 1}")
            print(
                f"oldest entry: {first.headers.get('X-Cache')}, "
                f"newest entry: {last.headers.get('X-Cache')}"
            )
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)
        await runner.cleanup()


if __name__ == "__main__":
    main()
