"""Memcached leases are released by compare-and-delete (the meta protocol, CAS-checked):
a late leader whose lease expired and was taken by another never deletes the other's.

Expiry is played by deleting the lease key by hand (memcached cannot tell an expired item
from a deleted one); the race inside ``unlock`` is played with a relay that holds the
replies back while the test replaces the lease behind the leader's back.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from proxy.stores.memcached import MemcachedStore

from .conftest import MakeRelay, Relay

KEY = "sc:{r}:lease"
LEASE = b"~l:" + KEY.encode()  # the lease's memcached key (no key_prefix)


async def command(addr: str, line: bytes) -> bytes:
    """One text-protocol command on a connection of the test's own (not the store's)."""
    host, port = addr.rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(line)
        await writer.drain()
        return await reader.readline()
    finally:
        writer.close()
        await writer.wait_closed()


async def held(addr: str) -> bytes | None:
    host, port = addr.rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(b"get " + LEASE + b"\r\n")
        await writer.drain()
        head = await reader.readline()
        if head == b"END\r\n":
            return None
        value = await reader.readexactly(int(head.split()[3]) + 2)
        assert await reader.readline() == b"END\r\n"
        return value[:-2]
    finally:
        writer.close()
        await writer.wait_closed()


async def replace_lease(addr: str, token: bytes) -> None:
    """The leader's lease expires and another replica's ``add`` takes the key."""
    assert await command(addr, b"delete " + LEASE + b"\r\n") == b"DELETED\r\n"
    line = b"add %s 0 30 %d\r\n%s\r\n" % (LEASE, len(token), token)
    assert await command(addr, line) == b"STORED\r\n"


@pytest.fixture
async def store(memcached_addr: str) -> AsyncIterator[MemcachedStore]:
    store = MemcachedStore("mc", [memcached_addr], timeout=1.0)
    yield store
    await store.aclose()


async def test_a_late_leader_cannot_delete_the_lease_another_took(
    store: MemcachedStore, memcached_addr: str
) -> None:
    late = await store.lock(KEY, 5)
    assert late is not None
    await replace_lease(memcached_addr, b"the-other-replica")
    assert await store.unlock(KEY, late) is False
    assert await held(memcached_addr) == b"the-other-replica"
    other = await store.lock(KEY, 5)
    assert other is None  # still held by the other
    assert await store.unlock(KEY, "the-other-replica") is True
    assert await held(memcached_addr) is None


@pytest.mark.parametrize("taker", [b"the-other-replica", b"SAME"])
async def test_a_lease_replaced_between_the_read_and_the_delete_survives(
    memcached_addr: str, make_relay: MakeRelay, taker: bytes
) -> None:
    relay: Relay = await make_relay(memcached_addr)
    store = MemcachedStore("mc", [f"127.0.0.1:{relay.port}"], timeout=1.0)
    try:
        token = await store.lock(KEY, 5)
        assert token is not None
        if taker == b"SAME":
            taker = token.encode()  # even the same value written again is another item
        relay.delay = 0.3  # the leader's read reaches memcached; its answer is held back
        sent = relay.requests
        unlock = asyncio.ensure_future(store.unlock(KEY, token))
        for _ in range(500):  # until the read has passed the relay (at most 5 s)
            if relay.requests != sent:
                break
            await asyncio.sleep(0.01)
        # the leader has read its own lease; before it deletes, the lease expires and
        # another replica takes it (directly, not through the relay)
        await replace_lease(memcached_addr, taker)
        assert await unlock is False
        assert await held(memcached_addr) == taker
        relay.delay = 0
        assert await store.lock(KEY, 5) is None
    finally:
        await store.aclose()


async def test_release_leaves_the_connection_usable(store: MemcachedStore) -> None:
    for _ in range(3):  # the same pooled connection, reply after reply
        token = await store.lock(KEY, 5)
        assert token is not None
        assert await store.unlock(KEY, "not-mine") is False
        assert await store.unlock(KEY, token) is True
        await store.set("/after", b"body", 30)
        assert await store.get("/after") == b"body"
