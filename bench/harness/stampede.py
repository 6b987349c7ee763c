"""The stampede scenario: many clients on one hot key that keeps expiring, slow origin.

The origin (``origin_app``) answers ``/stampede/*`` after ``delay`` seconds with
``max-age=ttl`` and records each request's arrival. wrk keeps ``clients`` connections
busy on one hot key; afterwards the arrivals are grouped into expiries (a new group
starts after a quiet gap of half the TTL): origin requests per expiry. A second pass
("cold") moves all clients to a never-seen key every second: origin requests per key.
"""

from __future__ import annotations

import json
import sys
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from harness import servers
from harness.lab import Lab
from harness.load import WrkResult, fetch, run_wrk
from harness.procs import StartError
from harness.servers import Server

MODES = ("expiring", "cold")
LOCK = "proxy_cache_lock on; proxy_cache_lock_timeout 5s;"
STALE = "proxy_cache_use_stale updating; proxy_cache_background_update on;"


@dataclass(frozen=True)
class Case:
    key: str
    label: str
    start: Callable[[Lab, Server, str], Server]  # (lab, slow origin, key) -> server


def _nginx(extra: str) -> Callable[[Lab, Server, str], Server]:
    return lambda lab, origin, key: servers.start_nginx_cache(lab.sup, key, origin, 1, extra)


def _sidecache(store: str, workers: int, swr: bool = False) -> Callable[[Lab, Server, str], Server]:
    def start(lab: Lab, origin: Server, key: str) -> Server:
        redis_port, stores = None, []
        if store == "redis":
            proc, redis_port = lab.store("redis")
            stores.append(proc)
        routes: list[dict[str, object]] = []
        if swr:
            routes.append(
                {"name": "hot", "match": {"prefix": "/stampede/"}, "stale_while_revalidate": "30s"}
            )
        policy = servers.sidecache_policy(origin, store, redis_port, None, routes)
        return servers.start_sidecache(lab.sup, key, policy, workers, stores, lab.sidecache_src)

    return start


def _varnish(lab: Lab, origin: Server, key: str) -> Server:
    if not lab.have_varnish:
        raise StartError("varnishd is not installed")
    return servers.start_varnish(lab.sup, key, origin)


CASES = (
    Case("nginx-nolock", "nginx proxy_cache, no lock", _nginx("")),
    Case("nginx-lock", "nginx proxy_cache_lock on", _nginx(LOCK)),
    Case(
        "nginx-lock-stale",
        "nginx lock + use_stale updating, background_update",
        _nginx(LOCK + STALE),
    ),
    Case("varnish", "Varnish, default (waiting list, 10 s grace)", _varnish),
    Case("sidecache-memory-1w", "sidecache memory, 1 worker", _sidecache("memory", 1)),
    Case("sidecache-memory-2w", "sidecache memory, 2 workers", _sidecache("memory", 2)),
    Case("sidecache-redis-2w", "sidecache redis, 2 workers", _sidecache("redis", 2)),
    Case(
        "sidecache-swr-1w",
        "sidecache memory + stale_while_revalidate 30s",
        _sidecache("memory", 1, True),
    ),
)


@dataclass
class StampedeResult:
    case: Case
    mode: str  # "expiring": one hot key; "cold": a new key every second
    wrk: WrkResult | None = None
    events: int = 0  # expiries of the hot key, or cold keys requested
    origin_requests: int = 0
    max_per_event: int = 0
    error: str = ""


def group_expiries(times: Sequence[float], gap: float) -> list[int]:
    """Sizes of the bursts in ``times``: a burst ends after ``gap`` seconds of quiet."""
    sizes: list[int] = []
    last = None
    for t in sorted(times):
        if last is None or t - last > gap:
            sizes.append(0)
        sizes[-1] += 1
        last = t
    return sizes


def _arrivals(origin: Server, prefix: str) -> dict[str, list[float]]:
    url = f"{origin.url}/__stats?prefix={prefix}"
    with urllib.request.urlopen(url, timeout=5) as resp:
        return dict(json.loads(resp.read())["paths"])


def _drive(
    origin: Server, server: Server, result: StampedeResult, load: tuple[int, float], ttl: float
) -> None:
    clients, duration = load
    base = f"/stampede/{result.case.key}-{result.mode}"
    hot = base + ".json"
    if result.mode == "expiring":
        status, _, _ = fetch(server.url + hot)  # the cold miss: not part of the count
        if status != 200:
            result.error = f"warm-up: status {status}"
            return
    start = time.monotonic()  # CLOCK_MONOTONIC: the origin's clock too
    cold = base + "-" if result.mode == "cold" else None
    result.wrk = run_wrk(server.url + hot, 2, clients, duration, timeout=10, cold_prefix=cold)
    seen = {p: [t for t in ts if t >= start] for p, ts in _arrivals(origin, base).items()}
    if result.mode == "expiring":
        sizes = group_expiries(seen.get(hot, []), ttl / 2)
    else:
        sizes = [len(ts) for p, ts in seen.items() if p != hot and ts]
    result.events, result.origin_requests = len(sizes), sum(sizes)
    result.max_per_event = max(sizes, default=0)


def run_case(
    lab: Lab, origin: Server, case: Case, load: tuple[int, float], ttl: float
) -> list[StampedeResult]:
    results = [StampedeResult(case, mode) for mode in MODES]
    try:
        # Own names (logs, work dirs) apart from the throughput servers of the same kind.
        server = case.start(lab, origin, f"stampede-{case.key}")
    except (StartError, OSError) as exc:
        for result in results:
            result.error = f"not started: {type(exc).__name__}: {exc}"
        return results
    try:
        for result in results:
            try:
                _drive(origin, server, result, load, ttl)
            except (OSError, RuntimeError, ValueError) as exc:
                result.error = f"{type(exc).__name__}: {exc}"
    finally:
        lab.sup.stop(server.proc)
    return results


def run_stampede(
    lab: Lab, cases: Sequence[Case], clients: int, duration: float, delay: float, ttl: float
) -> list[StampedeResult]:
    origin = servers.start_aiohttp_origin(lab.sup, delay, round(ttl))
    results = []
    for case in cases:
        for res in run_case(lab, origin, case, (clients, duration), ttl):
            summary = f"{res.origin_requests} origin requests / {res.events} {res.mode} events"
            print(f"[stampede] {case.key} {res.mode}: {res.error or summary}", file=sys.stderr)
            results.append(res)
    lab.sup.stop(origin.proc)
    return results


def stampede_table(results: Sequence[StampedeResult]) -> str:
    head = (
        "| configuration | key | expiries / keys | origin requests | per expiry or key (mean) "
        "| (max) | client rps | p50 ms | p99 ms | errors |\n"
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |\n"
    )
    lines = []
    for r in results:
        mode = "hot, expiring" if r.mode == "expiring" else "new each second"
        if r.wrk is None:
            error = r.error.splitlines()[0][:160] if r.error else ""
            lines.append(f"| {r.case.label} | {mode} | failed | | | | | | | {error} |")
            continue
        mean = r.origin_requests / r.events if r.events else 0.0
        errors = f"{r.wrk.errors} ({r.wrk.timeouts} timeouts)" if r.wrk.errors else ""
        cells = [
            r.case.label,
            mode,
            str(r.events),
            str(r.origin_requests),
            f"{mean:.1f}",
            str(r.max_per_event),
            f"{r.wrk.rps:,.0f}",
            f"{r.wrk.p50_ms:.2f}",
            f"{r.wrk.p99_ms:.1f}",
            errors + r.error,
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return head + "\n".join(lines) + "\n"
