"""One server-side call: its lifecycle, its cancel signals, and how it waits.

`ServerCall` is the thin adapter between the sans-IO server table and
asyncio: it applies moves, records each state entered, and turns the two ways
a caller can cancel into events the script reacts to:

* abortive cancel (or a disconnect): gRPC cancels the handler's task, so the
  wait raises CancelledError at once;
* the cancel notice (non-abortive): `Emulator.Cancel` resolves the future
  the wait is watching.

Neither polls; both wake the handler within one loop iteration. A handler scripted to poll
for cancels (cancel_poll_ms) instead sees them at its poll instants: `callstate.cancel_poll`
says which cancel is seen when, this adapter only waits for those instants.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Callable, NoReturn

import grpc
from grpc._cython import cygrpc

from callstate import codes
from callstate.cancel_poll import CancelPoll
from callstate.lifecycle import (ABORTIVE, CANCEL_SEEN, COMPLETE, COMPLETED, ENTER, INITIAL, KINDS, PIPE_BREACH, SERVER,
                                 UNARY, LifecycleError, initial_move, move_to_end, server_end_code, table_for)
from callstate.statelog import Entry, new_entry
from callstate.wire import CODE_KEY
from callstate.server.journal import RECORD_BYTES, CallRecord, Journal
from callstate.server.wakeups import Wakeups



async def send_abort(context: grpc.aio.ServicerContext, status: grpc.StatusCode, message: str, code: int) -> NoReturn:
    """`context.abort` with the exact code in the trailers. When the caller cancelled as the
    status went out, gRPC refuses to send it (ExecuteBatchError) and would print a traceback for
    a call that ended normally (the log already has its End): that is a cancel, raised as one."""
    try:
        await context.abort(status, message, ((CODE_KEY, str(code)),))
    except cygrpc.ExecuteBatchError:
        raise asyncio.CancelledError() from None
    raise AssertionError("unreachable: context.abort raises")  # pragma: no cover


class FatalHandlerError(Exception):
    """Raised on purpose by a handler scripted to fail fatally (D -> End)."""


# Callers see the class's full name in the status ("Unexpected <class '...'>: message"): the name
# it had before this module held it stays (callstate.server.emulator re-exports it).
FatalHandlerError.__module__ = "callstate.server.emulator"


class _DropScriptedCrashes(logging.Filter):
    """grpc logs every handler exception with a traceback; scripted crashes are
    expected and already in the state log, so they are not repeated there."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, FatalHandlerError)


async def send_fatal(context: grpc.aio.ServicerContext, message: str) -> NoReturn:
    """End the call as grpc ends a handler that raised: UNKNOWN, 'Unexpected <class>: message'
    (what a caller sees of a fatal failure is unchanged). Sent here rather than by raising:
    when the caller cancels at that moment grpc cannot send the status and, for a raised
    exception, prints ExecuteBatchError's traceback on stderr (routine under cancel load);
    here it is what it is, a cancel."""
    exc = FatalHandlerError(message)
    try:
        await context.abort(grpc.StatusCode.UNKNOWN, f"Unexpected {type(exc)}: {exc}")
    except cygrpc.ExecuteBatchError:
        raise asyncio.CancelledError() from None
    raise exc  # pragma: no cover - context.abort raises


logging.getLogger("grpc._cython.cygrpc").addFilter(_DropScriptedCrashes())


_INITIAL, _UNARY_TABLE = INITIAL[SERVER], table_for(SERVER, UNARY)
# The move that enters D, by the call's kind (a pipe's names its kind): read at dispatch and by `history`.
_FIRST_MOVES = {kind: initial_move(SERVER, kind) for kind in KINDS}
# A unary call's completion from its dispatch, D -> Comp -> End: the two states, read from the table once.
_COMPLETING = _UNARY_TABLE[_INITIAL][COMPLETE]
_COMPLETED = _UNARY_TABLE[_COMPLETING][COMPLETED]
_COMPLETED_CODE = server_end_code(COMPLETED)
# Such a completion, once ended, as the journal keeps it beside D's time: the times of Comp and End, and
# End's gRPC status.
Completed = tuple[float, float, str]


def _dispatch_entry(t: float, call_id: str, first: str, method: str | None, rule: str | None) -> Entry:
    """The entry of the call's first state (D, by `first`, its kind's initial move): made by
    `ServerCall.__init__`, and again from the times the journal keeps."""
    return new_entry((t, SERVER, call_id, _INITIAL, None, ENTER, first, None, None, None, None, None, None, None,
                      method, rule))


def _comp_entry(t: float, call_id: str, method: str | None, rule: str | None) -> Entry:
    """The entry of D -> Comp: made by `complete_now`, and again from the times the journal keeps."""
    return new_entry((t, SERVER, call_id, _COMPLETING, _INITIAL, ENTER, COMPLETE, None, None, None, None, None, None,
                      None, method, rule))


def _end_entry(t: float, call_id: str, grpc_status: str, method: str | None, rule: str | None) -> Entry:
    """The entry of Comp -> End: made by `complete_now`, and again from the times the journal keeps."""
    return new_entry((t, SERVER, call_id, _COMPLETED, _COMPLETING, ENTER, COMPLETED, _COMPLETED_CODE, grpc_status,
                      None, None, None, None, None, method, rule))


class ServerCall(CallRecord):
    """A call in flight, and, once it ends, its record in the journal: one object per call holds
    its state in the server's table (callstate.lifecycle), its cancels and its history."""

    __slots__ = ("kind", "_table", "cancel_kind", "rpc_cancelled", "stopping", "cancel_key", "_wake", "_wakeup",
                 "_wakeups", "_journal", "_log", "polls", "_completed", "_t0")

    def __init__(self, call_id: str, journal: Journal, log_append: Callable[[Entry], None], outcome: str = "",
                 kind: str = UNARY, deadline_ms: int | None = None, method: str | None = None,
                 rule: str | None = None, wakeups: Wakeups | None = None) -> None:
        # CallRecord.__init__, in place (every call makes one): its fields, then the call's own
        self.call_id = call_id
        self.entries: list[Entry] = []
        self.outcome = outcome
        self.saw_cancel = False
        self.events = self.messages = self.omitted = 0
        self.bytes = RECORD_BYTES + len(call_id)
        self.deadline_ms = deadline_ms
        self.method, self.rule = method, rule   # a stand-in's call: its method and the rule that answered it
        self.kind = kind
        self._table = _UNARY_TABLE if kind == UNARY else table_for(SERVER, kind)
        self.state = _INITIAL
        self.cancel_kind: str | None = None   # the first cancel seen: ABORTIVE or NON_ABORTIVE
        self.rpc_cancelled = False            # the gRPC call is gone: no reply can be sent
        self.stopping = False
        self.cancel_key = ""   # the caller's secret: a cancel notice must repeat it (empty: anyone's notice)
        self._wake: asyncio.Future[None] | None = None   # made on the first wait
        self._wakeups = wakeups   # the server's (Dispatcher's); made for this call when None (a test's call)
        self._wakeup: list[Any] | None = None   # the current wait's entry in it: wakes it at its end
        self.polls: CancelPoll | None = None   # set by `poll_cancels`: the handler asks for cancels
        self._journal = journal
        self._log = log_append
        self._completed: Completed | None = None   # set by `complete_now`, in place of its entries
        journal.keep(self)
        e = _dispatch_entry(time.time(), call_id, _FIRST_MOVES[kind], method, rule)
        journal.add(self, e)   # _emit, inlined on the hot path
        log_append(e)
        # The journal keeps D's entry as its time (`history` makes it again): a held call keeps one
        # tuple fewer (about 200 bytes of 20 KiB: memory per held call is measured against bare's)
        self._t0 = e[0]
        self.entries.clear()

    def _emit(self, e: Entry) -> None:
        self._journal.add(self, e)
        self._log(e)

    def move(self, move: str, code: int | None = None, grpc_status: str | None = None, detail: str | None = None,
             sent: int | None = None, received: int | None = None) -> None:
        prev = self.state
        try:   # the table's move (callstate.lifecycle), applied here: this runs for every state of every call
            state = self.state = self._table[prev][move]
        except KeyError:
            raise LifecycleError(SERVER, prev, move) from None
        e = new_entry((time.time(), SERVER, self.call_id, state, prev, ENTER, move, code, grpc_status, detail, None, sent,
                    received, None, self.method, self.rule))
        self._journal.add(self, e)   # _emit, inlined on the hot path
        self._log(e)

    def complete_now(self, grpc_status: str) -> None:
        """`move(COMPLETE)` then `move(COMPLETED, 0, grpc_status)` from D, the same two entries, for
        a unary call that completes in its dispatch's step (server/emulator.py: nothing ran between)."""
        if self.state is not _INITIAL or self._table is not _UNARY_TABLE:   # not from D: the moves one by one
            self.move(COMPLETE)
            self.move(COMPLETED, _COMPLETED_CODE, grpc_status)
            return
        call_id, method, rule, add, log = self.call_id, self.method, self.rule, self._journal.add, self._log
        self.state = _COMPLETING
        comp = _comp_entry(time.time(), call_id, method, rule)
        add(self, comp)
        log(comp)
        self.state = _COMPLETED
        end = _end_entry(time.time(), call_id, grpc_status, method, rule)
        add(self, end)
        log(end)
        if len(self.entries) == 2:   # D, Comp, End and nothing between: the journal keeps their times (`history`)
            self._completed = (comp[0], end[0], grpc_status)
            del self.entries   # no entry follows End (its id is retired); one would fail in Journal.add, loudly

    # -- the history of a call `complete_now` completed, kept as its times ---------------------------
    # The journal keeps 10,000 ended calls: three entries and their list each (about 540 bytes and
    # four objects the garbage collector walks for ever: a NamedTuple is never untracked) made the
    # server's working set and its collections larger. The entries below are the ones `__init__`
    # and `complete_now` made; a test holds them equal. (Its bytes stay counted as the entries'.)
    def history(self) -> list[Entry]:
        call_id, method, rule = self.call_id, self.method, self.rule
        dispatched = _dispatch_entry(self._t0, call_id, _FIRST_MOVES[self.kind], method, rule)   # kept as its time
        done = self._completed
        if done is None:
            return [dispatched, *self.entries]
        t1, t2, grpc_status = done
        return [dispatched, _comp_entry(t1, call_id, method, rule), _end_entry(t2, call_id, grpc_status, method, rule)]

    @property
    def started(self) -> float | None:
        return self._t0

    @property
    def final(self) -> Entry | None:
        done = self._completed
        return super().final if done is None else _end_entry(done[1], self.call_id, done[2], self.method, self.rule)

    def end_on_error(self, exc: BaseException) -> None:
        """Close a call that an unexpected error interrupted, by the legal move to End."""
        while not self.ended:
            move = move_to_end(SERVER, self.state, self.kind)
            assert move is not None, "every server state has a move straight to End"
            self.move(move, codes.RPC_S_CALL_FAILED, codes.grpc_status_name_for(codes.RPC_S_CALL_FAILED),
                      f"handler error: {type(exc).__name__}: {exc}")

    def cancel_seen(self, kind: str) -> None:
        """A cancel reached the call: record it (no state change: docs/model.md, "Server") and wake
        a waiting handler; a polling handler sees it at its next poll (`test_cancel`)."""
        if self.ended:
            return
        if kind == ABORTIVE:
            self.rpc_cancelled = True   # the transport's fact: no reply can reach the caller now
        if self.polls is not None:
            self.polls.arrive(kind, time.monotonic())
            self.wake()   # not to see it: a waiting handler resets its timer to its next poll
            return
        self._see(kind)

    def _see(self, kind: str, delay_ms: float | None = None) -> None:
        if self.cancel_kind is None:
            self.cancel_kind = kind
        self._emit(Entry(time.time(), SERVER, self.call_id, self.state, self.state, CANCEL_SEEN, cancel=kind,
                         delay_ms=delay_ms, method=self.method, rule=self.rule))
        if self._wake is not None and not self._wake.done():
            self._wake.set_result(None)

    def breach(self, detail: str) -> None:
        """A pipe rule broken on this call (by the handler, or seen broken by the caller)."""
        self._emit(Entry(time.time(), SERVER, self.call_id, self.state, self.state, PIPE_BREACH, detail=detail,
                         method=self.method, rule=self.rule))

    # -- a handler that polls for cancels (RpcServerTestCancel) --------------------------------------
    def poll_cancels(self, interval: float) -> None:
        """From now (its dispatch) the handler tests for cancels every `interval` seconds (0: never
        polls, sees each cancel as it arrives)."""
        if interval > 0:
            self.polls = CancelPoll(interval, time.monotonic())

    def test_cancel(self, at_outcome: bool = False) -> None:
        """RpcServerTestCancel: at a poll instant (or the outcome point), log the cancels it finds."""
        polls = self.polls
        if polls is None or not polls.pending or self.ended:
            return
        for kind, delay in polls.test(time.monotonic(), at_outcome):
            self._see(kind, round(delay * 1000, 3))

    def poll_timeout(self, timeout: float | None) -> float | None:
        """`timeout` cut to the next poll instant while a cancel waits to be seen."""
        polls = self.polls
        if polls is None or not polls.pending:
            return timeout
        left = polls.until_next(time.monotonic())
        return left if timeout is None else min(timeout, left)

    async def until_polled(self) -> None:
        """Keep working until the next poll sees the cancels that arrived (or the server stops)."""
        while self.polls is not None and self.polls.pending and not self.stopping and not self.ended:
            await asyncio.wait((self.wake_future(),), timeout=self.poll_timeout(None))
            self.test_cancel()
        self.test_cancel(at_outcome=True)   # the server stopping: the handler looks one last time

    def wake_future(self) -> asyncio.Future[None]:
        """A fresh future that a cancel, the server stopping or `wake()` resolves (pipe handlers
        wait on it for their reader's progress too)."""
        if self._wake is None or self._wake.done():
            self._wake = asyncio.get_running_loop().create_future()
        return self._wake

    def wake(self) -> None:
        if self._wake is not None and not self._wake.done():
            self._wake.set_result(None)

    def stop(self) -> None:
        """The server is stopping: cut any wait short, even one ignoring cancels."""
        self.stopping = True
        if self._wake is not None and not self._wake.done():
            self._wake.set_result(None)

    def interrupted(self, ignore_cancels: bool) -> bool:
        """Whether a wait of the script ends here: the server stopping, or a cancel the script
        does not ignore (a polling handler looks for cancels first)."""
        if self.polls is not None:
            self.test_cancel()
        return self.stopping or (self.cancel_kind is not None and not ignore_cancels)

    def wake_after(self, seconds: float) -> asyncio.Future[None]:
        """The future a waiting handler awaits: a cancel, the server stopping or `seconds` (cut to
        the next poll instant) resolve it. The handler awaits it directly, in its own frame: no
        waiter, set or extra coroutine frame per held call (10,000 held calls add up). Its timer
        is the server's one timer (`Wakeups`), not one per call; `stop_timer` drops its entry when
        the call is done waiting."""
        if self._wake is None or self._wake.done():
            self._wake = asyncio.get_running_loop().create_future()
        self.stop_timer()
        if self._wakeups is None:
            self._wakeups = Wakeups()
        self._wakeup = self._wakeups.after(self.poll_timeout(seconds), self._wake)   # type: ignore[arg-type]
        return self._wake

    def let_go(self) -> None:
        """Released from the live calls: the journal keeps the call, not what it waited on."""
        self._wake = self.polls = None

    def stop_timer(self) -> None:
        if self._wakeup is not None:
            self._wakeups.drop(self._wakeup)   # type: ignore[union-attr]
            self._wakeup = None


# How a call the server's stop cuts short ends: (code, status, message), the same for calls and pipes.
STOPPING: tuple[int, grpc.StatusCode, str] = (codes.RPC_S_SERVER_UNAVAILABLE, grpc.StatusCode.UNAVAILABLE,
                                               "server is shutting down")

