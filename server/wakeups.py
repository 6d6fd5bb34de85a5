"""One event-loop timer for the wake-ups of every waiting call on a server.

A held call waits for a cancel, the server stopping, or the end of its wait (its delay, or
--max-hold); a pipe is cut short by its --max-hold watchdog. Arming a loop timer for each costs
a timer handle per call: about 340 bytes on asyncio's loop and 710 on uvloop's (a libuv timer
besides the Python handle), kept for as long as the call is held, which with 10,000 held calls
is most of what callstate adds to a bare server's memory. Here every wait is an entry in one
heap ([when, order, what is due], about 150 bytes), and one loop timer is armed for the
earliest: the same wake-ups, as a loop's own timers keep them (a dropped entry stays in the heap
until it is due or until dropped entries are half of it, when the heap is rebuilt without them).
"""

from __future__ import annotations

import asyncio
import contextvars
import heapq
import itertools
from typing import Any, Callable

# What the one timer runs in: `_fire` reads no context variable, so none is copied per arming.
_CONTEXT = contextvars.Context()
# Below this many dropped entries the heap is never rebuilt: a rebuild costs a pass over it.
_REBUILD_FLOOR = 64


class Wakeups:
    """The wake-ups of the calls waiting on one server, in its event loop."""

    __slots__ = ("_loop", "_heap", "_timer", "_due", "_dropped", "_order")

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None   # bound at the first wait
        # [when (the loop's clock), order, what is due (a future to resolve or a callback), None once dropped]
        self._heap: list[list[Any]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._due = 0.0   # when the armed timer fires
        self._dropped = 0
        self._order = itertools.count()

    def after(self, seconds: float, due: asyncio.Future[None] | Callable[[], None]) -> list[Any]:
        """Once `seconds` have passed, resolve `due` (a future, unless it is done by then) or call
        it (a callback, on the loop); the entry returned is what `drop` takes."""
        loop = asyncio.get_running_loop()
        if loop is not self._loop:   # a first wait, or a server started again on a new loop
            self._bind(loop)
        when = loop.time() + seconds
        entry = [when, next(self._order), due]
        heapq.heappush(self._heap, entry)
        if self._timer is None or when < self._due:
            self._arm(when)
        return entry

    def drop(self, entry: list[Any]) -> None:
        """The wait is over: its wake-up is not needed (nothing to do if it already came). One
        cut short (a cancel, the server stopping) leaves the heap when due, or when the dropped
        are half of the heap."""
        if entry[2] is None:
            return
        entry[2] = None
        self._dropped += 1
        if self._dropped > _REBUILD_FLOOR and 2 * self._dropped > len(self._heap):
            self._heap = [e for e in self._heap if e[2] is not None]
            heapq.heapify(self._heap)
            self._dropped = 0

    def waiting(self) -> int:
        """How many wake-ups are still to come (not dropped)."""
        return len(self._heap) - self._dropped

    def _bind(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._loop, self._heap, self._timer, self._dropped = loop, [], None, 0

    def _arm(self, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        assert self._loop is not None
        self._timer = self._loop.call_at(when, self._fire, context=_CONTEXT)
        self._due = when

    def _fire(self) -> None:
        self._timer = None
        heap = self._heap
        now = self._loop.time()   # type: ignore[union-attr]
        try:
            while heap and heap[0][0] <= now:
                entry = heapq.heappop(heap)
                due, entry[2] = entry[2], None   # out of the heap: a later `drop` of it is nothing
                if due is None:
                    self._dropped -= 1
                elif isinstance(due, asyncio.Future):
                    if not due.done():
                        due.set_result(None)
                else:
                    due()
        finally:   # a callback that raised (the loop reports it) leaves the later wake-ups armed
            if heap:
                self._arm(heap[0][0])
