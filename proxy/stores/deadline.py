"""Deadlines for many concurrent calls on one timer per slot of time (a timer wheel).

A call's deadline falls in a slot a few milliseconds wide; the calls of a slot share one
loop timer, which cancels the tasks still in it when the slot ends: never early, at most
a slot and a clock step late. ``GuardedStore`` puts every store call under one; nothing
here knows about stores.
"""

from __future__ import annotations

import asyncio
import math
from typing import Final

# Deadlines fire at the end of the slot of time they fall in (timeout / 10 in whole
# milliseconds, 1 to 5 ms): the calls of a slot share one timer. A timer of its own per
# call (asyncio.timeout: an object, a heap push and a cancel) cost ~5 us of a ~30 us hit.
DEADLINE_SLOT: Final = 0.005
# A slot's timer may fire this much before its end (``index * width`` rounded up in its
# last digit): the slot expires all the same (uvloop otherwise spun, measured ~13 loop
# iterations per slot, until its millisecond clock caught up with that digit).
_ROUNDING: Final = 1e-6
# uvloop's clock counts whole milliseconds (and its timers round to one): a deadline
# gets this much on top, so it never fires early by a finer clock either
_CLOCK_STEP: Final = 0.001 + _ROUNDING


class Call:
    """One guarded call in its deadline's slot: the task that the slot's end cancels."""

    __slots__ = ("cancelling", "expired", "slot", "task")

    def __init__(self, task: asyncio.Task[object], slot: set[Call]) -> None:
        self.task = task
        self.slot = slot
        self.cancelling = task.cancelling()
        self.expired = False

    def finish(self) -> bool:
        """Leave the slot; answers whether a ``CancelledError`` now is the deadline's.

        As ``asyncio.timeout`` does: our cancel request is withdrawn (``uncancel``), and
        the cancellation is ours only if nobody else asked for one meanwhile (the
        caller's task cancelled too: then it propagates as ``CancelledError``).
        """
        self.slot.discard(self)
        return self.expired and self.task.uncancel() <= self.cancelling


class Deadlines:
    """The pending deadlines of one guard's calls, in slots of one timer each.

    A call goes in the slot after the one its deadline (plus ``_CLOCK_STEP``) falls in,
    so it fires at most a slot and a clock step late (plus the loop's own lateness),
    never early. When a slot's timer fires, every call still in it is marked expired
    and its task cancelled; a call that finished has left its slot, so a task's later
    calls never see an earlier call's deadline, and nested calls each have their own.
    """

    __slots__ = ("_loop", "_slots", "_width")

    def __init__(self, timeout: float) -> None:
        # whole milliseconds, as uvloop's clock and timers count: its timers then end
        # exactly on a slot's end, never a rounding before it
        self._width = max(math.floor(min(timeout / 10, DEADLINE_SLOT) * 1000 + 1e-9), 1) / 1000
        self._slots: dict[int, set[Call]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self, delay: float) -> Call:
        loop = self._loop
        # the loop is asked for only when it has changed (asking costs ~0.2 us a call)
        task = asyncio.current_task(loop) if loop is not None else None
        if task is None or loop is None:
            loop = asyncio.get_running_loop()
            task = asyncio.current_task(loop)
            if task is None:
                raise RuntimeError("a guarded store call must run in a task")
            if loop is not self._loop:  # slots (and their timers) belong to one loop
                self._loop, self._slots = loop, {}
        index = int((loop.time() + delay + _CLOCK_STEP) // self._width) + 1
        slot = self._slots.get(index)
        if slot is None:
            slot = self._slots[index] = set()
            loop.call_at(index * self._width, self._expire, loop, index)
        call = Call(task, slot)
        slot.add(call)
        return call

    def _expire(self, loop: asyncio.AbstractEventLoop, index: int) -> None:
        end = index * self._width
        if loop.time() < end - _ROUNDING:  # a timer rounded to the millisecond fired early
            loop.call_at(end, self._expire, loop, index)
            return
        if loop is not self._loop:
            return  # the guard has moved to another loop since
        for call in self._slots.pop(index, ()):
            call.expired = True
            call.task.cancel()
