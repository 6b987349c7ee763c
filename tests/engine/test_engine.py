"""The engine's explicit wiring, through the real server and a real origin:
``reconfigure`` (what a reload swaps: routes, stores, origin pool, access log, at once)
and ``handle_purges`` (where unsafe-method purges and ``PURGE`` go)."""

from __future__ import annotations

from collections.abc import Sequence

from aiohttp import web

from proxy.core.exchange import Exchange, ProxyResponse
from proxy.core.replies import CacheStatus, plain
from proxy.obs.logs import AccessLog
from proxy.origin.client import OriginClient
from proxy.policy.load import parse_policy
from proxy.stores.factory import build_stores, close_stores
from tests.conftest import MakeProxy, Origin, policy_text


async def test_reconfigure_swaps_routes_stores_and_origin_at_once(
    make_proxy: MakeProxy, origin: Origin, aiohttp_server: object
):
    proxy = await make_proxy("defaults: {ttl: 60s}\n")
    assert (await proxy.get("/a")).headers["X-Cache"] == "MISS"
    assert (await proxy.get("/a")).headers["X-Cache"] == "HIT"

    async def answer(_: web.Request) -> web.Response:
        return web.Response(body=b"other", headers={"Cache-Control": "max-age=60"})

    other = web.Application()
    other.router.add_get("/{tail:.*}", answer)
    server = await aiohttp_server(other)  # type: ignore[operator]
    url = str(server.make_url("")).rstrip("/")
    loaded = parse_policy(policy_text(url, "defaults: {ttl: 60s}\n"), "new.yaml")
    stores = build_stores(loaded.policy.backends)
    old_origin = proxy.engine.origin
    proxy.engine.reconfigure(loaded, stores, OriginClient(url), AccessLog.from_setting(False))
    try:
        fresh = await proxy.get("/a")  # the new, empty store; the new origin
        assert fresh.headers["X-Cache"] == "MISS"
        assert await fresh.read() == b"other"
        assert origin.hits["/a"] == 1
        assert proxy.engine.loaded is loaded
        assert proxy.engine.stores == stores
        assert (await proxy.get("/a")).headers["X-Cache"] == "HIT"  # the hit path's too
    finally:
        await old_origin.aclose()
        await close_stores(stores)


async def test_handle_purges_routes_unsafe_invalidation_and_purge(
    make_proxy: MakeProxy, origin: Origin
):
    proxy = await make_proxy("defaults: {ttl: 60s}\n")
    purged: list[Sequence[str]] = []
    asked: list[str] = []

    async def after_unsafe(tags: Sequence[str]) -> None:
        purged.append(tags)

    async def purge_method(ex: Exchange) -> ProxyResponse:
        asked.append(ex.path)
        return plain(200, "purged", CacheStatus(detail="purge"))

    await proxy.get("/items/1")
    proxy.engine.handle_purges(after_unsafe, purge_method)
    assert (await proxy.request("POST", "/items/1", data=b"x")).status == 200
    assert purged  # the invalidation wiring got the tags (RFC 9111 §4.4) ...
    assert (await proxy.get("/items/1")).headers["X-Cache"] == "HIT"  # ... not this process
    answer = await proxy.request("PURGE", "/items/1")
    assert (answer.status, await answer.read()) == (200, b"purged\n")
    assert asked == ["/items/1"]
    assert origin.hits["/items/1"] == 2  # the GET and the POST; PURGE never reached it
