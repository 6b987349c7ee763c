"""``RedisStore``: the shared Redis (or Redis Cluster) backend, over one pooled client.

It owns the translation of every redis-py exception into ``StoreError`` (``store_error``,
kept beside the read pump, which needs it too), and one round trip per operation where it
can. Deadlines and the breaker are ``GuardedStore``'s: no per-command ``socket_timeout``
here (it costs a task per call). ``get``, the hit path, skips the pool: it hands the
entry's stored key to a ``ReadPump`` (``redis_pump.py``), which sends the reads of many
requests as one script call on connections of its own. Every other operation is here, on
the client's pool.

The key layout, the envelope and the Lua scripts are in ``redis_layout.py``: entries are
validated on read against their tags' generations (a purge deletes generations, so losing
index data only ever causes misses), every key has a TTL, and in a cluster an entry's
slot comes from its own key, spread over 64 buckets. ``purge_tags`` cannot count the
entries it invalidated: it answers ``-1``, as Memcached's does.
"""

from __future__ import annotations

import asyncio
import math
import secrets
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, Final, TypeVar

from redis import exceptions as rexc
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.client import Pipeline, PubSub
from redis.asyncio.cluster import ClusterNode, ClusterPipeline, RedisCluster
from redis.backoff import NoBackoff
from redis.maint_notifications import MaintNotificationsConfig
from redis.retry import Retry

from proxy.stores import redis_layout as layout
from proxy.stores.base import OfNoKind, StoreHealth, StoreStats, Subscription
from proxy.stores.redis_pump import ReadPump, read_script, store_error

T = TypeVar("T")
_STORED_KEYS: Final = 4096  # encoded stored keys get remembers (then starts over)


def hash_tag(key: str) -> str | None:
    """The part of ``key`` Redis Cluster hashes (between the first ``{`` and next ``}``)."""
    start = key.find("{")
    if start < 0:
        return None
    end = key.find("}", start + 1)
    if end <= start + 1:
        return None
    return key[start + 1 : end]


class RedisStore(OfNoKind):
    """A ``Store`` on Redis or Redis Cluster; shared by every process pointing at it."""

    shared = True

    def __init__(
        self,
        name: str,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        cluster: bool = False,
        nodes: Sequence[str] = (),
        pool_size: int = 64,
        connect_timeout: float = 0.5,
        key_prefix: str = "",
    ) -> None:
        if "{" in key_prefix or "}" in key_prefix:
            raise ValueError("key_prefix must not contain braces (they pick the cluster slot)")
        self.name = name
        self.cluster = cluster or bool(nodes)
        self._prefix = key_prefix
        # no retries (the guard decides), no per-command socket timeout (see module doc)
        common: dict[str, Any] = {
            "socket_timeout": None,
            "socket_connect_timeout": connect_timeout,
            "retry": Retry(NoBackoff(), 0),
            "health_check_interval": 0,
        }
        self._client: Redis | RedisCluster
        self._pool: BlockingConnectionPool | None = None  # single node only
        if self.cluster:
            common["max_connections"] = pool_size
            if nodes:
                startup = [ClusterNode(*_host_port(node)) for node in nodes]
                self._client = RedisCluster(startup_nodes=startup, **common)
            else:
                self._client = RedisCluster.from_url(url, **common)
        else:
            # Maintenance notifications (a RESP3 feature of managed Redis) left on "auto"
            # also switch off the pool's check for a connection the server closed while
            # idle, so every pooled connection failed once after a Redis restart.
            self._pool = BlockingConnectionPool.from_url(
                url,
                max_connections=pool_size,
                timeout=None,
                maint_notifications_config=MaintNotificationsConfig(enabled=False),
                **common,
            )
            self._client = Redis.from_pool(self._pool)  # owns the pool: aclose() closes it
        self._closed = False
        self._reads = ReadPump(name, self._client, self._pool, key_prefix)
        self._stored: dict[str, bytes] = {}  # key -> its encoded stored key, for get

    # ------------------------------------------------------------ key layout

    def _entry(self, key: str) -> str:
        """The stored key of an entry (see ``redis_layout``)."""
        if self.cluster:
            return f"{self._prefix}{layout.bucket_of(key)}{key}"
        return self._prefix + key

    def _generation(self, bucket: str, digest: str) -> str:
        return f"{self._prefix}{bucket}~g:{digest}"

    def _lock_key(self, key: str) -> str:
        bucket = layout.bucket_of(key) if self.cluster else ""
        return f"{self._prefix}{bucket}~l:{key}"

    # ------------------------------------------------------------ error mapping

    async def _run(self, op: str, fn: Callable[[], Awaitable[T]]) -> T:
        try:
            if isinstance(self._client, RedisCluster):
                _ = await self._client.initialize()  # see redis_pump._read_cluster
            return await fn()
        except (rexc.RedisError, OSError) as exc:
            raise store_error(self.name, op, exc) from exc

    # ------------------------------------------------------------ Store

    async def get(self, key: str) -> bytes | None:
        stored = self._stored.get(key)  # hot keys are read over and over
        if stored is None:
            if len(self._stored) >= _STORED_KEYS:
                self._stored.clear()
            stored = self._stored[key] = self._entry(key).encode()
        return await self._reads.read(stored)

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        if not keys:
            return []
        stored = [self._entry(key) for key in keys]
        client = self._client
        if isinstance(client, RedisCluster):
            cluster = client
            groups: dict[str, list[str]] = {}
            for one in dict.fromkeys(stored):
                groups.setdefault(one[: one.index("}") + 1], []).append(one)
            found: dict[str, bytes | None] = {}

            async def read(group: list[str]) -> None:
                values = await read_script(cluster, group, "")
                found.update(zip(group, values, strict=True))

            await self._run("get_many", lambda: _gather(read(g) for g in groups.values()))
            return [found[one] for one in stored]
        single = client
        base = f"{self._prefix}~g:"
        values = await self._run("get_many", lambda: read_script(single, stored, base))
        return list(values)

    async def set(self, key: str, value: bytes, ttl: float, tags: Sequence[str] = ()) -> None:
        if ttl <= 0:
            return
        ms = max(1, math.ceil(ttl * 1000))
        stored = self._entry(key)
        unique = list(dict.fromkeys(tags))
        if len(unique) > layout.MAX_TAGS:
            return  # an entry that could not name all its tags could not be purged by all
        digests = [layout.tag_digest(tag) for tag in unique]
        fresh = "".join(layout.fresh_generation() for _ in unique)
        if self._pool is None:  # a cluster: entry and generations in one script call
            bucket = stored[len(self._prefix) : stored.index("}") + 1]
            keys = [stored, *(self._generation(bucket, digest) for digest in digests)]
            args = (value, ms, "".join(digests), fresh)
            await self._run("set", lambda: _script(self._client, layout.WRITE, keys, args))
            return
        head = bytes((layout.MAGIC, len(unique)))
        if unique:
            keys = [self._generation("", digest) for digest in digests]
            gens: bytes = await self._run(
                "set", lambda: _script(self._client, layout.GENERATIONS, keys, (ms, fresh))
            )
            pairs = zip(digests, _chunks(gens, layout.GEN), strict=True)
            head += b"".join(digest.encode() + gen for digest, gen in pairs)
        await self._run("set", lambda: self._set_raw(stored.encode(), head, value, ms))

    async def _set_raw(self, stored: bytes, head: bytes, value: bytes, ms: int) -> None:
        """``SET stored head+value PX ms`` with ``head`` and ``value`` sent as they are,
        one after the other (joining them here would copy a big body on the event loop)."""
        assert self._pool is not None
        pool = self._pool
        size, expiry = b"%d" % (len(head) + len(value)), b"%d" % ms
        chunks = [
            b"*5\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$%s\r\n" % (len(stored), stored, size),
            head,
            value,
            b"\r\n$2\r\nPX\r\n$%d\r\n%s\r\n" % (len(expiry), expiry),
        ]
        conn = await pool.get_connection()  # type: ignore[no-untyped-call]
        try:
            await conn.send_packed_command(chunks, check_health=False)
            await conn.read_response()
        except rexc.ResponseError:
            raise  # read whole: the connection is in step
        except BaseException:
            await conn.disconnect(nowait=True)  # maybe mid-command: never reuse it
            raise
        finally:
            await pool.release(conn)

    async def delete(self, keys: Sequence[str]) -> int:
        if not keys:
            return 0
        stored = [self._entry(key) for key in keys]
        removed: int = await self._run("delete", lambda: self._client.delete(*stored))
        return removed

    async def purge_tags(self, tags: Sequence[str]) -> int:
        """Delete the tags' generations (in every bucket): their entries read as misses."""
        digests = [layout.tag_digest(tag) for tag in dict.fromkeys(tags)]
        if not digests:
            return 0
        buckets = [f"{{{tag}}}" for tag in layout.BUCKET_TAGS] if self.cluster else [""]

        async def purge() -> None:
            pipe = self._client.pipeline(transaction=False)
            for bucket in buckets:  # one DEL per bucket: its keys share a slot
                _queue(pipe, "DEL", *(self._generation(bucket, d) for d in digests))
            await pipe.execute()

        await self._run("purge_tags", purge)
        return -1  # entries are invalidated where they lie: nothing here counts them

    async def soften(self, keys: Sequence[str]) -> int:
        """Mark the entries under ``keys`` stale since now (Redis ``TIME``), in place."""
        groups: dict[str, list[str]] = {}
        for key in dict.fromkeys(keys):
            stored = self._entry(key)
            bucket = stored[len(self._prefix) : stored.index("}") + 1] if self.cluster else ""
            groups.setdefault(bucket, []).append(stored)

        async def soften() -> int:
            calls = [(group, ()) for group in groups.values()]
            return sum(await _scripts(self._client, layout.SOFTEN_KEYS, calls))

        return await self._run("soften", soften)

    async def soften_tags(self, tags: Sequence[str]) -> int:
        """Replace the tags' generations (in every bucket), linking the old ones to the
        new: their entries read as marked stale (see ``redis_layout``)."""
        digests = [layout.tag_digest(tag) for tag in dict.fromkeys(tags)]
        if not digests:
            return 0
        buckets = [f"{{{tag}}}" for tag in layout.BUCKET_TAGS] if self.cluster else [""]
        fresh = "".join(layout.fresh_generation() for _ in digests)

        calls = [([self._generation(b, d) for d in digests], (fresh,)) for b in buckets]
        await self._run("soften_tags", lambda: _scripts(self._client, layout.SOFTEN, calls))
        return -1  # entries are marked where they lie: nothing here counts them

    async def lock(self, key: str, ttl: float) -> str | None:
        token = secrets.token_hex(16)
        ms = max(1, math.ceil(ttl * 1000))
        lock_key = self._lock_key(key)
        taken = await self._run("lock", lambda: self._client.set(lock_key, token, nx=True, px=ms))
        return token if taken else None

    async def unlock(self, key: str, token: str) -> bool:
        lock_key = self._lock_key(key)
        # the script answers 0 or 1
        result = await self._run(
            "unlock", lambda: _script(self._client, layout.UNLOCK, [lock_key], (token,))
        )
        return bool(result)

    async def ping(self) -> bool:
        return bool(await self._run("ping", self._ping))

    async def _ping(self) -> bool:
        answer: bool = await self._client.ping()
        return answer

    def stats(self) -> StoreStats:
        return StoreStats()

    def health(self) -> StoreHealth:
        return StoreHealth()  # refusals and the breaker are counted by GuardedStore

    def channel(self) -> RedisStore:
        return self

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self._reads.aclose()
        await self._client.aclose()

    # ------------------------------------------------------------ pub/sub (coalescing)

    async def pubsub(self) -> PubSub:
        """A new PubSub on this backend (cluster: on one node; classic pub/sub spans all)."""
        client = self._client
        if isinstance(client, RedisCluster):
            # the cluster client learns its slot map on first use; a PubSub needs it now
            _ = await self._run("pubsub", client.initialize)
        return client.pubsub()

    async def subscription(self) -> Subscription:
        """``pubsub()`` as the ``Channel`` protocol's ``Subscription``."""
        return _Subscription(await self.pubsub())

    async def publish(self, channel: str, message: bytes) -> int:
        """Publish ``message``; answers how many subscribers received it."""
        receivers: int = await self._run("publish", lambda: self._client.publish(channel, message))
        return receivers


class _Subscription:
    """redis-py's ``PubSub`` as a ``Subscription``."""

    def __init__(self, pubsub: PubSub) -> None:
        self._pubsub = pubsub

    async def subscribe(self, channel: str) -> None:
        await self._pubsub.subscribe(channel)

    async def get_message(self, timeout: float) -> dict[str, Any] | None:
        message: dict[str, Any] | None = await self._pubsub.get_message(timeout=timeout)
        return message

    async def ping(self) -> None:
        await self._pubsub.ping()

    async def aclose(self) -> None:
        await self._pubsub.aclose()  # type: ignore[no-untyped-call]


def _queue(pipe: Pipeline | ClusterPipeline, *command: bytes | str | int) -> None:
    # redis-py types a queued command as an awaitable; in a pipeline it only queues
    _ = pipe.execute_command(*command)


async def _script(
    client: Redis | RedisCluster, script: str, keys: list[str], args: Sequence[str | int | bytes]
) -> Any:
    """``script`` sent whole: one round trip even after a restart (by SHA1 it would take
    two then); Redis keeps its compiled form. Only the hit path's ``READ`` goes by SHA1."""
    return await client.eval(script, len(keys), *keys, *args)


async def _gather(jobs: Iterable[Awaitable[None]]) -> None:
    await asyncio.gather(*jobs)


async def _scripts(
    client: Redis | RedisCluster,
    script: str,
    calls: Sequence[tuple[list[str], Sequence[str | int | bytes]]],
) -> list[Any]:
    """``script`` once per (keys, args), pipelined as ``purge_tags`` does: a cluster
    pipeline sends each node its calls in one write over one connection (sent one by one
    at once, a cluster's 64 buckets opened up to 64 connections per call)."""
    pipe = client.pipeline(transaction=False)
    for keys, args in calls:
        _queue(pipe, "EVAL", script, len(keys), *keys, *args)
    answers: list[Any] = await pipe.execute()
    return answers


def _chunks(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


def _host_port(node: str) -> tuple[str, int]:
    host, _, port = node.rpartition(":")
    return host.strip("[]"), int(port)
