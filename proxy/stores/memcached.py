"""``MemcachedStore``: a pool of memcached servers on a ketama ring, one aiomcache client each.

It owns key hashing (memcached's 250-byte, no-whitespace keys), chunking of values over
``item_size_max`` behind a verified manifest, tags as generation counters, best-effort
leases, and per-server health: a server that fails is skipped for ``node_retry``
seconds, so its keys miss while the other servers' keys still hit. Each server keeps
the generation counters of the entries it holds, so losing one server never
invalidates another's entries; a purge that misses a server is replayed on it before
it serves again.

A hit costs one round trip: a read asks for the entry and, in the same multi-get, the
generation counters of the tags this process last saw on that key (a bounded hint; an
entry naming other tags fetches those counters too before it is served). Reads share
round trips: one multi-get per server is out at a time, and every read queued while it
was out leaves in the next one (under load, the reads of a round trip; at low load, each
read at once), or on another connection after ``queue_wait`` if the reply is slow.

aiomcache must never be cancelled mid-call: a cancelled call leaves its reply unread on
a pooled connection and the next command reads it (another key's value). Every call
here runs as its own task that callers only wait for (``asyncio.shield``, or a batch's
per-caller future); the guard's deadline cancels only the waiter, and the call finishes
(or fails) on its own connection.
aiomcache also spins forever, never yielding, on a connection closed mid-command: its
connections here read through ``_EofSafeReader``, which raises instead.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import re
import secrets
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal, TypeVar

import aiomcache
import msgpack
from aiomcache.pool import Connection, MemcachePool
from uhashring import HashRing

from proxy.clock import Clock, SystemClock
from proxy.errors import StoreError, StoreUnavailable
from proxy.stores.base import StoreStats

T = TypeVar("T")
log = logging.getLogger(__name__)
# memcached's key rule, as aiomcache checks it: no whitespace or control characters
_KEY_OK: Final = re.compile("[^\\s\x00-\x1f\x7f-\x9f]{1,250}")
_MAX_KEY: Final = 250
_CHUNK_HEADROOM: Final = 2048  # item header + key + flags within item_size_max
_MONTH: Final = 30 * 86400  # memcached reads larger exptimes as unix timestamps
_INLINE, _MANIFEST = 0, 1
_CONNECTION_ERRORS: Final = (OSError, EOFError, asyncio.IncompleteReadError)
# keys whose tags a process remembers to fetch their counters with the entry (hints only:
# ~40 bytes + the tag strings each; a forgotten key costs one more round trip on a hit)
_PLANS: Final = 32768
# a key's tags as its envelope names them, and their generation counters' keys
_Plan = tuple[tuple[str, ...], tuple[bytes, ...]]


class _EofSafeReader(asyncio.StreamReader):
    """aiomcache reads ``readline()`` until a line ends in CRLF; at EOF ``readline()``
    answers ``b""`` at once, forever, and the loop never gets control back. Raise."""

    async def readline(self) -> bytes:
        line = await super().readline()
        if not line.endswith(b"\n"):
            raise asyncio.IncompleteReadError(line, None)
        return line


class _Pool(MemcachePool):
    """aiomcache's pool, opening its connections with an ``_EofSafeReader``, and growing
    up to ``maxsize`` when every connection is busy (aiomcache's own grows only to
    ``minsize``: calls queued on one connection)."""

    async def acquire(self) -> Connection:
        while self._pool.empty() and 0 < self.size() < self._maxsize:
            conn = await self._create_new_conn()
            if conn is None:
                break
            self._pool.put_nowait(conn)
        return await super().acquire()

    async def _create_new_conn(self) -> Connection | None:
        if self.size() >= self._maxsize:
            return None
        loop = asyncio.get_running_loop()
        reader = _EofSafeReader(loop=loop)
        protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
        transport, _ = await loop.create_connection(lambda: protocol, self._host, self._port)
        writer = asyncio.StreamWriter(transport, protocol, reader, loop)
        if self.size() < self._maxsize:
            return Connection(reader, writer)
        writer.close()
        return None


class _NodeDown(Exception):
    """Internal: the server owning a key is skipped until its retry time."""


class _Found(dict[bytes, bytes | None]):
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
    waiters: list[asyncio.Future[_Found]] = field(default_factory=list)
    due: bool = False  # a flush is scheduled
    timer: asyncio.TimerHandle | None = None  # its latest flush, while a read is out


@dataclass(slots=True)
class _Node:
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


class MemcachedStore:
    """A ``Store`` over one or more memcached servers (consistent hashing, no replication)."""

    shared = True

    def __init__(
        self,
        name: str,
        servers: Sequence[str],
        *,
        pool_size: int = 8,
        timeout: float = 0.05,
        item_size_max: int = 1024**2,
        key_prefix: str = "",
        node_retry: float = 5.0,
        queue_wait: float = 0.005,
        clock: Clock | None = None,
    ) -> None:
        if not servers:
            raise ValueError("at least one memcached server is needed")
        if key_prefix and (not _KEY_OK.fullmatch(key_prefix) or len(key_prefix.encode()) > 100):
            raise ValueError("key_prefix must be ≤100 bytes without spaces or control characters")
        self.name = name
        self._prefix = key_prefix
        self._chunk = max(1024, item_size_max - _CHUNK_HEADROOM)
        self._node_retry = node_retry
        self._queue_wait = queue_wait
        # a node with calls in flight and no reply for this long is hung: skip it
        self._stall_after = max(4 * timeout, 0.25)
        self._clock = clock or SystemClock()
        self._nodes: dict[str, _Node] = {}
        for server in dict.fromkeys(servers):
            host, _, port = server.rpartition(":")
            host = host.strip("[]")
            client = aiomcache.Client(host, int(port), pool_size=pool_size)
            client._pool = _Pool(host, int(port), minsize=1, maxsize=pool_size)
            self._nodes[server] = _Node(server, client)
        self._ring = HashRing(nodes=list(self._nodes), hash_fn="ketama")
        self._only = next(iter(self._nodes.values())) if len(self._nodes) == 1 else None
        self._plans: dict[bytes, _Plan] = {}
        self._closed = False

    # ------------------------------------------------------------ keys and nodes

    def _mkey(self, kind: str, key: str) -> bytes:
        full = f"{self._prefix}{kind}{key}"
        raw = full.encode()
        if len(raw) <= _MAX_KEY and _KEY_OK.fullmatch(full):
            return raw
        return f"{self._prefix}~h:{hashlib.blake2b(raw, digest_size=20).hexdigest()}".encode()

    def _node(self, mkey: bytes) -> _Node:
        if self._only is not None:
            return self._only
        return self._nodes[self._ring.get_node(mkey.decode())]

    def node_of(self, key: str) -> str:
        """The server that holds ``key`` (for tests and diagnostics)."""
        return self._node(self._mkey("", key)).name

    def node_health(self) -> dict[str, dict[str, object]]:
        """Per-server state for ``/readyz`` and metrics."""
        now = self._clock.monotonic()
        return {
            n.name: {"down": self._is_down(n, now), "errors": n.errors, "inflight": n.inflight}
            for n in self._nodes.values()
        }

    def _is_down(self, node: _Node, now: float) -> bool:
        if now < node.down_until or node.missed:
            return True
        return node.inflight > 0 and now - node.last_progress > self._stall_after

    def _exptime(self, ttl: float) -> int:
        seconds = max(1, math.ceil(ttl))
        return seconds if seconds <= _MONTH else int(self._clock.time()) + seconds

    # ------------------------------------------------------------ the one call path

    async def _call(
        self,
        node: _Node,
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
        node: _Node,
        fn: Callable[[aiomcache.Client], Awaitable[T]],
        *,
        replaying: bool = False,
    ) -> asyncio.Future[T]:
        """Run ``fn`` on ``node`` as a task nobody cancels (or raise ``_NodeDown``)."""
        now = self._clock.monotonic()
        if not replaying and self._is_down(node, now):
            if node.missed and now >= node.down_until and node.replay is None:
                node.replay = asyncio.ensure_future(self._replay(node))
            raise _NodeDown(node.name)
        if node.inflight == 0:
            node.last_progress = now
        node.inflight += 1
        task = asyncio.ensure_future(fn(node.client))
        node.tasks.add(task)
        task.add_done_callback(lambda done: self._finished(node, done))
        return task

    def _mapped(self, node: _Node, op: str, exc: BaseException) -> BaseException:
        if isinstance(exc, _CONNECTION_ERRORS):
            return StoreUnavailable(self.name, f"{op} on {node.name}: {exc!r}")
        if isinstance(exc, aiomcache.exceptions.ClientException):
            return StoreError(self.name, f"{op} on {node.name}: {exc}")
        return exc

    def _finished(self, node: _Node, task: asyncio.Task[Any]) -> None:
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

    async def _fetch(self, node: _Node, mkeys: Sequence[bytes]) -> dict[bytes, bytes]:
        """A multi-get on one server; a skipped server answers nothing (all misses)."""
        unique = list(dict.fromkeys(mkeys))
        try:
            values = await self._call(node, "get", lambda c: c.multi_get(*unique))
        except _NodeDown:
            return {}
        return {k: v for k, v in zip(unique, values, strict=True) if v is not None}

    # ------------------------------------------------------------ tag generations

    async def _generations(self, node: _Node, tags: Sequence[str]) -> dict[str, int | None]:
        """Each tag's generation on ``node`` (``None``: unknown, or its counter was evicted)."""
        gkeys = {tag: self._mkey("~g:", tag) for tag in tags}
        found = await self._fetch(node, list(gkeys.values()))
        return {tag: _as_int(found.get(gkey)) for tag, gkey in gkeys.items()}

    async def _ensure_generations(self, node: _Node, tags: Sequence[str]) -> dict[str, int] | None:
        gens = await self._generations(node, tags)
        for tag, gen in gens.items():
            if gen is None:
                gkey = self._mkey("~g:", tag)
                # random start: a counter evicted and re-created never repeats an old value
                start = secrets.randbits(62)
                added = await self._call(node, "add", _storing("add", gkey, b"%d" % start, 0))
                gens[tag] = start if added else (await self._generations(node, [tag]))[tag]
        known = {tag: gen for tag, gen in gens.items() if gen is not None}
        return known if len(known) == len(gens) else None

    async def _bump(self, node: _Node, tag: str, *, replaying: bool = False) -> None:
        gkey = self._mkey("~g:", tag)
        try:
            await self._call(node, "incr", lambda c: c.incr(gkey), replaying=replaying)
        except StoreError as exc:
            # no counter: every entry naming this tag already fails its check
            if "NOT_FOUND" not in str(exc):
                raise

    async def _replay(self, node: _Node) -> None:
        """Apply the purges a server missed while unreachable, before it serves again."""
        tags = list(node.missed)
        try:
            await asyncio.gather(*(self._bump(node, tag, replaying=True) for tag in tags))
            node.missed.difference_update(tags)
        except StoreError:
            pass  # still unreachable: _finished has pushed down_until; retried after it
        finally:
            node.replay = None

    # ------------------------------------------------------------ reads

    async def get(self, key: str) -> bytes | None:
        mkey = self._mkey("", key)
        node = self._node(mkey)
        plan = self._plans.get(mkey)
        found = await self._read(node, mkey, plan)
        raw = found.get(mkey)
        if raw is None:
            return None
        opened = found.opened
        if mkey in opened:
            return opened[mkey]  # another reader of this reply opened it already
        value = opened[mkey] = await self._open(node, mkey, raw, found, plan)
        return value

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        # each get is a task started in this loop tick: they all join one multi-get
        return list(await asyncio.gather(*(self.get(key) for key in keys)))

    def _read(self, node: _Node, mkey: bytes | None, plan: _Plan | None) -> asyncio.Future[_Found]:
        """Join the next multi-get to ``node``: the entry and its counters, as planned."""
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[_Found] = loop.create_future()
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
        if plan is not None:
            for gkey in plan[1]:
                batch.counters[gkey] = None
        batch.waiters.append(waiter)
        return waiter

    def _flush(self, node: _Node) -> None:
        batch, node.batch = node.batch, None
        if batch is None:
            return  # settled by aclose
        if batch.timer is not None:
            batch.timer.cancel()
        # entries before counters: a counter is read after the entry it vouches for
        keys = [*batch.entries, *(k for k in batch.counters if k not in batch.entries)]
        try:
            if self._closed:
                raise StoreUnavailable(self.name, "closed")
            task = self._start(node, lambda c: c.multi_get(*keys))
        except _NodeDown:
            _settle(batch.waiters, _Found((key, None) for key in keys))  # skipped: misses
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
                _settle(batch.waiters, StoreUnavailable(self.name, "closed"))
            elif (exc := done.exception()) is not None:
                _settle(batch.waiters, self._mapped(node, "get", exc))
            else:
                _settle(batch.waiters, _Found(zip(keys, done.result(), strict=True)))

        task.add_done_callback(deliver)

    async def _open(
        self, node: _Node, mkey: bytes, raw: bytes, found: _Found, plan: _Plan | None
    ) -> bytes | None:
        """The body an envelope holds, or ``None`` when stale by tag, incomplete or foreign."""
        try:
            kind, gens, payload = msgpack.unpackb(raw)
            pairs = [(tag, gen) for tag, gen in gens if isinstance(tag, str)]
            if len(pairs) != len(gens):
                return None
        except (ValueError, TypeError, msgpack.UnpackException):
            return None  # not ours (or from an incompatible version): a miss
        tags = tuple(tag for tag, _ in pairs)
        if plan is None or plan[0] != tags:
            # first read here, or rewritten with other tags (by any process): learn them
            plan = self._remember(mkey, tags)
        if pairs:
            missing = [gkey for gkey in plan[1] if gkey not in found]
            if missing:  # counters the read did not ask for: one more round trip
                more = await self._read(node, None, (tags, tuple(missing)))
                found = _Found([*found.items(), *more.items()])
            for (_, gen), gkey in zip(pairs, plan[1], strict=True):
                if _as_int(found[gkey]) != gen:
                    return None  # purged since written (or its counter is gone)
        if kind == _INLINE and isinstance(payload, bytes):
            return payload
        if kind == _MANIFEST and isinstance(payload, list) and len(payload) == 4:
            return await self._assemble(node, *payload)
        return None

    def _remember(self, mkey: bytes, tags: tuple[str, ...]) -> _Plan:
        plan = (tags, tuple(self._mkey("~g:", tag) for tag in tags))
        plans = self._plans
        plans.pop(mkey, None)
        if tags:  # an untagged entry needs no plan
            if len(plans) >= _PLANS:
                del plans[next(iter(plans))]  # oldest first
            plans[mkey] = plan
        return plan

    async def _assemble(
        self, node: _Node, nonce: Any, count: Any, size: Any, digest: Any
    ) -> bytes | None:
        if not (isinstance(nonce, str) and isinstance(count, int) and 0 < count <= 65536):
            return None
        ckeys = [self._mkey("~c:", f"{nonce}:{i}") for i in range(count)]
        chunks = await self._fetch(node, ckeys)
        if len(chunks) != count:
            return None  # a chunk was evicted or deleted: a miss, never a short body
        body = b"".join(chunks[k] for k in ckeys)
        if len(body) != size or hashlib.blake2b(body, digest_size=16).digest() != digest:
            return None  # overwritten or truncated behind our back
        return body

    # ------------------------------------------------------------ writes

    async def set(self, key: str, value: bytes, ttl: float, tags: Sequence[str] = ()) -> None:
        if ttl <= 0:
            return
        mkey = self._mkey("", key)
        node = self._node(mkey)
        gens: list[list[Any]] = []
        if tags:
            try:
                current = await self._ensure_generations(node, list(dict.fromkeys(tags)))
            except _NodeDown:
                return  # a skipped server: the write is skipped, as any failed write is
            if current is None:
                return  # counters that cannot be read: an unpurgeable entry is never written
            gens = [[tag, gen] for tag, gen in current.items()]
        exptime = self._exptime(ttl)
        # a big value is never packed whole: that would copy megabytes only to split them
        envelope = b"" if len(value) > self._chunk else msgpack.packb([_INLINE, gens, value])
        if not envelope or len(envelope) > self._chunk:
            # chunks first, under fresh keys: a reader sees the new manifest only once
            # every chunk it names exists, and never mixes two writes' chunks
            nonce = secrets.token_hex(8)
            pieces = [value[i : i + self._chunk] for i in range(0, len(value), self._chunk)]
            digest = hashlib.blake2b(value, digest_size=16).digest()
            ckeys = [self._mkey("~c:", f"{nonce}:{i}") for i in range(len(pieces))]
            try:
                await asyncio.gather(
                    *(
                        self._call(node, "set", _storing("set", k, p, exptime))
                        for k, p in zip(ckeys, pieces, strict=True)
                    )
                )
            except _NodeDown:
                return
            manifest = [nonce, len(pieces), len(value), digest]
            envelope = msgpack.packb([_MANIFEST, gens, manifest])
        try:
            await self._call(node, "set", lambda c: c.set(mkey, envelope, exptime))
        except _NodeDown:
            return  # a skipped server: the write is skipped, as any failed write is
        self._remember(mkey, tuple(tag for tag, _ in gens))

    async def delete(self, keys: Sequence[str]) -> int:
        async def delete_one(mkey: bytes) -> bool:
            try:
                return await self._call(self._node(mkey), "delete", lambda c: c.delete(mkey))
            except _NodeDown as exc:
                raise StoreUnavailable(self.name, f"delete: {exc} is down") from exc

        mkeys = list(dict.fromkeys(self._mkey("", key) for key in keys))
        return sum(await asyncio.gather(*(delete_one(mkey) for mkey in mkeys)))

    async def purge_tags(self, tags: Sequence[str]) -> int:
        unique = list(dict.fromkeys(tags))

        async def purge_on(node: _Node) -> None:
            try:
                await asyncio.gather(*(self._bump(node, tag) for tag in unique))
            except (_NodeDown, StoreUnavailable):
                # it serves nothing until these are replayed on it (see _replay)
                node.missed.update(unique)
                log.warning("purge of %d tags deferred on %s: unreachable", len(unique), node.name)

        # shielded: a deadline must not stop the bookkeeping of a server that missed it
        jobs = [asyncio.ensure_future(purge_on(node)) for node in self._nodes.values()]
        await asyncio.shield(asyncio.gather(*jobs))
        return -1  # generations invalidate lazily: nothing here knows how many entries

    # ------------------------------------------------------------ leases

    async def lock(self, key: str, ttl: float) -> str | None:
        lkey = self._mkey("~l:", key)
        token = secrets.token_hex(16)
        try:
            taken = await self._call(
                self._node(lkey), "lock", lambda c: c.add(lkey, token.encode(), self._exptime(ttl))
            )
        except _NodeDown as exc:
            raise StoreUnavailable(self.name, f"lock: {exc} is down") from exc
        return token if taken else None

    async def unlock(self, key: str, token: str) -> bool:
        # best effort: memcached has no compare-and-delete, so a lease that expired
        # between the get and the delete could be someone else's by then
        lkey = self._mkey("~l:", key)
        node = self._node(lkey)
        try:
            held = (await self._fetch(node, [lkey])).get(lkey)
            if held != token.encode():
                return False
            return await self._call(node, "unlock", lambda c: c.delete(lkey))
        except _NodeDown as exc:
            raise StoreUnavailable(self.name, f"unlock: {exc} is down") from exc

    # ------------------------------------------------------------ lifecycle

    async def ping(self) -> bool:
        """True when every server answers; raises when none does."""

        async def one(node: _Node) -> bool:
            try:
                await self._call(node, "ping", lambda c: c.version())
            except (_NodeDown, StoreError):
                return False
            return True

        answers = await asyncio.gather(*(one(node) for node in self._nodes.values()))
        if not any(answers):
            raise StoreUnavailable(self.name, "no memcached server answers")
        return all(answers)

    def stats(self) -> StoreStats:
        return StoreStats()

    async def aclose(self) -> None:
        self._closed = True
        for node in self._nodes.values():
            if node.batch is not None:
                _settle(node.batch.waiters, StoreUnavailable(self.name, "closed"))
                if node.batch.timer is not None:
                    node.batch.timer.cancel()
                node.batch = None
            pending = [*node.tasks, *([node.replay] if node.replay else [])]
            for task in pending:
                task.cancel()  # the clients are being closed: poisoning no longer matters
            await asyncio.gather(*pending, return_exceptions=True)
            await node.client.close()


def _storing(
    command: Literal["set", "add"], key: bytes, value: bytes, exptime: int
) -> Callable[[aiomcache.Client], Awaitable[bool]]:
    return lambda c: (c.add if command == "add" else c.set)(key, value, exptime)


def _as_int(raw: bytes | None) -> int | None:
    if raw is None:
        return None
    try:
        return int(raw)
    except ValueError:
        return None


def _settle(waiters: list[asyncio.Future[_Found]], outcome: _Found | BaseException) -> None:
    for waiter in waiters:
        if waiter.done():
            continue  # its caller has gone (a deadline): the others still get theirs
        if isinstance(outcome, BaseException):
            waiter.set_exception(outcome)
        else:
            waiter.set_result(outcome)
