"""RedisStore against a real redis-server: what only Redis does (key layout and TTLs on the
server, URLs, TLS, pub/sub, errors, a full Redis). What every store promises is in
test_contract.py."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis
from redis.exceptions import OutOfMemoryError

from proxy.errors import StoreError, StoreFull, StoreUnavailable
from proxy.stores.redis import RedisStore, hash_tag
from proxy.stores.redis_layout import describe, tag_digest
from tests.stores.conftest import MakeRedis

BINARY = bytes(range(256)) * 64 + b"\x00\r\n\xff" + os.urandom(4096)


@pytest.fixture
async def store(redis_url: str) -> AsyncIterator[RedisStore]:
    store = RedisStore("r", redis_url, key_prefix="t1:")
    yield store
    await store.aclose()


@pytest.mark.parametrize(
    ("key", "tag"),
    [("sc:{products}:ab12", "products"), ("plain", None), ("{}x", None), ("a{b}{c}", "b")],
)
def test_hash_tag_follows_redis_rules(key: str, tag: str | None) -> None:
    assert hash_tag(key) == tag


async def test_ttl_is_set_on_the_server_in_the_same_write(
    store: RedisStore, redis_raw: Redis
) -> None:
    await store.set("sc:{r}:ttl", b"v", 12.5, tags=["t"])
    await store.set("sc:{r}:ttl2", b"v", 3)
    assert 12_000 < await redis_raw.pttl("t1:sc:{r}:ttl") <= 12_500
    assert 2_000 < await redis_raw.pttl("t1:sc:{r}:ttl2") <= 3_000
    # the tag's generation expires too, no sooner than the longest entry it guards
    assert 12_000 < await redis_raw.pttl(f"t1:~g:{tag_digest('t')}") <= 12_500
    await store.set("sc:{r}:ttl3", b"v", 5, tags=["t"])
    assert 11_000 < await redis_raw.pttl(f"t1:~g:{tag_digest('t')}") <= 12_500


async def test_key_prefix_and_layout_on_one_node(store: RedisStore, redis_raw: Redis) -> None:
    await store.set("sc:products:ab", b"v", 30, tags=["x"])
    await store.set("plain key", b"v", 30, tags=["x"])
    await store.lock("sc:products:ab", 5)
    keys = {k.decode() for k in await redis_raw.keys("*")}
    assert {k: describe(k, "t1:") for k in keys} == {
        "t1:sc:products:ab": ("entry", "products"),
        "t1:plain key": ("foreign", None),  # not an engine key
        f"t1:~g:{tag_digest('x')}": ("generation", None),
        "t1:~l:sc:products:ab": ("lease", "products"),
    }
    assert describe("other:sc:products:ab", "t1:") == ("foreign", None)
    assert await store.get("plain key") == b"v"


async def test_a_lease_is_a_key_with_its_ttl_on_the_server(
    store: RedisStore, redis_raw: Redis
) -> None:
    token = await store.lock("sc:{r}:1", 5)
    assert token is not None
    assert await redis_raw.get("t1:~l:sc:{r}:1") == token.encode()
    assert 4_000 < await redis_raw.pttl("t1:~l:sc:{r}:1") <= 5_000


async def test_unix_socket_url(redis_unix_url: str) -> None:
    store = RedisStore("u", redis_unix_url)
    try:
        await store.set("sc:{r}:u", b"v", 30)
        assert await store.get("sc:{r}:u") == b"v"
        assert await store.ping() is True
    finally:
        await store.aclose()


async def test_tls_url(redis_tls_url: str) -> None:
    store = RedisStore("tls", redis_tls_url)
    try:
        await store.set("sc:{r}:tls", BINARY, 30, tags=["t"])
        assert await store.get("sc:{r}:tls") == BINARY
        assert await store.purge_tags(["t"]) == -1
        assert await store.get("sc:{r}:tls") is None
    finally:
        await store.aclose()
    # a client that does not trust the certificate is refused, as a store error
    untrusting = RedisStore("tls", redis_tls_url.split("?")[0])
    try:
        with pytest.raises(StoreError):
            await untrusting.get("sc:{r}:tls")
    finally:
        await untrusting.aclose()


async def test_pubsub_round_trip(store: RedisStore) -> None:
    pubsub = await store.pubsub()
    try:
        await pubsub.subscribe("sc:filled")
        assert await store.publish("sc:filled", b"sc:{r}:1") == 1
        message = None
        while message is None:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1)
        assert message["data"] == b"sc:{r}:1"
    finally:
        await pubsub.aclose()


async def test_unreachable_server_raises_store_unavailable() -> None:
    store = RedisStore("down", "redis://127.0.0.1:1/0", connect_timeout=0.5)
    try:
        with pytest.raises(StoreUnavailable):
            await store.get("sc:{r}:1")
        with pytest.raises(StoreUnavailable):
            await store.ping()
    finally:
        await store.aclose()


async def test_keys_not_ours_read_as_misses(store: RedisStore, redis_raw: Redis) -> None:
    await redis_raw.sadd("t1:sc:{r}:wrongtype", "x")
    await redis_raw.set("t1:sc:{r}:foreign", b"written by someone else")
    assert await store.get("sc:{r}:wrongtype") is None
    assert await store.get("sc:{r}:foreign") is None
    assert await store.get_many(["sc:{r}:wrongtype", "sc:{r}:foreign"]) == [None, None]


async def test_a_full_redis_refuses_writes_as_store_full(make_redis: MakeRedis) -> None:
    server = make_redis("--maxmemory-policy", "noeviction")
    url = f"redis://127.0.0.1:{server.port}/0"
    redis_raw = Redis.from_url(url)
    store = RedisStore("full", url)
    try:
        await store.set("sc:r:kept", b"v", 60, tags=["t"])
        for i in range(4):
            await redis_raw.set(f"filler:{i}", b"x" * 1024**2)
        await redis_raw.config_set("maxmemory", "2mb")  # well past it: every write is refused
        with pytest.raises(OutOfMemoryError):
            await redis_raw.set("filler", b"x")
        for write in (
            lambda: store.set("sc:r:new", b"v", 60),
            lambda: store.set("sc:r:tagged", b"v", 60, tags=["t", "u"]),
            lambda: store.lock("sc:r:new", 5),
        ):
            with pytest.raises(StoreFull) as refused:
                await write()
            assert refused.value.backend == "full"
            assert "OOM command not allowed" in str(refused.value)
        # reads, deletes and purges still work on a full Redis
        assert await store.get("sc:r:kept") == b"v"
        await store.purge_tags(["t"])
        assert await store.get("sc:r:kept") is None
        assert await store.get_many(["sc:r:kept", "sc:r:new"]) == [None, None]
    finally:
        await store.aclose()
        await redis_raw.aclose()


def test_prefix_with_braces_is_refused() -> None:
    with pytest.raises(ValueError, match="braces"):
        RedisStore("r", key_prefix="{x}:")
