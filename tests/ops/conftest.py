"""Real peers for the operations tests: a restartable redis-server, a whole in-process
worker (proxy port + admin listener + operations), and small HTTP helpers.

``live_proxy`` runs ``server.Worker`` exactly as ``sidecache run`` does, minus the
process: its real HTTP/1.1 server and admin app on loopback ports. Replica and
``--workers`` tests use the ``spawn_proxy`` subprocess fixture instead.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from mirakuru import TCPExecutor
from redis import Redis

from proxy.policy.load import load_policy
from proxy.server.worker import Worker, bind
from tests.conftest import Origin, free_port, policy_text
from tests.stores.conftest import (  # noqa: F401  (full_memcached: a fixture, re-exported)
    full_memcached,
    own_memcached,
    redis_executor,
    running,
)

# ---------------------------------------------------------------- redis


@dataclass
class RedisServer:
    """A redis-server this test owns: it may stop and restart it on the same port."""

    executor: TCPExecutor
    port: int

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> Redis:
        return Redis(host="127.0.0.1", port=self.port)

    def subscribers(self, channel: str) -> int:
        with self.client() as client:
            counts = client.pubsub_numsub(channel)
        return int(counts[0][1]) if counts else 0

    def publish(self, channel: str, message: str) -> int:
        with self.client() as client:
            return int(client.publish(channel, message))


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    with running(redis_executor(free_port(), tmp_path / "redis")) as executor:
        yield RedisServer(executor, executor.port)


@pytest.fixture
def memcached_addr() -> Iterator[str]:
    """A memcached of this test's own, as ``host:port``."""
    with running(own_memcached("-m", "16")) as executor:
        yield f"127.0.0.1:{executor.port}"


# ---------------------------------------------------------------- HTTP helpers


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def cache(self) -> str:
        return self.headers.get("X-Cache", "")

    def json(self) -> Any:
        import orjson

        return orjson.loads(self.body)


async def fetch(method: str, url: str, **kwargs: Any) -> Answer:
    """One request on a fresh connection (so SO_REUSEPORT may pick any worker)."""
    connector = aiohttp.TCPConnector(force_close=True)
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        session.request(method, url, **kwargs) as response,
    ):
        body = await response.read()
        return Answer(response.status, dict(response.headers), body)


async def eventually(
    check: Callable[[], Awaitable[bool]], timeout: float = 10.0, what: str = "condition"
) -> None:
    """Poll ``check`` until it holds; fail with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def metric(text: str, name: str, **labels: str) -> float:
    """The sum of the samples of ``name`` whose labels include ``labels``."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        series, _, value = line.rpartition(" ")
        sample, _, label_text = series.partition("{")
        if sample != name:
            continue
        found = dict(
            part.split("=", 1) for part in label_text.rstrip("}").split(",") if "=" in part
        )
        if all(found.get(k) == f'"{v}"' for k, v in labels.items()):
            total += float(value)
    return total


async def scrape(admin_url: str, name: str, **labels: str) -> float:
    answer = await fetch("GET", admin_url + "/metrics")
    return metric(answer.body.decode(), name, **labels)


# ---------------------------------------------------------------- in-process worker


@dataclass
class LiveProxy:
    worker: Worker
    url: str
    admin_url: str
    policy: Path

    async def get(self, path: str, **kwargs: Any) -> Answer:
        return await fetch("GET", self.url + path, **kwargs)

    async def purge(self, body: dict[str, Any], token: str | None = None) -> Answer:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return await fetch("POST", self.admin_url + "/purge", json=body, headers=headers)

    async def metric(self, name: str, **labels: str) -> float:
        return await scrape(self.admin_url, name, **labels)


StartProxy = Callable[..., Awaitable[LiveProxy]]


@pytest.fixture
async def live_proxy(origin: Origin, tmp_path: Path) -> AsyncIterator[StartProxy]:
    """Start a whole worker in-process from a policy body (written to a real file)."""
    workers: list[Worker] = []

    async def start(body: str, *, name: str = "policy.yaml") -> LiveProxy:
        path = tmp_path / name
        path.write_text(policy_text(origin.url, body))
        proxy_sock = bind(("127.0.0.1", 0), reuse_port=False)
        admin_sock = bind(("127.0.0.1", 0), reuse_port=False)
        worker = Worker(load_policy(path), proxy_sock, admin_sock)
        await worker.start()
        workers.append(worker)
        return LiveProxy(
            worker,
            f"http://127.0.0.1:{proxy_sock.getsockname()[1]}",
            f"http://127.0.0.1:{admin_sock.getsockname()[1]}",
            path,
        )

    yield start
    for worker in workers:
        await worker.stop()
