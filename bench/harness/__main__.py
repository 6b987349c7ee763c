"""``bench/run``: the command line. Parses options, runs the scenarios, prints the tables.

Scenarios: ``real`` (the headline: many warm URLs, every request with its own
X-Request-Id/traceparent, paired with nginx), ``throughput`` (identical requests: one
URL, the same bytes every time; every configuration, rounds alternating), ``latency``
(one connection: what each hop adds) and ``stampede`` (many clients on an expiring hot
key, slow origin). Everything started is stopped on exit, error or Ctrl-C.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from types import FrameType

import aiohttp
import uvloop

from harness import real, servers, stampede, throughput
from harness.lab import Lab
from harness.procs import Supervisor

SCENARIOS = ("real", "throughput", "latency", "stampede")
LATENCY_ROWS = ("origin-1k", "nginx-1w-1k", "sidecache-memory-1w-1k", "sidecache-pass-1w-1k")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="bench/run",
        description="sidecache vs nginx proxy_cache (and Varnish) on loopback; see "
        "docs/benchmarks.md.",
    )
    p.add_argument(
        "--scenario",
        action="append",
        choices=SCENARIOS,
        help="real: N warm URLs, each request its own X-Request-Id/traceparent (the "
        "headline); throughput: identical requests (one URL, same bytes every time); "
        "latency; stampede. Repeatable; default: all four",
    )
    p.add_argument("--stampede", action="store_true", help="same as --scenario stampede")
    p.add_argument("--only", default="", help="comma list of row patterns (glob or substring)")
    p.add_argument("--list", action="store_true", help="print the row keys and exit")
    p.add_argument("--duration", type=float, default=10.0, help="seconds per wrk run")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--connections", type=int, default=64)
    p.add_argument("--sizes", default="1k,64k", help="body sizes: 1k, 64k")
    p.add_argument("--workers", default="1,2", help="worker counts for nginx and sidecache")
    p.add_argument("--origin", choices=("nginx", "aiohttp"), default="nginx")
    p.add_argument("--urls", type=int, default=10_000, help="real: distinct URLs, all warm (10000)")
    p.add_argument(
        "--dist",
        choices=("uniform", "zipf"),
        default="uniform",
        help="real: how requests pick a URL (zipf: rank k with weight 1/k^s)",
    )
    p.add_argument("--zipf-s", type=float, default=1.0, help="real: Zipf exponent s (1.0)")
    p.add_argument("--latency-duration", type=float, default=5.0)
    p.add_argument("--clients", type=int, default=200, help="stampede: concurrent clients")
    p.add_argument("--origin-delay", type=float, default=0.3, help="stampede: origin latency")
    p.add_argument("--hot-ttl", type=int, default=2, help="stampede: max-age of the hot key")
    p.add_argument("--stampede-duration", type=float, help="default: --duration")
    p.add_argument(
        "--rev",
        help="benchmark proxy/ as of this git revision (git archive) instead of the working tree",
    )
    p.add_argument("--json", type=Path, help="also write the raw results here")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = p.parse_args(argv)
    args.scenarios = ["stampede"] if args.stampede else (args.scenario or list(SCENARIOS))
    args.patterns = [x for x in args.only.split(",") if x]
    return args


def _version(argv: list[str]) -> str:
    if shutil.which(argv[0]) is None:
        return "absent"
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    return (done.stdout + done.stderr).strip().splitlines()[0]


def machine(rev: str | None) -> dict[str, str]:
    cpu = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    git = ["git", "-C", str(servers.REPO)]
    git += ["rev-parse", "--short", rev] if rev else ["describe", "--always", "--dirty"]
    commit = subprocess.run(git, capture_output=True, text=True, check=False).stdout.strip()
    commit += " (git archive)" if rev else " (working tree)"
    return {
        "cpu": f"{cpu} × {os.cpu_count()}",
        "kernel": platform.release(),
        "load average at start": " ".join(Path("/proc/loadavg").read_text().split()[:3]),
        "python": platform.python_version(),
        "aiohttp / uvloop": f"{aiohttp.__version__} / {uvloop.__version__}",
        "sidecache commit": commit,
        "nginx": _version(["nginx", "-v"]),
        "varnish": _version(["varnishd", "-V"]),
        "redis": _version(["redis-server", "--version"]),
        "memcached": _version(["memcached", "-V"]),
        "wrk": _version(["wrk", "-v"]),
    }


def _terminate(signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwinds through the finally that stops every server


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sizes = [s for s in args.sizes.split(",") if s]
    workers = [int(n) for n in args.workers.split(",") if n]
    if "1" not in args.workers.split(","):
        workers.insert(0, 1)  # nginx 1 worker is every ratio's reference
    if args.list:
        print("\n".join(r.key for r in real.all_rows(sizes)))
        print("\n".join(r.key for r in throughput.all_rows(sizes, workers)))
        print("\nstampede: " + " ".join(c.key for c in stampede.CASES))
        return 0
    missing = servers.ensure_tools()
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _terminate)
    # Even when started in the background (SIGINT ignored), Ctrl-C/kill -INT stops cleanly.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    workdir = Path(tempfile.mkdtemp(prefix="sidecache-bench-"))
    workdir.chmod(0o755)  # nginx and Varnish workers run as unprivileged users
    sup = Supervisor(workdir)
    lab = Lab(sup, origin_kind=args.origin, have_varnish="varnishd" not in missing)
    info = machine(args.rev)
    results: dict[str, object] = {"machine": info, "argv": sys.argv[1:]}
    out = ["## Machine", "", *(f"- {k}: {v}" for k, v in info.items()), ""]
    started = time.monotonic()
    try:
        if args.rev:
            lab.sidecache_src = servers.checkout(sup, args.rev)
        if "real" in args.scenarios:
            out += _real(lab, args, sizes, results)
        if "throughput" in args.scenarios:
            out += _identical(lab, args, sizes, workers, results)
        if "latency" in args.scenarios:
            out += _latency(lab, args, results)
        if "stampede" in args.scenarios:
            out += _stampede(lab, args, results)
    finally:
        sup.stop_all()
        if args.keep:
            print(f"kept {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    print(f"done in {time.monotonic() - started:.0f} s", file=sys.stderr)
    print("\n".join(out))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))
    return 0


def _real(
    lab: Lab, args: argparse.Namespace, sizes: list[str], results: dict[str, object]
) -> list[str]:
    rows = real.select(real.all_rows(sizes), args.patterns)
    if not rows:
        return []
    load = throughput.Load(args.threads, args.connections, args.duration)
    traffic = real.Traffic(args.urls, args.dist, args.zipf_s)
    print(f"real: {len(rows)} rows × {args.rounds} rounds", file=sys.stderr)
    outcomes = real.run_rounds(lab, rows, load, args.rounds, traffic)
    results["real"] = [asdict(o) for o in outcomes]
    dist = "uniform" if args.dist == "uniform" else f"Zipf s={args.zipf_s:g}"
    return [
        f"## Realistic: {args.urls:,} warm URLs ({dist}), each request with its own "
        f"X-Request-Id and traceparent (wrk -t{args.threads} -c{args.connections} "
        f"-d{args.duration:g}s, ratios paired per round, median of {args.rounds})",
        "",
        real.real_table(outcomes),
    ]


def _identical(
    lab: Lab,
    args: argparse.Namespace,
    sizes: list[str],
    workers: list[int],
    results: dict[str, object],
) -> list[str]:
    rows = throughput.select(throughput.all_rows(sizes, workers), args.patterns)
    if not rows:
        return []
    load = throughput.Load(args.threads, args.connections, args.duration)
    print(f"throughput: {len(rows)} rows × {args.rounds} rounds", file=sys.stderr)
    outcomes = throughput.run_rounds(lab, rows, load, args.rounds)
    results["throughput"] = [asdict(o) for o in outcomes]
    return [
        "## Identical requests (one URL, same bytes every time) "
        f"(wrk -t{args.threads} -c{args.connections} -d{args.duration:g}s, "
        f"median of {args.rounds}, origin: {args.origin})",
        "",
        throughput.throughput_table(outcomes),
    ]


def _latency(lab: Lab, args: argparse.Namespace, results: dict[str, object]) -> list[str]:
    lat_rows = [r for r in throughput.all_rows(["1k"], [1]) if r.key in LATENCY_ROWS]
    load = throughput.Load(1, 1, args.latency_duration)
    outcomes = throughput.run_rounds(lab, lat_rows, load, args.rounds)
    results["latency"] = [asdict(o) for o in outcomes]
    return [
        f"## Latency at low load (wrk -t1 -c1 -d{args.latency_duration:g}s, "
        f"median of {args.rounds})",
        "",
        throughput.latency_table(outcomes),
    ]


def _stampede(lab: Lab, args: argparse.Namespace, results: dict[str, object]) -> list[str]:
    lab.reset()
    cases = [c for c in stampede.CASES if _matches(c.key, args.patterns)]
    duration = args.stampede_duration or args.duration
    res = stampede.run_stampede(lab, cases, args.clients, duration, args.origin_delay, args.hot_ttl)
    results["stampede"] = [{**asdict(r), "case": r.case.key} for r in res]
    return [
        f"## Stampede ({args.clients} clients, max-age={args.hot_ttl}, "
        f"origin latency {args.origin_delay * 1000:.0f} ms, {duration:g} s)",
        "",
        stampede.stampede_table(res),
    ]


def _matches(key: str, patterns: list[str]) -> bool:
    return not patterns or any(fnmatch.fnmatch(key, p if "*" in p else f"*{p}*") for p in patterns)


if __name__ == "__main__":
    sys.exit(main())
