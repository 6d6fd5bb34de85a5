"""What the sync and asyncio surfaces share, below them: the caller's view of a call's core
(`CallBase`, for calls and pipes alike), the client's bookkeeping (`ClientBase`), and a cancel
notice's fate and escalation (`NoticeBase`, with the words the state log uses for it).

Nothing here calls up into a surface: `Client`/`AsyncClient` and their calls call down into
this module, the core (call_core.py) and the channel (docs/client-design.md)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import grpc

from callstate import codes
from callstate.client.any_method import MethodRequest, multicallable, resolve
from callstate.client.call_core import ACT, CoreBase
from callstate.client.channel import ChannelSettings, PemSource
from callstate.errors import CallError
from callstate.lifecycle import C, CANCEL_ESCALATED, CANCEL_SENT, CLIENT, CLIENT_CLOSED, LifecycleError
from callstate.script import RequestError, Script
from callstate.logfile import StateLog
from callstate.wire import CALL_ID_KEY, DEFAULT_KEEPALIVE, new_call_id, new_cancel_key
from callstate.v1 import callstate_pb2 as pb
from callstate.v1 import callstate_pb2_grpc as pb_grpc

if TYPE_CHECKING:
    from callstate.schema import Method, Schema


def request_for(script: Script | pb.Script | None, payload: bytes, call_id: str, cancel_key: str = "") -> pb.CallRequest:
    """The wire request; a Python `Script` is converted (raising ScriptError on bad names).
    `cancel_key`: the call's secret, repeated in its cancel notices (only they reach it)."""
    if isinstance(script, Script):
        script = script.to_proto()
    return pb.CallRequest(call_id=call_id, script=script, payload=payload, cancel_key=cancel_key)


def notice_outcome(reply: pb.CancelReply) -> str:
    """The `cancel_sent` event's detail: what became of a non-abortive cancel notice."""
    if not reply.delivered:
        return f"not delivered: the call had already ended ({reply.state or 'unknown'})"
    return f"delivered in {reply.state}" if reply.state else "delivered: kept for the dispatch"


NOTICE_CLIENT_CLOSED = "unknown: the client was closed before the notice was answered"


def notice_failed(status: grpc.StatusCode | None) -> str:
    if status == grpc.StatusCode.UNIMPLEMENTED:
        return f"not delivered: {status.name}: {NOT_CALLSTATE}"
    return f"not delivered: {status.name if status else 'failed'}"


# A server that is not callstate has no Emulator/Cancel: a non-abortive notice has nowhere to
# go, and waiting on would hold the caller until the server's own answer (maybe never), so the
# cancel escalates to abortive at once.
NOT_CALLSTATE = "the server does not serve callstate.v1.Emulator/Cancel (not callstate)"
ESCALATED_NOT_CALLSTATE = "the cancel notice has nowhere to go: " + NOT_CALLSTATE


def notice_unanswerable(status: grpc.StatusCode | None) -> bool:
    """The notice cannot reach any server-side call: escalate the cancel at once."""
    return status == grpc.StatusCode.UNIMPLEMENTED


class NoticeBase:
    """A non-abortive cancel's notice to the server, and the timer that escalates the cancel to
    abortive when the notice goes unanswered: what becomes of it is logged here; sending it and
    timing it is the I/O style's (`AsyncNotice` in notice_aio.py, `ThreadNotice` in notice_sync.py).
    `abort`: the call's abortive cancel, for the escalation."""

    def __init__(self, client: "ClientBase", core: CoreBase, request: pb.CancelRequest, timeout: float | None,
                 abort: Callable[[], None]) -> None:
        self._client = client
        self._core = core
        self._request = request            # the call's id and the key it was made with (proof of ownership)
        self._metadata = client._notice_metadata(request.call_id)
        self._timeout = timeout            # the notice's gRPC deadline: the call's
        self._abort = abort
        self._timer: Any = None            # the escalation timer

    send: Callable[[float | None], None]   # the notice goes out; escalate after that many seconds (None: never)

    @classmethod
    def of(cls, call: "CallBase") -> "NoticeBase":
        """The call's notice, made on its first non-abortive cancel."""
        if call._notice is None:
            call._notice = cls(call._client, call._core, call._notice_request(), call._timeout,
                               lambda: call.cancel(abortive=True))
        return call._notice

    def answered(self, reply: pb.CancelReply) -> None:
        self._core.event(CANCEL_SENT, notice_outcome(reply))

    def failed(self, status: grpc.StatusCode | None) -> None:
        self._core.event(CANCEL_SENT, notice_failed(status))
        if notice_unanswerable(status):
            self.escalate(0.0, ESCALATED_NOT_CALLSTATE)

    def cut_off(self) -> None:
        self._core.event(CANCEL_SENT, NOTICE_CLIENT_CLOSED)

    def escalate(self, timeout: float, why: str = "") -> None:
        """No answer in time (or none possible): the cancel becomes abortive, unless the call ended."""
        if self._core.outcome_known or self._core.lifecycle.ended:
            return
        self._core.event(CANCEL_ESCALATED, why or f"no answer {timeout:g}s after the cancel notice")
        try:
            self._abort()
        except (CallError, LifecycleError):
            pass   # the caller completed or cancelled it meanwhile (sync: from another thread)

    def stop(self) -> None:
        """The outcome is in: an unanswered notice no longer needs escalating."""
        if self._timer is not None:
            self._timer.cancel()


class CallBase:
    """What calls and pipes share on both surfaces: the caller's view of one core (`CallCore`
    or `PipeCore`), the checks before a start, and completing.

    It calls only down (the core, the client's bookkeeping, and the surface's notice type, given
    as data): each surface's call writes its own `start()` with its I/O (aio.py, sync.py,
    pipe_aio.py, pipe_sync.py).
    """

    _notice_type: type[NoticeBase]         # each surface's: AsyncNotice (notice_aio.py), ThreadNotice (notice_sync.py)
    _notice: NoticeBase | None = None      # made by the first non-abortive cancel
    _rpc: Any = None                       # the gRPC call once sent (grpc.aio's call, or grpc's future)

    def __init__(self, client: "ClientBase", core: CoreBase, cancel_key: str, timeout: float | None) -> None:
        self._client = client
        self._core = core
        self._cancel_key = cancel_key      # repeated in the call's cancel notices: proof of ownership
        self._timeout = timeout            # the call's gRPC deadline, in seconds (None: none)

    @property
    def call_id(self) -> str:
        return self._core.call_id

    @property
    def state(self) -> str:
        return self._core.state

    @property
    def history(self) -> list[str]:
        """The client states entered so far, e.g. ['C', 'WComp', 'Comp', 'End']."""
        return self._core.history

    @property
    def code(self) -> int | None:
        """The final code once notified (None before)."""
        return self._core.code

    def _notice_request(self) -> pb.CancelRequest:
        """The cancel notice: the call's id and the key it was made with (proof of ownership)."""
        return pb.CancelRequest(call_id=self._core.call_id, cancel_key=self._cancel_key)

    def _admit(self, check: Callable[..., None], *subject: Any) -> None:
        """What `start()` checks before the call goes out: in C, the client open, and
        `check(*subject)` (the server's own checks, so a refused call never goes out). Refused:
        CallError (C -> End, nothing to complete); admitted: the client counts the call live
        until it is completed."""
        core = self._core
        if core.state != C:
            raise CallError(codes.RPC_S_INVALID_ASYNC_CALL, core.call_id, details=f"start() in state {core.state}")
        if self._client.closed:
            raise core.start_failed(codes.RPC_S_INVALID_ASYNC_CALL, "the client is closed")
        try:
            check(*subject)
        except RequestError as exc:
            raise core.start_failed(codes.RPC_S_INVALID_ARG, str(exc)) from None
        self._client._live.add(self)

    def cancel(self, abortive: bool = True, timeout: float | None = None) -> None:
        """RpcAsyncCancelCall. Abortive: a gRPC cancel (RST_STREAM); the notification is rushed.
        Non-abortive: a cancel notice to the server, and keep waiting for its own answer; after
        `timeout` seconds without one, escalate to an abortive cancel. Either way the call must
        still be waited for and completed. After the final complete: 1914."""
        if self._core.cancel(abortive, self._rpc is not None) != ACT:
            return
        if abortive:
            self._rpc.cancel()
        else:
            self._notice_type.of(self).send(timeout)

    def _stop_escalation(self) -> None:
        if self._notice is not None:
            self._notice.stop()

    def status(self) -> int:
        """RpcAsyncGetCallStatus: 997 while pending, then the final code (not consumed)."""
        return self._core.status()

    def done(self) -> bool:
        """True once the call-complete notification has arrived."""
        return self._core.notified

    def complete(self) -> Any:
        """RpcAsyncCompleteCall: the reply, or CallError (997 pending, 1914 after the final one)."""
        try:
            return self._core.complete()
        finally:
            if self._core.lifecycle.ended:   # no longer the client's to end at close()
                self._client._live.discard(self)

    def _complete_quietly(self) -> None:
        """Complete on the caller's behalf (its final code is in the log)."""
        self._core.completed_for_caller = True
        try:
            self.complete()
        except CallError:
            pass

    def _result_after_wait(self) -> Any:
        """What `result()` gives once notified (see CoreBase.result)."""
        try:
            return self._core.result()
        finally:
            if self._core.lifecycle.ended:
                self._client._live.discard(self)

    def add_done_callback(self, callback: Callable[[Any], None]) -> None:
        """Call `callback(call)` when the notification arrives (at once if it has)."""
        self._core.add_done_callback(callback)

    def _subscribe(self, queue: Any, on_complete: Callable[[Any], None] | None) -> Any:
        """`prepare()`'s notification styles: a completion queue and a callback (either may be None)."""
        if queue is not None:
            self.add_done_callback(queue.post)
        if on_complete is not None:
            self.add_done_callback(on_complete)
        return self


class ClientBase:
    """Target, state log and options shared by `Client` and `AsyncClient`.

    Access (README, "Security"): `tls_ca`, `tls_cert`, `tls_key` (PEM paths or bytes), `token`
    (sent as `authorization: Bearer`), `keepalive` (seconds; None: off); or all of them as one
    `settings=ChannelSettings(...)` (client/channel.py), which then replaces those arguments.

    Any service (client/any_method.py): `schema`, a `callstate.schema.Schema` whose methods
    `prepare`/`start`/`pipe` call by name (`method=`); None: the target's reflection, read once."""

    # how the surface's channel is opened (ChannelSettings.aio_channel or .sync_channel)
    _open_channel: Callable[[ChannelSettings, str, list[tuple[str, Any]] | None], Any]

    def __init__(self, target: str, *, log: str | Path | StateLog | None = None, timeout: float | None = None,
                 channel_options: list[tuple[str, Any]] | None = None, tls_ca: PemSource = None,
                 tls_cert: PemSource = None, tls_key: PemSource = None, token: str | None = None,
                 keepalive: float | None = DEFAULT_KEEPALIVE, settings: ChannelSettings | None = None,
                 tracing: Any = False, schema: "Schema | None" = None) -> None:
        self.target = target
        self.timeout = timeout
        # TLS, token, keepalive (client/channel.py)
        self.settings = settings or ChannelSettings(tls_ca=tls_ca, tls_cert=tls_cert, tls_key=tls_key, token=token,
                                                    keepalive=keepalive)
        self._auth_metadata = self.settings.metadata  # sent with every call and notice
        self.closed = False
        # a path: the client opens (and closes) the log; any sink with append() is used as given
        self._live: set[CallBase] = set()   # started and not completed: close() ends them
        self._owns_log = isinstance(log, (str, Path))
        self.log: StateLog | None = StateLog(log) if isinstance(log, (str, Path)) else log
        # tracing (True: the global OpenTelemetry provider, or a TracerProvider): a span per call
        self._tracer: Any = None
        if tracing:
            from callstate.observe import ObservedLog
            from callstate.observe.tracing import CallTracer
            self._tracer = CallTracer(CLIENT, None if tracing is True else tracing)
            self.log = ObservedLog(self.log, [self._tracer.observe])  # type: ignore[assignment]
        self._channel = type(self)._open_channel(self.settings, target, channel_options)
        self._stub = pb_grpc.EmulatorStub(self._channel)
        self.schema = schema          # a user's services (any_method.py); None: read by reflection on first use
        self._rpcs: dict[str, Any] = {}

    # -- any method of a user's schema (client/any_method.py) -----------------------------------
    def method(self, name: "str | Method") -> "Method":
        """A method of the client's schema by name ("pkg.Svc/Method"); without a schema, the
        target's reflection is read once, now (blocking). SchemaError when unknown."""
        from callstate.schema import from_reflection   # protobuf's pools: loaded for a user's methods only

        def load() -> "Schema":
            return from_reflection(self.target, credentials=self.settings.credentials(),
                                   metadata=self.settings.metadata)
        self.schema, found = resolve(self.schema, name, load)
        return found

    def _rpc_of(self, method: "Method") -> Any:
        """The method's multicallable on this client's channel (made once)."""
        rpc = self._rpcs.get(method.path)
        if rpc is None:
            rpc = self._rpcs[method.path] = multicallable(self._channel, method)
        return rpc

    def _unary(self, request: pb.CallRequest | MethodRequest) -> tuple[Any, Any, tuple[tuple[str, Any], ...]]:
        """How a unary call goes out: (multicallable, message, metadata beyond the id and token)."""
        if isinstance(request, pb.CallRequest):
            return self._stub.Call, request, ()
        return self._rpc_of(request.method), request.message, request.metadata()

    def _metadata(self, call_id: str, extra: tuple[tuple[str, Any], ...] = ()) -> tuple[tuple[str, Any], ...]:
        """The call's gRPC metadata: its id, the token, and the trace context when tracing."""
        if self._tracer is None:
            return ((CALL_ID_KEY, call_id),) + self._auth_metadata + extra
        return ((CALL_ID_KEY, call_id),) + self._auth_metadata + self._tracer.headers(call_id) + extra

    def _notice_metadata(self, call_id: str) -> tuple[tuple[str, Any], ...]:
        """A cancel notice's metadata: the call's id too, so a balancer that routes on it
        (deploy/nginx: `hash $http_callstate_call_id`) takes the notice to the call's replica."""
        return ((CALL_ID_KEY, call_id),) + self._auth_metadata

    def _outgoing(self, script: Script | pb.Script | None, payload: bytes, call_id: str | None,
                  method: "str | Method | None", request: Any) -> pb.CallRequest | MethodRequest:
        """What `prepare()` sends: a CallRequest, or on a user's `method` a MethodRequest (see `prepare`)."""
        call_id, cancel_key = call_id or new_call_id(), new_cancel_key()
        if method is None:
            return request_for(script, payload, call_id, cancel_key)
        return MethodRequest.make(self.method(method), request, script, call_id, cancel_key)

    def _note_closing(self) -> None:
        """Before the channel closes under them: each call still in flight records that the
        client cut it off (the `client_closed` event), which explains its 1722 to the checker."""
        for call in list(self._live):
            if not call._core.outcome_known:
                call._core.event(CLIENT_CLOSED)

    def _end_live_calls(self) -> None:
        """Closing the client ends its calls: outstanding ones are notified with 1722 and every
        call not yet completed is completed on the caller's behalf, so each reaches End in the
        log before the log closes (a later complete() answers 1914). A call its caller is
        completing at this moment (another thread) is left to that caller: the core's lock
        makes the two completes one."""
        for call in list(self._live):
            code, status, details = codes.client_outcome(None, None, None, cancelled_here=True)
            call._core.notify(code, None, status, details)
            call._complete_quietly()
        self._live.clear()

    def _close_log(self) -> None:
        if self._owns_log and self.log is not None:
            self.log.close()
