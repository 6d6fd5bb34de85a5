"""One call on the caller's side, without I/O: the base of every call object of both surfaces.

`CallCore` is the call itself, not a record beside it: `AsyncCall` and `Call` (aio.py,
sync.py) and the pipes (`PipeCore` in pipe_core.py, then pipe_aio.py and pipe_sync.py) are
`CallCore`s that add only their I/O (sending, waiting, reading the outcome). It applies one
client table, records every state entered, holds the notification (the call's final code and
reply) and its callbacks, and answers complete()/status() by the MS-RPC rules:

* complete() before the notification: 997 RPC_S_ASYNC_CALL_PENDING, no state change;
* the first complete() after it is final (WComp -> Comp -> End);
* complete() or cancel() after that: 1914 RPC_S_INVALID_ASYNC_HANDLE;
* status() polls: 997 until notified, then the final code, without consuming it (1915 before
  start(), as complete() answers there).

What needs I/O is given to it as data, never a method it calls up into: the gRPC call once
sent (`_rpc`, which an abortive cancel cancels) and the surface's notice type (`_notice_type`,
which sends a non-abortive cancel's notice: notice.py).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable, Mapping

from callstate import codes
from callstate.client.arguments import checked_wait
from callstate.errors import CallError, CallPending, InvalidAsyncHandle
from callstate.lifecycle import (C, CANCEL, CANCEL_ISSUED, CLIENT, COMPLETE, COMPLETE_PENDING, COMPLETED, ENTER,
                                 START_FAILED, STARTED, UNARY, WCOMP, Lifecycle, cancel_kind, initial_move, notifiable)
from callstate.script import RequestError
from callstate.statelog import new_entry
from callstate.logfile import StateLog

_LOG = logging.getLogger("callstate.client")
_CANCELLED = codes.grpc_status_name_for(codes.RPC_S_CALL_CANCELLED)
# client_outcome of an RPC cancelled on this side, by whether the caller's abortive cancel did it
# (1818) or not (1722): worked out once, as every abortive cancel of a call in flight asks for it
_CANCELLED_HERE = {abortive: codes.client_outcome(None, None, None, cancelled_here=True, abortive_cancel=abortive)
                   for abortive in (False, True)}

# What a cancel's moves tell the surface to do: cancel the RPC or send the notice; nothing, the
# call never went out (cancelled in C, the notification is rushed here); nothing, the outcome is in.
ACT, UNSENT, DONE = "act", "unsent", "done"
CLOSED_BEFORE_START = "the client was closed before the call was started"
CLIENT_IS_CLOSED = "the client is closed"


class CallCore:
    """One call's lifecycle, notification and the caller's verbs that need no I/O.

    `client` is the client's bookkeeping the call joins (whether it is closed, its live calls:
    client_base.py); None for a core driven alone (tests)."""

    # What differs on a pipe is data, not methods the base would call up into: when the
    # notification may reach the caller, and the move the outcome's arrival itself makes
    # in a state (a pipe's status in Pull is the end of the server's pipe too).
    _notifiable = staticmethod(notifiable)
    _arrival_moves: Mapping[str, str] = {}
    _notice_type: Any                      # each surface's NoticeBase: AsyncNotice (notice_aio.py), ThreadNotice (notice_sync.py)
    _notice: Any = None                    # its notice (notice.py), made by the first non-abortive cancel
    _rpc: Any = None                       # the gRPC call once sent (grpc.aio's call, or grpc's future)
    _starting = False                      # a start() has claimed the call (one at a time)
    _cancelled_unsent = False              # cancelled before its RPC existed: the outcome is in, no RPC may run
    _callback_failure: BaseException | None = None   # raised by a callback: for the caller's next wait
    # A notification given inside one of the caller's own verbs (a rushed cancel, start(), a pipe's
    # pull) runs its callbacks off that verb's stack, as the runtime's thread runs them (never inside
    # RpcAsyncCancelCall): they wait in `_owed` until the surface runs them. Given as data: whether a
    # cancelled RPC's own done-callback runs them (sync: on gRPC's thread), and `_run_soon`, how the
    # surface runs them otherwise (asyncio: on the loop, after the verb; sync: on a thread of their own).
    _owed: list[Callable[[Any], None]] | None = None
    _rpc_runs_owed = False
    _run_soon: Callable[[Callable[[], None]], Any] = staticmethod(lambda run: run())   # a core driven alone: here

    def __init__(self, call_id: str, log: StateLog | None, kind: str = UNARY, method_name: str | None = None, *,
                 client: Any = None, cancel_key: str = "", timeout: float | None = None) -> None:
        self.call_id = call_id
        self.method_name = method_name     # a user's method ("pkg.Svc/Method"): each entry names it
        self.lifecycle = Lifecycle(CLIENT, kind=kind)
        self.notified = False              # the notification reached the caller
        self._arrived = False              # the outcome is known (it may wait for a state that may complete)
        self.code: int | None = None       # the final code once the outcome is in
        self.reply: Any = None
        self.grpc_status = ""
        self.details = ""
        self.abortive_cancel = False
        # messages pushed and pulled (pipes; None: a unary call), logged with each entry after the first
        self.sent: int | None = None if kind == UNARY else 0
        self.received: int | None = self.sent
        self.completed_for_caller = False  # completed on the caller's behalf (client closed, awaiting task cancelled)
        self._client = client
        self._cancel_key = cancel_key      # repeated in the call's cancel notices: proof of ownership
        self._timeout = timeout            # the call's gRPC deadline, in seconds (None: none)
        self._log = log if log is not None and log.enabled else None
        self._lock = threading.Lock()      # the sync surfaces notify from gRPC's threads
        self._callbacks: list[Callable[[Any], None]] = []
        self.after_callbacks: Callable[[], None] | None = None   # runs once the callbacks have
        self.t_start = time.time()
        if self._log is not None:
            self._log.append(new_entry((self.t_start, CLIENT, call_id, self.lifecycle.state, None, ENTER,
                                        initial_move(CLIENT, kind), None, None, None, None, None, None, None,
                                        method_name, None)))
        if client is not None and client.closed:   # prepare() or pipe() after close(): it could never start,
            # and nothing would end it (close() has run): ended now, as start() after close() ends a call
            self._move(START_FAILED, codes.RPC_S_INVALID_ASYNC_CALL, None, CLIENT_IS_CLOSED)
            raise CallError(codes.RPC_S_INVALID_ASYNC_CALL, call_id, details=CLIENT_IS_CLOSED)
        if client is not None:   # in the log from now on: the client ends it at close() if nobody else does
            client._live.add(self)

    def __repr__(self) -> str:
        # what a failing assertion or a debugger shows: the id to find in the logs, where it is
        kind = "" if self.lifecycle.kind == UNARY else f" {self.lifecycle.kind}"
        method = f" {self.method_name}" if self.method_name else ""
        code = f" code={self.code} {codes.name(self.code)}" if self.code is not None else ""
        return f"<{type(self).__name__}{kind}{method} {self.call_id} {self.state}{code}>"

    # -- what the caller reads ----------------------------------------------------------------
    @property
    def state(self) -> str:
        return self.lifecycle.state

    @property
    def history(self) -> list[str]:
        """The client states entered so far, e.g. ['C', 'WComp', 'Comp', 'End']."""
        return list(self.lifecycle.history or ())

    @property
    def outcome_known(self) -> bool:
        """The gRPC call has finished (the notification may still wait for the caller)."""
        return self._arrived

    @property
    def has_callbacks(self) -> bool:
        return bool(self._callbacks)

    def done(self) -> bool:
        """True once the call-complete notification has arrived."""
        return self.notified

    def status(self) -> int:
        """RpcAsyncGetCallStatus: 997 while pending, then the final code (not consumed); 1915 on a
        call never started (nothing is pending: 997 would be polled for ever, as complete() and
        wait() refuse it), 1914 once completed."""
        if self.lifecycle.ended:
            return codes.RPC_S_INVALID_ASYNC_HANDLE
        if self.lifecycle.state == C and not self._starting and not self._arrived:
            return codes.RPC_S_INVALID_ASYNC_CALL
        if not self.notified or self.code is None:
            return codes.RPC_S_ASYNC_CALL_PENDING
        return self.code

    # -- recording --------------------------------------------------------------------------
    def _move(self, move: str, code: int | None = None, grpc_status: str | None = None,
              detail: str | None = None, cancel: str | None = None) -> None:
        prev, state = self.lifecycle.move(move)
        self._record(prev, state, move, code, grpc_status, detail, cancel)

    def _record(self, prev: str, state: str, move: str, code: int | None = None, grpc_status: str | None = None,
                detail: str | None = None, cancel: str | None = None) -> None:
        if self._log is not None:
            self._log.append(new_entry((time.time(), CLIENT, self.call_id, state, prev, ENTER, move, code, grpc_status,
                                        detail, cancel, self.sent, self.received, None, self.method_name, None)))

    def _event(self, event: str, detail: str | None = None) -> None:
        # after End nothing more is logged (a late cancel_sent reply is dropped)
        if self._log is not None and not self.lifecycle.ended:
            s = self.lifecycle.state
            self._log.append(new_entry((time.time(), CLIENT, self.call_id, s, s, event, None, None, None, detail, None,
                                        None, None, None, self.method_name, None)))

    def event(self, name: str, detail: str | None = None) -> None:
        with self._lock:
            self._event(name, detail)

    # -- starting -----------------------------------------------------------------------------
    # The outcome of the gRPC call can arrive on another thread while the caller is still in
    # C (before `started()`): it is held until the caller enters a state that may complete.

    def _admit(self, check: Callable[..., None], *subject: Any) -> None:
        """What `start()` checks before the call goes out: in C, the client open, and
        `check(*subject)` (the server's own checks, so a refused call never goes out). Refused:
        CallError (C -> End, nothing to complete). One start() at a time: a second one (another
        thread) is refused here, before it could send the call a second time."""
        with self._lock:
            if self.lifecycle.state != C or self._starting:
                raise CallError(codes.RPC_S_INVALID_ASYNC_CALL, self.call_id, details=f"start() in state {self.state}"
                                + (": another start() of the call is under way" if self.lifecycle.state == C
                                   else ": the call was started or cancelled already"))
            self._starting = True
        if (unusable := self._client.unusable()) is not None:   # closed, or (asyncio) another loop's
            raise self.start_failed(codes.RPC_S_INVALID_ASYNC_CALL, unusable)
        try:
            check(*subject)
        except RequestError as exc:
            raise self.start_failed(codes.RPC_S_INVALID_ARG, str(exc)) from None

    def _on_arrival(self) -> None:
        """(Under the lock.) The move the outcome's arrival itself makes (pipes: the null pull)."""
        move = self._arrival_moves.get(self.lifecycle.state)
        if move is not None:
            self._move(move)

    def started(self) -> None:
        with self._lock:
            state = self.lifecycle.state
            if state == C:
                self._move(STARTED)
                if not self._arrived:   # the common case: the outcome comes later, nothing to deliver now
                    return
                self._on_arrival()   # the outcome beat started()
                callbacks = self._deliver_if_arrived()
                owed = self._owe(callbacks)
        if state == C:
            # the outcome beat start(): callbacks gRPC's thread held up to here run off start()'s
            # stack, as gRPC's thread runs them (a BaseException kept for the caller's wait), so
            # start() neither raises nor deadlocks on anything of theirs on a slow machine
            self._off_the_verb(callbacks, owed)
            return
        # Another thread moved the call on while start() made the RPC. A cancel that found the
        # RPC made it go through it (C -> Can -> WComp): the call is under way. But close()
        # ended it, or a cancel found no RPC yet and gave it its outcome: the RPC must not run.
        if self.lifecycle.ended or self._cancelled_unsent:
            self._rpc.cancel()
            raise CallError(codes.RPC_S_INVALID_ASYNC_CALL, self.call_id,
                            details=CLOSED_BEFORE_START if self.lifecycle.ended else "cancelled while it was starting")

    def start_failed(self, code: int, details: str) -> CallError:
        """C -> End: making the call raised; no notification follows, nothing to complete (and
        nothing left for the client to end at close)."""
        with self._lock:
            if self.lifecycle.ended:   # close() on another thread ended it a moment ago: that is its end
                code, details = codes.RPC_S_INVALID_ASYNC_CALL, CLOSED_BEFORE_START
            else:
                self._move(START_FAILED, code, None, details)
        if self._client is not None:
            self._client._live.discard(self)
        return CallError(code, self.call_id, details=details)

    def not_made(self, exc: Exception) -> CallError:
        """Making the gRPC call raised once the call was admitted (grpc refused its arguments,
        say): C -> End with 1726 and what it said. The surface raises the error returned, from `exc`."""
        return self.start_failed(codes.RPC_S_CALL_FAILED,
                                 f"the call could not be made: {type(exc).__name__}: {exc}")

    def end_unstarted(self) -> bool:
        """(close()) A call still in C can no longer start: C -> End with 1915, as a start()
        after close() would end it. False when it had left C."""
        with self._lock:
            if self.lifecycle.state != C:
                return False
            self._move(START_FAILED, codes.RPC_S_INVALID_ASYNC_CALL, None, CLOSED_BEFORE_START)
        return True

    def _unsent(self, what: str) -> CallError:
        """Waiting on a call that never went out: 1915 before start(), 1914 once its start failed
        (no notification follows it)."""
        if self.state == C:
            return CallError(codes.RPC_S_INVALID_ASYNC_CALL, self.call_id, details=f"{what}() before start()")
        return InvalidAsyncHandle(self.call_id, what)

    # -- cancelling ---------------------------------------------------------------------------
    def cancel(self, abortive: bool = True, timeout: float | None = None) -> None:
        """RpcAsyncCancelCall. Abortive: a gRPC cancel (RST_STREAM); the notification is rushed.
        Non-abortive: a cancel notice to the server, and keep waiting for its own answer; after
        `timeout` seconds without one, escalate to an abortive cancel. Either way the call must
        still be waited for and completed. After the final complete: 1914."""
        if not isinstance(abortive, bool):   # cancel("non-abortive") would be truthy: an abortive cancel
            raise TypeError(f"abortive must be True or False, not {type(abortive).__name__} {abortive!r} "
                            "(a non-abortive cancel is cancel(abortive=False))")
        if timeout is not None:   # refused before any move (a timer thread would raise it unseen)
            timeout = checked_wait(timeout)
        if self._cancel_moves(abortive, self._rpc is not None) != ACT:
            return
        if abortive:
            self._rpc.cancel()
            if self._rpc.cancelled():   # our cancel ended the RPC: the notification is rushed, here and now
                self._notify_cancelled_here(in_verb=True)   # (its callbacks run after cancel() returns)
        else:
            self._notice_type.of(self).send(timeout)

    def _cancel_moves(self, abortive: bool, sent: bool) -> str:
        """RpcAsyncCancelCall's moves, -> Can -> WComp, under one lock hold so no other thread
        ever sees the call in Can. Returns what the surface must do: ACT, UNSENT or DONE."""
        with self._lock:
            if self.lifecycle.ended:  # not logged: nothing may follow End in the log
                raise InvalidAsyncHandle(self.call_id, "cancel")
            kind = cancel_kind(abortive)
            self._move(CANCEL, cancel=kind)
            if self._arrived:
                self._move(CANCEL_ISSUED, detail="already notified")
                action = DONE
            elif not sent:
                self._move(CANCEL_ISSUED, detail="before start")
                self._arrived = True
                self.code, self.grpc_status, self.details = codes.RPC_S_CALL_CANCELLED, _CANCELLED, "cancelled before start"
                self._cancelled_unsent = True
                action = UNSENT
            else:   # under way: nothing arrived to deliver (the common case), the surface acts
                self.abortive_cancel = self.abortive_cancel or abortive
                self._move(CANCEL_ISSUED)
                return ACT
            callbacks = self._deliver_if_arrived()
            owed = self._owe(callbacks)
        self._off_the_verb(callbacks, owed)   # a cancel before start (or after the outcome): no RPC will notify
        return action

    def _notify_cancelled_here(self, in_verb: bool = False) -> None:
        """The RPC was cancelled on this side: by our abortive cancel (1818, `in_verb`: in the caller's
        cancel()), or under us (1722). (An escalation timer still set finds the outcome known when it
        fires, and does nothing.)"""
        code, status, details = _CANCELLED_HERE[self.abortive_cancel]
        self.notify(code, None, status, details, in_verb=in_verb, rpc_runs_owed=self._rpc_runs_owed)

    def _interrupted(self, complete: bool) -> None:
        """The caller's wait was cut short from outside (asyncio: its task cancelled; sync: an
        exception out of the blocking wait, KeyboardInterrupt): an abortive cancel of a call still
        under way, and for a wait that completes (`result()`), its completion on the caller's
        behalf once the (rushed) notification arrives."""
        if self.lifecycle.ended:
            return
        if not self.outcome_known and self.state == WCOMP:
            try:
                # its callbacks run off this stack (a pytest.fail() in one is kept for the caller's
                # next wait): the interruption goes on, Ctrl-C stays a KeyboardInterrupt
                self.cancel(abortive=True)
            except CallError:
                pass   # ended meanwhile (close() on another thread)
        if complete and self.notified:   # the rushed notification: completed now, on this stack
            self._complete_quietly()
        elif complete:
            CallCore.add_done_callback(self, CallCore._complete_quietly)

    def _stop_escalation(self) -> None:
        """The outcome is in: an unanswered notice no longer needs escalating."""
        if self._notice is not None:
            self._notice.stop()

    # -- the notification ---------------------------------------------------------------------
    def notify(self, code: int, reply: Any = None, grpc_status: str = "", details: str = "", *,
               in_verb: bool = False, rpc_runs_owed: bool = False) -> bool:
        """The call-complete notification. Only the first counts; callbacks run after it, where the
        caller does not wait (gRPC's thread, a driver task): a BaseException one raises is kept for
        the caller's next wait (`_after_wait`), on every call object of both surfaces. `in_verb`:
        given in the caller's own verb (a rushed cancel, a pull), whose stack they never run on
        (`_off_the_verb`; `rpc_runs_owed`: the cancelled RPC's done-callback runs them)."""
        with self._lock:
            if self._arrived:
                return False
            self._arrived = True
            self.code, self.reply, self.grpc_status, self.details = code, reply, grpc_status, details
            if self._arrival_moves:   # a pipe's (a unary call's arrival makes no move)
                self._on_arrival()
            callbacks = self._deliver_if_arrived()
            owed = in_verb and self._owe(callbacks)
        if in_verb:
            self._off_the_verb(callbacks, owed, rpc_runs_owed)
        else:
            self._run(callbacks)
        return True

    def _owe(self, callbacks: list[Callable[[Any], None]] | None) -> bool:
        """(Under the lock, in a caller's verb.) The callbacks of a notification given there, kept in
        `_owed` for `_off_the_verb`; False when there are none."""
        if callbacks:
            self._owed = [*(self._owed or ()), *callbacks]
        return bool(callbacks)

    def _off_the_verb(self, callbacks: list[Callable[[Any], None]] | None, owed: bool,
                      rpc_runs_them: bool = False) -> None:
        """(Outside the lock, at the end of a caller's verb that notified: cancel(), start(), a pull.)
        The notification's callbacks do not run in the verb (a caller that holds a lock across
        cancel() and a callback that takes it would deadlock, as would one waiting for what the
        caller does after it): they run where the surface runs a notification's, after the verb:
        a cancelled RPC's own done-callback (`rpc_runs_them`: sync, on gRPC's thread), else
        `_run_soon`. With none to run, the waiters wake here (the verb gave the notification)."""
        if not owed:
            self._run(callbacks)
        elif not rpc_runs_them:
            self._run_soon(self._run_owed)

    def _run_owed(self) -> None:
        """Run the callbacks a caller's verb left (`_off_the_verb`), once, then wake the waiters."""
        with self._lock:
            owed, self._owed = self._owed, None
        if owed is not None:
            self._run(owed)

    def _deliver_if_arrived(self) -> list[Callable[[Any], None]] | None:
        """(Under the lock.) Notify the caller if the outcome is in and the state may complete: the
        callbacks to run, whose runner then wakes the waiters; None when this notified no one."""
        if not self._arrived or self.notified or not self._notifiable(self.lifecycle.state):
            return None
        self.notified = True
        callbacks, self._callbacks = self._callbacks, []
        return callbacks

    def _run(self, callbacks: list[Callable[[Any], None]] | None, notifying: bool = True,
             keep_failure: bool = True) -> None:
        """Run the callbacks, then wake the waiters (`after_callbacks`). One that raises must not
        starve the others, the queue or the waiters: an Exception is logged; a BaseException
        (pytest.fail() or pytest.skip() in a harness's callback, KeyboardInterrupt) is logged and
        kept for the caller's next wait, before the waiters wake, so a test that waits on the call
        still sees it fail (not `keep_failure`: raised once everything else has run, to the caller
        who ran the callback itself, `add_done_callback` on a notified call). None: nothing was
        delivered, and the waiters are another runner's to wake."""
        if callbacks is None:
            return
        stopped: BaseException | None = None
        for callback in callbacks:
            try:
                callback(self)
            except BaseException as exc:
                if not isinstance(exc, Exception):
                    stopped = stopped or exc
                else:
                    _LOG.exception("callstate: a done-callback of call %s raised", self.call_id)
        if stopped is not None and keep_failure:
            _LOG.error("callstate: a done-callback of call %s raised %r: the caller's wait raises it",
                       self.call_id, stopped)
            self._callback_failure, stopped = stopped, None
        if notifying and self.notified and self.after_callbacks is not None:
            after, self.after_callbacks = self.after_callbacks, None
            after()
        if stopped is not None:
            raise stopped

    def _after_wait(self) -> bool:
        """What a wait returns: whether the call is notified. Once it is, a BaseException a
        callback raised where the caller does not wait (gRPC's thread, a driver task, a pipe's
        drainer) is raised here, once: the caller's next wait() or result() fails with it, on
        both surfaces, whenever it comes."""
        if self.notified:
            failure, self._callback_failure = self._callback_failure, None
            if failure is not None:
                raise failure
        return self.notified

    def add_done_callback(self, callback: Callable[[Any], None]) -> None:
        """Call `callback(call)` when the notification arrives (at once if it has)."""
        with self._lock:
            if not self.notified:
                self._callbacks.append(callback)
                return
            if self._owed is not None:   # the notification's own callbacks have not run yet: after them
                self._owed.append(callback)
                return
        self._run([callback], notifying=False, keep_failure=False)

    def _subscribe(self, queue: Any, on_complete: Callable[[Any], None] | None) -> Any:
        """`prepare()`'s notification styles: a completion queue and a callback (either may be None)."""
        if queue is not None:
            self.add_done_callback(queue.post)
        if on_complete is not None:
            self.add_done_callback(on_complete)
        return self

    # -- completing ---------------------------------------------------------------------------
    def complete(self) -> Any:
        """RpcAsyncCompleteCall: the reply, or CallError (997 pending, 1914 after the final one)."""
        try:
            return self._complete()
        finally:
            self._release_if_ended()

    def _complete(self) -> Any:
        with self._lock:
            if self.lifecycle.ended:
                raise InvalidAsyncHandle(self.call_id, COMPLETE)
            if self.lifecycle.state == C and not self._starting:   # never started: 997 would be polled for ever
                raise self._unsent(COMPLETE)
            if not self.notified:
                self._event(COMPLETE_PENDING)
                raise CallPending(self.call_id)
            code = self.code if self.code is not None else codes.RPC_S_CALL_FAILED
            # Both moves before either entry is recorded: a sink that raises (a closed stdout, a
            # failing observer) must not leave the call in Comp, where close() or a second
            # complete() would find it half-completed.
            (prev, comp), (_, end) = self.lifecycle.move(COMPLETE), self.lifecycle.move(COMPLETED)
            try:
                self._record(prev, comp, COMPLETE)
            finally:   # End is recorded even when the entry before it could not be
                self._record(comp, end, COMPLETED, code, self.grpc_status or None, self.details or None)
        if code != codes.RPC_S_OK:
            raise CallError(code, self.call_id, grpc_status=self.grpc_status, details=self.details)
        return self.reply

    def _result_after_wait(self) -> Any:
        """What a wait-then-complete (`result()`) gives once notified: complete() — or, when the
        call was already completed on the caller's behalf, that completion's outcome rather than 1914."""
        try:
            return self._complete()
        except InvalidAsyncHandle:
            # completed on our behalf, perhaps by close() on another thread a moment ago
            if not self.completed_for_caller or self.code is None:
                raise
        finally:
            self._release_if_ended()
        if self.code != codes.RPC_S_OK:
            raise CallError(self.code, self.call_id, grpc_status=self.grpc_status, details=self.details)
        return self.reply

    def _complete_quietly(self) -> None:
        """Complete on the caller's behalf (its final code is in the log)."""
        self.completed_for_caller = True
        try:
            self.complete()
        except CallError:
            pass

    def _release_if_ended(self) -> None:
        if self._client is not None and self.lifecycle.ended:   # no longer the client's to end at close()
            self._client._live.discard(self)
