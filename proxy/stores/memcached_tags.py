"""Tags on memcached: per-server generation counters, soft purges' links, missed purges.

``TagCounters`` is ``MemcachedStore``'s tag index, kept on the servers that hold the
entries. An entry names each tag's counter as it was when written and is served only
while each counter still holds that value; a purge bumps the counters. A soft purge
first leaves a link ``~s:<tag>:<generation>`` holding its time, then bumps: an entry of
the old generation is served marked stale since then (``proxy.core.entry.soften``) while
every step from its generation to the current one has its link. A missing counter or
link (eviction, restart, a purge) is a miss: a soft purge degrades to a purge, never to
nothing. A server that misses a purge or soft purge gets it, as a purge, before it
serves again (``replay``).
"""

from __future__ import annotations

import asyncio
import logging
import math
import secrets
from collections.abc import Awaitable, Callable, Sequence
from typing import Final, Literal

import aiomcache

from proxy.errors import StoreError, StoreUnavailable
from proxy.stores.aiomcache_adapter import Counter
from proxy.stores.memcached_pool import Node, NodeDown, ServerPool

log = logging.getLogger(__name__)
MONTH: Final = 30 * 86400  # memcached reads larger exptimes as unix timestamps
# A generation counter outlives every entry it vouches for (one that went early costs
# needless misses, never a stale hit): a write finds its counters living at least the
# entry's TTL + 1 s more, or extends them (CAS-checked) to twice that, and at least
# GEN_SLACK s more, so a steady tag's counter is extended about once per TTL.
GEN_SLACK: Final = 60
GEN_TRIES: Final = 3  # reads of a counter others keep changing, before the write is skipped
MAX_LINKS: Final = 8  # soft purges of one tag an entry outlives (then: a miss)


class TagCounters:
    """The generation counters of one store's tags, on each of its servers."""

    def __init__(
        self,
        servers: ServerPool,
        mkey: Callable[[str, str], bytes],
        exptime: Callable[[float], int],
    ) -> None:
        self._servers = servers
        self._mkey = mkey
        self._exptime = exptime

    def keys(self, tags: Sequence[str]) -> tuple[bytes, ...]:
        return tuple(self._mkey("~g:", tag) for tag in tags)

    async def ensure(self, node: Node, tags: Sequence[str], ttl: float) -> dict[str, int] | None:
        """Each tag's generation on ``node``, every counter created or extended to outlive
        an entry of ``ttl`` seconds (``None``: one is unknown, so the entry is not written)."""
        gkeys = self.keys(tags)
        held = await self._servers.counters(node, gkeys)
        need = math.ceil(ttl) + 1  # a second more: memcached's clock ticks in whole seconds
        exptime = self._exptime(max(2 * need, need + GEN_SLACK))
        gens = await asyncio.gather(
            *(self._generation(node, gkey, held.get(gkey), need, exptime) for gkey in gkeys)
        )
        known = {tag: gen for tag, gen in zip(tags, gens, strict=True) if gen is not None}
        return known if len(known) == len(tags) else None

    async def _generation(
        self, node: Node, gkey: bytes, counter: Counter | None, need: int, exptime: int
    ) -> int | None:
        for _ in range(GEN_TRIES):
            if counter is None:
                # random start: a counter evicted and re-created never repeats an old value
                start = secrets.randbits(62)
                store = storing("add", gkey, b"%d" % start, exptime)
                if await self._servers.call(node, "add", store):
                    return start
            else:
                gen = as_int(counter.value)
                if gen is None or counter.ttl >= need:
                    return gen  # not a counter (None), or it outlives the entry already
                # short-lived, or never expiring (-1: written before counters expired)
                if await self._servers.extend(node, gkey, counter, exptime):
                    return gen
            # added, extended or bumped by someone else meanwhile: read it again
            counter = (await self._servers.counters(node, [gkey])).get(gkey)
        return None

    async def _bump(self, node: Node, tag: str, *, by: int = 1, replaying: bool = False) -> None:
        gkey = self._mkey("~g:", tag)
        try:
            await self._servers.call(node, "incr", lambda c: c.incr(gkey, by), replaying=replaying)
        except StoreError as exc:
            # no counter: every entry naming this tag already fails its check
            if "NOT_FOUND" not in str(exc):
                raise

    async def replay(self, node: Node) -> None:
        """Apply the purges a server missed while unreachable, before it serves again.
        Soft ones too, as purges: each counter moves by 2, so no soft purge's link (one
        may have been written before its counter could be bumped) leads to it."""
        tags = list(node.missed)
        try:
            await asyncio.gather(*(self._bump(node, tag, by=2, replaying=True) for tag in tags))
            node.missed.difference_update(tags)
        except StoreError:
            pass  # still unreachable: the pool has pushed down_until; retried after it
        finally:
            node.replay = None

    async def purge(self, tags: Sequence[str], stamp: bytes | None = None) -> None:
        """Bump the tags' counters on every server (after a link holding ``stamp`` for a
        soft purge). A server that misses it serves nothing until it is replayed."""
        unique = list(dict.fromkeys(tags))
        what = "purge" if stamp is None else "soft purge"

        async def purge_on(node: Node) -> None:
            try:
                if stamp is None:
                    await asyncio.gather(*(self._bump(node, tag) for tag in unique))
                else:
                    await self._soften_on(node, unique, stamp)
            except (NodeDown, StoreUnavailable):
                node.missed.update(unique)  # see replay
                log.warning(
                    "%s of %d tags deferred on %s: unreachable", what, len(unique), node.name
                )

        # shielded: a deadline must not stop the bookkeeping of a server that missed it
        jobs = [asyncio.ensure_future(purge_on(node)) for node in self._servers.nodes.values()]
        await asyncio.shield(asyncio.gather(*jobs))

    async def _soften_on(self, node: Node, tags: list[str], stamp: bytes) -> None:
        """Per tag: a link to its generation holding ``stamp`` (kept if there is one: the
        earlier soft purge is when its entries went stale), then the counter bumped. A
        tag without a counter has no entry served here, and is left alone."""
        gkeys = self.keys(tags)
        held = await self._servers.counters(node, gkeys)

        async def soften(tag: str, gkey: bytes) -> None:
            counter = held.get(gkey)
            gen = as_int(counter.value) if counter is not None else None
            if counter is None or gen is None:
                return
            # the link lives as long as the counter, so as long as the entries it marks
            exptime = self._exptime(counter.ttl + 1 if counter.ttl > 0 else MONTH)
            link = self._mkey("~s:", f"{tag}:{gen}")
            await self._servers.call(node, "add", storing("add", link, stamp, exptime))
            await self._bump(node, tag)

        await asyncio.gather(*(soften(tag, gkey) for tag, gkey in zip(tags, gkeys, strict=True)))

    async def softened_at(
        self, node: Node, behind: Sequence[tuple[str, int, int | None]]
    ) -> float | None:
        """For an entry whose tags' counters moved on since it was written (tag, its
        generation, the current one): the time of the first soft purge after its write,
        or ``None`` (purged) when a step from its generation to the current one has no
        soft purge's link."""
        firsts, links = [], []
        for tag, gen, current in behind:
            if current is None or not 0 < current - gen <= MAX_LINKS:
                return None
            steps = [self._mkey("~s:", f"{tag}:{step}") for step in range(gen, current)]
            firsts.append(steps[0])
            links += steps
        found = await self._servers.fetch(node, links)
        if len(found) < len(set(links)):
            return None
        try:
            return min(float(found[first]) for first in firsts)
        except ValueError:
            return None


def storing(
    command: Literal["set", "add"], key: bytes, value: bytes, exptime: int
) -> Callable[[aiomcache.Client], Awaitable[bool]]:
    return lambda c: (c.add if command == "add" else c.set)(key, value, exptime)


def as_int(raw: bytes | None) -> int | None:
    if raw is None:
        return None
    try:
        return int(raw)
    except ValueError:
        return None
