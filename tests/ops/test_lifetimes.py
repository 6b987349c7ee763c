"""What a year-long lifetime from the origin becomes in a real Redis (issue 14 item 5):
every key the proxy writes (entries and their tags' generation keys) expires within
``max_ttl`` plus the stale windows, themselves capped at ``max_ttl``; ``max_ttl: none``
lifts the cap."""

from __future__ import annotations

from tests.conftest import Origin, Reply
from tests.ops.conftest import RedisServer, StartProxy

DAY = 86400
YEAR = 365 * DAY
POLICY = """
backends:
  shared: {{type: redis, url: "{url}"}}
defaults: {{backend: shared{ceiling}}}
routes:
  - name: products
    match: {{path: "/api/products/{{id}}"}}
    tags: ["product:{{id}}"]
"""


def ttls(redis: RedisServer) -> dict[str, float]:
    """Every key in Redis and its TTL in seconds (-1: none)."""
    with redis.client() as client:
        keys = list(client.scan_iter(count=100))
        return {key.decode(): client.pttl(key) / 1000 for key in keys}


async def test_a_year_of_freshness_and_stale_is_kept_at_most_two_days(
    live_proxy: StartProxy, origin: Origin, redis_server: RedisServer
) -> None:
    year = f"max-age={YEAR}, stale-while-revalidate={YEAR}, stale-if-error={YEAR}"
    origin.reply("/api/products/1", Reply(headers={"Cache-Control": year}))
    origin.reply("/api/products/2", Reply(headers={"Cache-Control": f"max-age={YEAR}"}))
    proxy = await live_proxy(POLICY.format(url=redis_server.url, ceiling=""))
    for path in ("/api/products/1", "/api/products/2"):
        assert (await proxy.get(path)).cache == "MISS"
        assert (await proxy.get(path)).cache == "HIT"
    found = ttls(redis_server)
    entries = {k: t for k, t in found.items() if k.startswith("sc:products:")}
    assert len(entries) == 2
    assert sorted(round(t / 3600) for t in entries.values()) == [24, 48]  # 1 d; 1 d + 1 d
    assert all(0 < t <= 2 * DAY for t in found.values()), found  # generations too


async def test_max_ttl_none_keeps_what_the_origin_grants(
    live_proxy: StartProxy, origin: Origin, redis_server: RedisServer
) -> None:
    year = f"max-age={YEAR}, stale-if-error={YEAR}"
    origin.reply("/api/products/1", Reply(headers={"Cache-Control": year}))
    policy = POLICY.format(url=redis_server.url, ceiling=", max_ttl: none")
    proxy = await live_proxy(policy)
    assert (await proxy.get("/api/products/1")).cache == "MISS"
    found = ttls(redis_server)
    assert all(t > 2 * YEAR - 60 for t in found.values()), found
