"""Purges through the admin API and the PURGE method, on a whole in-process worker:
by URL, prefix, tag (origin header and route template) and route, and the refusals."""

from __future__ import annotations

from unittest import mock

from aiohttp.test_utils import make_mocked_request

from proxy.ops.admin import STATE, build_admin_app, purge
from tests.conftest import Origin
from tests.ops.conftest import LiveProxy, StartProxy, fetch

POLICY = """
defaults: {ttl: 60s}
routes:
  - name: products
    match: {path: "/api/products/{id}"}
    tags: ["product:{id}"]
  - name: lists
    match: {prefix: /api/lists}
  - name: writes
    match: {prefix: /api/orders, methods: [POST]}
    invalidates: [lists, /api/products/7]
"""


async def warm(proxy: LiveProxy, *paths: str) -> None:
    """Each path fetched until it is a HIT."""
    for path in paths:
        await proxy.get(path)
        assert (await proxy.get(path)).cache == "HIT", path


async def test_purge_by_absolute_url_removes_exactly_that_key(
    live_proxy: StartProxy, origin: Origin
):
    proxy = await live_proxy(POLICY)
    await warm(proxy, "/api/lists/a?page=1", "/api/lists/a?page=2")
    host = proxy.url.removeprefix("http://")
    answer = await proxy.purge({"urls": [f"http://{host}/api/lists/a?page=1"]})
    assert answer.status == 200
    assert answer.json()["removed"] == 1
    assert (await proxy.get("/api/lists/a?page=1")).cache == "MISS"
    assert (await proxy.get("/api/lists/a?page=2")).cache == "HIT"


async def test_purge_by_path_removes_every_query_of_the_path(
    live_proxy: StartProxy, origin: Origin
):
    proxy = await live_proxy(POLICY)
    await warm(proxy, "/api/lists/a?page=1", "/api/lists/a?page=2", "/api/lists/b")
    answer = await proxy.purge({"urls": ["/api/lists/a"]})
    assert answer.json()["removed"] == 2
    assert (await proxy.get("/api/lists/a?page=1")).cache == "MISS"
    assert (await proxy.get("/api/lists/a?page=2")).cache == "MISS"
    assert (await proxy.get("/api/lists/b")).cache == "HIT"


async def test_purge_by_prefix_is_anchored_on_segments(live_proxy: StartProxy, origin: Origin):
    proxy = await live_proxy(POLICY)
    await warm(proxy, "/api/products/1", "/api/products/2", "/api/productsx", "/api/lists/x")
    answer = await proxy.purge({"prefixes": ["/api/products"]})
    assert answer.status == 200
    assert answer.json()["removed"] == 2
    assert (await proxy.get("/api/products/1")).cache == "MISS"
    assert (await proxy.get("/api/products/2")).cache == "MISS"
    assert (await proxy.get("/api/productsx")).cache == "HIT"  # not under /api/products/
    assert (await proxy.get("/api/lists/x")).cache == "HIT"


async def test_purge_everything_with_the_root_prefix(live_proxy: StartProxy, origin: Origin):
    proxy = await live_proxy(POLICY)
    await warm(proxy, "/api/products/1", "/api/lists/x", "/elsewhere")
    assert (await proxy.purge({"prefixes": ["/"]})).json()["removed"] == 3
    for path in ("/api/products/1", "/api/lists/x", "/elsewhere"):
        assert (await proxy.get(path)).cache == "MISS"


async def test_purge_by_tag_from_origin_headers(live_proxy: StartProxy, origin: Origin):
    origin.reply("/api/lists/shoes", headers={"Surrogate-Key": "catalog shoes"})
    origin.reply("/api/lists/hats", headers={"Cache-Tag": "catalog,hats"})
    origin.reply("/api/lists/news", headers={"Surrogate-Key": "news"})
    proxy = await live_proxy(POLICY)
    await warm(proxy, "/api/lists/shoes", "/api/lists/hats", "/api/lists/news")
    assert (await proxy.purge({"tags": ["hats"]})).json()["removed"] == 1
    assert (await proxy.get("/api/lists/hats")).cache == "MISS"
    assert (await proxy.get("/api/lists/shoes")).cache == "HIT"
    assert (await proxy.purge({"tags": ["catalog"]})).json()["removed"] == 2
    assert (await proxy.get("/api/lists/shoes")).cache == "MISS"
    assert (await proxy.get("/api/lists/news")).cache == "HIT"


async def test_purge_by_tag_from_route_template(live_proxy: StartProxy, origin: Origin):
    proxy = await live_proxy(POLICY)
    await warm(proxy, "/api/products/7", "/api/products/7?view=full", "/api/products/8")
    assert (await proxy.purge({"tags": ["product:7"]})).json()["removed"] == 2
    assert (await proxy.get("/api/products/7")).cache == "MISS"
    assert (await proxy.get("/api/products/7?view=full")).cache == "MISS"
    assert (await proxy.get("/api/products/8")).cache == "HIT"


async def test_a_safe_method_invalidates_nothing(live_proxy: StartProxy, origin: Origin):
    # a CORS preflight (OPTIONS) to a route with invalidates: purged those routes, in every
    # worker and replica, on each preflight; RFC 9110 §9.2.1: OPTIONS and TRACE are safe
    proxy = await live_proxy(POLICY.replace("methods: [POST]", "methods: [POST, OPTIONS, TRACE]"))
    await warm(proxy, "/api/lists/a", "/api/products/7")
    for method in ("OPTIONS", "TRACE"):
        assert (await fetch(method, proxy.url + "/api/orders")).status == 200
    assert (await proxy.get("/api/lists/a")).cache == "HIT"
    assert (await proxy.get("/api/products/7")).cache == "HIT"


async def test_purge_by_route(live_proxy: StartProxy, origin: Origin):
    proxy = await live_proxy(POLICY)
    await warm(proxy, "/api/lists/a", "/api/lists/b", "/api/products/1")
    assert (await proxy.purge({"routes": ["lists"]})).json()["removed"] == 2
    assert (await proxy.get("/api/lists/a")).cache == "MISS"
    assert (await proxy.get("/api/products/1")).cache == "HIT"


async def test_unsafe_request_invalidates_related_routes(live_proxy: StartProxy, origin: Origin):
    proxy = await live_proxy(POLICY)
    await warm(proxy, "/api/lists/a", "/api/products/7", "/api/products/8")
    assert (await fetch("POST", proxy.url + "/api/orders", data=b"{}")).status == 200
    assert (await proxy.get("/api/lists/a")).cache == "MISS"
    assert (await proxy.get("/api/products/7")).cache == "MISS"
    assert (await proxy.get("/api/products/8")).cache == "HIT"


async def test_purge_method_from_an_allowed_address(live_proxy: StartProxy, origin: Origin):
    proxy = await live_proxy(POLICY)
    await warm(proxy, "/api/lists/a", "/api/lists/a?x=1")
    answer = await fetch("PURGE", proxy.url + "/api/lists/a")
    assert answer.status == 200
    assert answer.json()["removed"] == 1
    assert origin.hits["/api/lists/a"] == 2  # PURGE itself never reaches the origin
    assert (await proxy.get("/api/lists/a")).cache == "MISS"
    assert (await proxy.get("/api/lists/a?x=1")).cache == "HIT"


async def test_purge_method_refused_outside_purge_from(live_proxy: StartProxy, origin: Origin):
    proxy = await live_proxy(POLICY + "admin: {purge_from: [10.0.0.0/8]}\n")
    await warm(proxy, "/api/lists/a")
    answer = await fetch("PURGE", proxy.url + "/api/lists/a")
    assert answer.status == 403
    assert "not allowed" in answer.json()["error"]
    assert (await proxy.get("/api/lists/a")).cache == "HIT"


async def test_admin_purge_needs_the_token_when_one_is_set(live_proxy: StartProxy, origin: Origin):
    proxy = await live_proxy(POLICY + "admin: {token: s3cret}\n")
    await warm(proxy, "/api/lists/a")
    missing = await proxy.purge({"routes": ["lists"]})
    assert missing.status == 401
    assert missing.headers["WWW-Authenticate"].startswith("Bearer")
    assert (await proxy.purge({"routes": ["lists"]}, token="wrong")).status == 401
    assert (await proxy.get("/api/lists/a")).cache == "HIT"
    allowed = await proxy.purge({"routes": ["lists"]}, token="s3cret")
    assert allowed.status == 200
    assert allowed.json()["removed"] == 1


async def test_admin_purge_without_token_refuses_a_remote_client(
    live_proxy: StartProxy, origin: Origin
):
    proxy = await live_proxy(POLICY)
    await warm(proxy, "/api/lists/a")
    assert proxy.worker.state is not None
    app = build_admin_app(proxy.worker.state)
    transport = mock.Mock()
    transport.get_extra_info.side_effect = lambda name, default=None: (
        ("203.0.113.9", 40000) if name == "peername" else default
    )
    request = make_mocked_request("POST", "/purge", app=app, transport=transport)
    assert request.remote == "203.0.113.9"
    refused = await purge(request)
    assert refused.status == 403
    assert request.app[STATE].engine is proxy.worker.engine
    assert (await proxy.get("/api/lists/a")).cache == "HIT"


async def test_bad_purge_bodies_are_400(live_proxy: StartProxy, origin: Origin):
    proxy = await live_proxy(POLICY)
    assert (await proxy.purge({})).status == 400
    assert (await proxy.purge({"tags": "one"})).status == 400
    assert (await proxy.purge({"prefixes": ["no-slash"]})).status == 400
    assert (await proxy.purge({"source": "x", "tags": ["a"]})).status == 400  # internal field
    bad = await fetch("POST", proxy.admin_url + "/purge", data=b"{not json")
    assert bad.status == 400


async def test_stores_that_cannot_count_answer_queued(
    live_proxy: StartProxy, origin: Origin, memcached_addr: str
):
    proxy = await live_proxy(
        f"""
        backends:
          pool: {{type: memcached, servers: ["{memcached_addr}"], timeout: 500ms}}
        defaults: {{backend: pool, ttl: 60s}}
        routes:
          - name: products
            match: {{path: "/api/products/{{id}}"}}
            tags: ["product:{{id}}"]
        """
    )
    await warm(proxy, "/api/products/1", "/api/products/2")
    answer = await proxy.purge({"tags": ["product:1"]})
    assert answer.status == 200
    assert answer.json()["queued"] is True  # generation counters: nothing to count
    assert answer.json()["stores"] == {"pool": -1}
    assert (await proxy.get("/api/products/1")).cache == "MISS"
    assert (await proxy.get("/api/products/2")).cache == "HIT"


async def test_an_invalidates_prefix_deeper_than_the_index_still_purges(
    live_proxy: StartProxy, origin: Origin
):
    # entries are tagged by their first 8 path segments; a 9-segment invalidates: prefix
    # was turned into a tag nothing carries, and the POST purged nothing
    deep = "/d/1/2/3/4/5/6/7/8"
    proxy = await live_proxy(
        POLICY.replace("invalidates: [lists, /api/products/7]", f"invalidates: [{deep}]")
    )
    await warm(proxy, f"{deep}/x", "/d/other")
    assert (await fetch("POST", proxy.url + "/api/orders", data=b"{}")).status == 200
    assert (await proxy.get(f"{deep}/x")).cache == "MISS"
    assert (await proxy.get("/d/other")).cache == "HIT"
