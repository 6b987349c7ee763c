"""``ServerPool``: the memcached servers behind one ``MemcachedStore``, and its read batching.

It owns the ketama ring, one aiomcache client per server (on an EOF-safe connection pool
that grows on demand: aiomcache_adapter.py), each server's health, the one call path, and
the batched reads: one multi-get out per server at a time. It deals in memcached keys and
values only: key layout, envelopes, tags and chunking are ``MemcachedStore``'s.

aiomcache must never be cancelled mid-call: a cancelled call leaves its reply unread on
a pooled connection and the next command reads it (another key's value). Every call
here runs as its own task that callers only wait for (``asyncio.shield``, or a batch's
per-caller future); the guard's deadline cancels only the waiter, and the call finishes
(or fails) on its own connection.
aiomcache also spins forever, never yielding, on a connection closed mid-command: its
connections here read through ``aiomcache_adapter.EofSafeReader``, which raises instead.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar

import aiomcache
from uhashring import HashRing

from proxy.clock import Clock
from proxy.errors import StoreError, StoreFull, StoreUnavailable
from proxy.stores.aiomcache_adapter import ConnectionPool, Counter, new_client

T = TypeVar("T")
_CONNECTION_ERRORS: Final = (OSError, EOFError, asyncio.IncompleteReadError)
# memcached's answers to a write it refuses while healthy: no memory for it (with -M, or a
# slab class that can get no page and has nothing to evict), or an item over its -I (an
# item_size_max set above the server's). aiomcache raises them inside a ClientException;
# they are StoreFull, never a breaker failure: the server answers, and reads still hit.
OUT_OF_MEMORY: Final = "SERVER_ERROR out of memory"
TOO_LARGE: Final = "SERVER_ERROR object too large for cache"


class NodeDown(Exception):
    """The server owning a key is skipped until its retry time (never leaves the store)."""


class Found(dict[bytes, bytes | None]):
    """What a batched read answers: every key it asked for, ``None`` where the server
    had nothing; and what each entry opened to, for its other readers (a hot key)."""

    __slots__ = ("opened",)

    def __init__(self, pairs: Iterable[tuple[bytes, bytes | None]]) -> None:
        super().__init__(pairs)
        self.opened: dict[bytes, bytes | None] = {}


@dataclass(slots=True)
class _Batch:
    """Reads to one server that leave together: entries first, then counters."""

    entries: dict[bytes, None] = field(default_factory=dict)
    counters: dict[bytes, None] = field(default_factory=dict)
    waiters: list[asyncio.Future[Found]] = field(default_factory=list)
    due: bool = False  # a flush is scheduled
    timer: asyncio.TimerHandle | None = None  # its latest flush, while a read is out


@dataclass(slots=True)
class Node:
    """One memcached server: its client, its health, and the reads waiting for it."""

    name: str
    client: aiomcache.Client
    down_until: float = 0.0
    inflight: int = 0
    last_progress: float = 0.0
    errors: int = 0
    tasks: set[asyncio.Task[Any]] = field(default_factory=set)
    missed: set[str] = field(default_factory=set)  # tags purged while it was unreachable
    replay: asyncio.Task[None] | None = None
    batch: _Batch | None = None  # reads waiting for the read out to be answered
    reading: int = 0  # read batches out


class ServerPool:
    """The servers of one store: which one holds a key, whether it is up, and calls on it.

    A server that fails is skipped for ``node_retry`` seconds (``NodeDown``), as is one
    with calls in flight and no reply for a while (hung). A server the store recorded
    missed purges on (``Node.missed``) stays skipped until ``replay``, the store's, has
    applied them: the first call after the retry time launches it.
    """

    def __init__(
        self,
        name: str,
        servers: Sequence[str],
        *,
        pool_size: int,
        timeout: float,
        node_retry: float,
        queue_wait: float,
        clock: Clock,
        replay: Callable[[Node], Awaitable[None]],
    ) -> None:
        self._name = name  # the store's, for errors
        self._node_retry = node_retry
        self._queue_wait = queue_wait
        # a node with calls in flight and no reply for this long is hung: skip it
        self._stall_after = max(4 * timeout, 0.25)
        self._clock = clock
        self._replay = replay
        self.nodes: dict[str, Node] = {}
        self._pools: dict[str, ConnectionPool] = {}
        for server in dict.fromkeys(servers):
            host, _, port = server.rpartition(":")
            host = host.strip("[]")
            client, self._pools[server] = new_client(host, int(port), pool_size)
            self.nodes[server] = Node(server, client)
        self._ring = HashRing(nodes=list(self.nodes), hash_fn="ketama")
        self._only = next(iter(self.nodes.values())) if len(self.nodes) == 1 else None
        self._closed = False

    def node(self, mkey: bytes) -> Node:
        if self._only is not None:
            return self._only
        return self.nodes[self._ring.get_node(mkey.decode())]

    def health(self) -> dict[str, dict[str, object]]:
        now = self._clock.monotonic()
        return {
            n.name: {"down": self._is_down(n, now), "errors": n.errors, "inflight": n.inflight}
            for n in self.nodes.values()
        }

    def _is_down(self, node: Node, now: float) -> bool:
        if now < node.down_until or node.missed:
            return True
        return node.inflight > 0 and now - node.last_progress > self._stall_after

    # ------------------------------------------------------------ the one call path

    async def call(
        self,
        node: Node,
        op: str,
        fn: Callable[[aiomcache.Client], Awaitable[T]],
        *,
        replaying: bool = False,
    ) -> T:
        task = self._start(node, fn, replaying=replaying)
        try:
            # shield: a deadline cancels this waiter, never the aiomcache call itself
            return await asyncio.shield(task)
        except Exception as exc:
            mapped = self._mapped(node, op, exc)
            if mapped is exc:
                raise
            raise mapped from exc

    def _start(
        self,
        node: Node,
        fn: Callable[[aiomcache.Client], Awaitable[T]],
        *,
        replaying: bool = False,
    ) -> asyncio.Future[T]:
        """Run ``fn`` on ``node`` as a task nobody cancels (or raise ``NodeDown``)."""
        now = self._clock.monotonic()
        if not replaying and self._is_down(node, now):
            if node.missed and now >= node.down_until and node.replay is None:
                node.replay = asyncio.ensure_future(self._replay(node))
            raise NodeDown(node.name)
        if node.inflight == 0:
            node.last_progress = now
        node.inflight += 1
        task = asyncio.ensure_future(fn(node.client))
        node.tasks.add(task)
        task.add_done_callback(lambda done: self._finished(node, done))
        return task

    def _mapped(self, node: Node, op: str, exc: BaseException) -> BaseException:
        if isinstance(exc, _CONNECTION_ERRORS):
            return StoreUnavailable(self._name, f"{op} on {node.name}: {exc!r}")
        if isinstance(exc, aiomcache.exceptions.ClientException):
            if OUT_OF_MEMORY in str(exc):
                return StoreFull(self._name, f"{op} on {node.name}: {OUT_OF_MEMORY}")
            if TOO_LARGE in str(exc):
                hint = "memcached's -I is below the backend's item_size_max"
                return StoreFull(self._name, f"{op} on {node.name}: {TOO_LARGE} ({hint})")
            return StoreError(self._name, f"{op} on {node.name}: {exc}")
        return exc

    def _finished(self, node: Node, task: asyncio.Task[Any]) -> None:
        node.tasks.discard(task)
        node.inflight -= 1
        now = self._clock.monotonic()
        node.last_progress = now
        if task.cancelled():
            return
        exc = task.exception()  # also marks it retrieved when nobody waits any more
        if isinstance(exc, _CONNECTION_ERRORS):
            node.errors += 1
            node.down_until = now + self._node_retry
        elif exc is None:
            node.down_until = 0.0

    # the meta commands, on the one call path (shielded, mapped): see ConnectionPool

    async def delete_if_equal(self, node: Node, op: str, mkey: bytes, value: bytes) -> bool:
        pool = self._pools[node.name]
        return await self.call(node, op, lambda _: pool.delete_if_equal(mkey, value))

    async def counters(self, node: Node, mkeys: Sequence[bytes]) -> dict[bytes, Counter]:
        pool, unique = self._pools[node.name], list(dict.fromkeys(mkeys))
        return await self.call(node, "get", lambda _: pool.counters(unique))

    async def extend(self, node: Node, mkey: bytes, counter: Counter, exptime: int) -> bool:
        pool = self._pools[node.name]
        return await self.call(node, "touch", lambda _: pool.extend(mkey, counter, exptime))

    async def fetch(self, node: Node, mkeys: Sequence[bytes]) -> dict[bytes, bytes]:
        """A multi-get on one server; a skipped server answers nothing (all misses)."""
        unique = list(dict.fromkeys(mkeys))
        try:
            values = await self.call(node, "get", lambda c: c.multi_get(*unique))
        except NodeDown:
            return {}
        return {k: v for k, v in zip(unique, values, strict=True) if v is not None}

    # ------------------------------------------------------------ batched reads

    def read(
        self, node: Node, mkey: bytes | None, counters: Sequence[bytes]
    ) -> asyncio.Future[Found]:
        """Join the next multi-get to ``node``: an entry, and the counters to read after it.

        One read is out per server: reads queued meanwhile leave together when it is
        answered (under load, the reads of a round trip; at low load, each at once), or
        on another connection after ``queue_wait`` if the reply is slow.
        """
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[Found] = loop.create_future()
        batch = node.batch
        if batch is None:
            batch = node.batch = _Batch()
            if not node.reading or self._is_down(node, self._clock.monotonic()):
                batch.due = True  # at once (a stalled server: to be skipped at once)
                loop.call_soon(self._flush, node)
            else:
                # one read out per server: what queues meanwhile leaves when it is
                # answered, or after queue_wait on another connection (a slow reply)
                batch.timer = loop.call_later(self._queue_wait, self._flush, node)
        if mkey is not None:
            batch.entries[mkey] = None
        for gkey in counters:
            batch.counters[gkey] = None
        batch.waiters.append(waiter)
        return waiter

    def _flush(self, node: Node) -> None:
        batch, node.batch = node.batch, None
        if batch is None:
            return  # settled by aclose
        if batch.timer is not None:
            batch.timer.cancel()
        # entries before counters: a counter is read after the entry it vouches for
        keys = [*batch.entries, *(k for k in batch.counters if k not in batch.entries)]
        try:
            if self._closed:
                raise StoreUnavailable(self._name, "closed")
            task = self._start(node, lambda c: c.multi_get(*keys))
        except NodeDown:
            _settle(batch.waiters, Found((key, None) for key in keys))  # skipped: misses
            return
        except StoreError as exc:
            _settle(batch.waiters, exc)
            return

        node.reading += 1

        def deliver(done: asyncio.Future[tuple[bytes | None, ...]]) -> None:
            node.reading -= 1
            if node.batch is not None and not node.batch.due:
                self._flush(node)  # what queued while this read was out
            if done.cancelled():
                _settle(batch.waiters, StoreUnavailable(self._name, "closed"))
            elif (exc := done.exception()) is not None:
                _settle(batch.waiters, self._mapped(node, "get", exc))
            else:
                _settle(batch.waiters, Found(zip(keys, done.result(), strict=True)))

        task.add_done_callback(deliver)

    async def aclose(self) -> None:
        self._closed = True
        for node in self.nodes.values():
            if node.batch is not None:
                _settle(node.batch.waiters, StoreUnavailable(self._name, "closed"))
                if node.batch.timer is not None:
                    node.batch.timer.cancel()
                node.batch = None
            pending = [*node.tasks, *([node.replay] if node.replay else [])]
            for task in pending:
                task.cancel()  # the clients are being closed: poisoning no longer matters
            await asyncio.gather(*pending, return_exceptions=True)
            await node.client.close()


def _settle(waiters: list[asyncio.Future[Found]], outcome: Found | BaseException) -> None:
    for waiter in waiters:
        if waiter.done():
            continue  # its caller has gone (a deadline): the others still get theirs
        if isinstance(outcome, BaseException):
            waiter.set_exception(outcome)
        else:
            waiter.set_result(outcome)
