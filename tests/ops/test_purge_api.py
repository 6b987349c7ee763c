"""The purge API's answers (issue 15 item 6), on a whole in-process worker with real
Redis and Memcached: ``removed`` counts every entry once whatever the tiering, unknown
routes and malformed bodies are 400s that say what is wrong, and ``queued`` is true
only when a store that cannot count was touched by this purge."""

from __future__ import annotations

from proxy.ops.invalidation import may_hold
from proxy.policy.load import Match, RouteConfig
from tests.conftest import Origin
from tests.ops.conftest import LiveProxy, RedisServer, StartProxy, fetch
from tests.ops.test_purge import POLICY, warm


def tiered_policy(redis_url: str) -> str:
    """``local`` (memory) serves ``lists`` itself and is also the L1 of ``shared``."""
    return f"""
        backends:
          local: {{type: memory, max_size: 16MiB}}
          redis: {{type: redis, url: "{redis_url}", timeout: 500ms}}
          shared: {{type: tiered, l1: local, l2: redis}}
        defaults: {{backend: local, ttl: 60s}}
        routes:
          - name: products
            match: {{path: "/api/products/{{id}}"}}
            backend: shared
            tags: ["product:{{id}}"]
          - name: lists
            match: {{prefix: /api/lists}}
            tags: ["catalog"]
        """


async def purged_total(proxy: LiveProxy) -> float:
    return await proxy.metric("sidecache_purged_entries_total", source="admin")


async def test_a_memory_backend_that_is_also_an_l1_counts_its_own_entries(
    live_proxy: StartProxy, origin: Origin, redis_server: RedisServer
):
    proxy = await live_proxy(tiered_policy(redis_server.url))
    await warm(proxy, "/api/lists/a", "/api/lists/b", "/api/lists/c")
    answer = await proxy.purge({"routes": ["lists"]})
    assert answer.status == 200
    assert answer.json()["removed"] == 3
    assert answer.json()["stores"] == {"local": 3}
    assert await purged_total(proxy) == 3
    for path in ("/api/lists/a", "/api/lists/b", "/api/lists/c"):
        assert (await proxy.get(path)).cache == "MISS"


async def test_an_entry_in_l1_and_l2_counts_once(
    live_proxy: StartProxy, origin: Origin, redis_server: RedisServer
):
    proxy = await live_proxy(tiered_policy(redis_server.url))
    # products: in L1 and L2 both; lists: in the same memory store only
    await warm(proxy, "/api/products/1", "/api/products/2", "/api/lists/a")
    answer = await proxy.purge({"prefixes": ["/api"]})
    assert answer.status == 200
    body = answer.json()
    # Redis invalidates by generation (issue 14): it cannot count, so the answer is queued
    assert body["removed"] == 1
    assert body["stores"] == {"local": 1, "redis": -1}
    assert body["queued"] is True
    assert await purged_total(proxy) == 1
    for path in ("/api/products/1", "/api/products/2", "/api/lists/a"):
        assert (await proxy.get(path)).cache == "MISS"


async def test_tag_and_url_purges_across_the_tiers_count_each_entry_once(
    live_proxy: StartProxy, origin: Origin, redis_server: RedisServer
):
    proxy = await live_proxy(tiered_policy(redis_server.url))
    await warm(proxy, "/api/products/7", "/api/products/8", "/api/lists/a")
    by_tag = (await proxy.purge({"tags": ["product:7"]})).json()
    assert (by_tag["removed"], by_tag["queued"]) == (0, True)  # Redis: by generation
    assert (await proxy.purge({"tags": ["catalog"]})).json()["removed"] == 1
    host = proxy.url.removeprefix("http://")
    by_url = await proxy.purge({"urls": [f"http://{host}/api/products/8"]})
    assert by_url.json()["removed"] == 1
    assert await purged_total(proxy) == 2
    for path in ("/api/products/7", "/api/products/8", "/api/lists/a"):
        assert (await proxy.get(path)).cache == "MISS"


async def test_an_unknown_route_is_a_400_naming_it(live_proxy: StartProxy, origin: Origin):
    proxy = await live_proxy(POLICY)
    await warm(proxy, "/api/lists/a")
    answer = await proxy.purge({"routes": ["lists", "nosuch"]})
    assert answer.status == 400
    error = answer.json()["error"]
    assert "'nosuch'" in error
    assert "products, lists, writes, default" in error
    assert (await proxy.get("/api/lists/a")).cache == "HIT"  # nothing purged


async def post(proxy: LiveProxy, body: bytes) -> tuple[int, str]:
    answer = await fetch("POST", proxy.admin_url + "/purge", data=body)
    return answer.status, answer.json()["error"]


async def test_malformed_bodies_are_400s_in_plain_words(live_proxy: StartProxy, origin: Origin):
    proxy = await live_proxy(POLICY)
    cases = {
        b"{not json": "the body is not valid JSON",
        b"null": "expected a JSON object",
        b"": "the body is empty",
        b'["/api/lists"]': 'expected a JSON object like {"urls": ["/path"]}, got a list',
        b'{"tags": "one"}': "tags: expected a list of strings, got a string",
        b'{"urls": ["/a", 7]}': "urls: item 2 is a number, expected a non-empty string",
        b'{"routes": [""]}': "routes: item 1 is an empty string",
        b'{"tag": ["a"]}': "unknown field 'tag': a purge takes urls, prefixes, tags, routes",
        b'{"source": "x", "tags": ["a"]}': "unknown field 'source'",
        b'{"tags": ["a"], "soft": "yes"}': "soft: expected true or false, got a string",
        b"{}": "nothing to purge",
        # what the proxy port would refuse, or not read as a path
        b'{"urls": ["ftp://host/api/lists"]}': "urls: 'ftp://host/api/lists' is neither",
        b'{"urls": ["http://[::1/x"]}': "urls: 'http://[::1/x' is not a valid URL",
        b'{"urls": ["/api/a%00b"]}': "urls: '/api/a%00b': NUL in path",
        b'{"prefixes": ["/api/%zz"]}': "prefixes: '/api/%zz': bad percent-encoding in path",
    }
    for body, expected in cases.items():
        status, error = await post(proxy, body)
        assert status == 400, body
        assert expected in error, (body, error)
        assert "literal" not in error  # no parser wording
        assert "char " not in error


async def test_queued_only_when_a_store_that_cannot_count_was_touched(
    live_proxy: StartProxy, origin: Origin, memcached_addr: str
):
    proxy = await live_proxy(
        f"""
        backends:
          local: {{type: memory}}
          pool: {{type: memcached, servers: ["{memcached_addr}"], timeout: 500ms}}
        defaults: {{backend: local, ttl: 60s}}
        routes:
          - name: products
            match: {{path: "/api/products/{{id}}"}}
            backend: pool
          - name: lists
            match: {{prefix: /api/lists}}
        """
    )
    await warm(proxy, "/api/products/1", "/api/lists/a", "/api/lists/b")
    by_route = (await proxy.purge({"routes": ["lists"]})).json()
    assert by_route == {**by_route, "removed": 2, "queued": False, "stores": {"local": 2}}
    by_prefix = (await proxy.purge({"prefixes": ["/api/lists"]})).json()
    assert by_prefix["queued"] is False
    assert by_prefix["stores"] == {"local": 0}
    host = proxy.url.removeprefix("http://")
    by_url = (await proxy.purge({"urls": [f"http://{host}/api/lists/a"]})).json()
    assert by_url["queued"] is False
    assert (await proxy.get("/api/products/1")).cache == "HIT"  # Memcached untouched
    touched = (await proxy.purge({"prefixes": ["/api/products"]})).json()
    assert touched["queued"] is True
    assert touched["stores"] == {"pool": -1, "local": 0}  # the defaults may hold any path
    assert (await proxy.get("/api/products/1")).cache == "MISS"
    tags = (await proxy.purge({"tags": ["anything"]})).json()
    assert tags["queued"] is True  # a tag may be on any route's entries
    assert tags["stores"] == {"local": 0, "pool": -1}


MAY_HOLD = [
    # (match, prefix, may hold a path at or under the prefix)
    ({"prefix": "/api/lists"}, "/api", True),
    ({"prefix": "/api/lists"}, "/api/lists", True),
    ({"prefix": "/api/lists"}, "/api/lists/a", True),
    ({"prefix": "/api/lists"}, "/api/listsx", False),
    ({"prefix": "/api/lists"}, "/other", False),
    ({"path": "/api/products/{id}"}, "/api/products", True),
    ({"path": "/api/products/{id}"}, "/api/products/7", True),
    ({"path": "/api/products/{id}"}, "/api", True),
    ({"path": "/api/products/{id}"}, "/api/lists", False),
    ({"path": "/about"}, "/about", True),
    ({"path": "/about"}, "/", True),
    ({"path": "/about"}, "/abo", False),
    ({"regex": "^/x"}, "/anything", True),  # a regex: cannot tell
    ({}, "/anything", True),  # no match: the defaults
]


def test_a_purge_concerns_only_routes_that_can_match_under_it():
    for match, prefix, expected in MAY_HOLD:
        route = RouteConfig(name="r", match=Match(**match), backend="b")
        assert may_hold(route, prefix) is expected, (match, prefix)


async def test_a_purge_names_a_path_in_any_spelling_the_proxy_port_accepts(
    live_proxy: StartProxy, origin: Origin, redis_server: RedisServer
):
    # the proxy port serves /api/products/%32 and /api/x/../products/2 as /api/products/2
    # (RFC 3986 normalization): a purge spelled so must not answer 200 and leave a HIT
    proxy = await live_proxy(tiered_policy(redis_server.url))
    host = proxy.url.removeprefix("http://")
    spellings = [
        {"urls": ["/api/products/%32"]},
        {"urls": [f"http://{host}/api/x/../products/%32"]},
        {"urls": ["/api//products/2"]},
        {"prefixes": ["/api/./products"]},
        {"prefixes": ["/api/%70roducts"]},
    ]
    for body in spellings:
        await warm(proxy, "/api/products/2")
        answer = await proxy.purge(body)
        assert answer.status == 200, body
        assert (await proxy.get("/api/products/2")).cache == "MISS", body
