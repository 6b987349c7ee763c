"""Soft purges seen through a proxy process: the origin that counts full and conditional
requests, the items policy on each kind of store, requests in bulk. Shared by the soft
purge e2e tests."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests.conftest import Origin, ProxyProcess, policy_text

URLS = [f"/items/{i}" for i in range(200)]
STORES = ["memory", "redis", "memcached", "tiered"]
SWR = "max-age=3600, stale-while-revalidate=600"


class Versioned:
    """The origin's /items/{i} (or ``paths``): ETag ``"v<version>-<i>"``, 304 when it
    matches, and a count of full and conditional requests per path."""

    def __init__(
        self, origin: Origin, cache_control: str, paths: list[str] = URLS, vary: str = ""
    ) -> None:
        self.version = 1
        self.cache_control = cache_control
        self.full: Counter[str] = Counter()
        self.conditional: Counter[str] = Counter()
        self.delay = 0.0
        self.gate: asyncio.Event | None = None  # while set and not open, requests wait
        self.failing = 0  # while set, every request is answered with this status
        self.vary = vary
        for path in paths:
            origin.reply(path, self.handle)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        etag = f'"v{self.version}-{request.path.rsplit("/", 1)[1]}"'
        headers = {"ETag": etag, "Cache-Control": self.cache_control}
        if self.vary:
            headers["Vary"] = self.vary
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.gate is not None:
            await self.gate.wait()
        if self.failing:
            return web.Response(status=self.failing, text="down")
        if "If-None-Match" in request.headers:
            self.conditional[request.path] += 1
            if request.headers["If-None-Match"] == etag:
                return web.Response(status=304, headers=headers)
        else:
            self.full[request.path] += 1
        body = f'{{"path": "{request.path}", "version": {self.version}}}'
        return web.json_response(text=body, headers=headers)


# The store deadlines of these tests: their point is what a soft purge does, not the
# deadline, and on a busy 2-core machine a write starved of CPU for a second passes 1s
# (a miss where a HIT is asserted). Deadline behaviour is tested in test_stores_e2e.py.
DEADLINES = "timeout: 30s, connect_timeout: 30s"


def backends(kind: str, redis_url: str | None, memcached_addr: str | None) -> str:
    if kind == "memory":
        return "local: {type: memory}"
    if kind == "redis":
        return f"local: {{type: redis, url: '{redis_url}', {DEADLINES}}}"
    if kind == "memcached":
        return f"local: {{type: memcached, servers: ['{memcached_addr}'], {DEADLINES}}}"
    return (
        f"mem: {{type: memory}}, shared: {{type: redis, url: '{redis_url}', {DEADLINES}}}, "
        "local: {type: tiered, l1: mem, l2: shared, l1_ttl: 1h}"
    )


def items_policy(origin: Origin, stores: str, *, extra: str = "") -> str:
    return policy_text(
        origin.url,
        f"""
        backends: {{{stores}}}
        defaults: {{backend: local, ttl: 1h}}
        routes:
          - name: items
            match: {{path: "/items/{{id}}"}}
            tags: ["item:{{id}}", "items"]
          - name: vary
            match: {{prefix: "/vary"}}
        {extra}
        """,
    )


@pytest.fixture
def store_policy(request: pytest.FixtureRequest, origin: Origin) -> Callable[..., str]:
    """The items policy on the store ``request.param`` names."""

    def make(**kwargs: Any) -> str:
        kind = request.param
        redis = request.getfixturevalue("redis_url") if kind in ("redis", "tiered") else None
        mc = request.getfixturevalue("memcached_addr") if kind == "memcached" else None
        return items_policy(origin, backends(kind, redis, mc), **kwargs)

    return make


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        yield session


async def fetch(
    session: aiohttp.ClientSession, url: str, **kwargs: Any
) -> tuple[int, str, dict[str, Any]]:
    async with session.get(url, **kwargs) as response:
        body = await response.json() if response.status == 200 else {}
        return response.status, response.headers.get("X-Cache", ""), body


async def get_all(session: aiohttp.ClientSession, base: str, paths: list[str]) -> list[Any]:
    return list(await asyncio.gather(*(fetch(session, base + path) for path in paths)))


async def purge(session: aiohttp.ClientSession, proxy: ProxyProcess, body: Any) -> dict[str, Any]:
    async with session.post(proxy.admin_url + "/purge", json=body) as response:
        answer: dict[str, Any] = await response.json()
        assert response.status == 200, answer
        return answer


async def warm(session: aiohttp.ClientSession, proxy: ProxyProcess, origin: Versioned) -> None:
    """Every URL fetched once and then a HIT."""
    assert {a[0] for a in await get_all(session, proxy.url, URLS)} == {200}
    hits = await get_all(session, proxy.url, URLS)
    assert [cache for _, cache, _ in hits] == ["HIT"] * len(URLS)
    assert sum(origin.full.values()) == len(URLS)
    origin.full.clear()


async def until(check: Callable[[], bool], what: str, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.05)


async def settle(count: Callable[[], int]) -> None:
    """Until ``count`` has not changed for a while (nothing more reaches the origin)."""
    last, steady = count(), 0
    while steady < 10:
        await asyncio.sleep(0.05)
        steady = steady + 1 if count() == last else 0
        last = count()
