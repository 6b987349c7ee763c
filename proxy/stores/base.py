"""The ``Store`` protocol every cache backend implements: bytes and TTLs, nothing more.

A store knows nothing of HTTP. It keeps opaque values under string keys for a
bounded time, indexes them by tag, and (where it can) offers short leases for
coalescing. Library exceptions never leave a store: they become ``StoreError``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol, TypeAlias, runtime_checkable

# A memory store's entry: (value, deadline on the monotonic clock, key, *tags).
Entry: TypeAlias = tuple[bytes, float, str, *tuple[str, ...]]


@dataclass(frozen=True, slots=True)
class StoreStats:
    """Point-in-time figures a store can report (memory stores count exactly)."""

    entries: int | None = None
    bytes: int | None = None
    evictions: int | None = None


@dataclass(frozen=True, slots=True)
class StoreHealth:
    """What ``/readyz`` and ``sidecache report`` show of one store, by backend name.

    ``breaker`` is ``closed``, ``open`` or ``half_open`` for a guarded shared store and
    ``n/a`` for a store without one. ``write_refusals`` counts the writes the backend
    refused since start while answering (``StoreFull``: Redis ``OOM``, Memcached
    ``SERVER_ERROR out of memory`` above all): its breaker stays closed, but it caches
    nothing new. ``last_refusal`` names the operation of the latest one and
    ``last_refusal_at`` its wall-clock time (unix seconds).
    """

    breaker: str = "n/a"
    write_refusals: int = 0
    last_refusal: str | None = None
    last_refusal_at: float | None = None


@dataclass(slots=True)
class OpCounters:
    """Running totals for one operation of one backend (read by metrics)."""

    ops: int = 0
    errors: int = 0
    timeouts: int = 0
    rejected: int = 0  # refused at once because the breaker was open
    oom: int = 0  # refused by a backend that answers (``StoreFull``: out of memory, …)

    def reason(self, name: str) -> int:
        """The count of one of ``ERROR_REASONS``."""
        count: int = getattr(self, name)
        return count


# the ``reason`` label of ``sidecache_store_errors_total``: the ``OpCounters`` fields
ERROR_REASONS: Final = ("errors", "timeouts", "rejected", "oom")


@dataclass(frozen=True, slots=True)
class Breaker:
    """A guarded store's breaker and its running totals per operation (live counters)."""

    state: str
    opens: int
    ops: Mapping[str, OpCounters]


@dataclass(frozen=True, slots=True)
class Tiers:
    """A tiered store's layers: ``l1`` keeps copies of ``l2``'s entries, tagged
    ``fill_tag``, so a purge drops those copies and lets ``l2`` count the entries."""

    l1: Store
    l2: Store
    fill_tag: str


class Subscription(Protocol):
    """One pub/sub connection (what ``proxy.ops.fanout.Subscriber`` reads messages from)."""

    async def subscribe(self, channel: str) -> None: ...

    async def get_message(self, timeout: float) -> dict[str, Any] | None: ...

    async def ping(self) -> None: ...

    async def aclose(self) -> None: ...


class Channel(Protocol):
    """A backend's pub/sub (Redis): what invalidation publishes purges on."""

    async def subscription(self) -> Subscription: ...

    async def publish(self, channel: str, message: bytes) -> int: ...


class Snapshottable(Protocol):
    """A store whose entries ``proxy.ops.snapshot`` writes to disk and loads back."""

    name: str
    on_removal: Callable[[], None] | None  # told of every delete, purge and soft purge

    def snapshot_entries(self) -> tuple[float, list[Entry]]: ...

    def keys(self) -> list[str]: ...

    async def set(self, key: str, value: bytes, ttl: float, tags: Sequence[str] = ()) -> None: ...

    async def delete(self, keys: Sequence[str]) -> int: ...


class OfNoKind:
    """Default answers of ``Store``'s kind questions for a store that is none of them:
    no synchronous read, no layers, no breaker, no pub/sub, no snapshot."""

    __slots__ = ()

    def reader(self) -> Callable[[str], bytes | None] | None:
        return None

    def tiers(self) -> Tiers | None:
        return None

    def breaker(self) -> Breaker | None:
        return None

    def channel(self) -> Channel | None:
        return None

    def snapshottable(self) -> Snapshottable | None:
        return None


@runtime_checkable
class Store(Protocol):
    """An async key/value cache with TTLs, tags and leases.

    - ``get``/``get_many`` return ``None`` for a miss, never raise for a missing key.
    - ``set`` stores ``value`` for ``ttl`` seconds (> 0; nothing lives forever) and,
      when ``tags`` are given, indexes the key under each tag so ``purge_tags`` finds it.
    - ``delete`` and ``purge_tags`` answer how many entries were removed, or ``-1`` when
      the backend cannot count (the purge is then only queued or approximate).
    - ``soften`` and ``soften_tags`` are the soft purge: the entries stay, but from now
      on every read answers them framed as stale since now (``proxy.core.entry.soften``),
      until they are written again; they answer how many they marked, or ``-1``. A
      store that loses what marks them (eviction, restart) answers them as misses,
      never as unmarked: a soft purge may degrade to a purge, never to nothing.
    - ``lock`` takes a lease for ``ttl`` seconds and answers its token, or ``None`` when
      somebody else holds it; ``unlock`` releases only a lease whose token matches.
    - ``shared`` is true when other processes see the same entries (Redis, Memcached).
    - ``health`` answers at once, without I/O: breaker state and write refusals.

    What the rest of the proxy asks of a particular kind of store, each ``None`` where
    the store is not of that kind (so no caller looks at a concrete class):

    - ``reader``: a synchronous read (the hit path's, without an await), or ``None``.
    - ``tiers``: a tiered store's L1 and L2.
    - ``breaker``: a guarded store's breaker and counters.
    - ``channel``: the backend's pub/sub (Redis; a guard answers its inner store's).
    - ``snapshottable``: a memory store, for ``proxy.ops.snapshot``.
    """

    name: str
    shared: bool

    async def get(self, key: str) -> bytes | None: ...

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]: ...

    async def set(self, key: str, value: bytes, ttl: float, tags: Sequence[str] = ()) -> None: ...

    async def delete(self, keys: Sequence[str]) -> int: ...

    async def purge_tags(self, tags: Sequence[str]) -> int: ...

    async def soften(self, keys: Sequence[str]) -> int: ...

    async def soften_tags(self, tags: Sequence[str]) -> int: ...

    async def lock(self, key: str, ttl: float) -> str | None: ...

    async def unlock(self, key: str, token: str) -> bool: ...

    async def ping(self) -> bool: ...

    def stats(self) -> StoreStats: ...

    def health(self) -> StoreHealth: ...

    def reader(self) -> Callable[[str], bytes | None] | None: ...

    def tiers(self) -> Tiers | None: ...

    def breaker(self) -> Breaker | None: ...

    def channel(self) -> Channel | None: ...

    def snapshottable(self) -> Snapshottable | None: ...

    async def aclose(self) -> None: ...
