"""Single-flight: one origin fetch per key, however many requests wait for it.

The fill runs as its own task, detached from the client that started it (Envoy
#34595): a leader whose client disconnects does not cancel the followers' fetch.
Followers wait on an event, never on a poll, and only up to the route's timeout;
after that, or when the leader's answer is not shareable, each goes to the origin
itself. Keys whose answer was not shareable are remembered for a short while
(Varnish's hit-for-miss) so later requests do not queue behind a leader again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from proxy.clock import Clock

T = TypeVar("T")


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
