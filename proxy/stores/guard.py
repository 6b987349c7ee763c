"""The fail-open wrapper around a shared store: per-operation deadline, circuit breaker, counters.

``GuardedStore`` owns the deadline of every backend operation and the backend's
breaker. It raises ``StoreError`` (never a library exception) and leaves the choice of
"miss" or "skipped write" to the engine. It never retries and never sleeps. Deadlines
share timers (``deadline.Deadlines``): one per few milliseconds, not one per call.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Final, Literal, TypeVar

from proxy.clock import Clock, SystemClock
from proxy.errors import StoreError, StoreFull, StoreTimeout, StoreUnavailable
from proxy.stores.base import (
    ERROR_REASONS,
    Breaker,
    Channel,
    OpCounters,
    Snapshottable,
    Store,
    StoreHealth,
    StoreStats,
    Tiers,
)

__all__ = ["ERROR_REASONS", "GuardedStore", "OpCounters"]
from proxy.stores.deadline import Deadlines

T = TypeVar("T")
log = logging.getLogger(__name__)
# A full store refuses every write: one warning per backend per this many seconds, the
# next one counting those not logged in between (a full store under load refuses
# thousands a second; a line each would drown the log it is meant to stand out in).
REFUSAL_LOG_EVERY: Final = 10.0
# A write also gets the time to move its bytes at this (conservative) rate on top of the
# deadline, so multi-MiB entries are not skipped systematically by a deadline in the tens
# of milliseconds that suits everything else.
WRITE_BYTES_PER_SECOND: Final = 32 * 1024**2
BreakerState = Literal["closed", "open", "half_open"]
OPERATIONS: Final = (
    "get",
    "get_many",
    "set",
    "delete",
    "purge_tags",
    "soften",
    "soften_tags",
    "lock",
    "unlock",
    "ping",
)


class GuardedStore:
    """A ``Store`` whose every call has a deadline and goes through a circuit breaker.

    Breaker: ``closed`` → ``open`` after ``breaker_failures`` consecutive failures
    (errors and timeouts alike); while open, calls raise ``StoreUnavailable`` at once
    without touching the backend. After ``breaker_cooldown`` seconds one call is let
    through (``half_open``); its success closes the breaker, its failure reopens it.
    ``ping`` answers ``False`` instead of raising, so health checks can call it freely.
    A write the backend refuses while healthy (``StoreFull``: out of memory above all) is
    counted (``oom``), logged as a warning at most once per ``REFUSAL_LOG_EVERY`` seconds,
    and raised; it does not count towards the breaker: the store answered, it is full,
    not down.
    A ``set`` gets ``len(value) / WRITE_BYTES_PER_SECOND`` on top of its deadline.

    A deadline fires late by at most a slot (``timeout / 10`` in whole milliseconds, 1 to
    5 ms: ``deadline.DEADLINE_SLOT``) and 1 ms (plus whatever delays the event loop), never early:
    at most 6 ms late for the default 50 ms. A cancellation from outside (the
    caller's task cancelled) propagates as ``CancelledError``, never as a timeout.
    """

    def __init__(
        self,
        store: Store,
        timeout: float,
        breaker_failures: int = 5,
        breaker_cooldown: float = 5.0,
        clock: Clock | None = None,
    ) -> None:
        if timeout <= 0 or breaker_failures < 1 or breaker_cooldown <= 0:
            raise ValueError("timeout and cooldown must be > 0, failures >= 1")
        self.inner = store
        self.name = store.name
        self.shared = store.shared
        self.timeout = timeout
        self.breaker_failures = breaker_failures
        self.breaker_cooldown = breaker_cooldown
        self.counters = {op: OpCounters() for op in OPERATIONS}
        self.opened_total = 0  # how many times the breaker has opened
        self._clock = clock or SystemClock()
        self._state: BreakerState = "closed"
        self._failures = 0
        self._last_timeout = -1e9
        self._opened_at = 0.0
        self._probing = False
        self._deadlines = Deadlines(timeout)
        self._refusals = 0
        self._last_refusal: tuple[str, float] | None = None  # op, wall-clock time
        self._refusal_logged = -math.inf  # monotonic time of the last warning
        self._refusals_unlogged = 0

    # ------------------------------------------------------------ breaker

    @property
    def state(self) -> BreakerState:
        """``closed``, ``open`` or ``half_open`` (an open breaker past its cooldown)."""
        if self._state == "open" and self._cooldown_over():
            return "half_open"
        return self._state

    def _cooldown_over(self) -> bool:
        return self._clock.monotonic() - self._opened_at >= self.breaker_cooldown

    def _admit(self, counters: OpCounters) -> bool:
        """Let a call through or raise; answers whether the call is the half-open probe."""
        if self._state == "closed":
            return False
        if not self._probing and self._cooldown_over():
            self._state = "half_open"
            self._probing = True
            return True
        counters.rejected += 1
        raise StoreUnavailable(self.name, f"circuit breaker {self._state}")

    def _succeeded(self, probe: bool) -> None:
        # a late success of a call admitted before the breaker opened proves little
        if probe or self._state == "closed":
            self._failures = 0
            self._state = "closed"

    def _failed(self, probe: bool, *, timeout: bool = False) -> None:
        if self._state == "closed":
            if timeout:
                # Timeouts of one burst count once: a batch of reads that missed one
                # deadline together, or one stall of our own saturated event loop, is one
                # piece of evidence, not N (under load the breaker otherwise opened on a
                # healthy store). Sequential timeouts are a deadline apart and all count.
                now = time.monotonic()  # real time: bursts are about the loop, not TTLs
                if now - self._last_timeout < self.timeout / 2:
                    return
                self._last_timeout = now
            self._failures += 1
            if self._failures < self.breaker_failures:
                return
        elif not probe:
            return  # a late failure while already open: keep the cooldown where it is
        self._state = "open"
        self._opened_at = self._clock.monotonic()
        self.opened_total += 1

    # ------------------------------------------------------------ the one call path

    async def _call(self, op: str, fn: Callable[[], Awaitable[T]], size: int = 0) -> T:
        counters = self.counters[op]
        counters.ops += 1
        probe = self._admit(counters)
        deadline = self.timeout + size / WRITE_BYTES_PER_SECOND
        ours = False
        try:
            call = self._deadlines.start(deadline)
            try:
                result = await fn()
            finally:
                ours = call.finish()
        except asyncio.CancelledError as exc:
            if not ours:
                raise  # the caller's cancellation, not our deadline
            counters.timeouts += 1
            self._failed(probe, timeout=True)
            raise StoreTimeout(self.name, f"{op} took over {deadline * 1000:.0f} ms") from exc
        except StoreFull as exc:
            counters.oom += 1
            self._refused(op, exc)
            self._succeeded(probe)  # it answered: a full store is not a failing one
            raise
        except StoreTimeout:
            counters.timeouts += 1
            self._failed(probe, timeout=True)
            raise
        except TimeoutError as exc:
            # a backend's own TimeoutError (a builtin one, from asyncio or a socket)
            counters.timeouts += 1
            self._failed(probe, timeout=True)
            raise StoreTimeout(self.name, f"{op} took over {deadline * 1000:.0f} ms") from exc
        except StoreError:
            counters.errors += 1
            self._failed(probe)
            raise
        except Exception as exc:
            # a backend bug must still fail open: the contract is "only StoreError"
            counters.errors += 1
            self._failed(probe)
            raise StoreError(self.name, f"{op}: {type(exc).__name__}: {exc}") from exc
        else:
            self._succeeded(probe)
            return result
        finally:
            if probe:
                self._probing = False
                if self._state == "half_open":
                    # the probe itself was cancelled from outside: no verdict, stay open
                    self._state = "open"

    def _refused(self, op: str, exc: StoreFull) -> None:
        self._refusals += 1
        self._last_refusal = (op, self._clock.time())
        now = self._clock.monotonic()
        if now - self._refusal_logged < REFUSAL_LOG_EVERY:
            self._refusals_unlogged += 1
            return
        unlogged, self._refusals_unlogged = self._refusals_unlogged, 0
        self._refusal_logged = now
        log.warning(
            "backend %s refused a write (%s): %s; %d more refusals in the last %.0f s "
            "not logged; new responses are not being cached",
            self.name,
            op,
            exc,
            unlogged,
            REFUSAL_LOG_EVERY,
            extra={"event": "store_full", "backend": self.name, "command": op},
        )

    def breaker(self) -> Breaker:
        return Breaker(self.state, self.opened_total, self.counters)

    def reader(self) -> Callable[[str], bytes | None] | None:
        return self.inner.reader()

    def tiers(self) -> Tiers | None:
        return self.inner.tiers()

    def channel(self) -> Channel | None:
        return self.inner.channel()

    def snapshottable(self) -> Snapshottable | None:
        return self.inner.snapshottable()

    def health(self) -> StoreHealth:
        last = self._last_refusal
        return StoreHealth(
            breaker=self.state,
            write_refusals=self._refusals,
            last_refusal=last[0] if last is not None else None,
            last_refusal_at=last[1] if last is not None else None,
        )

    # ------------------------------------------------------------ Store

    async def get(self, key: str) -> bytes | None:
        return await self._call("get", lambda: self.inner.get(key))

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        return await self._call("get_many", lambda: self.inner.get_many(keys))

    async def set(self, key: str, value: bytes, ttl: float, tags: Sequence[str] = ()) -> None:
        await self._call("set", lambda: self.inner.set(key, value, ttl, tags), len(value))

    async def delete(self, keys: Sequence[str]) -> int:
        return await self._call("delete", lambda: self.inner.delete(keys))

    async def purge_tags(self, tags: Sequence[str]) -> int:
        return await self._call("purge_tags", lambda: self.inner.purge_tags(tags))

    async def soften(self, keys: Sequence[str]) -> int:
        return await self._call("soften", lambda: self.inner.soften(keys))

    async def soften_tags(self, tags: Sequence[str]) -> int:
        return await self._call("soften_tags", lambda: self.inner.soften_tags(tags))

    async def lock(self, key: str, ttl: float) -> str | None:
        return await self._call("lock", lambda: self.inner.lock(key, ttl))

    async def unlock(self, key: str, token: str) -> bool:
        return await self._call("unlock", lambda: self.inner.unlock(key, token))

    async def ping(self) -> bool:
        try:
            return await self._call("ping", self.inner.ping)
        except StoreError:
            return False

    def stats(self) -> StoreStats:
        return self.inner.stats()

    async def aclose(self) -> None:
        await self.inner.aclose()
