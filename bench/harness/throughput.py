"""Throughput and low-load latency rows: each configuration once per round, rounds alternating.

A row is one (server, path) pair. Per round it is warmed until the path is a HIT, then
driven by wrk while /proc gives the CPU its process tree spent and, after the run, its
RSS. Ratios are paired: a row's rps over the reference's rps *in the same round*, then
the median over rounds, which cancels most of this machine's drift between runs.
"""

from __future__ import annotations

import fnmatch
import statistics
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from harness.lab import Lab
from harness.load import WrkResult, fetch, run_wrk, warm
from harness.procs import cpu_seconds, rss_bytes, tree
from harness.servers import Server, origin_requests

STORES = ("memory", "redis", "memcached", "tiered")
SIZES = {"1k": ("/kb1.json", "1 KB"), "64k": ("/kb64.json", "64 KB")}


@dataclass(frozen=True)
class Row:
    key: str  # what --only matches, e.g. sidecache-redis-2w-1k
    label: str
    server: str  # Lab key
    path: str
    size: str
    kind: str  # "hit", "pass" or "origin"


@dataclass(frozen=True)
class Load:
    threads: int
    connections: int
    duration: float


@dataclass
class Sample:
    wrk: WrkResult
    cpu_per_10k: float
    store_cpu_per_10k: float | None
    rss: int
    origin_hits: int | None
    after: str = ""  # X-Cache (or an error) of one request right after the run
    note: str = ""


@dataclass
class Outcome:
    row: Row
    samples: list[Sample] = field(default_factory=list)
    # per round: this row's rps / the reference row's rps from the same round
    nginx_ratios: list[float] = field(default_factory=list)
    origin_ratios: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def _plural(n: int) -> str:
    return f"{n} worker" + ("s" if n > 1 else "")


def all_rows(sizes: Sequence[str], workers: Sequence[int]) -> list[Row]:
    rows: list[Row] = []
    for size in sizes:
        path, body = SIZES[size]
        rows.append(
            Row(f"origin-{size}", f"origin direct · {body}", "origin", path, size, "origin")
        )
        for n in workers:
            label = f"nginx proxy_cache, {_plural(n)} · {body}"
            rows.append(Row(f"nginx-{n}w-{size}", label, f"nginx-{n}w", path, size, "hit"))
        rows.append(Row(f"varnish-{size}", f"Varnish · {body}", "varnish", path, size, "hit"))
        for store in STORES:
            for n in workers:
                label = f"sidecache {store} hit, {_plural(n)} · {body}"
                server = f"sidecache-{store}-{n}w"
                rows.append(Row(f"{server}-{size}", label, server, path, size, "hit"))
        for n in workers:
            label = f"sidecache miss (pass-through), {_plural(n)} · {body}"
            server = f"sidecache-memory-{n}w"
            rows.append(
                Row(f"sidecache-pass-{n}w-{size}", label, server, "/pass" + path, size, "pass")
            )
    return rows


def select(rows: Sequence[Row], patterns: Sequence[str]) -> list[Row]:
    """Rows matching any pattern (a glob, or a substring), plus the references they need."""
    if not patterns:
        return list(rows)
    globs = [p if any(c in p for c in "*?[") else f"*{p}*" for p in patterns]
    chosen = {r.key for r in rows if any(fnmatch.fnmatch(r.key, g) for g in globs)}
    for row in rows:
        if row.key in chosen and row.kind == "hit":
            chosen.add(f"nginx-1w-{row.size}")
        if row.key in chosen and row.kind == "pass":
            chosen.update({f"nginx-1w-{row.size}", f"origin-{row.size}"})
    return [r for r in rows if r.key in chosen]


def measure(lab: Lab, row: Row, load: Load) -> Sample | str:
    server = lab.get(row.server)
    if isinstance(server, str):
        return f"not started: {server}"
    url = server.url + row.path
    problem = warm(url, expect_hit=row.kind == "hit")
    if problem:
        return f"warm-up: {problem}"
    pids = tree(server.proc.pid)
    store_pids = [pid for store in server.stores for pid in tree(store.pid)]
    cpu0, store0 = cpu_seconds(pids), cpu_seconds(store_pids)
    origin = lab.started.get("origin")
    seen0 = origin_requests(origin) if origin else None
    result = run_wrk(url, load.threads, load.connections, load.duration)
    cpu1, store1 = cpu_seconds(pids), cpu_seconds(store_pids)
    seen1 = origin_requests(origin) if origin else None
    rss = rss_bytes(tree(server.proc.pid))
    per = 1e4 / max(result.requests, 1)
    sample = Sample(
        wrk=result,
        cpu_per_10k=(cpu1 - cpu0) * per,
        store_cpu_per_10k=(store1 - store0) * per if store_pids else None,
        rss=rss,
        # -1: our own stub_status request in between
        origin_hits=None if seen0 is None or seen1 is None else max(seen1 - seen0 - 1, 0),
    )
    sample.note = _check_after(server, row, sample)
    return sample


def _check_after(server: Server, row: Row, sample: Sample) -> str:
    """The progress line's remarks; records what a request right after the run saw."""
    if row.kind == "hit":
        try:
            _, headers, _ = fetch(server.url + row.path)
            sample.after = headers.get("x-cache", "(none)")
        except OSError as exc:
            sample.after = f"{type(exc).__name__}"
    notes = []
    if sample.wrk.errors:
        notes.append(f"{sample.wrk.errors} errors")
    if sample.origin_hits:
        notes.append(f"{sample.origin_hits} origin requests")
    if sample.after and not sample.after.upper().startswith("HIT"):
        notes.append(f"X-Cache after run: {sample.after}")
    return "; ".join(notes)


def run_rounds(lab: Lab, rows: Sequence[Row], load: Load, rounds: int) -> list[Outcome]:
    outcomes = {row.key: Outcome(row) for row in rows}
    for rnd in range(rounds):
        # Rotate the order each round so no row always runs first (or right after another).
        shift = rnd % len(rows)
        order = [*rows[shift:], *rows[:shift]]
        per_round: dict[str, float] = {}
        for i, row in enumerate(order, 1):
            print(f"[round {rnd + 1}/{rounds} {i}/{len(rows)}] {row.key}", end=" ", file=sys.stderr)
            sample = measure(lab, row, load)
            if isinstance(sample, str):
                print(f"FAILED {sample.splitlines()[0]}", file=sys.stderr)
                outcomes[row.key].errors.append(sample)
                continue
            print(f"{sample.wrk.rps:,.0f} rps {sample.note}", file=sys.stderr)
            outcomes[row.key].samples.append(sample)
            per_round[row.key] = sample.wrk.rps
            time.sleep(0.5)
        for row in rows:
            if row.key not in per_round:
                continue
            nginx = per_round.get(f"nginx-1w-{row.size}")
            origin = per_round.get(f"origin-{row.size}")
            if nginx:
                outcomes[row.key].nginx_ratios.append(per_round[row.key] / nginx)
            if origin and row.kind in ("pass", "origin"):
                outcomes[row.key].origin_ratios.append(per_round[row.key] / origin)
    return list(outcomes.values())


# ---------------------------------------------------------------- tables


def _median(values: Iterable[float]) -> float | None:
    values = list(values)
    return statistics.median(values) if values else None


def _fmt(value: float | None, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def _notes(out: Outcome) -> list[str]:
    """Problems summed up over rounds: errors, origin traffic on hit rows, lost HITs."""
    s, n, notes = out.samples, len(out.samples), []
    if errors := sum(x.wrk.errors for x in s):
        notes.append(f"{errors} errors")
    leaks = [x.origin_hits for x in s if x.origin_hits and x.origin_hits > x.wrk.requests / 1000]
    if out.row.kind == "hit" and leaks:
        notes.append(f"origin requests in {len(leaks)}/{n} runs (max {max(leaks)})")
    misses = [x for x in s if x.after and not x.after.upper().startswith("HIT")]
    if misses:
        notes.append(f"not a HIT right after {len(misses)}/{n} runs ({misses[0].after})")
    notes += sorted({e.splitlines()[0][:120] for e in out.errors})
    return notes


def throughput_table(outcomes: Sequence[Outcome]) -> str:
    head = (
        "| configuration | rps (median) | p50 ms | p99 ms | × nginx 1w | × origin "
        "| CPU s / 10k req | store CPU s / 10k | RSS MiB | notes |\n"
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |\n"
    )
    lines = []
    for out in outcomes:
        s = out.samples
        notes = _notes(out)
        if not s:
            lines.append(f"| {out.row.label} | failed | | | | | | | | {'; '.join(notes)} |")
            continue
        rss = max(x.rss for x in s) / 2**20
        stores = [x.store_cpu_per_10k for x in s if x.store_cpu_per_10k is not None]
        cells = [
            out.row.label,
            _fmt(_median(x.wrk.rps for x in s), ",.0f"),
            _fmt(_median(x.wrk.p50_ms for x in s), ".2f"),
            _fmt(_median(x.wrk.p99_ms for x in s), ".2f"),
            _fmt(_median(out.nginx_ratios), ".2f"),
            _fmt(_median(out.origin_ratios), ".2f") if out.row.kind != "hit" else "",
            _fmt(_median(x.cpu_per_10k for x in s), ".3f"),
            _fmt(_median(stores), ".3f") if stores else "",
            f"{rss:.0f}",
            "; ".join(notes),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return head + "\n".join(lines) + "\n"


def latency_table(outcomes: Sequence[Outcome]) -> str:
    """Low load (one connection): what each hop adds to a request's latency."""
    base = next((o for o in outcomes if o.row.kind == "origin" and o.samples), None)
    base_p50 = _median(x.wrk.p50_ms for x in base.samples) if base else None
    head = (
        "| configuration | rps (median) | p50 ms | p99 ms | p50 added vs origin direct ms "
        "| notes |\n"
        "| --- | ---: | ---: | ---: | ---: | --- |\n"
    )
    lines = []
    for out in outcomes:
        s = out.samples
        notes = _notes(out)
        if not s:
            lines.append(f"| {out.row.label} | failed | | | | {'; '.join(notes)} |")
            continue
        p50 = _median(x.wrk.p50_ms for x in s)
        added = None if base_p50 is None or p50 is None or out is base else p50 - base_p50
        cells = [
            out.row.label,
            _fmt(_median(x.wrk.rps for x in s), ",.0f"),
            _fmt(p50, ".3f"),
            _fmt(_median(x.wrk.p99_ms for x in s), ".3f"),
            _fmt(added, "+.3f"),
            "; ".join(notes),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return head + "\n".join(lines) + "\n"
