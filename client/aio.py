"""The asyncio client: `AsyncClient` and `AsyncCall`.

    async with AsyncClient("127.0.0.1:50051") as client:
        call = client.start(Script("hold"))
        call.cancel()                 # abortive: gRPC cancel (RST_STREAM)
        try:
            await call                # wait for the notification, then complete
        except CallError as err:
            assert err.code == 1818

Cancelling the task that awaits a call is an abortive cancel of the call.
"""

from __future__ import annotations

import asyncio
import queue
from typing import TYPE_CHECKING, Any, Callable, Generator

import grpc

from callstate import codes
from callstate.client.any_method import MethodRequest, method_name
from callstate.client.arguments import checked_wait, checked_wait_for
from callstate.client.call_core import CallCore
from callstate.client.channel import ChannelSettings
from callstate.client.client_base import ClientBase
from callstate.client.notice_aio import AsyncNotice, after_this_step
from callstate.client.pipe_aio import AsyncPipe
from callstate.errors import CallError, WaitTimedOut
from callstate.script import Script
from callstate.v1 import callstate_pb2 as pb

if TYPE_CHECKING:   # callstate.schema (protobuf's pools) loads on a user's first method call
    from callstate.schema import Method


# client_outcome of a reply (OK, no trailers): worked out once
_REPLIED = codes.client_outcome(grpc.StatusCode.OK, None, None)


class AsyncCompletionQueue:
    """A completion-port-like queue many calls post to when notified."""

    def __init__(self) -> None:
        self._queue: asyncio.Queue[AsyncCall] = asyncio.Queue()
        self._loop = asyncio._get_running_loop()   # the loop its get() runs on (else its first get()'s)

    def post(self, call: "AsyncCall") -> None:
        """From any thread: a sync `Client`'s calls post from gRPC's thread, where putting
        straight into the queue would not wake a get() waiting on the loop."""
        loop = self._loop
        if loop is None or loop is asyncio._get_running_loop():
            self._queue.put_nowait(call)
        else:
            loop.call_soon_threadsafe(self._queue.put_nowait, call)

    async def get(self, timeout: float | None = None) -> "AsyncCall":
        """The next notified call; queue.Empty when none came within `timeout` seconds (None: wait
        for ever), as the sync `CompletionQueue.get`. On a loop other than the queue's own (made
        in an earlier `asyncio.run()`, or a session fixture's loop) RuntimeError at once: the
        calls would be posted to the other loop, and this get() would wait for ever."""
        timeout = checked_wait(timeout)
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop = loop
        elif self._loop is not loop:
            raise RuntimeError("the AsyncCompletionQueue belongs to another event loop"
                               + (", now closed" if self._loop.is_closed() else "")
                               + ": make the queue in the loop that uses it")
        if timeout is None:
            return await self._queue.get()
        if not self._queue.empty():   # a timeout of 0 takes what is there
            return self._queue.get_nowait()
        try:
            return await asyncio.wait_for(self._queue.get(), timeout)
        except asyncio.TimeoutError:
            raise queue.Empty from None

    def qsize(self) -> int:
        return self._queue.qsize()


class AsyncCall(CallCore):
    """One call on the caller's side, driven on the event loop: a `CallCore` (its lifecycle and
    the verbs that need no I/O) that sends the call and awaits its outcome with grpc.aio."""

    _notice_type = AsyncNotice
    _run_soon = staticmethod(after_this_step)   # a rushed cancel's callbacks: on the loop, after cancel()

    def __init__(self, client: "AsyncClient", request: "pb.CallRequest | MethodRequest") -> None:
        super().__init__(request.call_id, client.log, method_name=method_name(request), client=client,
                         cancel_key=request.cancel_key, timeout=client.timeout)
        self._request = request
        self._rpc: grpc.aio.UnaryUnaryCall | None = None
        self._driver: asyncio.Future[None] | None = None

    # -- the caller's moves ------------------------------------------------------------------
    def start(self) -> "AsyncCall":
        """C -> WComp: send the call; returns at once, like RpcAsyncCall. Raises CallError
        (C -> End, nothing to complete) when the call cannot be made."""
        self._admit(self._client._check_request, self._request)
        try:
            rpc, message, extra = self._client._unary(self._request)
            self._rpc = rpc(message, metadata=self._client._metadata(self.call_id, extra), timeout=self._timeout)
        except Exception as exc:
            raise self.not_made(exc) from exc
        if self._callbacks:
            self._ensure_driver()   # a callback or queue waits: someone must read the reply
        self.started()
        return self

    def cancel(self, abortive: bool = True, timeout: float | None = None) -> None:
        """RpcAsyncCancelCall (see CallCore.cancel)."""
        super().cancel(abortive, timeout)   # our cancel ended the RPC: the core notified (rushed)
        if abortive and self._driver is None and self._rpc is not None and not self.outcome_known:
            # the RPC had already ended: its outcome is read, even if nobody awaits it
            self._ensure_driver()

    # -- notification styles ----------------------------------------------------------------
    def status(self) -> int:
        """RpcAsyncGetCallStatus: 997 while pending, then the final code (not consumed); 1915 before start()."""
        if not self.notified:
            self._on_its_loop("status")
        self._ensure_driver()
        return super().status()

    def done(self) -> bool:
        """True once the call-complete notification has arrived. Polled on a call nobody awaits, it
        has the outcome of an RPC that has ended read (as `status()` does), so it turns True as the
        sync `Call.done()` does, where gRPC's thread delivers the notification unasked."""
        if not self.notified and self._driver is None and self._rpc is not None and self._rpc.done() \
                and self._client.unusable() is None:
            self._ensure_driver()
        return self.notified

    def _on_its_loop(self, what: str) -> None:
        """CallError 1915 for waiting on a sent call from a loop other than its client's (a call
        started in an earlier asyncio.run() or test loop): grpc.aio's call cannot be awaited there,
        and its failure read as the caller's own cancel (Can logged, 1818). The call is left as it was."""
        if self._rpc is not None and not self._client.closed and (why := self._client.unusable()) is not None:
            raise CallError(codes.RPC_S_INVALID_ASYNC_CALL, self.call_id, details=f"{what}() of a call: {why}")

    def add_done_callback(self, callback: Callable[["AsyncCall"], None]) -> None:
        """Call `callback(call)` on the loop when the notification arrives."""
        super().add_done_callback(callback)
        self._ensure_driver()

    async def wait(self, timeout: float | None = None) -> bool:
        """Block (await) until notified; False on timeout. Does not complete.

        Cancelling the task that waits is an abortive cancel of the call."""
        return await self._wait(timeout, complete_if_cancelled=False)

    async def result(self, timeout: float | None = None) -> pb.CallReply:
        """Wait for the notification, then complete: the reply or CallError.

        Cancelling the task that awaits is an abortive cancel of the call, which is then
        completed on that task's behalf when its (rushed) notification arrives."""
        if not await self._wait(timeout, complete_if_cancelled=True):
            raise WaitTimedOut(self.call_id, timeout)
        return self._result_after_wait()

    def __await__(self) -> Generator[Any, None, pb.CallReply]:
        if self.notified and self._owed is None:   # the outcome is in: complete, with no coroutine to run
            self._after_wait()
            return self._result_after_wait()
        if self.notified or self._rpc is None or self._driver is not None:
            return (yield from self.result().__await__())
        # `result()` of a sent call nobody drives yet (the common `await client.start(...)`): its
        # wait, inline, without the two coroutines of result() and _wait()
        self._on_its_loop("wait")
        try:
            yield from self._drive().__await__()
        except asyncio.TimeoutError:
            timed_out = True
        except asyncio.CancelledError:
            self._interrupted(True)
            raise
        else:
            timed_out = False
        if timed_out or not self._after_wait():
            raise WaitTimedOut(self.call_id, None)
        return self._result_after_wait()

    async def _wait(self, timeout: float | None, complete_if_cancelled: bool) -> bool:
        timeout = checked_wait_for(timeout)
        if self.notified:
            if self._owed is not None:   # a rushed cancel's callbacks, on the loop since cancel(): they run first
                await asyncio.sleep(0)
            return self._after_wait()
        if self._rpc is None:
            raise self._unsent("wait")
        self._on_its_loop("wait")
        try:
            if self._driver is None and timeout is None:
                await self._drive()   # inline: no extra task on the common path
            else:
                self._ensure_driver()
                assert self._driver is not None
                await asyncio.wait_for(asyncio.shield(self._driver), timeout)
        except asyncio.TimeoutError:
            return False
        except asyncio.CancelledError:
            self._interrupted(complete_if_cancelled)
            raise
        return self._after_wait()

    # -- driving the gRPC call --------------------------------------------------------------
    def _ensure_driver(self) -> None:
        if self._driver is None and self._rpc is not None and not self.outcome_known:
            self._driver = asyncio.ensure_future(self._drive())

    async def _drive(self) -> None:
        rpc = self._rpc
        if rpc is None or self.outcome_known:
            return
        try:
            reply = await rpc
        except grpc.aio.AioRpcError as err:
            trailers = err.trailing_metadata()
            self._notify(None, *codes.client_outcome(err.code(), trailers,
                                                     self._client.settings.explain(err.code(), err.details(), trailers),
                                                     abortive_cancel=self.abortive_cancel))
        except asyncio.CancelledError:
            task = asyncio.current_task()
            own = task is not None and task.cancelling() > 0
            if task is not self._driver and own:
                raise   # the caller's awaiting task is being cancelled: _wait() makes it an abortive cancel
            if not own and not self._client.closed and not self.outcome_known and not self.abortive_cancel:
                # Another task awaiting this call was cancelled: grpc.aio cancels the RPC for
                # every awaiter, and this one (a pending wait(), say) woke first. That cancel is
                # the caller's abortive cancel (Can, then 1818), not the client going away.
                self._cancel_moves(abortive=True, sent=True)
            # Our own abortive cancel rushed the notification; otherwise the RPC (or our driver
            # task, at loop shutdown) was cancelled under us: the client is going away.
            self._stop_escalation()
            self._notify_cancelled_here()
        else:
            self._notify(reply, *_REPLIED)

    def _notify(self, reply: pb.CallReply | None, code: int, status: str, details: str) -> None:
        self._stop_escalation()
        self.notify(code, reply, status, details)   # a callback's failure: for the caller's wait


class AsyncClient(ClientBase):
    """Calls to one callstate server over one grpc.aio channel.

    Access options: see ClientBase."""

    _open_channel = ChannelSettings.aio_channel

    def prepare(self, script: Script | pb.Script | None = None, *, payload: bytes = b"", call_id: str | None = None,
                queue: Any = None, on_complete: Callable[[AsyncCall], None] | None = None,
                method: "str | Method | None" = None, request: Any = None) -> AsyncCall:
        """A call in state C, not yet sent: `start()` it or `cancel()` it. `queue` (a completion
        queue) and `on_complete` are notified when the call-complete notification arrives.

        `method` ("pkg.Svc/Method" of the client's schema, or a `Method`): a unary call on that
        method of any service, with `request` (a message, a dict or JSON text of its proto JSON
        form; None: the empty message); the script travels as the `callstate-script` header
        (None: none sent, the server decides). SchemaError for an unknown method or a request
        that does not fit it."""
        call = AsyncCall(self, self._outgoing(script, payload, call_id, method, request, queue, on_complete))
        return call._subscribe(queue, on_complete)

    def start(self, script: Script | pb.Script | None = None, **kwargs: Any) -> AsyncCall:
        """Make the call (C -> WComp); returns the call object at once. See `prepare`."""
        return self.prepare(script, **kwargs).start()

    def pipe(self, kind: str | None = None, script: Any = None, **kwargs: Any) -> AsyncPipe:
        """An asynchronous pipe call in state C ("in", "out" or "both"), or on a streaming `method=` of any
        service (its shape is the kind; `request=`: what an out pipe sends): see client/pipe_aio.py."""
        return AsyncPipe(self, kind, script, **kwargs)

    async def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._note_closing()
            await self._channel.close()
            self._end_live_calls()
            self._close_log()

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
