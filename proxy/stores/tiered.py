"""``TieredStore``: a per-process L1 (memory) in front of a shared L2 (Redis or Memcached).

It owns only the layering: read L1, fall through to L2 and fill L1, write both, purge
both. It keeps no state of its own and never hides an L2 failure (``StoreError`` from
L2 propagates; the engine treats it as a miss). Purges reach every worker's and every
replica's L1 through ``invalidation.py`` (worker bus, Redis pub/sub); ``l1_ttl`` bounds
how long an L1 copy can outlive a purge message that was lost.
An entry a soft purge marked in L2 is never copied into L1: until it is written again,
every read asks L2, so the refresh any replica stores is seen at once by all.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Final

from proxy.core.entry import SOFT
from proxy.stores.base import OfNoKind, Store, StoreHealth, StoreStats, Tiers

# Every L1 copy of an L2 entry carries this tag: fills (L2 does not return their tags, so
# every tag purge drops every fill from L1: a few extra L2 reads, never a purged entry
# served) and writes through this store (so a purge can tell them from entries the same
# memory backend holds for routes of its own, and count each entry once).
L2_FILL_TAG: Final = "~l2-fill"


class TieredStore(OfNoKind):
    """L1 answers hot keys from process memory for at most ``l1_ttl`` seconds."""

    def __init__(self, name: str, l1: Store, l2: Store, l1_ttl: float) -> None:
        if l1_ttl <= 0:
            raise ValueError("l1_ttl must be > 0")
        self.name = name
        self.l1 = l1
        self.l2 = l2
        self.l1_ttl = l1_ttl
        self.shared = l2.shared

    def get_now(self, key: str) -> bytes | None:
        """L1's synchronous read, for the engine's await-free hit path (``None``: go async)."""
        read = self.l1.reader()
        return read(key) if read is not None else None

    def reader(self) -> Callable[[str], bytes | None] | None:
        return self.l1.reader()  # L1's own: one call less per hit than ``get_now``

    def tiers(self) -> Tiers:
        return Tiers(self.l1, self.l2, L2_FILL_TAG)

    async def get(self, key: str) -> bytes | None:
        value = await self.l1.get(key)
        if value is not None:
            return value
        value = await self.l2.get(key)
        if value is not None and value[:1] != SOFT:
            # the entry's remaining TTL is unknown here; l1_ttl bounds the extra life
            await self.l1.set(key, value, self.l1_ttl, (L2_FILL_TAG,))
        return value

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        values = await self.l1.get_many(keys)
        missing = [i for i, value in enumerate(values) if value is None]
        if not missing:
            return values
        found = await self.l2.get_many([keys[i] for i in missing])
        for i, value in zip(missing, found, strict=True):
            if value is not None:
                values[i] = value
                if value[:1] != SOFT:
                    await self.l1.set(keys[i], value, self.l1_ttl, (L2_FILL_TAG,))
        return values

    async def set(self, key: str, value: bytes, ttl: float, tags: Sequence[str] = ()) -> None:
        await self.l1.set(key, value, min(ttl, self.l1_ttl), (*tags, L2_FILL_TAG))
        await self.l2.set(key, value, ttl, tags)

    async def delete(self, keys: Sequence[str]) -> int:
        # L1 first: it cannot fail, and a failing L2 must not leave L1 serving the entry
        await self.l1.delete(keys)
        return await self.l2.delete(keys)

    async def purge_tags(self, tags: Sequence[str]) -> int:
        await self.l1.purge_tags([*tags, L2_FILL_TAG])
        return await self.l2.purge_tags(tags)

    async def soften(self, keys: Sequence[str]) -> int:
        await self.l1.delete(keys)  # copies: read again, they come back from L2 marked
        return await self.l2.soften(keys)

    async def soften_tags(self, tags: Sequence[str]) -> int:
        # L1's copies of L2 entries go (read again from L2, they come back marked), as
        # in purge_tags; entries only L1 holds are marked there
        await self.l1.purge_tags([L2_FILL_TAG])
        await self.l1.soften_tags(tags)
        return await self.l2.soften_tags(tags)

    async def lock(self, key: str, ttl: float) -> str | None:
        return await self.l2.lock(key, ttl)

    async def unlock(self, key: str, token: str) -> bool:
        return await self.l2.unlock(key, token)

    async def ping(self) -> bool:
        return await self.l1.ping() and await self.l2.ping()

    def stats(self) -> StoreStats:
        return self.l1.stats()

    def health(self) -> StoreHealth:
        return self.l2.health()  # L1 never refuses: the shared layer is what can fill

    async def aclose(self) -> None:
        await self.l1.aclose()
        await self.l2.aclose()
