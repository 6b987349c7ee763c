"""``GET /stats`` and ``sidecache report``: per-route figures and the advice rules, end
to end against a live worker, and rule by rule on hand-made figures."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from typing import Any

import orjson

from proxy.ops.report import advise, build_stats, render
from tests.conftest import ROOT, FakeClock, MakeProxy, Origin
from tests.ops.conftest import StartProxy, fetch

POLICY = """
defaults: {ttl: 60s}
routes:
  - name: hot
    match: {prefix: /hot}
  - name: unique
    match: {prefix: /unique}
  - name: never
    match: {prefix: /never}
  - name: live
    match: {prefix: /live}
    cache: false
"""


def report(*args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "proxy", "report", *args]
    return subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=30)


async def test_report_flags_the_never_hit_routes(live_proxy: StartProxy, origin: Origin):
    proxy = await live_proxy(POLICY)
    for _ in range(10):
        await proxy.get("/hot/1")
    for i in range(25):
        await proxy.get(f"/unique/{i}")  # a new key every time: never a hit
    await proxy.get("/live/now")
    stats = (await fetch("GET", proxy.admin_url + "/stats")).json()
    hot = next(r for r in stats["routes"] if r["route"] == "hot")
    assert (hot["requests"], hot["hits"], hot["misses"]) == (10, 9, 1)
    assert hot["hit_ratio"] == 0.9
    assert hot["stored_objects"] == 1
    assert hot["mean_object_bytes"] == hot["stored_bytes"] > 0
    assert hot["origin_fetches"] == 1
    assert hot["origin_time_saved_seconds"] > 0
    rules = {(a["route"], a["rule"]) for a in stats["advice"]}
    assert ("never", "unused") not in rules  # seconds after start: not judged yet
    assert ("unique", "never-hit") in rules
    assert not [a for a in stats["advice"] if a["route"] in ("hot", "live", "default")]

    result = await asyncio.to_thread(report, "--admin", proxy.admin_url)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "route" in out.splitlines()[2]
    assert "[unused]" not in out
    assert "! unique [never-hit]: 0 hits in 25 cacheable requests" in out
    hot_row = next(line for line in out.splitlines() if line.startswith("hot "))
    assert "90.0%" in hot_row

    as_json = await asyncio.to_thread(report, "--admin", proxy.admin_url, "--json")
    rules_again = {(a["route"], a["rule"]) for a in orjson.loads(as_json.stdout)["advice"]}
    assert rules_again == rules


async def test_report_without_a_proxy_fails_cleanly():
    result = await asyncio.to_thread(report, "--admin", "127.0.0.1:9")
    assert result.returncode == 1
    assert "cannot read http://127.0.0.1:9/stats" in result.stderr


async def test_repeat_requests_after_expiry_advise_a_longer_ttl(
    make_proxy: MakeProxy, origin: Origin, fake_clock: FakeClock
):
    proxy = await make_proxy("defaults: {ttl: 10s}\n", clock=fake_clock)
    for i in range(12):
        await proxy.get(f"/p/{i}")
    fake_clock.advance(45)  # every key comes back, 45s after it was stored
    for i in range(12):
        assert (await proxy.get(f"/p/{i}")).headers["X-Cache"] == "MISS"
    engine = proxy.engine
    stats = build_stats(engine.meter.families(), engine.loaded, fake_clock.time())
    route = stats["routes"][0]
    assert (route["repeat_within_ttl"], route["repeat_after_ttl"]) == (0, 12)
    assert route["repeat_gap_mean_seconds"] == 45
    (advice,) = [a for a in stats["advice"] if a["rule"] == "ttl-too-short"]
    assert "12 of 12 repeat requests came after the entry expired" in advice["advice"]
    assert "TTL 10s" in advice["advice"]


def figures(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "route": "r",
        "in_policy": True,
        "cache": True,
        "ttl_seconds": 60.0,
        "max_object_size": 1024 * 1024,
        "requests": 1000,
        "hits": 900,
        "stale": 0,
        "misses": 100,
        "bypass": 0,
        "hit_ratio": 0.9,
        "stored_objects": 100,
        "stored_bytes": 100_000,
        "largest_object_bytes": 2000,
        "too_large": 0,
        "not_stored": {},
        "repeat_within_ttl": 50,
        "repeat_after_ttl": 0,
        "repeat_gap_mean_seconds": None,
    }
    return {**base, **overrides}


RULES: list[tuple[dict[str, Any], set[str]]] = [
    (figures(), set()),
    (figures(requests=0, hits=0, misses=0, hit_ratio=None), {"unused"}),
    (figures(route="default", requests=0, hits=0, misses=0, hit_ratio=None), set()),
    (figures(cache=False, requests=0, hits=0, misses=0), set()),
    (figures(hits=0, misses=30, hit_ratio=0.0), {"never-hit"}),
    (figures(hits=0, misses=19, hit_ratio=0.0), set()),  # too few requests to judge
    (figures(hits=5, misses=195, hit_ratio=0.025), {"low-hit-ratio"}),
    (figures(hits=5, misses=45, hit_ratio=0.1), set()),  # under 100 requests
    (
        figures(repeat_within_ttl=3, repeat_after_ttl=12, repeat_gap_mean_seconds=90.0),
        {"ttl-too-short"},
    ),
    (figures(repeat_within_ttl=30, repeat_after_ttl=12), set()),
    (figures(too_large=3), {"over-size-limit"}),
    (figures(largest_object_bytes=900_000), {"near-size-limit"}),
    (figures(hits=600, stale=300), {"stale-share"}),
]


def test_advice_rules():
    for route, expected in RULES:
        found = {a["rule"] for a in advise([route], 3600.0)}
        assert found == expected, (route, found)


def test_unused_waits_for_a_grace_period():
    quiet = figures(route="quiet", requests=0, hits=0, misses=0, hit_ratio=None)
    busy = figures(requests=999)
    assert advise([quiet, busy], 599.0) == []  # 10 minutes, or 1,000 requests elsewhere
    assert {a["rule"] for a in advise([quiet, busy], 600.0)} == {"unused"}
    (found,) = advise([quiet, figures(requests=1000)], 5.0)
    assert found["rule"] == "unused"
    assert "(1000 requests to other routes)" in found["advice"]


def test_ttl_advice_names_the_ttl_entries_got():
    late = figures(repeat_within_ttl=3, repeat_after_ttl=12, repeat_gap_mean_seconds=400.0)
    (advice,) = advise([{**late, "stored_ttl_mean_seconds": 300.0}], 3600.0)
    assert "TTL 5m" in advice["advice"]  # the origin's 300 s, not the route's 60 s


def test_render_draws_a_table_with_the_advice():
    stats = {
        "uptime_seconds": 3600.0,
        "policy": {"path": "p.yaml", "digest": "abc"},
        "routes": [
            figures(origin_time_saved_seconds=12.5, mean_object_bytes=1000),
            figures(route="quiet", requests=0, hits=0, misses=0, hit_ratio=None),
        ],
        "backends": [
            {
                "backend": "local",
                "type": "memory",
                "entries": 3,
                "bytes": 4096,
                "evictions": 0,
                "breaker": "closed",
            }
        ],
    }
    stats["advice"] = advise(stats["routes"], 3600.0)
    text = render(stats)
    lines = text.splitlines()
    assert lines[0] == "sidecache report: policy p.yaml (abc), up 1h"
    assert lines[2].split() == [
        "route",
        "requests",
        "hit",
        "%",
        "stale",
        "stored",
        "bytes",
        "mean",
        "size",
        "ttl",
        "got",
        "origin",
        "saved",
    ]
    assert lines[4].split()[:3] == ["r", "1000", "90.0%"]
    assert "backend local (memory): 3 entries, 4KiB, 0 evictions, breaker closed" in text
    assert "! quiet [unused]: no request matched this route in 1h" in text
