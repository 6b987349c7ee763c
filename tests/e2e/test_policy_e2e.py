"""Policy settings as a user sees them through real proxy processes on a real Redis:
``key.host`` (which Host spellings share an entry) and ``max_ttl`` (the lifetime ceiling,
1 day by default), read back from Redis itself."""

from __future__ import annotations

import asyncio
import re
import urllib.request

import pytest
from redis import Redis

from tests.conftest import Origin, ProxyProcess, Reply, SpawnProxy, policy_text

YEAR = 31_536_000
DAY = 86_400


def _policy(origin: Origin, redis_url: str, settings: str = "") -> str:
    return policy_text(
        origin.url,
        f"""
        backends:
          shared: {{type: redis, url: "{redis_url}", timeout: 500ms}}
        defaults:
          backend: shared
        {settings}
        """,
    )


def _get(proxy: ProxyProcess, path: str, host: str) -> tuple[str, str]:
    request = urllib.request.Request(proxy.url + path, headers={"Host": host})
    with urllib.request.urlopen(request, timeout=10) as response:
        response.read()
        return response.headers["X-Cache"], response.headers["Cache-Status"]


async def get(proxy: ProxyProcess, path: str, host: str) -> tuple[str, str]:
    return await asyncio.to_thread(_get, proxy, path, host)


def _client(redis_url: str) -> Redis:
    return Redis.from_url(redis_url)


def entry_ttls(redis_url: str, marker: bytes) -> list[int]:
    """The TTLs (seconds) of the Redis values holding a response body with ``marker``:
    the stored entries, whatever the key layout."""
    with _client(redis_url) as client:
        return [
            int(client.ttl(key))
            for key in client.scan_iter(count=1000)
            if client.type(key) == b"string" and marker in (client.get(key) or b"")
        ]


def key_count(redis_url: str) -> int:
    with _client(redis_url) as client:
        return int(client.dbsize())


# ---------------------------------------------------------------- key.host


async def test_key_host_false_shares_one_entry_across_names_and_replicas(
    origin: Origin, spawn_proxy: SpawnProxy, redis_url: str
) -> None:
    origin.reply("/api/items", headers={"Cache-Control": "max-age=60"}, body=b"items-nohost")
    policy = _policy(origin, redis_url, "  key: {host: false}")
    first, second = spawn_proxy(policy), spawn_proxy(policy)
    assert (await get(first, "/api/items", "svc"))[0] == "MISS"
    written = key_count(redis_url)
    assert (await get(second, "/api/items", "svc.ns.svc.cluster.local"))[0] == "HIT"
    assert (await get(first, "/api/items", "10.1.2.3:8080"))[0] == "HIT"
    assert origin.hits["/api/items"] == 1
    assert key_count(redis_url) == written
    assert len(entry_ttls(redis_url, b"items-nohost")) == 1


async def test_key_host_true_normalizes_case_and_default_port(
    origin: Origin, spawn_proxy: SpawnProxy, redis_url: str
) -> None:
    origin.reply("/api/items", headers={"Cache-Control": "max-age=60"}, body=b"items-host")
    policy = _policy(origin, redis_url)
    first, second = spawn_proxy(policy), spawn_proxy(policy)
    assert (await get(first, "/api/items", "Example.COM:80"))[0] == "MISS"
    assert (await get(second, "/api/items", "example.com"))[0] == "HIT"
    assert origin.hits["/api/items"] == 1
    assert len(entry_ttls(redis_url, b"items-host")) == 1
    # another name, or another port, is another entry
    assert (await get(second, "/api/items", "svc.ns"))[0] == "MISS"
    assert (await get(second, "/api/items", "example.com:8080"))[0] == "MISS"
    assert origin.hits["/api/items"] == 3
    assert len(entry_ttls(redis_url, b"items-host")) == 3


# ---------------------------------------------------------------- max_ttl


def _cache_status_ttl(cache_status: str) -> int:
    found = re.search(r"ttl=(-?\d+)", cache_status)
    assert found, cache_status
    return int(found.group(1))


@pytest.mark.parametrize(
    "origin_headers",
    [
        {"Cache-Control": f"max-age={YEAR}"},
        {"Cache-Control": f"public, s-maxage={YEAR}"},
        {"Expires": "Fri, 01 Jan 2100 00:00:00 GMT"},
        {"Last-Modified": "Mon, 01 Jan 1990 00:00:00 GMT"},
    ],
    ids=["max-age", "s-maxage", "expires", "heuristic"],
)
async def test_origin_lifetimes_are_capped_at_one_day_by_default(
    origin: Origin, spawn_proxy: SpawnProxy, redis_url: str, origin_headers: dict[str, str]
) -> None:
    origin.reply("/long", Reply(headers=origin_headers, body=b"long-lived"))
    proxy = spawn_proxy(_policy(origin, redis_url))
    assert (await get(proxy, "/long", "api"))[0] == "MISS"
    cache, status = await get(proxy, "/long", "api")
    assert cache == "HIT"
    assert 0 < _cache_status_ttl(status) <= DAY
    [ttl] = entry_ttls(redis_url, b"long-lived")
    assert DAY - 120 < ttl <= DAY


async def test_max_ttl_none_lifts_the_ceiling_and_a_route_ttl_is_its_own(
    origin: Origin, spawn_proxy: SpawnProxy, redis_url: str
) -> None:
    origin.reply("/year", headers={"Cache-Control": f"max-age={YEAR}"}, body=b"year-long")
    origin.reply("/week", body=b"week-long")  # no freshness from the origin: the route's ttl
    routes = """
        routes:
          - name: year
            match: {path: /year}
            max_ttl: none
          - name: week
            match: {path: /week}
            ttl: 7d
        """
    proxy = spawn_proxy(_policy(origin, redis_url) + routes.replace("\n        ", "\n"))
    for path in ("/year", "/week"):
        assert (await get(proxy, path, "api"))[0] == "MISS"
    _, status = await get(proxy, "/year", "api")
    assert _cache_status_ttl(status) > YEAR - 120
    [year] = entry_ttls(redis_url, b"year-long")
    assert year > YEAR - 120
    _, status = await get(proxy, "/week", "api")
    assert 7 * DAY - 120 < _cache_status_ttl(status) <= 7 * DAY
    [week] = entry_ttls(redis_url, b"week-long")
    assert week > 7 * DAY - 120
