"""The caller's side of one call, without I/O: shared by the sync and asyncio clients.

`CoreBase` applies one client table, records every state entered, holds the notification
(the call's final code and reply) and its callbacks, and answers complete()/status() by
the MS-RPC rules; `CallCore` is it for unary calls (C, Can, WComp, Comp, End) and
`PipeCore` (pipe_core.py) for pipes:

* complete() before the notification: 997 RPC_S_ASYNC_CALL_PENDING, no state change;
* the first complete() after it is final (WComp -> Comp -> End);
* complete() or cancel() after that: 1914 RPC_S_INVALID_ASYNC_HANDLE;
* status() polls: 997 until notified, then the final code, without consuming it.

Only how the adapters wait differs (threads vs. the event loop).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable, Mapping

from callstate import codes
from callstate.errors import CallError, CallPending, InvalidAsyncHandle
from callstate.lifecycle import (CANCEL, CANCEL_ISSUED, CLIENT, COMPLETE, COMPLETE_PENDING, COMPLETED, ENTER,
                                 START_FAILED, STARTED, UNARY, Lifecycle, cancel_kind, initial_move, notifiable)
from callstate.statelog import Entry
from callstate.logfile import StateLog


_LOG = logging.getLogger("callstate.client")
_CANCELLED = codes.grpc_status_name_for(codes.RPC_S_CALL_CANCELLED)

# what cancel() tells its adapter to do: cancel the RPC or send the notice; nothing, the call
# never went out (cancelled in C, the notification is rushed here); nothing, the outcome is in
ACT, UNSENT, DONE = "act", "unsent", "done"


class CoreBase:
    """One client table's bookkeeping; subclasses name the table (`kind`) and when the
    notification may reach the caller (`_notifiable`)."""

    __slots__ = ("call_id", "owner", "lifecycle", "notified", "code", "reply", "grpc_status", "details",
                 "abortive_cancel", "_arrived", "_log", "_lock", "_callbacks", "t_start", "after_callbacks",
                 "completed_for_caller", "sent", "received", "method")

    # What differs on a pipe is data, not methods the base would call up into: when the
    # notification may reach the caller, and the move the outcome's arrival itself makes
    # in a state (a pipe's status in Pull is the end of the server's pipe too).
    _notifiable = staticmethod(notifiable)
    _arrival_moves: Mapping[str, str] = {}

    def __init__(self, call_id: str, owner: Any, log: StateLog | None, kind: str = UNARY,
                 method: str | None = None) -> None:
        self.call_id = call_id
        self.method = method               # a user's method ("pkg.Svc/Method"): each entry names it
        self.owner = owner                 # the public call object handed to callbacks
        self.lifecycle = Lifecycle(CLIENT, kind=kind)
        self.notified = False              # the notification reached the caller
        self._arrived = False              # the outcome is known (it may wait for a state that may complete)
        self.code: int | None = None
        self.reply: Any = None
        self.grpc_status = ""
        self.details = ""
        self.abortive_cancel = False
        self.sent: int | None = None       # messages pushed and pulled (pipes; None: a unary call)
        self.received: int | None = None
        self.completed_for_caller = False  # completed on the caller's behalf (client closed, awaiting task cancelled)
        self._log = log if log is not None and log.enabled else None
        self._lock = threading.Lock()      # the sync surfaces notify from gRPC's threads
        self._callbacks: list[Callable[[Any], None]] = []
        self.after_callbacks: Callable[[], None] | None = None   # runs once the callbacks have
        self.t_start = time.time()
        if self._log is not None:
            self._log.append(Entry(self.t_start, CLIENT, call_id, self.lifecycle.state, None, ENTER,
                                   initial_move(CLIENT, kind), method=method))

    # -- recording --------------------------------------------------------------------------
    def _move(self, move: str, code: int | None = None, grpc_status: str | None = None,
              detail: str | None = None, cancel: str | None = None) -> None:
        prev, state = self.lifecycle.move(move)
        self._record(prev, state, move, code, grpc_status, detail, cancel)

    def _record(self, prev: str, state: str, move: str, code: int | None = None, grpc_status: str | None = None,
                detail: str | None = None, cancel: str | None = None) -> None:
        if self._log is not None:
            self._log.append(Entry(time.time(), CLIENT, self.call_id, state, prev, ENTER, move, code,
                                   grpc_status, detail, cancel, self.sent, self.received, method=self.method))

    def _event(self, event: str, detail: str | None = None) -> None:
        # after End nothing more is logged (a late cancel_sent reply is dropped)
        if self._log is not None and not self.lifecycle.ended:
            s = self.lifecycle.state
            self._log.append(Entry(time.time(), CLIENT, self.call_id, s, s, event, None, detail=detail,
                                   method=self.method))

    @property
    def state(self) -> str:
        return self.lifecycle.state

    @property
    def history(self) -> list[str]:
        return list(self.lifecycle.history or ())

    # -- the caller's moves -----------------------------------------------------------------
    # The outcome of the gRPC call can arrive on another thread while the caller is still in
    # C (before `started()`): it is held until the caller enters a state that may complete.

    def _on_arrival(self) -> None:
        """(Under the lock.) The move the outcome's arrival itself makes (pipes: the null pull)."""
        move = self._arrival_moves.get(self.lifecycle.state)
        if move is not None:
            self._move(move)

    def started(self) -> None:
        with self._lock:
            self._move(STARTED)
            if self._arrived:   # the outcome beat started()
                self._on_arrival()
            callbacks = self._deliver_if_arrived()
        self._run(callbacks)

    def start_failed(self, code: int, details: str) -> CallError:
        """C -> End: making the call raised; no notification follows, nothing to complete."""
        with self._lock:
            self._move(START_FAILED, code, None, details)
        return CallError(code, self.call_id, details=details)

    def cancel(self, abortive: bool, sent: bool) -> str:
        """RpcAsyncCancelCall's moves, -> Can -> WComp, under one lock hold so no other thread
        ever sees the call in Can. Returns what the adapter must do: ACT, UNSENT or DONE."""
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
                action = UNSENT
            else:
                self.abortive_cancel = self.abortive_cancel or abortive
                self._move(CANCEL_ISSUED)
                action = ACT
            callbacks = self._deliver_if_arrived()
        self._run(callbacks)
        return action

    def event(self, name: str, detail: str | None = None) -> None:
        with self._lock:
            self._event(name, detail)

    def notify(self, code: int, reply: Any = None, grpc_status: str = "", details: str = "") -> bool:
        """The call-complete notification. Only the first counts; callbacks run after it."""
        with self._lock:
            if self._arrived:
                return False
            self._arrived = True
            self.code, self.reply, self.grpc_status, self.details = code, reply, grpc_status, details
            self._on_arrival()
            callbacks = self._deliver_if_arrived()
        self._run(callbacks)
        return True

    def _deliver_if_arrived(self) -> list[Callable[[Any], None]]:
        """(Under the lock.) Notify the caller if the outcome is in and the state may complete."""
        if not self._arrived or self.notified or not self._notifiable(self.lifecycle.state):
            return []
        self.notified = True
        callbacks, self._callbacks = self._callbacks, []
        return callbacks

    def _run(self, callbacks: list[Callable[[Any], None]], notifying: bool = True) -> None:
        for callback in callbacks:
            try:
                callback(self.owner)
            except Exception:  # one failing callback must not starve the others (or the queue)
                _LOG.exception("callstate: a done-callback of call %s raised", self.call_id)
        if notifying and self.notified and self.after_callbacks is not None:
            after, self.after_callbacks = self.after_callbacks, None
            after()

    @property
    def outcome_known(self) -> bool:
        """The gRPC call has finished (the notification may still wait for the caller)."""
        return self._arrived

    @property
    def has_callbacks(self) -> bool:
        return bool(self._callbacks)

    def add_done_callback(self, callback: Callable[[Any], None]) -> None:
        with self._lock:
            if not self.notified:
                self._callbacks.append(callback)
                return
        self._run([callback], notifying=False)

    def complete(self) -> Any:
        """RpcAsyncCompleteCall: the reply, or CallError with the final code."""
        with self._lock:
            if self.lifecycle.ended:
                raise InvalidAsyncHandle(self.call_id, COMPLETE)
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

    def result(self) -> Any:
        """What a wait-then-complete (`result()`) gives once notified: complete() — or, when the
        call was already completed on the caller's behalf, that completion's outcome rather than 1914."""
        try:
            return self.complete()
        except InvalidAsyncHandle:
            # completed on our behalf, perhaps by close() on another thread a moment ago
            if not self.completed_for_caller or self.code is None:
                raise
        if self.code != codes.RPC_S_OK:
            raise CallError(self.code, self.call_id, grpc_status=self.grpc_status, details=self.details)
        return self.reply

    def status(self) -> int:
        """RpcAsyncGetCallStatus: 997 while pending, then the final code (not consumed)."""
        if self.lifecycle.ended:
            return codes.RPC_S_INVALID_ASYNC_HANDLE
        if not self.notified or self.code is None:
            return codes.RPC_S_ASYNC_CALL_PENDING
        return self.code


class CallCore(CoreBase):
    """A unary call: the notification reaches the caller only in WComp (`notifiable`)."""

    __slots__ = ()

    def __init__(self, call_id: str, owner: Any, log: StateLog | None, method: str | None = None) -> None:
        super().__init__(call_id, owner, log, method=method)
