"""The synchronous client: `Client` and `Call`, the twins of `AsyncClient` and `AsyncCall`.

    with Client("127.0.0.1:50051") as client:
        call = client.start(Script("hold", on_cancel="complete"))
        call.cancel(abortive=False, timeout=2.0)
        reply = call.result()     # blocking wait for the notification, then complete

Notifications arrive on gRPC's threads; callbacks run there too.
"""

from __future__ import annotations

import queue
import threading
from pathlib import Path
from typing import Any, Callable

import grpc

from callstate import codes
from callstate.errors import CallError
from callstate.script import Script, ScriptError, validate
from callstate.statelog import StateLog
from callstate.v1 import callstate_pb2 as pb
from callstate.v1 import callstate_pb2_grpc as pb_grpc
from callstate.client.common import ClientBase, new_call_id, outcome_of_error, request_for
from callstate.client.core import CallCore


class CompletionQueue:
    """A completion-port-like queue many calls post to when notified (thread-safe)."""

    def __init__(self) -> None:
        self._queue: queue.Queue[Call] = queue.Queue()

    def post(self, call: "Call") -> None:
        self._queue.put_nowait(call)

    def get(self, timeout: float | None = None) -> "Call":
        """The next notified call; queue.Empty on timeout."""
        return self._queue.get(timeout=timeout)

    def qsize(self) -> int:
        return self._queue.qsize()


class Call:
    """One call on the caller's side, driven by gRPC's threads."""

    def __init__(self, client: "Client", request: pb.CallRequest) -> None:
        self._client = client
        self._request = request
        self._core = CallCore(request.call_id, self, client.log)
        self._future: grpc.Future | None = None
        self._notified = threading.Event()
        self._escalation: threading.Timer | None = None
        self._core.add_done_callback(lambda _call: self._notified.set())

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
        return self._core.code

    def start(self) -> "Call":
        """C -> WComp: send the call. Raises CallError (C -> End) when it cannot be made."""
        if self.state != "C":
            raise CallError(codes.RPC_S_INVALID_ASYNC_CALL, self.call_id, details=f"start() in state {self.state}")
        if self._client.closed:
            raise self._core.start_failed(codes.RPC_S_INVALID_ASYNC_CALL, "the client is closed")
        if self._request.HasField("script"):
            try:
                validate(self._request.script)
            except ScriptError as exc:
                raise self._core.start_failed(codes.RPC_S_INVALID_ARG, str(exc)) from None
        self._future = self._client._stub.Call.future(self._request, metadata=((codes.CALL_ID_KEY, self.call_id),),
                                                      timeout=self._client.timeout)
        self._core.started()
        self._future.add_done_callback(self._on_done)
        return self

    def cancel(self, abortive: bool = True, timeout: float | None = None) -> None:
        """RpcAsyncCancelCall; see AsyncCall.cancel."""
        outstanding = self._core.begin_cancel(abortive)
        if not outstanding:
            self._core.cancel_issued("already notified")
            return
        if self._future is None:
            self._core.cancel_issued("before start")
            self._core.notify(codes.RPC_S_CALL_CANCELLED, grpc_status="CANCELLED", details="cancelled before start")
            return
        if abortive:
            self._core.cancel_issued("abortive")
            self._future.cancel()
            return
        notice = self._client._stub.Cancel.future(pb.CancelRequest(call_id=self.call_id), timeout=self._client.timeout)
        notice.add_done_callback(
            lambda f: self._core.event("cancel_sent", "delivered" if f.exception() is None else "not sent"))
        self._core.cancel_issued("non-abortive")
        if timeout is not None:
            self._escalation = threading.Timer(timeout, self._escalate, (timeout,))
            self._escalation.daemon = True
            self._escalation.start()

    def _escalate(self, timeout: float) -> None:
        if not self._core.notified and not self._core.lifecycle.ended:
            self._core.event("cancel_escalated", f"no answer {timeout:g}s after the cancel notice")
            self.cancel(abortive=True)

    def _on_done(self, future: grpc.Future) -> None:
        if self._escalation is not None:
            self._escalation.cancel()
        if future.cancelled():
            self._core.notify(codes.RPC_S_CALL_CANCELLED, None, "CANCELLED", "cancelled by the caller")
            return
        err = future.exception()
        if err is None:
            self._core.notify(codes.RPC_S_OK, future.result(), "OK", "")
        elif isinstance(err, grpc.Call):
            code, status, details = outcome_of_error(err.code(), err.trailing_metadata(), err.details())
            self._core.notify(code, None, status, details)
        else:  # pragma: no cover - grpc always raises RpcError that is also a Call
            self._core.notify(codes.RPC_S_CALL_FAILED, None, "UNKNOWN", repr(err))

    def status(self) -> int:
        return self._core.status()

    def done(self) -> bool:
        return self._core.notified

    def complete(self) -> pb.CallReply:
        return self._core.complete()

    def add_done_callback(self, callback: Callable[["Call"], None]) -> None:
        self._core.add_done_callback(callback)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until notified; False on timeout. Does not complete."""
        return self._notified.wait(timeout)

    def result(self, timeout: float | None = None) -> pb.CallReply:
        if not self.wait(timeout):
            raise CallError(codes.RPC_S_TIMEOUT, self.call_id, details=f"no notification within {timeout:g}s")
        return self.complete()


class Client(ClientBase):
    """Calls to one callstate server over one grpc channel, from any thread."""

    def __init__(self, target: str, *, log: str | Path | StateLog | None = None, timeout: float | None = None,
                 channel_options: list[tuple[str, Any]] | None = None) -> None:
        super().__init__(target, log=log, timeout=timeout)
        self._channel = grpc.insecure_channel(target, options=channel_options or [])
        self._stub = pb_grpc.EmulatorStub(self._channel)

    def prepare(self, script: Script | pb.Script | None = None, *, payload: bytes = b"", call_id: str | None = None,
                queue: CompletionQueue | None = None, on_complete: Callable[[Call], None] | None = None) -> Call:
        call = Call(self, request_for(script, payload, call_id or new_call_id()))
        if queue is not None:
            call._core.add_done_callback(queue.post)
        if on_complete is not None:
            call._core.add_done_callback(on_complete)
        return call

    def start(self, script: Script | pb.Script | None = None, **kwargs: Any) -> Call:
        return self.prepare(script, **kwargs).start()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._channel.close()
            self._close_log()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
