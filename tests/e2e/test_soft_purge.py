"""Soft purge end to end: a proxy process, a real origin, every kind of store.

After a soft purge of a tag covering 200 URLs, 200 concurrent requests reach the origin
as 200 conditional requests answered 304 (entries with an ETag), or, within the route's
stale-while-revalidate, are answered STALE while exactly one refresh per URL runs; never
as full fetches; stale-if-error still answers while the origin fails. A purge without
``soft`` still removes. The origin numbers its versions:
an answer with an old version after the origin moved on was served as fresh.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable

import aiohttp
import pytest

from tests.conftest import Origin, ProxyProcess, SpawnProxy
from tests.e2e.softcheck import (
    SWR,
    URLS,
    Versioned,
    get_all,
    purge,
    settle,
    until,
    warm,
)

STORES = ["memory", "redis", "memcached", "tiered"]


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


@pytest.mark.parametrize("store_policy", STORES, indirect=True)
async def test_stale_if_error_still_applies_after_a_soft_purge(
    start: Start, client: aiohttp.ClientSession
) -> None:
    versioned, proxy = await start("max-age=3600, stale-if-error=600")
    await purge(client, proxy, {"tags": ["items"], "soft": True})
    versioned.failing = 503
    answers = await get_all(client, proxy.url, URLS)
    assert {(status, cache) for status, cache, _ in answers} == {(200, "STALE")}
    assert {body["version"] for _, _, body in answers} == {1}
    versioned.failing = 0
    answers = await get_all(client, proxy.url, URLS)  # revalidated now
    assert versioned.conditional == Counter(URLS)
    assert versioned.full.total() == 0
    assert {cache for _, cache, _ in await get_all(client, proxy.url, URLS)} == {"HIT"}
