"""`callstate.v1.Emulator`: scripted handlers that follow the server table.

Dispatch (D), then per the script: Complete (D -> Comp -> End), Abort with an
exception code (D -> A -> End), or fail fatally by raising in the handler
(D -> End). A cancel changes no state; the script's on_cancel policy decides
what the handler does next.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from dataclasses import dataclass, field
from typing import Callable

import grpc

from callstate import codes
from callstate.script import DEFAULT_ABORT_CODE, OUTCOME_NAMES, OUTCOMES, Limits, Mix, ScriptError, validate
from callstate.v1 import callstate_pb2 as pb
from callstate.v1 import callstate_pb2_grpc as pb_grpc
from callstate.lifecycle import ABORT, ABORTED, COMPLETE, COMPLETED, FATAL, NON_ABORTIVE, server_end_code
from callstate.statelog import Entry
from callstate.server.calls import ServerCall
from callstate.server.journal import Journal
from callstate.wire import CALL_ID_KEY, CODE_KEY, new_call_id

_COMPLETE, _ABORT, _FATAL, _HOLD = pb.OUTCOME_COMPLETE, pb.OUTCOME_ABORT, pb.OUTCOME_FATAL, pb.OUTCOME_HOLD
_OK = grpc.StatusCode.OK.name


class FatalHandlerError(Exception):
    """Raised on purpose by a handler scripted to fail fatally (D -> End)."""


class _DropScriptedCrashes(logging.Filter):
    """grpc logs every handler exception with a traceback; scripted crashes are
    expected and already in the state log, so they are not repeated there."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, FatalHandlerError)


logging.getLogger("grpc._cython.cygrpc").addFilter(_DropScriptedCrashes())


@dataclass
class EmulatorConfig:
    mix: Mix = field(default_factory=lambda: Mix.parse("complete=85,abort=10,fatal=5"))
    abort_code: int = DEFAULT_ABORT_CODE
    max_hold: float = 30.0
    max_in_flight: int = 100_000
    limits: Limits = field(default_factory=Limits)
    seed: int | None = None
    log_messages: bool = False   # pipes: one state-log line per message (self-loops), not only counts


class EmulatorServicer(pb_grpc.EmulatorServicer):
    def __init__(self, config: EmulatorConfig, journal: Journal, log_append: Callable[[Entry], None]) -> None:
        self.config = config
        self._journal = journal
        self._log_append = log_append
        self._rng = random.Random(config.seed)
        self.live: dict[str, ServerCall] = {}
        self._early_notices = EarlyNotices()
        self.stopping = False
        from callstate.server.pipes import PipeServicer   # it imports this module's FatalHandlerError
        self._pipes = PipeServicer(self)

    # Asynchronous pipes (server/pipes.py): they share `live`, so Cancel notices reach them.
    async def PipeIn(self, request_iterator, context):  # type: ignore[no-untyped-def]
        return await self._pipes.pipe_in(request_iterator, context)

    async def PipeOut(self, request, context):  # type: ignore[no-untyped-def]
        await self._pipes.pipe_out(request, context)

    async def PipeBoth(self, request_iterator, context):  # type: ignore[no-untyped-def]
        await self._pipes.pipe_both(request_iterator, context)

    def stop_all(self) -> None:
        """Server shutdown: every waiting handler ends its call now."""
        self.stopping = True
        for call in list(self.live.values()):
            call.stop()

    async def Call(self, request: pb.CallRequest, context: grpc.aio.ServicerContext) -> pb.CallReply:
        call_id = request.call_id or _call_id_from_metadata(context)
        if not call_id:
            call_id = new_call_id()
            await context.send_initial_metadata(((CALL_ID_KEY, call_id),))
        if call_id in self.live:
            await context.abort(grpc.StatusCode.ALREADY_EXISTS, f"call id {call_id} is already in flight",
                                ((CODE_KEY, str(codes.RPC_S_INVALID_ARG)),))
        script = request.script if request.HasField("script") else None
        outcome = script.outcome if script is not None and script.outcome else OUTCOMES[self.config.mix.draw(self._rng)]
        call = ServerCall(call_id, self._journal, self._log_append, OUTCOME_NAMES.get(outcome, "?"))
        self.live[call_id] = call
        if self._early_notices and self._early_notices.take(call_id):
            call.cancel_seen(NON_ABORTIVE)
        try:
            if script is not None:
                try:
                    validate(script, self.config.limits)
                except ScriptError as exc:
                    return await self._abort(call, context, codes.RPC_S_INVALID_ARG, grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            else:
                script = pb.Script()
            if len(self.live) > self.config.max_in_flight:
                return await self._abort(call, context, codes.RPC_S_SERVER_TOO_BUSY, grpc.StatusCode.RESOURCE_EXHAUSTED,
                                         f"over the in-flight limit ({self.config.max_in_flight})")
            if self.stopping:
                return await self._abort(call, context, codes.RPC_S_SERVER_UNAVAILABLE, grpc.StatusCode.UNAVAILABLE,
                                         "server is shutting down")
            return await self._run(call, script, outcome, request, context)
        except BaseException as exc:
            if not call.lifecycle.ended:
                call.end_on_error(exc)
            raise
        finally:
            del self.live[call_id]

    async def _run(self, call: ServerCall, script: pb.Script, outcome: int, request: pb.CallRequest,
                   context: grpc.aio.ServicerContext) -> pb.CallReply:
        policy = script.on_cancel or pb.ON_CANCEL_ABORT
        ignore = policy == pb.ON_CANCEL_IGNORE
        hold = outcome == _HOLD
        for seconds in (script.dispatch_delay_ms / 1000, self.config.max_hold if hold else script.outcome_delay_ms / 1000):
            if seconds and await call.pause(seconds, ignore):
                break
        if call.cancel_kind is not None and not ignore:
            if policy == pb.ON_CANCEL_COMPLETE:
                return self._complete(call, script, request)
            return await self._abort(call, context, codes.RPC_S_CALL_CANCELLED, grpc.StatusCode.CANCELLED,
                                     f"cancelled by the caller ({call.cancel_kind})")
        if call.stopping:
            return await self._abort(call, context, codes.RPC_S_SERVER_UNAVAILABLE, grpc.StatusCode.UNAVAILABLE,
                                     "server is shutting down")
        if hold:
            return await self._abort(call, context, codes.RPC_S_TIMEOUT, grpc.StatusCode.DEADLINE_EXCEEDED,
                                     f"held for the server's max hold time ({self.config.max_hold:g}s)")
        if outcome == _COMPLETE:
            return self._complete(call, script, request)
        if outcome == _ABORT:
            code = script.abort_code or self.config.abort_code
            status = codes.status_from_value(script.abort_grpc_status) if script.abort_grpc_status else None
            return await self._abort(call, context, code, status or codes.grpc_status_for(code),
                                     script.abort_message or f"aborted with {codes.describe(code)}")
        # _FATAL: the handler raises while on the RPC thread; no Complete or Abort follows.
        call.move(FATAL, server_end_code(FATAL), codes.grpc_status_for(codes.RPC_S_CALL_FAILED).name)
        if call.rpc_cancelled:
            raise asyncio.CancelledError()
        raise FatalHandlerError(script.fatal_message or "scripted fatal failure")

    def _complete(self, call: ServerCall, script: pb.Script, request: pb.CallRequest) -> pb.CallReply:
        call.move(COMPLETE)
        payload = request.payload if script.echo else bytes(script.reply_bytes)
        call.move(COMPLETED, server_end_code(COMPLETED), _OK)
        if call.rpc_cancelled:  # completed anyway: the reply has nowhere to go
            raise asyncio.CancelledError()
        return pb.CallReply(call_id=call.call_id, payload=payload, cancel_seen=call.cancel_kind is not None)

    async def _abort(self, call: ServerCall, context: grpc.aio.ServicerContext, code: int, status: grpc.StatusCode,
                     message: str) -> pb.CallReply:
        """RpcAsyncAbortCall(code): D -> A -> End, the code travels in the trailers."""
        call.move(ABORT, detail=f"code={code}")
        call.move(ABORTED, server_end_code(ABORTED, code), status.name, message)
        if call.rpc_cancelled:
            raise asyncio.CancelledError()
        await context.abort(status, message, ((CODE_KEY, str(code)),))
        raise AssertionError("unreachable: context.abort raises")  # pragma: no cover

    async def Cancel(self, request: pb.CancelRequest, context: grpc.aio.ServicerContext) -> pb.CancelReply:
        call_id = request.call_id
        call = self.live.get(call_id)
        if call is not None:
            if call.lifecycle.ended:   # ended, still sending its status
                return pb.CancelReply(delivered=False, state=call.state)
            state = call.state
            call.cancel_seen(NON_ABORTIVE)
            return pb.CancelReply(delivered=True, state=state)
        known = self._journal.get(call_id)
        if known is not None or not call_id:
            return pb.CancelReply(delivered=False, state=known.state if known else "")
        # The notice overtook its call (they travel as separate RPCs): keep it for the dispatch.
        self._early_notices.remember(call_id)
        return pb.CancelReply(delivered=True, state="")


class EarlyNotices:
    """Cancel notices for calls not dispatched yet, kept briefly and in bounded number."""

    def __init__(self, ttl: float = 10.0, limit: int = 10_000) -> None:
        self.ttl, self.limit = ttl, limit
        self._seen: dict[str, float] = {}

    def __len__(self) -> int:
        return len(self._seen)

    def remember(self, call_id: str) -> None:
        now = time.monotonic()
        seen = self._seen
        while seen:
            oldest, t = next(iter(seen.items()))
            if now - t < self.ttl and len(seen) < self.limit:
                break
            del seen[oldest]
        seen[call_id] = now

    def take(self, call_id: str) -> bool:
        t = self._seen.pop(call_id, None)
        return t is not None and time.monotonic() - t < self.ttl


def _call_id_from_metadata(context: grpc.aio.ServicerContext) -> str:
    for key, value in context.invocation_metadata() or ():
        if key == CALL_ID_KEY:
            return value if isinstance(value, str) else value.decode()
    return ""

