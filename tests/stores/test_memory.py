"""proxy/stores/memory.py: what only the memory store does, the byte-bounded LRU, its exact
byte accounting, its tag index under churn and its TTLs to the tick. What every store
promises (reads, writes, tags, leases) is in test_contract.py.

Time moves only through ``FakeClock``; nothing here sleeps.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.clock import FakeClock
from proxy.stores.base import StoreStats
from proxy.stores.memory import ENTRY_OVERHEAD, TAG_OVERHEAD, MemoryStore

KiB = 1024


def cost(key: str, value: bytes, tags: tuple[str, ...] = ()) -> int:
    return len(key) + len(value) + ENTRY_OVERHEAD + sum(TAG_OVERHEAD + len(t) for t in tags)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store(clock: FakeClock) -> MemoryStore:
    return MemoryStore("mem", 64 * KiB, clock)


def sized_store(clock: FakeClock, entries: int, value: int = 100, key: str = "k0") -> MemoryStore:
    """A store with room for exactly ``entries`` values of ``value`` bytes under 2-char keys."""
    return MemoryStore("mem", entries * cost(key, b"x" * value), clock)


# ---------------------------------------------------------------- basics


async def test_set_replaces_and_counts_bytes_once(store: MemoryStore) -> None:
    await store.set("a", b"x" * 1000, 60)
    await store.set("a", b"y" * 10, 60)
    assert await store.get("a") == b"y" * 10
    assert store.stats() == StoreStats(entries=1, bytes=cost("a", b"y" * 10), evictions=0)


async def test_aclose_drops_everything(store: MemoryStore) -> None:
    await store.set("a", b"1", 60, tags=["t"])
    await store.aclose()
    assert await store.get("a") is None
    assert store.stats() == StoreStats(entries=0, bytes=0, evictions=0)
    assert await store.purge_tags(["t"]) == 0


# ---------------------------------------------------------------- LRU and the byte bound


async def test_evicts_least_recently_set(clock: FakeClock) -> None:
    store = sized_store(clock, 3)
    for key in ("k1", "k2", "k3", "k4"):
        await store.set(key, b"x" * 100, 60)
    assert store.keys() == ["k2", "k3", "k4"]
    assert await store.get("k1") is None
    assert store.stats().evictions == 1


async def test_a_read_makes_an_entry_recent(clock: FakeClock) -> None:
    store = sized_store(clock, 3)
    for key in ("k1", "k2", "k3"):
        await store.set(key, b"x" * 100, 60)
    assert await store.get("k1") == b"x" * 100
    await store.set("k4", b"x" * 100, 60)
    assert store.keys() == ["k3", "k1", "k4"]
    assert await store.get("k2") is None


async def test_get_many_makes_entries_recent(clock: FakeClock) -> None:
    store = sized_store(clock, 3)
    for key in ("k1", "k2", "k3"):
        await store.set(key, b"x" * 100, 60)
    await store.get_many(["k2", "k1"])
    await store.set("k4", b"x" * 100, 60)
    assert store.keys() == ["k2", "k1", "k4"]


async def test_rewriting_a_key_makes_it_recent(clock: FakeClock) -> None:
    store = sized_store(clock, 3)
    for key in ("k1", "k2", "k3"):
        await store.set(key, b"x" * 100, 60)
    await store.set("k1", b"y" * 100, 60)
    await store.set("k4", b"x" * 100, 60)
    assert store.keys() == ["k3", "k1", "k4"]


async def test_a_large_value_evicts_as_many_as_it_needs(clock: FakeClock) -> None:
    store = sized_store(clock, 4)
    for key in ("k1", "k2", "k3", "k4"):
        await store.set(key, b"x" * 100, 60)
    await store.set("k5", b"x" * 250, 60)  # more than one small entry costs, less than two
    assert store.keys() == ["k3", "k4", "k5"]
    assert store.stats() == StoreStats(
        entries=3, bytes=2 * cost("k3", b"x" * 100) + cost("k5", b"x" * 250), evictions=2
    )


async def test_a_value_larger_than_the_store_is_not_stored(clock: FakeClock) -> None:
    store = sized_store(clock, 2)
    await store.set("k1", b"x" * 100, 60)
    await store.set("k2", b"x" * 100, 60)
    await store.set("k3", b"x" * store.max_size, 60)
    assert await store.get("k3") is None
    # ... and pushes nothing out for it
    assert store.keys() == ["k1", "k2"]
    assert store.stats().evictions == 0


async def test_an_oversized_rewrite_drops_the_old_value(clock: FakeClock) -> None:
    store = sized_store(clock, 2)
    await store.set("k1", b"old", 60)
    await store.set("k1", b"x" * store.max_size, 60)
    # serving the old body for a key whose answer changed would be wrong
    assert await store.get("k1") is None
    assert store.stats().bytes == 0


async def test_exactly_full_is_allowed(clock: FakeClock) -> None:
    store = MemoryStore("mem", cost("k1", b"x" * 100), clock)
    await store.set("k1", b"x" * 100, 60)
    assert await store.get("k1") == b"x" * 100
    assert store.stats().bytes == store.max_size


async def test_bound_counts_keys_values_tags_and_overhead(store: MemoryStore) -> None:
    await store.set("key", b"value", 60, tags=["t1", "t2"])
    await store.set("k", b"v", 60)
    expected = cost("key", b"value", ("t1", "t2")) + cost("k", b"v")
    assert store.stats() == StoreStats(entries=2, bytes=expected, evictions=0)


@pytest.mark.parametrize("count", [1, 10, 1_000, 20_000])
async def test_byte_bound_holds_for_any_number_of_distinct_keys(
    clock: FakeClock, count: int
) -> None:
    store = MemoryStore("mem", 64 * KiB, clock)
    for i in range(count):
        await store.set(f"sc:r:{i:032x}", bytes(i % 2000), 60, tags=[f"t{i % 7}"])
        held = store.stats().bytes
        assert held is not None
        assert held <= store.max_size
    stats = store.stats()
    assert stats.entries == len(store.keys())
    assert stats.evictions == count - len(store.keys())
    assert await store.get(f"sc:r:{count - 1:032x}") == bytes((count - 1) % 2000)


OPS = st.lists(
    st.tuples(
        st.sampled_from(["set", "get", "delete", "purge", "tick"]),
        st.integers(0, 30),  # key number
        st.integers(0, 3000),  # value size
        st.lists(st.sampled_from(["a", "b", "c"]), max_size=2),
    ),
    max_size=80,
)


@settings(max_examples=150, deadline=None)
@given(max_size=st.integers(1, 8 * KiB), ops=OPS)
async def test_bound_and_accounting_hold_under_any_sequence(
    max_size: int, ops: list[tuple[str, int, int, list[str]]]
) -> None:
    clock = FakeClock()
    store = MemoryStore("mem", max_size, clock)
    written: dict[str, tuple[bytes, tuple[str, ...]]] = {}  # the last write of each key
    for op, n, size, tags in ops:
        key = f"k{n}"
        if op == "set":
            written[key] = (bytes(size), tuple(tags))
            await store.set(key, bytes(size), 1 + n % 5, tags=tags)
        elif op == "get":
            await store.get(key)
        elif op == "delete":
            await store.delete([key])
        elif op == "purge":
            await store.purge_tags(tags)
        else:
            clock.advance(1)
        held = store.keys()
        stats = store.stats()
        assert stats.bytes is not None
        assert stats.bytes <= max_size
        assert stats.entries == len(held)
        # the running total is exactly the cost of what is held
        assert stats.bytes == sum(cost(k, *written[k]) for k in held)
    # every entry still held answers its last write, and purging every tag finds
    # exactly the held entries that carry one
    held = store.keys()
    for key in held:
        assert store.get_now(key) in (written[key][0], None)  # None: expired just now
    held = store.keys()
    tagged = [k for k in held if written[k][1]]
    assert await store.purge_tags(["a", "b", "c"]) == len(tagged)


class ReferenceLRU:
    """The behaviour the store must have, written the obvious way (an OrderedDict)."""

    def __init__(self, max_size: int, clock: FakeClock) -> None:
        self.max_size = max_size
        self.clock = clock
        self.data: OrderedDict[str, tuple[bytes, float, tuple[str, ...]]] = OrderedDict()
        self.size = 0
        self.evictions = 0

    def get(self, key: str) -> bytes | None:
        item = self.data.get(key)
        if item is None:
            return None
        if item[1] <= self.clock.monotonic():
            self.delete(key)
            return None
        self.data.move_to_end(key)
        return item[0]

    def set(self, key: str, value: bytes, ttl: float, tags: tuple[str, ...]) -> None:
        self.delete(key)
        if cost(key, value, tags) > self.max_size:
            return
        self.data[key] = (value, self.clock.monotonic() + ttl, tags)
        self.size += cost(key, value, tags)
        while self.size > self.max_size:
            self.delete(next(iter(self.data)))
            self.evictions += 1

    def delete(self, key: str) -> int:
        item = self.data.pop(key, None)
        if item is None:
            return 0
        self.size -= cost(key, item[0], item[2])
        return 1

    def purge(self, tags: list[str]) -> int:
        doomed = [k for k, (_, _, held) in self.data.items() if set(held) & set(tags)]
        return sum(self.delete(key) for key in doomed)


MODEL_OPS = st.lists(
    st.tuples(
        st.sampled_from(["set", "set", "get", "get", "get", "delete", "purge", "tick"]),
        st.integers(0, 40),  # key number
        st.integers(0, 600),  # value size
        st.lists(st.sampled_from(["a", "b", "c", "d"]), max_size=3),
    ),
    max_size=200,
)


@settings(max_examples=300, deadline=None)
@given(entries=st.integers(1, 12), ops=MODEL_OPS)
async def test_behaves_as_an_exact_lru(
    entries: int, ops: list[tuple[str, int, int, list[str]]]
) -> None:
    # Reads, rewrites, removals and evictions in any order, entries moving from the old
    # generation to the young one and the generations switching many times: the store
    # keeps and drops exactly what an exact LRU would.
    clock = FakeClock()
    store = MemoryStore("mem", entries * cost("k00", bytes(300), ("a", "b")), clock)
    model = ReferenceLRU(store.max_size, clock)
    for op, n, size, tags in ops:
        key = f"k{n:02}"
        if op == "set":
            await store.set(key, bytes(size), 1 + n % 7, tags=tags)
            model.set(key, bytes(size), 1 + n % 7, tuple(tags))
        elif op == "get":
            assert store.get_now(key) == model.get(key)
        elif op == "delete":
            assert await store.delete([key]) == model.delete(key)
        elif op == "purge":
            assert await store.purge_tags(tags) == model.purge(tags)
        else:
            clock.advance(1)
        assert store.keys() == list(model.data)
        assert store.stats() == StoreStats(len(model.data), model.size, model.evictions)


async def test_eviction_order_survives_reads_of_the_oldest(clock: FakeClock) -> None:
    # thousands of entries, most of the least recent read again between evictions
    count = 5000
    store = sized_store(clock, count, value=10, key="k0000")
    model = ReferenceLRU(store.max_size, clock)
    for i in range(count):
        await store.set(f"k{i:04}", bytes(10), 60)
        model.set(f"k{i:04}", bytes(10), 60, ())
    for phase in range(3):
        for i in range(count):
            if i % 4 != phase:  # three in four of the least recent are read again
                assert store.get_now(f"k{i:04}") == model.get(f"k{i:04}")
        for i in range(count // 2):
            await store.set(f"n{phase}{i:04}", bytes(10), 60)
            model.set(f"n{phase}{i:04}", bytes(10), 60, ())
        assert store.keys() == list(model.data)
    assert store.stats().evictions == model.evictions > count


async def test_entries_of_every_generation_can_be_removed_and_expire(clock: FakeClock) -> None:
    # the first eviction makes every entry held the old generation
    store = MemoryStore("mem", 4 * cost("k1", bytes(10), ("t",)), clock)
    for n, ttl in ((1, 60), (2, 60), (3, 60), (4, 5), (5, 5)):
        await store.set(f"k{n}", bytes(10), ttl, tags=["t"])
    assert store.keys() == ["k2", "k3", "k4", "k5"]  # k1 evicted
    assert await store.delete(["k3"]) == 1  # from the old generation
    await store.set("k2", bytes(1), 60, tags=["t"])  # rewritten out of it
    assert store.keys() == ["k4", "k5", "k2"]
    clock.advance(5)
    assert await store.get_many(["k4", "k5"]) == [None, None]  # expired in the old one
    assert store.keys() == ["k2"]
    assert await store.purge_tags(["t"]) == 1
    assert store.stats() == StoreStats(entries=0, bytes=0, evictions=1)


async def test_a_shared_tag_finds_every_entry_after_churn(store: MemoryStore) -> None:
    # entries come and go under one tag many times over: a purge still removes
    # exactly the entries that carry it now
    for _ in range(50):
        for i in range(40):
            await store.set(f"k{i}", b"v", 60, tags=["shared", f"own{i}"])
        for i in range(0, 40, 2):
            await store.delete([f"k{i}"])
        for i in range(1, 40, 4):
            await store.set(f"k{i}", b"v", 60, tags=[f"own{i}"])  # leaves "shared"
    assert await store.purge_tags(["shared"]) == 10
    assert len(store.keys()) == 10
    assert await store.purge_tags([f"own{i}" for i in range(40)]) == 10
    assert store.stats() == StoreStats(entries=0, bytes=0, evictions=0)


# ---------------------------------------------------------------- TTLs


async def test_expires_after_its_ttl(store: MemoryStore, clock: FakeClock) -> None:
    await store.set("a", b"1", 10)
    clock.advance(9.999)
    assert await store.get("a") == b"1"
    clock.advance(0.001)
    assert await store.get("a") is None
    assert store.stats() == StoreStats(entries=0, bytes=0, evictions=0)


async def test_a_read_does_not_extend_the_ttl(store: MemoryStore, clock: FakeClock) -> None:
    await store.set("a", b"1", 10)
    clock.advance(8)
    assert await store.get("a") == b"1"
    clock.advance(2)
    assert await store.get("a") is None


async def test_rewrite_restarts_the_ttl(store: MemoryStore, clock: FakeClock) -> None:
    await store.set("a", b"1", 10)
    clock.advance(8)
    await store.set("a", b"2", 10)
    clock.advance(8)
    assert await store.get("a") == b"2"


@pytest.mark.parametrize("ttl", [0, -1, -0.5, math.nan])
async def test_non_positive_ttl_stores_nothing(store: MemoryStore, ttl: float) -> None:
    # nothing lives forever: a TTL that is not a positive number stores nothing
    await store.set("a", b"old", 60)
    await store.set("a", b"new", ttl)
    assert await store.get("a") is None
    assert store.stats().bytes == 0


class SplitClock:
    """A clock whose wall and monotonic readings move separately."""

    def __init__(self) -> None:
        self.wall = 1_700_000_000.0
        self.mono = 50.0

    def time(self) -> float:
        return self.wall

    def monotonic(self) -> float:
        return self.mono


async def test_ttl_follows_the_monotonic_clock() -> None:
    clock = SplitClock()
    store = MemoryStore("mem", 64 * KiB, clock)
    await store.set("a", b"1", 10)
    clock.wall -= 3600  # the wall clock steps back an hour: deadlines must not care
    clock.mono += 10
    assert await store.get("a") is None
    await store.set("b", b"2", 10)
    clock.wall += 7200  # ... nor when it jumps ahead
    assert await store.get("b") == b"2"


# ---------------------------------------------------------------- tags


async def test_evicted_and_expired_entries_leave_the_tag_index(clock: FakeClock) -> None:
    store = sized_store(clock, 2, key="k1")
    await store.set("k1", b"x" * 100, 60, tags=["t"])
    await store.set("k2", b"x" * 100, 1)
    # k1 (evicted) and k2 (expired, dropped on read) must not linger under any tag
    await store.set("k3", b"x" * 100, 60)
    clock.advance(2)
    assert await store.get("k2") is None
    assert await store.purge_tags(["t"]) == 0
    assert store.keys() == ["k3"]
