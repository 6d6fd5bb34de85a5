"""`callstate.v1.Emulator`: scripted handlers that follow the server table.

Dispatch (D), then per the script: Complete (D -> Comp -> End), Abort with an
exception code (D -> A -> End), or fail fatally by raising in the handler
(D -> End). A cancel changes no state; the script's on_cancel policy decides
what the handler does next.
"""

from __future__ import annotations

import asyncio
import hmac
import random
from typing import Any, Callable

import grpc
from grpc._cython import cygrpc

from callstate import codes
from callstate.grpc_status import grpc_status_for, status_from_value
from callstate.script import OUTCOME_NAMES, OUTCOMES, Mix, RequestError, cancel_poll_ms, remember
from callstate.v1 import callstate_pb2 as pb
from callstate.v1 import callstate_pb2_grpc as pb_grpc
from callstate.lifecycle import (ABORT, ABORTED, ABORTIVE, COMPLETE, COMPLETED, FATAL, NON_ABORTIVE, UNARY,
                                 server_end_code)
from callstate.statelog import Entry
from callstate.server.answer import Answer
from callstate.server.calls import STOPPING, FatalHandlerError, ServerCall, send_abort, send_fatal
from callstate.server.config import EmulatorConfig
from callstate.server.dispatch import Dispatcher, Refusal, bad_key, deadline_ms, refuse
from callstate.server.journal import Journal
from callstate.server.notices import EarlyNotices, notice_key
from callstate.server.pipes import PipeServicer
from callstate.wire import CALL_ID_KEY, CANCEL_KEY_KEY, new_call_id

# Other modules (and callers) name these here: the configuration, the notices, the refusals.
__all__ = ["EmulatorConfig", "EmulatorServicer", "EarlyNotices", "FatalHandlerError", "Refusal", "bad_key",
           "notice_key", "refuse", "send_fatal"]

_COMPLETE, _ABORT, _FATAL, _HOLD = pb.OUTCOME_COMPLETE, pb.OUTCOME_ABORT, pb.OUTCOME_FATAL, pb.OUTCOME_HOLD
_OK = grpc.StatusCode.OK.name
_COMPLETED_CODE = server_end_code(COMPLETED)
_COMPLETE_NAME = OUTCOME_NAMES[_COMPLETE]
_ECHO, _NOT_AT_ONCE = -1, -2   # what `_script_at_once` knows of a script, beside its reply's size
_DISPATCH_WAIT, _OUTCOME_WAIT = 0, 1   # a unary script's two waits, in order
_WAITS = (_DISPATCH_WAIT, _OUTCOME_WAIT)
# Why a call is ended with an abort before its script runs: (code, status, message).
_Ending = tuple[int, grpc.StatusCode, str]


class EmulatorServicer(pb_grpc.EmulatorServicer):
    def __init__(self, config: EmulatorConfig, journal: Journal, log_append: Callable[[Entry], None]) -> None:
        self.config = config
        self._journal = journal
        self.dispatcher = Dispatcher(config, journal, log_append)
        self.backlog = self.dispatcher.backlog
        self._pipes = PipeServicer(self.dispatcher)
        self._at_once: dict[bytes, int] = {}   # `_script_at_once`, by the script's bytes
        # ... and for the last script it was asked about (a copy), what it answered
        self._last_script: tuple[pb.Script | None, tuple[bytes, int] | None] = (None, None)

    @property
    def on_dispatch(self) -> Callable[[str, Any], None] | None:
        """Tracing: told (call id, invocation metadata) at each dispatch."""
        return self.dispatcher.on_dispatch

    @on_dispatch.setter
    def on_dispatch(self, hook: Callable[[str, Any], None] | None) -> None:
        self.dispatcher.on_dispatch = hook

    # Asynchronous pipes (server/pipes.py): they share the dispatcher's live calls, so Cancel notices reach them.
    async def PipeIn(self, request_iterator, context):  # type: ignore[no-untyped-def]
        return await self._pipes.pipe_in(request_iterator, context)

    async def PipeOut(self, request, context):  # type: ignore[no-untyped-def]
        await self._pipes.pipe_out(request, context)

    async def PipeBoth(self, request_iterator, context):  # type: ignore[no-untyped-def]
        await self._pipes.pipe_both(request_iterator, context)

    @property
    def pipes(self) -> PipeServicer:
        return self._pipes

    def stop_all(self) -> None:
        """Server shutdown: every waiting handler ends its call now."""
        self.dispatcher.stop_all()

    async def Call(self, request: Any, context: grpc.aio.ServicerContext, answer: Answer | None = None) -> Any:
        """Emulator/Call, and (with `answer`) a stand-in's unary call of a user's method."""
        call_id, cancel_key, script, mix, method, rule = _unary_request(request, context, answer, self.config.mix)
        if (reply := self._call_now(request, context, answer, call_id, cancel_key)) is not None:
            return reply   # the common call, whole, in this step
        d = self.dispatcher
        if not call_id or d.refusal(call_id, cancel_key) is not None:   # checked again, in order, and refused
            call_id, headers_sent = await self._admit(call_id, cancel_key, context)
        else:
            headers_sent = False
        outcome = _outcome(script, mix, d.rng)
        call = d.dispatch(call_id, cancel_key, OUTCOME_NAMES.get(outcome, "?"), context,
                          deadline_ms=deadline_ms(context), method=method, rule=rule, poll_ms=cancel_poll_ms(script))
        try:
            if (ending := self._cannot_run(request, answer)) is not None:
                return await self._abort(call, context, *ending)
            if script is None:
                script = pb.Script()
            if script.headers_first and not headers_sent:   # the outcome then follows headers, not trailers-only
                await _send_headers(call, context)
            # The script's waits, in this frame: while a call is held only Call's own frame
            # and the call's future stay in memory (10,000 held calls add up).
            dispatch_ms, outcome_ms = script.dispatch_delay_ms, script.outcome_delay_ms
            hold = outcome == _HOLD
            overran = False
            if dispatch_ms or outcome_ms or hold:   # nothing to wait for (the common case): no clock read
                # --max-hold bounds every call, from dispatch to its end, cancels ignored or not: a
                # call whose caller is gone cannot keep a slot of --max-in-flight longer than that.
                ignore = script.on_cancel == pb.ON_CANCEL_IGNORE
                max_hold = self.config.max_hold
                loop = asyncio.get_running_loop()
                deadline = loop.time() + max_hold
                for phase in _WAITS:   # no tuple of the two waits in the frame while it is held
                    seconds = _wait_seconds(phase, script, hold, max_hold)
                    if not seconds:
                        continue
                    left = deadline - loop.time()
                    end = loop.time() + min(seconds, max(left, 0.0))
                    try:
                        while not (cut := call.interrupted(ignore)) and (remaining := end - loop.time()) > 0:
                            try:
                                await call.wake_after(remaining)
                            except asyncio.CancelledError:
                                call.cancel_seen(ABORTIVE)
                    finally:
                        call.stop_timer()
                    if cut or seconds >= left:
                        overran = not cut
                        break
            return await self._run(call, script, outcome, request, context, overran, answer)
        except BaseException as exc:
            if not call.ended:
                call.end_on_error(exc)
            raise
        finally:
            d.release(call_id)

    def _call_now(self, request: Any, context: grpc.aio.ServicerContext, answer: Answer | None, call_id: str,
                  cancel_key: str) -> pb.CallReply | None:
        """The reply of the common call, made here in one step of the loop: Emulator/Call scripted
        to complete with no wait (no delay, no hold, headers not first, no polling), with an id
        and key every refusal lets through, no notice kept for it, its request valid, its reply
        within the backlog, the server open and under its in-flight limit. Nothing can interleave
        with it, so no cancel can reach it: it makes what `Call`, `_run` and `_complete` make of
        it (the dispatch, D -> Comp -> End, the same entries, journal record and release).
        None, before anything is done: not such a call, `Call` takes it (with the id and key it read
        from the request or its metadata, once).

        A caller that sent no id (k6, grpcurl) gets the one made here in the reply's call_id and
        the trailers: its headers would go out with the reply anyway, and sending them first
        (what `Call` does for a call that waits, so that its caller can cancel it by id) is a
        batch of their own through grpc.aio, about a fifth of a bare server's work per call."""
        if answer is not None or (known := self._script_at_once(request)) is None:
            return None
        key, size = known
        d = self.dispatcher
        made = not call_id
        if made:
            call_id = new_call_id()
        if not d.admits_at_once(call_id, cancel_key):
            return None
        payload = request.payload
        if not d.known_valid(key, len(payload)):
            try:
                d.check_request(request)
            except RequestError:
                return None   # ended with 87 by `Call`
        if size == _ECHO:
            size = len(payload)
        if size and self.backlog.reserve(context, size):
            return None   # refused, nothing reserved: `_complete` ends it with 1723
        call = d.dispatch(call_id, cancel_key, _COMPLETE_NAME, context, UNARY, deadline_ms(context))
        try:
            if made:   # past the last refusal: `Call` makes its own id for a call turned away above
                context.set_trailing_metadata(((CALL_ID_KEY, call_id),))
            call.complete_now(_OK)
            reply = pb.CallReply()
            reply.call_id = call_id   # (cheaper than the constructor's keyword)
            if size:
                reply.payload = payload if known[1] == _ECHO else bytes(size)
            return reply
        except BaseException as exc:
            if not call.ended:
                call.end_on_error(exc)
            raise
        finally:
            d.release(call_id)

    def _script_at_once(self, request: pb.CallRequest) -> tuple[bytes, int] | None:
        """The bytes of the request's script and its reply's size (`_ECHO`: the payload's) when the
        script completes at once (`_runs_at_once`); None when it does not, or there is none (the mix
        draws). What a script says is worked out once, known by its bytes after that, as the
        dispatcher knows the scripts it found valid (at most as many, each at most as long)."""
        if not request.HasField("script"):
            return None
        script = request.script
        last, known = self._last_script
        if script == last:   # the same script as the last call's (a load sends the same few): equal fields
            return known
        key = script.SerializeToString()
        size = self._at_once.get(key)
        if size is None:
            size = (_ECHO if script.echo else script.reply_bytes) if _runs_at_once(script) else _NOT_AT_ONCE
            remember(self._at_once, key, size)
        known = None if size == _NOT_AT_ONCE else (key, size)
        last = pb.Script()
        last.CopyFrom(script)
        self._last_script = (last, known)
        return known

    async def _admit(self, call_id: str, cancel_key: str, context: grpc.aio.ServicerContext) -> tuple[str, bool]:
        """The call's id (made here when the caller sent none, and sent in the headers: True), or
        the call refused before its dispatch."""
        d = self.dispatcher
        if refusal := d.bad_id(call_id):   # an id that is not a short metadata value is never logged
            await refuse(context, refusal)
        headers_sent = not call_id
        if headers_sent:
            call_id = new_call_id()
            await context.send_initial_metadata(((CALL_ID_KEY, call_id),))
        if refusal := bad_key(cancel_key) or d.in_flight(call_id):
            await refuse(context, refusal)
        return call_id, headers_sent

    def _cannot_run(self, request: Any, answer: Answer | None) -> _Ending | None:
        """Why a dispatched call ends at once instead of running its script: a bad request, the
        in-flight limit, the server stopping."""
        d = self.dispatcher
        if answer is None:   # a stand-in's script was checked before its dispatch
            try:
                d.check_request(request)
            except RequestError as exc:
                return codes.RPC_S_INVALID_ARG, grpc.StatusCode.INVALID_ARGUMENT, str(exc)
        elif answer.oversize is not None:   # ... and its request's size measured, as the payload's is here
            return codes.RPC_S_INVALID_ARG, grpc.StatusCode.INVALID_ARGUMENT, answer.oversize
        if len(d.live) > self.config.max_in_flight:   # d.over_capacity(), inlined
            return (codes.RPC_S_SERVER_TOO_BUSY, grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"over the in-flight limit ({self.config.max_in_flight})")
        if d.stopping:
            return STOPPING
        return None

    async def _run(self, call: ServerCall, script: pb.Script, outcome: int, request: Any,
                   context: grpc.aio.ServicerContext, overran: bool, answer: Answer | None = None) -> Any:
        """The script's outcome, once its waits are over (`overran`: they ran past --max-hold)."""
        policy = script.on_cancel or pb.ON_CANCEL_ABORT
        ignore = policy == pb.ON_CANCEL_IGNORE
        hold = outcome == _HOLD
        max_hold = self.config.max_hold
        if call.polls is not None:
            call.test_cancel(at_outcome=True)   # a polling handler asks once more before its outcome
        if call.cancel_kind is not None and not ignore:
            if policy == pb.ON_CANCEL_COMPLETE:
                return await self._complete(call, script, request, context, answer)
            return await self._abort(call, context, codes.RPC_S_CALL_CANCELLED, grpc.StatusCode.CANCELLED,
                                     f"cancelled by the caller ({call.cancel_kind})")
        if call.stopping:
            return await self._abort(call, context, *STOPPING)
        if overran or hold:   # a hold reaches its outcome only at --max-hold (0: at once; no wait ran)
            return await self._abort(call, context, codes.RPC_S_TIMEOUT, grpc.StatusCode.DEADLINE_EXCEEDED,
                                     f"held for the server's max hold time ({max_hold:g}s)" if hold else
                                     f"ran past the server's max hold time ({max_hold:g}s)")
        if outcome == _COMPLETE:
            return await self._complete(call, script, request, context, answer)
        if outcome == _ABORT:
            code = script.abort_code or self.config.abort_code
            status = status_from_value(script.abort_grpc_status) if script.abort_grpc_status else None
            return await self._abort(call, context, code, status or grpc_status_for(code),
                                     script.abort_message or f"aborted with {codes.describe(code)}")
        # _FATAL: the handler raises while on the RPC thread; no Complete or Abort follows.
        call.move(FATAL, server_end_code(FATAL), codes.grpc_status_name_for(codes.RPC_S_CALL_FAILED))
        if call.rpc_cancelled:
            raise asyncio.CancelledError()
        await send_fatal(context, script.fatal_message or "scripted fatal failure")

    async def _complete(self, call: ServerCall, script: pb.Script, request: Any,
                        context: grpc.aio.ServicerContext, answer: Answer | None = None) -> Any:
        # a stand-in's reply (the rule's, or the response type's empty message), else the script's payload:
        # either is pinned until its caller takes it
        if answer is not None:
            size = answer.reply.ByteSize()
        else:
            size = len(request.payload) if script.echo else script.reply_bytes
        if size and (over := self.backlog.reserve(context, size)):
            return await self._abort(call, context, codes.RPC_S_SERVER_TOO_BUSY, grpc.StatusCode.RESOURCE_EXHAUSTED, over)
        call.move(COMPLETE)
        call.move(COMPLETED, _COMPLETED_CODE, _OK)
        if call.rpc_cancelled:  # completed anyway: the reply has nowhere to go
            raise asyncio.CancelledError()
        if answer is not None:
            return answer.reply
        reply = pb.CallReply(call_id=call.call_id)   # the fields left at their defaults cost nothing to set
        if size:
            reply.payload = request.payload if script.echo else bytes(size)
        if call.cancel_kind is not None:
            reply.cancel_seen = True
        return reply

    async def _abort(self, call: ServerCall, context: grpc.aio.ServicerContext, code: int, status: grpc.StatusCode,
                     message: str) -> pb.CallReply:
        """RpcAsyncAbortCall(code): D -> A -> End, the code travels in the trailers."""
        call.move(ABORT, detail=f"code={code}")
        call.move(ABORTED, server_end_code(ABORTED, code), status.name, message)
        if call.rpc_cancelled:
            raise asyncio.CancelledError()
        await send_abort(context, status, message, code)

    async def Cancel(self, request: pb.CancelRequest, context: grpc.aio.ServicerContext) -> pb.CancelReply:
        call_id = request.call_id
        if refusal := self.dispatcher.bad_id(call_id) or bad_key(request.cancel_key):
            await refuse(context, refusal)
        call = self.dispatcher.live.get(call_id)
        if call is not None:
            if call.cancel_key and not hmac.compare_digest(request.cancel_key.encode(), call.cancel_key.encode()):
                await context.abort(grpc.StatusCode.PERMISSION_DENIED,
                                    "the notice's cancel_key is not the one the call was made with")
            if call.ended:   # ended, still sending its status
                return pb.CancelReply(delivered=False, state=call.state)
            state = call.state
            call.cancel_seen(NON_ABORTIVE)
            return pb.CancelReply(delivered=True, state=state)
        known = self._journal.get(call_id)
        if known is not None or not call_id:
            return pb.CancelReply(delivered=False, state=known.state if known else "")
        # The notice overtook its call (they travel as separate RPCs): keep it for the dispatch,
        # under its id and key: it applies only to a call made with the same key.
        kept = self.dispatcher.early_notices.remember(notice_key(call_id, request.cancel_key))
        return pb.CancelReply(delivered=kept, state="")   # not kept: the caller knows its notice is lost


async def _send_headers(call: ServerCall, context: grpc.aio.ServicerContext) -> None:
    """headers_first: the initial metadata, before the script's waits. The caller's abortive cancel
    may surface here (gRPC cancels the handler's task at this await, or refuses the send): that is
    a cancel seen, and the on_cancel policy decides what the handler does, as in its waits; the
    handler did not fail (it was logged D -> End, fatal 1726)."""
    try:
        await context.send_initial_metadata(((CALL_ID_KEY, call.call_id),))
    except (asyncio.CancelledError, cygrpc.ExecuteBatchError):
        call.cancel_seen(ABORTIVE)


def _runs_at_once(script: pb.Script) -> bool:
    """A script that completes with nothing to wait for and no poll (`Emulator._call_now`)."""
    return (script.outcome == _COMPLETE and not script.dispatch_delay_ms and not script.outcome_delay_ms
            and not script.headers_first and not script.HasField("cancel_poll_ms"))


def _wait_seconds(phase: int, script: pb.Script, hold: bool, max_hold: float) -> float:
    """A unary script's wait: its dispatch delay, then its outcome's (a hold's: --max-hold)."""
    if phase == _DISPATCH_WAIT:
        return script.dispatch_delay_ms / 1000
    return max_hold if hold else script.outcome_delay_ms / 1000


def _outcome(script: pb.Script | None, mix: Mix, rng: random.Random) -> int:
    """The script's outcome, else one drawn from the mix."""
    return script.outcome if script is not None and script.outcome else OUTCOMES[mix.draw(rng)]


def _unary_request(request: Any, context: grpc.aio.ServicerContext, answer: Answer | None,
                   mix: Mix) -> tuple[str, str, pb.Script | None, Mix, str | None, str | None]:
    """The call id, cancel key, script (None: draw from the mix) and mix of a unary call, and
    the stand-in's method and rule that its entries name (None for Emulator/Call)."""
    if answer is not None:
        return (answer.call_id, answer.cancel_key, answer.script, answer.mix or mix,   # type: ignore[return-value]
                answer.method, answer.rule)
    script = request.script if request.HasField("script") else None
    call_id, cancel_key = request.call_id, request.cancel_key
    if not call_id or not cancel_key:   # called by name (grpcurl, k6, `--method`): they travel as metadata
        meta_id, meta_key = _ids_from_metadata(context)
        call_id, cancel_key = call_id or meta_id, cancel_key or meta_key
    return call_id, cancel_key, script, mix, None, None


def _ids_from_metadata(context: grpc.aio.ServicerContext) -> tuple[str, str]:
    """The call id and cancel key a caller sent as metadata ("" for each it did not): the key must
    be read too, or a cancel notice kept under it before the dispatch never finds its call."""
    call_id = cancel_key = ""
    for key, value in context.invocation_metadata() or ():
        if key == CALL_ID_KEY:
            call_id = value if isinstance(value, str) else value.decode()
        elif key == CANCEL_KEY_KEY:
            cancel_key = value if isinstance(value, str) else value.decode()
    return call_id, cancel_key
