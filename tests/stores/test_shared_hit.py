"""A shared store's hit through the engine's ticket path (``Engine.answer_now`` keeps the
request's ticket, ``Engine.handle`` reads the store once under its key): over the real
server, a real Redis and a real origin. What must hold is what the general path does: a
reload in between, a stale entry, a store error on a fail-closed route, one read a hit."""

from __future__ import annotations

from collections import Counter

import pytest

from proxy.clock import FakeClock
from proxy.core.exchange import Exchange
from proxy.core.routing import Router
from proxy.policy.load import parse_policy
from proxy.stores.base import Store
from tests.conftest import MakeProxy, Origin, free_port, policy_text


def _policy(url: str, defaults: str = "ttl: 60s") -> str:
    backend = f"backends:\n  shared: {{type: redis, url: '{url}'}}\n"
    return backend + f"defaults: {{backend: shared, {defaults}}}\n"


def _reads(store: Store) -> int:
    breaker = store.breaker()
    assert breaker is not None
    return breaker.ops["get"].ops


async def test_a_hit_reads_the_store_once(make_proxy: MakeProxy, origin: Origin, redis_url: str):
    proxy = await make_proxy(_policy(redis_url))
    assert (await proxy.get("/a")).headers["X-Cache"] == "MISS"
    before = _reads(proxy.stores["shared"])
    for i in range(3):  # each its own id: none replayed by the wire memo
        answer = await proxy.get("/a", headers={"X-Request-Id": f"r{i}"})
        assert answer.headers["X-Cache"] == "HIT"
    assert _reads(proxy.stores["shared"]) - before == 3
    assert origin.hits["/a"] == 1


async def test_the_server_hands_the_ticket_to_handle(
    make_proxy: MakeProxy, origin: Origin, redis_url: str, monkeypatch: pytest.MonkeyPatch
):
    # whichever hit-path entry the server asks first, ``handle`` takes the request's
    # ticket from it: its route is matched once (else twice: the ticket was lost)
    proxy = await make_proxy(_policy(redis_url))
    await proxy.get("/a")
    matched = Counter[str]()
    match = Router.match

    def counting(router: Router, method: str, host: str, path: str) -> object:
        matched[path] += 1
        return match(router, method, host, path)

    monkeypatch.setattr(Router, "match", counting)
    for i in range(3):  # each its own id: no two heads alike, none replayed by the memo
        answer = await proxy.get("/a", headers={"X-Request-Id": f"r{i}"})
        assert answer.headers["X-Cache"] == "HIT"
    assert matched["/a"] == 3
    assert not proxy.engine.hits.kept  # every kept ticket was taken


async def test_a_miss_reads_its_key_once_before_the_fill(
    make_proxy: MakeProxy, origin: Origin, redis_url: str
):
    # coalescing off: the fill itself reads nothing (with it, the lease's re-check does)
    proxy = await make_proxy(_policy(redis_url, "ttl: 60s, coalesce: {enabled: false}"))
    before = _reads(proxy.stores["shared"])
    assert (await proxy.get("/a")).headers["X-Cache"] == "MISS"
    assert _reads(proxy.stores["shared"]) - before == 1


async def test_a_ticket_resolved_before_a_reload_is_not_used_after_it(
    make_proxy: MakeProxy, origin: Origin, redis_url: str
):
    proxy = await make_proxy(_policy(redis_url))
    await proxy.get("/a")
    assert (await proxy.get("/a")).headers["X-Cache"] == "HIT"
    engine = proxy.engine
    host = proxy.url.removeprefix("http://")
    ex = Exchange("GET", "/a", "", None, {"host": host}, host=host)
    ticket, answer = engine.answer_now(ex)  # what the server does first, then ``handle``
    assert ticket is not None
    assert answer is None
    # meanwhile a reload: the route no longer caches
    loaded = parse_policy(policy_text(origin.url, _policy(redis_url, "cache: false")), "r.yaml")
    engine.reconfigure(loaded, proxy.stores)
    response = await engine.handle(ex)
    assert response.cache != "HIT"
    assert origin.hits["/a"] == 2


async def test_a_stale_entry_is_not_a_hit(
    make_proxy: MakeProxy, origin: Origin, redis_url: str, fake_clock: FakeClock
):
    proxy = await make_proxy(_policy(redis_url, "ttl: 10s"), clock=fake_clock)
    await proxy.get("/a")
    assert (await proxy.get("/a")).headers["X-Cache"] == "HIT"
    fake_clock.advance(30)  # Redis still holds it (its own clock); it is no longer fresh
    assert (await proxy.get("/a")).headers["X-Cache"] != "HIT"
    assert origin.hits["/a"] == 2


async def test_a_store_error_fails_closed_where_the_route_says_so(
    make_proxy: MakeProxy, origin: Origin
):
    dead = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    closed = await make_proxy(_policy(dead, "ttl: 60s, store_failure: closed"))
    answer = await closed.get("/a")
    assert answer.status == 503
    assert origin.hits["/a"] == 0
    opened = await make_proxy(_policy(dead))
    answer = await opened.get("/a")
    assert answer.status == 200
    assert origin.hits["/a"] == 1
