"""The server's journal: recent calls' histories in bounded memory, counters, live watchers.

Every state entry of the server passes through `Journal.add` on the event
loop. In-flight calls are always kept; ended calls are kept up to `capacity`
calls and `max_bytes` bytes and then forgotten oldest first, so memory stays
flat however long it runs. A call's history keeps every transition but at most
`max_events_per_call` events (cancel notices, say) and `max_messages_per_call`
self-loops (a pipe's messages, logged one by one with --log-messages): later ones
are counted, not stored, so no caller can grow one call's history without bound.
"""

from __future__ import annotations

import asyncio
import collections
from typing import Callable, Iterable

from callstate.codes import count_code
from callstate.lifecycle import CANCEL_SEEN, END, ENTER
from callstate.statelog import Entry, is_final
from callstate.server.ended_ids import DEFAULT_MAX_ENDED_IDS, EndedIds


# What one stored entry costs, roughly: the tuple, its float and the shared strings (measured
# with tracemalloc at about 150 bytes); its call id is shared with the record, its detail is not.
ENTRY_BYTES = 160
RECORD_BYTES = 300
# A pipe's messages (self-loops, logged one by one with --log-messages) one call's history keeps:
# about 2.4 MB; a pipe of millions of messages would otherwise hold all of them while it runs.
MAX_MESSAGES_PER_CALL = 10_000


class CallRecord:
    __slots__ = ("call_id", "entries", "state", "outcome", "saw_cancel", "events", "messages", "omitted", "bytes",
                 "deadline_ms", "method", "rule")

    def __init__(self, call_id: str, outcome: str = "", deadline_ms: int | None = None, method: str | None = None,
                 rule: str | None = None) -> None:
        self.call_id = call_id
        self.entries: list[Entry] = []
        self.state = ""
        self.outcome = outcome
        self.saw_cancel = False
        self.events = 0      # events stored (transitions are always stored)
        self.messages = 0    # self-loops stored: a pipe's messages (--log-messages)
        self.omitted = 0     # events and self-loops counted but not stored: over the per-call caps
        self.bytes = RECORD_BYTES + len(call_id)
        self.deadline_ms = deadline_ms   # the caller's deadline as it arrived (grpc-timeout)
        self.method, self.rule = method, rule   # a stand-in's call: its method and the rule that answered it

    @property
    def ended(self) -> bool:
        return self.state == END

    def history(self) -> list[Entry]:
        """The call's entries, in order: what the journal's readers show (a record may keep them
        in a smaller form once the call ended: server/calls.py, ServerCall)."""
        return self.entries

    @property
    def started(self) -> float | None:
        """When the call entered its first state."""
        return self.entries[0].t if self.entries else None

    @property
    def final(self) -> Entry | None:
        last = self.entries[-1] if self.entries else None
        return last if last is not None and is_final(last) else None


class WatcherLimit(Exception):
    """More watchers than the journal allows."""


class Watcher:
    """A live subscriber: a bounded queue; entries beyond it are dropped and counted (and the
    count travels on its own stream, so it knows its view is incomplete)."""

    __slots__ = ("call_id", "queue", "dropped", "caller", "evicted")

    def __init__(self, call_id: str, maxsize: int, caller: str = "") -> None:
        self.call_id = call_id
        self.queue: asyncio.Queue[Entry] = asyncio.Queue(maxsize)
        self.dropped = 0
        self.caller = caller      # who asked (server/security.py: caller_of): its slots are counted together
        self.evicted = False      # its slot went to a newer watcher: its stream ends and says so

    @property
    def stuck(self) -> bool:
        """Not reading: it has lost entries to its full queue."""
        return self.dropped > 0


class Journal:
    def __init__(self, capacity: int = 10_000, watch_queue: int = 100_000, *, max_bytes: int = 64 * 1024 * 1024,
                 max_events_per_call: int = 64, max_watchers: int = 64,
                 max_messages_per_call: int = MAX_MESSAGES_PER_CALL, id_retention: float = 60.0,
                 max_ended_ids: int = DEFAULT_MAX_ENDED_IDS) -> None:
        if capacity < 0:
            raise ValueError("journal capacity must be >= 0")
        # ended calls' ids beyond their histories, for a replayed id's refusal (server/dispatch.py):
        # at least every id whose history is kept
        self.ended_ids = EndedIds(id_retention, max(max_ended_ids, capacity))
        self.capacity = capacity
        self.watch_queue = watch_queue
        self.max_bytes = max_bytes
        self.max_events_per_call = max_events_per_call
        self.max_messages_per_call = max_messages_per_call
        self.max_watchers = max_watchers
        self.bytes = 0            # of ended calls kept (in-flight ones are bounded by --max-in-flight)
        self.events_omitted = 0
        self._calls: dict[str, CallRecord] = {}
        self._ended_order: collections.deque[CallRecord] = collections.deque()
        self._watchers: list[Watcher] = []
        self.streams = 0   # Watch/Follow RPCs open, until gRPC reports each done (its status sent)
        self.in_flight = 0
        self.dispatched = 0
        self.ended = 0
        self.cancels_seen = 0
        self.watch_dropped = 0
        self.evicted = 0   # ended calls forgotten beyond `capacity`
        self.by_state: dict[str, int] = {}
        self.by_code: dict[int, int] = {}

    def keep(self, rec: CallRecord) -> CallRecord:
        """A newly dispatched call, by its record (the caller adds its entries to it; the server's
        call is its own record: one object per call, kept here once it ends)."""
        self._calls[rec.call_id] = rec
        self.dispatched += 1
        self.in_flight += 1
        return rec

    def add(self, rec: CallRecord, e: Entry) -> None:
        """Runs for every server entry on the event loop: kept to a few dict operations."""
        if e.event == ENTER:
            state = rec.state = e.state
            loop = state == e.prev   # a self-loop: one of a pipe's messages (--log-messages)
            if not loop or rec.messages < self.max_messages_per_call:
                rec.messages += loop
                rec.entries.append(e)
                rec.bytes += ENTRY_BYTES + len(e.detail) if e.detail else ENTRY_BYTES
            else:   # one more of a pipe's messages: counted, not stored
                rec.omitted += 1
            by_state = self.by_state
            by_state[state] = by_state.get(state, 0) + 1
            if state == END:
                self._end(rec, e)
        else:
            if rec.events < self.max_events_per_call:
                rec.events += 1
                rec.entries.append(e)
                rec.bytes += ENTRY_BYTES + len(e.detail or "")
            else:
                rec.omitted += 1
                self.events_omitted += 1
            if e.event == CANCEL_SEEN:
                self.cancels_seen += 1
                rec.saw_cancel = True
        if self._watchers:
            self._publish(e)

    def _publish(self, e: Entry) -> None:
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
        code = e.code
        if code is not None:
            by_code = self.by_code
            if code in by_code:   # count_code, inlined for a code already counted (the common case)
                by_code[code] += 1
            else:
                count_code(by_code, code)
        self.ended_ids.add(rec.call_id, e.t)
        self._ended_order.append(rec)
        self.bytes += rec.bytes
        while len(self._ended_order) > self.capacity or (self.bytes > self.max_bytes and self._ended_order):
            old = self._ended_order.popleft()
            self.bytes -= old.bytes
            if self._calls.get(old.call_id) is old:
                del self._calls[old.call_id]
                self.evicted += 1

    async def wait_idle(self, timeout: float) -> bool:
        """Wait until no call is in flight; False on timeout. (Polled: only shutdown needs it,
        and the hot path stays free of an Event to set and clear.)"""
        return await _wait_until(lambda: not self.in_flight, timeout)

    async def wait_streams_done(self, timeout: float) -> bool:
        """Wait until every Watch/Follow RPC is done (its entries and status sent); False on timeout."""
        return await _wait_until(lambda: not self.streams, timeout)

    def get(self, call_id: str) -> CallRecord | None:
        return self._calls.get(call_id)

    def records(self) -> Iterable[CallRecord]:
        """Newest first."""
        return reversed(list(self._calls.values()))

    def __len__(self) -> int:
        return len(self._calls)

    def subscribe(self, call_id: str = "", caller: str = "") -> Watcher:
        """A new watcher. Each caller holds at most a quarter of the slots, whatever the number of
        its connections: at that bound its own oldest stuck watcher (one that stopped reading) is
        evicted for the new one. When all slots are taken, the oldest stuck watcher is."""
        if caller:
            self._make_room_for(caller)
        if len(self._watchers) >= self.max_watchers:
            stuck = next((w for w in self._watchers if w.stuck), None)
            if stuck is None:
                raise WatcherLimit("this server takes no watchers (--max-watchers 0)" if not self.max_watchers else
                                   f"the server's {self.max_watchers} watcher slots (--max-watchers) are all taken, "
                                   f"none by a watcher that stopped reading")
            self.evict(stuck)
        w = Watcher(call_id, self.watch_queue, caller)
        self._watchers.append(w)
        return w

    def _make_room_for(self, caller: str) -> None:
        per_caller = max(1, self.max_watchers // 4)
        mine = [w for w in self._watchers if w.caller == caller]
        if len(mine) < per_caller:
            return
        stuck = next((w for w in mine if w.stuck), None)
        if stuck is None:
            raise WatcherLimit(f"{per_caller} watchers already for this caller, none of them stuck (a caller holds "
                               f"at most a quarter of the server's --max-watchers)")
        self.evict(stuck)

    def evict(self, w: Watcher) -> None:
        """Free a stuck watcher's slot now; its stream ends with the reason when it next reads."""
        w.evicted = True
        self.unsubscribe(w)
        while not w.queue.empty():   # what it never read is let go at once
            w.queue.get_nowait()
        self._end_stream(w)

    def close_watchers(self) -> None:
        """End every Watch/Follow stream (server shutdown): they would hold up the grace period."""
        for w in self._watchers:
            self._end_stream(w)

    def _end_stream(self, w: Watcher) -> None:
        """Queue the end marker (None), making room for it if the queue is full."""
        while True:
            try:
                w.queue.put_nowait(None)  # type: ignore[arg-type]
                break
            except asyncio.QueueFull:
                w.queue.get_nowait()   # make room for the end marker: that entry is dropped
                w.dropped += 1
                self.watch_dropped += 1

    def unsubscribe(self, w: Watcher) -> None:
        if w in self._watchers:
            self._watchers.remove(w)


async def _wait_until(done: Callable[[], bool], timeout: float) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not done():
        if loop.time() > deadline:
            return False
        await asyncio.sleep(0.005)
    return True
