"""The realistic scenario (``--scenario real``): many warm URLs, every request its own.

wrk runs ``real.lua``: each request asks one of ``--urls`` distinct paths (uniform or
Zipf), with its own X-Request-Id and traceparent and a client library's headers. Every
URL is warm in every cache of the server before the first round (``warmup``); before
each later run a sample is checked and, if any of it is not a HIT, everything is warmed
again. Each sidecache row runs right beside its peer, and their ratio is that round's:
nginx ``proxy_cache`` with the same workers for memory; nginx 1 worker for the shared
stores; nginx ``proxy_pass`` without a cache, on the same origin, for pass-through.
"""

from __future__ import annotations

import fnmatch
import http.client
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from harness import warmup
from harness.lab import Lab
from harness.load import WrkResult, run_wrk
from harness.procs import cpu_seconds, tree
from harness.servers import origin_requests
from harness.throughput import Load

REAL_LUA = Path(__file__).with_name("real.lua")
BODY = {"1k": ("kb1", "1 KB"), "64k": ("kb64", "64 KB")}


@dataclass(frozen=True)
class RealRow:
    key: str  # what --only matches, e.g. real-sidecache-memory-2w-1k
    label: str
    server: str  # Lab key
    prefix: str  # the URLs are prefix + "<i>.json"
    size: str
    workers: int
    kind: str  # "hit" (must be warm) or "pass"
    peer: str = ""  # key of the row this one is divided by, per round


@dataclass(frozen=True)
class Traffic:
    urls: int
    dist: str  # uniform | zipf
    zipf_s: float = 1.0


@dataclass
class RealSample:
    wrk: WrkResult
    cpu_us: float  # CPU of the server's process tree per request
    store_cpu_us: float | None
    origin_requests: int | None  # origin requests during the run
    hit_after: float | None  # share of a sample answered HIT right after the run


@dataclass
class RealOutcome:
    row: RealRow
    samples: list[RealSample] = field(default_factory=list)
    ratios: list[float] = field(default_factory=list)  # rps / peer rps, per round
    errors: list[str] = field(default_factory=list)
    warm_note: str = ""


# (server, label, workers, kind, peer server, pass-through URLs?)
_SPECS = (
    ("nginx-1w", "nginx proxy_cache, 1 worker", 1, "hit", "", False),
    ("nginx-2w", "nginx proxy_cache, 2 workers", 2, "hit", "", False),
    ("nginx-pass-1w", "nginx proxy_pass (no cache), 1 worker", 1, "pass", "", True),
    ("sidecache-memory-1w", "memory hit, 1 worker", 1, "hit", "nginx-1w", False),
    ("sidecache-memory-2w", "memory hit, 2 workers", 2, "hit", "nginx-2w", False),
    ("sidecache-redis-1w", "Redis hit, 1 worker", 1, "hit", "nginx-1w", False),
    ("sidecache-memcached-1w", "Memcached hit, 1 worker", 1, "hit", "nginx-1w", False),
    (
        "sidecache-tiered-1w",
        "tiered hit (memory L1 + Redis L2), 1 worker",
        1,
        "hit",
        "nginx-1w",
        False,
    ),
    (
        "sidecache-memory-1w",
        "pass-through (cache: false), 1 worker",
        1,
        "pass",
        "nginx-pass-1w",
        True,
    ),
)


def all_rows(sizes: Sequence[str]) -> list[RealRow]:
    rows: list[RealRow] = []
    for size in sizes:
        body, name = BODY[size]
        for server, label, workers, kind, peer, passing in _SPECS:
            prefix = f"/pass/r/{body}/" if passing else f"/r/{body}/"
            key = f"real-{server.replace('memory-1w', 'pass-1w') if passing else server}-{size}"
            peer_key = f"real-{peer}-{size}" if peer else ""
            rows.append(
                RealRow(key, f"{label} · {name}", server, prefix, size, workers, kind, peer_key)
            )
    return rows


def select(rows: Sequence[RealRow], patterns: Sequence[str]) -> list[RealRow]:
    """Rows matching any pattern (glob or substring), plus the peers they are paired with."""
    if not patterns:
        return list(rows)
    globs = [p if any(c in p for c in "*?[") else f"*{p}*" for p in patterns]
    chosen = {r.key for r in rows if any(fnmatch.fnmatch(r.key, g) for g in globs)}
    chosen |= {r.peer for r in rows if r.key in chosen and r.peer}
    return [r for r in rows if r.key in chosen]


def _script_env(row: RealRow, traffic: Traffic) -> dict[str, str]:
    return {
        "BENCH_URLS": str(traffic.urls),
        "BENCH_DIST": traffic.dist,
        "BENCH_ZIPF_S": f"{traffic.zipf_s:g}",
        "BENCH_PREFIX": row.prefix,
    }


def prepare(lab: Lab, row: RealRow, traffic: Traffic, warmed: set[tuple[str, str]]) -> str:
    """Make the row's URLs warm (hit rows) or check they answer (pass rows): '' or why not."""
    server = lab.get(row.server)
    if isinstance(server, str):
        return f"not started: {server}"
    try:
        if row.kind == "pass":
            conn = http.client.HTTPConnection(server.url.removeprefix("http://"), timeout=10)
            try:
                status = warmup.get(conn, f"{row.prefix}0.json").status
            finally:
                conn.close()
            return "" if status == 200 else f"pass-through answered {status}"
        done = (row.server, row.prefix)
        if done in warmed:
            problem = warmup.check(server.url, row.prefix, traffic.urls, row.workers)
            if not problem:
                return ""
            print(f"{row.key}: re-warming ({problem})", file=sys.stderr)
        started = time.monotonic()
        groups, problem = warmup.warm(server.url, row.prefix, traffic.urls, row.workers)
        took = time.monotonic() - started
        print(
            f"{row.key}: warmed {traffic.urls} URLs × {groups} cache(s) in {took:.0f} s",
            file=sys.stderr,
        )
        if not problem:
            warmed.add(done)
        return f"warm-up: {problem}" if problem else ""
    except (warmup.WarmError, OSError, http.client.HTTPException) as exc:
        return f"warm-up: {type(exc).__name__}: {exc}"


def measure(lab: Lab, row: RealRow, load: Load, traffic: Traffic) -> RealSample:
    server = lab.get(row.server)
    assert not isinstance(server, str)  # prepare() said it started
    pids = tree(server.proc.pid)
    store_pids = [pid for store in server.stores for pid in tree(store.pid)]
    origin = lab.started.get("origin")
    cpu0, store0 = cpu_seconds(pids), cpu_seconds(store_pids)
    seen0 = origin_requests(origin) if origin else None
    result = run_wrk(
        server.url,
        load.threads,
        load.connections,
        load.duration,
        script=REAL_LUA,
        script_env=_script_env(row, traffic),
    )
    cpu1, store1 = cpu_seconds(pids), cpu_seconds(store_pids)
    seen1 = origin_requests(origin) if origin else None
    per = 1e6 / max(result.requests, 1)
    hit_after = None
    if row.kind == "hit":
        try:
            hit_after = warmup.hit_share(server.url, row.prefix, traffic.urls)
        except (OSError, http.client.HTTPException):
            hit_after = 0.0
    return RealSample(
        wrk=result,
        cpu_us=(cpu1 - cpu0) * per,
        store_cpu_us=(store1 - store0) * per if store_pids else None,
        # -1: our own stub_status request in between
        origin_requests=None if seen0 is None or seen1 is None else max(seen1 - seen0 - 1, 0),
        hit_after=hit_after,
    )


def pairs(rows: Sequence[RealRow]) -> list[tuple[RealRow, RealRow | None]]:
    """Each sidecache row with its peer; a peer nobody selected pairs with None."""
    by_key = {r.key: r for r in rows}
    out = [(r, by_key.get(r.peer)) for r in rows if r.peer]
    paired = {r.key for r, _ in out} | {p.key for _, p in out if p}
    return out + [(r, None) for r in rows if r.key not in paired]


def _run(lab: Lab, row: RealRow, load: Load, traffic: Traffic, problem: str) -> RealSample | str:
    print(f"{row.key}", end=" ", file=sys.stderr)
    if problem:
        print(f"FAILED {problem.splitlines()[0]}", file=sys.stderr)
        return problem
    try:
        sample = measure(lab, row, load, traffic)
    except (RuntimeError, OSError) as exc:
        print(f"FAILED {exc}", file=sys.stderr)
        return str(exc).splitlines()[0]
    print(
        f"{sample.wrk.rps:,.0f} rps, {sample.cpu_us:.1f} µs CPU/req, origin "
        f"{sample.origin_requests}, HIT after {sample.hit_after}",
        file=sys.stderr,
    )
    time.sleep(0.5)
    return sample


def run_rounds(
    lab: Lab, rows: Sequence[RealRow], load: Load, rounds: int, traffic: Traffic
) -> list[RealOutcome]:
    """Each row runs right beside its peer (both warm first), peer first in odd rounds and
    second in even ones; the ratio of the two adjacent runs is that round's ratio. On a
    machine shared with other work, runs seconds apart see the same load."""
    outcomes = {row.key: RealOutcome(row) for row in rows}
    warmed: set[tuple[str, str]] = set()
    todo = pairs(rows)
    for rnd in range(rounds):
        shift = rnd % len(todo)  # rotate, so no pair always runs first
        for i, (row, peer) in enumerate([*todo[shift:], *todo[:shift]], 1):
            members = [row] if peer is None else [peer, row] if rnd % 2 == 0 else [row, peer]
            problems = {m.key: prepare(lab, m, traffic, warmed) for m in members}
            rps: dict[str, float] = {}
            for m in members:
                print(f"[real {rnd + 1}/{rounds} {i}/{len(todo)}]", end=" ", file=sys.stderr)
                got = _run(lab, m, load, traffic, problems[m.key])
                if isinstance(got, str):
                    outcomes[m.key].errors.append(got)
                else:
                    outcomes[m.key].samples.append(got)
                    rps[m.key] = got.wrk.rps
            if peer is not None and rps.get(row.key) and rps.get(peer.key):
                outcomes[row.key].ratios.append(rps[row.key] / rps[peer.key])
    return list(outcomes.values())


# ---------------------------------------------------------------- table


def _med(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def _f(value: float | None, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def _notes(out: RealOutcome) -> str:
    s, notes = out.samples, []
    if errors := sum(x.wrk.errors for x in s):
        notes.append(f"{errors} errors")
    if out.row.kind == "hit":
        leaks = [x.origin_requests for x in s if x.origin_requests]
        if leaks:
            notes.append(f"origin requests during {len(leaks)}/{len(s)} runs (max {max(leaks)})")
        cold = [x.hit_after for x in s if x.hit_after is not None and x.hit_after < 1.0]
        if cold:
            notes.append(f"sample after the run not all HIT ({min(cold):.0%} HIT)")
    notes += sorted({e.splitlines()[0][:160] for e in out.errors})
    return "; ".join(notes)


def real_table(outcomes: Sequence[RealOutcome]) -> str:
    """One line per sidecache row with its peer's figures beside it; then the peers alone."""
    by_key = {o.row.key: o for o in outcomes}
    head = (
        "| row | rps | peer | peer rps | × peer (median) | × peer (range) | p99 ms "
        "| peer p99 ms | CPU µs/req | peer CPU µs/req | notes |\n"
        "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |\n"
    )
    lines = []
    for out in outcomes:
        if not out.row.peer:
            continue
        peer = by_key.get(out.row.peer)
        s, ps = out.samples, (peer.samples if peer else [])
        store = [x.store_cpu_us for x in s if x.store_cpu_us is not None]
        cpu = _f(_med([x.cpu_us for x in s]), ".1f")
        if store:
            cpu += f" (+{_f(_med(store), '.1f')} store)"
        cells = [
            out.row.label,
            _f(_med([x.wrk.rps for x in s]), ",.0f") if s else "failed",
            peer.row.label.split(" · ")[0] if peer else "—",
            _f(_med([x.wrk.rps for x in ps]), ",.0f"),
            f"**{_f(_med(out.ratios), '.2f')}**",
            f"{min(out.ratios):.2f}–{max(out.ratios):.2f}" if out.ratios else "—",
            _f(_med([x.wrk.p99_ms for x in s]), ".2f"),
            _f(_med([x.wrk.p99_ms for x in ps]), ".2f"),
            cpu,
            _f(_med([x.cpu_us for x in ps]), ".1f"),
            _notes(out),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    refs = [o for o in outcomes if not o.row.peer and _notes(o)]
    tail = "".join(f"\n{o.row.label}: {_notes(o)}" for o in refs)
    return head + "\n".join(lines) + "\n" + (tail + "\n" if tail else "")
