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
from pathlib import Path
from typing import Any, Callable, Generator

import grpc

from callstate import codes
from callstate.errors import CallError
from callstate.script import Script, ScriptError, validate
from callstate.statelog import StateLog
from callstate.v1 import callstate_pb2 as pb
from callstate.v1 import callstate_pb2_grpc as pb_grpc
from callstate.client.common import ClientBase, new_call_id, outcome_of_error, request_for
from callstate.client.core import CallCore


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


class AsyncCall:
    """One call on the caller's side, driven on the event loop."""

    def __init__(self, client: "AsyncClient", request: pb.CallRequest) -> None:
        self._client = client
        self._request = request
        self._core = CallCore(request.call_id, self, client.log)
        self._rpc: grpc.aio.UnaryUnaryCall | None = None
        self._driver: asyncio.Future[None] | None = None
        self._escalation: asyncio.TimerHandle | None = None

    # -- what the call is -----------------------------------------------------------------
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

    # -- the caller's lifecycle -----------------------------------------------------------
    def start(self) -> "AsyncCall":
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
        self._rpc = self._client._stub.Call(self._request, metadata=((codes.CALL_ID_KEY, self.call_id),),
                                            timeout=self._client.timeout)
        self._core.started()
        return self

    def cancel(self, abortive: bool = True, timeout: float | None = None) -> None:
        """RpcAsyncCancelCall. Abortive: gRPC cancel. Non-abortive: a cancel notice to the
        server, then keep waiting for its answer; after `timeout` seconds without one,
        escalate to an abortive cancel. Either way, still wait and complete."""
        outstanding = self._core.begin_cancel(abortive)
        if not outstanding:
            self._core.cancel_issued("already notified")
            return
        if self._rpc is None:  # cancelled in C: the call never goes out
            self._core.cancel_issued("before start")
            self._core.notify(codes.RPC_S_CALL_CANCELLED, grpc_status="CANCELLED", details="cancelled before start")
            return
        if abortive:
            self._rpc.cancel()
            self._core.cancel_issued("abortive")
            self._ensure_driver()   # the notification is rushed: record it even if nobody awaits
            return
        notice = self._client._stub.Cancel(pb.CancelRequest(call_id=self.call_id), timeout=self._client.timeout)
        notice.add_done_callback(self._on_notice_sent)
        self._core.cancel_issued("non-abortive")
        if timeout is not None:
            loop = asyncio.get_running_loop()
            self._escalation = loop.call_later(timeout, self._escalate, timeout)

    def _on_notice_sent(self, notice: grpc.aio.UnaryUnaryCall) -> None:
        self._core.event("cancel_sent", "delivered" if notice.done() and not notice.cancelled() else "not sent")

    def _escalate(self, timeout: float) -> None:
        if not self._core.notified and not self._core.lifecycle.ended:
            self._core.event("cancel_escalated", f"no answer {timeout:g}s after the cancel notice")
            self.cancel(abortive=True)

    def status(self) -> int:
        """RpcAsyncGetCallStatus: 997 while pending, then the final code (not consumed)."""
        self._ensure_driver()
        return self._core.status()

    def done(self) -> bool:
        """True once the call-complete notification has arrived."""
        return self._core.notified

    def complete(self) -> pb.CallReply:
        """RpcAsyncCompleteCall: the reply, or CallError (997 pending, 1914 after the final one)."""
        return self._core.complete()

    def add_done_callback(self, callback: Callable[["AsyncCall"], None]) -> None:
        """Call `callback(call)` on the loop when the notification arrives."""
        self._core.add_done_callback(callback)
        self._ensure_driver()

    async def wait(self, timeout: float | None = None) -> bool:
        """Block (await) until notified; False on timeout. Does not complete."""
        if self._core.notified:
            return True
        if self._driver is None and timeout is None:
            await self._drive()
            return True
        self._ensure_driver()
        assert self._driver is not None
        try:
            await asyncio.wait_for(asyncio.shield(self._driver), timeout)
        except asyncio.TimeoutError:
            return False
        return True

    async def result(self, timeout: float | None = None) -> pb.CallReply:
        """Wait for the notification, then complete: the reply or CallError."""
        if not await self.wait(timeout):
            raise CallError(codes.RPC_S_TIMEOUT, self.call_id, details=f"no notification within {timeout:g}s")
        return self.complete()

    def __await__(self) -> Generator[Any, None, pb.CallReply]:
        return self.result().__await__()

    # -- driving the gRPC call --------------------------------------------------------------
    def _ensure_driver(self) -> None:
        if self._driver is None and self._rpc is not None and not self._core.notified:
            self._driver = asyncio.ensure_future(self._drive())

    async def _drive(self) -> None:
        rpc = self._rpc
        if rpc is None or self._core.notified:
            return
        try:
            reply = await rpc
        except grpc.aio.AioRpcError as err:
            code, status, details = outcome_of_error(err.code(), err.trailing_metadata(), err.details())
            self._notify(code, None, status, details)
        except asyncio.CancelledError:
            if self._core.abortive_cancel:  # our own cancel(): the notification is rushed
                self._notify(codes.RPC_S_CALL_CANCELLED, None, "CANCELLED", "cancelled by the caller")
                return
            # the task awaiting the call was cancelled: that is an abortive cancel of the call
            if not self._core.notified and self._core.state == "WComp":
                self._core.begin_cancel(True)
                self._core.cancel_issued("awaiting task cancelled")
            self._notify(codes.RPC_S_CALL_CANCELLED, None, "CANCELLED", "awaiting task cancelled")
            raise
        else:
            self._notify(codes.RPC_S_OK, reply, "OK", "")

    def _notify(self, code: int, reply: pb.CallReply | None, status: str, details: str) -> None:
        if self._escalation is not None:
            self._escalation.cancel()
        self._core.notify(code, reply, status, details)


class AsyncClient(ClientBase):
    """Calls to one callstate server over one grpc.aio channel."""

    def __init__(self, target: str, *, log: str | Path | StateLog | None = None, timeout: float | None = None,
                 channel_options: list[tuple[str, Any]] | None = None) -> None:
        super().__init__(target, log=log, timeout=timeout)
        self._channel = grpc.aio.insecure_channel(target, options=channel_options or [])
        self._stub = pb_grpc.EmulatorStub(self._channel)

    def prepare(self, script: Script | pb.Script | None = None, *, payload: bytes = b"", call_id: str | None = None,
                queue: AsyncCompletionQueue | None = None,
                on_complete: Callable[[AsyncCall], None] | None = None) -> AsyncCall:
        """A call in state C, not yet sent: `start()` it or `cancel()` it."""
        call = AsyncCall(self, request_for(script, payload, call_id or new_call_id()))
        if queue is not None:
            call._core.add_done_callback(queue.post)
        if on_complete is not None:
            call._core.add_done_callback(on_complete)
        return call

    def start(self, script: Script | pb.Script | None = None, **kwargs: Any) -> AsyncCall:
        """Make the call (C -> WComp); returns at once, like RpcAsyncCall."""
        call = self.prepare(script, **kwargs)
        call.start()
        if kwargs.get("queue") is not None or kwargs.get("on_complete") is not None:
            call._ensure_driver()
        return call

    async def close(self) -> None:
        if not self.closed:
            self.closed = True
            await self._channel.close()
            self._close_log()

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
