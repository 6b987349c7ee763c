"""``RedisStore``: the shared Redis (or Redis Cluster) backend, over one pooled client.

It owns the key layout in Redis, one round trip per operation where it can, and the
translation of every redis-py exception into ``StoreError``. Deadlines and the breaker
are ``GuardedStore``'s: no per-command ``socket_timeout`` here (it costs a task per call).
``get``, the hit path, skips the pool: ``_ReadPump`` sends the reads of many requests as
one command on a connection of its own (see there).

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

import asyncio
import hashlib
import math
import secrets
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final, TypeVar, cast

from redis import exceptions as rexc
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.client import Pipeline, PubSub
from redis.asyncio.cluster import ClusterNode, ClusterPipeline, RedisCluster
from redis.asyncio.connection import AbstractConnection
from redis.backoff import NoBackoff
from redis.maint_notifications import MaintNotificationsConfig
from redis.retry import Retry

from proxy.errors import StoreError, StoreTimeout, StoreUnavailable
from proxy.stores.base import StoreStats

T = TypeVar("T")
_STORED_KEYS: Final = 4096  # encoded stored keys get remembers (then starts over)
_LANES: Final = 4  # read connections at most (see _ReadPump)
_SPILL: Final = 0.005  # seconds reads wait for a command still out before another lane

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
        self._reads = _ReadPump(name, self._client, pool)
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
            raise _store_error(self.name, op, exc) from exc

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


class _Lane:
    """One read connection and the pump task sending on it (while there is work)."""

    __slots__ = ("conn", "out", "task")

    def __init__(self) -> None:
        self.conn: AbstractConnection | None = None  # single node; idle between pumps
        self.out: list[asyncio.Future[bytes | None]] = []  # waiters of the command out
        self.task: asyncio.Task[None] | None = None


class _ReadPump:
    """``get`` for every request: the reads queued while one is out leave as ONE command.

    A pump task takes the queue, sends one GET or MGET of its distinct keys, hands every
    waiter its value, then takes what queued meanwhile: under load a command carries all
    the reads of a round trip, at low load each read goes at once. Single node: on a
    connection of the pump's own, with the connection's ``send_packed_command`` and
    ``read_response`` (no pool, no command wrappers); cluster: ``mget_nonatomic``.

    One lane (pump and connection) does the work; when reads have waited ``_SPILL``
    for a command still out (a big value, a slow Redis), the next command goes on
    another lane, up to ``_LANES``. Only a pump reads replies, so a caller that gives up
    (its deadline cancels its future) never leaves a reply for another. A connection
    that saw an error is dropped. When reads arrive and every waiter of a lane's command
    has given up, its connection is presumed stuck (a frozen Redis, a dead peer): that
    pump is cancelled, which drops the connection, and the lane starts over.
    """

    def __init__(
        self, name: str, client: Redis | RedisCluster, pool: BlockingConnectionPool | None
    ) -> None:
        self._name = name
        self._client = client
        self._pool = pool
        self._lanes = [_Lane()]
        self._keys: list[bytes] = []
        self._waiters: list[asyncio.Future[bytes | None]] = []
        self._spill_at = 0.0  # loop time after which queued reads take another lane
        self._dropped: set[asyncio.Task[None]] = set()
        self._closed = False

    def read(self, key: bytes) -> asyncio.Future[bytes | None]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[bytes | None] = loop.create_future()
        if self._closed:
            future.set_exception(StoreUnavailable(self._name, "get: store closed"))
            return future
        if not self._waiters or loop.time() >= self._spill_at:
            self._dispatch(loop)
        self._keys.append(key)
        self._waiters.append(future)
        return future

    def _dispatch(self, loop: asyncio.AbstractEventLoop) -> None:
        now = loop.time()
        free: _Lane | None = None
        busy = False
        for lane in self._lanes:
            if lane.task is not None and lane.out and all(w.done() for w in lane.out):
                lane.task.cancel()  # stuck: see the class docstring
                self._dropped.add(lane.task)  # held until its connection is closed
                lane.task.add_done_callback(self._dropped.discard)
                lane.task, lane.conn, lane.out = None, None, []
            if lane.task is None:
                free = free or lane
            else:
                busy = True
        if busy and now < self._spill_at:
            return  # the lane with a command out takes the queue when its answer is in
        self._spill_at = now + _SPILL
        if free is None:
            if len(self._lanes) == _LANES:
                return
            free = _Lane()
            self._lanes.append(free)
        free.task = loop.create_task(self._pump(free))

    async def _pump(self, lane: _Lane) -> None:
        me = asyncio.current_task()
        conn = lane.conn
        if conn is None and self._pool is not None:
            conn = lane.conn = self._pool.make_connection()  # type: ignore[no-untyped-call]
        try:
            if conn is not None and conn.is_connected:
                await _drop_if_closed(conn)  # idle since the last pump: Redis may have gone
            while self._waiters and lane.task is me:
                keys, waiters = self._keys, self._waiters
                self._keys, self._waiters, lane.out = [], [], waiters
                self._spill_at = asyncio.get_running_loop().time() + _SPILL
                try:
                    values = await self._fetch(conn, keys)
                except rexc.ResponseError as exc:  # read whole: the connection is in step
                    _fail(waiters, _store_error(self._name, "get", exc))
                except Exception as exc:
                    _fail(waiters, _store_error(self._name, "get", exc))
                    if conn is not None:
                        await conn.disconnect(nowait=True)
                else:
                    for waiter, value in zip(waiters, values, strict=True):
                        if not waiter.done():  # a caller whose deadline passed has gone
                            waiter.set_result(value)
        except asyncio.CancelledError:
            if conn is not None:  # maybe mid-reply or mid-handshake: never reuse it
                if lane.conn is conn:
                    lane.conn = None
                await conn.disconnect(nowait=True)
            raise
        finally:
            if lane.task is me:
                lane.task, lane.out = None, []

    async def _fetch(self, conn: AbstractConnection | None, keys: list[bytes]) -> list[Any]:
        unique = list(dict.fromkeys(keys)) if len(keys) > 1 else keys
        values: list[Any]
        if conn is None:
            client = cast("RedisCluster", self._client)
            if len(unique) == 1:
                values = [await client.get(unique[0])]
            else:
                values = await client.mget_nonatomic(unique)
        else:
            if not conn.is_connected:
                await conn.connect()  # type: ignore[no-untyped-call]
            # a single key is read with GET, so a wrong type is an error, not a miss
            name = b"GET" if len(unique) == 1 else b"MGET"
            await conn.send_packed_command(_command(name, unique), check_health=False)
            reply = await conn.read_response(disable_decoding=True)
            values = [reply] if len(unique) == 1 else reply
        if len(unique) == len(keys):
            return values
        found = dict(zip(unique, values, strict=True))
        return [found[key] for key in keys]

    async def aclose(self) -> None:
        self._closed = True
        lanes, self._lanes = self._lanes, []
        waiters = [*(w for lane in lanes for w in lane.out), *self._waiters]
        _fail(waiters, StoreUnavailable(self._name, "get: store closed"))
        self._keys, self._waiters = [], []
        tasks = [*self._dropped, *(lane.task for lane in lanes if lane.task is not None)]
        for lane in lanes:
            lane.task = None
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for lane in lanes:
            if lane.conn is not None:
                await lane.conn.disconnect()


def _command(name: bytes, keys: Sequence[bytes]) -> bytes:
    """``name key...`` in RESP, packed in one pass (redis-py's packer costs more per key)."""
    parts = [b"*%d\r\n$%d\r\n%s\r\n" % (len(keys) + 1, len(name), name)]
    parts += [b"$%d\r\n%s\r\n" % (len(key), key) for key in keys]
    return b"".join(parts)


async def _drop_if_closed(conn: AbstractConnection) -> None:
    # the pool does this check on every checkout; here it runs once per pump
    try:
        if await conn.can_read():  # EOF, or bytes nobody asked for
            await conn.disconnect(nowait=True)
    except rexc.ConnectionError:
        await conn.disconnect(nowait=True)


def _fail(waiters: Sequence[asyncio.Future[bytes | None]], exc: StoreError) -> None:
    for waiter in waiters:
        if not waiter.done():
            waiter.set_exception(exc)


def _store_error(name: str, op: str, exc: BaseException) -> StoreError:
    if isinstance(exc, rexc.TimeoutError):
        return StoreTimeout(name, f"{op}: {exc}")
    if isinstance(exc, rexc.ConnectionError | rexc.ClusterError | OSError):
        return StoreUnavailable(name, f"{op}: {exc}")
    return StoreError(name, f"{op}: {type(exc).__name__}: {exc}")


def _queue(pipe: Pipeline | ClusterPipeline, *command: bytes | str | int) -> None:
    # redis-py types a queued command as an awaitable; in a pipeline it only queues
    _ = pipe.execute_command(*command)


async def _eval(client: Redis | RedisCluster, script: str, key: str, *args: str | int) -> Any:
    return await client.eval(script, 1, key, *args)


def _host_port(node: str) -> tuple[str, int]:
    host, _, port = node.rpartition(":")
    return host.strip("[]"), int(port)
