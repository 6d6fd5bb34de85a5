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
from typing import Any

import grpc

from callstate import codes
from callstate.client.call_core import CallCore
from callstate.client.shared_surface import (ESCALATED_NOT_CALLSTATE, NOTICE_CLIENT_CLOSED, CallBase, ClientBase,
                                            notice_failed, notice_outcome, notice_unanswerable)
from callstate.lifecycle import CANCEL_SENT
from callstate.errors import CallError
from callstate.client.any_method import MethodRequest, check_request
from callstate.v1 import callstate_pb2 as pb


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


class ThreadNotices:
    """The cancel notice and its escalation timer on gRPC's and timer threads (Call, Pipe)."""

    _client: Any
    _core: Any
    _timeout: float | None
    _escalation: threading.Timer | None

    # from CallBase: _notice_request(), _escalate(timeout)
    _notice_request: Any
    _escalate: Any

    def _send_notice(self) -> None:
        notice = self._client._stub.Cancel.future(self._notice_request(),
                                                  metadata=self._client._notice_metadata(self.call_id),
                                                  timeout=self._timeout)
        notice.add_done_callback(self._on_notice_sent)

    def _on_notice_sent(self, notice: grpc.Future) -> None:
        if notice.cancelled():
            self._core.event(CANCEL_SENT, NOTICE_CLIENT_CLOSED)
        elif isinstance(err := notice.exception(), grpc.Call):
            self._core.event(CANCEL_SENT, notice_failed(err.code()))
            if notice_unanswerable(err.code()):
                self._escalate(0.0, ESCALATED_NOT_CALLSTATE)
        else:
            self._core.event(CANCEL_SENT, notice_outcome(notice.result()))

    def _arm_escalation(self, timeout: float) -> None:
        if self._escalation is not None:
            self._escalation.cancel()
        self._escalation = threading.Timer(timeout, self._escalate, (timeout,))
        self._escalation.daemon = True
        self._escalation.start()


class Call(ThreadNotices, CallBase):
    """One call on the caller's side, driven by gRPC's threads."""

    def __init__(self, client: "Client", request: "pb.CallRequest | MethodRequest") -> None:
        super().__init__(client, CallCore(request.call_id, self, client.log), request.cancel_key, client.timeout)
        self._request = request
        self._future: grpc.Future | None = None
        self._notified = threading.Event()
        self._core.after_callbacks = self._notified.set   # after on_complete/queue callbacks

    @property
    def _sent(self) -> bool:
        return self._future is not None

    def _validate(self) -> None:
        check_request(self._request)

    def _send(self) -> None:
        rpc, message, extra = self._client._unary(self._request)
        self._future = rpc.future(message, metadata=self._client._metadata(self.call_id, extra), timeout=self._timeout)
        self._future.add_done_callback(self._on_done)

    def _abort_rpc(self) -> None:
        assert self._future is not None
        self._future.cancel()

    def _on_done(self, future: grpc.Future) -> None:
        self._stop_escalation()
        abortive = self._core.abortive_cancel
        if future.cancelled():
            code, status, details = codes.client_outcome(None, None, None, cancelled_here=True, abortive_cancel=abortive)
            self._core.notify(code, None, status, details)
            return
        err = future.exception()
        if err is None:
            code, status, details = codes.client_outcome(grpc.StatusCode.OK, None, None)
            self._core.notify(code, future.result(), status, details)
            return
        assert isinstance(err, grpc.Call)   # grpc's futures fail with an RpcError that is a Call
        # the channel closing under a call cancels it here: that is the client going away
        here = err.code() == grpc.StatusCode.CANCELLED and self._client.closed
        code, status, details = codes.client_outcome(err.code(), err.trailing_metadata(),
                                                     self._client.settings.explain(err.code(), err.details()),
                                                     cancelled_here=here, abortive_cancel=abortive)
        self._core.notify(code, None, status, details)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until notified; False on timeout. Does not complete."""
        return self._notified.wait(timeout)

    def result(self, timeout: float | None = None) -> pb.CallReply:
        if not self.wait(timeout):
            raise CallError(codes.RPC_S_TIMEOUT, self.call_id, details=f"no notification within {timeout:g}s")
        return self._result_after_wait()


class Client(ClientBase):
    """Calls to one callstate server over one grpc channel, from any thread
    (`prepare`, `start`: see ClientBase).

    Access options: see ClientBase."""

    _call_type = Call

    def _open_channel(self, target: str, options: list[tuple[str, Any]] | None) -> Any:
        return self.settings.sync_channel(target, options)

    def pipe(self, kind: str | None = None, script: Any = None, **kwargs: Any) -> Any:
        """A pipe call in state C ("in", "out" or "both"), or on a streaming `method=` of any service (its
        shape is the kind; `request=`: what an out pipe sends): see client/pipe_sync.py."""
        from callstate.client.pipe_sync import Pipe
        return Pipe(self, kind, script, **kwargs)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._note_closing()
            self._channel.close()
            self._end_live_calls()
            self._close_log()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
