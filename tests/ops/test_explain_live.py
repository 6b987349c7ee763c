"""``GET /explain`` and ``sidecache explain --admin`` against a running worker on a real
Redis: the key explain prints is the key the proxy wrote, read back from Redis."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path
from urllib.parse import quote

import orjson

from proxy.ops.explain import explain
from proxy.policy.load import load_policy
from tests.conftest import ROOT, Origin, Reply
from tests.ops.conftest import RedisServer, StartProxy, fetch

POLICY = """
backends:
  shared: {{type: redis, url: "{url}"}}
defaults: {{backend: shared, ttl: 60s}}
routes:
  - name: products
    match: {{path: "/api/products/{{id}}"}}
    ttl: 1h
    stale_if_error: 10m
    key: {{query: [lang], headers: [Accept-Language]}}
    tags: ["product:{{id}}"]
  - name: search
    match: {{prefix: /api}}
"""


def _keys(redis: RedisServer, pattern: str) -> set[str]:
    with redis.client() as client:
        return {k.decode() for k in client.scan_iter(match=pattern, count=100)}


async def test_explained_key_is_the_key_written_to_redis(
    live_proxy: StartProxy, origin: Origin, redis_server: RedisServer
) -> None:
    origin.reply("/api/products/7", Reply(headers={"Surrogate-Key": "catalog"}))
    proxy = await live_proxy(POLICY.format(url=redis_server.url))
    url = proxy.url + "/api/products/7?lang=de&ignored=1"
    assert (await fetch("GET", url, headers={"Accept-Language": "de"})).cache == "MISS"
    host = proxy.url.removeprefix("http://")
    found = explain(load_policy(proxy.policy), "GET", url, ["Accept-Language: de"])
    assert found.route == "products"
    assert found.store_key is not None
    assert host in str(found.key)
    assert _keys(redis_server, "sc:*") == {found.store_key}
    other = explain(load_policy(proxy.policy), "GET", url, ["Accept-Language: fr"])
    assert other.store_key != found.store_key

    query = f"url={quote(url)}&h={quote('Accept-Language: de')}"
    answer = await fetch("GET", f"{proxy.admin_url}/explain?{query}")
    assert answer.status == 200
    body = answer.json()
    assert body["store_key"] == found.store_key
    now = body["now"]
    assert now["held"] is True
    assert now["backend"] == "shared"
    assert now["status"] == 200
    assert now["ttl_left"] > 3500
    assert now["size"] > 0
    assert now["tags"] == ["catalog"]
    assert 0 <= now["age"] < 60

    query = f"url={quote(url)}&h={quote('Accept-Language: fr')}"
    missing = (await fetch("GET", f"{proxy.admin_url}/explain?{query}")).json()
    assert missing["now"] == {"backend": "shared", "held": False}


async def test_admin_explain_refuses_bad_input_and_bypasses(
    live_proxy: StartProxy, redis_server: RedisServer
) -> None:
    proxy = await live_proxy(POLICY.format(url=redis_server.url))
    assert (await fetch("GET", proxy.admin_url + "/explain")).status == 400
    bad = await fetch("GET", proxy.admin_url + "/explain?url=/no-host")
    assert bad.status == 400
    assert "no host" in bad.json()["error"]
    post = await fetch("GET", f"{proxy.admin_url}/explain?url={quote(proxy.url)}/api/x&method=POST")
    assert post.json()["decision"] == "bypassed"
    assert "now" not in post.json()


async def test_cli_admin_shows_what_is_held(
    live_proxy: StartProxy, redis_server: RedisServer, tmp_path: Path
) -> None:
    proxy = await live_proxy(POLICY.format(url=redis_server.url))
    url = proxy.url + "/api/search?q=1"
    await fetch("GET", url)
    admin = proxy.admin_url.removeprefix("http://")

    def run(*extra: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "proxy", "explain", "--policy", str(proxy.policy), url]
        return subprocess.run(
            [*command, "--admin", admin, *extra],
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=30,
        )

    text = await asyncio.to_thread(run)
    assert text.returncode == 0, text.stderr
    assert "now:        held in shared: status 200" in text.stdout
    data = orjson.loads((await asyncio.to_thread(run, "--json")).stdout)
    assert data["now"]["held"] is True
    assert data["route"] == "search"
