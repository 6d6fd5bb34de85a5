"""`callstate.v1.Emulator`: scripted handlers that follow the server table.

Dispatch (D), then per the script: Complete (D -> Comp -> End), Abort with an
exception code (D -> A -> End), or fail fatally by raising in the handler
(D -> End). A cancel changes no state; the script's on_cancel policy decides
what the handler does next.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import random
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, NoReturn

import grpc
from grpc._cython import cygrpc

from callstate import codes
from callstate.grpc_status import grpc_status_for, status_from_value
from callstate.cancel_poll import poll_interval
from callstate.script import (DEFAULT_ABORT_CODE, OUTCOME_NAMES, OUTCOMES, Limits, Mix, RequestError, cancel_poll_ms,
                              check_abort_code, check_call_id, validate_request)
from callstate.v1 import callstate_pb2 as pb
from callstate.v1 import callstate_pb2_grpc as pb_grpc
from callstate.lifecycle import ABORT, ABORTED, ABORTIVE, COMPLETE, COMPLETED, FATAL, NON_ABORTIVE, server_end_code
from callstate.statelog import Entry
from callstate.server.answer import Answer
from callstate.server.backlog import ReplyBacklog
from callstate.server.calls import ServerCall, send_abort
from callstate.server.journal import Journal
from callstate.wire import CALL_ID_KEY, CODE_KEY, MAX_CANCEL_KEY, new_call_id

if TYPE_CHECKING:
    from callstate.server.pipes import PipeServicer

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


async def send_fatal(context: grpc.aio.ServicerContext, message: str) -> NoReturn:
    """End the call as grpc ends a handler that raised: UNKNOWN, 'Unexpected <class>: message'
    (what a caller sees of a fatal failure is unchanged). Sent here rather than by raising:
    when the caller cancels at that moment grpc cannot send the status and, for a raised
    exception, prints ExecuteBatchError's traceback on stderr (routine under cancel load);
    here it is what it is, a cancel."""
    exc = FatalHandlerError(message)
    try:
        await context.abort(grpc.StatusCode.UNKNOWN, f"Unexpected {type(exc)}: {exc}")
    except cygrpc.ExecuteBatchError:
        raise asyncio.CancelledError() from None
    raise exc  # pragma: no cover - context.abort raises


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
    # replies handed to gRPC and not yet taken by their callers: past this, completes get 1723
    # (a caller that never reads would otherwise pin every reply it asked for)
    max_reply_backlog_bytes: int = 16 * 1024 * 1024
    # and per connection (None: no bound of its own). Off by default: a proxy carries many
    # callers on one connection, and conformance through one must not be refused for it
    max_reply_backlog_per_connection: int | None = None
    early_notice_ttl: float = 10.0          # a notice that overtook its call waits this long for it
    max_early_notices: int = 10_000
    max_early_notice_bytes: int = 4 * 1024 * 1024   # their call ids, in bytes
    # an id that ended stays reserved this long (while the journal holds it): a replay of it would
    # put entries after End into its owner's history and logs
    id_retention: float = 60.0
    cancel_poll_ms: int = 0   # handlers test for cancels every N ms (0: see them at once); a script may say otherwise

    def __post_init__(self) -> None:
        try:
            check_abort_code(self.abort_code)
        except ValueError as exc:
            raise ValueError(f"abort code {exc}") from None


class EmulatorServicer(pb_grpc.EmulatorServicer):
    def __init__(self, config: EmulatorConfig, journal: Journal, log_append: Callable[[Entry], None]) -> None:
        self.config = config
        self._journal = journal
        self._log_append = log_append
        self._rng = random.Random(config.seed)
        self.live: dict[str, ServerCall] = {}
        self._early_notices = EarlyNotices(config.early_notice_ttl, config.max_early_notices,
                                           config.max_early_notice_bytes)
        self.backlog = ReplyBacklog(config.max_reply_backlog_bytes,   # replies handed to gRPC, not yet delivered
                                    config.max_reply_backlog_bytes if config.max_reply_backlog_per_connection is None
                                    else config.max_reply_backlog_per_connection)
        self.stopping = False
        self.on_dispatch: Callable[[str, Any], None] | None = None   # tracing: (call id, invocation metadata)
        from callstate.server.pipes import PipeServicer   # it imports this module's FatalHandlerError
        self._pipes = PipeServicer(self)

    # Asynchronous pipes (server/pipes.py): they share `live`, so Cancel notices reach them.
    async def PipeIn(self, request_iterator, context):  # type: ignore[no-untyped-def]
        return await self._pipes.pipe_in(request_iterator, context)

    async def PipeOut(self, request, context):  # type: ignore[no-untyped-def]
        await self._pipes.pipe_out(request, context)

    async def PipeBoth(self, request_iterator, context):  # type: ignore[no-untyped-def]
        await self._pipes.pipe_both(request_iterator, context)

    @property
    def pipes(self) -> "PipeServicer":
        return self._pipes

    def stop_all(self) -> None:
        """Server shutdown: every waiting handler ends its call now."""
        self.stopping = True
        self._early_notices.clear()
        for call in list(self.live.values()):
            call.stop()

    # -- refusals before dispatch (Call, Cancel and the pipes): plain checks on the hot path,
    # awaited (`refuse`) only when one applies ------------------------------------------------
    def bad_id(self, call_id: str) -> Refusal | None:
        try:
            check_call_id(call_id, self.config.limits)
        except RequestError as exc:
            return grpc.StatusCode.INVALID_ARGUMENT, str(exc)
        return None

    def poll_cancels(self, call: ServerCall, script_ms: int | None) -> None:
        """The call's handler tests for cancels at the script's interval, else the server's (a bad
        value is refused by validation and never polled with)."""
        if script_ms is None or 0 <= script_ms <= self.config.limits.max_delay_ms:
            call.poll_cancels(poll_interval(script_ms, self.config.cancel_poll_ms))

    def in_flight(self, call_id: str) -> Refusal | None:
        if call_id in self.live:   # first come, first served: the call in flight is not touched
            return grpc.StatusCode.ALREADY_EXISTS, f"call id {call_id} is already in flight"
        return self.recently_ended(call_id)

    def recently_ended(self, call_id: str) -> Refusal | None:
        rec = self._journal.get(call_id)
        final = rec.final if rec is not None else None
        if final is not None and (age := time.time() - final.t) < self.config.id_retention:
            return (grpc.StatusCode.ALREADY_EXISTS, f"call id {call_id} ended {age:.1f}s ago; an id stays reserved "
                    f"for {self.config.id_retention:g}s after its call ends (--id-retention)")
        return None

    async def Call(self, request: Any, context: grpc.aio.ServicerContext, answer: Answer | None = None) -> Any:
        """Emulator/Call, and (with `answer`) a stand-in's unary call of a user's method."""
        if answer is None:
            call_id = request.call_id or _call_id_from_metadata(context)
            cancel_key = request.cancel_key
            script = request.script if request.HasField("script") else None
            mix = self.config.mix
        else:
            call_id, cancel_key, script, mix = answer.call_id, answer.cancel_key, answer.script, answer.mix or self.config.mix
        if refusal := self.bad_id(call_id):   # an id that is not a short metadata value is never logged
            await refuse(context, refusal)
        headers_sent = not call_id
        if headers_sent:
            call_id = new_call_id()
            await context.send_initial_metadata(((CALL_ID_KEY, call_id),))
        if refusal := bad_key(cancel_key) or self.in_flight(call_id):
            await refuse(context, refusal)
        outcome = script.outcome if script is not None and script.outcome else OUTCOMES[mix.draw(self._rng)]
        if self.on_dispatch is not None:
            self.on_dispatch(call_id, context.invocation_metadata())
        call = ServerCall(call_id, self._journal, self._log_append, OUTCOME_NAMES.get(outcome, "?"),
                          deadline_ms=_deadline_ms(context), method=answer and answer.method, rule=answer and answer.rule)
        call.cancel_key = cancel_key
        self.live[call_id] = call
        self.poll_cancels(call, cancel_poll_ms(script))
        if self._early_notices and self._early_notices.take(notice_key(call_id, cancel_key)):
            call.cancel_seen(NON_ABORTIVE)
        try:
            try:
                if answer is None:   # a stand-in's script was checked before its dispatch
                    validate_request(request, self.config.limits)
            except RequestError as exc:
                return await self._abort(call, context, codes.RPC_S_INVALID_ARG, grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            if script is None:
                script = pb.Script()
            if len(self.live) > self.config.max_in_flight:
                return await self._abort(call, context, codes.RPC_S_SERVER_TOO_BUSY, grpc.StatusCode.RESOURCE_EXHAUSTED,
                                         f"over the in-flight limit ({self.config.max_in_flight})")
            if self.stopping:
                return await self._abort(call, context, codes.RPC_S_SERVER_UNAVAILABLE, grpc.StatusCode.UNAVAILABLE,
                                         "server is shutting down")
            if script.headers_first and not headers_sent:   # the outcome then follows headers, not trailers-only
                await context.send_initial_metadata(((CALL_ID_KEY, call_id),))
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
                seconds = dispatch_ms / 1000
                for phase in (0, 1):
                    if phase:
                        seconds = max_hold if hold else outcome_ms / 1000
                    if not seconds:
                        continue
                    left = deadline - loop.time()
                    capped = seconds >= left
                    end = loop.time() + min(seconds, max(left, 0.0))
                    try:
                        while not (cut := call.interrupted(ignore)) and (remaining := end - loop.time()) > 0:
                            try:
                                await call.wake_after(remaining)
                            except asyncio.CancelledError:
                                call.cancel_seen(ABORTIVE)
                    finally:
                        call.stop_timer()
                    if cut:
                        break
                    if capped:
                        overran = True
                        break
            return await self._run(call, script, outcome, request, context, overran, answer)
        except BaseException as exc:
            if not call.lifecycle.ended:
                call.end_on_error(exc)
            raise
        finally:
            del self.live[call_id]

    async def _run(self, call: ServerCall, script: pb.Script, outcome: int, request: Any,
                   context: grpc.aio.ServicerContext, overran: bool, answer: Answer | None = None) -> Any:
        """The script's outcome, once its waits are over (`overran`: they ran past --max-hold)."""
        policy = script.on_cancel or pb.ON_CANCEL_ABORT
        ignore = policy == pb.ON_CANCEL_IGNORE
        hold = outcome == _HOLD
        max_hold = self.config.max_hold
        call.test_cancel(at_outcome=True)   # a polling handler asks once more before its outcome
        if call.cancel_kind is not None and not ignore:
            if policy == pb.ON_CANCEL_COMPLETE:
                return await self._complete(call, script, request, context, answer)
            return await self._abort(call, context, codes.RPC_S_CALL_CANCELLED, grpc.StatusCode.CANCELLED,
                                     f"cancelled by the caller ({call.cancel_kind})")
        if call.stopping:
            return await self._abort(call, context, codes.RPC_S_SERVER_UNAVAILABLE, grpc.StatusCode.UNAVAILABLE,
                                     "server is shutting down")
        if overran:
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
        if answer is not None:   # a stand-in's reply: the rule's, or the response type's empty message
            call.move(COMPLETE)
            call.move(COMPLETED, server_end_code(COMPLETED), _OK)
            if call.rpc_cancelled:
                raise asyncio.CancelledError()
            return answer.reply
        size = len(request.payload) if script.echo else script.reply_bytes
        if size and (over := self.backlog.reserve(context, size)):
            return await self._abort(call, context, codes.RPC_S_SERVER_TOO_BUSY, grpc.StatusCode.RESOURCE_EXHAUSTED, over)
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
        await send_abort(context, status, message, code)

    async def Cancel(self, request: pb.CancelRequest, context: grpc.aio.ServicerContext) -> pb.CancelReply:
        call_id = request.call_id
        if refusal := self.bad_id(call_id) or bad_key(request.cancel_key):
            await refuse(context, refusal)
        call = self.live.get(call_id)
        if call is not None:
            if call.cancel_key and not hmac.compare_digest(request.cancel_key.encode(), call.cancel_key.encode()):
                await context.abort(grpc.StatusCode.PERMISSION_DENIED,
                                    "the notice's cancel_key is not the one the call was made with")
            if call.lifecycle.ended:   # ended, still sending its status
                return pb.CancelReply(delivered=False, state=call.state)
            state = call.state
            call.cancel_seen(NON_ABORTIVE)
            return pb.CancelReply(delivered=True, state=state)
        known = self._journal.get(call_id)
        if known is not None or not call_id:
            return pb.CancelReply(delivered=False, state=known.state if known else "")
        # The notice overtook its call (they travel as separate RPCs): keep it for the dispatch,
        # under its id and key: it applies only to a call made with the same key.
        kept = self._early_notices.remember(notice_key(call_id, request.cancel_key))
        return pb.CancelReply(delivered=kept, state="")   # not kept: the caller knows its notice is lost


class EarlyNotices:
    """Cancel notices for calls not dispatched yet: kept `ttl` seconds, bounded in count and
    in bytes (of their call ids), new ones refused when full. A timer expires them even when no
    new notice arrives, so a burst of notices does not stay pinned."""

    def __init__(self, ttl: float = 10.0, limit: int = 10_000, max_bytes: int = 4 * 1024 * 1024) -> None:
        self.ttl, self.limit, self.max_bytes = ttl, limit, max_bytes
        self._seen: dict[str, float] = {}
        self.bytes = 0
        self.dropped = 0          # notices forgotten early because a bound was hit
        self._timer: asyncio.TimerHandle | None = None

    def __len__(self) -> int:
        return len(self._seen)

    def remember(self, call_id: str) -> bool:
        """Keep a notice; False when the bounds are reached. A notice kept is never displaced by
        later ones (anyone's: a stranger's flood cannot evict the owner's); it only expires."""
        now = time.monotonic()
        seen = self._seen
        if call_id in seen:
            self._forget(call_id)
        size = len(call_id)
        self._expire(now)
        if len(seen) >= self.limit or self.bytes + size > self.max_bytes:
            self.dropped += 1
            return False
        seen[call_id] = now
        self.bytes += size
        self._arm()
        return True

    def take(self, call_id: str) -> bool:
        t = self._seen.get(call_id)
        if t is None:
            return False
        self._forget(call_id)
        return time.monotonic() - t < self.ttl

    def clear(self) -> None:
        self._seen.clear()
        self.bytes = 0
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _forget(self, call_id: str) -> None:
        del self._seen[call_id]
        self.bytes -= len(call_id)

    def _expire(self, now: float) -> None:
        seen = self._seen
        while seen:
            oldest, t = next(iter(seen.items()))
            if now - t < self.ttl:
                break
            self._forget(oldest)

    def _arm(self) -> None:
        """One timer at a time, due when the oldest notice expires."""
        if self._timer is not None or not self._seen:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:   # used outside a loop (unit tests): expiry on the next remember()
            return
        oldest = next(iter(self._seen.values()))
        self._timer = loop.call_later(max(0.0, oldest + self.ttl - time.monotonic()) + 0.001, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._expire(time.monotonic())
        self._arm()


# Why a request is refused before its dispatch: the status and its message.
Refusal = tuple[grpc.StatusCode, str]


async def refuse(context: grpc.aio.ServicerContext, refusal: Refusal) -> NoReturn:
    """Refuse a request before its dispatch, with 87 RPC_S_INVALID_ARG in the code trailer."""
    await context.abort(*refusal, ((CODE_KEY, str(codes.RPC_S_INVALID_ARG)),))
    raise AssertionError("unreachable: context.abort raises")  # pragma: no cover


def bad_key(cancel_key: str, field: str = "cancel_key") -> Refusal | None:
    if len(cancel_key) > MAX_CANCEL_KEY:
        return grpc.StatusCode.INVALID_ARGUMENT, f"{field} is longer than {MAX_CANCEL_KEY} characters"
    return None


def notice_key(call_id: str, cancel_key: str) -> str:
    """An early notice is kept under its call id and cancel key together: a stranger's notice
    (another key) neither applies to the call nor displaces its owner's notice."""
    return f"{call_id}\n{cancel_key}" if cancel_key else call_id


def _call_id_from_metadata(context: grpc.aio.ServicerContext) -> str:
    for key, value in context.invocation_metadata() or ():
        if key == CALL_ID_KEY:
            return value if isinstance(value, str) else value.decode()
    return ""


def _deadline_ms(context: grpc.aio.ServicerContext) -> int | None:
    """The caller's deadline as it arrived (grpc-timeout): the journal keeps it, so a tool can
    tell whether a proxy on the way passed it on."""
    remaining = context.time_remaining()
    return None if remaining is None else round(remaining * 1000)
