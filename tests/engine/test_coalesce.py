"""Request coalescing and stale serving in one process (issue 4), against a real origin."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from aiohttp import web

from proxy.policy.load import parse_policy
from tests.conftest import FakeClock, MakeProxy, Origin, Reply

POLICY = """
defaults:
  ttl: 60s
  coalesce: {enabled: true, timeout: 5s}
routes:
  - name: swr
    match: {prefix: /swr}
    ttl: 1s
    stale_while_revalidate: 30s
  - name: sie
    match: {prefix: /sie}
    ttl: 1s
    stale_if_error: 60s
  - name: impatient
    match: {prefix: /impatient}
    coalesce: {timeout: 200ms}
  - name: early
    match: {prefix: /early}
    ttl: 1h
    early_refresh: {beta: 1000000000}
"""


async def test_cold_key_stampede_is_one_origin_request(make_proxy: MakeProxy, origin: Origin):
    origin.reply("/hot", Reply(delay=0.5))
    proxy = await make_proxy(POLICY)
    responses = await asyncio.gather(*(proxy.get("/hot") for _ in range(200)))
    bodies = {await r.read() for r in responses}
    assert [r.status for r in responses] == [200] * 200
    assert len(bodies) == 1
    assert origin.hits["/hot"] == 1
    # one leader; the others were collapsed onto it (or, when their connection was
    # accepted after the fill, served the stored entry)
    labels = [r.headers["X-Cache"] for r in responses]
    assert labels.count("MISS") == 1
    assert labels.count("HIT") == 199
    collapsed = [r for r in responses if "collapsed" in r.headers["Cache-Status"]]
    assert len(collapsed) >= 100


async def test_private_answers_are_never_shared(make_proxy: MakeProxy, origin: Origin):
    async def private(request: web.Request) -> web.Response:
        await asyncio.sleep(0.2)
        who = request.headers["X-Client"]
        return web.Response(
            body=f"for {who}".encode(),
            headers={"Cache-Control": "private", "Set-Cookie": f"session={who}"},
        )

    origin.reply("/me", private)
    proxy = await make_proxy(POLICY)
    responses = await asyncio.gather(
        *(proxy.get("/me", headers={"X-Client": str(i)}) for i in range(20))
    )
    assert origin.hits["/me"] == 20
    for i, response in enumerate(responses):
        assert await response.read() == f"for {i}".encode()
        assert response.headers["Set-Cookie"] == f"session={i}"


async def test_hit_for_miss_stops_queueing(make_proxy: MakeProxy, origin: Origin):
    arrivals: list[float] = []

    async def private(request: web.Request) -> web.Response:
        arrivals.append(time.monotonic())
        await asyncio.sleep(0.3)
        return web.Response(body=b"x", headers={"Cache-Control": "no-store"})

    origin.reply("/nostore", private)
    proxy = await make_proxy(POLICY)
    await asyncio.gather(*(proxy.get("/nostore") for _ in range(10)))
    first_wave = arrivals[:]
    arrivals.clear()
    await asyncio.gather(*(proxy.get("/nostore") for _ in range(10)))
    # first wave: followers waited for the leader's answer before going themselves
    assert max(first_wave) - min(first_wave) >= 0.25
    # second wave: the key is known uncacheable, nobody waits behind a leader
    assert len(arrivals) == 10
    assert max(arrivals) - min(arrivals) < 0.25


async def test_leader_client_disconnect_does_not_cancel_the_fill(
    make_proxy: MakeProxy, origin: Origin
):
    origin.reply("/slow", Reply(delay=0.5))
    proxy = await make_proxy(POLICY)
    leader = asyncio.ensure_future(proxy.get("/slow"))
    await asyncio.sleep(0.1)
    follower = asyncio.ensure_future(proxy.get("/slow"))
    await asyncio.sleep(0.05)
    leader.cancel()
    response = await follower
    assert response.status == 200
    assert origin.hits["/slow"] == 1
    assert (await proxy.get("/slow")).headers["X-Cache"] == "HIT"


async def test_waiting_is_bounded_by_the_timeout(make_proxy: MakeProxy, origin: Origin):
    origin.reply("/impatient/x", Reply(delay=1.0))
    proxy = await make_proxy(POLICY)
    started = time.monotonic()
    responses = await asyncio.gather(*(proxy.get("/impatient/x") for _ in range(5)))
    assert [r.status for r in responses] == [200] * 5
    # followers gave up after 200 ms and went to the origin themselves
    assert origin.hits["/impatient/x"] == 5
    assert time.monotonic() - started < 2.0


async def test_stale_while_revalidate(make_proxy: MakeProxy, origin: Origin, fake_clock: FakeClock):
    origin.reply("/swr/a", Reply(delay=0.5))
    proxy = await make_proxy(POLICY, clock=fake_clock)
    await proxy.get("/swr/a")
    fake_clock.advance(2)
    started = time.monotonic()
    responses = await asyncio.gather(*(proxy.get("/swr/a") for _ in range(20)))
    elapsed = time.monotonic() - started
    assert [r.headers["X-Cache"] for r in responses] == ["STALE"] * 20
    assert elapsed < 0.4  # served at once, not after the origin's 500 ms
    for _ in range(50):
        if origin.hits["/swr/a"] == 2 and not proxy.engine.refresher.background:
            break
        await asyncio.sleep(0.05)
    assert origin.hits["/swr/a"] == 2  # exactly one background refresh
    assert (await proxy.get("/swr/a")).headers["X-Cache"] == "HIT"


async def test_stale_if_error_on_5xx(make_proxy: MakeProxy, origin: Origin, fake_clock: FakeClock):
    proxy = await make_proxy(POLICY, clock=fake_clock)
    assert (await proxy.get("/sie/a")).status == 200
    origin.reply("/sie/a", Reply(status=503))
    fake_clock.advance(5)
    stale = await proxy.get("/sie/a")
    assert stale.status == 200
    assert stale.headers["X-Cache"] == "STALE"
    fake_clock.advance(120)  # beyond ttl + stale_if_error
    assert (await proxy.get("/sie/a")).status == 503


async def test_stale_if_error_when_origin_is_down(
    make_proxy: MakeProxy, aiohttp_server: Any, fake_clock: FakeClock
):
    async def ok(request: web.Request) -> web.Response:
        return web.Response(body=b"payload")

    app = web.Application()
    app.router.add_get("/{tail:.*}", ok)
    server = await aiohttp_server(app)
    text = f"version: 1\norigin: {str(server.make_url('')).rstrip('/')}\n" + POLICY
    proxy = await make_proxy(loaded=parse_policy(text, "p.yaml"), clock=fake_clock)
    assert await (await proxy.get("/sie/b")).read() == b"payload"
    await server.close()
    fake_clock.advance(5)
    stale = await proxy.get("/sie/b")
    assert stale.status == 200
    assert await stale.read() == b"payload"
    assert stale.headers["X-Cache"] == "STALE"
    fake_clock.advance(120)
    started = time.monotonic()
    gone = await proxy.get("/sie/b")
    assert gone.status == 502
    assert time.monotonic() - started < 2.0


async def test_must_revalidate_forbids_stale_if_error(
    make_proxy: MakeProxy, origin: Origin, fake_clock: FakeClock
):
    origin.reply("/sie/strict", headers={"Cache-Control": "max-age=1, must-revalidate"})
    proxy = await make_proxy(POLICY, clock=fake_clock)
    await proxy.get("/sie/strict")
    origin.reply("/sie/strict", Reply(status=500))
    fake_clock.advance(5)
    assert (await proxy.get("/sie/strict")).status == 500


async def test_early_refresh_renews_before_expiry(make_proxy: MakeProxy, origin: Origin):
    proxy = await make_proxy(POLICY)
    await proxy.get("/early/a")
    hit = await proxy.get("/early/a")
    assert hit.headers["X-Cache"] == "HIT"
    for _ in range(50):
        if origin.hits["/early/a"] >= 2:
            break
        await asyncio.sleep(0.02)
    assert origin.hits["/early/a"] >= 2


async def test_entries_live_for_ttl_plus_stale_windows(make_proxy: MakeProxy, origin: Origin):
    proxy = await make_proxy(POLICY)
    await proxy.get("/swr/ttl")
    store: Any = proxy.stores["local"]
    (key,) = [k for k in store.keys() if k.startswith("sc:swr:")]  # noqa: SIM118
    expires = store._data[key][1] - proxy.clock.monotonic()
    assert 30 < expires <= 31
