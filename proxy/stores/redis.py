"""``RedisStore``: the shared Redis (or Redis Cluster) backend, over one pooled client.

It owns the key layout in Redis, one round trip per operation where it can, and the
translation of every redis-py exception into ``StoreError`` (``store_error``, kept beside
the read pump, which needs it too). Deadlines and the breaker are ``GuardedStore``'s: no
per-command ``socket_timeout`` here (it costs a task per call). ``get``, the hit path,
skips the pool: it hands the entry's stored key to a ``ReadPump`` (``redis_pump.py``),
which sends the reads of many requests as one command on connections of its own. Every
other operation is here, on the client's pool.

Key layout (``P`` = ``key_prefix``, which must not contain braces). Every key belongs to a
*group*: the key's Redis hash tag (the engine's ``sc:{route}:<digest>`` → ``route``), or,
for a key without one, a short digest of the key. All of a group's keys share one slot::

    P<key>                entry (a key without a hash tag: P{<digest>}<key>)
    P~t:{<group>}:<tag>   SET of the group's entry keys carrying <tag>  (expires)
    P~td:<tag>            SET of the groups that have a ~t set for <tag> (expires)
    P~l:{<group>}:<key>   lease: SET NX PX <random token>

``set`` writes the entry and its tag sets in one Lua call (one slot) and the tag
directories in the same pipeline; ``purge_tags`` reads the directories, then deletes
each group's members atomically with one Lua call per group. No SCAN, no blob index.
"""

from __future__ import annotations

import hashlib
import math
import secrets
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final, TypeVar

from redis import exceptions as rexc
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.client import Pipeline, PubSub
from redis.asyncio.cluster import ClusterNode, ClusterPipeline, RedisCluster
from redis.backoff import NoBackoff
from redis.maint_notifications import MaintNotificationsConfig
from redis.retry import Retry

from proxy.stores.base import StoreHealth, StoreStats
from proxy.stores.redis_pump import ReadPump, store_error

T = TypeVar("T")
_STORED_KEYS: Final = 4096  # encoded stored keys get remembers (then starts over)

# KEYS[1] = entry, KEYS[2..] = its group's tag sets; ARGV = value, ttl ms, member
_SET_TAGGED: Final = """
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
local ms = tonumber(ARGV[2])
for i = 2, #KEYS do
  redis.call('SADD', KEYS[i], ARGV[3])
  if redis.call('PTTL', KEYS[i]) < ms then redis.call('PEXPIRE', KEYS[i], ms) end
end
return 1
"""
# KEYS[1] = a tag directory; ARGV = ttl ms, group
_ADD_GROUP: Final = """
redis.call('SADD', KEYS[1], ARGV[2])
local ms = tonumber(ARGV[1])
if redis.call('PTTL', KEYS[1]) < ms then redis.call('PEXPIRE', KEYS[1], ms) end
return 1
"""
# KEYS[1] = one group's tag set; its members live in the same slot
_PURGE_SET: Final = """
local members = redis.call('SMEMBERS', KEYS[1])
local removed = 0
for i = 1, #members, 512 do
  removed = removed + redis.call('DEL', unpack(members, i, math.min(i + 511, #members)))
end
redis.call('DEL', KEYS[1])
return removed
"""
_UNLOCK: Final = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def hash_tag(key: str) -> str | None:
    """The part of ``key`` Redis Cluster hashes (between the first ``{`` and next ``}``)."""
    start = key.find("{")
    if start < 0:
        return None
    end = key.find("}", start + 1)
    if end <= start + 1:
        return None
    return key[start + 1 : end]


class RedisStore:
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
        pool: BlockingConnectionPool | None = None
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
            pool = BlockingConnectionPool.from_url(
                url,
                max_connections=pool_size,
                timeout=None,
                maint_notifications_config=MaintNotificationsConfig(enabled=False),
                **common,
            )
            self._client = Redis.from_pool(pool)  # owns the pool: aclose() closes it
        self._closed = False
        self._reads = ReadPump(name, self._client, pool)
        self._stored: dict[str, bytes] = {}  # key -> its encoded stored key, for get

    # ------------------------------------------------------------ key layout

    def _entry(self, key: str) -> tuple[str, str]:
        """The stored key of an entry and its group."""
        group = hash_tag(key)
        if group is not None:
            return self._prefix + key, group
        group = hashlib.blake2b(key.encode(), digest_size=6).hexdigest()
        return f"{self._prefix}{{{group}}}{key}", group

    def _tag_set(self, group: str, tag: str) -> str:
        return f"{self._prefix}~t:{{{group}}}:{tag}"

    def _tag_dir(self, tag: str) -> str:
        return f"{self._prefix}~td:{tag}"

    def _lock_key(self, key: str) -> str:
        _, group = self._entry(key)
        return f"{self._prefix}~l:{{{group}}}:{key}"

    # ------------------------------------------------------------ error mapping

    async def _run(self, op: str, fn: Callable[[], Awaitable[T]]) -> T:
        try:
            return await fn()
        except (rexc.RedisError, OSError) as exc:
            raise store_error(self.name, op, exc) from exc

    # ------------------------------------------------------------ Store

    async def get(self, key: str) -> bytes | None:
        stored = self._stored.get(key)  # hot keys are read over and over
        if stored is None:
            if len(self._stored) >= _STORED_KEYS:
                self._stored.clear()
            stored = self._stored[key] = self._entry(key)[0].encode()
        return await self._reads.read(stored)

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        if not keys:
            return []
        stored = [self._entry(key)[0] for key in keys]
        client = self._client
        if isinstance(client, RedisCluster):
            cluster = client
            values = await self._run("get_many", lambda: cluster.mget_nonatomic(stored))
        else:
            single = client
            values = await self._run("get_many", lambda: single.mget(stored))
        return list(values)

    async def set(self, key: str, value: bytes, ttl: float, tags: Sequence[str] = ()) -> None:
        if ttl <= 0:
            return
        ms = max(1, math.ceil(ttl * 1000))
        stored, group = self._entry(key)
        if not tags:
            await self._run("set", lambda: self._client.set(stored, value, px=ms))
            return
        unique = list(dict.fromkeys(tags))
        keys = [stored, *(self._tag_set(group, tag) for tag in unique)]

        async def write() -> None:
            pipe = self._client.pipeline(transaction=False)
            _queue(pipe, "EVAL", _SET_TAGGED, len(keys), *keys, value, ms, stored)
            for tag in unique:
                _queue(pipe, "EVAL", _ADD_GROUP, 1, self._tag_dir(tag), ms, group)
            await pipe.execute()

        await self._run("set", write)

    async def delete(self, keys: Sequence[str]) -> int:
        if not keys:
            return 0
        stored = [self._entry(key)[0] for key in keys]
        removed: int = await self._run("delete", lambda: self._client.delete(*stored))
        return removed

    async def purge_tags(self, tags: Sequence[str]) -> int:
        unique = list(dict.fromkeys(tags))
        if not unique:
            return 0

        async def purge() -> int:
            pipe = self._client.pipeline(transaction=False)
            for tag in unique:
                _queue(pipe, "SMEMBERS", self._tag_dir(tag))
            groups: list[set[bytes]] = await pipe.execute()
            sets = [
                self._tag_set(group.decode(), tag)
                for tag, members in zip(unique, groups, strict=True)
                for group in members
            ]
            if not sets:
                return 0
            # the directories are left to expire: removing a group here could race a
            # concurrent set that just re-created that group's tag set
            pipe = self._client.pipeline(transaction=False)
            for tag_set in sets:
                _queue(pipe, "EVAL", _PURGE_SET, 1, tag_set)
            return sum(int(n) for n in await pipe.execute())

        return await self._run("purge_tags", purge)

    async def lock(self, key: str, ttl: float) -> str | None:
        token = secrets.token_hex(16)
        ms = max(1, math.ceil(ttl * 1000))
        lock_key = self._lock_key(key)
        taken = await self._run("lock", lambda: self._client.set(lock_key, token, nx=True, px=ms))
        return token if taken else None

    async def unlock(self, key: str, token: str) -> bool:
        lock_key = self._lock_key(key)
        # eval's stub is looser than its result; the script answers 0 or 1
        result = await self._run("unlock", lambda: _eval(self._client, _UNLOCK, lock_key, token))
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

    async def publish(self, channel: str, message: bytes) -> int:
        """Publish ``message``; answers how many subscribers received it."""
        receivers: int = await self._run("publish", lambda: self._client.publish(channel, message))
        return receivers


def _queue(pipe: Pipeline | ClusterPipeline, *command: bytes | str | int) -> None:
    # redis-py types a queued command as an awaitable; in a pipeline it only queues
    _ = pipe.execute_command(*command)


async def _eval(client: Redis | RedisCluster, script: str, key: str, *args: str | int) -> Any:
    return await client.eval(script, 1, key, *args)


def _host_port(node: str) -> tuple[str, int]:
    host, _, port = node.rpartition(":")
    return host.strip("[]"), int(port)
