"""``MemcachedStore``: a pool of memcached servers on a ketama ring, one aiomcache client each.

It owns key hashing (memcached's 250-byte, no-whitespace keys), chunking of values over
``item_size_max`` behind a verified manifest, tags as generation counters, and leases
(released by compare-and-delete). Each server keeps the generation counters of the
entries it holds, so losing one server never invalidates another's entries; a purge that
misses a server is recorded on it and replayed before it serves again. The counters, soft
purges' links and replays are ``TagCounters`` (``memcached_tags.py``).

The servers are a ``ServerPool`` (``memcached_pool.py``): the ring, per-server health (a
server that fails is skipped for ``node_retry`` seconds, so its keys miss while the other
servers' keys still hit), and the one way to call aiomcache (as a task nobody cancels: a
cancelled call poisons its connection). Every command here goes through it.

A hit costs one round trip: a read asks for the entry and, in the same multi-get, the
generation counters of the tags this process last saw on that key (a bounded hint kept
here, ``_plans``; an entry naming other tags fetches those counters too before it is
served). The pool batches reads: one multi-get per server is out at a time, and every
read queued while it was out leaves in the next one.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import re
import secrets
from collections.abc import Sequence
from typing import Any, Final

import msgpack

from proxy.clock import Clock, SystemClock
from proxy.core.entry import soften
from proxy.errors import StoreError, StoreUnavailable
from proxy.stores.aiomcache_adapter import Counter
from proxy.stores.base import OfNoKind, StoreHealth, StoreStats
from proxy.stores.memcached_pool import Found, Node, NodeDown, ServerPool
from proxy.stores.memcached_tags import MONTH, TagCounters, as_int, storing

log = logging.getLogger(__name__)
# memcached's key rule, as aiomcache checks it: no whitespace or control characters
_KEY_OK: Final = re.compile("[^\\s\x00-\x1f\x7f-\x9f]{1,250}")
_MAX_KEY: Final = 250
_CHUNK_HEADROOM: Final = 2048  # item header + key + flags within item_size_max
_INLINE, _MANIFEST = 0, 1
# keys whose tags a process remembers to fetch their counters with the entry (hints only:
# ~40 bytes + the tag strings each; a forgotten key costs one more round trip on a hit)
_PLANS: Final = 32768
# a key's tags as its envelope names them, and their generation counters' keys
_Plan = tuple[tuple[str, ...], tuple[bytes, ...]]


class MemcachedStore(OfNoKind):
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
        self._clock = clock or SystemClock()
        self._servers = ServerPool(
            name,
            servers,
            pool_size=pool_size,
            timeout=timeout,
            node_retry=node_retry,
            queue_wait=queue_wait,
            clock=self._clock,
            replay=lambda node: self._tags.replay(node),
        )
        self._tags = TagCounters(self._servers, self._mkey, self._exptime)
        self._plans: dict[bytes, _Plan] = {}

    # ------------------------------------------------------------ keys and nodes

    def _mkey(self, kind: str, key: str) -> bytes:
        full = f"{self._prefix}{kind}{key}"
        raw = full.encode()
        if len(raw) <= _MAX_KEY and _KEY_OK.fullmatch(full):
            return raw
        return f"{self._prefix}~h:{hashlib.blake2b(raw, digest_size=20).hexdigest()}".encode()

    def node_of(self, key: str) -> str:
        """The server that holds ``key`` (for tests and diagnostics)."""
        return self._servers.node(self._mkey("", key)).name

    def node_health(self) -> dict[str, dict[str, object]]:
        """Per-server state for ``/readyz`` and metrics."""
        return self._servers.health()

    def _exptime(self, ttl: float) -> int:
        seconds = max(1, math.ceil(ttl))
        return seconds if seconds <= MONTH else int(self._clock.time()) + seconds

    # ------------------------------------------------------------ reads

    async def get(self, key: str) -> bytes | None:
        mkey = self._mkey("", key)
        node = self._servers.node(mkey)
        plan = self._plans.get(mkey)
        # in the same multi-get: the counters of the tags last seen on this key (the hint)
        found = await self._servers.read(node, mkey, plan[1] if plan is not None else ())
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

    async def _open(
        self, node: Node, mkey: bytes, raw: bytes, found: Found, plan: _Plan | None
    ) -> bytes | None:
        """The body an envelope holds, or ``None`` when stale by tag, incomplete or foreign."""
        try:
            # [kind, gens, payload], and a soft purge's time once one marked it by key
            kind, gens, payload, *marked = msgpack.unpackb(raw)
            pairs = [(tag, gen) for tag, gen in gens if isinstance(tag, str)]
            soft = [float(at) for at in marked if isinstance(at, float)]
            if len(pairs) != len(gens) or len(soft) != len(marked) or len(marked) > 1:
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
                more = await self._servers.read(node, None, missing)
                found = Found([*found.items(), *more.items()])
            behind = [
                (tag, gen, as_int(found[gkey]))
                for (tag, gen), gkey in zip(pairs, plan[1], strict=True)
                if as_int(found[gkey]) != gen
            ]
            if behind:  # purged since written (or its counter is gone), or softened
                at = await self._tags.softened_at(node, behind)
                if at is None:
                    return None
                soft.append(at)
        body: bytes | None = None
        if kind == _INLINE and isinstance(payload, bytes):
            body = payload
        elif kind == _MANIFEST and isinstance(payload, list) and len(payload) == 4:
            body = await self._assemble(node, *payload)
        return soften(body, min(soft)) if soft and body is not None else body

    def _remember(self, mkey: bytes, tags: tuple[str, ...]) -> _Plan:
        plan = (tags, self._tags.keys(tags))
        plans = self._plans
        plans.pop(mkey, None)
        if tags:  # an untagged entry needs no plan
            if len(plans) >= _PLANS:
                del plans[next(iter(plans))]  # oldest first
            plans[mkey] = plan
        return plan

    async def _assemble(
        self, node: Node, nonce: Any, count: Any, size: Any, digest: Any
    ) -> bytes | None:
        if not (isinstance(nonce, str) and isinstance(count, int) and 0 < count <= 65536):
            return None
        ckeys = [self._mkey("~c:", f"{nonce}:{i}") for i in range(count)]
        chunks = await self._servers.fetch(node, ckeys)
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
        node = self._servers.node(mkey)
        gens: list[list[Any]] = []
        if tags:
            try:
                current = await self._tags.ensure(node, list(dict.fromkeys(tags)), ttl)
            except NodeDown:
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
                        self._servers.call(node, "set", storing("set", k, p, exptime))
                        for k, p in zip(ckeys, pieces, strict=True)
                    )
                )
            except NodeDown:
                return
            manifest = [nonce, len(pieces), len(value), digest]
            envelope = msgpack.packb([_MANIFEST, gens, manifest])
        try:
            await self._servers.call(node, "set", lambda c: c.set(mkey, envelope, exptime))
        except NodeDown:
            return  # a skipped server: the write is skipped, as any failed write is
        self._remember(mkey, tuple(tag for tag, _ in gens))

    async def delete(self, keys: Sequence[str]) -> int:
        async def delete_one(mkey: bytes) -> bool:
            try:
                return await self._servers.call(
                    self._servers.node(mkey), "delete", lambda c: c.delete(mkey)
                )
            except NodeDown as exc:
                raise StoreUnavailable(self.name, f"delete: {exc} is down") from exc

        mkeys = list(dict.fromkeys(self._mkey("", key) for key in keys))
        return sum(await asyncio.gather(*(delete_one(mkey) for mkey in mkeys)))

    async def purge_tags(self, tags: Sequence[str]) -> int:
        await self._tags.purge(tags)
        return -1  # generations invalidate lazily: nothing here knows how many entries

    # ------------------------------------------------------------ soft purges

    async def soften(self, keys: Sequence[str]) -> int:
        """Mark entries stale since now: their envelope gains the time, CAS-checked (an
        entry written meanwhile is newer than the purge and stays as it is)."""
        at = self._clock.time()

        async def soften_one(mkey: bytes) -> int:
            node = self._servers.node(mkey)
            try:
                held = (await self._servers.counters(node, [mkey])).get(mkey)
                if held is None or held.ttl <= 0:
                    return 0
                try:
                    envelope = msgpack.unpackb(held.value)
                except (ValueError, msgpack.UnpackException):
                    return 0
                if not isinstance(envelope, list) or len(envelope) not in (3, 4):
                    return 0  # not ours
                if len(envelope) == 4:
                    return 1  # marked before: stale since then
                marked = Counter(msgpack.packb([*envelope, at]), held.cas, held.ttl)
                exptime = self._exptime(held.ttl)
                return int(await self._servers.extend(node, mkey, marked, exptime))
            except NodeDown as exc:
                raise StoreUnavailable(self.name, f"soften: {exc} is down") from exc

        mkeys = list(dict.fromkeys(self._mkey("", key) for key in keys))
        return sum(await asyncio.gather(*(soften_one(mkey) for mkey in mkeys)))

    async def soften_tags(self, tags: Sequence[str]) -> int:
        await self._tags.purge(tags, b"%017.6f" % self._clock.time())
        return -1  # marked lazily, as purges are: nothing here knows how many entries

    # ------------------------------------------------------------ leases

    async def lock(self, key: str, ttl: float) -> str | None:
        lkey = self._mkey("~l:", key)
        token = secrets.token_hex(16)
        try:
            taken = await self._servers.call(
                self._servers.node(lkey),
                "lock",
                lambda c: c.add(lkey, token.encode(), self._exptime(ttl)),
            )
        except NodeDown as exc:
            raise StoreUnavailable(self.name, f"lock: {exc} is down") from exc
        return token if taken else None

    async def unlock(self, key: str, token: str) -> bool:
        # compare-and-delete: a late leader whose lease expired and was taken by another
        # never deletes the other's (meta protocol, CAS-checked: see memcached_pool)
        lkey = self._mkey("~l:", key)
        node = self._servers.node(lkey)
        try:
            return await self._servers.delete_if_equal(node, "unlock", lkey, token.encode())
        except NodeDown as exc:
            raise StoreUnavailable(self.name, f"unlock: {exc} is down") from exc

    # ------------------------------------------------------------ lifecycle

    async def ping(self) -> bool:
        """True when every server answers; raises when none does."""

        async def one(node: Node) -> bool:
            try:
                await self._servers.call(node, "ping", lambda c: c.version())
            except (NodeDown, StoreError):
                return False
            return True

        answers = await asyncio.gather(*(one(node) for node in self._servers.nodes.values()))
        if not any(answers):
            raise StoreUnavailable(self.name, "no memcached server answers")
        return all(answers)

    def stats(self) -> StoreStats:
        return StoreStats()

    def health(self) -> StoreHealth:
        return StoreHealth()  # refusals and the breaker are counted by GuardedStore

    async def aclose(self) -> None:
        await self._servers.aclose()
