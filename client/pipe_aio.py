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
from typing import Any, Callable, Generator

import grpc
from grpc._cython import cygrpc

from callstate import codes
from callstate.client.arguments import checked_wait_for
from callstate.client.notice_aio import AsyncNotice, after_this_step
from callstate.client.pipe_surface import STOPPED, PipeBase, check_script
from callstate.errors import CallError, WaitTimedOut
from callstate.lifecycle import PIPE_IN, PIPE_OUT
from callstate.pipe_script import PipeScript
from callstate.v1 import callstate_pb2 as pb


async def _headers_went_out(rpc: Any, metadata_sent: asyncio.Event) -> bool:
    """Wait until the call's headers went out (a message may follow them); False when the call
    ended first. grpc.aio never sets `metadata_sent` for a call cancelled before its headers
    went out (Ctrl-C right after the start): waiting for the event alone waited forever."""
    ended = asyncio.get_running_loop().create_future()
    rpc.add_done_callback(lambda _: ended.done() or ended.set_result(None))
    sent = asyncio.ensure_future(metadata_sent.wait())
    try:
        await asyncio.wait((sent, ended), return_when=asyncio.FIRST_COMPLETED)
    finally:
        sent.cancel()
    return not rpc.done()


async def _write_keeping_status(rpc: Any, msg: Any) -> bool:
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
    if not metadata_sent.is_set() and not await _headers_went_out(rpc, metadata_sent):
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


class AsyncPipe(PipeBase):
    """One pipe call on the caller's side, driven on the event loop."""

    _notice_type = AsyncNotice
    _run_soon = staticmethod(after_this_step)   # a rushed cancel's callbacks: on the loop, after cancel()

    def __init__(self, client: Any, kind: str | None = None, script: PipeScript | pb.PipeScript | None = None,
                 **kwargs: Any) -> None:
        super().__init__(client, kind, script, **kwargs)
        self._driver: asyncio.Future[None] | None = None
        self._drainer: asyncio.Future[None] | None = None
        self._read_lock: asyncio.Lock | None = None   # one read of the stream at a time (the drainer: PipeBase)
        self._headers_read: asyncio.Future[Any] | None = None   # the server's initial metadata, read once

    def add_done_callback(self, callback: Callable[["AsyncPipe"], None]) -> None:
        """Call `callback(pipe)` once the call-complete notification arrives (for an out pipe or
        both, after the caller has pulled the server's messages: the status follows them, and
        like `wait()` this pulls them). At once when it has."""
        super().add_done_callback(callback)
        if self._rpc is not None and not self.notified:
            self._drain_for_ever = True
            self._start_drainer()

    # -- the caller's moves ------------------------------------------------------------------------
    def start(self) -> "AsyncPipe":
        """C -> Push (in, both) or Pull (out): open the stream; returns at once. Raises CallError
        (C -> End, nothing to complete) when the call cannot be made."""
        self._admit(check_script, self._script, self.kind)
        try:
            metadata, open_rpc = self._metadata(), self._rpc_maker()
            if self.kind == PIPE_OUT:
                self._rpc = open_rpc(self._request(), metadata=metadata, timeout=self._timeout)
            else:
                self._rpc = open_rpc(metadata=metadata, timeout=self._timeout)
        except Exception as exc:
            raise self.not_made(exc) from exc
        self._driver = asyncio.ensure_future(self._drive())
        if self.has_callbacks:
            self._drain_for_ever = True
            self._start_drainer()   # a callback subscribed before the start: as add_done_callback does
        self.started()
        return self

    # -- the pipe ------------------------------------------------------------------------------------
    async def headers(self, timeout: float | None = None) -> tuple[tuple[str, Any], ...]:
        """Wait for the server's initial metadata (logged once as the `headers` event). WaitTimedOut
        (1460, a TimeoutError) when none came within `timeout` seconds: the pipe is left as it
        was, to wait for them again, push, cancel or complete (as the sync `Pipe.headers`)."""
        timeout = checked_wait_for(timeout)
        self._need_rpc("headers")
        if self._headers_read is None:   # one read, never cancelled by a wait that runs out
            self._headers_read = asyncio.ensure_future(self._rpc.initial_metadata())
        await asyncio.wait((self._headers_read,), timeout=timeout)
        if not self._headers_read.done():
            raise self.headers_timed_out(timeout or 0.0)
        md = self._headers_read.result()
        self.headers_arrived()
        return tuple((key, value) for key, value in md or ())

    async def push(self, payload: Any = b"") -> None:
        """Push one message; returns on its send-complete notification (the write was taken).
        On a user's method, `payload` is its request (a message or a dict; b"": the pipe's request)."""
        core = self._need_rpc("push")
        if (refusal := core.push_refusal()) is not None:   # 1831 an out pipe, 1916 closed
            raise refusal
        msg = self._message(payload, core.sent + 1)
        try:
            taken = await _write_keeping_status(self._rpc, msg)
        except (grpc.aio.AioRpcError, grpc.aio.UsageError, grpc.aio.InternalError, asyncio.InvalidStateError):
            taken = False
        if not taken:
            raise CallError(codes.RPC_X_PIPE_CLOSED, self.call_id, details=f"push in state {core.state}: the call has ended")
        core.pushed()

    async def close_push(self) -> None:
        """The null push: end the caller's pipe (half-close). In: Push -> WComp; both: Push -> Pull."""
        core = self._need_rpc("close_push")
        core.null_push()
        try:
            # the null push travels as a message of its own: the server then knows the end of
            # the stream is a half-close, not a cancel
            null = self._null_push_message
            if null is None or await _write_keeping_status(self._rpc, null):
                await self._rpc.done_writing()
        except (grpc.aio.AioRpcError, grpc.aio.UsageError, grpc.aio.InternalError, asyncio.InvalidStateError):
            pass   # the call ended meanwhile: its status says how

    async def pull(self) -> pb.PipeMessage | None:
        """Pull one message (its receive-complete notification), or None at the server's null push
        (once: a pull after it is 1918 RPC_X_PIPE_EMPTY, and data after it 1917)."""
        msg: pb.PipeMessage | None = await self._pull(draining=False)
        return msg

    async def _pull(self, draining: bool) -> Any:
        """pull(); the drainer's (`draining`) returns STOPPED once no wait wants it any more."""
        core = self._need_rpc("pull")
        if (refusal := core.pull_refusal()) is not None:   # 1831 an in pipe, 1916 completed, 1918 past the end
            raise refusal
        after_end = core.peer_null_pushed
        msg = await self._read(draining)
        if msg is STOPPED:
            return msg
        if after_end:
            raise core.after_peer_end(msg is not grpc.aio.EOF)
        if msg is grpc.aio.EOF:
            core.stream_ended()
            return None
        if self._ends_pipe(msg):   # the server ended its pipe with a message of its own
            core.null_pull_message()
            return None
        core.pulled()
        return msg

    async def _read(self, draining: bool) -> Any:
        """The stream's next message, or grpc.aio.EOF once it ended. The drainer's read
        (`draining`) gives STOPPED instead when no wait wants it any more, keeping a message it
        read meanwhile for the caller's next pull."""
        if self._read_lock is None:
            self._read_lock = asyncio.Lock()
        rpc = self._rpc
        async with self._read_lock:
            if self._stash:
                return self._stash.pop()
            if draining and not self._drain_wanted():
                return STOPPED
            try:
                msg = await rpc.read()
            except (grpc.aio.AioRpcError, grpc.aio.UsageError, grpc.aio.InternalError, asyncio.CancelledError) as exc:
                if isinstance(exc, asyncio.CancelledError) and not rpc.cancelled():
                    raise
                msg = grpc.aio.EOF
            if msg is not grpc.aio.EOF and draining and not self._drain_wanted():
                self._stash.append(msg)
                return STOPPED
        return msg

    def __aiter__(self) -> "AsyncPipe":
        return self

    async def __anext__(self) -> pb.PipeMessage:
        msg = await self.pull()
        if msg is None:
            raise StopAsyncIteration
        return msg

    # -- the notification ------------------------------------------------------------------------
    async def wait(self, timeout: float | None = None) -> bool:
        """Until the call-complete notification can be delivered (the caller may complete); False
        on timeout. The server's unread messages (out pipe, both) are pulled and counted on the
        way, since its status follows them; a timeout leaves the call as it was."""
        timeout = checked_wait_for(timeout)
        if self.notified:
            if self._owed is not None:   # a rushed cancel's callbacks, on the loop since cancel(): they run first
                await asyncio.sleep(0)
            return self._after_wait()
        self._need_rpc("wait")
        assert self._driver is not None
        self._waits += 1
        self._start_drainer()
        try:
            await asyncio.wait((self._driver,), timeout=timeout)   # never cancels the driver or a read
        finally:
            self._waits -= 1   # run out: the drainer stops, the caller may pull on
        return self._after_wait()

    def _start_drainer(self) -> None:
        if self.kind != PIPE_IN and self._drainer is None:
            self._drainer = asyncio.ensure_future(self._drain())

    async def _drain(self) -> None:
        try:
            while (msg := await self._pull(draining=True)) is not None and msg is not STOPPED:
                pass
        except CallError:
            msg = None
        if msg is STOPPED:   # no wait wants it now (a later one starts another)
            self._drainer = None
            return
        try:   # what a server that broke the discipline left after its end: its status follows it
            while await self._rpc.read() is not grpc.aio.EOF:
                pass
        except (grpc.aio.AioRpcError, grpc.aio.UsageError, grpc.aio.InternalError, asyncio.InvalidStateError):
            pass

    async def result(self, timeout: float | None = None) -> Any:
        """Wait for the notification, then complete: the PipeReply (in pipe) or None, or CallError."""
        if not await self.wait(timeout):
            raise WaitTimedOut(self.call_id, timeout)
        return self._result_after_wait()

    def __await__(self) -> Generator[Any, None, Any]:
        """`await pipe`: `await pipe.result()`, as `await call` is for a unary call."""
        return self.result().__await__()

    async def _drive(self) -> None:
        rpc, core = self._rpc, self
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
        self._stop_escalation()
        if status is not None and status != grpc.StatusCode.OK:
            details = self._client.settings.explain(status, details, trailing)
        code, name, text = codes.client_outcome(status, trailing, details, cancelled_here=status is None,
                                                abortive_cancel=core.abortive_cancel)
        core.notify(code, reply, name, text)   # a callback's failure: for the caller's wait
