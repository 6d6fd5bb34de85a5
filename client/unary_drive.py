"""Drive one unary call to its end from a plan: the server's script drawn from it, then cancel
before start, or start and cancel at once (after-start), after the plan's delay, or never;
wait for the end. `drive_call` on the event loop (`callstate load`), `drive_call_sync` its twin
on a sync `Call` (the Locust user); the twin of `pipe_drive` for pipes."""

from __future__ import annotations

import asyncio
import random
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

from callstate import codes
from callstate.errors import CallError
from callstate.lifecycle import ABORT, ABORTIVE, LifecycleError
from callstate.cancel_points import BEFORE_START
from callstate.scenario import Plan, Scenario
from callstate.script import HOLD, ON_CANCEL, OUTCOMES
from callstate.v1 import callstate_pb2 as pb

if TYPE_CHECKING:
    from callstate.client import AsyncCall, Call


class PlanScripts:
    """The server's script of each plan: its outcome after the scenario's processing delay
    (none for a held call: it waits for its cancel), replying `payload` bytes. One Script per
    distinct (outcome, on-cancel, poll) draw, made once: a long run draws the same few."""

    def __init__(self, scenario: Scenario, delay: float = 0.0, payload: int = 0) -> None:
        self.scenario, self.delay, self.payload = scenario, delay, payload
        self._made: dict[tuple[str, str, int | None], pb.Script] = {}

    def __call__(self, plan: Plan) -> pb.Script:
        key = (plan.outcome, plan.on_cancel, plan.cancel_poll_ms)
        script = self._made.get(key)
        if script is None:
            script = self._made[key] = pb.Script(
                outcome=OUTCOMES[plan.outcome], on_cancel=ON_CANCEL[plan.on_cancel],
                outcome_delay_ms=0 if plan.outcome == HOLD else round(self.delay * 1000),
                reply_bytes=self.payload, abort_code=self.scenario.abort_code if plan.outcome == ABORT else 0,
                cancel_poll_ms=plan.cancel_poll_ms)
        return script


@dataclass(frozen=True)
class UnaryEnd:
    """How a driven call ended."""

    code: int                     # its final code: 0 RPC_S_OK, or its CallError's
    reply: pb.CallReply | None    # the reply of a call that completed
    attempted: bool               # start() was tried (the plan did not cancel before it)
    start_refused: bool = False   # ... and the call was refused before it left (C -> End)


class _Canceller:
    """The caller's cancel of one call, as its plan says (both drivers use it)."""

    def __init__(self, call: AsyncCall | Call, plan: Plan, escalate_after: float | None) -> None:
        self.call, self.plan, self.escalate_after = call, plan, escalate_after
        self.abortive = plan.cancel == ABORTIVE
        self.attempted = not (plan.point is not None and plan.point.kind == BEFORE_START)

    def begin(self) -> UnaryEnd | None:
        """Cancel before start, or start; the end when the call ended there (refused before
        it left, or the cancel refused)."""
        try:
            if self.attempted:
                self.call.start()
            else:
                self.call.cancel(self.abortive)
        except CallError as err:
            return UnaryEnd(err.code, None, self.attempted, start_refused=self.attempted)
        return None

    def delay(self, rng: random.Random) -> float | None:
        """Seconds from start to the cancel (0: at once), drawn now; None: no cancel after start."""
        return self.plan.delay(rng) if self.attempted and self.plan.point is not None else None

    def now(self) -> None:
        """RpcAsyncCancelCall unless the call has ended (a non-abortive cancel escalates)."""
        if self.call.done():
            return
        try:
            self.call.cancel(abortive=self.abortive, timeout=None if self.abortive else self.escalate_after)
        except (CallError, LifecycleError):
            pass   # the call ended meanwhile


async def drive_call(call: AsyncCall, plan: Plan, rng: random.Random, *,
                     escalate_after: float | None = None) -> UnaryEnd:
    """Run a prepared call as its plan says; the delay of a cancel after start is drawn from
    `rng` once the call has started. Never raises CallError: the code is in the UnaryEnd."""
    cancel = _Canceller(call, plan, escalate_after)
    if (refused := cancel.begin()) is not None:
        return refused
    timer: asyncio.TimerHandle | None = None
    if (delay := cancel.delay(rng)) is not None:
        if delay <= 0:   # after-start (and a zero delay): at once
            cancel.now()
        else:
            timer = asyncio.get_running_loop().call_later(delay, cancel.now)
    try:
        return UnaryEnd(codes.RPC_S_OK, await call, cancel.attempted)
    except CallError as err:
        return UnaryEnd(err.code, None, cancel.attempted)
    finally:
        if timer is not None:
            timer.cancel()


def drive_call_sync(call: Call, plan: Plan, rng: random.Random, *, escalate_after: float | None = None) -> UnaryEnd:
    """`drive_call` on a sync `Call`, blocking: the same moves at the same points. A delayed
    cancel runs on a timer thread (a greenlet under gevent, where threading is patched); an
    exception out of the wait (a greenlet's kill) stops the timer and leaves the call to the
    caller."""
    cancel = _Canceller(call, plan, escalate_after)
    if (refused := cancel.begin()) is not None:
        return refused
    timer: threading.Timer | None = None
    if (delay := cancel.delay(rng)) is not None:
        if delay <= 0:
            cancel.now()
        else:
            timer = threading.Timer(delay, cancel.now)
            timer.daemon = True
            timer.start()
    try:
        return UnaryEnd(codes.RPC_S_OK, call.result(), cancel.attempted)
    except CallError as err:
        return UnaryEnd(err.code, None, cancel.attempted)
    finally:
        if timer is not None:
            timer.cancel()


__all__ = ["PlanScripts", "UnaryEnd", "drive_call", "drive_call_sync"]
