"""Single-flight: one origin fetch per key, however many requests wait for it, in this
process (``Coalescer``) and across replicas sharing a store (``Leases``); and the
background refreshes of stale entries (``Refresher``), one per key.

The fill runs as its own task, detached from the client that started it (Envoy
#34595): a leader whose client disconnects does not cancel the followers' fetch.
Followers wait on an event, never on a poll, and only up to the route's timeout;
after that, or when the leader's answer is not shareable, each goes to the origin
itself. Keys whose answer was not shareable are remembered for a short while
(Varnish's hit-for-miss) so later requests do not queue behind a leader again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Final, Generic, TypeVar

from proxy.clock import Clock
from proxy.core.decide import Found, filled_meanwhile
from proxy.core.entry import CachedResponse
from proxy.core.exchange import Headers, ProxyResponse
from proxy.engine.context import Context
from proxy.errors import StoreError

log = logging.getLogger("sidecache")

T = TypeVar("T")
HFM: Final = ":hfm"  # suffix of hit-for-miss marker keys on shared stores


@dataclass(slots=True)
class Fill:
    """The outcome of one origin fetch for a cacheable request."""

    entry: CachedResponse | None  # stored (or storable) response, shareable with followers
    live: ProxyResponse | None = None  # the leader's own answer when not shareable
    status: int = 0
    collapsed: bool = False  # filled by another replica's leader (cross-replica lock)
    own: Headers = ()  # the leader's Set-Cookie: for its client only, never stored nor shared


@dataclass(slots=True)
class Flight(Generic[T]):
    task: asyncio.Task[T]
    waiters: int = 0


class Coalescer(Generic[T]):
    """Per-process single-flight keyed by cache key."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._flights: dict[str, Flight[T]] = {}
        self._uncacheable: dict[str, float] = {}
        self.collapsed = 0

    def in_flight(self, key: str) -> Flight[T] | None:
        return self._flights.get(key)

    def is_uncacheable(self, key: str) -> bool:
        until = self._uncacheable.get(key)
        if until is None:
            return False
        if until <= self._clock.monotonic():
            del self._uncacheable[key]
            return False
        return True

    def mark_uncacheable(self, key: str, seconds: float) -> None:
        if seconds <= 0:
            return
        if len(self._uncacheable) > 100_000:  # bounded memory under unique-key floods
            self._uncacheable.clear()
        self._uncacheable[key] = self._clock.monotonic() + seconds

    def lead(self, key: str, fill: Callable[[], Awaitable[T]]) -> asyncio.Task[T]:
        """Start the fill for ``key`` as a detached task that followers can join."""
        task: asyncio.Task[T] = asyncio.ensure_future(fill())
        self._flights[key] = Flight(task)

        def done(_: asyncio.Task[T]) -> None:
            if self._flights.get(key) is not None and self._flights[key].task is task:
                del self._flights[key]

        task.add_done_callback(done)
        return task

    async def follow(self, flight: Flight[T], timeout: float) -> T | None:
        """Wait for a leader's result; ``None`` on timeout or when the leader failed."""
        flight.waiters += 1
        self.collapsed += 1
        try:
            return await asyncio.wait_for(asyncio.shield(flight.task), timeout)
        except (TimeoutError, asyncio.CancelledError):
            if flight.task.cancelled() or not flight.task.done():
                if asyncio.current_task() is not None and _cancelling():
                    raise
                return None
            return None
        except Exception:
            return None
        finally:
            flight.waiters -= 1


def _cancelling() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


FillFn = Callable[[Context], Awaitable[Fill]]
LookupFn = Callable[[Context], Awaitable[Found]]


class Leases:
    """Cross-replica single-flight on a shared store: the replica holding the lease
    (``SET NX PX`` with a token) fetches; the others wait for its entry, polling with
    backoff up to ``coalesce.timeout``, then fetch themselves. A leader that dies blocks
    nobody longer than its lease. Without ``wait`` (background refreshes), a replica
    that does not get the lease leaves the work to its holder."""

    def __init__(self, clock: Clock, fill: FillFn, lookup: LookupFn) -> None:
        self._clock = clock
        self._fill = fill
        self._lookup = lookup

    async def fill(self, ctx: Context, *, wait: bool = True) -> Fill:
        cfg = ctx.route.config
        store = ctx.store
        if not store.shared or not cfg.coalesce.enabled:
            return await self._fill(ctx)
        deadline = self._clock.monotonic() + cfg.coalesce.timeout
        delay = 0.005
        waited = False
        while True:
            try:
                token = await store.lock(ctx.key, cfg.coalesce.timeout)
            except StoreError:
                return await self._fill(ctx)
            if token is not None:
                # another replica may have filled it between our lookup and the lease (a
                # background refresh too: another's may have ended just before)
                check = waited or ctx.stale is None or not wait
                return await self._fill_held(ctx, token, check=check)
            if not wait:
                return Fill(None, None, 0)
            if self._clock.monotonic() >= deadline:
                return await self._fill(ctx)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.05)
            waited = True
            try:
                filled = await self._filled_by_other(ctx)
                marked = await store.get(ctx.key + HFM)
            except StoreError:
                return await self._fill(ctx)
            if filled is not None:
                return filled
            if marked is not None:
                return await self._fill(ctx)

    async def _fill_held(self, ctx: Context, token: str, *, check: bool) -> Fill:
        """Fetch under the lease; first, when ``check``, see whether another replica
        filled the key between our lookup and the lease."""
        store = ctx.store
        try:
            if check:
                try:
                    filled = await self._filled_by_other(ctx)
                except StoreError:  # a failing store is a miss, never a 5xx
                    filled = None
                if filled is not None:
                    return filled
            fill = await self._fill(ctx)
            if fill.entry is None and 0 < fill.status < 500:
                hit_for_miss = ctx.route.config.coalesce.hit_for_miss
                await quiet(store.set(ctx.key + HFM, b"1", hit_for_miss))
            return fill
        finally:
            await quiet(store.unlock(ctx.key, token))

    async def _filled_by_other(self, ctx: Context) -> Fill | None:
        """A fresh entry stored since we looked (by the lease holder we waited for)."""
        entry = (await self._lookup(ctx)).entry
        if entry is not None and filled_meanwhile(entry, ctx.stale, ctx.ex, self._clock.time()):
            return Fill(entry, None, entry.status, collapsed=True)
        return None


class Refresher:
    """RFC 5861 §3: one background refresh per key while others are served the stale
    copy; a refresh is a lease-guarded fill whose answer nobody waits for."""

    def __init__(self, coalescer: Coalescer[Fill], leases: Leases) -> None:
        self._coalescer = coalescer
        self._leases = leases
        self._refreshing: set[str] = set()
        self.background: set[asyncio.Task[None]] = set()

    def start(self, ctx: Context) -> None:
        key = ctx.key
        if key in self._refreshing or self._coalescer.in_flight(key) is not None:
            return
        self._refreshing.add(key)
        task = asyncio.ensure_future(self._refresh(ctx))
        self.background.add(task)
        task.add_done_callback(self.background.discard)

    async def _refresh(self, ctx: Context) -> None:
        try:
            task = self._coalescer.lead(ctx.key, lambda: self._leases.fill(ctx, wait=False))
            fill = await task
            if fill.live is not None and fill.live.stream is not None:
                await drain(fill.live.stream)
        except Exception:  # a failed refresh leaves the stale copy to its windows
            log.debug("background refresh failed", exc_info=True)
        finally:
            self._refreshing.discard(ctx.key)

    def cancel(self) -> None:
        for task in list(self.background):
            task.cancel()


async def claim(task: asyncio.Task[Fill]) -> Fill:
    """Await a detached fill; if our client goes away, release what nobody will read."""
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:

        def release(done: asyncio.Task[Fill]) -> None:
            if done.cancelled() or done.exception() is not None:
                return
            live = done.result().live
            if live is not None and live.stream is not None:
                _DRAINS.add(draining := asyncio.ensure_future(drain(live.stream)))
                draining.add_done_callback(_DRAINS.discard)

        task.add_done_callback(release)
        raise


_DRAINS: set[asyncio.Future[None]] = set()


async def quiet(operation: Awaitable[object]) -> None:
    """A best-effort store call: a failure is the store's breaker's business."""
    try:
        await operation
    except StoreError as exc:
        log.debug("store call failed: %s", exc)


async def drain(stream: AsyncIterator[bytes]) -> None:
    async for _ in stream:
        pass
