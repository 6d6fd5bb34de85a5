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
from typing import Any, Callable, Generator

import grpc

from callstate import codes
from callstate.client.call_core import CallCore
from callstate.client.shared_surface import (ESCALATED_NOT_CALLSTATE, NOTICE_CLIENT_CLOSED, CallBase, ClientBase,
                                            notice_failed, notice_outcome, notice_unanswerable)
from callstate.lifecycle import C, CANCEL_SENT, WCOMP
from callstate.errors import CallError, InvalidAsyncHandle
from callstate.client.any_method import MethodRequest, check_request
from callstate.v1 import callstate_pb2 as pb


class AsyncCompletionQueue:
    """A completion-port-like queue many calls post to when notified."""

    def __init__(self) -> None:
        self._queue: asyncio.Queue[AsyncCall] = asyncio.Queue()

    def post(self, call: "AsyncCall") -> None:
        self._queue.put_nowait(call)

    async def get(self) -> "AsyncCall":
        return await self._queue.get()

    def qsize(self) -> int:
        return self._queue.qsize()


class AsyncNotices:
    """The cancel notice and its escalation timer on the event loop (AsyncCall, AsyncPipe)."""

    _client: Any
    _core: Any
    _timeout: float | None
    _escalation: asyncio.TimerHandle | None
    _notice: asyncio.Future[None] | None = None

    # from CallBase: _notice_request(), _escalate(timeout)
    _notice_request: Any
    _escalate: Any

    def _send_notice(self) -> None:
        self._notice = asyncio.ensure_future(self._notice_and_log())

    async def _notice_and_log(self) -> None:
        try:
            reply = await self._client._stub.Cancel(self._notice_request(),
                                                    metadata=self._client._notice_metadata(self.call_id),
                                                    timeout=self._timeout)
        except grpc.aio.AioRpcError as err:
            self._core.event(CANCEL_SENT, notice_failed(err.code()))
            if notice_unanswerable(err.code()):
                self._escalate(0.0, ESCALATED_NOT_CALLSTATE)
        except asyncio.CancelledError:
            self._core.event(CANCEL_SENT, NOTICE_CLIENT_CLOSED)
        else:
            self._core.event(CANCEL_SENT, notice_outcome(reply))

    def _arm_escalation(self, timeout: float) -> None:
        if self._escalation is not None:
            self._escalation.cancel()
        self._escalation = asyncio.get_running_loop().call_later(timeout, self._escalate, timeout)


class AsyncCall(AsyncNotices, CallBase):
    """One call on the caller's side, driven on the event loop."""

    def __init__(self, client: "AsyncClient", request: "pb.CallRequest | MethodRequest") -> None:
        super().__init__(client, CallCore(request.call_id, self, client.log), request.cancel_key, client.timeout)
        self._request = request
        self._rpc: grpc.aio.UnaryUnaryCall | None = None
        self._driver: asyncio.Future[None] | None = None

    # -- the I/O under CallBase's moves ---------------------------------------------------
    @property
    def _sent(self) -> bool:
        return self._rpc is not None

    def _validate(self) -> None:
        check_request(self._request)

    def _send(self) -> None:
        rpc, message, extra = self._client._unary(self._request)
        self._rpc = rpc(message, metadata=self._client._metadata(self.call_id, extra), timeout=self._timeout)
        if self._core.has_callbacks:
            self._ensure_driver()   # a callback or queue waits: someone must read the reply

    def _abort_rpc(self) -> None:
        assert self._rpc is not None
        self._rpc.cancel()
        self._ensure_driver()   # the notification is rushed: record it even if nobody awaits

    # -- notification styles ----------------------------------------------------------------
    def status(self) -> int:
        """RpcAsyncGetCallStatus: 997 while pending, then the final code (not consumed)."""
        self._ensure_driver()
        return self._core.status()

    def add_done_callback(self, callback: Callable[["AsyncCall"], None]) -> None:
        """Call `callback(call)` on the loop when the notification arrives."""
        self._core.add_done_callback(callback)
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
            raise CallError(codes.RPC_S_TIMEOUT, self.call_id, details=f"no notification within {timeout:g}s")
        return self._result_after_wait()

    def __await__(self) -> Generator[Any, None, pb.CallReply]:
        return self.result().__await__()

    async def _wait(self, timeout: float | None, complete_if_cancelled: bool) -> bool:
        if self._core.notified:
            return True
        if self._rpc is None:
            if self.state == C:
                raise CallError(codes.RPC_S_INVALID_ASYNC_CALL, self.call_id, details="wait() before start()")
            raise InvalidAsyncHandle(self.call_id, "wait")   # the call failed to start: nothing follows
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
            if not self._core.lifecycle.ended:
                if not self._core.outcome_known and self.state == WCOMP:
                    self.cancel(abortive=True)
                if complete_if_cancelled:
                    self._core.add_done_callback(AsyncCall._complete_quietly)
            raise
        return self._core.notified

    # -- driving the gRPC call --------------------------------------------------------------
    def _ensure_driver(self) -> None:
        if self._driver is None and self._rpc is not None and not self._core.outcome_known:
            self._driver = asyncio.ensure_future(self._drive())

    async def _drive(self) -> None:
        rpc = self._rpc
        if rpc is None or self._core.outcome_known:
            return
        try:
            reply = await rpc
        except grpc.aio.AioRpcError as err:
            self._notify(None, *codes.client_outcome(err.code(), err.trailing_metadata(),
                                                     self._client.settings.explain(err.code(), err.details()),
                                                     abortive_cancel=self._core.abortive_cancel))
        except asyncio.CancelledError:
            task = asyncio.current_task()
            own = task is not None and task.cancelling() > 0
            if task is not self._driver and own:
                raise   # the caller's awaiting task is being cancelled: _wait() makes it an abortive cancel
            if not own and not self._client.closed and not self._core.outcome_known and not self._core.abortive_cancel:
                # Another task awaiting this call was cancelled: grpc.aio cancels the RPC for
                # every awaiter, and this one (a pending wait(), say) woke first. That cancel is
                # the caller's abortive cancel (Can, then 1818), not the client going away.
                self._core.cancel(abortive=True, sent=True)
            # Our own abortive cancel rushed the notification; otherwise the RPC (or our driver
            # task, at loop shutdown) was cancelled under us: the client is going away.
            self._notify(None, *codes.client_outcome(None, None, None, cancelled_here=True,
                                                     abortive_cancel=self._core.abortive_cancel))
        else:
            self._notify(reply, *codes.client_outcome(grpc.StatusCode.OK, None, None))

    def _notify(self, reply: pb.CallReply | None, code: int, status: str, details: str) -> None:
        self._stop_escalation()
        self._core.notify(code, reply, status, details)


class AsyncClient(ClientBase):
    """Calls to one callstate server over one grpc.aio channel (`prepare`, `start`: see ClientBase).

    Access options: see ClientBase."""

    _call_type = AsyncCall

    def _open_channel(self, target: str, options: list[tuple[str, Any]] | None) -> Any:
        return self.settings.aio_channel(target, options)

    def pipe(self, kind: str | None = None, script: Any = None, **kwargs: Any) -> Any:
        """An asynchronous pipe call in state C ("in", "out" or "both"), or on a streaming `method=` of any
        service (its shape is the kind; `request=`: what an out pipe sends): see client/pipe_aio.py."""
        from callstate.client.pipe_aio import AsyncPipe
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
