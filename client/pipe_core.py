"""The caller's side of one pipe call, without I/O: shared by the sync and asyncio pipes.

`PipeCore` applies the client pipe table of its kind (C, Push, Pull, Can, WComp, Comp, End),
counts the messages pushed and pulled (each push's send-complete and each pull's
receive-complete notification is a self-loop, logged only when asked), and holds the
call-complete notification until the caller is in a state that may complete:

* WComp, as for unary calls (after the null push of an in pipe, after the null pull of an
  out pipe or of both, after a cancel);
* Push, when the server ended the call while the caller was still pushing.

complete() before the notification answers 997, the first one after it is final, later
calls answer 1914 (the unary rules).
"""

from __future__ import annotations

import threading
import time
from typing import Any

from callstate import codes
from callstate.errors import CallError, CallPending, InvalidAsyncHandle
from callstate.lifecycle import (CANCEL, CANCEL_ISSUED, CLIENT, COMPLETE, COMPLETE_PENDING, COMPLETED, ENTER, HEADERS,
                                 NULL_PULL, NULL_PUSH, PULL, PUSH, RECEIVE_COMPLETE, SEND_COMPLETE, START_FAILED,
                                 STARTED, Lifecycle, cancel_kind, table_for, initial_move, pipe_notifiable)
from callstate.statelog import Entry, StateLog

_CANCELLED = codes.grpc_status_for(codes.RPC_S_CALL_CANCELLED).name

# what cancel() tells its adapter to do
ACT, UNSENT, DONE = "act", "unsent", "done"


class PipeCore:
    __slots__ = ("call_id", "kind", "lifecycle", "sent", "received", "headers_seen", "notified", "code", "reply",
                 "grpc_status", "details", "abortive_cancel", "_arrived", "_log", "_lock", "log_messages", "t_start")

    def __init__(self, call_id: str, kind: str, log: StateLog | None, log_messages: bool = False) -> None:
        self.call_id, self.kind = call_id, kind
        self.lifecycle = Lifecycle(CLIENT, kind=kind)
        self.sent = self.received = 0
        self.headers_seen = False
        self.notified = False
        self._arrived = False
        self.code: int | None = None
        self.reply: Any = None
        self.grpc_status = self.details = ""
        self.abortive_cancel = False
        self._log = log if log is not None and log.enabled else None
        self._lock = threading.Lock()      # the sync pipe notifies from gRPC's threads
        self.log_messages = log_messages
        self.t_start = time.time()
        if self._log is not None:
            self._log.append(Entry(self.t_start, CLIENT, call_id, self.lifecycle.state, None, ENTER,
                                   initial_move(CLIENT, kind)))

    # -- recording ------------------------------------------------------------------------------
    def _move(self, move: str, code: int | None = None, grpc_status: str | None = None, extra: str = "",
              cancel: str | None = None) -> None:
        prev, state = self.lifecycle.move(move)
        if self._log is not None:
            self._log.append(Entry(time.time(), CLIENT, self.call_id, state, prev, ENTER, move, code, grpc_status,
                                   extra or None, cancel, self.sent, self.received))

    def _event(self, event: str, detail: str | None = None) -> None:
        if self._log is not None and not self.lifecycle.ended:
            s = self.lifecycle.state
            self._log.append(Entry(time.time(), CLIENT, self.call_id, s, s, event, None, detail=detail))

    def event(self, name: str, detail: str | None = None) -> None:
        with self._lock:
            self._event(name, detail)

    @property
    def state(self) -> str:
        return self.lifecycle.state

    @property
    def history(self) -> list[str]:
        return list(self.lifecycle.history or ())

    # -- the caller's moves ----------------------------------------------------------------------
    def started(self) -> None:
        with self._lock:
            self._move(STARTED)
            if self._arrived and self.lifecycle.state == PULL:   # the status beat started()
                self._move(NULL_PULL)
            self._deliver_if_arrived()

    def start_failed(self, code: int, details: str) -> CallError:
        with self._lock:
            self._move(START_FAILED, code, None, details)
        return CallError(code, self.call_id, details=details)

    def headers(self) -> None:
        """The server's initial metadata arrived (once)."""
        with self._lock:
            if not self.headers_seen:
                self.headers_seen = True
                self._event(HEADERS)

    def pushed(self) -> None:
        """A push's send-complete notification (the message is on its way)."""
        self.sent += 1
        if self.log_messages:
            with self._lock:
                if self.lifecycle.state == PUSH:
                    self._move(SEND_COMPLETE, extra=f"seq={self.sent}")

    def pulled(self) -> None:
        """A pull's receive-complete notification (a message arrived)."""
        self.received += 1   # unlocked: only the one task or thread pulling touches it
        if self.log_messages:
            with self._lock:
                if RECEIVE_COMPLETE in table_for(CLIENT, self.kind)[self.lifecycle.state]:
                    self._move(RECEIVE_COMPLETE, extra=f"seq={self.received}")

    def can_push(self) -> bool:
        return self.lifecycle.state == PUSH and not self._arrived

    def null_push(self) -> None:
        """The caller ends its pipe (half-close): Push -> WComp (in) or Pull (both)."""
        with self._lock:
            if self.lifecycle.state != PUSH:
                raise CallError(codes.RPC_S_INVALID_ASYNC_CALL, self.call_id,
                                details=f"null push in state {self.state}: the pipe is not being pushed")
            self._move(NULL_PUSH)
            self._deliver_if_arrived()

    def stream_ended(self) -> None:
        """The server's pipe ended (its null push): Pull -> WComp; then the notification may follow."""
        with self._lock:
            if self.lifecycle.state == PULL:
                self._move(NULL_PULL)
            self._deliver_if_arrived()

    def cancel(self, abortive: bool, sent: bool) -> str:
        """RpcAsyncCancelCall's moves (-> Can -> WComp) under one lock hold; see CallCore.cancel."""
        with self._lock:
            if self.lifecycle.ended:
                raise InvalidAsyncHandle(self.call_id, "cancel")
            kind = cancel_kind(abortive)
            self._move(CANCEL, cancel=kind)
            if self._arrived:
                self._move(CANCEL_ISSUED, extra="already notified")
                action = DONE
            elif not sent:
                self._move(CANCEL_ISSUED, extra="before start")
                self._arrived = True
                self.code, self.grpc_status, self.details = codes.RPC_S_CALL_CANCELLED, _CANCELLED, "cancelled before start"
                action = UNSENT
            else:
                self.abortive_cancel = self.abortive_cancel or abortive
                self._move(CANCEL_ISSUED)
                action = ACT
            self._deliver_if_arrived()
        return action

    def notify(self, code: int, reply: Any = None, grpc_status: str = "", details: str = "") -> bool:
        """The call-complete notification (the call's status is in). Only the first counts."""
        with self._lock:
            if self._arrived:
                return False
            self._arrived = True
            self.code, self.reply, self.grpc_status, self.details = code, reply, grpc_status, details
            if self.lifecycle.state == PULL:   # the status is the end of the server's pipe too
                self._move(NULL_PULL)
            self._deliver_if_arrived()
        return True

    def _deliver_if_arrived(self) -> None:
        if self._arrived and not self.notified and pipe_notifiable(self.lifecycle.state):
            self.notified = True

    @property
    def outcome_known(self) -> bool:
        return self._arrived

    def complete(self) -> Any:
        """RpcAsyncCompleteCall: the reply (in pipe) or None, or CallError with the final code."""
        with self._lock:
            if self.lifecycle.ended:
                raise InvalidAsyncHandle(self.call_id, "complete")
            if not self.notified:
                self._event(COMPLETE_PENDING)
                raise CallPending(self.call_id)
            self._move(COMPLETE)
            code = self.code if self.code is not None else codes.RPC_S_CALL_FAILED
            self._move(COMPLETED, code, self.grpc_status or None, self.details)
        if code != codes.RPC_S_OK:
            raise CallError(code, self.call_id, grpc_status=self.grpc_status, details=self.details)
        return self.reply

    def status(self) -> int:
        if self.lifecycle.ended:
            return codes.RPC_S_INVALID_ASYNC_HANDLE
        if not self.notified or self.code is None:
            return codes.RPC_S_ASYNC_CALL_PENDING
        return self.code
