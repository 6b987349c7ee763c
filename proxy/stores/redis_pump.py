"""``ReadPump``: ``RedisStore.get``, the hit path, as few commands as the load allows.

It owns the batching of many requests' reads into one GET or MGET per round trip, and
the read connections that carry them (single node: a few of its own, beside the client's
pool; a cluster: the cluster client); and ``store_error``, the one mapping of redis-py
exceptions to ``StoreError`` (``RedisStore`` uses it too). A read is the ``READ`` script
of ``redis_layout.py`` (the entries and their tags' generations, checked in Redis): it
answers payloads, or ``None`` for a miss, a purged entry or a key not ours. It only
reads entries: writes, purges, leases and pub/sub stay with ``RedisStore``, on the pool.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, Final, cast

from redis import exceptions as rexc
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import AbstractConnection

from proxy.errors import StoreError, StoreFull, StoreTimeout, StoreUnavailable
from proxy.stores import redis_layout as layout

_LANES: Final = 4  # read connections at most (see ReadPump)
_SPILL: Final = 0.005  # seconds reads wait for a command still out before another lane


class _Lane:
    """One read connection and the pump task sending on it (while there is work)."""

    __slots__ = ("conn", "out", "task")

    def __init__(self) -> None:
        self.conn: AbstractConnection | None = None  # single node; idle between pumps
        self.out: list[asyncio.Future[bytes | None]] = []  # waiters of the command out
        self.task: asyncio.Task[None] | None = None


class ReadPump:
    """``get`` for every request: the reads queued while one is out leave as ONE command.

    A pump task takes the queue, sends one ``READ`` call for its distinct keys, hands every
    waiter its value, then takes what queued meanwhile: under load a command carries all
    the reads of a round trip, at low load each read goes at once. Single node: on a
    connection of the pump's own, with the connection's ``send_packed_command`` and
    ``read_response`` (no pool, no command wrappers); cluster: one call per bucket (a
    script's keys share a slot), concurrently.

    One lane (pump and connection) does the work; when reads have waited ``_SPILL``
    for a command still out (a big value, a slow Redis), the next command goes on
    another lane, up to ``_LANES``. Only a pump reads replies, so a caller that gives up
    (its deadline cancels its future) never leaves a reply for another. A connection
    that saw an error is dropped. When reads arrive and every waiter of a lane's command
    has given up, its connection is presumed stuck (a frozen Redis, a dead peer): that
    pump is cancelled, which drops the connection, and the lane starts over.
    """

    def __init__(
        self,
        name: str,
        client: Redis | RedisCluster,
        pool: BlockingConnectionPool | None,
        prefix: str = "",
    ) -> None:
        self._name = name
        self._base = f"{prefix}~g:".encode()  # single node: where generations are
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
                    _fail(waiters, store_error(self._name, "get", exc))
                except Exception as exc:
                    _fail(waiters, store_error(self._name, "get", exc))
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
            values = await _read_cluster(cast("RedisCluster", self._client), unique)
        else:
            if not conn.is_connected:
                await conn.connect()  # type: ignore[no-untyped-call]
            await conn.send_packed_command(_read(unique, self._base), check_health=False)
            try:
                values = await conn.read_response(disable_decoding=True)
            except rexc.NoScriptError:  # a restarted Redis: load it with this call
                await conn.send_packed_command(_read(unique, self._base, eval_=True))
                values = await conn.read_response(disable_decoding=True)
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


def _read(keys: Sequence[bytes], base: bytes, *, eval_: bool = False) -> bytes:
    """``EVALSHA <READ> n key... base`` in RESP, packed in one pass (redis-py's packer
    costs more per key); ``EVAL`` with the script's text when Redis lost it."""
    name, script = (b"EVAL", layout.READ.encode()) if eval_ else (b"EVALSHA", _READ_SHA)
    count = b"%d" % len(keys)
    parts = [b"*%d\r\n$%d\r\n%s\r\n" % (len(keys) + 4, len(name), name)]
    parts += [b"$%d\r\n%s\r\n" % (len(script), script)]
    parts += [b"$%d\r\n%s\r\n" % (len(count), count)]
    parts += [b"$%d\r\n%s\r\n" % (len(key), key) for key in keys]
    parts += [b"$%d\r\n%s\r\n" % (len(base), base)]
    return b"".join(parts)


_READ_SHA: Final = layout.READ_SHA.encode()


async def read_script(client: Redis | RedisCluster, keys: Sequence[str | bytes], base: str) -> Any:
    """The ``READ`` script's raw answer for ``keys`` (in one slot, in a cluster)."""
    try:
        return await client.evalsha(layout.READ_SHA, len(keys), *keys, base)
    except rexc.NoScriptError:
        return await client.eval(layout.READ, len(keys), *keys, base)


async def _read_cluster(client: RedisCluster, keys: Sequence[bytes]) -> list[Any]:
    """``READ`` for keys of many buckets: one call per bucket, all at once."""
    # learn the slot map first: calls racing a cold client's first use failed ("Connection
    # closed by server"); once initialized this is a flag test
    _ = await client.initialize()
    groups: dict[bytes, list[bytes]] = {}
    for key in keys:
        groups.setdefault(key[: key.index(b"}") + 1], []).append(key)
    if len(groups) == 1:
        return list(await read_script(client, keys, ""))
    answers = await asyncio.gather(*(read_script(client, g, "") for g in groups.values()))
    found: dict[bytes, Any] = {}
    for group, values in zip(groups.values(), answers, strict=True):
        found.update(zip(group, values, strict=True))
    return [found[key] for key in keys]


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


def store_error(name: str, op: str, exc: BaseException) -> StoreError:
    """``exc``, raised by redis-py or the socket under it, as the ``StoreError`` it means."""
    if isinstance(exc, rexc.TimeoutError):
        return StoreTimeout(name, f"{op}: {exc}")
    if isinstance(exc, rexc.OutOfMemoryError):  # redis-py took the "OOM" off
        return StoreFull(name, f"{op}: OOM {exc}")
    if isinstance(exc, rexc.ResponseError) and _refused(str(exc)):
        return StoreFull(name, f"{op}: {exc}")
    if isinstance(exc, rexc.ConnectionError | rexc.ClusterError | OSError):
        return StoreUnavailable(name, f"{op}: {exc}")
    return StoreError(name, f"{op}: {type(exc).__name__}: {exc}")


# write refusals of a reachable Redis, beside OOM (maxmemory with noeviction, or nothing
# left to evict): a failed RDB save (MISCONF), too few replicas (NOREPLICAS); also as a
# script reports them ("... OOM command not allowed ..."). READONLY (a demoted master in
# a failover) stays an unavailable store.
_REFUSALS: Final = ("OOM command not allowed", "MISCONF ", "NOREPLICAS ")


def _refused(message: str) -> bool:
    return any(refusal in message for refusal in _REFUSALS)
