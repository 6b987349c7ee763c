"""Reading and purging through two proxy replicas: shared by the purge-holds e2e tests
(their ``session`` fixture, with this Host, is in conftest.py)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp

from tests.conftest import ProxyProcess

HOST = "api.internal"  # one Host for both proxies: replicas behind one service name
PRODUCTS = [f"/api/products/{i}" for i in range(12)]  # route products, tagged product:{i}
DOCS = [f"/docs/{i}" for i in range(6)]  # route docs, by prefix


async def get(session: aiohttp.ClientSession, url: str) -> tuple[str, bytes]:
    async with session.get(url) as response:
        assert response.status == 200
        return response.headers.get("X-Cache", ""), await response.read()


async def purge(session: aiohttp.ClientSession, proxy: ProxyProcess, body: Any) -> int:
    async with session.post(proxy.admin_url + "/purge", json=body) as response:
        return response.status


async def purge_until_done(session: aiohttp.ClientSession, proxy: ProxyProcess, body: Any) -> None:
    """POST /purge until it answers 200 (503 while a restarted server is reconnected)."""
    deadline = time.monotonic() + 15
    while True:
        async with session.post(proxy.admin_url + "/purge", json=body) as response:
            if response.status == 200:
                return
            assert response.status == 503, await response.text()
        assert time.monotonic() < deadline, "the purge never succeeded"
        await asyncio.sleep(0.2)


async def served_purged(
    session: aiohttp.ClientSession, proxies: list[ProxyProcess], paths: list[str], before: dict
) -> list[str]:
    """Every answer from cache that still carries a purged entry's body (in proxies' order)."""
    wrong = []
    for proxy in proxies:
        for path in paths:
            cache, body = await get(session, proxy.url + path)
            if cache in ("HIT", "STALE") and body == before[path]:
                wrong.append(f"{proxy.port}{path}")
    return wrong
