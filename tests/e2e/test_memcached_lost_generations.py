"""Losing Memcached generation counters can only cause misses, never a purged entry HIT.

Two proxy processes share one real memcached. Their entries are warmed, then the
counters are lost the three ways they are lost in production: deleted by hand, evicted
by memory pressure, and a memcached restart. Then purges by tag, prefix, URL and route
answer 200, and every purged URL is read through both proxies: none may be answered
from cache with the body it had before the purge (the origin numbers each answer).
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest

from tests.conftest import Origin, ProxyProcess, SpawnProxy, policy_text
from tests.e2e.purgecheck import (
    DOCS,
    HOST,
    PRODUCTS,
    get,
    purge_until_done,
    served_purged,
)
from tests.stores.conftest import memcached_expiries, own_memcached

ALL = PRODUCTS + DOCS
PURGE = {
    "tags": ["product:0", "product:1", "product:2"],
    "prefixes": ["/docs"],
    "urls": [f"http://{HOST}/api/products/5"],
}
PURGED = [*PRODUCTS[:3], PRODUCTS[5], *DOCS]


class Memcached:
    """A memcached of this test's own, restartable on its port."""

    def __init__(self, megabytes: int) -> None:
        self.executor = own_memcached("-m", str(megabytes))
        self.port: int = self.executor.port

    def expiries(self) -> dict[bytes, int]:
        return memcached_expiries(self.port)

    def send(self, payload: bytes, replies: int) -> None:
        """Pipelined commands on a connection of the test's own; waits for every reply."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=30) as sock:
            sock.sendall(payload)
            data = b""
            while data.count(b"\r\n") < replies:
                chunk = sock.recv(1 << 20)
                assert chunk, "memcached hung up"
                data += chunk


@pytest.fixture
def memcached() -> Iterator[Memcached]:
    server = Memcached(8)
    server.executor.start()
    try:
        yield server
    finally:
        server.executor.stop()


def lose_by_delete(server: Memcached) -> None:
    counters = [key for key in server.expiries() if key.startswith(b"~g:")]
    assert counters
    server.send(b"".join(b"delete %s\r\n" % key for key in counters), len(counters))


def lose_by_eviction(server: Memcached) -> None:
    """Flood the counters' slab classes with small items until LRU evicts every counter
    (the entries, a few hundred bytes each, sit in larger classes and stay)."""
    for round_ in range(40):
        batch = []
        for i in range(20_000):
            value = b"9" * (10 + i % 60)  # items of 60 to 150 bytes, like the counters
            batch.append(b"set flood:%d:%d 0 3600 %d\r\n%s\r\n" % (round_, i, len(value), value))
        server.send(b"".join(batch), len(batch))
        if not any(key.startswith(b"~g:") for key in server.expiries()):
            break
    held = server.expiries()
    assert not any(key.startswith(b"~g:") for key in held), "counters survived the flood"
    entries = [key for key in held if not key.startswith((b"~g:", b"flood:"))]
    assert len(entries) >= len(ALL)  # the entries outlived their counters


def lose_by_restart(server: Memcached) -> None:
    server.executor.stop()
    server.executor.start()


async def warm(session: aiohttp.ClientSession, a: ProxyProcess, b: ProxyProcess) -> dict:
    """Every URL stored by A and served by B from the shared store: the bodies cached."""
    bodies = {}
    for path in ALL:
        _, bodies[path] = await get(session, a.url + path)
    for path in ALL:
        assert await get(session, b.url + path) == ("HIT", bodies[path])
    return bodies


@pytest.mark.parametrize("lose", [lose_by_delete, lose_by_eviction, lose_by_restart])
async def test_lost_counters_cause_misses_never_a_purged_hit(
    origin: Origin,
    spawn_proxy: SpawnProxy,
    memcached: Memcached,
    session: aiohttp.ClientSession,
    lose: Any,
) -> None:
    policy = policy_text(
        origin.url,
        f"""
        backends:
          mc:
            type: memcached
            servers: ["127.0.0.1:{memcached.port}"]
            timeout: 500ms
            breaker: {{failures: 50, cooldown: 1s}}
        defaults: {{backend: mc, ttl: 1h}}
        routes:
          - name: products
            match: {{path: "/api/products/{{id}}"}}
            tags: ["product:{{id}}"]
          - name: docs
            match: {{prefix: "/docs"}}
        """,
    )
    a, b = spawn_proxy(policy), spawn_proxy(policy)
    before = await warm(session, a, b)
    await asyncio.to_thread(lose, memcached)
    await purge_until_done(session, a, PURGE)
    assert await served_purged(session, [b, a], PURGED, before) == []
    # what was not purged may miss once (its counters are gone), then is cached again
    for path in ALL:
        await get(session, a.url + path)
        assert (await get(session, b.url + path))[0] == "HIT"

    # and once more with the counters the proxies have just re-created lost again
    before = await warm(session, a, b)
    await asyncio.to_thread(lose, memcached)
    await purge_until_done(session, b, {"routes": ["products"]})
    assert await served_purged(session, [a, b], PRODUCTS, before) == []
    held = await asyncio.to_thread(memcached.expiries)
    assert [key for key, exp in held.items() if exp == -1] == []
