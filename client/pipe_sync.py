"""Synchronous pipes: `Pipe`, made by `Client.pipe(kind, script)`; the twin of `AsyncPipe`
(the same `PipeCore`, the same names), with blocking waits.

    with Client(target) as client:
        pipe = client.pipe("in", PipeScript()).start()
        pipe.push(b"a"); pipe.push(b"b")   # each returns when gRPC took the message
        pipe.close_push()                  # the null push
        reply = pipe.result()              # PipeReply(received=2)

The client's messages are fed to gRPC through a request iterator; the notification arrives
on gRPC's threads.
"""

from __future__ import annotations

import queue
import threading
from typing import Any, Callable, Iterator

import grpc

from callstate import codes
from callstate.client.pipe_aio import NULL_PUSH_MESSAGE, check_kind, pipe_script_proto
from callstate.client.pipe_core import ACT, PipeCore
from callstate.client.shared_surface import NOTICE_CLIENT_CLOSED, notice_failed, notice_outcome
from callstate.errors import CallError
from callstate.lifecycle import C, CANCEL_ESCALATED, CANCEL_SENT, PIPE_IN, PIPE_OUT, LifecycleError
from callstate.pipe_script import PipeScript, validate_pipe
from callstate.script import ScriptError
from callstate.v1 import callstate_pb2 as pb
from callstate.wire import CALL_ID_KEY, PIPE_SCRIPT_KEY, new_call_id


class _Item:
    __slots__ = ("msg", "event", "taken")

    def __init__(self, msg: pb.PipeMessage) -> None:
        self.msg, self.event, self.taken = msg, threading.Event(), False


class _Feeder:
    """The request iterator gRPC's thread consumes; `put` blocks until gRPC took the message
    (its send-complete: True) or the call ended (False)."""

    def __init__(self) -> None:
        self._queue: queue.Queue[_Item | None] = queue.Queue()
        self._lock = threading.Lock()
        self._closed = False
        self._pending: _Item | None = None

    def __iter__(self) -> Iterator[pb.PipeMessage]:
        while True:
            item = self._queue.get()
            if item is None:
                return
            item.taken = True
            item.event.set()
            yield item.msg

    def put(self, msg: pb.PipeMessage) -> bool:
        item = _Item(msg)
        with self._lock:
            if self._closed:
                return False
            self._pending = item
        self._queue.put(item)
        item.event.wait()
        return item.taken

    def close(self) -> None:
        """No more messages: the half-close."""
        self._queue.put(None)

    def end(self) -> None:
        """The call ended: release a waiting `put` and gRPC's consuming thread."""
        with self._lock:
            self._closed, pending = True, self._pending
        if pending is not None:
            pending.event.set()
        self._queue.put(None)


class Pipe:
    """One pipe call on the caller's side, driven by gRPC's threads."""

    def __init__(self, client: Any, kind: str, script: PipeScript | pb.PipeScript | None = None, *,
                 call_id: str | None = None, timeout: float | None = None, log_messages: bool = False) -> None:
        check_kind(kind)
        self.kind = kind
        self._client = client
        self._script = pipe_script_proto(script)
        self._timeout = timeout if timeout is not None else client.timeout
        self._core = PipeCore(call_id or new_call_id(), kind, client.log, log_messages)
        self._rpc: Any = None
        self._responses: Any = None
        self._feeder = _Feeder()
        self._notified = threading.Event()
        self._escalation: threading.Timer | None = None
        self._drainer: threading.Thread | None = None
        self._completed_for_caller = False
        self._callbacks: list[Callable[["Pipe"], None]] = []
        self._callbacks_lock = threading.Lock()

    call_id = property(lambda self: self._core.call_id)
    state = property(lambda self: self._core.state)
    history = property(lambda self: self._core.history)
    sent = property(lambda self: self._core.sent)
    received = property(lambda self: self._core.received)
    code = property(lambda self: self._core.code)

    def done(self) -> bool:
        return self._core.notified

    def add_done_callback(self, callback: Callable[["Pipe"], None]) -> None:
        """Call `callback(pipe)` once the call-complete notification arrives (on gRPC's thread),
        or at once when it has. Like `wait()`, it pulls the server's remaining messages (out
        pipe, both) on a helper thread: the status follows them."""
        with self._callbacks_lock:
            if not self._notified.is_set():
                self._callbacks.append(callback)
                self._start_drainer()
                return
        callback(self)

    def _start_drainer(self) -> None:
        if self._responses is not None and self._drainer is None:
            self._drainer = threading.Thread(target=self._drain, name="callstate-pipe-drain", daemon=True)
            self._drainer.start()

    def status(self) -> int:
        return self._core.status()

    def start(self) -> "Pipe":
        core = self._core
        if core.state != C:
            raise CallError(codes.RPC_S_INVALID_ASYNC_CALL, self.call_id, details=f"start() in state {core.state}")
        if self._client.closed:
            raise core.start_failed(codes.RPC_S_INVALID_ASYNC_CALL, "the client is closed")
        metadata: tuple[tuple[str, Any], ...] = ((CALL_ID_KEY, self.call_id),) + self._client._auth_metadata
        if self._script is not None:
            try:
                validate_pipe(self._script, self.kind)
            except ScriptError as exc:
                raise core.start_failed(codes.RPC_S_INVALID_ARG, str(exc)) from None
            if self.kind != PIPE_OUT:
                metadata += ((PIPE_SCRIPT_KEY, self._script.SerializeToString()),)
        stub = self._client._stub
        if self.kind == PIPE_OUT:
            self._rpc = self._responses = stub.PipeOut(pb.PipeRequest(call_id=self.call_id, script=self._script),
                                                       metadata=metadata, timeout=self._timeout)
        elif self.kind == PIPE_IN:
            self._rpc = stub.PipeIn.future(iter(self._feeder), metadata=metadata, timeout=self._timeout)
        else:
            self._rpc = self._responses = stub.PipeBoth(iter(self._feeder), metadata=metadata, timeout=self._timeout)
        self._client._live.add(self)
        core.started()
        self._rpc.add_done_callback(self._on_done)   # at once when already done
        return self

    def headers(self) -> tuple[tuple[str, Any], ...]:
        self._need_rpc("headers")
        md = self._rpc.initial_metadata()
        self._core.headers()
        return tuple(md or ())

    def push(self, payload: bytes = b"") -> None:
        core = self._need_rpc("push")
        if not core.can_push() or not self._feeder.put(pb.PipeMessage(seq=core.sent + 1, payload=payload)):
            raise CallError(codes.RPC_X_PIPE_CLOSED, self.call_id, details=f"push in state {core.state}: the call has ended")
        core.pushed()

    def close_push(self) -> None:
        """The null push: a null-push message (see AsyncPipe.close_push), then the half-close."""
        self._need_rpc("close_push").null_push()
        self._feeder.put(NULL_PUSH_MESSAGE)
        self._feeder.close()

    def pull(self) -> pb.PipeMessage | None:
        core = self._need_rpc("pull")
        if self._responses is None:
            raise CallError(codes.RPC_X_PIPE_CLOSED, self.call_id, details="an in pipe has nothing to pull")
        try:
            msg = next(self._responses)
        except (StopIteration, grpc.RpcError):
            core.stream_ended()
            return None
        core.pulled()
        return msg

    def __iter__(self) -> Iterator[pb.PipeMessage]:
        while (msg := self.pull()) is not None:
            yield msg

    def cancel(self, abortive: bool = True, timeout: float | None = None) -> None:
        if self._core.cancel(abortive, self._rpc is not None) != ACT:
            if self._core.notified:   # cancelled before start, or already notified
                self._set_notified()
            return
        if abortive:
            self._rpc.cancel()
            return
        notice = self._client._stub.Cancel.future(pb.CancelRequest(call_id=self.call_id),
                                                  metadata=self._client._auth_metadata, timeout=self._timeout)
        notice.add_done_callback(self._on_notice_sent)
        if timeout is not None:
            if self._escalation is not None:
                self._escalation.cancel()
            self._escalation = threading.Timer(timeout, self._escalate, (timeout,))
            self._escalation.daemon = True
            self._escalation.start()

    def _escalate(self, timeout: float) -> None:
        if self._core.outcome_known or self._core.lifecycle.ended:
            return
        self._core.event(CANCEL_ESCALATED, f"no answer {timeout:g}s after the cancel notice")
        try:
            self.cancel(abortive=True)
        except (CallError, LifecycleError):
            pass

    def _on_notice_sent(self, notice: grpc.Future) -> None:
        if notice.cancelled():
            self._core.event(CANCEL_SENT, NOTICE_CLIENT_CLOSED)
        elif isinstance(err := notice.exception(), grpc.Call):
            self._core.event(CANCEL_SENT, notice_failed(err.code()))
        else:
            self._core.event(CANCEL_SENT, notice_outcome(notice.result()))

    def _on_done(self, rpc: Any) -> None:
        if self._escalation is not None:
            self._escalation.cancel()
        self._feeder.end()
        core = self._core
        reply = None
        if rpc.cancelled():
            code, status, details = codes.client_outcome(None, None, None, cancelled_here=True,
                                                         abortive_cancel=core.abortive_cancel)
        else:
            status_code = rpc.code()
            if self.kind == PIPE_IN and status_code == grpc.StatusCode.OK:
                reply = rpc.result()
            here = status_code == grpc.StatusCode.CANCELLED and self._client.closed
            code, status, details = codes.client_outcome(status_code, rpc.trailing_metadata(), rpc.details(),
                                                         cancelled_here=here, abortive_cancel=core.abortive_cancel)
        core.notify(code, reply, status, details)
        if core.notified:
            self._set_notified()

    def _set_notified(self) -> None:
        with self._callbacks_lock:
            self._notified.set()
            callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            callback(self)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the notification can be delivered; False on timeout. The server's unread
        messages are pulled (and counted) by a helper thread meanwhile: its status follows them."""
        if self._core.notified:
            return True
        self._need_rpc("wait")
        self._start_drainer()
        if not self._notified.wait(timeout):
            return False
        return self._core.notified

    def _drain(self) -> None:
        try:
            while self.pull() is not None:
                pass
        except CallError:
            pass

    def result(self, timeout: float | None = None) -> Any:
        if not self.wait(timeout):
            raise CallError(codes.RPC_S_TIMEOUT, self.call_id, details=f"no notification within {timeout:g}s")
        core = self._core
        if self._completed_for_caller and core.lifecycle.ended and core.code is not None:
            if core.code != codes.RPC_S_OK:
                raise CallError(core.code, self.call_id, grpc_status=core.grpc_status, details=core.details)
            return core.reply
        return self.complete()

    def complete(self) -> Any:
        try:
            return self._core.complete()
        finally:
            if self._core.lifecycle.ended:
                self._client._live.discard(self)

    def _complete_quietly(self) -> None:
        self._completed_for_caller = True
        try:
            self.complete()
        except CallError:
            pass

    def _need_rpc(self, what: str) -> PipeCore:
        if self._rpc is None:
            raise CallError(codes.RPC_S_INVALID_ASYNC_CALL, self.call_id, details=f"{what}() before start()")
        return self._core
