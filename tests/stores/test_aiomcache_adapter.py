"""Pins what proxy/stores/aiomcache_adapter.py relies on in aiomcache's internals: the
client's calls take their connections from the pool ``new_client`` gave it, that pool
grows past aiomcache's ``minsize`` up to ``pool_size``, and its connections raise at EOF
instead of spinning. An aiomcache upgrade that changes any of it fails here."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from proxy.stores.aiomcache_adapter import new_client

POOL_SIZE = 4


def split(addr: str) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    return host, int(port)


async def test_the_clients_calls_use_the_adapters_pool(memcached_addr: str) -> None:
    client, pool = new_client(*split(memcached_addr), POOL_SIZE)
    try:
        assert pool.size() == 0
        await client.set(b"pinned", b"value")
        assert await client.get(b"pinned") == b"value"
        assert pool.size() == 1  # the one connection the calls took came from our pool
    finally:
        await client.close()


async def test_the_pool_grows_to_pool_size_while_every_connection_is_busy(
    memcached_addr: str,
) -> None:
    client, pool = new_client(*split(memcached_addr), POOL_SIZE)
    try:
        # aiomcache's own pool would open one (its minsize) and make the second wait
        held = [await asyncio.wait_for(pool.acquire(), 10) for _ in range(POOL_SIZE)]
        assert pool.size() == POOL_SIZE
        assert len({id(conn) for conn in held}) == POOL_SIZE
        for conn in held:
            pool.release(conn)
        assert await client.get(b"absent") is None  # released connections serve calls
        assert pool.size() == POOL_SIZE
    finally:
        await client.close()


@pytest.fixture
async def hangs_up() -> AsyncIterator[tuple[str, int]]:
    """A server that reads a command and closes the connection without a word."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readline()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    yield "127.0.0.1", server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()


async def test_a_connection_closed_mid_command_raises(hangs_up: tuple[str, int]) -> None:
    client, _ = new_client(*hangs_up, POOL_SIZE)
    try:
        # aiomcache reads a storage command's reply until a line ends in CRLF: with its
        # own streams readline() answers b"" at once, forever, and this set never
        # returns nor lets the loop run (the test's timeout ends it)
        with pytest.raises(asyncio.IncompleteReadError):
            await asyncio.wait_for(client.set(b"key", b"value"), 10)
    finally:
        await client.close()
