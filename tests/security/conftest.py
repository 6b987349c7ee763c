"""Fixtures of the hostile-input tests: the real Redis/Memcached of the store tests, and
``serve``, the proxy in-process as production wires it (origin pool size from the policy)
with the HTTP server's timeouts open to the test."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest

from proxy.engine.driver import Engine
from proxy.origin.client import OriginClient
from proxy.policy.load import parse_policy
from proxy.server.listener import HttpServer, Limits
from proxy.server.worker import bind
from proxy.stores.base import Store
from proxy.stores.factory import build_stores, close_stores
from tests.conftest import Origin, policy_text
from tests.stores.conftest import (  # noqa: F401  (fixtures, re-exported)
    memcached_addr,
    memcached_server,
    redis_server,
    redis_url,
)


@dataclass
class Served:
    url: str
    http: HttpServer
    engine: Engine
    stores: dict[str, Store]

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])


Serve = Callable[..., Awaitable[Served]]


@pytest.fixture
async def serve(origin: Origin) -> AsyncIterator[Serve]:
    running: list[Served] = []

    async def factory(body: str = "", **http: Any) -> Served:
        loaded = parse_policy(policy_text(origin.url, body), "test-policy.yaml")
        server = loaded.policy.server
        stores = build_stores(loaded.policy.backends)
        client = OriginClient(loaded.policy.origin, server.origin_connections)
        engine = Engine(loaded, stores, client)
        server_ = HttpServer(engine, Limits.of(server, **http))
        sock = bind(("127.0.0.1", 0), reuse_port=False)
        await server_.start(sock)
        served = Served(f"http://127.0.0.1:{sock.getsockname()[1]}", server_, engine, stores)
        running.append(served)
        return served

    yield factory
    for served in running:
        await served.http.stop(0)
        await served.engine.aclose()
        await close_stores(served.stores)
