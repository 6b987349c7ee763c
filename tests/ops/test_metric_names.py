"""Every metric the chart's alerts and dashboard use exists on a running proxy's /metrics.

A whole worker runs with a memory store, a real Redis, a real Memcached and a Redis that
is down, takes the requests that make each series appear (hits, misses, coalesced
followers, a stale answer on an origin error, evictions, store errors), and its scrape
must then hold a sample of every ``sidecache_*`` name the rendered PrometheusRule and
Grafana dashboard mention (histograms by their ``_bucket`` series, counters by
``_total``), and every label the queries select or group on must be on those series
(an equality matcher's value on one sample at least): a renamed metric or label breaks
this test, not a production alert.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from typing import Any, Final

from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import Origin, Reply, free_port
from tests.k8s.chart import CHART, render_chart
from tests.ops.conftest import RedisServer, StartProxy, eventually, fetch

NAME: Final = re.compile(r"\bsidecache_[a-z0-9_]+\b")
SELECTOR: Final = re.compile(r"\b(sidecache_[a-z0-9_]+)\{([^}]*)\}")
MATCHER: Final = re.compile(r'(\w+)\s*(=~|!~|!=|=)\s*"([^"]*)"')
GROUPING: Final = re.compile(r"by \(([^)]*)\)\s*\((?:rate\(|increase\()?(sidecache_[a-z0-9_]+)")
TARGET_LABELS: Final = {"namespace", "job", "pod"}  # added by Prometheus at scrape time
POLICY = """
backends:
  local: {{type: memory, max_size: 6KiB}}
  shared: {{type: redis, url: "{redis}"}}
  pool: {{type: memcached, servers: ["{memcached}"]}}
  down: {{type: redis, url: "redis://127.0.0.1:{dead}/0", timeout: 50ms, connect_timeout: 50ms}}
defaults: {{ttl: 60s, backend: local}}
routes:
  - name: products
    match: {{prefix: /products}}
    backend: shared
  - name: items
    match: {{prefix: /items}}
    backend: pool
  - name: news
    match: {{prefix: /news}}
    stale_if_error: 10m
  - name: broken
    match: {{prefix: /broken}}
    backend: down
"""


def chart_queries() -> list[str]:
    """The alert expressions, the dashboard's queries and its variables' queries."""
    values = {"prometheusRule": {"enabled": True}, "dashboard": {"enabled": True}}
    docs = render_chart(CHART, values)
    rule = next(d for d in docs if d["kind"] == "PrometheusRule")
    exprs = [r["expr"] for g in rule["spec"]["groups"] for r in g["rules"]]
    config_map = next(d for d in docs if d["metadata"]["name"].endswith("-dashboard"))
    board: dict[str, Any] = json.loads(config_map["data"]["sidecache.json"])
    exprs += [t["expr"] for p in board["panels"] for t in p.get("targets", [])]
    exprs += [v["definition"] for v in board["templating"]["list"] if "definition" in v]
    return exprs


def names_in_chart() -> set[str]:
    return {name for expr in chart_queries() for name in NAME.findall(expr)}


def matchers_in_chart() -> set[tuple[str, str, str, str]]:
    """(metric, label, operator, value) of every label matcher on a sidecache_* series,
    and (metric, label, "by", "") of every label an aggregation groups it by."""
    found: set[tuple[str, str, str, str]] = set()
    for expr in chart_queries():
        for name, inside in SELECTOR.findall(expr):
            found |= {(name, label, op, value) for label, op, value in MATCHER.findall(inside)}
        for labels, name in GROUPING.findall(expr):
            found |= {(name, label.strip(), "by", "") for label in labels.split(",")}
    return {m for m in found if m[1] not in TARGET_LABELS | {"le"}}


def sample_names(text: str) -> set[str]:
    return {s.name for family in text_string_to_metric_families(text) for s in family.samples}


def unmatched(text: str) -> list[str]:
    """Matchers naming a label the series lacks, or a value (``=``) no sample has."""
    seen: dict[str, list[dict[str, str]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            seen.setdefault(sample.name, []).append(sample.labels)
    wrong = []
    for name, label, op, value in sorted(matchers_in_chart()):
        samples = seen.get(name, [])
        if not any(label in labels for labels in samples):
            wrong.append(f"{name}: no label {label}")
        elif op == "=" and not any(labels.get(label) == value for labels in samples):
            wrong.append(f'{name}: no sample with {label}="{value}"')
    return wrong


async def test_every_name_in_the_rules_and_dashboard_is_exposed(
    live_proxy: StartProxy, origin: Origin, redis_server: RedisServer, memcached_addr: str
) -> None:
    used = names_in_chart()
    # the ones the issue names, so an empty or half-rendered chart cannot pass
    assert {
        "sidecache_requests_total",
        "sidecache_request_duration_seconds_bucket",
        "sidecache_store_evictions_total",
        "sidecache_backend_evictions_total",
        "sidecache_backend_memory_bytes",
        "sidecache_backend_memory_limit_bytes",
        "sidecache_stale_served_total",
        "sidecache_breaker_state",
    } <= used
    body = POLICY.format(redis=redis_server.url, memcached=memcached_addr, dead=free_port())
    proxy = await live_proxy(body)

    for path in ("/products/1", "/products/1", "/items/1", "/items/1", "/broken/1"):
        assert (await proxy.get(path)).status == 200
    origin.reply("/products/slow", Reply(delay=0.3))
    answers = await asyncio.gather(*(proxy.get("/products/slow") for _ in range(3)))
    assert [a.status for a in answers] == [200] * 3
    assert origin.hits["/products/slow"] == 1  # two followers coalesced on one fetch
    for n in range(8):  # 1 KiB bodies in a 6 KiB store: the oldest are evicted for room
        origin.reply(f"/news/{n}", body=b"n" * 1024)
        assert (await proxy.get(f"/news/{n}")).status == 200
    origin.reply("/news/live", headers={"Cache-Control": "max-age=0"})
    assert (await proxy.get("/news/live")).cache == "MISS"
    origin.reply("/news/live", status=503)
    assert (await proxy.get("/news/live")).cache == "STALE"  # stale_if_error

    missing: list[str] = []

    async def every_name_exposed() -> bool:  # backend figures: read once at start
        text = (await fetch("GET", proxy.admin_url + "/metrics")).body.decode()
        missing[:] = sorted(used - sample_names(text))
        return not missing

    with contextlib.suppress(AssertionError):
        await eventually(every_name_exposed, 20, "every sidecache_* name of the chart")
    assert missing == []
    # and the labels the rules select on are the ones the series carry
    text = (await fetch("GET", proxy.admin_url + "/metrics")).body.decode()
    assert len(matchers_in_chart()) >= 5
    assert unmatched(text) == []
