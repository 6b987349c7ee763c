"""The ``Store`` contract (proxy/stores/base.py), written once and run against every backend.

Each test runs on memory, Redis (one node), a 3-node Redis Cluster, Memcached and tiered
(memory over a guarded Redis), all real servers from tests/stores/conftest.py. Where a
backend legitimately differs, its ``Backend`` declares it (``Caps``); the tests read the
declaration instead of asking which backend they run on. What only one backend does
(LRU, key layout, chunking, batching, failover, pools, what a soft purge's lost marks
become) stays in that backend's own file; the guard's fail-open behaviour is in
test_guard.py.

Time: memory (and tiered's L1) run on a ``FakeClock``; a real server's TTLs run on its
own clock, so ``Case.elapse`` waits for them there (no other sleeps).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Final

import pytest

from proxy.clock import FakeClock
from proxy.core.entry import SOFT_HEAD, soft_time
from proxy.stores.base import Store, StoreHealth, StoreStats
from proxy.stores.guard import GuardedStore
from proxy.stores.memcached import MemcachedStore
from proxy.stores.memory import MemoryStore
from proxy.stores.redis import RedisStore
from proxy.stores.tiered import TieredStore

MIB = 1024**2
# every byte value, the protocols' own delimiters and a NUL, then noise
BINARY = bytes(range(256)) * 16 + b"\x00\r\nEND\r\nVALUE x 0 1\r\n$-1\r\n" + os.urandom(4096)
ODD_KEYS = [
    "with space",
    "tab\there",
    "new\nline\r\n",
    "naïve/ключ/鍵",
    "k" * 600,  # past memcached's 250 bytes
    "{braces}in:{the}:key",  # Redis Cluster hash-tag syntax
    "}{",
    "~g:looks-internal",
    "",
]
# what the engine stores: a msgpack array (a soft purge's frame starts with another byte)
VALUE = b"\x9f" + b"v" * 200
L1_TTL = 30.0  # tiered: how long its L1 may keep an entry another process purged


@dataclass(frozen=True, slots=True)
class Caps:
    """What a backend declares where backends legitimately differ."""

    shared: bool  # other processes see its entries (a twin store on the same server)
    counts_purges: bool  # purge_tags answers how many entries it removed; else -1
    counts_entries: bool  # stats() has entries and bytes; else None
    breaker: str  # health().breaker of a healthy store: "n/a" unless a guard is inside
    real_time: bool  # its TTLs run on a server's clock, not on the test's FakeClock
    short_ttl: float  # a TTL long enough to read an entry back at once on a busy machine
    ttl_slack: float  # how long past its TTL an entry may still be served (server ticks)
    remote_purge_lag: float  # how long a purge by another process may take to show here
    sync_read: bool  # reader() reads without an await (memory, a tiered store's L1)
    layered: bool  # tiers() answers its L1 and L2
    pubsub: bool  # channel() answers a pub/sub channel (Redis)
    snapshots: bool  # snapshottable() answers the store itself (memory)


@dataclass(frozen=True, slots=True)
class Backend:
    id: str
    caps: Caps
    # (fixture lookup, clock) -> a new store; a second call is another process's store
    build: Callable[[Callable[[str], object], FakeClock], Store]


def _memory(_: Callable[[str], object], clock: FakeClock) -> Store:
    return MemoryStore("contract", 64 * MIB, clock)


# Connections are opened on a busy machine (a cluster's soften_tags opens one per bucket
# at once): a generous connect timeout, as for every other wait here.
CONNECT: Final = 10.0


def _redis(fixture: Callable[[str], object], clock: FakeClock) -> Store:
    url = str(fixture("redis_url"))
    return RedisStore("contract", url, key_prefix="ct:", connect_timeout=CONNECT)


def _cluster(fixture: Callable[[str], object], clock: FakeClock) -> Store:
    nodes = fixture("cluster_nodes")
    assert isinstance(nodes, list)
    return RedisStore("contract", nodes=nodes, key_prefix="ct:", connect_timeout=CONNECT)


def _memcached(fixture: Callable[[str], object], clock: FakeClock) -> Store:
    return MemcachedStore("contract", [str(fixture("memcached_addr"))], key_prefix="ct:", timeout=5)


def _tiered(fixture: Callable[[str], object], clock: FakeClock) -> Store:
    # as stores/factory.py builds one: the shared layer behind its guard
    l2 = GuardedStore(_redis(fixture, clock), timeout=5, clock=clock)
    return TieredStore("contract", MemoryStore("l1", 64 * MIB, clock), l2, L1_TTL)


LOCAL = Caps(
    shared=False,
    counts_purges=True,
    counts_entries=True,
    breaker="n/a",
    real_time=False,
    short_ttl=10,
    ttl_slack=0,
    remote_purge_lag=0,
    sync_read=True,
    layered=False,
    pubsub=False,
    snapshots=True,
)
REDIS = Caps(
    shared=True,
    counts_purges=False,  # generations: a purge invalidates entries where they lie
    counts_entries=False,
    breaker="n/a",
    real_time=True,
    short_ttl=1.0,
    ttl_slack=0.05,  # PX is in milliseconds
    remote_purge_lag=0,
    sync_read=False,
    layered=False,
    pubsub=True,
    snapshots=False,
)
MEMCACHED = Caps(
    shared=True,
    counts_purges=False,  # generation counters, as Redis
    counts_entries=False,
    breaker="n/a",
    real_time=True,
    short_ttl=1,  # whole seconds
    ttl_slack=1.1,  # its clock ticks once a second
    remote_purge_lag=0,
    sync_read=False,
    layered=False,
    pubsub=False,
    snapshots=False,
)
TIERED = Caps(
    shared=True,
    counts_purges=False,  # answers for L2 (Redis)
    counts_entries=True,  # L1's figures
    breaker="closed",  # L2's guard
    real_time=True,  # L2 keeps the entry's TTL on the Redis clock
    short_ttl=1.0,
    ttl_slack=0.05,
    remote_purge_lag=L1_TTL,  # another replica's purge does not reach this L1
    sync_read=True,
    layered=True,
    pubsub=False,
    snapshots=False,
)

BACKENDS = [
    Backend("memory", LOCAL, _memory),
    Backend("redis", REDIS, _redis),
    Backend("redis-cluster", REDIS, _cluster),
    Backend("memcached", MEMCACHED, _memcached),
    Backend("tiered", TIERED, _tiered),
]


class Case:
    """One backend under test: its store, its declared capabilities, its clock."""

    def __init__(self, backend: Backend, request: pytest.FixtureRequest) -> None:
        self.caps = backend.caps
        # starts at the wall time: soft purge marks by this clock and by a server's compare
        self.clock = FakeClock(time.time())
        self._backend = backend
        self._request = request
        self._stores: list[Store] = []
        self.store = self.another()

    def another(self) -> Store:
        """A second store on the same servers, as another process would open it."""
        store = self._backend.build(self._request.getfixturevalue, self.clock)
        self._stores.append(store)
        return store

    async def elapse(self, seconds: float) -> None:
        """``seconds`` pass for the store: on the fake clock, and on a server's own clock
        by waiting for it (a real server's TTLs cannot be moved)."""
        self.clock.advance(seconds)
        if self.caps.real_time:
            await asyncio.sleep(seconds)

    def now(self) -> tuple[float, float]:
        """The earliest and latest wall time by the fake clock and the system's."""
        return min(self.clock.time(), time.time()), max(self.clock.time(), time.time())

    def purged(self, removed: int) -> int:
        """What ``purge_tags`` answers when it removed ``removed`` entries."""
        return removed if self.caps.counts_purges else -1

    async def aclose(self) -> None:
        for store in self._stores:
            await store.aclose()


# Known breaches of the contract, by test and backend: each runs as a strict xfail, so
# the fix makes it fail until its line here is removed.
BREACHES: dict[tuple[str, str], str] = {}


@pytest.fixture(params=BACKENDS, ids=[backend.id for backend in BACKENDS])
async def case(request: pytest.FixtureRequest) -> AsyncIterator[Case]:
    breach = BREACHES.get((request.function.__name__, request.param.id))
    if breach is not None:
        request.applymarker(pytest.mark.xfail(reason=breach, strict=True))
    case = Case(request.param, request)
    yield case
    await case.aclose()


def keys(n: int, route: str = "r") -> list[str]:
    """``n`` engine-shaped keys (in a cluster they fall in many slots)."""
    return [f"sc:{route}:{i:032x}" for i in range(n)]


# ---------------------------------------------------------------- identity and shapes


def test_is_a_store_and_says_whether_it_is_shared(case: Case) -> None:
    assert isinstance(case.store, Store)
    assert case.store.name == "contract"
    assert case.store.shared is case.caps.shared


async def test_ping_answers_true_when_healthy(case: Case) -> None:
    assert await case.store.ping() is True


async def test_health_of_a_healthy_store(case: Case) -> None:
    await case.store.set("sc:r:1", b"v", 60)
    assert case.store.health() == StoreHealth(breaker=case.caps.breaker, write_refusals=0)


async def test_stats_count_entries_or_say_none(case: Case) -> None:
    await case.store.set("sc:r:1", b"one", 60)
    await case.store.set("sc:r:2", b"two", 60, tags=["t"])
    stats = case.store.stats()
    assert isinstance(stats, StoreStats)
    if case.caps.counts_entries:
        assert stats.entries == 2
        assert stats.bytes is not None
        assert stats.bytes >= len(b"onetwo")
    else:
        assert stats == StoreStats(entries=None, bytes=None, evictions=None)


# ---------------------------------------------------------------- what callers ask of a kind


async def test_a_synchronous_read_answers_as_get_or_is_none(case: Case) -> None:
    read = case.store.reader()
    assert (read is not None) is case.caps.sync_read
    if read is None:
        return
    key = keys(1)[0]
    assert read(key) is None
    await case.store.set(key, VALUE, 60)
    assert read(key) == VALUE == await case.store.get(key)
    await case.store.delete([key])
    assert read(key) is None


async def test_a_tiered_store_answers_its_layers_the_others_none(case: Case) -> None:
    tiers = case.store.tiers()
    assert (tiers is not None) is case.caps.layered
    if tiers is None:
        return
    key = keys(1)[0]
    await case.store.set(key, VALUE, 60, tags=["t"])
    assert await tiers.l1.get(key) == VALUE
    assert await tiers.l2.get(key) == VALUE
    assert await tiers.l1.purge_tags([tiers.fill_tag]) == 1  # L1 tags its copies
    assert await tiers.l1.get(key) is None
    assert await case.store.get(key) == VALUE  # L2 still has it


async def test_no_unguarded_store_answers_a_breaker(case: Case) -> None:
    assert case.store.breaker() is None
    tiers = case.store.tiers()
    if tiers is not None:  # its shared layer is guarded, as the factory builds it
        breaker = tiers.l2.breaker()
        assert breaker is not None
        assert breaker.state == "closed"


async def test_a_channel_delivers_what_another_store_publishes(case: Case) -> None:
    channel = case.store.channel()
    assert (channel is not None) is case.caps.pubsub
    if channel is None:
        return
    other = case.another().channel()
    assert other is not None
    subscription = await channel.subscription()
    try:
        await subscription.subscribe("sc:contract")
        kinds: list[object] = []
        async with asyncio.timeout(30):
            while "subscribe" not in kinds:
                message = await subscription.get_message(timeout=1.0)
                kinds.append(message and message["type"])
            assert await other.publish("sc:contract", b"purge") >= 1
            message = None
            while message is None or message["type"] != "message":
                message = await subscription.get_message(timeout=1.0)
        assert message["data"] == b"purge"
        await subscription.ping()
    finally:
        await subscription.aclose()


async def test_a_memory_store_is_snapshottable_and_tells_of_removals(case: Case) -> None:
    memory = case.store.snapshottable()
    assert (memory is not None) is case.caps.snapshots
    if memory is None:
        return
    removals: list[None] = []
    memory.on_removal = lambda: removals.append(None)
    key = keys(1)[0]
    await memory.set(key, VALUE, 60, ("t",))
    _, entries = memory.snapshot_entries()
    assert [(e[0], e[2], e[3:]) for e in entries] == [(VALUE, key, ("t",))]
    assert memory.keys() == [key]
    assert await memory.delete([key]) == 1
    assert removals == [None]


# ---------------------------------------------------------------- reads and writes


async def test_a_miss_is_none_then_a_write_is_read_back(case: Case) -> None:
    store = case.store
    assert await store.get("sc:r:1") is None
    await store.set("sc:r:1", b"body", 60)
    value = await store.get("sc:r:1")
    assert value == b"body"
    assert type(value) is bytes


@pytest.mark.parametrize(
    "value",
    [b"", BINARY, b"\x00" * 3 * MIB, os.urandom(3 * MIB + 17)],
    ids=["empty", "binary", "3MiB-zeros", "3MiB-random"],
)
async def test_values_round_trip_byte_for_byte(case: Case, value: bytes) -> None:
    await case.store.set("sc:r:v", value, 60)
    assert await case.store.get("sc:r:v") == value
    assert await case.store.get_many(["sc:r:v"]) == [value]


async def test_a_rewrite_replaces_the_value_whole(case: Case) -> None:
    # big values may be split (Memcached chunks): a reader never mixes two writes
    first, second = os.urandom(2 * MIB), os.urandom(2 * MIB)
    await case.store.set("sc:r:big", first, 60)
    await case.store.set("sc:r:big", second, 60)
    assert await case.store.get("sc:r:big") == second
    await case.store.set("sc:r:big", b"small now", 60)
    assert await case.store.get("sc:r:big") == b"small now"


async def test_keys_with_odd_characters_are_distinct_entries(case: Case) -> None:
    for i, key in enumerate(ODD_KEYS):
        await case.store.set(key, b"v%d" % i, 60)
    expected = [b"v%d" % i for i in range(len(ODD_KEYS))]
    assert await case.store.get_many(ODD_KEYS) == expected
    assert [await case.store.get(key) for key in ODD_KEYS] == expected
    assert await case.store.get("k" * 599) is None  # a long key is not cut to a prefix
    assert await case.store.delete(ODD_KEYS[:3]) == 3
    assert await case.store.get_many(ODD_KEYS[:4]) == [None, None, None, b"v3"]


async def test_get_many_keeps_order_duplicates_and_misses(case: Case) -> None:
    written = keys(12)
    for i, key in enumerate(written):
        await case.store.set(key, b"%d" % i, 60)
    wanted = [written[7], "sc:r:missing", written[0], written[7], *written]
    assert await case.store.get_many(wanted) == [
        b"7",
        None,
        b"0",
        b"7",
        *(b"%d" % i for i in range(12)),
    ]
    assert await case.store.get_many([]) == []


async def test_concurrent_reads_each_get_their_own_answer(case: Case) -> None:
    # reads that share a round trip (Redis's pump, Memcached's multi-get) are not mixed up
    written = keys(30)
    for i, key in enumerate(written):
        await case.store.set(key, b"body%d" % i, 60)
    wanted = [*written, "sc:r:missing", written[5], *reversed(written)]
    values = await asyncio.gather(*(case.store.get(key) for key in wanted))
    assert values == [await case.store.get(key) for key in wanted]
    assert values[:31] == [*(b"body%d" % i for i in range(30)), None]


async def test_delete_counts_what_it_removed(case: Case) -> None:
    written = keys(12)
    for key in written:
        await case.store.set(key, b"v", 60, tags=["t"])
    assert await case.store.delete([*written[:6], "sc:r:missing", written[0]]) == 6
    assert await case.store.get_many(written[:7]) == [None] * 6 + [b"v"]
    assert await case.store.delete(written[:6]) == 0
    assert await case.store.delete([]) == 0


async def test_a_deleted_entry_leaves_its_tags(case: Case) -> None:
    await case.store.set("sc:r:1", b"old", 60, tags=["t"])
    await case.store.set("sc:r:2", b"old", 60, tags=["u", "u"])  # a tag given twice
    assert await case.store.delete(["sc:r:1", "sc:r:2"]) == 2
    await case.store.set("sc:r:1", b"new", 60)
    await case.store.set("sc:r:2", b"new", 60)
    assert await case.store.purge_tags(["t", "u"]) == case.purged(0)
    assert await case.store.get_many(["sc:r:1", "sc:r:2"]) == [b"new", b"new"]


# ---------------------------------------------------------------- TTLs


async def test_entries_and_leases_expire_after_their_ttl(case: Case) -> None:
    # one wait for both: on a real server it is real time
    store, ttl = case.store, case.caps.short_ttl
    await store.set("sc:r:short", b"v", ttl, tags=["t"])
    await store.set("sc:r:long", b"v", 3600)
    await store.set("sc:r:extended", b"v", ttl)
    await store.set("sc:r:extended", b"v2", 3600)  # a rewrite brings its own TTL
    await store.set("sc:r:shortened", b"v", 3600)
    await store.set("sc:r:shortened", b"v2", ttl)
    first = await store.lock("sc:r:leased", ttl)
    assert first is not None
    assert await store.get_many(["sc:r:short", "sc:r:shortened"]) == [b"v", b"v2"]
    assert await store.lock("sc:r:leased", ttl) is None
    assert await store.soften(["sc:r:shortened"]) == 1  # a soft purge keeps the TTL
    await case.elapse(ttl + case.caps.ttl_slack)
    assert await store.get_many(["sc:r:short", "sc:r:shortened"]) == [None, None]
    assert await store.get_many(["sc:r:long", "sc:r:extended"]) == [b"v", b"v2"]
    second = await store.lock("sc:r:leased", 30)
    assert second is not None
    assert second != first
    assert await store.unlock("sc:r:leased", first) is False  # its late holder lost it
    assert await store.lock("sc:r:leased", 30) is None
    assert await store.unlock("sc:r:leased", second) is True


@pytest.mark.parametrize("ttl", [0, -1, -0.5])
async def test_a_ttl_that_is_not_positive_stores_nothing(case: Case, ttl: float) -> None:
    # nothing lives forever: such a write never becomes visible (what becomes of an older
    # value is the backend's: memory drops it, Redis and Memcached leave it be)
    await case.store.set("sc:r:new", b"v", ttl, tags=["t"])
    await case.store.set("sc:r:old", b"old", 60)
    await case.store.set("sc:r:old", b"replaced", ttl)
    assert await case.store.get("sc:r:new") is None
    assert await case.store.get("sc:r:old") != b"replaced"


# ---------------------------------------------------------------- tags


async def test_purge_tags_removes_every_entry_carrying_one(case: Case) -> None:
    store = case.store
    await store.set("sc:products:1", b"p1", 60, tags=["product:1", "all"])
    await store.set("sc:products:2", b"p2", 60, tags=["product:2", "all"])
    await store.set("sc:search:9", b"s", 60, tags=["product:1"])
    await store.set("sc:other:0", b"o", 60)
    assert await store.purge_tags(["product:1"]) == case.purged(2)
    got = await store.get_many(["sc:products:1", "sc:search:9", "sc:products:2", "sc:other:0"])
    assert got == [None, None, b"p2", b"o"]
    assert await store.purge_tags(["all", "product:1", "never-used"]) == case.purged(1)
    assert await store.get_many(["sc:products:2", "sc:other:0"]) == [None, b"o"]


async def test_a_purge_reaches_every_entry_of_a_tag_wherever_it_lies(case: Case) -> None:
    # in a cluster or a pool the entries lie on every node
    written = keys(100)
    for i, key in enumerate(written):
        await case.store.set(key, b"v", 60, tags=["all", "even" if i % 2 == 0 else "odd"])
        await case.store.set(key + ":untagged", b"v", 60)
    assert await case.store.purge_tags(["even"]) == case.purged(50)
    found = await case.store.get_many(written)
    assert [value is not None for value in found] == [i % 2 == 1 for i in range(100)]
    assert await case.store.purge_tags(["all"]) == case.purged(50)
    assert await case.store.get_many(written) == [None] * 100
    assert await case.store.get_many([k + ":untagged" for k in written]) == [b"v"] * 100


async def test_an_entry_is_counted_once_across_its_tags(case: Case) -> None:
    await case.store.set("sc:r:1", b"1", 60, tags=["x", "y"])
    await case.store.set("sc:r:2", b"2", 60, tags=["y", "y"])
    assert await case.store.purge_tags(["x", "y", "x"]) == case.purged(2)
    assert await case.store.get_many(["sc:r:1", "sc:r:2"]) == [None, None]


async def test_tags_are_anchored_names(case: Case) -> None:
    # purging "/a" must not touch "/a/b", "x/a" or "/A" (no prefix, regex or case folding)
    tags = ["/a", "/a/b", "x/a", "/A", "/a*"]
    for i, tag in enumerate(tags):
        await case.store.set(f"sc:r:{i}", b"v", 60, tags=[tag])
    assert await case.store.purge_tags(["/a"]) == case.purged(1)
    assert await case.store.get_many([f"sc:r:{i}" for i in range(5)]) == [None] + [b"v"] * 4


@pytest.mark.parametrize("tags", [["unknown"], []], ids=["unknown-tag", "no-tags"])
async def test_a_purge_that_matches_nothing_removes_nothing(case: Case, tags: list[str]) -> None:
    await case.store.set("sc:r:1", b"v", 60, tags=["t"])
    await case.store.set("sc:r:2", b"v", 60)
    answer = await case.store.purge_tags(tags)
    assert answer in (0, case.purged(0))  # nothing removed, or a store that cannot count
    assert await case.store.get_many(["sc:r:1", "sc:r:2"]) == [b"v", b"v"]


async def test_a_rewrite_replaces_the_tags(case: Case) -> None:
    await case.store.set("sc:r:1", b"1", 60, tags=["old"])
    await case.store.set("sc:r:1", b"2", 60, tags=["new"])
    assert await case.store.purge_tags(["old"]) == case.purged(0)
    assert await case.store.get("sc:r:1") == b"2"
    assert await case.store.purge_tags(["new"]) == case.purged(1)
    assert await case.store.get("sc:r:1") is None


async def test_a_write_after_a_purge_is_served_and_purgeable_again(case: Case) -> None:
    body = os.urandom(MIB + 5)  # big values too (Memcached's manifests carry the tags)
    for value in (b"small", body):
        await case.store.set("sc:r:1", value, 60, tags=["t"])
        await case.store.purge_tags(["t"])
        assert await case.store.get("sc:r:1") is None
        await case.store.set("sc:r:1", value, 60, tags=["t"])
        assert await case.store.get("sc:r:1") == value
        assert await case.store.purge_tags(["t"]) == case.purged(1)
        assert await case.store.get("sc:r:1") is None


async def test_another_process_sees_writes_and_purges_when_shared(case: Case) -> None:
    other = case.another()
    await case.store.set("sc:r:1", VALUE, 60, tags=["t"])
    await case.store.set("sc:r:2", VALUE, 60, tags=["u"])
    await case.store.set("sc:r:3", VALUE, 60, tags=["soft"])
    expected = VALUE if case.caps.shared else None
    assert await other.get("sc:r:1") == expected
    await other.purge_tags(["t"])
    await other.delete(["sc:r:2"])
    await other.soften_tags(["soft"])
    case.clock.advance(case.caps.remote_purge_lag)
    left = [None, None] if case.caps.shared else [VALUE, VALUE]
    assert await case.store.get_many(["sc:r:1", "sc:r:2"]) == left
    assert (marked(await case.store.get("sc:r:3")) is not None) is case.caps.shared


# ---------------------------------------------------------------- soft purges


def marked(raw: bytes | None) -> float | None:
    """The soft purge time ``raw`` is framed with, ``None`` when unmarked; the value inside
    is checked whole."""
    assert raw is not None
    at = soft_time(raw)
    assert (raw[SOFT_HEAD:] if at is not None else raw) == VALUE
    return at


async def test_a_soft_purge_of_a_tag_marks_its_entries_only(case: Case) -> None:
    store = case.store
    for key in keys(5):
        await store.set(key, VALUE, 60, ["t:soft", "r"])
    await store.set("sc:r:other", VALUE, 60, ["t:other", "r"])
    earliest, _ = case.now()
    assert await store.soften_tags(["t:soft"]) == case.purged(5)
    _, latest = case.now()
    for key in keys(5):
        at = marked(await store.get(key))
        assert at is not None
        assert earliest - 1 <= at <= latest + 1  # the time of the purge
    assert marked(await store.get("sc:r:other")) is None
    found = await store.get_many([keys(5)[0], "sc:r:other"])
    assert [marked(value) is not None for value in found] == [True, False]


async def test_a_soft_purge_keeps_big_values_whole(case: Case) -> None:
    body = b"\x9f" + os.urandom(3 * MIB)  # Memcached's manifests carry the marks
    await case.store.set("sc:r:big", body, 60, ["t:soft"])
    await case.store.soften_tags(["t:soft"])
    raw = await case.store.get("sc:r:big")
    assert raw is not None
    assert soft_time(raw) is not None
    assert raw[SOFT_HEAD:] == body


async def test_a_soft_purge_by_key_marks_and_counts_what_it_found(case: Case) -> None:
    store = case.store
    await store.set("sc:r:1", VALUE, 60, ["t:x"])
    await store.set("sc:r:2", VALUE, 60)
    await store.set("sc:r:3", VALUE, 60)
    assert await store.soften(["sc:r:1", "sc:r:2", "sc:r:missing"]) == 2
    assert marked(await store.get("sc:r:1")) is not None
    assert marked(await store.get("sc:r:2")) is not None
    assert marked(await store.get("sc:r:3")) is None
    await store.delete(["sc:r:1"])
    assert await store.get("sc:r:1") is None
    assert await store.soften([]) == 0


async def test_a_key_given_twice_is_softened_once(case: Case) -> None:
    await case.store.set("sc:r:1", VALUE, 60)
    assert await case.store.soften(["sc:r:1", "sc:r:1"]) == 1
    assert marked(await case.store.get("sc:r:1")) is not None


@pytest.mark.parametrize("tags", [["unknown"], []], ids=["unknown-tag", "no-tags"])
async def test_a_soft_purge_that_matches_nothing_marks_nothing(case: Case, tags: list[str]) -> None:
    await case.store.set("sc:r:1", VALUE, 60, tags=["t"])
    await case.store.set("sc:r:2", VALUE, 60)
    assert await case.store.soften_tags(tags) in (0, case.purged(0))
    assert [marked(v) for v in await case.store.get_many(["sc:r:1", "sc:r:2"])] == [None, None]


async def test_a_write_after_a_soft_purge_is_fresh_again(case: Case) -> None:
    store = case.store
    await store.set("sc:r:1", VALUE, 60, ["t:soft"])
    await store.set("sc:r:2", VALUE, 60, ["t:soft"])
    await store.set("sc:r:3", VALUE, 60)
    await store.soften_tags(["t:soft"])
    await store.soften(["sc:r:3"])
    await store.set("sc:r:1", VALUE, 60, ["t:soft"])
    await store.set("sc:r:3", VALUE, 60)
    assert marked(await store.get("sc:r:1")) is None
    assert marked(await store.get("sc:r:2")) is not None
    assert marked(await store.get("sc:r:3")) is None


async def test_the_first_soft_purge_marks_an_entry_the_later_ones_keep_it(case: Case) -> None:
    await case.store.set("sc:r:1", VALUE, 60, ["t:a", "t:b"])
    await case.store.soften_tags(["t:a"])
    first = marked(await case.store.get("sc:r:1"))
    await case.elapse(0.01)  # later purges come later
    await case.store.soften_tags(["t:b"])
    await case.store.soften_tags(["t:a"])
    await case.store.soften(["sc:r:1"])
    assert marked(await case.store.get("sc:r:1")) == first


async def test_a_purge_after_a_soft_purge_removes(case: Case) -> None:
    store = case.store
    await store.set("sc:r:1", VALUE, 60, ["t:soft"])
    await store.set("sc:r:2", VALUE, 60, ["t:soft"])
    await store.soften_tags(["t:soft"])
    await store.soften(["sc:r:2"])
    assert marked(await store.get("sc:r:1")) is not None
    assert await store.purge_tags(["t:soft"]) == case.purged(2)
    assert await store.get_many(["sc:r:1", "sc:r:2"]) == [None, None]


async def test_a_purge_between_soft_purges_removes_for_good(case: Case) -> None:
    store = case.store
    await store.set("sc:r:1", VALUE, 60, ["t:soft"])
    await store.soften_tags(["t:soft"])
    await store.purge_tags(["t:soft"])
    await store.set("sc:r:2", VALUE, 60, ["t:soft"])  # the tag is written again
    await store.soften_tags(["t:soft"])
    assert await store.get("sc:r:1") is None
    assert marked(await store.get("sc:r:2")) is not None


# ---------------------------------------------------------------- leases


async def test_a_lease_is_exclusive_until_its_holder_releases_it(case: Case) -> None:
    store = case.store
    token = await store.lock("sc:r:1", 30)
    assert token
    assert await store.lock("sc:r:1", 30) is None
    assert await store.lock("sc:r:2", 30) is not None  # leases are per key
    assert await store.unlock("sc:r:1", "not-the-token") is False
    assert await store.lock("sc:r:1", 30) is None  # a wrong token released nothing
    assert await store.unlock("sc:r:1", token) is True
    assert await store.unlock("sc:r:1", token) is False  # released once
    again = await store.lock("sc:r:1", 30)
    assert again is not None
    assert again != token
    assert await store.unlock("sc:r:never-locked", token) is False


async def test_contended_lock_has_exactly_one_winner(case: Case) -> None:
    stores = [case.store, case.another()] if case.caps.shared else [case.store]
    attempts = [stores[i % len(stores)].lock("sc:r:hot", 30) for i in range(20)]
    tokens = await asyncio.gather(*attempts)
    assert len([token for token in tokens if token is not None]) == 1


async def test_lease_tokens_are_unique(case: Case) -> None:
    tokens = [await case.store.lock(key, 30) for key in keys(50)]  # on every node
    assert None not in tokens
    assert len(set(tokens)) == 50


async def test_leases_and_entries_do_not_touch_each_other(case: Case) -> None:
    store = case.store
    token = await store.lock("sc:r:1", 30)
    assert token is not None
    assert await store.get("sc:r:1") is None  # a lease never reads as an entry
    await store.set("sc:r:1", b"v", 60, tags=["t"])
    assert await store.get("sc:r:1") == b"v"
    await store.delete(["sc:r:1"])
    await store.purge_tags(["t"])
    assert await store.lock("sc:r:1", 30) is None  # removing the entry left the lease
    assert await store.unlock("sc:r:1", token) is True
