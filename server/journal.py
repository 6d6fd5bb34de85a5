"""The server's journal: recent calls' histories in bounded memory, counters, live watchers.

Every state entry of the server passes through `Journal.add` on the event
loop. In-flight calls are always kept; ended calls are kept up to `capacity`
and then forgotten oldest first, so memory stays flat however long it runs.
"""

from __future__ import annotations

import asyncio
import collections
from typing import Iterable

from callstate.lifecycle import END
from callstate.statelog import Entry


class CallRecord:
    __slots__ = ("call_id", "entries", "state", "outcome", "cancel_seen")

    def __init__(self, call_id: str) -> None:
        self.call_id = call_id
        self.entries: list[Entry] = []
        self.state = ""
        self.outcome = ""
        self.cancel_seen = False

    @property
    def ended(self) -> bool:
        return self.state == END

    @property
    def final(self) -> Entry | None:
        last = self.entries[-1] if self.entries else None
        return last if last is not None and last.state == END and last.event == "enter" else None


class Watcher:
    """A live subscriber: a bounded queue; entries beyond it are dropped and counted."""

    __slots__ = ("call_id", "queue", "dropped")

    def __init__(self, call_id: str, maxsize: int) -> None:
        self.call_id = call_id
        self.queue: asyncio.Queue[Entry] = asyncio.Queue(maxsize)
        self.dropped = 0


class Journal:
    def __init__(self, capacity: int = 10_000, watch_queue: int = 100_000) -> None:
        if capacity < 0:
            raise ValueError("journal capacity must be >= 0")
        self.capacity = capacity
        self.watch_queue = watch_queue
        self._calls: dict[str, CallRecord] = {}
        self._ended_order: collections.deque[CallRecord] = collections.deque()
        self._watchers: list[Watcher] = []
        self.in_flight = 0
        self.dispatched = 0
        self.ended = 0
        self.cancels_seen = 0
        self.watch_dropped = 0
        self.by_state: collections.Counter[str] = collections.Counter()
        self.by_code: collections.Counter[int] = collections.Counter()
        self._idle = asyncio.Event()
        self._idle.set()

    def add(self, e: Entry, outcome: str = "") -> None:
        rec = self._calls.get(e.call_id)
        if rec is None or (rec.ended and e.event == "enter" and e.prev is None):
            rec = self._calls[e.call_id] = CallRecord(e.call_id)
        rec.entries.append(e)
        if outcome:
            rec.outcome = outcome
        if e.event == "enter":
            rec.state = e.state
            self.by_state[e.state] += 1
            if e.prev is None:
                self.dispatched += 1
                self.in_flight += 1
                self._idle.clear()
            elif e.state == END:
                self._end(rec, e)
        elif e.event == "cancel_seen":
            self.cancels_seen += 1
            rec.cancel_seen = True
        for w in self._watchers:
            if not w.call_id or w.call_id == e.call_id:
                try:
                    w.queue.put_nowait(e)
                except asyncio.QueueFull:
                    w.dropped += 1
                    self.watch_dropped += 1

    def _end(self, rec: CallRecord, e: Entry) -> None:
        self.ended += 1
        self.in_flight -= 1
        if self.in_flight == 0:
            self._idle.set()
        if e.code is not None:
            self.by_code[e.code] += 1
        self._ended_order.append(rec)
        while len(self._ended_order) > self.capacity:
            old = self._ended_order.popleft()
            if self._calls.get(old.call_id) is old:
                del self._calls[old.call_id]

    async def wait_idle(self, timeout: float) -> bool:
        """Wait until no call is in flight; False on timeout."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
            return True
        except asyncio.TimeoutError:
            return False

    def get(self, call_id: str) -> CallRecord | None:
        return self._calls.get(call_id)

    def records(self) -> Iterable[CallRecord]:
        """Newest first."""
        return reversed(list(self._calls.values()))

    def __len__(self) -> int:
        return len(self._calls)

    def subscribe(self, call_id: str = "") -> Watcher:
        w = Watcher(call_id, self.watch_queue)
        self._watchers.append(w)
        return w

    def unsubscribe(self, w: Watcher) -> None:
        if w in self._watchers:
            self._watchers.remove(w)
