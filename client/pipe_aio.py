"""Asynchronous pipes on the event loop: `AsyncPipe`, made by `AsyncClient.pipe(kind, script)`.

    async with AsyncClient(target) as client:
        pipe = client.pipe("both", PipeScript(messages=3)).start()   # C -> Push
        await pipe.headers()             # the server's initial metadata (a cancel point)
        await pipe.push(b"hello")        # returns on its send-complete notification
        await pipe.close_push()          # the null push (half-close): Push -> Pull
        async for msg in pipe:           # pulls, each a receive-complete; ends at the null pull
            ...
        await pipe.result()              # wait for the notification, then complete

The lifecycle is `PipeCore`'s, shared with the sync `Pipe`; only the waiting differs.
"""

from __future__ import annotations

import asyncio
from typing import Any, Callable

import grpc
from grpc._cython import cygrpc

from callstate import codes
from callstate.client.pipe_core import ACT, PipeCore
from callstate.client.shared_surface import NOTICE_CLIENT_CLOSED, notice_failed, notice_outcome
from callstate.errors import CallError
from callstate.lifecycle import C, CANCEL_ESCALATED, CANCEL_SENT, PIPE_IN, PIPE_KINDS, PIPE_OUT, LifecycleError
from callstate.pipe_script import PipeScript, validate_pipe
from callstate.script import ScriptError
from callstate.v1 import callstate_pb2 as pb
from callstate.wire import CALL_ID_KEY, PIPE_SCRIPT_KEY, new_call_id


NULL_PUSH_MESSAGE = pb.PipeMessage(null_push=True)


def pipe_script_proto(script: PipeScript | pb.PipeScript | None) -> pb.PipeScript | None:
    return script.to_proto() if isinstance(script, PipeScript) else script


def check_kind(kind: str) -> None:
    if kind not in PIPE_KINDS:
        raise ValueError(f"unknown pipe kind {kind!r}; expected one of {', '.join(PIPE_KINDS)}")


async def _write_keeping_status(rpc: Any, msg: pb.PipeMessage) -> bool:
    """`rpc.write(msg)`; False when the call has ended. A write that fails because the server
    already ended the call must leave the server's status in place: grpc.aio's own `write()`
    replaces it with INTERNAL when it notices the failed send before the status arrives
    (measured on grpcio 1.85: 59 of 100 in pipes aborted after their 2nd message ended 1726
    instead of the server's code). So the send goes to the call's core object, as `write()`
    does, without that replacement; other grpc versions fall back to `write()`."""
    inner, metadata_sent = getattr(rpc, "_cython_call", None), getattr(rpc, "_metadata_sent", None)
    if inner is None or metadata_sent is None or not hasattr(inner, "send_serialized_message"):
        await rpc.write(msg)
        return True
    if rpc.done():
        return False
    if not metadata_sent.is_set():
        await metadata_sent.wait()
        if rpc.done():
            return False
    try:
        await inner.send_serialized_message(msg.SerializeToString())
    except cygrpc.InternalError:
        return False
    except asyncio.CancelledError:
        if not rpc.cancelled():
            rpc.cancel()
        raise
    return True


class AsyncPipe:
    """One pipe call on the caller's side, driven on the event loop."""

    def __init__(self, client: Any, kind: str, script: PipeScript | pb.PipeScript | None = None, *,
                 call_id: str | None = None, timeout: float | None = None, log_messages: bool = False) -> None:
        check_kind(kind)
        self.kind = kind
        self._client = client
        self._script = pipe_script_proto(script)
        self._timeout = timeout if timeout is not None else client.timeout
        self._core = PipeCore(call_id or new_call_id(), kind, client.log, log_messages)
        self._rpc: Any = None
        self._driver: asyncio.Future[None] | None = None
        self._escalation: asyncio.TimerHandle | None = None
        self._notice: asyncio.Future[None] | None = None
        self._drainer: asyncio.Future[None] | None = None
        self._completed_for_caller = False

    # -- what the caller sees ----------------------------------------------------------------
    @property
    def call_id(self) -> str:
        return self._core.call_id

    @property
    def state(self) -> str:
        return self._core.state

    @property
    def history(self) -> list[str]:
        return self._core.history

    @property
    def sent(self) -> int:
        return self._core.sent

    @property
    def received(self) -> int:
        return self._core.received

    @property
    def code(self) -> int | None:
        return self._core.code

    def done(self) -> bool:
        return self._core.notified

    def add_done_callback(self, callback: Callable[["AsyncPipe"], None]) -> None:
        """Call `callback(pipe)` on the loop once the call-complete notification arrives (for an
        out pipe or both, after the caller has pulled the server's messages: the status follows
        them, and like `wait()` this pulls them). At once (soon) when it has."""
        if self._core.notified or self._driver is None:
            asyncio.get_running_loop().call_soon(callback, self)
            return
        self._driver.add_done_callback(lambda _: callback(self))
        if self.kind != PIPE_IN and self._drainer is None:
            self._drainer = asyncio.ensure_future(self._drain())

    def status(self) -> int:
        return self._core.status()

    # -- making the call -------------------------------------------------------------------------
    def start(self) -> "AsyncPipe":
        """C -> Push (in, both) or Pull (out): open the stream; returns at once."""
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
            self._rpc = stub.PipeOut(pb.PipeRequest(call_id=self.call_id, script=self._script), metadata=metadata,
                                     timeout=self._timeout)
        elif self.kind == PIPE_IN:
            self._rpc = stub.PipeIn(metadata=metadata, timeout=self._timeout)
        else:
            self._rpc = stub.PipeBoth(metadata=metadata, timeout=self._timeout)
        self._client._live.add(self)
        core.started()
        self._driver = asyncio.ensure_future(self._drive())
        return self

    async def headers(self) -> tuple[tuple[str, Any], ...]:
        """Wait for the server's initial metadata (logged once as the `headers` event)."""
        self._need_rpc("headers")
        md = await self._rpc.initial_metadata()
        self._core.headers()
        return tuple(md or ())

    async def push(self, payload: bytes = b"") -> None:
        """Push one message; returns on its send-complete notification (the write was taken)."""
        core = self._need_rpc("push")
        if not core.can_push():
            raise CallError(codes.RPC_X_PIPE_CLOSED, self.call_id, details=f"push in state {core.state}")
        try:
            taken = await _write_keeping_status(self._rpc, pb.PipeMessage(seq=core.sent + 1, payload=payload))
        except (grpc.aio.AioRpcError, grpc.aio.UsageError, grpc.aio.InternalError, asyncio.InvalidStateError):
            taken = False
        if not taken:
            raise CallError(codes.RPC_X_PIPE_CLOSED, self.call_id, details="push failed: the call has ended")
        core.pushed()

    async def close_push(self) -> None:
        """The null push: end the caller's pipe (half-close). In: Push -> WComp; both: Push -> Pull."""
        core = self._need_rpc("close_push")
        core.null_push()
        try:
            # the null push travels as a message of its own: the server then knows the end of
            # the stream is a half-close, not a cancel
            if await _write_keeping_status(self._rpc, NULL_PUSH_MESSAGE):
                await self._rpc.done_writing()
        except (grpc.aio.AioRpcError, grpc.aio.UsageError, grpc.aio.InternalError, asyncio.InvalidStateError):
            pass   # the call ended meanwhile: its status says how

    async def pull(self) -> pb.PipeMessage | None:
        """Pull one message (its receive-complete notification), or None at the server's null push."""
        rpc, core = self._rpc, self._core
        if rpc is None or self.kind == PIPE_IN:
            self._need_rpc("pull")
            raise CallError(codes.RPC_X_PIPE_CLOSED, self.call_id, details="an in pipe has nothing to pull")
        try:
            msg = await rpc.read()
        except (grpc.aio.AioRpcError, grpc.aio.UsageError, grpc.aio.InternalError, asyncio.CancelledError) as exc:
            if isinstance(exc, asyncio.CancelledError) and not rpc.cancelled():
                raise
            msg = grpc.aio.EOF
        if msg is grpc.aio.EOF:
            core.stream_ended()
            return None
        core.pulled()
        return msg

    def __aiter__(self) -> "AsyncPipe":
        return self

    async def __anext__(self) -> pb.PipeMessage:
        msg = await self.pull()
        if msg is None:
            raise StopAsyncIteration
        return msg

    def cancel(self, abortive: bool = True, timeout: float | None = None) -> None:
        """RpcAsyncCancelCall, as for unary calls: abortive is a gRPC cancel (the notification is
        rushed), non-abortive a cancel notice the server's on-cancel policy answers."""
        if self._core.cancel(abortive, self._rpc is not None) != ACT:
            return
        if abortive:
            self._rpc.cancel()
            return
        self._notice = asyncio.ensure_future(self._notice_and_log())
        if timeout is not None:
            if self._escalation is not None:
                self._escalation.cancel()
            self._escalation = asyncio.get_running_loop().call_later(timeout, self._escalate, timeout)

    def _escalate(self, timeout: float) -> None:
        if self._core.outcome_known or self._core.lifecycle.ended:
            return
        self._core.event(CANCEL_ESCALATED, f"no answer {timeout:g}s after the cancel notice")
        try:
            self.cancel(abortive=True)
        except (CallError, LifecycleError):
            pass

    async def _notice_and_log(self) -> None:
        try:
            reply = await self._client._stub.Cancel(pb.CancelRequest(call_id=self.call_id), metadata=self._client._auth_metadata,
                                                    timeout=self._timeout)
        except grpc.aio.AioRpcError as err:
            self._core.event(CANCEL_SENT, notice_failed(err.code()))
        except asyncio.CancelledError:
            self._core.event(CANCEL_SENT, NOTICE_CLIENT_CLOSED)
        else:
            self._core.event(CANCEL_SENT, notice_outcome(reply))

    # -- the notification ------------------------------------------------------------------------
    async def wait(self, timeout: float | None = None) -> bool:
        """Until the call-complete notification can be delivered (the caller may complete); False
        on timeout. The server's unread messages (out pipe, both) are pulled and counted on the
        way, since its status follows them; a timeout leaves the call as it was."""
        if self._core.notified:
            return True
        self._need_rpc("wait")
        assert self._driver is not None
        if self.kind != PIPE_IN and self._drainer is None:
            self._drainer = asyncio.ensure_future(self._drain())
        await asyncio.wait((self._driver,), timeout=timeout)   # never cancels the driver or a read
        return self._core.notified

    async def _drain(self) -> None:
        try:
            while await self.pull() is not None:
                pass
        except CallError:
            pass

    async def result(self, timeout: float | None = None) -> Any:
        """Wait for the notification, then complete: the PipeReply (in pipe) or None, or CallError."""
        if not await self.wait(timeout):
            raise CallError(codes.RPC_S_TIMEOUT, self.call_id, details=f"no notification within {timeout:g}s")
        if self._completed_for_caller and self._core.lifecycle.ended and self._core.code is not None:
            if self._core.code != codes.RPC_S_OK:
                raise CallError(self._core.code, self.call_id, grpc_status=self._core.grpc_status,
                                details=self._core.details)
            return self._core.reply
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

    async def _drive(self) -> None:
        rpc, core = self._rpc, self._core
        reply = None
        try:
            if self.kind == PIPE_IN:
                reply = await rpc
                status: grpc.StatusCode | None = grpc.StatusCode.OK
                trailing, details = None, None
            else:
                status = await rpc.code()
                trailing, details = await rpc.trailing_metadata(), await rpc.details()
        except grpc.aio.AioRpcError as err:
            status, trailing, details = err.code(), err.trailing_metadata(), err.details()
        except asyncio.CancelledError:
            status, trailing, details = None, None, None
        if self._escalation is not None:
            self._escalation.cancel()
        code, name, text = codes.client_outcome(status, trailing, details, cancelled_here=status is None,
                                                abortive_cancel=core.abortive_cancel)
        core.notify(code, reply, name, text)

    def _need_rpc(self, what: str) -> PipeCore:
        if self._rpc is None:
            raise CallError(codes.RPC_S_INVALID_ASYNC_CALL, self.call_id, details=f"{what}() before start()")
        return self._core
