"""A non-abortive cancel's notice to the server: what becomes of it, in the words the state log
uses (the `cancel_sent` event's detail), and when the cancel escalates to abortive.

`NoticeBase` logs the notice's fate on its call; sending it and timing it is the I/O style's
(`AsyncNotice` in notice_aio.py, `ThreadNotice` in notice_sync.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

import grpc

from callstate.errors import CallError
from callstate.lifecycle import CANCEL_ESCALATED, CANCEL_SENT, NOTICE_KEPT, LifecycleError
from callstate.v1 import callstate_pb2 as pb

if TYPE_CHECKING:
    from callstate.client.call_core import CallCore
    from callstate.client.client_base import ClientBase


def notice_outcome(reply: pb.CancelReply) -> str:
    """The `cancel_sent` event's detail: what became of a non-abortive cancel notice."""
    if not reply.delivered:
        return f"not delivered: the call had already ended ({reply.state or 'unknown'})"
    return f"delivered in {reply.state}" if reply.state else NOTICE_KEPT


NOTICE_CLIENT_CLOSED = "unknown: the client was closed before the notice was answered"


def notice_failed(status: grpc.StatusCode | None) -> str:
    if status in UNANSWERABLE:
        return f"not delivered: {status.name}: {UNANSWERABLE[status]}"
    return f"not delivered: {status.name if status else 'failed'}"


# A server that is not callstate has no Emulator/Cancel: a non-abortive notice has nowhere to
# go, and waiting on would hold the caller until the server's own answer (maybe never), so the
# cancel escalates to abortive at once. So does a notice the server's --token refuses: a
# stand-in's own methods are open to a client without it, callstate.v1 is not.
NOT_CALLSTATE = "the server does not serve callstate.v1.Emulator/Cancel (not callstate)"
UNANSWERABLE = {grpc.StatusCode.UNIMPLEMENTED: NOT_CALLSTATE,
                grpc.StatusCode.UNAUTHENTICATED: "the server wants a token for callstate.v1.Emulator/Cancel "
                                                 "(--token, or CALLSTATE_TOKEN)",
                grpc.StatusCode.PERMISSION_DENIED: "the server refuses the notice (a wrong token, or a cancel key "
                                                   "not the call's)"}


class NoticeBase:
    """A non-abortive cancel's notice to the server, and the timer that escalates the cancel to
    abortive when the notice goes unanswered: what becomes of it is logged here; sending it and
    timing it is the I/O style's (`AsyncNotice` in notice_aio.py, `ThreadNotice` in notice_sync.py).
    `abort`: the call's abortive cancel, for the escalation."""

    def __init__(self, client: "ClientBase", call: "CallCore", request: pb.CancelRequest, timeout: float | None,
                 abort: Callable[[], None]) -> None:
        self._client = client
        self._call = call
        self._request = request            # the call's id and the key it was made with (proof of ownership)
        self._metadata = client._notice_metadata(request.call_id)
        self._timeout = timeout            # the notice's gRPC deadline: the call's
        self._abort = abort
        self._timer: Any = None            # the escalation timer

    send: Callable[[float | None], None]   # the notice goes out; escalate after that many seconds (None: never)

    @classmethod
    def of(cls, call: "CallCore") -> "NoticeBase":
        """The call's notice, made on its first non-abortive cancel."""
        if call._notice is None:
            # the call's id and the key it was made with (proof of ownership)
            request = pb.CancelRequest(call_id=call.call_id, cancel_key=call._cancel_key)
            call._notice = cls(call._client, call, request, call._timeout,
                               lambda: call.cancel(abortive=True))
        return call._notice

    def answered(self, reply: pb.CancelReply) -> None:
        self._call.event(CANCEL_SENT, notice_outcome(reply))

    def failed(self, status: grpc.StatusCode | None) -> None:
        self._call.event(CANCEL_SENT, notice_failed(status))
        if status in UNANSWERABLE:   # it cannot reach any server-side call: escalate the cancel at once
            self.escalate(0.0, "the cancel notice has nowhere to go: " + UNANSWERABLE[status])

    def cut_off(self) -> None:
        self._call.event(CANCEL_SENT, NOTICE_CLIENT_CLOSED)

    def escalate(self, timeout: float, why: str = "") -> None:
        """No answer in time (or none possible): the cancel becomes abortive, unless the call ended."""
        if self._call.outcome_known or self._call.lifecycle.ended:
            return
        self._call.event(CANCEL_ESCALATED, why or f"no answer {timeout:g}s after the cancel notice")
        try:
            self._abort()
        except (CallError, LifecycleError):
            pass   # the caller completed or cancelled it meanwhile (sync: from another thread)

    def stop(self) -> None:
        """The outcome is in: an unanswered notice no longer needs escalating."""
        if self._timer is not None:
            self._timer.cancel()
