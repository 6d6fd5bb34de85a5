"""`Emulator.PipeIn / PipeOut / PipeBoth`: asynchronous pipes as gRPC streams.

The handler follows the server's pipe table of its kind (callstate.lifecycle.PIPE_TABLES):
D, then Pull (in pipe) or Push (out pipe, both), message notifications as self-loops (logged
only with `--log-messages`), the client's null push as `null_pull` into NP, and the scripted
outcome (Complete, Abort with a code, fatal) at its point: before the first message, after the
Nth message in or out, after the client's half-close, or at the end.

A cancel surfaces in a streaming handler in three ways, and each is logged as a cancel seen,
never as a half-close:

* asyncio.CancelledError at an await (gRPC cancels the handler's task);
* grpc's internal ExecuteBatchError (or another error) from `context.write` while the call
  is being torn down, with `context.cancelled()` true;
* an early end of the request iterator, which looks exactly like a half-close: the
  CancelledError only arrives at a later await. So an end of the client's stream counts as a
  null push only once the handler has yielded to the loop and the call is still not cancelled.
"""

from __future__ import annotations

import asyncio
from typing import Any, AsyncIterator, Callable, NoReturn

import grpc
from grpc._cython import cygrpc

from callstate import codes
from callstate.grpc_status import grpc_status_for, status_from_value
from callstate.lifecycle import (ABORT, ABORTED, ABORTIVE, COMPLETE, COMPLETED, FATAL, NULL_PULL,
                                 PIPE_BOTH, PIPE_IN, PIPE_OUT, RECEIVE_COMPLETE, SEND_COMPLETE, START_PULL, START_PUSH,
                                 server_end_code)
from callstate.pipe_script import DEFAULT_INTERVAL_MS, DEFAULT_MESSAGES, validate_pipe
from callstate.script import OUTCOME_NAMES, OUTCOMES, Mix, ScriptError, cancel_poll_ms
from callstate.server.answer import Answer, BadPush
from callstate.server.calls import STOPPING, ServerCall, send_abort, send_fatal
from callstate.server.dispatch import Dispatcher, bad_key, deadline_ms, refuse
from callstate.v1 import callstate_pb2 as pb
from callstate.wire import CALL_ID_KEY, CANCEL_KEY_KEY, CODE_KEY, PIPE_SCRIPT_KEY, new_call_id

_OK = grpc.StatusCode.OK.name
_COMPLETE, _ABORT, _FATAL, _HOLD = pb.OUTCOME_COMPLETE, pb.OUTCOME_ABORT, pb.OUTCOME_FATAL, pb.OUTCOME_HOLD
_BEFORE, _AFTER_IN, _AFTER_OUT, _AFTER_HC, _END = (pb.PIPE_POINT_BEFORE_FIRST, pb.PIPE_POINT_AFTER_IN,
                                                   pb.PIPE_POINT_AFTER_OUT, pb.PIPE_POINT_AFTER_HALF_CLOSE,
                                                   pb.PIPE_POINT_UNSPECIFIED)
# An end of the request stream without the caller's null-push message may be a cancel whose
# CancelledError has not arrived yet (measured: 3 loop iterations were not always enough):
# a few yields, then a few milliseconds, before it is taken for a half-close. Not longer: every
# caller without the null-push message (any client of a stand-in's streaming method, callstate's
# own included) waits it at each half-close. grpc-js's call.cancel() on a client stream sends
# END_STREAM before its RST_STREAM, and its cancel surfaced 1-21 ms after these 5 ms: such a
# cancel may be logged as the half-close it first looks like, then Comp and End 0 while the
# caller has CANCELLED, a race the checker allows (an abortive cancel does not wait for the
# server). Waiting 50 ms caught them all, and doubled the time of 300 `load --method` calls on
# shop.v1.Shop/Upload (2.2 -> 4.2 s): a stand-in that slow would distort every load run through it.
_HALF_CLOSE_GRACE = (0, 0, 0, 0.001, 0.004)
# After the caller's null-push message, how long to wait for the end of its stream (END_STREAM).
_END_AFTER_NULL_PUSH = 1.0
# How a cancel shows up on a write or read while gRPC tears the call down.
_CANCEL_ERRORS = (asyncio.CancelledError, cygrpc.ExecuteBatchError, cygrpc.InternalError)


class _Ended(Exception):
    """The handler reached its outcome (the call is in End); unwinds to the method."""

    def __init__(self, reply: Any = None) -> None:
        self.reply = reply


class PipeRun:
    """One pipe call on the server: its ServerCall, its counts, its reader task."""

    def __init__(self, owner: "PipeServicer", call: ServerCall, kind: str, script: pb.PipeScript,
                 context: grpc.aio.ServicerContext, requests: AsyncIterator[Any] | None,
                 answer: Answer | None = None) -> None:
        self.owner, self.call, self.kind, self.script, self.context = owner, call, kind, script, context
        self.requests = requests
        self.answer = answer   # a stand-in's call: the user's messages in, its reply out
        self.sent = self.received = self.received_bytes = 0
        self.reader_done = False      # the client's stream ended (a half-close, or a cancel)
        self.reader_error: BaseException | None = None
        self.half_closed = False      # confirmed: the client's null push arrived
        self.null_push_seen = False   # it came as an explicit null-push message
        self.stream_closed = False    # the request stream itself ended (END_STREAM, or torn down)
        self.caller_breach = False    # the caller pushed after its null push
        # a push refused (over the server's payload limit, or not the stand-in's request type): why the call ends 87
        self.bad_push: str | None = None
        self._reader: asyncio.Task[None] | None = None
        self.log_messages = owner.log_messages
        self.policy = script.on_cancel or pb.ON_CANCEL_ABORT
        self.ignore = self.policy == pb.ON_CANCEL_IGNORE
        self.outcome = script.outcome
        loop = asyncio.get_running_loop()
        self.hold_deadline = loop.time() + owner.config.max_hold if self.outcome == _HOLD else None
        self.overdue = False   # the max-hold watchdog cut the handler short (see PipeServicer._watch_max_hold)

    # -- recording ------------------------------------------------------------------------
    def move(self, move: str, code: int | None = None, status: str | None = None, extra: str = "") -> None:
        self.call.move(move, code, status, extra or None, self.sent, self.received)

    # -- the client's pipe -------------------------------------------------------------------
    def start_reader(self) -> None:
        if self.requests is not None:
            self._reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        call, stop_at = self.call, self._wake_count()
        pipe_messages = self.answer is None   # callstate.v1.PipeMessage: a null push, a payload
        limit = self.owner.config.limits.max_payload_bytes   # each push's, looked up once per pipe
        try:
            async for msg in self.requests:  # type: ignore[union-attr]
                if self.null_push_seen:   # nothing counts after the null push; read on to the stream's end
                    if not self.caller_breach:   # but a push after it breaks the pipe discipline
                        self.caller_breach = True
                        call.breach("the caller pushed after its null push")
                        call.wake()
                    continue
                if pipe_messages and msg.null_push:   # the caller's explicit null push: a half-close, not a cancel
                    self.null_push_seen = True
                    self.reader_done = True
                    call.wake()
                    continue
                self.received += 1
                size = len(msg.payload) if pipe_messages else msg.ByteSize()
                if size > limit:   # refused here, said as such to both sides
                    self.bad_push = f"push {self.received}: {size} bytes, over the server's payload limit ({limit} bytes)"
                    call.wake()
                    return
                if pipe_messages:
                    self.received_bytes += size
                if self.log_messages and not call.ended:
                    call.move(RECEIVE_COMPLETE, sent=self.sent, received=self.received)
                if self.received == stop_at:   # the script's point: pull no further
                    call.wake()
                    return
        except BadPush as exc:   # a stand-in's caller sent a message that is not its method's request
            self.bad_push = str(exc)
            call.wake()
            return
        except BaseException as exc:   # the call is being torn down under the iterator
            self.reader_error = exc
        self.reader_done = self.stream_closed = True
        call.wake()

    def _wake_count(self) -> int:
        return self.script.at_count if self.script.at == _AFTER_IN else -1

    async def stop_reader(self) -> None:
        if self._reader is not None and not self._reader.done():
            self._reader.cancel()
            try:
                await self._reader
            except BaseException:   # noqa: BLE001 - its end is recorded in reader_error
                pass

    async def confirm_half_close(self) -> None:
        """The client's stream ended: a null push, or a cancel not surfaced yet. A callstate
        client says which with its null-push message; for any other client, wait a moment for a
        pending cancel to surface (as CancelledError here, or context.cancelled()), then decide."""
        if self.half_closed:
            return
        if self.null_push_seen:
            # the stream's own end follows the null-push message at once: answer after it, as a
            # server that answers before the request ends is reset by some proxies (HAProxy 2.6
            # sends the caller RST_STREAM CANCEL); a caller that never closes is not waited for long
            await self.wait(_END_AFTER_NULL_PUSH, lambda: self.stream_closed)
        else:
            for pause in _HALF_CLOSE_GRACE:
                if self.reader_error is not None or self.context.cancelled() or self.context.done():
                    raise asyncio.CancelledError("the client's stream ended by a cancel")
                await asyncio.sleep(pause)
        if self.reader_error is not None or self.context.cancelled() or self.context.done():
            raise asyncio.CancelledError("the client's stream ended by a cancel")
        self.half_closed = True
        self.move(NULL_PULL)

    # -- waiting -------------------------------------------------------------------------------
    async def wait(self, seconds: float | None, until: Callable[[], bool] = lambda: False) -> None:
        """Wait up to `seconds` (None: until the hold deadline or forever) for `until()`, with a
        cancel notice or the server stopping acted on at once (unless the script ignores it)."""
        loop = asyncio.get_running_loop()
        deadline = None if seconds is None else loop.time() + seconds
        if self.hold_deadline is not None:
            deadline = self.hold_deadline if deadline is None else min(deadline, self.hold_deadline)
        while True:
            await self.check_signals()
            if until():
                return
            remaining = None if deadline is None else deadline - loop.time()
            if remaining is not None and remaining <= 0:
                return
            await asyncio.wait((self.call.wake_future(),), timeout=self.call.poll_timeout(remaining))

    async def check_signals(self) -> None:
        call = self.call
        call.test_cancel()   # a polling handler: sees a waiting cancel once its poll instant came
        if call.stopping:
            await self.abort(*STOPPING)
        if call.cancel_kind is not None and not self.ignore:
            if self.policy == pb.ON_CANCEL_COMPLETE:
                self.complete()
            await self.abort(codes.RPC_S_CALL_CANCELLED, grpc.StatusCode.CANCELLED,
                             f"cancelled by the caller ({call.cancel_kind})")
        if self.hold_deadline is not None and asyncio.get_running_loop().time() >= self.hold_deadline:
            await self.abort(codes.RPC_S_TIMEOUT, grpc.StatusCode.DEADLINE_EXCEEDED,
                             f"held for the server's max hold time ({self.owner.config.max_hold:g}s)")
        if self.bad_push is not None:
            await self.abort(codes.RPC_S_INVALID_ARG, grpc_status_for(codes.RPC_S_INVALID_ARG), self.bad_push)
        if self.caller_breach:   # the runtime fails the call (a caller that checks its own pushes never gets here)
            await self.abort(codes.RPC_X_PIPE_DISCIPLINE_ERROR, grpc_status_for(codes.RPC_X_PIPE_DISCIPLINE_ERROR),
                             "the caller pushed after its null push")

    # -- outcomes (each raises _Ended, or the error gRPC turns into the status) ---------------
    async def outcome_now(self) -> NoReturn:
        """The script's point is reached: its processing delay, then its outcome."""
        script = self.script
        if script.outcome_delay_ms:
            await self.wait(script.outcome_delay_ms / 1000)
        if self.outcome == _HOLD:
            await self.wait(None)   # until a cancel, the server stopping or max hold: never returns
        self.call.test_cancel(at_outcome=True)   # a polling handler asks once more before its outcome
        await self.check_signals()
        self.scripted_outcome()

    def scripted_outcome(self) -> NoReturn:
        if self.outcome == _COMPLETE:
            if self.script.breach == pb.PIPE_BREACH_COMPLETE_UNDRAINED and not self.half_closed:
                self.breach_discipline("completed before pulling the caller's pipe to its end")
            self.complete()
        if self.outcome == _ABORT:
            code = self.script.abort_code or self.owner.config.abort_code
            status = status_from_value(self.script.abort_grpc_status) if self.script.abort_grpc_status else None
            raise _AbortNow(code, status or grpc_status_for(code),
                            self.script.abort_message or f"aborted with {codes.describe(code)}")
        if self.outcome == _FATAL:
            self.move(FATAL, server_end_code(FATAL), codes.grpc_status_name_for(codes.RPC_S_CALL_FAILED))
            raise _FatalNow(self.script.fatal_message or "scripted fatal failure")
        raise _AbortNow(codes.RPC_S_CALL_CANCELLED, grpc.StatusCode.CANCELLED, "held call ended by a cancel")

    def complete(self) -> NoReturn:
        if self.kind == PIPE_IN and self.answer is not None and not self.call.rpc_cancelled:
            # a stand-in's reply is pinned until its caller takes it, as a unary reply is
            size = self.answer.reply.ByteSize()
            if size and (over := self.owner.dispatcher.backlog.reserve(self.context, size)):
                raise _AbortNow(codes.RPC_S_SERVER_TOO_BUSY, grpc.StatusCode.RESOURCE_EXHAUSTED, over)
        self.move(COMPLETE)
        self.move(COMPLETED, server_end_code(COMPLETED), _OK)
        reply = None
        if self.kind == PIPE_IN and self.answer is not None:
            reply = self.answer.reply
        elif self.kind == PIPE_IN:
            reply = pb.PipeReply(call_id=self.call.call_id, received=self.received,
                                 received_bytes=self.received_bytes, cancel_seen=self.call.cancel_kind is not None)
        raise _Ended(reply)

    async def abort(self, code: int, status: grpc.StatusCode, message: str) -> NoReturn:
        raise _AbortNow(code, status, message)

    def breach_discipline(self, what: str) -> NoReturn:
        """The handler broke a pipe rule on purpose (its script's breach): logged, and the runtime
        fails the call with RPC_X_PIPE_DISCIPLINE_ERROR instead of what the handler meant to do."""
        self.call.breach(what)
        raise _AbortNow(codes.RPC_X_PIPE_DISCIPLINE_ERROR, grpc_status_for(codes.RPC_X_PIPE_DISCIPLINE_ERROR),
                        f"pipe discipline: the server {what}")

    async def push_after_end(self) -> NoReturn:
        """Breach push-after-end: the server's null push (a message saying so), then one more."""
        await self.context.write(pb.PipeMessage(null_push=True))
        self.sent += 1
        await self.context.write(pb.PipeMessage(seq=self.sent, payload=bytes(self.script.message_bytes)))
        self.breach_discipline("pushed after its null push")

    def record_abort(self, code: int, status: grpc.StatusCode, message: str) -> None:
        self.move(ABORT, extra=f"code={code}")
        self.move(ABORTED, server_end_code(ABORTED, code), status.name, message)

    # -- the server's pipe ----------------------------------------------------------------------
    async def push(self, until: Callable[[], bool]) -> bool:
        """Send the script's messages (a held pipe: until its end); True when `until()` cut it short."""
        count, interval, payload = self._push_plan()
        after_out = self.script.at_count if self.script.at == _AFTER_OUT else -1
        write, call, log_messages = self.context.write, self.call, self.log_messages
        reply = None if self.answer is None else self.answer.reply   # a stand-in pushes its reply
        while count is None or self.sent < count:
            if self.sent == after_out or until():
                return True
            if self._signalled():
                await self._between_pushes()
            # counted when handed to gRPC: a cancel can interrupt the await after the message left
            self.sent += 1
            await write(pb.PipeMessage(seq=self.sent, payload=payload) if reply is None else reply)
            if log_messages:
                call.move(SEND_COMPLETE, sent=self.sent, received=self.received)
            if interval:
                await self.wait(interval, until)
        return self.sent == after_out or until()

    def _push_plan(self) -> tuple[int | None, float, bytes]:
        """How many messages (None: until the held pipe ends), how far apart, and their payload:
        refused with 1723 when two of them do not fit in the reply backlog."""
        script, hold = self.script, self.outcome == _HOLD
        count = None if hold else (script.messages if self._scripted else DEFAULT_MESSAGES)
        interval = script.interval_ms / 1000 or (DEFAULT_INTERVAL_MS / 1000 if hold else 0)
        # a stand-in pushes its rule's reply, whatever the script's message_bytes
        size = script.message_bytes if self.answer is None else self.answer.reply.ByteSize()
        if size and (over := self.owner.dispatcher.backlog.reserve(self.context, 2 * size)):
            # two messages pinned at most: one in the transport, the next waiting for it (checked
            # before the payload is made: refused pipes allocate nothing)
            raise _AbortNow(codes.RPC_S_SERVER_TOO_BUSY, grpc.StatusCode.RESOURCE_EXHAUSTED, over)
        return count, interval, bytes(size) if self.answer is None else b""

    def _signalled(self) -> bool:
        """Something to act on before the next push: a cancel, the server stopping, the client's
        stream ended, a polling handler's cancel waiting."""
        call = self.call
        return (call.cancel_kind is not None or call.stopping or self.reader_done
                or bool(call.polls and call.polls.pending))

    async def _between_pushes(self) -> None:
        await self.check_signals()
        if self.reader_done and not self.half_closed and self.kind == PIPE_BOTH:
            await self.confirm_half_close()

    _scripted = True


class _AbortNow(Exception):
    def __init__(self, code: int, status: grpc.StatusCode, message: str) -> None:
        self.code, self.status, self.message = code, status, message


class _FatalNow(Exception):
    pass


class PipeServicer:
    """The pipe methods of `Emulator`; shares the emulator's live calls, so `Emulator.Cancel`
    (the non-abortive cancel notice) reaches pipe calls too."""

    def __init__(self, dispatcher: Dispatcher) -> None:
        self.dispatcher = dispatcher
        self.config = dispatcher.config
        self.log_messages = getattr(dispatcher.config, "log_messages", False)

    async def pipe_in(self, requests: AsyncIterator[pb.PipeMessage], context: grpc.aio.ServicerContext) -> pb.PipeReply:
        return await self._serve(PIPE_IN, None, requests, context)

    async def pipe_out(self, request: pb.PipeRequest, context: grpc.aio.ServicerContext) -> None:
        await self._serve(PIPE_OUT, request, None, context)

    async def pipe_both(self, requests: AsyncIterator[pb.PipeMessage], context: grpc.aio.ServicerContext) -> None:
        await self._serve(PIPE_BOTH, None, requests, context)

    async def _serve(self, kind: str, request: pb.PipeRequest | None, requests: AsyncIterator[Any] | None,
                     context: grpc.aio.ServicerContext, answer: Answer | None = None) -> Any:
        """A pipe of `kind`; with `answer`, a stand-in's streaming call of a user's method."""
        d = self.dispatcher
        call_id, cancel_key, metadata = _identity(request, context, answer)
        # refused before dispatch, as unary calls are: such an id is never logged
        if refusal := d.bad_id(call_id) or bad_key(cancel_key, CANCEL_KEY_KEY):
            await refuse(context, refusal)
        call_id = call_id or new_call_id()
        if refusal := d.in_flight(call_id):
            await refuse(context, refusal)
        script, bad, scripted = self._script_of(kind, request, metadata, answer)
        call = d.dispatch(call_id, cancel_key, OUTCOME_NAMES.get(script.outcome, "?"), context, kind,
                          deadline_ms=deadline_ms(context), method=answer and answer.method, rule=answer and answer.rule,
                          poll_ms=cancel_poll_ms(script) if scripted else None)
        run = PipeRun(self, call, kind, script, context, requests, answer)
        run._scripted = scripted
        watchdog = self._watch_max_hold(run)
        try:
            return await self._run(run, bad)
        except BaseException as exc:
            if not call.ended:
                call.end_on_error(exc)
            raise
        finally:
            d.wakeups.drop(watchdog)
            await run.stop_reader()
            d.release(call_id)

    def _script_of(self, kind: str, request: pb.PipeRequest | None, metadata: dict[str, Any],
                   answer: Answer | None) -> tuple[pb.PipeScript, str | None, bool]:
        """The pipe's script with its outcome (drawn from the mix when it has none), why it is
        refused (None: it is not), and whether the caller (or the stand-in's rule) gave one."""
        if answer is None:
            script, bad = _script(request, metadata)
            mix = self.config.mix
        else:   # checked before its dispatch; a copy, as the draw below fills in its outcome
            script, bad, mix = _copy(answer.script), answer.oversize, answer.mix or self.config.mix
            if script is not None and script.breach == pb.PIPE_BREACH_PUSH_AFTER_END:   # no null push to send
                bad = "script.breach: push-after-end needs callstate.v1.PipeMessage (a user's messages carry no null push)"
        scripted = script is not None
        if bad is None and scripted and answer is None:   # the caller's script as sent, before an outcome is drawn
            try:
                validate_pipe(script, kind, self.config.limits)
            except ScriptError as exc:
                bad = str(exc)
        return _with_outcome(script, mix, self.dispatcher.rng), bad, scripted

    async def _run(self, run: PipeRun, bad: str | None) -> Any:
        """The dispatched pipe to its end: its script, or the refusal found at dispatch; each way
        it can end (an outcome, an abort, a fatal failure, a cancel) sent or recorded."""
        call, context = run.call, run.context
        try:
            if bad is not None:
                raise _AbortNow(codes.RPC_S_INVALID_ARG, grpc.StatusCode.INVALID_ARGUMENT, bad)
            if self.dispatcher.over_capacity():
                raise _AbortNow(codes.RPC_S_SERVER_TOO_BUSY, grpc.StatusCode.RESOURCE_EXHAUSTED,
                                f"over the in-flight limit ({self.config.max_in_flight})")
            await context.send_initial_metadata(((CALL_ID_KEY, call.call_id),))   # the headers
            await self._script(run)
        except _Ended as done:
            return done.reply
        except _AbortNow as ab:
            run.record_abort(ab.code, ab.status, ab.message)
            if call.rpc_cancelled:
                raise asyncio.CancelledError() from None
            await send_abort(context, ab.status, ab.message, ab.code)
        except _FatalNow as fatal:
            if call.rpc_cancelled:
                raise asyncio.CancelledError() from None
            await send_fatal(context, str(fatal))
        except BaseException as exc:
            await self._if_overdue(run)
            if call.ended or not _is_cancel(exc, context, run):
                raise
            if call.stopping:   # not its caller: the server's stop, at the end of --grace (a write the caller
                # never took held it up); its caller is told UNAVAILABLE
                run.record_abort(*STOPPING)
                raise asyncio.CancelledError() from None
            call.cancel_seen(ABORTIVE)
            try:
                await call.until_polled()   # a polling handler works on until its next poll sees it
            except asyncio.CancelledError:
                if not (run.overdue or call.stopping):
                    raise
                call.test_cancel(at_outcome=True)   # cut short by --max-hold or the stop: it looks once more
            self._end_after_abortive(run)   # ends per the on-cancel policy
            raise asyncio.CancelledError() from None
        return None

    async def _if_overdue(self, run: PipeRun) -> None:
        """The max-hold watchdog cut the handler short: the call ends with 1460 (this raises)."""
        call = run.call
        if run.overdue and not call.ended and not call.rpc_cancelled:
            run.record_abort(codes.RPC_S_TIMEOUT, grpc.StatusCode.DEADLINE_EXCEEDED, _overran(self.config.max_hold))
            await run.context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, _overran(self.config.max_hold),
                                    ((CODE_KEY, str(codes.RPC_S_TIMEOUT)),))

    serve = _serve   # a stand-in's streaming calls (server/standin.py), with their Answer

    def _watch_max_hold(self, run: PipeRun) -> list[Any]:
        """--max-hold bounds every pipe from its dispatch, whatever its script and wherever it
        waits: a write the caller's closed flow-control window holds up, a silent client's
        stream, a long interval, a script that ignores cancels. Past it (and a moment for a held
        pipe to end by itself), the handler is cancelled and the call ends with 1460."""
        task = asyncio.current_task()
        assert task is not None

        def overrun() -> None:
            if not run.call.ended:
                run.overdue = True
                task.cancel()
        return self.dispatcher.wakeups.after(self.config.max_hold + 0.1, overrun)   # the server's one timer

    def _end_after_abortive(self, run: PipeRun) -> None:
        """The caller cancelled abortively (or vanished): nothing more can be sent or received.
        On-cancel abort: A 1818; complete: complete anyway; ignore: the script's own outcome now."""
        try:
            if run.policy == pb.ON_CANCEL_COMPLETE:
                run.complete()
            if run.ignore and run.outcome != _HOLD:
                run.scripted_outcome()
            raise _AbortNow(codes.RPC_S_CALL_CANCELLED, grpc.StatusCode.CANCELLED, "cancelled by the caller (abortive)")
        except _Ended:
            pass
        except _AbortNow as ab:
            run.record_abort(ab.code, ab.status, ab.message)
        except _FatalNow:
            pass

    async def _script(self, run: PipeRun) -> None:
        script, kind = run.script, run.kind
        if script.dispatch_delay_ms:
            await run.wait(script.dispatch_delay_ms / 1000)
        await run.check_signals()
        if script.at == _BEFORE:
            await run.outcome_now()
        if kind == PIPE_IN:
            run.move(START_PULL)
            run.start_reader()
            at_in = script.at == _AFTER_IN
            await run.wait(None, lambda: run.reader_done or (at_in and run.received >= script.at_count))
            if at_in and run.received >= script.at_count:
                await run.outcome_now()
            await run.confirm_half_close()
            await run.outcome_now()
        run.move(START_PUSH)
        run.start_reader()
        at_in, at_hc = script.at == _AFTER_IN, script.at == _AFTER_HC
        point_reached = (lambda: run.received >= script.at_count) if at_in else \
            (lambda: run.reader_done) if at_hc else (lambda: False)
        if await run.push(point_reached):
            if run.reader_done and (at_hc or not at_in):
                await run.confirm_half_close()
            await run.outcome_now()
        if script.breach == pb.PIPE_BREACH_PUSH_AFTER_END:
            await run.push_after_end()
        if kind == PIPE_BOTH:
            # the server's messages are all out: the end is the client's half-close
            await run.wait(None, lambda: run.reader_done or (at_in and run.received >= script.at_count))
            if not (at_in and run.received >= script.at_count):
                await run.confirm_half_close()
        await run.outcome_now()


def _overran(max_hold: float) -> str:
    return f"ran past the server's max hold time ({max_hold:g}s)"


def _is_cancel(exc: BaseException, context: grpc.aio.ServicerContext, run: PipeRun) -> bool:
    """Whether an exception out of the handler's pipe work is the caller's cancel surfacing."""
    if isinstance(exc, _CANCEL_ERRORS):
        return True
    try:
        return context.cancelled() or context.done()
    except Exception:  # noqa: BLE001 - a context torn down far enough to refuse the question
        return True


def _script(request: pb.PipeRequest | None, metadata: dict[str, Any]) -> tuple[pb.PipeScript | None, str | None]:
    """The call's script (request field first, then metadata) and why it cannot be read, if so."""
    if request is not None and request.HasField("script"):
        script = pb.PipeScript()
        script.CopyFrom(request.script)
        return script, None
    raw = metadata.get(PIPE_SCRIPT_KEY)
    if raw is None:
        return None, None
    try:
        return pb.PipeScript.FromString(raw if isinstance(raw, bytes) else raw.encode()), None
    except Exception as exc:  # noqa: BLE001 - protobuf's DecodeError and friends
        return pb.PipeScript(), f"script: metadata {PIPE_SCRIPT_KEY} is not a callstate.v1.PipeScript ({exc})"


def _identity(request: pb.PipeRequest | None, context: grpc.aio.ServicerContext,
              answer: Answer | None) -> tuple[str, str, dict[str, Any]]:
    """The pipe's call id (request field first, then metadata), its cancel key, its metadata."""
    if answer is not None:
        return answer.call_id, answer.cancel_key, {}
    metadata = {k: v for k, v in (context.invocation_metadata() or ())}
    call_id = (request.call_id if request is not None else "") or _text(metadata.get(CALL_ID_KEY))
    return call_id, _text(metadata.get(CANCEL_KEY_KEY)), metadata


def _with_outcome(script: pb.PipeScript | None, mix: Mix, rng: Any) -> pb.PipeScript:
    """The script with an outcome: none given, one drawn from the mix (a breach breaks a rule on
    the way to a complete)."""
    if script is None:
        return pb.PipeScript(outcome=OUTCOMES[mix.draw(rng)])
    if not script.outcome:
        script.outcome = _COMPLETE if script.breach else OUTCOMES[mix.draw(rng)]
    return script


def _copy(script: pb.PipeScript | None) -> pb.PipeScript | None:
    if script is None:
        return None
    copy = pb.PipeScript()
    copy.CopyFrom(script)
    return copy


def _text(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode()
    return value if isinstance(value, str) else ""
