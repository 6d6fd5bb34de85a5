"""What every handler (Call, the pipes, a stand-in's methods) shares around a call's dispatch.

Refusals before dispatch (a bad call id or cancel key, an id in flight or recently ended), the
table of live calls that `Emulator.Cancel` looks notices up in, the early notices kept for calls
not dispatched yet, the reply backlog, and the server stopping. The handlers' modules import
this one, and none imports another handler's module.
"""

from __future__ import annotations

import random
import time
from typing import Any, Callable, NoReturn

import grpc

from callstate import codes
from callstate.cancel_poll import poll_interval
from callstate.lifecycle import NON_ABORTIVE, UNARY
from callstate.script import RequestError, ValidScripts, check_call_id
from callstate.statelog import Entry
from callstate.server.backlog import ReplyBacklog
from callstate.server.calls import ServerCall
from callstate.server.config import EmulatorConfig
from callstate.server.journal import Journal
from callstate.server.notices import EarlyNotices, notice_key
from callstate.server.wakeups import Wakeups
from callstate.wire import CODE_KEY, MAX_CANCEL_KEY

# Why a request is refused before its dispatch: the status and its message.
Refusal = tuple[grpc.StatusCode, str]


async def refuse(context: grpc.aio.ServicerContext, refusal: Refusal) -> NoReturn:
    """Refuse a request before its dispatch, with 87 RPC_S_INVALID_ARG in the code trailer."""
    await context.abort(*refusal, ((CODE_KEY, str(codes.RPC_S_INVALID_ARG)),))
    raise AssertionError("unreachable: context.abort raises")  # pragma: no cover


def deadline_ms(context: grpc.aio.ServicerContext) -> int | None:
    """The caller's deadline as it arrived (grpc-timeout), unary or streaming: the journal keeps
    it, so a tool can tell whether a proxy on the way passed it on."""
    remaining = context.time_remaining()
    return None if remaining is None else round(remaining * 1000)


def bad_key(cancel_key: str, field: str = "cancel_key") -> Refusal | None:
    if len(cancel_key) > MAX_CANCEL_KEY:
        return grpc.StatusCode.INVALID_ARGUMENT, f"{field} is longer than {MAX_CANCEL_KEY} characters"
    return None


class Dispatcher:
    """The live calls of one server and what admits a call among them."""

    def __init__(self, config: EmulatorConfig, journal: Journal, log_append: Callable[[Entry], None]) -> None:
        self.config = config
        self.journal = journal
        self._ended_at = journal.ended_ids.ended_at   # looked up once: every dispatch asks it
        self.log_append = log_append
        self.rng = random.Random(config.seed)
        self.live: dict[str, ServerCall] = {}
        self.wakeups = Wakeups()   # the ends of the live calls' waits, on one loop timer
        self.early_notices = EarlyNotices(config.early_notice_ttl, config.max_early_notices,
                                          config.max_early_notice_bytes)
        self.backlog = ReplyBacklog(config.max_reply_backlog_bytes,   # replies handed to gRPC, not yet delivered
                                    config.max_reply_backlog_bytes if config.max_reply_backlog_per_connection is None
                                    else config.max_reply_backlog_per_connection)
        self.stopping = False
        self.on_dispatch: Callable[[str, Any], None] | None = None   # tracing: (call id, invocation metadata)
        limits = config.limits
        self._valid_scripts = ValidScripts(limits)
        self._max_id = limits.max_call_id_bytes
        self._early = self.early_notices.pending   # its notices by key: looked at by every dispatch

    # -- refusals before dispatch: plain checks on the hot path, awaited (`refuse`) only when one applies
    def refusal(self, call_id: str, cancel_key: str) -> Refusal | None:
        """Why a unary call with this id and key is refused before its dispatch (None: it is not);
        one synchronous check for the common case, the handler refuses in order when one applies.
        An id and key that plainly pass every check (within the bounds, printable ASCII, neither
        live nor ended) are let through without the calls that word a refusal."""
        if (len(call_id) <= self._max_id and call_id.isascii() and call_id.isprintable()
                and len(cancel_key) <= MAX_CANCEL_KEY and call_id not in self.live and self._ended_at(call_id) is None):
            return None
        return self.bad_id(call_id) or bad_key(cancel_key) or self.in_flight(call_id)

    def admits_at_once(self, call_id: str, cancel_key: str) -> bool:
        """Whether a call with this id and key, dispatched now, runs as dispatched: no refusal, no
        notice kept to apply to it, no polling, the server not stopping, and under the in-flight
        limit once it is live (`over_capacity`). The handler's path for a call that completes at once."""
        return (bool(call_id) and self.refusal(call_id, cancel_key) is None and not self._early
                and not self.stopping and not self.config.cancel_poll_ms
                and len(self.live) < self.config.max_in_flight)

    def bad_id(self, call_id: str) -> Refusal | None:
        try:
            check_call_id(call_id, self.config.limits)
        except RequestError as exc:
            return grpc.StatusCode.INVALID_ARGUMENT, str(exc)
        return None

    def check_request(self, request: Any) -> None:
        """`validate_request` (RequestError naming the field) for a unary call whose id passed
        `bad_id`: a script found valid before is known by its bytes (`ValidScripts`), and with a
        payload valid with any script, what is left to check is the script alone, as before."""
        self._valid_scripts.check(request)

    def known_valid(self, script_key: bytes, payload_size: int) -> bool:
        """Whether `check_request` of a request with this script (its bytes) and payload size
        would pass at once: a script found valid before, a payload valid with any script."""
        return self._valid_scripts.knows(script_key, payload_size)

    def in_flight(self, call_id: str) -> Refusal | None:
        if call_id in self.live:   # first come, first served: the call in flight is not touched
            return grpc.StatusCode.ALREADY_EXISTS, f"call id {call_id} is already in flight"
        return self.recently_ended(call_id)

    def recently_ended(self, call_id: str) -> Refusal | None:
        """An id whose call ended less than --id-retention ago, whether or not the journal still
        holds its history (the journal remembers ended ids apart, see server/ended_ids.py)."""
        ended = self._ended_at(call_id)
        if ended is not None and (age := time.time() - ended) < self.config.id_retention:
            return (grpc.StatusCode.ALREADY_EXISTS, f"call id {call_id} ended {age:.1f}s ago; an id stays reserved "
                    f"for {self.config.id_retention:g}s after its call ends (--id-retention)")
        return None

    # -- the dispatch ---------------------------------------------------------------------------
    def dispatch(self, call_id: str, cancel_key: str, outcome: str, context: grpc.aio.ServicerContext,
                 kind: str = UNARY, deadline_ms: int | None = None, method: str | None = None,
                 rule: str | None = None, poll_ms: int | None = None) -> ServerCall:
        """D: the call is live (Cancel finds it), polls for cancels as scripted, and a notice that
        overtook it applies now."""
        if self.on_dispatch is not None:   # tracing: the caller's trace context
            self.on_dispatch(call_id, context.invocation_metadata())
        call = ServerCall(call_id, self.journal, self.log_append, outcome, kind, deadline_ms, method, rule,
                          self.wakeups)
        call.cancel_key = cancel_key   # a cancel notice must repeat it (Emulator.Cancel checks)
        self.live[call_id] = call
        if poll_ms is not None or self.config.cancel_poll_ms:   # else it sees cancels as they arrive
            self.poll_cancels(call, poll_ms)
        if self._early and self.early_notices.take(notice_key(call_id, cancel_key)):
            call.cancel_seen(NON_ABORTIVE)
        return call

    def poll_cancels(self, call: ServerCall, script_ms: int | None) -> None:
        """The call's handler tests for cancels at the script's interval, else the server's (a bad
        value is refused by validation and never polled with)."""
        if script_ms is None or 0 <= script_ms <= self.config.limits.max_delay_ms:
            call.poll_cancels(poll_interval(script_ms, self.config.cancel_poll_ms))

    def over_capacity(self) -> bool:
        return len(self.live) > self.config.max_in_flight

    def release(self, call_id: str) -> None:
        self.live.pop(call_id).let_go()

    def stop_all(self) -> None:
        """Server shutdown: every waiting handler ends its call now."""
        self.stopping = True
        self.early_notices.clear()
        for call in list(self.live.values()):
            call.stop()
