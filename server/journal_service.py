"""`callstate.v1.Journal`: the server's state log over gRPC.

One call's history, a filtered list, a live watch stream and counters, all
read from the bounded in-memory `Journal`.
"""

from __future__ import annotations

import asyncio

from typing import AsyncIterator, Iterable

import grpc

from callstate.lifecycle import ENTER
from callstate.rules import method_filter
from callstate.statelog import Entry, format_ts, to_proto as entry_to_proto
from callstate.v1 import callstate_pb2 as pb
from callstate.v1 import callstate_pb2_grpc as pb_grpc
from callstate.wire import WATCHING_KEY
from callstate.server.journal import CallRecord, Journal, Watcher, WatcherLimit
from callstate.server.security import caller_of


FOLLOW_BATCH = 4096
# One GetCall reply at most: a client's default receive limit is 4 MiB, and a pipe logged message
# by message (--log-messages) can have a history of millions of entries.
HISTORY_BYTES = 3 * 1024 * 1024
ENTRY_FRAMING = 6   # a repeated field's tag and length prefix, for each entry
MAX_PAGE = 1000           # ListCalls: calls in one reply, whatever the limit asked
MAX_FILTER_ID = 4096      # Watch/Follow: the longest call id filter (no call id is longer: --max-call-id); ListCalls: method
EVICTED = ("this watcher stopped reading and its slot went to a newer one (the server's --max-watchers, a "
           "quarter of them per caller); entries it had not read are lost")


def _shown(call_id: str) -> str:
    """A call id as echoed in a message: a long one cut short (the status must stay small)."""
    return repr(call_id) if len(call_id) <= 160 else repr(call_id[:128]) + f"... ({len(call_id)} characters)"
# After a batch's first entry, Follow lets entries gather this long before sending: a busy
# server then sends a few large batches rather than a message per handful of entries, which a
# follower that reads each message through a crowded event loop (a Locust worker's gevent hub)
# could not keep up with (it fell seconds behind the run). 10 ms of latency is the price.
FOLLOW_LINGER = 0.01
# ...but only where the watcher's queue holds far more than a linger's worth of entries: a
# small --watch-buffer would overflow while Follow waits, and its own follower lose entries.
LINGER_MIN_BUFFER = 8 * FOLLOW_BATCH
# A reader that may fall behind opens its channel with callstate.wire.FOLLOWER_WINDOW: its writes
# then wait for it, and the backlog goes out in batches of up to FOLLOW_BATCH.


def bounded_history(entries: list[Entry], budget: int = HISTORY_BYTES) -> tuple[list[pb.StateEntry], int]:
    """A call's entries as one GetCall reply carries them, and how many it leaves out: all of them
    when they fit `budget` bytes; else the first and the last entries that fit half of it each and,
    between them, the transitions only (entries that changed the state): the middle's self-loops
    (a pipe's messages, logged one by one with --log-messages) and events are left out."""
    head = _fitting(entries, budget // 2)
    tail = _fitting(reversed(entries[len(head):]), budget // 2)[::-1]
    if len(head) + len(tail) == len(entries):
        return head + tail, 0
    middle = entries[len(head):len(entries) - len(tail)]
    kept = [entry_to_proto(e) for e in middle if e.event == ENTER and e.state != e.prev]
    return head + kept + tail, len(middle) - len(kept)


def _fitting(entries: Iterable[Entry], budget: int) -> list[pb.StateEntry]:
    """The first of `entries` whose messages fit `budget` bytes."""
    out, size = [], 0
    for e in entries:
        msg = entry_to_proto(e)
        size += msg.ByteSize() + ENTRY_FRAMING
        if size > budget:
            break
        out.append(msg)
    return out


def summary(rec: CallRecord) -> pb.CallSummary:
    final, started = rec.final, rec.started
    msg = pb.CallSummary(call_id=rec.call_id, state=rec.state, outcome=rec.outcome,
                         started=format_ts(started) if started is not None else "",
                         ended=format_ts(final.t) if final else "", cancel_seen=rec.saw_cancel,
                         grpc_status=final.grpc_status or "" if final else "", method=rec.method or "",
                         rule=rec.rule or "")
    if final is not None and final.code is not None:
        msg.code = final.code
    return msg


class JournalServicer(pb_grpc.JournalServicer):
    def __init__(self, journal: Journal) -> None:
        self.journal = journal

    async def GetCall(self, request: pb.GetCallRequest, context: grpc.aio.ServicerContext) -> pb.CallHistory:
        rec = self.journal.get(request.call_id) if len(request.call_id) <= MAX_FILTER_ID else None
        if rec is None:
            await context.abort(grpc.StatusCode.NOT_FOUND,
                                f"no call {_shown(request.call_id)} in the journal (never seen, or evicted: "
                                f"it keeps the last {self.journal.capacity} ended calls)")
        entries, left_out = bounded_history(rec.history())
        return pb.CallHistory(call_id=rec.call_id, entries=entries, ended=rec.ended, deadline_ms=rec.deadline_ms,
                              omitted=rec.omitted + left_out)

    async def ListCalls(self, request: pb.ListCallsRequest, context: grpc.aio.ServicerContext) -> pb.ListCallsReply:
        limit = min(request.limit or 100, MAX_PAGE)   # a page costs the loop its time: bounded
        if len(request.method) > MAX_FILTER_ID:   # no method name is that long; compiling it costs the loop
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"method: a filter of at most {MAX_FILTER_ID} characters, got {len(request.method)}")
        want_code = request.code if request.HasField("code") else None
        want_method = method_filter(request.method) if request.method else None   # as rules name methods
        out = []
        for rec in self.journal.records():
            if request.in_flight and rec.ended:
                continue
            if request.state and rec.state != request.state:
                continue
            if want_method is not None and not (rec.method and want_method.fullmatch(rec.method)):
                continue
            if request.rule and rec.rule != request.rule:
                continue
            if want_code is not None:
                final = rec.final
                if final is None or final.code != want_code:
                    continue
            out.append(summary(rec))
            if len(out) >= limit:
                break
        return pb.ListCallsReply(calls=out)

    async def _subscribe(self, request: pb.WatchRequest, context: grpc.aio.ServicerContext) -> Watcher:
        if len(request.call_id) > MAX_FILTER_ID:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"call_id: a filter of at most {MAX_FILTER_ID} characters, got {len(request.call_id)}")
        try:
            watcher = self.journal.subscribe(request.call_id, caller_of(context))
        except WatcherLimit as exc:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
            raise   # pragma: no cover - context.abort raises
        self.journal.streams += 1   # until gRPC reports the RPC done: the server's stop waits for it
        context.add_done_callback(self._stream_done)
        return watcher

    def _stream_done(self, _context: object) -> None:
        self.journal.streams -= 1

    async def Watch(self, request: pb.WatchRequest, context: grpc.aio.ServicerContext) -> AsyncIterator[pb.StateEntry]:
        """Each entry carries `dropped`: how many this stream has lost so far to its full buffer.
        The response headers go out as soon as the stream is subscribed: a watcher that awaits
        them (`callstate watch` before it says "watching") misses no entry made after."""
        watcher = await self._subscribe(request, context)
        try:
            await context.send_initial_metadata(((WATCHING_KEY, "1"),))
            while (entry := await watcher.queue.get()) is not None:   # None: the server is stopping
                msg = entry_to_proto(entry)
                msg.dropped = watcher.dropped
                yield msg
            if watcher.evicted:
                await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, EVICTED)
        finally:
            self.journal.unsubscribe(watcher)

    async def Follow(self, request: pb.WatchRequest, context: grpc.aio.ServicerContext) -> AsyncIterator[pb.StateEntries]:
        """Like Watch, in batches of whatever is queued: one message per wake-up, not per entry.
        Each batch carries `dropped`, the entries this stream has lost so far."""
        watcher = await self._subscribe(request, context)
        queue = watcher.queue
        try:
            yield pb.StateEntries()   # subscribed: entries from here on are delivered
            while (first := await queue.get()) is not None:   # None: the server is stopping
                batch = [first]
                if queue.qsize() < FOLLOW_BATCH and queue.maxsize >= LINGER_MIN_BUFFER:
                    await asyncio.sleep(FOLLOW_LINGER)
                while not queue.empty() and len(batch) < FOLLOW_BATCH:
                    entry = queue.get_nowait()
                    if entry is None:
                        yield pb.StateEntries(entries=[entry_to_proto(e) for e in batch], dropped=watcher.dropped)
                        break
                    batch.append(entry)
                else:
                    yield pb.StateEntries(entries=[entry_to_proto(e) for e in batch], dropped=watcher.dropped)
                    continue
                break
            if watcher.evicted:
                await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, EVICTED)
        finally:
            self.journal.unsubscribe(watcher)

    async def GetCounters(self, request: pb.CountersRequest, context: grpc.aio.ServicerContext) -> pb.Counters:
        j = self.journal
        return pb.Counters(in_flight=j.in_flight, dispatched=j.dispatched, ended=j.ended, cancels_seen=j.cancels_seen,
                           by_state=dict(j.by_state), by_code=dict(j.by_code), journal_calls=len(j),
                           watch_dropped=j.watch_dropped)
