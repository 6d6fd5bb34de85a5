"""What the sync and asyncio pipes share beyond their `PipeCore`: how a pipe call is made (kind,
script, metadata, messages); `AsyncPipe` and `Pipe` add their verbs with the I/O."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from callstate import codes
from callstate.client.any_method import RequestLike, pipe_kind_of, request_message, script_metadata
from callstate.client.arguments import check_call, checked_timeout
from callstate.client.pipe_core import PipeCore
from callstate.errors import CallError, WaitTimedOut
from callstate.lifecycle import PIPE_IN, PIPE_KINDS, PIPE_OUT
from callstate.pipe_script import PipeScript, check_push, validate_pipe
from callstate.v1 import callstate_pb2 as pb
from callstate.wire import CANCEL_KEY_KEY, PIPE_SCRIPT_KEY, new_call_id, new_cancel_key

if TYPE_CHECKING:
    from callstate.schema import Method

# The caller's null push travels as a message of its own: the server then knows the end of
# the stream is a half-close, not a cancel.
NULL_PUSH_MESSAGE = pb.PipeMessage(null_push=True)
# What the drainer's read gives once no wait wants it any more (the wait that started it ran out).
STOPPED: Any = object()


def pipe_script_proto(script: PipeScript | pb.PipeScript | None) -> pb.PipeScript | None:
    return script.to_proto() if isinstance(script, PipeScript) else script


def check_script(script: pb.PipeScript | None, kind: str) -> None:
    """The server's checks of a pipe's script (RequestError naming the field)."""
    if script is not None:
        validate_pipe(script, kind)


def check_kind(kind: str) -> None:
    if kind not in PIPE_KINDS:
        raise ValueError(f"unknown pipe kind {kind!r}; expected one of {', '.join(PIPE_KINDS)}")


class PipeBase(PipeCore):
    """A pipe call on either surface: a `PipeCore` with its script and how its messages are made.
    `sent` and `received` count the messages pushed and pulled so far (their send-complete and
    receive-complete notifications)."""

    def __init__(self, client: Any, kind: str | None = None, script: PipeScript | pb.PipeScript | None = None, *,
                 call_id: str | None = None, timeout: float | None = None, log_messages: bool = False,
                 method: "str | Method | None" = None, request: RequestLike = None) -> None:
        # any method of a user's schema (client/any_method.py): its shape is the pipe's kind
        self.method: Method | None = client.method(method) if method is not None else None
        if self.method is not None:
            if isinstance(kind, (PipeScript, pb.PipeScript)) and script is None:
                kind, script = None, kind   # pipe(PipeScript(...), method=...), as start(Script(...), method=...)
            kind = pipe_kind_of(self.method, kind)
        check_kind(kind)
        # everything that can refuse the arguments runs before the call is made (and logged)
        check_call(script, (PipeScript, pb.PipeScript), call_id=call_id)
        timeout = checked_timeout(timeout) if timeout is not None else client.timeout
        self._script = pipe_script_proto(script)
        # a user's method: the request an out pipe sends, and what push() sends when given nothing
        self.request = request_message(self.method, request) if self.method is not None else None
        super().__init__(call_id or new_call_id(), kind, client.log, log_messages,
                         self.method.name if self.method is not None else None, client=client,
                         cancel_key=new_cancel_key(), timeout=timeout)
        self._rpc: Any = None
        # The surfaces' drainer pulls while a wait() is under way, or for ever once a callback
        # waits: a wait that runs out stops it, so the caller's own pull() after it reads on (the
        # message the drainer was reading is kept for it, `_stash`) instead of racing it for the stream.
        self._waits = 0
        self._drain_for_ever = False
        self._stash: list[Any] = []

    def _drain_wanted(self) -> bool:
        """Whether the drainer reads on: a wait() is under way, or a callback waits."""
        return self._drain_for_ever or self._waits > 0

    def on_notification(self, callback: Callable[[Any], None]) -> None:
        """Call `callback(pipe)` when the notification arrives (at once if it has), without
        pulling the server's messages as `add_done_callback` does to let the status in: for a
        driver that is pulling them itself (pipe_drive.py's pacing)."""
        PipeCore.add_done_callback(self, callback)

    def _metadata(self) -> tuple[tuple[str, Any], ...]:
        """The call's metadata plus a pipe's own: its cancel key (a stream has no request message
        to carry it) and, for PipeIn/PipeBoth, its script (their first message comes too late)."""
        if self.method is not None:
            return self._client._metadata(self.call_id, script_metadata(self._script, self._cancel_key))
        extra: tuple[tuple[str, Any], ...] = ((CANCEL_KEY_KEY, self._cancel_key),)
        if self._script is not None and self.kind != PIPE_OUT:
            extra += ((PIPE_SCRIPT_KEY, self._script.SerializeToString()),)
        return self._client._metadata(self.call_id, extra)

    def _request(self) -> Any:
        """PipeOut's one request message (a user's method: the pipe's request)."""
        if self.request is not None:
            return self.request
        return pb.PipeRequest(call_id=self.call_id, script=self._script)

    def _rpc_maker(self) -> Any:
        """The multicallable that opens the stream: the Emulator's pipe of the kind, or the user's method."""
        if self.method is not None:
            return self._client._rpc_of(self.method)
        stub = self._client._stub
        return {PIPE_OUT: stub.PipeOut, PIPE_IN: stub.PipeIn}.get(self.kind, stub.PipeBoth)

    def _message(self, payload: Any, seq: int) -> Any:
        """The message one push sends: PipeMessage(seq, payload) on the Emulator; on a user's
        method, `payload` as its request (a message, a dict, JSON text; None or b"": the pipe's request).
        Refused (ValueError) when the server would not take it: the limit is the payload's size on
        the Emulator, the message's own on a user's method (a dict's len() is not its size)."""
        if self.method is None:
            if not isinstance(payload, bytes):   # as a unary call's payload is refused
                raise TypeError(f"push: a message must be bytes, not {type(payload).__name__}")
            check_push(payload)
            return pb.PipeMessage(seq=seq, payload=payload)
        where = f"{self.method.name} push {seq}"
        if payload is None or payload == b"":
            from callstate.schema.model import require_initialized   # loaded with the schema already

            msg = self.request
            require_initialized(msg, where)
        else:
            msg = request_message(self.method, payload, where)
        check_push(msg)
        return msg

    def _ends_pipe(self, msg: Any) -> bool:
        """Whether a pulled message is the server's null push (the Emulator's own; a user's method has none)."""
        return self.method is None and msg.null_push

    @property
    def _null_push_message(self) -> Any:
        """What a null push sends before the half-close: a message of its own on the Emulator; on a
        user's method nothing (the half-close is the null push: a stand-in knows the method's shape)."""
        return NULL_PUSH_MESSAGE if self.method is None else None

    def headers_timed_out(self, timeout: float) -> WaitTimedOut:
        """`headers(timeout)` ran out: 1460 (a TimeoutError), the pipe left as it was, as `result(timeout)`'s."""
        err = WaitTimedOut(self.call_id, timeout)
        err.details = f"no headers within {timeout:g}s (the call is still pending)"
        return err

    def _need_rpc(self, what: str) -> PipeCore:
        if self._rpc is None:
            raise CallError(codes.RPC_S_INVALID_ASYNC_CALL, self.call_id, details=f"{what}() before start()")
        return self
