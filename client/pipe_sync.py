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
from callstate.client.arguments import checked_wait_for
from callstate.client.grpc_thread import check_wait, on_a_thread_of_their_own, runs_on_grpc_thread
from callstate.client.notice_sync import ThreadNotice
from callstate.client.pipe_surface import STOPPED, PipeBase, check_script
from callstate.errors import CallError, WaitTimedOut
from callstate.lifecycle import PIPE_IN, PIPE_OUT
from callstate.pipe_script import PipeScript
from callstate.v1 import callstate_pb2 as pb


class _Item:
    __slots__ = ("msg", "event", "taken")

    def __init__(self, msg: pb.PipeMessage) -> None:
        self.msg, self.event, self.taken = msg, threading.Event(), False


class _Feeder:
    """The request iterator gRPC's thread consumes; `put` blocks until gRPC took the message
    (its send-complete: True) or the call ended (False). Several threads may push at once: each
    waiting `put` is released when the call ends (only the last one was, and the others waited
    for ever)."""

    def __init__(self) -> None:
        self._queue: queue.Queue[_Item | None] = queue.Queue()
        self._lock = threading.Lock()
        self._closed = False
        self._pending: set[_Item] = set()

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
            self._pending.add(item)
        self._queue.put(item)
        item.event.wait()
        with self._lock:
            self._pending.discard(item)
        return item.taken

    def close(self) -> None:
        """No more messages: the half-close."""
        self._queue.put(None)

    def end(self) -> None:
        """The call ended: release a waiting `put` and gRPC's consuming thread."""
        with self._lock:
            self._closed, pending = True, list(self._pending)
        for item in pending:
            item.event.set()
        self._queue.put(None)


class Pipe(PipeBase):
    """One pipe call on the caller's side, driven by gRPC's threads."""

    _notice_type = ThreadNotice
    # a rushed cancel's callbacks run on gRPC's thread, in `_on_done`, as every notification's do
    _rpc_runs_owed = True
    _run_soon = staticmethod(on_a_thread_of_their_own)

    def __init__(self, client: Any, kind: str | None = None, script: PipeScript | pb.PipeScript | None = None,
                 **kwargs: Any) -> None:
        super().__init__(client, kind, script, **kwargs)
        self._responses: Any = None
        self._feeder = _Feeder()
        self._notified = threading.Event()
        self.after_callbacks = self._notified.set   # after the done-callbacks
        self._drainer: threading.Thread | None = None
        self._drain_lock = threading.Lock()   # the drainer's wants (PipeBase), from several threads
        self._headers: tuple[tuple[str, Any], ...] = ()   # the server's initial metadata, once in
        self._headers_in = threading.Event()
        self._headers_reader: threading.Thread | None = None
        self._read_lock = threading.Lock()   # one read of the stream at a time: the caller's, the drainer's
        # gRPC's done-callback can run while the server's last messages still wait in the
        # response iterator: the outcome is held until the iterator ends, so the status follows
        # the messages (as on the wire) and a notified caller has pulled and counted them all.
        self._end_lock = threading.Lock()
        self._stream_over = False
        self._held: tuple[int, Any, str, str] | None = None

    def add_done_callback(self, callback: Callable[["Pipe"], None]) -> None:
        """Call `callback(pipe)` once the call-complete notification arrives (on gRPC's thread),
        or at once when it has. Like `wait()`, it pulls the server's remaining messages (out
        pipe, both) on a helper thread: the status follows them."""
        super().add_done_callback(callback)
        if not self.notified:
            self._start_drainer(for_ever=True)

    def _start_drainer(self, for_ever: bool = False, waits: int = 0) -> None:
        with self._drain_lock:
            self._drain_for_ever |= for_ever
            self._waits += waits
            if self._responses is not None and self._drainer is None:
                self._drainer = threading.Thread(target=self._drain, name="callstate-pipe-drain", daemon=True)
                self._drainer.start()

    # -- the caller's moves ------------------------------------------------------------------------
    def start(self) -> "Pipe":
        """C -> Push (in, both) or Pull (out): open the stream; returns at once. Raises CallError
        (C -> End, nothing to complete) when the call cannot be made."""
        self._admit(check_script, self._script, self.kind)
        try:
            metadata, open_rpc = self._metadata(), self._rpc_maker()
            if self.kind == PIPE_OUT:
                self._rpc = self._responses = open_rpc(self._request(), metadata=metadata, timeout=self._timeout)
            elif self.kind == PIPE_IN:
                self._rpc = open_rpc.future(iter(self._feeder), metadata=metadata, timeout=self._timeout)
            else:
                self._rpc = self._responses = open_rpc(iter(self._feeder), metadata=metadata, timeout=self._timeout)
        except Exception as exc:
            raise self.not_made(exc) from exc
        # at once when already done: the core holds the outcome until start() has moved out of C
        self._rpc.add_done_callback(self._on_done)
        if self.has_callbacks:
            self._start_drainer(for_ever=True)   # a callback subscribed before the start: as add_done_callback does
        self.started()
        return self

    # -- the pipe ------------------------------------------------------------------------------------
    def headers(self, timeout: float | None = None) -> tuple[tuple[str, Any], ...]:
        """Wait for the server's initial metadata (logged once as the `headers` event). WaitTimedOut
        (1460, a TimeoutError) when none came within `timeout` seconds: the pipe is left as it
        was, to wait for them again, push, cancel or complete (as `AsyncPipe.headers`)."""
        timeout = checked_wait_for(timeout)
        self._need_rpc("headers")
        if not self._headers_in.is_set():
            check_wait(self, timeout, "headers")
            with self._drain_lock:   # grpc's initial_metadata() has no timeout: a helper thread waits for it
                if self._headers_reader is None:
                    self._headers_reader = threading.Thread(target=self._read_headers, name="callstate-pipe-headers",
                                                            daemon=True)
                    self._headers_reader.start()
            if not self._headers_in.wait(timeout):
                raise self.headers_timed_out(timeout or 0.0)
        self.headers_arrived()
        return self._headers

    def _read_headers(self) -> None:
        md = None
        try:
            md = self._rpc.initial_metadata()   # returns once they came, or the call ended without them
        finally:
            self._headers = tuple((key, value) for key, value in md or ())
            self._headers_in.set()

    def push(self, payload: Any = b"") -> None:
        """Push one message (on a user's method: its request, a message or a dict; b"": the pipe's request)."""
        core = self._need_rpc("push")
        if (refusal := core.push_refusal()) is not None:   # 1831 an out pipe, 1916 closed
            raise refusal
        if not self._feeder.put(self._message(payload, core.sent + 1)):
            raise CallError(codes.RPC_X_PIPE_CLOSED, self.call_id, details=f"push in state {core.state}: the call has ended")
        core.pushed()

    def close_push(self) -> None:
        """The null push: a null-push message (see AsyncPipe.close_push), then the half-close."""
        self._need_rpc("close_push").null_push()
        if self._null_push_message is not None:
            self._feeder.put(self._null_push_message)
        self._feeder.close()

    def pull(self) -> pb.PipeMessage | None:
        """Pull one message (its receive-complete notification), or None at the server's null push
        (once: a pull after it is 1918 RPC_X_PIPE_EMPTY, and data after it 1917)."""
        return self._pull(draining=False)

    def _pull(self, draining: bool) -> Any:
        """pull(); the drainer's (`draining`) returns STOPPED once no wait wants it any more."""
        core = self._need_rpc("pull")
        if (refusal := core.pull_refusal()) is not None:   # 1831 an in pipe, 1916 completed, 1918 past the end
            raise refusal
        after_end = core.peer_null_pushed
        msg = self._next_message(draining, by_caller=not draining)
        if msg is STOPPED:
            return msg
        if after_end:
            raise core.after_peer_end(msg is not None)
        if msg is None:
            core.stream_ended()
            return None
        if self._ends_pipe(msg):   # the server ended its pipe with a message of its own
            core.null_pull_message()
            return None
        core.pulled()
        return msg

    def _next_message(self, draining: bool = False, by_caller: bool = False) -> Any:
        """The response iterator's next message; None once it ended (the status is then in: held,
        it is delivered now, its callbacks off the stack of a caller's pull, `by_caller`).
        The drainer's read (`draining`) gives STOPPED instead when no wait wants it any more,
        keeping a message it read meanwhile for the caller's next pull."""
        with self._read_lock:
            if self._stash:
                return self._stash.pop()
            if draining and not self._drain_wanted():
                return STOPPED
            try:
                msg = next(self._responses)
            except (StopIteration, grpc.RpcError):
                msg = None
            if msg is not None and draining and not self._drain_wanted():
                self._stash.append(msg)
                return STOPPED
        if msg is None:
            self._release_held(by_caller)   # outside the read lock: a callback it runs may pull
        return msg

    def _release_held(self, by_caller: bool) -> None:
        with self._end_lock:
            self._stream_over, held, self._held = True, self._held, None
        if held is not None:
            self.notify(*held, in_verb=by_caller)

    def __iter__(self) -> Iterator[pb.PipeMessage]:
        while (msg := self.pull()) is not None:
            yield msg

    # -- the notification ------------------------------------------------------------------------
    @runs_on_grpc_thread
    def _on_done(self, rpc: Any) -> None:
        self._stop_escalation()
        self._feeder.end()
        core = self
        reply = None
        if rpc.cancelled():
            self._notify_cancelled_here()
            self._run_owed()   # our cancel rushed the notification: its callbacks run here, on gRPC's thread
            return
        status_code = rpc.code()
        if self.kind == PIPE_IN and status_code == grpc.StatusCode.OK:
            reply = rpc.result()
        here = status_code == grpc.StatusCode.CANCELLED and self._client.closed
        text = rpc.details() if status_code == grpc.StatusCode.OK else \
            self._client.settings.explain(status_code, rpc.details(), rpc.trailing_metadata())
        code, status, details = codes.client_outcome(status_code, rpc.trailing_metadata(), text,
                                                     cancelled_here=here, abortive_cancel=core.abortive_cancel)
        if self._responses is not None:
            with self._end_lock:
                if not self._stream_over:   # messages may still be unread: the puller delivers
                    self._held = (code, reply, status, details)
                    return
        core.notify(code, reply, status, details)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the notification can be delivered; False on timeout. The server's unread
        messages are pulled (and counted) by a helper thread meanwhile: its status follows them."""
        timeout = checked_wait_for(timeout)
        if self.notified:   # once its callbacks have run (a rushed cancel's run on gRPC's thread after it)
            if self._owed is not None:   # none taken yet (gRPC's thread busy or slower): this wait runs them first
                self._run_owed()
            return self._notified.wait(timeout) and self._after_wait()
        self._need_rpc("wait")
        check_wait(self, timeout)
        self._start_drainer(waits=1)
        try:
            if not self._notified.wait(timeout):
                return False   # the drainer stops: the caller may pull on
            return self._after_wait()
        finally:
            with self._drain_lock:
                self._waits -= 1

    def _drain(self) -> None:
        while True:
            try:
                while (msg := self._pull(draining=True)) is not None and msg is not STOPPED:
                    pass
            except CallError:
                msg = None
            if msg is not STOPPED:
                break
            with self._drain_lock:   # no wait wants it now; one that came meanwhile keeps it going
                if not self._drain_wanted():
                    self._drainer = None
                    return
        while self._next_message() is not None:   # past the pipe's end (a breach): on to the status
            pass

    def result(self, timeout: float | None = None) -> Any:
        """Wait for the notification, then complete: the PipeReply (in pipe) or None, or CallError."""
        if not self.wait(timeout):
            raise WaitTimedOut(self.call_id, timeout)
        return self._result_after_wait()
