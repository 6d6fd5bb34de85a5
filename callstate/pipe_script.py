"""Pipe scripts: what the server does on an asynchronous pipe, as Python users write it, and
the validation the client (before sending) and the server (on what arrived) both run."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final, Literal

from callstate.cancel_points import AFTER_HALF_CLOSE, AFTER_HEADERS, AFTER_RECEIVED, BEFORE_START, PIPE
from callstate.lifecycle import ABORT, COMPLETE, PIPE_BOTH, PIPE_IN, PIPE_OUT
from callstate.script import (BUILD_ERRORS, DEFAULT_ABORT_CODE, ON_CANCEL, OUTCOME_NAMES, OUTCOMES, Limits, ScriptError,
                              check_cancel_poll, field_type_error, to_ms, validate_ending)
from callstate.v1 import callstate_pb2 as pb

PointName = Literal["end", "before-first", "after-in", "after-out", "after-half-close"]
POINTS: Final[dict[str, int]] = {
    "end": pb.PIPE_POINT_UNSPECIFIED,
    "before-first": pb.PIPE_POINT_BEFORE_FIRST,
    "after-in": pb.PIPE_POINT_AFTER_IN,
    "after-out": pb.PIPE_POINT_AFTER_OUT,
    AFTER_HALF_CLOSE: pb.PIPE_POINT_AFTER_HALF_CLOSE,   # the same moment a caller can cancel at
}
POINT_NAMES: Final[dict[int, str]] = {v: k for k, v in POINTS.items()}
# The points that make sense for each kind: an out pipe has no client messages, an in pipe
# sends none back.
KIND_POINTS: Final[dict[str, frozenset[int]]] = {
    PIPE_IN: frozenset(POINTS.values()) - {pb.PIPE_POINT_AFTER_OUT},
    PIPE_OUT: frozenset({pb.PIPE_POINT_UNSPECIFIED, pb.PIPE_POINT_BEFORE_FIRST, pb.PIPE_POINT_AFTER_OUT}),
    PIPE_BOTH: frozenset(POINTS.values()),
}
# A pipe rule the handler breaks on purpose (the runtime answers 1917 RPC_X_PIPE_DISCIPLINE_ERROR).
BreachName = Literal["none", "complete-undrained", "push-after-end"]
BREACHES: Final[dict[str, int]] = {
    "none": pb.PIPE_BREACH_NONE,
    "complete-undrained": pb.PIPE_BREACH_COMPLETE_UNDRAINED,   # complete before pulling the caller's pipe to its end
    "push-after-end": pb.PIPE_BREACH_PUSH_AFTER_END,           # push again after its own null push
}
BREACH_NAMES: Final[dict[int, str]] = {v: k for k, v in BREACHES.items()}
# the kinds where each breach is possible: only a pipe the caller pushes can be left undrained,
# only one the server pushes can be pushed after its end
BREACH_KINDS: Final[dict[int, frozenset[str]]] = {
    pb.PIPE_BREACH_NONE: frozenset({PIPE_IN, PIPE_OUT, PIPE_BOTH}),
    pb.PIPE_BREACH_COMPLETE_UNDRAINED: frozenset({PIPE_IN, PIPE_BOTH}),
    pb.PIPE_BREACH_PUSH_AFTER_END: frozenset({PIPE_OUT, PIPE_BOTH}),
}
# the points before the end of the caller's pipe: where completing leaves it undrained
UNDRAINED_POINTS: Final = frozenset({pb.PIPE_POINT_BEFORE_FIRST, pb.PIPE_POINT_AFTER_IN, pb.PIPE_POINT_AFTER_OUT})
DEFAULT_MESSAGES: Final = 3          # messages the server sends when no script says how many
DEFAULT_INTERVAL_MS: Final = 100     # between a held out pipe's messages when none is scripted
MAX_MESSAGES: Final = 10_000_000


def validate_pipe(script: pb.PipeScript, kind: str, limits: Limits = Limits()) -> None:
    """Raise ScriptError naming the first bad field of a pipe script for a call of `kind`."""
    for name in ("dispatch_delay_ms", "interval_ms", "outcome_delay_ms"):
        value = getattr(script, name)
        if not 0 <= value <= limits.max_delay_ms:
            raise ScriptError(name, f"must be in 0..{limits.max_delay_ms}, got {value}")
    validate_ending(script, limits)
    check_cancel_poll(script, limits)
    check_breach(script, kind)
    if script.at not in POINT_NAMES:
        raise ScriptError("at", f"unknown point {script.at}")
    if script.at not in KIND_POINTS[kind]:
        raise ScriptError("at", f"{POINT_NAMES[script.at]} does not apply to an {kind} pipe")
    if script.at in (pb.PIPE_POINT_AFTER_IN, pb.PIPE_POINT_AFTER_OUT) and script.at_count < 1:
        raise ScriptError("at_count", f"must be >= 1 for {POINT_NAMES[script.at]}, got {script.at_count}")
    if not 0 <= script.messages <= MAX_MESSAGES:
        raise ScriptError("messages", f"must be in 0..{MAX_MESSAGES}, got {script.messages}")
    if not 0 <= script.message_bytes <= limits.max_reply_bytes:
        raise ScriptError("message_bytes", f"must be in 0..{limits.max_reply_bytes}, got {script.message_bytes}")


def check_push(payload: Any, limits: Limits = Limits()) -> None:
    """ValueError for a message the server would not take (gRPC refuses it at its receive limit
    and ends the call, which each side would then log differently): refused before it is sent.
    `payload`: bytes, or a protobuf message (a stand-in's method's own message type)."""
    size = payload.ByteSize() if hasattr(payload, "ByteSize") else len(payload)
    if size > limits.max_payload_bytes:
        raise ValueError(f"push: a message of {size} bytes is over the server's limit "
                         f"({limits.max_payload_bytes} bytes); nothing was sent")


def check_breach(script: pb.PipeScript, kind: str) -> None:
    """ScriptError unless the script's breach is known, fits the kind and can happen."""
    breach = script.breach
    if breach not in BREACH_NAMES:
        raise ScriptError("breach", f"unknown breach {breach}")
    if kind not in BREACH_KINDS[breach]:
        raise ScriptError("breach", f"{BREACH_NAMES[breach]} does not apply to an {kind} pipe")
    if breach == pb.PIPE_BREACH_NONE:
        return
    if script.outcome not in (pb.OUTCOME_UNSPECIFIED, pb.OUTCOME_COMPLETE):
        raise ScriptError("breach", f"{BREACH_NAMES[breach]} breaks a rule on the way to a complete, "
                                    f"not with outcome {OUTCOME_NAMES.get(script.outcome, script.outcome)}")
    if breach == pb.PIPE_BREACH_COMPLETE_UNDRAINED and script.at not in UNDRAINED_POINTS:
        raise ScriptError("breach", "complete-undrained needs a point before the end of the caller's pipe "
                                    "(before-first, after-in or after-out)")
    if breach == pb.PIPE_BREACH_PUSH_AFTER_END and script.at != pb.PIPE_POINT_UNSPECIFIED:
        raise ScriptError("breach", "push-after-end happens at the end of the server's messages (at: end)")


def breach_name(script: pb.PipeScript) -> str:
    return BREACH_NAMES.get(script.breach, str(script.breach))


@dataclass(frozen=True)
class PipeScript:
    """A pipe call's server script in seconds (see callstate.v1.PipeScript)."""

    outcome: str = COMPLETE
    at: PointName = "end"
    at_count: int = 0
    messages: int = DEFAULT_MESSAGES
    message_bytes: int = 0
    interval: float = 0.0
    dispatch_delay: float = 0.0
    outcome_delay: float = 0.0
    abort_code: int = DEFAULT_ABORT_CODE
    abort_status: int = 0
    abort_message: str = ""
    fatal_message: str = ""
    on_cancel: str = ABORT
    cancel_poll: float | None = None    # seconds between the handler's cancel tests; None: the server's
    breach: BreachName = "none"

    def to_proto(self) -> pb.PipeScript:
        try:
            return self._to_proto()
        except BUILD_ERRORS as exc:
            raise (field_type_error(self) or exc) from None

    def _to_proto(self) -> pb.PipeScript:
        if self.outcome not in OUTCOMES:
            raise ScriptError("outcome", f"unknown outcome {self.outcome!r}; expected one of {', '.join(OUTCOMES)}")
        if self.at not in POINTS:
            raise ScriptError("at", f"unknown point {self.at!r}; expected one of {', '.join(POINTS)}")
        if self.on_cancel not in ON_CANCEL:
            raise ScriptError("on_cancel", f"unknown on_cancel {self.on_cancel!r}; expected one of {', '.join(ON_CANCEL)}")
        if self.breach not in BREACHES:
            raise ScriptError("breach", f"unknown breach {self.breach!r}; expected one of {', '.join(BREACHES)}")
        return pb.PipeScript(
            dispatch_delay_ms=round(self.dispatch_delay * 1000), outcome=OUTCOMES[self.outcome], at=POINTS[self.at],
            at_count=self.at_count, messages=self.messages, message_bytes=self.message_bytes,
            interval_ms=round(self.interval * 1000), outcome_delay_ms=round(self.outcome_delay * 1000),
            abort_code=self.abort_code if self.outcome == ABORT else 0, abort_grpc_status=self.abort_status,
            abort_message=self.abort_message, fatal_message=self.fatal_message, on_cancel=ON_CANCEL[self.on_cancel],
            cancel_poll_ms=to_ms(self.cancel_poll), breach=BREACHES[self.breach])


# -- where a caller cancels a pipe call (`callstate call --pipe`, `callstate load --pipe-cancel-at`) --
PIPE_CANCEL_POINTS: Final = PIPE.names()
# the points each kind can reach: an out pipe's caller never pushes, an in pipe's never pulls
KIND_CANCEL_POINTS: Final[dict[str, frozenset[str]]] = {
    PIPE_IN: frozenset(PIPE_CANCEL_POINTS) - {AFTER_RECEIVED},
    PIPE_OUT: frozenset({BEFORE_START, AFTER_HEADERS, AFTER_RECEIVED}),
    PIPE_BOTH: frozenset(PIPE_CANCEL_POINTS),
}


@dataclass(frozen=True)
class PipeCancelPoint:
    """Where a caller cancels a pipe: a point of `cancel_points.PIPE`, and N messages for the
    counted ones."""

    kind: str
    count: int = 0

    @classmethod
    def parse(cls, text: str) -> "PipeCancelPoint":
        kind, count = PIPE.parse(text)
        return cls(kind, int(count))

    def applies_to(self, pipe_kind: str) -> bool:
        return self.kind in KIND_CANCEL_POINTS[pipe_kind]

    def __str__(self) -> str:
        return self.kind + (f":{self.count}" if PIPE.takes_arg(self.kind) else "")
