"""The caller's side of one pipe call, without I/O: shared by the sync and asyncio pipes.

`PipeCore` is the unary `CoreBase` on the client pipe table of its kind (C, Push, Pull, Can,
WComp, Comp, End), counting the messages pushed and pulled (each push's send-complete and
each pull's receive-complete notification is a self-loop, logged only when asked), with the
call-complete notification held until the caller is in a state that may complete:

* WComp, as for unary calls (after the null push of an in pipe, after the null pull of an
  out pipe or of both, after a cancel);
* Push, when the server ended the call while the caller was still pushing.

Everything else (cancel, notify, complete: 997 before the notification, final once, 1914
after) is the unary rules, in `CoreBase`.
"""

from __future__ import annotations

from typing import Any

from callstate import codes
from callstate.client.call_core import ACT, DONE, UNSENT, CoreBase
from callstate.errors import CallError
from callstate.lifecycle import (CLIENT, HEADERS, NULL_PULL, NULL_PUSH, PULL, PUSH, RECEIVE_COMPLETE, SEND_COMPLETE,
                                 pipe_notifiable, table_for)
from callstate.statelog import StateLog

__all__ = ["ACT", "DONE", "UNSENT", "PipeCore"]


class PipeCore(CoreBase):
    __slots__ = ("kind", "sent", "received", "headers_seen", "log_messages")

    _notifiable = staticmethod(pipe_notifiable)

    def __init__(self, call_id: str, kind: str, log: StateLog | None, log_messages: bool = False,
                 owner: Any = None) -> None:
        self.kind = kind
        self.sent = self.received = 0
        self.headers_seen = False
        self.log_messages = log_messages
        super().__init__(call_id, owner, log, kind)

    def _counts(self) -> tuple[int | None, int | None]:
        return self.sent, self.received

    def _on_arrival(self) -> None:
        if self.lifecycle.state == PULL:   # the status is the end of the server's pipe too
            self._move(NULL_PULL)

    # -- the pipe's own moves ----------------------------------------------------------------------
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

    def null_push(self) -> None:
        """The caller ends its pipe (half-close): Push -> WComp (in) or Pull (both)."""
        with self._lock:
            if self.lifecycle.state != PUSH:
                raise CallError(codes.RPC_S_INVALID_ASYNC_CALL, self.call_id,
                                details=f"null push in state {self.state}: the pipe is not being pushed")
            self._move(NULL_PUSH)
            callbacks = self._deliver_if_arrived()
        self._run(callbacks)

    def stream_ended(self) -> None:
        """The server's pipe ended (its null push): Pull -> WComp; then the notification may follow."""
        with self._lock:
            if self.lifecycle.state == PULL:
                self._move(NULL_PULL)
            callbacks = self._deliver_if_arrived()
        self._run(callbacks)
