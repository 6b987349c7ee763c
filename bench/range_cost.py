"""What ranges from cache cost the memory-hit path (issue 16 item 4, issue 13).

Run by hand (not part of the suite):

    .venv/bin/python bench/range_cost.py
    mkdir -p /tmp/before && git archive 8802d81^ proxy | tar -x -C /tmp/before
    .venv/bin/python bench/range_cost.py --against /tmp/before

Times ``Engine.answer_now`` (the synchronous hit path: route, key, a memory-store read,
the freshness decision, the answer) on one stored 1 KiB entry, for a plain GET and, on
trees that cut ranges, a GET with ``Range: bytes=0-99``. With ``--against DIR`` each
round runs this tree and DIR (a ``proxy`` package of another commit) in fresh processes,
alternating, and prints the per-round medians side by side: on a noisy machine only
paired rounds say anything.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
POLICY = """
version: 1
origin: http://127.0.0.1:9
backends:
  local: {type: memory, max_size: 64MiB}
defaults: {backend: local, ttl: 3600s}
"""


async def measure(calls: int) -> dict[str, float]:
    """CPU µs per answer_now call, the median of 5 batches, per request kind."""
    from proxy.core.entry import CachedResponse, encode
    from proxy.core.exchange import Exchange
    from proxy.engine.driver import Engine
    from proxy.origin.client import OriginClient
    from proxy.policy.load import parse_policy
    from proxy.stores.factory import build_stores

    loaded = parse_policy(POLICY, "bench.yaml")
    stores = build_stores(loaded.policy.backends)
    engine = Engine(loaded, stores, OriginClient(loaded.policy.origin))
    base = (("Host", "bench"), ("Accept", "*/*"), ("Accept-Encoding", "identity"))
    kinds = {"plain": Exchange.build("GET", "/o/1", "", base, host="bench")}
    ranged = Exchange.build("GET", "/o/1", "", (*base, ("Range", "bytes=0-99")), host="bench")
    ticket = engine.ticket(kinds["plain"])
    assert ticket is not None
    now = time.time()
    entry = CachedResponse(
        status=200,
        headers=(("Content-Type", "application/octet-stream"), ("Cache-Control", "max-age=3600")),
        body=os.urandom(1024),
        body_encoding=None,
        request_time=now,
        response_time=now,
        initial_age=0.0,
        lifetime=3600.0,
    )
    await stores["local"].set(ticket.key, encode(entry), 3600)
    if engine.ticket(ranged) is not None:  # a tree that answers ranges from cache
        kinds["range"] = ranged
    out: dict[str, float] = {}
    for name, ex in kinds.items():
        _, answer = engine.answer_now(ex)
        assert answer is not None, name
        batches = []
        for _ in range(5):
            began = time.process_time()  # CPU time: a preempted process does not count
            for _ in range(calls):
                engine.answer_now(ex)
            batches.append((time.process_time() - began) / calls * 1e6)
        out[name] = statistics.median(batches)
    await engine.aclose()
    return out


def _round(tree: Path, calls: int) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    command = [sys.executable, __file__, "--child", "--calls", str(calls)]
    done = subprocess.run(command, env=env, cwd=tree, capture_output=True, check=True, text=True)
    return dict(json.loads(done.stdout))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--against", type=Path, help="a tree holding another proxy package")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--calls", type=int, default=20000)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(asyncio.run(measure(args.calls))))
        return
    trees = {"this": ROOT} | ({"against": args.against} if args.against else {})
    ratios = []
    for n in range(args.rounds):
        figures = {label: _round(tree, args.calls) for label, tree in trees.items()}
        line = "  ".join(
            f"{label}: " + ", ".join(f"{k} {v:.2f} µs" for k, v in f.items())
            for label, f in figures.items()
        )
        if args.against:
            ratios.append(figures["this"]["plain"] / figures["against"]["plain"])
            line += f"  plain this/against {ratios[-1]:.3f}"
        print(f"round {n + 1}: {line}")
    if ratios:
        print(
            f"plain GET, this/against: median {statistics.median(ratios):.3f}, "
            f"range {min(ratios):.3f}-{max(ratios):.3f}"
        )


if __name__ == "__main__":
    main()
