"""Soak: one worker, ``--minutes`` at ``--load`` of the measured maximum, with a key space
several times larger than the memory store, so it evicts all the time.

    bench/soak/run                  # 10 minutes at 80%
    bench/soak/run --minutes 2      # a quick look

Sampled every 5 s: the worker's RSS, open file descriptors and sockets (from /proc),
its asyncio tasks, client connections and the engine's bounded maps (``soak.probe``),
the memory store's bytes and entries (/metrics); per second: requests, errors, p50/p99.
Results: ``bench/soak/results/soak-<stamp>.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from chaos.lab import PYTHON, ROOT, Lab, export, free_port, http_get, revision, wait_port
from chaos.report import percentile

POLICY = """\
version: 1
origin: http://127.0.0.1:{origin}
backends:
  local: {{type: memory, max_size: {max_size}}}
  redis: {{type: redis, url: "redis://127.0.0.1:{redis}/0"}}
defaults:
  backend: local
  ttl: 60s
routes:
  - {{name: redis, match: {{prefix: /r}}, backend: redis}}
  - {{name: local, match: {{prefix: /l}}}}
  - {{name: pass, match: {{prefix: /p}}, cache: false}}
"""


def metric(text: str, name: str, label: str = "") -> float | None:
    for line in text.splitlines():
        if line.startswith(name) and label in line:
            return float(line.rsplit(" ", 1)[1])
    return None


def sockets(pid: int) -> int:
    try:
        links = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
    except OSError:
        return 0
    return sum(link.startswith("socket:") for link in links)


class Sampler(threading.Thread):
    def __init__(self, pid: int, admin: int, every: float) -> None:
        super().__init__(daemon=True)
        self.pid, self.admin, self.every = pid, admin, every
        self.rows: list[dict[str, Any]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        from chaos.lab import open_fds, rss_bytes

        while not self.stop.wait(self.every):
            text = http_get(f"http://127.0.0.1:{self.admin}/metrics")[1].decode()
            self.rows.append({
                "t": time.monotonic(),
                "rss": rss_bytes(self.pid),
                "fds": open_fds(self.pid),
                "sockets": sockets(self.pid),
                "store_bytes": metric(text, "sidecache_store_bytes", 'backend="local"'),
                "store_entries": metric(text, "sidecache_store_entries", 'backend="local"'),
                "evictions": metric(text, "sidecache_store_evictions_total", 'backend="local"'),
            })  # fmt: skip


def drive(lab: Lab, port: int, name: str, seconds: float, rate: float, args: Any) -> dict:
    out = lab.workdir / f"load-{name}.json"
    proc = lab.python(
        f"load-{name}", "chaos.load", "--port", str(port), "--rate", f"{rate:g}",
        "--seconds", f"{seconds:g}", "--connections", str(args.connections), "--out", str(out),
        "--keys", str(args.keys), "--routes", "l,r", "--mix", "80,0,10,10",
        "--seed", str(int(time.time())),
    )  # fmt: skip
    assert proc.popen is not None
    proc.popen.wait(seconds + 120)
    return json.loads(out.read_text())


def per_minute(load: dict, samples: list[dict], probes: list[dict], began: float) -> list[dict]:
    rows = []
    starts, lat, status, error = load["start"], load["latency_ms"], load["status"], load["error"]
    minutes = int((max(starts) - began) // 60) + 1 if starts else 0
    for m in range(minutes):
        lo, hi = began + 60 * m, began + 60 * (m + 1)
        idx = [i for i, t in enumerate(starts) if lo <= t < hi]
        window = [s for s in samples if lo <= s["t"] < hi]
        probed = [p for p in probes if lo <= p["t"] < hi]
        last = window[-1] if window else {}
        rows.append({
            "minute": m + 1,
            "rps": round(len(idx) / 60),
            "errors": sum(1 for i in idx if status[i] == 0 or status[i] >= 500),
            "error_types": dict(
                Counter(error[i] or str(status[i]) for i in idx if not 0 < status[i] < 500)
            ),
            "p50_ms": round(percentile([lat[i] for i in idx], 0.5), 1),
            "p99_ms": round(percentile([lat[i] for i in idx], 0.99), 1),
            "rss_mib": round(last.get("rss", 0) / 2**20, 1),
            "rss_max_mib": round(max((s["rss"] for s in window), default=0) / 2**20, 1),
            "fds_max": max((s["fds"] for s in window), default=0),
            "sockets_max": max((s["sockets"] for s in window), default=0),
            "tasks_max": max((p["tasks"] for p in probed), default=0),
            "connections_max": max((p["connections"] for p in probed), default=0),
            "decoded_max": max((p.get("decoded", 0) for p in probed), default=0),
            "uncacheable_max": max((p.get("uncacheable", 0) for p in probed), default=0),
            "store_mib": round((last.get("store_bytes") or 0) / 2**20, 1),
            "store_entries": int(last.get("store_entries") or 0),
            "evictions": int(last.get("evictions") or 0),
        })  # fmt: skip
    return rows


def _errors(row: dict) -> str:
    kinds = ", ".join(f"{k} {v}" for k, v in sorted(row["error_types"].items()))
    return f"{row['errors']} ({kinds})" if kinds else str(row["errors"])


def markdown(summary: dict) -> str:
    lines = [
        f"sidecache at {summary['revision']}, 1 worker; memory store {summary['max_size']}; "
        f"{summary['keys']} keys per cached route (memory and Redis), mix hot/cold/pass 80/10/10; "
        f"max {summary['max_rps']:.0f} req/s closed-loop, driven at {summary['rate']:.0f} req/s "
        f"for {summary['minutes']} min.",
        "",
        "| minute | req/s | errors | p50 ms | p99 ms | RSS MiB (max) | fds max | sockets max | "
        "tasks max | connections max | store MiB | store entries | evictions |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in summary["minutes_table"]:
        lines.append(
            f"| {r['minute']} | {r['rps']} | {_errors(r)} | {r['p50_ms']} | {r['p99_ms']} "
            f"| {r['rss_mib']} ({r['rss_max_mib']}) | {r['fds_max']} | {r['sockets_max']} "
            f"| {r['tasks_max']} | {r['connections_max']} | {r['store_mib']} "
            f"| {r['store_entries']} | {r['evictions']} |"
        )
    v = summary["verdict"]
    lines += ["", "| check | value | holds |", "|---|---|---|"]
    for name, (value, holds) in v.items():
        lines.append(f"| {name} | {value} | {'yes' if holds else 'NO'} |")
    return "\n".join(lines) + "\n"


def verdict(rows: list[dict], max_size: int) -> dict[str, tuple[str, bool]]:
    """Leaks show as growth from the early settled minutes to the last ones; pools
    (origin, Redis) make fds and tasks fluctuate within a band, which is not growth."""
    settled = rows[1:] if len(rows) > 2 else rows  # minute 1 is warm-up
    third = max(1, len(settled) // 3)
    early, late = settled[:third], settled[-third:]
    rss = [r["rss_mib"] for r in settled]
    base = rss[0] if rss else 0
    spread = max(abs(x - base) / base for x in rss) if base else 0

    def growth(field: str) -> tuple[int, int]:
        return max((r[field] for r in early), default=0), max((r[field] for r in late), default=0)

    fds, tasks = growth("fds_max"), growth("tasks_max")
    # beyond client connections, sockets are the origin and Redis pools: bounded by their
    # sizes (256 and 64 by default) plus a few files; a leak would pass that bound
    own = [r["fds_max"] - r["connections_max"] for r in settled]
    bound = 256 + 64 + 64
    store = max((r["store_mib"] for r in rows), default=0)
    errors = sum(r["errors"] for r in rows)
    return {
        "RSS within ±10% of minute 2": (
            f"{min(rss, default=0)}–{max(rss, default=0)} MiB ({spread:.1%})",
            spread <= 0.10,
        ),
        "open fds: first third → last third (max)": (f"{fds[0]} → {fds[1]}", fds[1] <= fds[0] + 8),
        "fds beyond client connections ≤ pools + 64": (
            f"{min(own, default=0)}–{max(own, default=0)} (bound {bound})",
            max(own, default=0) <= bound,
        ),
        "asyncio tasks: first third → last third (max)": (
            f"{tasks[0]} → {tasks[1]}",
            tasks[1] <= tasks[0] + 16,
        ),
        "memory store within max_size": (
            f"{store} MiB of {max_size / 2**20:.0f} MiB",
            store <= max_size / 2**20,
        ),
        "client errors": (str(errors), errors == 0),
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        prog="bench/soak/run",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--load", type=float, default=0.8)
    parser.add_argument("--rate", type=float, default=0, help="fixed req/s (no calibration)")
    parser.add_argument("--keys", type=int, default=60000)
    parser.add_argument("--max-size", default="32MiB")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--rev", default="HEAD", help="git revision to run, or 'worktree'")
    parser.add_argument("--out", default=str(ROOT / "bench" / "soak" / "results"))
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()  # fmt: skip
    # A background job inherits SIGINT ignored, and SIGTERM would skip the ``finally``
    # that stops every process this run started: both become a clean exit.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    workdir = Path(tempfile.mkdtemp(prefix="sidecache-soak-"))
    lab = Lab(workdir)
    try:
        src = export(args.rev, workdir / "src")
        ports = {name: free_port() for name in ("redis", "origin", "proxy", "admin")}
        lab.redis(ports["redis"])
        lab.python("origin", "chaos.origin", "--port", str(ports["origin"]))
        wait_port(ports["redis"])
        wait_port(ports["origin"])
        policy = workdir / "policy.yaml"
        policy.write_text(POLICY.format(max_size=args.max_size, **ports))
        probe_file = workdir / "probe.jsonl"
        argv = [PYTHON, "-m", "soak.probe", str(probe_file), "--", "run", "--policy", str(policy)]
        argv += ["--listen", f"127.0.0.1:{ports['proxy']}"]
        argv += ["--admin-listen", f"127.0.0.1:{ports['admin']}"]
        worker = lab.spawn("sidecache", argv, src)
        wait_port(ports["admin"])
        wait_port(ports["proxy"])
        max_size = int(metric_size(args.max_size))
        drive(lab, ports["proxy"], "warm", 20, 0, args)
        maximum = 0.0
        rate = args.rate
        if not rate:
            data = drive(lab, ports["proxy"], "max", 15, 0, args)
            maximum = sum(1 for s in data["status"] if s) / 15
            rate = round(maximum * args.load)
        print(f"max {maximum:.0f} req/s; soaking at {rate} req/s for {args.minutes} min",
              flush=True)  # fmt: skip
        sampler = Sampler(worker.pid, ports["admin"], 5.0)
        sampler.start()
        began = time.monotonic()
        load = drive(lab, ports["proxy"], "soak", args.minutes * 60, rate, args)
        sampler.stop.set()
        sampler.join()
        probes = [json.loads(line) for line in probe_file.read_text().splitlines()]
        rows = per_minute(load, sampler.rows, probes, began)
        summary = {
            "revision": revision(args.rev), "max_size": args.max_size, "keys": args.keys,
            "max_rps": maximum, "rate": rate, "minutes": args.minutes,
            "minutes_table": rows, "verdict": verdict(rows, max_size),
            "corrupt_bodies": len(load["corrupt"]), "samples": sampler.rows, "probes": probes,
        }  # fmt: skip
        stamp = time.strftime("%Y%m%d-%H%M%S")
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / f"soak-{stamp}.json").write_text(json.dumps(summary, indent=1))
        (out / f"soak-{stamp}.md").write_text(markdown(summary))
        print(markdown(summary))
        print(f"body mismatches: {summary['corrupt_bodies']}")
        return 0
    finally:
        lab.stop_all()
        if args.keep:
            print(f"logs kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def metric_size(text: str) -> float:
    sys.path.insert(0, str(ROOT))
    from proxy.units import parse_size

    return parse_size(text)


if __name__ == "__main__":
    sys.exit(main())
