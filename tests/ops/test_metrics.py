"""Prometheus metrics on the admin listener change as requests flow (one in-process
worker); with ``--workers 2`` a scrape of either worker counts both."""

from __future__ import annotations

import asyncio

from tests.conftest import Origin, Reply, SpawnProxy, policy_text
from tests.ops.conftest import StartProxy, eventually, fetch, metric, scrape

POLICY = """
defaults: {ttl: 60s, max_object_size: 4KiB}
routes:
  - name: items
    match: {prefix: /items}
  - name: live
    match: {prefix: /live}
    cache: false
"""


async def test_metrics_follow_the_requests(live_proxy: StartProxy, origin: Origin):
    origin.reply("/items/big", body=b"x" * 8192)
    origin.reply("/items/broken", status=503)
    proxy = await live_proxy(POLICY)
    before = (await fetch("GET", proxy.admin_url + "/metrics")).body.decode()
    assert metric(before, "sidecache_requests_total") == 0
    for _ in range(3):
        await proxy.get("/items/1")
    await proxy.get("/items/big")
    await proxy.get("/items/broken")
    await proxy.get("/live/feed")
    answer = await fetch("GET", proxy.admin_url + "/metrics")
    assert answer.headers["Content-Type"].startswith("text/plain")
    text = answer.body.decode()
    assert metric(text, "sidecache_requests_total", route="items", cache="MISS") == 3
    assert metric(text, "sidecache_requests_total", route="items", cache="HIT") == 2
    assert metric(text, "sidecache_requests_total", route="live", cache="BYPASS") == 1
    assert metric(text, "sidecache_request_duration_seconds_count", route="items") == 5
    assert metric(text, "sidecache_origin_responses_total", route="items", status="2xx") == 2
    assert metric(text, "sidecache_origin_responses_total", route="items", status="5xx") == 1
    assert metric(text, "sidecache_origin_duration_seconds_count", route="items") == 3
    assert metric(text, "sidecache_stored_objects_total", route="items") == 1
    assert metric(text, "sidecache_uncached_responses_total", route="items", reason="size") == 1
    assert metric(text, "sidecache_uncached_responses_total", route="items", reason="status") == 1
    assert metric(text, "sidecache_rerequests_total", route="items", window="within_ttl") == 1
    assert metric(text, "sidecache_store_entries", backend="local") == 1
    assert metric(text, "sidecache_store_bytes", backend="local") > 0
    await proxy.purge({"routes": ["items"]})
    after = (await fetch("GET", proxy.admin_url + "/metrics")).body.decode()
    assert metric(after, "sidecache_purges_total", source="admin") == 1
    assert metric(after, "sidecache_purged_entries_total", source="admin") == 1
    assert metric(after, "sidecache_store_entries", backend="local") == 0


async def test_coalesced_followers_and_stale_answers_are_counted(
    live_proxy: StartProxy, origin: Origin
):
    origin.reply("/items/slow", Reply(delay=0.3, headers={"Cache-Control": "max-age=0"}))
    swr = POLICY.replace("{prefix: /items}", "{prefix: /items}\n    stale_while_revalidate: 60s")
    proxy = await live_proxy(swr)
    answers = await asyncio.gather(*(proxy.get("/items/slow") for _ in range(5)))
    assert sorted(a.cache for a in answers).count("MISS") == 1
    assert origin.hits["/items/slow"] == 1
    assert (await proxy.get("/items/slow")).cache == "STALE"
    assert await proxy.metric("sidecache_coalesced_requests_total", route="items") == 4
    assert (
        await proxy.metric("sidecache_stale_served_total", route="items", reason="revalidate") == 1
    )


async def test_metrics_sum_every_worker(origin: Origin, spawn_proxy: SpawnProxy):
    proxy = spawn_proxy(policy_text(origin.url, POLICY), "--workers", "2")
    for _ in range(40):
        assert (await fetch("GET", proxy.url + "/items/1")).status == 200

    async def counted() -> bool:  # each worker moves its tallies within a second
        return await scrape(proxy.admin_url, "sidecache_requests_total", route="items") == 40

    await eventually(counted, 5, "both workers' requests")
    for _ in range(6):  # every scrape lands on either worker; each answers for both
        assert await scrape(proxy.admin_url, "sidecache_requests_total", route="items") == 40
    misses = await scrape(proxy.admin_url, "sidecache_requests_total", cache="MISS")
    assert misses == origin.hits["/items/1"] == 2  # one per worker's own memory store
    assert await scrape(proxy.admin_url, "sidecache_store_entries", backend="local") == 2
    assert proxy.stop() == 0
