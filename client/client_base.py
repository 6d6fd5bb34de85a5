"""What `Client` and `AsyncClient` share: the target, the channel and its access options, the
state log, the calls still live (close() ends them), and how a call's request and metadata are
made, for the Emulator's own methods and for any method of a user's schema (any_method.py).

The surfaces call down into it; it never calls up (docs/client-design.md)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from callstate import codes, in_process
from callstate.client.any_method import MethodRequest, check_request, multicallable, resolve
from callstate.client.arguments import check_call, check_client, checked_timeout
from callstate.client.call_core import CLIENT_IS_CLOSED, CallCore
from callstate.client.channel import ChannelSettings, PemSource
from callstate.lifecycle import CLIENT, CLIENT_CLOSED, C
from callstate.script import Script, ValidScripts, check_call_id
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
    request = pb.CallRequest(call_id=call_id, cancel_key=cancel_key)   # the same message, made cheaper:
    if script is not None:
        request.script.CopyFrom(script)   # cheaper than the constructor's copy
    if payload:
        request.payload = payload         # (an empty one is the field's default)
    return request


# A client's reflection read blocks the thread it runs on: on the loop that serves the target,
# nothing answers it.
ON_THIS_LOOP = ("the server runs on this event loop (an EmulatorServer in this process), which cannot answer "
                "a blocking reflection read made on it: give the client the schema (schema=, e.g. the "
                "one the server was given) or make the call from another thread")


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
        check_client(target, log)
        self.target = target
        self.timeout = checked_timeout(timeout)
        # TLS, token, keepalive (client/channel.py)
        self.settings = settings or ChannelSettings(tls_ca=tls_ca, tls_cert=tls_cert, tls_key=tls_key, token=token,
                                                    keepalive=keepalive)
        self._auth_metadata = self.settings.metadata  # sent with every call and notice
        self.closed = False
        # a path: the client opens (and closes) the log; any sink with append() is used as given
        self._live: set[CallCore] = set()   # made (in the log) and not yet ended: close() ends them
        self._owns_log = isinstance(log, (str, Path))
        self.log: StateLog | None = StateLog(log) if isinstance(log, (str, Path)) else log
        try:   # a client that cannot be made closes the log it opened (its writer thread, its file)
            # tracing (True: the global OpenTelemetry provider, or a TracerProvider): a span per call
            self._tracer: Any = None
            if tracing:
                from callstate.observe import ObservedLog
                from callstate.observe.tracing import CallTracer
                self._tracer = CallTracer(CLIENT, None if tracing is True else tracing)
                self.log = ObservedLog(self.log, [self._tracer.observe])  # type: ignore[assignment]
            self._channel = type(self)._open_channel(self.settings, target, channel_options)
        except BaseException:
            self._close_log()
            raise
        self._stub = pb_grpc.EmulatorStub(self._channel)
        self._home_loop: Any = getattr(self._channel, "_loop", None)   # grpc.aio's record of its loop (sync: None)
        self.schema = schema          # a user's services (any_method.py); None: read by reflection on first use
        self._rpcs: dict[str, Any] = {}
        self._valid_scripts = ValidScripts()   # as the server keeps them (server/dispatch.py)

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"open, {len(self._live)} call(s) live"
        return f"<{type(self).__name__} {self.target} {state}>"

    def unusable(self) -> str | None:
        """Why the client makes no call now (None: it does); `start()` refuses with it (1915):
        closed, or (asyncio) not on the event loop its channel belongs to, where grpc.aio's
        calls cannot work (the loop running when the client was made, else the thread's default)."""
        if self.closed:
            return CLIENT_IS_CLOSED
        home = self._home_loop
        if home is None or home is asyncio._get_running_loop():
            return None
        return ("the AsyncClient belongs to another event loop" + (", now closed" if home.is_closed() else "")
                + " (it was made outside the loop that runs this call: before asyncio.run(), or in an earlier"
                  " test's loop); make the client in the loop that uses it")

    # -- any method of a user's schema (client/any_method.py) -----------------------------------
    def method(self, name: "str | Method") -> "Method":
        """A method of the client's schema by name ("pkg.Svc/Method"); without a schema, the
        target's reflection is read once, now (blocking). SchemaError when unknown."""
        from callstate.schema import SchemaError, from_reflection   # protobuf's pools: for a user's methods only

        def load() -> "Schema":
            loop = asyncio._get_running_loop()
            if in_process.served_on(self.target, loop):   # the read would wait for this very loop
                raise SchemaError(f"reflection from {self.target}: {ON_THIS_LOOP}")
            return from_reflection(self.target, credentials=self.settings.credentials(),
                                   metadata=self.settings.metadata, explain=self.settings.explain)
        self.schema, found = resolve(self.schema, name, load)
        return found

    def _rpc_of(self, method: "Method") -> Any:
        """The method's multicallable on this client's channel (made once)."""
        rpc = self._rpcs.get(method.path)
        if rpc is None:
            rpc = self._rpcs[method.path] = multicallable(self._channel, method)
        return rpc

    def _check_request(self, request: pb.CallRequest | MethodRequest) -> None:
        """What the server would refuse, checked before the call goes out (RequestError naming the
        field: `any_method.check_request`, which gives an Emulator request `validate_request`). An
        Emulator script once found valid is known by its bytes (`ValidScripts`): with a payload
        valid with any script, what is left is the call id."""
        if not isinstance(request, pb.CallRequest):
            check_request(request)
        elif self._valid_scripts.check(request):
            check_call_id(request.call_id)

    def _unary(self, request: pb.CallRequest | MethodRequest) -> tuple[Any, Any, tuple[tuple[str, Any], ...]]:
        """How a unary call goes out: (multicallable, message, metadata beyond the id and token)."""
        if isinstance(request, pb.CallRequest):
            return self._stub.Call, request, ()
        return self._rpc_of(request.method), request.message, request.metadata()

    def _metadata(self, call_id: str, extra: tuple[tuple[str, Any], ...] = ()) -> tuple[tuple[str, Any], ...]:
        """The call's gRPC metadata: its id, the token, and the trace context when tracing."""
        if self._tracer is None:
            if not self._auth_metadata and not extra:   # the common case: the id alone
                return ((CALL_ID_KEY, call_id),)
            return ((CALL_ID_KEY, call_id),) + self._auth_metadata + extra
        return ((CALL_ID_KEY, call_id),) + self._auth_metadata + self._tracer.headers(call_id) + extra

    def _notice_metadata(self, call_id: str) -> tuple[tuple[str, Any], ...]:
        """A cancel notice's metadata: the call's id too, so a balancer that routes on it
        (deploy/nginx: `hash $http_callstate_call_id`) takes the notice to the call's replica."""
        return ((CALL_ID_KEY, call_id),) + self._auth_metadata

    def _outgoing(self, script: Script | pb.Script | None, payload: bytes, call_id: str | None,
                  method: "str | Method | None", request: Any, queue: Any = None,
                  on_complete: Any = None) -> pb.CallRequest | MethodRequest:
        """What `prepare()` sends: a CallRequest, or on a user's `method` a MethodRequest (see `prepare`).
        Its arguments (and the queue and callback it is to notify) are checked first: nothing of
        a call refused here is logged."""
        check_call(script, (Script, pb.Script), payload=payload, call_id=call_id, queue=queue, on_complete=on_complete)
        call_id, cancel_key = call_id or new_call_id(), new_cancel_key()
        if method is None:
            return request_for(script, payload, call_id, cancel_key)
        return MethodRequest.make(self.method(method), request, script, call_id, cancel_key)

    def _note_closing(self) -> None:
        """Before the channel closes under them: each call still in flight records that the
        client cut it off (the `client_closed` event), which explains its 1722 to the checker."""
        for call in list(self._live):
            if not call.outcome_known and call.state != C:
                call.event(CLIENT_CLOSED)

    def _end_live_calls(self) -> None:
        """Closing the client ends its calls: one never started ends C -> End (1915), outstanding
        ones are notified with 1722 and every call not yet completed is completed on the caller's
        behalf, so each reaches End in the log before the log closes (a later complete() answers
        1914). A call its caller is completing at this moment (another thread) is left to that
        caller: the core's lock makes the two completes one."""
        for call in list(self._live):
            if call.end_unstarted():   # prepared and never started (or cancelled): it never will be
                continue
            code, status, details = codes.client_outcome(None, None, None, cancelled_here=True)
            call.notify(code, None, status, details)
            call._complete_quietly()
        self._live.clear()

    def _close_log(self) -> None:
        if self._owns_log and self.log is not None:
            self.log.close()
