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
from typing import TYPE_CHECKING, Any, Callable

import grpc

from callstate import codes
from callstate.client.any_method import MethodRequest, method_name
from callstate.client.arguments import checked_wait, checked_wait_for
from callstate.client.call_core import CallCore
from callstate.client.channel import ChannelSettings
from callstate.client.client_base import ClientBase
from callstate.client.grpc_thread import check_wait, on_a_thread_of_their_own, on_grpc_thread_of, runs_on_grpc_thread
from callstate.client.notice_sync import ThreadNotice
from callstate.client.pipe_sync import Pipe
from callstate.errors import WaitTimedOut
from callstate.script import Script
from callstate.v1 import callstate_pb2 as pb

if TYPE_CHECKING:   # callstate.schema (protobuf's pools) loads on a user's first method call
    from callstate.schema import Method


class CompletionQueue:
    """A completion-port-like queue many calls post to when notified (thread-safe)."""

    def __init__(self) -> None:
        self._queue: queue.Queue[Call] = queue.Queue()

    def post(self, call: "Call") -> None:
        """From any thread (gRPC's, when a call is notified): the call joins the queue."""
        self._queue.put_nowait(call)

    def get(self, timeout: float | None = None) -> "Call":
        """The next notified call; queue.Empty when none came within `timeout` seconds (None: wait
        for ever), as `AsyncCompletionQueue.get`."""
        return self._queue.get(timeout=checked_wait(timeout))

    def qsize(self) -> int:
        return self._queue.qsize()


class Call(CallCore):
    """One call on the caller's side, driven by gRPC's threads: a `CallCore` (its lifecycle and
    the verbs that need no I/O) that sends the call as a grpc future and takes its outcome."""

    _notice_type = ThreadNotice
    # a rushed cancel's callbacks run on gRPC's thread, in `_on_done`, as every notification's do
    _rpc_runs_owed = True
    _run_soon = staticmethod(on_a_thread_of_their_own)

    def __init__(self, client: "Client", request: "pb.CallRequest | MethodRequest") -> None:
        super().__init__(request.call_id, client.log, method_name=method_name(request), client=client,
                         cancel_key=request.cancel_key, timeout=client.timeout)
        self._request = request
        self._rpc: grpc.Future | None = None
        self._notified = threading.Event()
        self.after_callbacks = self._notified.set   # after on_complete/queue callbacks

    # -- the caller's moves ------------------------------------------------------------------
    def start(self) -> "Call":
        """C -> WComp: send the call; returns at once, like RpcAsyncCall. Raises CallError
        (C -> End, nothing to complete) when the call cannot be made."""
        self._admit(self._client._check_request, self._request)
        try:
            rpc, message, extra = self._client._unary(self._request)
            self._rpc = rpc.future(message, metadata=self._client._metadata(self.call_id, extra), timeout=self._timeout)
        except Exception as exc:
            raise self.not_made(exc) from exc
        self._rpc.add_done_callback(self._on_done)   # at once when done: the core holds it until started()
        self.started()
        return self

    # -- the notification ----------------------------------------------------------------------
    @runs_on_grpc_thread
    def _on_done(self, future: grpc.Future) -> None:
        self._stop_escalation()
        abortive = self.abortive_cancel
        if future.cancelled():
            self._notify_cancelled_here()
            self._run_owed()   # our cancel rushed the notification: its callbacks run here, on gRPC's thread
            return
        err = future.exception()
        if err is None:
            code, status, details = codes.client_outcome(grpc.StatusCode.OK, None, None)
            self.notify(code, future.result(), status, details)
            return
        assert isinstance(err, grpc.Call)   # grpc's futures fail with an RpcError that is a Call
        # the channel closing under a call cancels it here: that is the client going away
        here = err.code() == grpc.StatusCode.CANCELLED and self._client.closed
        trailers = err.trailing_metadata()
        code, status, details = codes.client_outcome(err.code(), trailers,
                                                     self._client.settings.explain(err.code(), err.details(), trailers),
                                                     cancelled_here=here, abortive_cancel=abortive)
        self.notify(code, None, status, details)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until notified; False on timeout. Does not complete.

        An exception out of the blocking wait (KeyboardInterrupt, what a signal handler raises, a
        greenlet's kill) is an abortive cancel of the call, as cancelling the task that awaits an
        `AsyncCall` is."""
        return self._wait(timeout, complete_if_interrupted=False)

    def result(self, timeout: float | None = None) -> pb.CallReply:
        """Wait for the notification, then complete: the reply or CallError. Interrupted (see
        `wait`), the call is cancelled and then completed on the caller's behalf."""
        if not self._wait(timeout, complete_if_interrupted=True):
            raise WaitTimedOut(self.call_id, timeout)
        return self._result_after_wait()

    def _wait(self, timeout: float | None, complete_if_interrupted: bool) -> bool:
        timeout = checked_wait_for(timeout)
        if self._rpc is None and not self.notified:   # never sent: no notification would come
            raise self._unsent("wait")
        check_wait(self, timeout)
        if self._owed is not None:
            # a verb's notification whose callbacks no thread has taken yet (gRPC's, busy or slower than
            # the caller; or in a done-callback, this one): the wait runs them first, as the asyncio
            # wait lets the loop run them, so it answers as done() does (never inside cancel())
            self._run_owed()
        try:
            notified = self._notified.wait(timeout)
        except BaseException:
            self._interrupted(complete_if_interrupted)
            raise
        return notified and self._after_wait()


class Client(ClientBase):
    """Calls to one callstate server over one grpc channel, from any thread.

    Access options: see ClientBase."""

    _open_channel = ChannelSettings.sync_channel

    def prepare(self, script: Script | pb.Script | None = None, *, payload: bytes = b"", call_id: str | None = None,
                queue: Any = None, on_complete: Callable[[Call], None] | None = None,
                method: "str | Method | None" = None, request: Any = None) -> Call:
        """A call in state C, not yet sent, as `AsyncClient.prepare` (callbacks run on gRPC's threads)."""
        call = Call(self, self._outgoing(script, payload, call_id, method, request, queue, on_complete))
        return call._subscribe(queue, on_complete)

    def start(self, script: Script | pb.Script | None = None, **kwargs: Any) -> Call:
        """Make the call (C -> WComp); returns the call object at once. See `prepare`."""
        return self.prepare(script, **kwargs).start()

    def pipe(self, kind: str | None = None, script: Any = None, **kwargs: Any) -> Pipe:
        """A pipe call in state C ("in", "out" or "both"), or on a streaming `method=` of any service (its
        shape is the kind; `request=`: what an out pipe sends): see client/pipe_sync.py."""
        return Pipe(self, kind, script, **kwargs)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._note_closing()
            if on_grpc_thread_of(self):   # its done-callback closes it: gRPC's thread must return first
                threading.Thread(target=self._channel.close, name="callstate-close", daemon=True).start()
            else:
                self._channel.close()
            self._end_live_calls()
            self._close_log()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
