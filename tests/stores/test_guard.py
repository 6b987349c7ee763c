"""GuardedStore over real servers: deadlines, the circuit breaker, recovery, counters."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import statistics
import time
from collections.abc import AsyncIterator, Awaitable

import pytest
from mirakuru import TCPExecutor

from proxy.clock import FakeClock
from proxy.errors import StoreError, StoreTimeout, StoreUnavailable
from proxy.stores.base import Store
from proxy.stores.guard import WRITE_BYTES_PER_SECOND, GuardedStore
from proxy.stores.memory import MemoryStore
from proxy.stores.redis import RedisStore

from .conftest import MakeRelay, Relay

TIMEOUT = 0.2  # far below the relay's delays, far above a loaded machine's jitter


@pytest.fixture
async def slow_redis(
    redis_url: str, make_relay: MakeRelay
) -> AsyncIterator[tuple[Relay, RedisStore]]:
    relay = await make_relay(redis_url.removeprefix("redis://").removesuffix("/0"))
    store = RedisStore("slow", f"redis://127.0.0.1:{relay.port}/0")
    yield relay, store
    await store.aclose()


async def timed(call: Awaitable[object]) -> float:
    """Seconds one store call took, whether it answered or raised StoreError."""
    start = time.perf_counter()
    with contextlib.suppress(StoreError):
        await call
    return time.perf_counter() - start


def test_satisfies_the_protocol(redis_url: str) -> None:
    assert isinstance(GuardedStore(RedisStore("r", redis_url), TIMEOUT), Store)


async def test_answers_its_inner_stores_kind(redis_url: str) -> None:
    redis = RedisStore("r", redis_url)
    memory = MemoryStore("m", 1024**2)
    guarded_redis, guarded_memory = GuardedStore(redis, TIMEOUT), GuardedStore(memory, TIMEOUT)
    try:
        assert guarded_redis.channel() is redis
        assert guarded_redis.reader() is None
        assert guarded_redis.snapshottable() is None
        assert guarded_redis.tiers() is None
        assert guarded_memory.snapshottable() is memory
        assert guarded_memory.channel() is None
        await guarded_memory.set("k", b"v", 30)
        read = guarded_memory.reader()
        assert read is not None
        assert read("k") == b"v"
    finally:
        await guarded_redis.aclose()
        await guarded_memory.aclose()


async def test_passes_through_and_counts(redis_url: str) -> None:
    guard = GuardedStore(RedisStore("r", redis_url), TIMEOUT)
    try:
        await guard.set("sc:{r}:1", b"v", 30, tags=["t"])
        assert await guard.get("sc:{r}:1") == b"v"
        assert await guard.get_many(["sc:{r}:1", "x"]) == [b"v", None]
        token = await guard.lock("sc:{r}:1", 5)
        assert token is not None
        assert await guard.unlock("sc:{r}:1", token) is True
        assert await guard.purge_tags(["t"]) == -1  # Redis cannot count: generations
        assert await guard.get("sc:{r}:1") is None
        assert await guard.delete(["sc:{r}:1"]) == 0
        assert await guard.ping() is True
        assert guard.state == "closed"
        assert guard.counters["get"].ops == 2
        assert all(c.errors == c.timeouts == 0 for c in guard.counters.values())
        assert guard.name == "r"
        assert guard.shared is True
    finally:
        await guard.aclose()


async def test_deadline_turns_a_slow_answer_into_store_timeout(
    slow_redis: tuple[Relay, RedisStore],
) -> None:
    relay, store = slow_redis
    guard = GuardedStore(store, TIMEOUT, breaker_failures=10)
    await store.set("sc:{r}:1", b"v", 30)
    relay.delay = 0.5
    start = time.perf_counter()
    with pytest.raises(StoreTimeout) as caught:
        await guard.get("sc:{r}:1")
    elapsed = time.perf_counter() - start
    assert TIMEOUT <= elapsed < TIMEOUT + 0.1
    assert isinstance(caught.value, TimeoutError)
    assert guard.counters["get"].timeouts == 1
    relay.delay = 0
    assert await guard.get("sc:{r}:1") == b"v"  # redis-py dropped the late reply's socket


async def test_big_writes_get_time_for_their_bytes(slow_redis: tuple[Relay, RedisStore]) -> None:
    relay, store = slow_redis
    guard = GuardedStore(store, TIMEOUT, breaker_failures=10)
    await store.ping()
    relay.delay = TIMEOUT + 0.05
    with pytest.raises(StoreTimeout):
        await guard.set("sc:{r}:small", b"v", 30)
    relay.delay = 0
    await store.ping()
    relay.delay = TIMEOUT + 0.05
    # 16 MiB at WRITE_BYTES_PER_SECOND buys 500 ms on top of the deadline
    big = os.urandom(16 * 1024**2)
    assert len(big) / WRITE_BYTES_PER_SECOND == 0.5
    await guard.set("sc:{r}:big", big, 30)
    relay.delay = 0
    assert await store.get("sc:{r}:big") == big  # unguarded: reads get no allowance


async def test_breaker_opens_after_n_failures_then_fails_fast(
    slow_redis: tuple[Relay, RedisStore],
) -> None:
    relay, store = slow_redis
    clock = FakeClock()
    guard = GuardedStore(store, TIMEOUT, breaker_failures=3, breaker_cooldown=5, clock=clock)
    assert await store.ping() is True
    relay.delay = 1.0
    for _ in range(3):
        assert guard.state == "closed"
        with pytest.raises(StoreTimeout):
            await guard.get("sc:{r}:1")
    assert guard.state == "open"
    assert guard.opened_total == 1
    seen = relay.requests
    latencies = []
    for _ in range(200):
        start = time.perf_counter()
        with pytest.raises(StoreUnavailable, match="circuit breaker open"):
            await guard.get("sc:{r}:1")
        latencies.append(time.perf_counter() - start)
    # no deadline paid: nothing is awaited at all (slack only for a noisy machine)
    assert statistics.median(latencies) < 0.001
    assert max(latencies) < 0.02
    assert relay.requests == seen  # and the backend was never touched
    assert guard.counters["get"].rejected == 200
    assert await guard.ping() is False  # health checks see it without raising
    breaker = guard.breaker()  # what admin's metrics read, through the Store protocol
    assert (breaker.state, breaker.opens) == ("open", 1)
    assert breaker.ops["get"].reason("rejected") == 200
    assert breaker.ops["get"].reason("timeouts") == 3


async def test_half_open_probe_closes_or_reopens(slow_redis: tuple[Relay, RedisStore]) -> None:
    relay, store = slow_redis
    clock = FakeClock()
    guard = GuardedStore(store, TIMEOUT, breaker_failures=2, breaker_cooldown=5, clock=clock)
    await store.set("sc:{r}:1", b"v", 30)
    relay.delay = 1.0
    for _ in range(2):
        with pytest.raises(StoreTimeout):
            await guard.get("sc:{r}:1")
    assert guard.state == "open"
    clock.advance(4.9)
    with pytest.raises(StoreUnavailable):
        await guard.get("sc:{r}:1")
    clock.advance(0.1)
    assert guard.state == "half_open"
    # the probe fails: open again for a full cooldown
    with pytest.raises(StoreTimeout):
        await guard.get("sc:{r}:1")
    assert guard.state == "open"
    assert guard.opened_total == 2
    clock.advance(5)
    relay.delay = 0
    assert await guard.get("sc:{r}:1") == b"v"  # the probe succeeds
    assert guard.state == "closed"
    assert await guard.get("sc:{r}:1") == b"v"


async def test_only_one_probe_at_a_time(slow_redis: tuple[Relay, RedisStore]) -> None:
    relay, store = slow_redis
    clock = FakeClock()
    guard = GuardedStore(store, 0.5, breaker_failures=1, breaker_cooldown=1, clock=clock)
    relay.delay = 1.0
    with pytest.raises(StoreTimeout):
        await guard.get("k")
    clock.advance(1)
    relay.delay = 0.1
    probe = asyncio.create_task(guard.get("k"))
    await asyncio.sleep(0.01)
    with pytest.raises(StoreUnavailable, match="half_open"):
        await guard.get("k")
    assert await probe is None
    assert guard.state == "closed"


async def test_a_cancelled_probe_leaves_the_breaker_open(
    slow_redis: tuple[Relay, RedisStore],
) -> None:
    relay, store = slow_redis
    clock = FakeClock()
    guard = GuardedStore(store, 0.5, breaker_failures=1, breaker_cooldown=1, clock=clock)
    relay.delay = 1.0
    with pytest.raises(StoreTimeout):
        await guard.get("k")
    clock.advance(1)
    probe = asyncio.create_task(guard.get("k"))
    await asyncio.sleep(0.01)
    probe.cancel()
    with pytest.raises(asyncio.CancelledError):
        await probe  # cancellation is the caller's, never turned into a StoreError
    assert guard.state == "half_open"  # no verdict: the next call may probe again
    relay.delay = 0
    assert await guard.get("k") is None
    assert guard.state == "closed"


async def test_errors_count_like_timeouts() -> None:
    guard = GuardedStore(RedisStore("down", "redis://127.0.0.1:1/0"), 0.5, breaker_failures=2)
    try:
        for _ in range(2):
            with pytest.raises(StoreUnavailable):
                await guard.set("k", b"v", 10)
        assert guard.state == "open"
        assert guard.counters["set"].errors == 2
    finally:
        await guard.aclose()


async def test_breaker_against_a_real_redis_stopped_and_restarted(own_redis: TCPExecutor) -> None:
    """Stop the real process: the breaker opens and fails fast; restart it on the same
    port: the first probe after the cooldown closes the breaker, no restart of ours."""
    url = f"redis://127.0.0.1:{own_redis.port}/0"
    guard = GuardedStore(RedisStore("r", url), TIMEOUT, breaker_failures=5, breaker_cooldown=0.5)
    try:
        await guard.inner.set("sc:{r}:1", b"before", 30)
        await asyncio.to_thread(own_redis.stop)
        failing = []
        for _ in range(5):
            start = time.perf_counter()
            with pytest.raises(StoreError):
                await guard.get("sc:{r}:1")
            failing.append(time.perf_counter() - start)
        assert guard.state == "open"
        assert max(failing) < TIMEOUT + 0.1  # never more than the deadline
        open_latencies = [await timed(guard.get("sc:{r}:1")) for _ in range(100)]
        assert statistics.median(open_latencies) < 0.001
        assert max(open_latencies) < 0.02
        await asyncio.to_thread(own_redis.start)
        await asyncio.sleep(0.55)
        assert guard.state == "half_open"
        assert await guard.get("sc:{r}:1") is None  # the probe; a fresh, empty server
        assert guard.state == "closed"
        await guard.set("sc:{r}:1", b"after", 30)
        assert await guard.get("sc:{r}:1") == b"after"
    finally:
        await guard.aclose()


async def test_backend_bugs_still_fail_open(redis_url: str) -> None:
    guard = GuardedStore(RedisStore("r", redis_url), TIMEOUT)
    try:
        with pytest.raises(StoreError) as caught:
            await guard.set("k", b"v", float("nan"))  # ValueError inside the backend
        assert isinstance(caught.value.__cause__, ValueError)
    finally:
        await guard.aclose()


def test_rejects_nonsense_settings(redis_url: str) -> None:
    with pytest.raises(ValueError, match="timeout"):
        GuardedStore(RedisStore("r", redis_url), 0)


# ------------------------------------------------ deadlines and cancellation (issue 8)


async def test_a_deadline_leaves_the_task_as_it_found_it(
    slow_redis: tuple[Relay, RedisStore],
) -> None:
    """Our own cancellation is withdrawn (``uncancel``) when it becomes a StoreTimeout:
    the caller's task is not left "being cancelled", nor hit again later."""
    relay, store = slow_redis
    guard = GuardedStore(store, TIMEOUT, breaker_failures=10)
    await store.ping()
    me = asyncio.current_task()
    assert me is not None
    assert me.cancelling() == 0
    relay.delay = 1.0
    with pytest.raises(StoreTimeout):
        await guard.get("sc:{r}:1")
    assert me.cancelling() == 0
    await asyncio.sleep(2 * TIMEOUT)  # no cancellation of ours is still on its way


async def test_calls_in_sequence_each_have_their_own_deadline(
    slow_redis: tuple[Relay, RedisStore],
) -> None:
    relay, store = slow_redis
    guard = GuardedStore(store, 0.4, breaker_failures=10)
    await store.set("sc:{r}:1", b"v", 30)
    assert await guard.get("sc:{r}:1") == b"v"  # answered at once; its deadline is 0.4 s off
    await asyncio.sleep(0.2)
    relay.delay = 0.3
    # out from 0.2 s to 0.5 s: the first call's deadline passes meanwhile, its own does not
    assert await guard.get("sc:{r}:1") == b"v"
    assert guard.counters["get"].timeouts == 0


async def test_a_cancellation_from_outside_is_the_callers(
    slow_redis: tuple[Relay, RedisStore],
) -> None:
    """A client that went away cancels its request: the store call is cancelled with it,
    and that is neither a timeout nor a failure of the store."""
    relay, store = slow_redis
    guard = GuardedStore(store, 1.0, breaker_failures=1)
    await store.ping()
    relay.delay = 5.0
    call = asyncio.create_task(guard.get("sc:{r}:1"))
    await asyncio.sleep(0.05)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    await asyncio.sleep(1.0)  # past the deadline the call had
    assert guard.counters["get"].timeouts == guard.counters["get"].errors == 0
    assert guard.state == "closed"  # one failure would have opened it


class CleansUpSlowly(RedisStore):
    """A Redis store whose cancelled ``get`` takes a while to clean up (as closing a
    connection may): the window in which the caller's own cancellation can arrive after
    the deadline has fired but before the call has ended."""

    def __init__(self, name: str, url: str) -> None:
        super().__init__(name, url)
        self.cleaning = asyncio.Event()

    async def get(self, key: str) -> bytes | None:
        try:
            return await super().get(key)
        except asyncio.CancelledError:
            self.cleaning.set()
            await asyncio.sleep(1.0)
            raise


async def test_a_cancellation_from_outside_after_the_deadline_still_wins(
    redis_url: str, make_relay: MakeRelay
) -> None:
    relay = await make_relay(redis_url.removeprefix("redis://").removesuffix("/0"))
    store = CleansUpSlowly("slow", f"redis://127.0.0.1:{relay.port}/0")
    guard = GuardedStore(store, TIMEOUT, breaker_failures=10)
    try:
        await store.ping()
        relay.delay = 1.0
        call = asyncio.create_task(guard.get("sc:{r}:1"))
        await store.cleaning.wait()  # the deadline has fired; the call is not over yet
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call  # as asyncio.timeout: a second request to cancel is not ours
        assert guard.counters["get"].timeouts == 0
    finally:
        await store.aclose()


async def test_a_deadline_in_a_cancelled_callers_cleanup_is_a_timeout(
    slow_redis: tuple[Relay, RedisStore],
) -> None:
    """A handler cancelled mid-request still releases its lease on the way out: that
    call's deadline is a StoreTimeout, and the handler's cancellation stays pending."""
    relay, store = slow_redis
    guard = GuardedStore(store, TIMEOUT, breaker_failures=10)
    await store.ping()
    relay.delay = 1.0
    seen: list[int] = []

    async def handler() -> None:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            with pytest.raises(StoreTimeout):
                await guard.unlock("sc:{r}:lease", "token")
            me = asyncio.current_task()
            assert me is not None
            seen.append(me.cancelling())
            raise

    task = asyncio.create_task(handler())
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert seen == [1]
    assert guard.counters["unlock"].timeouts == 1


@pytest.mark.parametrize(("outer", "inner"), [(0.2, 0.5), (0.5, 0.2), (0.2, 0.2)])
async def test_nested_guards_each_keep_their_deadline(
    slow_redis: tuple[Relay, RedisStore], outer: float, inner: float
) -> None:
    relay, store = slow_redis
    inside = GuardedStore(store, inner, breaker_failures=10)
    guard = GuardedStore(inside, outer, breaker_failures=10)
    await store.ping()
    relay.delay = 1.0
    start = time.perf_counter()
    with pytest.raises(StoreTimeout):
        await guard.get("sc:{r}:1")
    elapsed = time.perf_counter() - start
    first = min(outer, inner)
    assert first <= elapsed < first + 0.1
    assert guard.counters["get"].timeouts == 1
    if inner > outer:
        # the inner call was cancelled by the outer deadline: not a failure of its own
        assert inside.counters["get"].timeouts == inside.counters["get"].errors == 0
    me = asyncio.current_task()
    assert me is not None
    assert me.cancelling() == 0
    await asyncio.sleep(max(outer, inner))  # the other deadline, if pending, hits nothing


async def test_many_calls_on_a_frozen_redis_each_time_out_on_their_own_deadline(
    own_redis: TCPExecutor,
) -> None:
    """Redis stopped with SIGSTOP (a frozen server: connections accepted, never answered);
    reads and writes of three deadlines, started over several milliseconds."""
    store = RedisStore("r", f"redis://127.0.0.1:{own_redis.port}/0")
    guards = [GuardedStore(store, t, breaker_failures=1000) for t in (0.1, 0.15, 0.3)]
    big = os.urandom(3 * 1024**2)  # a write allowed 3/32 s more
    try:
        await store.set("sc:{r}:1", b"v", 30)

        async def one(guard: GuardedStore, i: int) -> tuple[float, float, int]:
            await asyncio.sleep(i * 0.002)
            deadline = guard.timeout
            call: Awaitable[object]
            if i % 4 == 3:
                deadline += len(big) / WRITE_BYTES_PER_SECOND
                call = guard.set(f"sc:{{r}}:{i}", big, 30)
            else:
                call = guard.get("sc:{r}:1")
            start = time.perf_counter()
            with pytest.raises(StoreTimeout):
                await call
            me = asyncio.current_task()
            assert me is not None
            return deadline, time.perf_counter() - start, me.cancelling()

        assert own_redis.process is not None
        pid = own_redis.process.pid
        os.kill(pid, signal.SIGSTOP)
        try:
            results = await asyncio.gather(*(one(g, i) for i in range(40) for g in guards))
        finally:
            os.kill(pid, signal.SIGCONT)
        for deadline, elapsed, cancelling in results:
            assert deadline <= elapsed < deadline + 0.5  # never early; late only by load
            assert cancelling == 0
        assert sum(g.counters["get"].timeouts + g.counters["set"].timeouts for g in guards) == 120
        # thawed (unguarded: Redis first works through the writes it was sent meanwhile)
        assert await store.get("sc:{r}:1") == b"v"
    finally:
        await store.aclose()


async def test_timeouts_of_one_burst_count_once(slow_redis: tuple[Relay, RedisStore]) -> None:
    relay, store = slow_redis
    guard = GuardedStore(store, TIMEOUT, breaker_failures=2)
    await store.ping()
    relay.delay = 1.0
    results = await asyncio.gather(
        *(guard.get(f"sc:{{r}}:{i}") for i in range(20)), return_exceptions=True
    )
    assert all(isinstance(r, StoreTimeout) for r in results)
    assert guard.counters["get"].timeouts == 20
    assert guard.state == "closed"  # one piece of evidence, not twenty
    with pytest.raises(StoreTimeout):
        await guard.get("sc:{r}:1")  # a deadline later: the second
    assert guard.state == "open"
