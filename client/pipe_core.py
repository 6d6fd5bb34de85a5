"""The caller's side of one pipe call, without I/O: shared by the sync and asyncio pipes.

`PipeCore` is the unary `CallCore` on the client pipe table of its kind (C, Push, Pull, Can,
WComp, Comp, End), counting the messages pushed and pulled (each push's send-complete and
each pull's receive-complete notification is a self-loop, logged only when asked), with the
call-complete notification held until the caller is in a state that may complete:

* WComp, as for unary calls (after the null push of an in pipe, after the null pull of an
  out pipe or of both, after a cancel);
* Push, when the server ended the call while the caller was still pushing.

Everything else (cancel, notify, complete: 997 before the notification, final once, 1914
after) is the unary rules, in `CallCore`; `PipeBase` (pipe_surface.py) and the two pipes
(pipe_aio.py, pipe_sync.py) are `PipeCore`s that add the I/O.

The pipe rules a caller's push or pull must follow, each with its code (docs/model.md, "The
pipe rules"): a push on a pipe the caller does not push, or a pull on one it does not pull, is
1831 RPC_X_WRONG_PIPE_ORDER; a push after the caller's null push, or a push or pull once the
call is completed, is 1916 RPC_X_PIPE_CLOSED; a pull after the pull that returned the pipe's
end is 1918 RPC_X_PIPE_EMPTY; data after the server's own null push is the server breaking the
discipline, 1917 RPC_X_PIPE_DISCIPLINE_ERROR (logged as `pipe_breach`).
"""

from __future__ import annotations

from typing import Any

from callstate import codes
from callstate.client.call_core import ACT, DONE, UNSENT, CallCore
from callstate.errors import CallError
from callstate.lifecycle import (CAN, CLIENT, END, HEADERS, NULL_PULL, NULL_PUSH, PIPE_BREACH, PIPE_IN, PIPE_OUT, PULL, PUSH,
                                 RECEIVE_COMPLETE, SEND_COMPLETE, pipe_notifiable, table_for)
from callstate.logfile import StateLog

__all__ = ["ACT", "DONE", "UNSENT", "PipeCore"]


class PipeCore(CallCore):

    _notifiable = staticmethod(pipe_notifiable)
    _arrival_moves = {PULL: NULL_PULL}   # the status is the end of the server's pipe too
    sent: int
    received: int

    def __init__(self, call_id: str, kind: str, log: StateLog | None, log_messages: bool = False,
                 method_name: str | None = None, **call: Any) -> None:
        self.kind = kind
        self.headers_seen = False
        self.log_messages = log_messages
        self.pulled_end = False         # a pull returned the end of the server's pipe (its null pull)
        self.peer_null_pushed = False   # that end came as the server's own null-push message
        super().__init__(call_id, log, kind, method_name, **call)

    # -- the pipe's own moves ----------------------------------------------------------------------
    def headers_arrived(self) -> None:
        """The server's initial metadata arrived (logged once as the `headers` event)."""
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
                    self._move(SEND_COMPLETE, detail=f"seq={self.sent}")

    def pulled(self) -> None:
        """A pull's receive-complete notification (a message arrived)."""
        self.received += 1   # unlocked: only the one task or thread pulling touches it
        if self.log_messages:
            with self._lock:
                if RECEIVE_COMPLETE in table_for(CLIENT, self.kind)[self.lifecycle.state]:
                    self._move(RECEIVE_COMPLETE, detail=f"seq={self.received}")

    def can_push(self) -> bool:
        return self.lifecycle.state == PUSH and not self._arrived

    # -- the pipe rules: why a push or pull is refused before it touches the wire -------------------
    def push_refusal(self, what: str = "push") -> CallError | None:
        if self.kind == PIPE_OUT:
            return CallError(codes.RPC_X_WRONG_PIPE_ORDER, self.call_id,
                             details=f"{what} on an out pipe: only the server pushes on it")
        if not self.can_push():
            return CallError(codes.RPC_X_PIPE_CLOSED, self.call_id, details=f"{what} in state {self.state}: "
                             + ("the call has ended" if self._arrived or self.lifecycle.state == END
                                else "the call was cancelled" if CAN in (self.lifecycle.history or ())
                                else "the caller's pipe is closed (its null push was made)"))
        return None

    def pull_refusal(self) -> CallError | None:
        """Before a pull reads: None when it may read (after the server's null-push message it
        reads once more, to tell a discipline breach from the end)."""
        if self.kind == PIPE_IN:
            return CallError(codes.RPC_X_WRONG_PIPE_ORDER, self.call_id,
                             details="pull on an in pipe: only the server pulls from it")
        if self.lifecycle.state == END:
            return CallError(codes.RPC_X_PIPE_CLOSED, self.call_id, details="pull after the call was completed")
        if self.pulled_end and not self.peer_null_pushed:
            return self.past_the_end()
        return None

    def past_the_end(self) -> CallError:
        return CallError(codes.RPC_X_PIPE_EMPTY, self.call_id, details="pull after the pipe's end was pulled")

    def null_pull_message(self) -> None:
        """The server's explicit null-push message: the end of its pipe, before its status."""
        self.peer_null_pushed = True
        self.stream_ended()

    def after_peer_end(self, got_message: bool) -> CallError:
        """What the read after the server's null-push message found: a message is the server
        breaking the discipline (1917, logged); the stream's end, a pull past the end (1918)."""
        self.peer_null_pushed = False
        if not got_message:
            return self.past_the_end()
        with self._lock:
            if self.lifecycle.state != END:
                self._event(PIPE_BREACH, "the server pushed after its null push")
        return CallError(codes.RPC_X_PIPE_DISCIPLINE_ERROR, self.call_id,
                         details="the server pushed after its null push")

    def null_push(self) -> None:
        """The caller ends its pipe (half-close): Push -> WComp (in) or Pull (both). A null push is
        a push (of zero elements): refused as push() is (1831 on an out pipe, 1916 after the null
        push or once the call has ended), and never logged on a call whose outcome is in."""
        with self._lock:
            if (refusal := self.push_refusal("null push")) is not None:
                raise refusal
            self._move(NULL_PUSH)
            callbacks = self._deliver_if_arrived()
            owed = self._owe(callbacks)
        self._off_the_verb(callbacks, owed)   # the caller's close_push(): its callbacks run off its stack

    def stream_ended(self) -> None:
        """The server's pipe ended (its null push): Pull -> WComp; then the notification may follow."""
        self.pulled_end = True
        with self._lock:
            if self.lifecycle.state == PULL:
                self._move(NULL_PULL)
            callbacks = self._deliver_if_arrived()
            owed = self._owe(callbacks)
        self._off_the_verb(callbacks, owed)   # the caller's pull (or a drainer's): its callbacks run off its stack
