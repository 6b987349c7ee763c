"""Soft purge end to end: a proxy process, a real origin, every kind of store.

After a soft purge of a tag covering 200 URLs, 200 concurrent requests reach the origin
as 200 conditional requests answered 304 (entries with an ETag), or, within the route's
stale-while-revalidate, are answered STALE while exactly one refresh per URL runs; never
as full fetches. A purge without ``soft`` still removes. The origin numbers its versions:
an answer with an old version after the origin moved on was served as fresh.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests.conftest import Origin, ProxyProcess, SpawnProxy, policy_text

URLS = [f"/items/{i}" for i in range(200)]
STORES = ["memory", "redis", "memcached", "tiered"]
SWR = "max-age=3600, stale-while-revalidate=600"


class Versioned:
    """The origin's /items/{i}: ETag ``"v<version>-<i>"``, 304 when it matches, and a
    count of full and conditional requests per path."""

    def __init__(self, origin: Origin, cache_control: str) -> None:
        self.version = 1
        self.cache_control = cache_control
        self.full: Counter[str] = Counter()
        self.conditional: Counter[str] = Counter()
        self.delay = 0.0
        self.gate: asyncio.Event | None = None  # while set and not open, requests wait
        for url in URLS:
            origin.reply(url, self.handle)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        etag = f'"v{self.version}-{request.path.rsplit("/", 1)[1]}"'
        headers = {"ETag": etag, "Cache-Control": self.cache_control}
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.gate is not None:
            await self.gate.wait()
        if "If-None-Match" in request.headers:
            self.conditional[request.path] += 1
            if request.headers["If-None-Match"] == etag:
                return web.Response(status=304, headers=headers)
        else:
            self.full[request.path] += 1
        body = f'{{"path": "{request.path}", "version": {self.version}}}'
        return web.json_response(text=body, headers=headers)


def backends(kind: str, redis_url: str | None, memcached_addr: str | None) -> str:
    if kind == "memory":
        return "local: {type: memory}"
    if kind == "redis":
        return f"local: {{type: redis, url: '{redis_url}', timeout: 1s}}"
    if kind == "memcached":
        return f"local: {{type: memcached, servers: ['{memcached_addr}'], timeout: 1s}}"
    return (
        f"mem: {{type: memory}}, shared: {{type: redis, url: '{redis_url}', timeout: 1s}}, "
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


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        yield session


async def warm(session: aiohttp.ClientSession, proxy: ProxyProcess, origin: Versioned) -> None:
    """Every URL fetched once and then a HIT."""
    assert {a[0] for a in await get_all(session, proxy.url, URLS)} == {200}
    hits = await get_all(session, proxy.url, URLS)
    assert [cache for _, cache, _ in hits] == ["HIT"] * len(URLS)
    assert sum(origin.full.values()) == len(URLS)
    origin.full.clear()


Start = Callable[[str], Awaitable[tuple[Versioned, ProxyProcess]]]


@pytest.fixture
def start(
    origin: Origin,
    spawn_proxy: SpawnProxy,
    store_policy: Callable[..., str],
    client: aiohttp.ClientSession,
) -> Start:
    """The origin's items answering with a Cache-Control, a proxy on the store, warm."""

    async def started(cache_control: str) -> tuple[Versioned, ProxyProcess]:
        versioned = Versioned(origin, cache_control)
        proxy = spawn_proxy(store_policy())
        await warm(client, proxy, versioned)
        return versioned, proxy

    return started


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


@pytest.mark.parametrize("store_policy", STORES, indirect=True)
async def test_after_a_soft_purge_every_url_is_revalidated_once(
    start: Start, client: aiohttp.ClientSession
) -> None:
    versioned, proxy = await start("max-age=3600")
    answer = await purge(client, proxy, {"tags": ["items"], "soft": True})
    assert answer["removed"] == 0
    assert answer["softened"] in (len(URLS), 0)  # 0: a store that cannot count
    assert set(answer["stores"].values()) <= {len(URLS), 0, -1}  # 0: a tiered L1
    answers = await get_all(client, proxy.url, URLS)
    assert {status for status, _, _ in answers} == {200}
    assert {body["version"] for _, _, body in answers} == {1}
    assert versioned.conditional == Counter(URLS)  # 200 conditional requests, one each
    assert sum(versioned.full.values()) == 0  # and not one full fetch
    # revalidated: fresh again, answered from cache
    again = await get_all(client, proxy.url, URLS)
    assert {cache for _, cache, _ in again} == {"HIT"}
    assert versioned.conditional == Counter(URLS)


@pytest.mark.parametrize("store_policy", STORES, indirect=True)
async def test_within_stale_while_revalidate_it_is_stale_and_one_refresh_per_url(
    start: Start, client: aiohttp.ClientSession
) -> None:
    versioned, proxy = await start(SWR)
    await purge(client, proxy, {"tags": ["items"], "soft": True})
    versioned.gate = asyncio.Event()  # refreshes wait while every URL is asked twice
    answers = await get_all(client, proxy.url, URLS + URLS)
    assert [cache for _, cache, _ in answers] == ["STALE"] * 2 * len(URLS)
    assert {body["version"] for _, _, body in answers} == {1}
    versioned.gate.set()
    await until(lambda: len(versioned.conditional) == len(URLS), "the refreshes")
    await settle(lambda: versioned.conditional.total())
    assert versioned.conditional == Counter(URLS)  # exactly one refresh per URL
    assert versioned.full.total() == 0
    again = await get_all(client, proxy.url, URLS)
    assert {cache for _, cache, _ in again} == {"HIT"}


@pytest.mark.parametrize("store_policy", STORES, indirect=True)
async def test_a_purge_without_soft_still_removes(
    start: Start, client: aiohttp.ClientSession
) -> None:
    versioned, proxy = await start(SWR)
    answer = await purge(client, proxy, {"tags": ["items"]})
    assert answer["softened"] == 0
    versioned.version = 2
    answers = await get_all(client, proxy.url, URLS)
    assert {cache for _, cache, _ in answers} == {"MISS"}
    assert {body["version"] for _, _, body in answers} == {2}
    assert versioned.full == Counter(URLS)
    assert versioned.conditional.total() == 0
