"""Coalescing across replicas: two proxy processes sharing one real Redis (issue 4)."""

from __future__ import annotations

import asyncio
import signal
import time

import aiohttp

from tests.conftest import Origin, Reply, SpawnProxy, policy_text


def _policy(origin: Origin, redis_url: str, timeout: str = "5s") -> str:
    return policy_text(
        origin.url,
        f"""
        backends:
          # generous deadline: this is about coalescing, not about store faults
          shared: {{type: redis, url: "{redis_url}", timeout: 1s}}
        defaults:
          backend: shared
          ttl: 60s
          coalesce: {{enabled: true, timeout: {timeout}}}
        """,
    )


async def _get_all(session: aiohttp.ClientSession, url: str, n: int) -> list[tuple[int, bytes]]:
    async def one() -> tuple[int, bytes]:
        # one Host for every replica, as clients reaching them through a Service send
        async with session.get(url, headers={"Host": "api.internal"}) as response:
            return response.status, await response.read()

    return await asyncio.gather(*(one() for _ in range(n)))


async def test_two_replicas_one_origin_request(
    origin: Origin, redis_url: str, spawn_proxy: SpawnProxy
):
    origin.reply("/cold", Reply(delay=0.5))
    policy = _policy(origin, redis_url)
    a, b = spawn_proxy(policy), spawn_proxy(policy)
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        # warm both replicas' Redis pools: the key is cold, not the proxies
        await _get_all(session, a.url + "/warm", 20)
        await _get_all(session, b.url + "/warm", 20)
        results = await asyncio.gather(
            _get_all(session, a.url + "/cold", 50), _get_all(session, b.url + "/cold", 50)
        )
    flat = [r for batch in results for r in batch]
    assert [status for status, _ in flat] == [200] * 100
    assert len({body for _, body in flat}) == 1
    assert origin.hits["/cold"] == 1


async def test_dead_leader_blocks_nobody_beyond_its_lease(
    origin: Origin, redis_url: str, spawn_proxy: SpawnProxy
):
    origin.reply("/victim", Reply(delay=3.0))
    policy = _policy(origin, redis_url, timeout="1s")
    leader, other = spawn_proxy(policy), spawn_proxy(policy)
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        doomed = asyncio.ensure_future(
            session.get(leader.url + "/victim", headers={"Host": "api.internal"})
        )
        for _ in range(500):  # until the leader holds the lease and is fetching
            if origin.hits["/victim"]:
                break
            await asyncio.sleep(0.01)
        waiters = asyncio.ensure_future(_get_all(session, other.url + "/victim", 10))
        await asyncio.sleep(0.2)
        leader.process.send_signal(signal.SIGKILL)
        started = time.monotonic()
        results = await waiters
        elapsed = time.monotonic() - started
        doomed.cancel()
    assert [status for status, _ in results] == [200] * 10
    # lease (1 s) + one origin round trip (3 s), with slack for a loaded machine
    assert elapsed < 1.0 + 3.0 + 1.5
    # the dead leader's request and at least one from the surviving replica
    assert origin.hits["/victim"] >= 2
