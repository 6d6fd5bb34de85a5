"""Load scenarios as data: which calls are cancelled, how, and at which point.

Pure: the load generator (`callstate load`) and the Locust user draw their plans
from the same `Scenario`, so one set of options means the same run in both.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Final

from callstate import codes
from callstate.lifecycle import ABORT, ABORTIVE, CANCEL_KINDS, COMPLETE, FATAL, PIPE_KINDS
from callstate.cancel_points import AFTER, AFTER_HEADERS, AFTER_START, BEFORE_START, HELD, RANDOM, UNARY
from callstate.pipe_script import PipeCancelPoint, PipeScript
from callstate.script import DEFAULT_ABORT_CODE, HOLD, IGNORE, ON_CANCEL, Mix, MixError, cancel_poll_mix

POINT_KINDS: Final[tuple[str, ...]] = UNARY.names()

HELD_PIPE_INTERVAL: Final = 0.005   # between a held pipe's server messages: it streams until cancelled


@dataclass(frozen=True)
class CancelPoint:
    """Where a caller cancels a unary call: a point of `cancel_points.UNARY`, and its seconds."""

    kind: str            # one of POINT_KINDS
    seconds: float = 0.0

    @classmethod
    def parse(cls, text: str) -> "CancelPoint":
        kind, seconds = UNARY.parse(text)
        return cls(kind, seconds)

    def __str__(self) -> str:
        return self.kind + (f":{self.seconds:g}" if UNARY.takes_arg(self.kind) else "")


def parse_cancel_points(text: str) -> tuple[CancelPoint, ...]:
    points = tuple(CancelPoint.parse(part) for part in text.split(",") if part.strip())
    if not points:
        raise ValueError("needs at least one cancel point")
    return points


def parse_cancel_shares(text: str) -> dict[str, float]:
    """'abortive=30,non-abortive=20' -> shares in percent; the rest of the calls are not cancelled."""
    if text.strip() in ("", "none"):
        return {}
    shares = Mix.parse(text, CANCEL_KINDS).weights
    if sum(shares.values()) > 100:
        raise MixError(f"cancel shares {text!r} add up to more than 100%")
    return shares


def parse_pipe_shares(text: str) -> dict[str, float]:
    """'in=10,out=10,both=10' -> percent of calls that are pipes of each kind; none: no pipes."""
    if text.strip() in ("", "none"):
        return {}
    shares = Mix.parse(text, PIPE_KINDS).weights
    if sum(shares.values()) > 100:
        raise MixError(f"pipe shares {text!r} add up to more than 100%")
    return shares


def parse_cancel_poll(text: str) -> Mix | None:
    """'0=50,100=50' -> weights of poll intervals in ms (`--cancel-poll`); none: the server's default."""
    return None if text.strip() in ("", "none") else cancel_poll_mix(text)


def parse_pipe_cancel_points(text: str) -> tuple[PipeCancelPoint, ...]:
    points = tuple(PipeCancelPoint.parse(part) for part in text.split(",") if part.strip())
    if not points:
        raise ValueError("needs at least one pipe cancel point")
    return points


DEFAULT_PIPE_CANCEL_AT: Final = "before-start,after-headers,after-sent:2,after-received:2,after-half-close"
DEFAULT_MIX: Final = "complete=60,abort=20,fatal=10,hold=10"
DEFAULT_CANCEL: Final = "abortive=20,non-abortive=10"
DEFAULT_CANCEL_AT: Final = "before-start,after-start,random:0.005,held:0.005"
DEFAULT_ON_CANCEL: Final = "abort=70,complete=20,ignore=10"


@dataclass
class Plan:
    """One call's draw."""

    outcome: str
    cancel: str | None          # None or a cancel kind
    point: CancelPoint | None
    on_cancel: str
    pipe: str | None = None     # a pipe call of this kind (then `pipe_point`, not `point`)
    pipe_point: PipeCancelPoint | None = None
    cancel_poll_ms: int | None = None   # the handler polls for cancels this often (None: the server's default)
    ends_hold: bool = False     # the cancel ends a held call not in the cancelled share, after --hold-for

    def delay(self, rng: random.Random) -> float:
        """Seconds from start to the cancel (0: at once)."""
        if self.point is None or self.point.kind in (BEFORE_START, AFTER_START):
            return 0.0
        return self.point.seconds * (rng.random() if self.point.kind == RANDOM else 1.0)


@dataclass
class Scenario:
    """What a load run draws each call from."""

    mix: Mix = field(default_factory=lambda: Mix.parse(DEFAULT_MIX))
    cancel: dict[str, float] = field(default_factory=lambda: parse_cancel_shares(DEFAULT_CANCEL))
    cancel_at: tuple[CancelPoint, ...] = field(default_factory=lambda: parse_cancel_points(DEFAULT_CANCEL_AT))
    on_cancel: Mix = field(default_factory=lambda: Mix.parse(DEFAULT_ON_CANCEL, tuple(ON_CANCEL)))
    hold_for: float = 0.005       # uncancelled held calls get an abortive cancel after this long
    escalate_after: float = 0.05  # a non-abortive cancel escalates after this long unanswered
    abort_code: int = DEFAULT_ABORT_CODE
    pipes: dict[str, float] = field(default_factory=dict)   # percent of calls that are pipes, by kind
    pipe_cancel_at: tuple[PipeCancelPoint, ...] = field(
        default_factory=lambda: parse_pipe_cancel_points(DEFAULT_PIPE_CANCEL_AT))
    pipe_messages: int = 5        # messages each side pushes on a pipe
    cancel_poll: Mix | None = None   # weights of the handlers' cancel poll intervals in ms (None: the server's)

    def plan(self, rng: random.Random) -> Plan:
        outcome, cancel, point, on_cancel = self._draws(rng)
        # drawn only when asked, so a seed's other draws stay as they were
        poll = None if self.cancel_poll is None else int(self.cancel_poll.draw(rng))
        r = rng.random() * 100
        for kind, share in self.pipes.items():
            r -= share
            if r < 0:   # its cancel point is counted in messages: a unary point's hold is none of its own
                return self._pipe_plan(self._made(outcome, cancel, None, on_cancel, poll), kind, rng)
        if point is not None and point.kind == HELD:
            outcome = HOLD
        return self._made(outcome, cancel, point, on_cancel, poll)

    def _pipe_plan(self, plan: Plan, kind: str, rng: random.Random) -> Plan:
        """A pipe call: the same outcome (the mix's: a `held:` point of --cancel-at holds unary
        calls only), cancel kind and policy draws; the cancel point is counted in messages (one
        that applies to the kind). A held pipe that is not in the cancelled share (the plan gave
        it the generator's abortive cancel) is cancelled at one of those points too, after its
        start as a held unary call is (never before-start: it would never be held); with none
        that applies, once it has its headers."""
        plan.pipe, plan.point = kind, None
        if plan.cancel is not None:
            # a point past the messages each side pushes is never reached (a held pipe would wait
            # for the server's max hold): the default points that fewer --pipe-messages rule out
            points = [p for p in self.pipe_cancel_at if p.applies_to(kind) and reached(p, self.pipe_messages)
                      and not (plan.ends_hold and p.kind == BEFORE_START)]   # a held pipe is held first
            plan.pipe_point = rng.choice(points) if points else PipeCancelPoint(AFTER_HEADERS)
        return plan

    def _draws(self, rng: random.Random) -> tuple[str, str | None, CancelPoint | None, str]:
        """A call's draws, in their order: its outcome, its cancel kind and point, its policy."""
        outcome = self.mix.draw(rng)
        cancel: str | None = None
        r = rng.random() * 100
        for kind, share in self.cancel.items():
            r -= share
            if r < 0:
                cancel = kind
                break
        point = rng.choice(self.cancel_at) if cancel else None
        return outcome, cancel, point, self.on_cancel.draw(rng)

    def _made(self, outcome: str, cancel: str | None, point: CancelPoint | None, on_cancel: str,
              poll: int | None) -> Plan:
        ends_hold = outcome == HOLD and cancel is None
        if ends_hold:
            # a held call ends only when cancelled: uncancelled ones get an abortive cancel
            cancel, point = ABORTIVE, CancelPoint(AFTER, self.hold_for)
        if outcome == HOLD and on_cancel == IGNORE:
            on_cancel = ABORT   # ignoring would hold it until the server's --max-hold
        return Plan(outcome, cancel, point, on_cancel, cancel_poll_ms=poll, ends_hold=ends_hold)


def reached(point: PipeCancelPoint, messages: int) -> bool:
    """Whether a pipe whose sides each push `messages` ever gets to `point`."""
    return point.count <= messages


def unreachable_pipe_points(points: tuple[PipeCancelPoint, ...], messages: int) -> list[PipeCancelPoint]:
    """The counted cancel points past the messages each side pushes, which a plan never draws;
    the applications refuse them when the user named them (not when the defaults did)."""
    if points == parse_pipe_cancel_points(DEFAULT_PIPE_CANCEL_AT):
        return []
    return [p for p in points if not reached(p, messages)]


def every_call_a_pipe(pipes: dict[str, float]) -> bool:
    """Whether a run's pipe shares leave no unary call (a streaming method's run: 100 of its kind),
    so the unary cancel points (--cancel-at) would place no cancel: the applications refuse them."""
    return sum(pipes.values()) >= 100


def kinds_without_point(points: tuple[PipeCancelPoint, ...], pipes: dict[str, float]) -> list[str]:
    """The pipe kinds in the mix that none of the named cancel points applies to: their cancelled
    calls would be cancelled at a point nobody named (after the headers); the applications refuse
    them (the default points reach every kind)."""
    return [kind for kind, share in pipes.items() if share > 0 and not any(p.applies_to(kind) for p in points)]


def pipe_cancel(plan: Plan) -> tuple[PipeCancelPoint | None, str | None]:
    """Where and how a pipe plan is cancelled: (point, cancel kind), or (None, None). A held
    pipe is never left uncancelled: without a point, abortively once it has its headers."""
    point, cancel = plan.pipe_point, plan.cancel
    if point is None and plan.outcome == HOLD:
        point, cancel = PipeCancelPoint(AFTER_HEADERS), ABORTIVE
    return (point, cancel) if cancel is not None and point is not None else (None, None)


def pipe_script(plan: Plan, scenario: Scenario, message_bytes: int, delay: float = 0.0) -> PipeScript:
    """The server's script of a pipe plan: the scenario's messages each way, the plan's outcome
    at the end of the pipe after `delay` seconds of processing, as a unary call's (none for a
    held pipe: it keeps streaming until its cancel)."""
    return PipeScript(outcome=plan.outcome, on_cancel=plan.on_cancel, messages=scenario.pipe_messages,
                      message_bytes=message_bytes, abort_code=scenario.abort_code,
                      outcome_delay=0.0 if plan.outcome == HOLD else delay,
                      interval=HELD_PIPE_INTERVAL if plan.outcome == HOLD else 0.0,
                      cancel_poll=None if plan.cancel_poll_ms is None else plan.cancel_poll_ms / 1000)


_OUTCOME_CODE: Final = {COMPLETE: codes.RPC_S_OK, FATAL: codes.RPC_S_CALL_FAILED}


def expected_codes(plan: Plan, abort_code: int) -> frozenset[int]:
    """The final codes a call drawn as `plan` (unary or pipe) may legally end with: its
    outcome's code; after a cancel also 1818, and 0 when the server completes on cancel."""
    expected: set[int] = set()   # a held call ends only by its cancel
    if plan.outcome == ABORT:
        expected.add(abort_code)
    elif plan.outcome in _OUTCOME_CODE:
        expected.add(_OUTCOME_CODE[plan.outcome])
    cancelled = pipe_cancel(plan)[1] if plan.pipe is not None else plan.cancel
    if cancelled:
        expected.add(codes.RPC_S_CALL_CANCELLED)
        if plan.on_cancel == COMPLETE:
            expected.add(codes.RPC_S_OK)
    return frozenset(expected)
