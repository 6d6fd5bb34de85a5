"""Per-call scripts (docs/model.md, "Scripts"): building them, validating them, default mixes.

The same `validate` runs in the client (before a call goes out) and in the
server (on what actually arrived), so both refuse the same scripts with the
same field names.
"""

from __future__ import annotations

import math
import random
from dataclasses import KW_ONLY, dataclass, field, fields
from typing import Any, Final, Literal

from callstate import codes
from callstate.lifecycle import ABORT, COMPLETE, FATAL
from callstate.v1 import callstate_pb2 as pb

# The script vocabulary, each name defined once. Outcomes: what the server does with a call
# (complete, abort and fatal are the server's lifecycle moves of the same name; hold keeps it
# until it is cancelled). On-cancel policies: what a holding server does on a cancel.
HOLD: Final = "hold"
IGNORE: Final = "ignore"
# For type checkers, which read only literals here: a test holds each equal to its table.
OutcomeName = Literal["complete", "abort", "fatal", "hold"]
OnCancelName = Literal["abort", "complete", "ignore"]

OUTCOMES: Final[dict[str, int]] = {
    COMPLETE: pb.OUTCOME_COMPLETE,
    ABORT: pb.OUTCOME_ABORT,
    FATAL: pb.OUTCOME_FATAL,
    HOLD: pb.OUTCOME_HOLD,
}
OUTCOME_NAMES: Final[dict[int, str]] = {v: k for k, v in OUTCOMES.items()}
ON_CANCEL: Final[dict[str, int]] = {
    ABORT: pb.ON_CANCEL_ABORT,
    COMPLETE: pb.ON_CANCEL_COMPLETE,
    IGNORE: pb.ON_CANCEL_IGNORE,
}
ON_CANCEL_NAMES: Final[dict[int, str]] = {v: k for k, v in ON_CANCEL.items()} | {pb.ON_CANCEL_UNSPECIFIED: ABORT}

DEFAULT_ABORT_CODE: Final = 4242  # an application exception code for mixes


class RequestError(ValueError):
    """A request the server refuses (INVALID_ARGUMENT, 87); `field` names the offending field."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}")

    def __reduce__(self) -> tuple[Any, ...]:
        # rebuilt from what __init__ takes (its args hold the joined text): it crosses processes
        return type(self), (self.field, self.message)


class ScriptError(RequestError):
    """A script the server refuses; `field` names the offending field of the script."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"script.{field}", message)
        self.field = field


# gRPC's default largest message a channel receives; a reply must fit it with its framing.
GRPC_MAX_RECEIVE: Final = 4 * 1024 * 1024
# What a CallReply adds around its payload at most: tags, lengths, the call id, cancel_seen.
REPLY_FRAMING: Final = 1024
# What a CallRequest adds around its payload at most: the call id, the script and its messages.
REQUEST_FRAMING: Final = 16 * 1024
ABORT_CODE_MIN: Final = -(2**31)       # an HRESULT-style negative code still fits 32 bits
ABORT_CODE_MAX: Final = 2**32 - 1      # an unsigned 32-bit exception code
# what an abort code may be, in words (help texts, the code table)
ABORT_CODE_RULE: Final = ("non-zero, 32 bits, not a caller's own answer ("
                          + ", ".join(map(str, sorted(codes.CLIENT_ANSWERS))) + ")")


@dataclass(frozen=True)
class Limits:
    """Bounds a server enforces on requests (and a client checks before sending).

    Each one keeps what the server accepts deliverable: a reply fits the peer's receive
    limit with its framing, a status message stays well under what gRPC carries intact
    (a client drops trailers beyond 8 KiB at random, 16 KiB always), a call id is a metadata value.
    """

    max_delay_ms: int = 600_000
    max_reply_bytes: int = GRPC_MAX_RECEIVE - REPLY_FRAMING
    # abort and fatal messages, UTF-8: the status travels percent-encoded in the trailers (up to
    # 3 characters a byte), and a client refuses trailers over 8 KiB at random (soft limit)
    max_message_bytes: int = 2048
    max_call_id_bytes: int = 128
    # request payload (echoed back as the reply); the server takes no larger message than this
    # plus REQUEST_FRAMING, so a caller cannot make it buffer and parse megabytes it will refuse
    max_payload_bytes: int = 1024 * 1024


LONGEST_CALL_ID = 4096   # the most `serve --max-call-id` may be set to: no server takes a longer id


def check_call_id(call_id: str, limits: Limits = Limits()) -> None:
    """Raise RequestError naming the problem. Empty is allowed (the server makes one)."""
    if len(call_id) > limits.max_call_id_bytes:
        raise RequestError("call_id", f"at most {limits.max_call_id_bytes} characters, got {len(call_id)}")
    if call_id and not (call_id.isascii() and call_id.isprintable()):
        bad = next(c for c in call_id if not (c.isascii() and c.isprintable()))
        raise RequestError("call_id", f"only printable ASCII (a gRPC metadata value), got {bad!r}")


def check_abort_code(code: int) -> None:
    """ValueError unless `code` is a non-zero 32-bit exception code (RpcAsyncAbortCall) that is
    not one of a caller's own answers (`codes.CLIENT_ANSWERS`: 997, 1914, 1915)."""
    if code == 0:
        raise ValueError("must be non-zero: an abort with code 0 would look like success")
    if not ABORT_CODE_MIN <= code <= ABORT_CODE_MAX:
        raise ValueError(f"must fit in 32 bits ({ABORT_CODE_MIN}..{ABORT_CODE_MAX}), got {code}")
    if code in codes.CLIENT_ANSWERS:
        raise ValueError(f"must not be {codes.describe(code)}: {codes.CLIENT_ANSWERS[code]}")


def validate_request(request: pb.CallRequest, limits: Limits = Limits()) -> None:
    """A whole request: its call id, payload and script (RequestError names the field)."""
    check_call_id(request.call_id, limits)
    size = len(request.payload)
    if size > limits.max_payload_bytes:
        raise RequestError("payload", f"at most {limits.max_payload_bytes} bytes, got {size}")
    if request.HasField("script"):
        validate(request.script, limits)
        if request.script.echo and size > limits.max_reply_bytes:
            raise RequestError("payload", f"an echoed payload is a reply: at most {limits.max_reply_bytes} bytes, got {size}")


# Scripts found valid, kept by their bytes (a caller sends the same few scripts over and over): up
# to this many, each at most this long; past the count the set starts afresh.
KNOWN_SCRIPTS = 1024
KNOWN_SCRIPT_BYTES = 512


def remember(known: dict[bytes, Any], key: bytes, value: Any) -> None:
    """Keep what was worked out of a script, by its bytes (`key`), within the bounds above: a
    longer script is not kept, and past the count the record starts afresh."""
    if len(key) <= KNOWN_SCRIPT_BYTES:
        if len(known) >= KNOWN_SCRIPTS:
            known.clear()
        known[key] = value


class ValidScripts:
    """The scripts a server (its dispatcher) or a client found valid, known by their bytes after
    that: a request repeating one, with a payload valid with any script, is not validated again."""

    def __init__(self, limits: Limits = Limits()) -> None:
        self._keys: dict[bytes, bool] = {}   # the scripts found valid (`remember`)
        self._limits = limits
        self.any_payload = min(limits.max_payload_bytes, limits.max_reply_bytes)   # valid with any script

    def knows(self, key: bytes, payload_size: int) -> bool:
        """Whether `check` of a request with this script (its bytes) and payload size passes at once."""
        return key in self._keys and payload_size <= self.any_payload

    def check(self, request: pb.CallRequest) -> bool:
        """`validate_request` (RequestError naming the field), unless its script is known valid and
        its payload valid with any script: True then (what else of the request the caller checks
        is its own: the call id), False once validated."""
        if request.HasField("script") and len(request.payload) <= self.any_payload:
            key = request.script.SerializeToString()
            if key in self._keys:
                return True
            validate_request(request, self._limits)
            remember(self._keys, key, True)
            return False
        validate_request(request, self._limits)
        return False


def validate(script: pb.Script, limits: Limits = Limits()) -> None:
    """Raise ScriptError naming the first bad field of `script`."""
    for name in ("dispatch_delay_ms", "outcome_delay_ms"):
        value = getattr(script, name)
        if value < 0:
            raise ScriptError(name, f"must be >= 0, got {value}")
        if value > limits.max_delay_ms:
            raise ScriptError(name, f"must be <= {limits.max_delay_ms} (server limit), got {value}")
    check_cancel_poll(script, limits)
    validate_ending(script, limits)
    if not 0 <= script.reply_bytes <= limits.max_reply_bytes:
        raise ScriptError("reply_bytes", f"must be in 0..{limits.max_reply_bytes}, got {script.reply_bytes}")


def validate_ending(script: pb.Script | pb.PipeScript, limits: Limits = Limits()) -> None:
    """The fields every script has (unary and pipe alike): its outcome, on-cancel policy, abort
    code and status, its abort and fatal messages. The one place they are checked, on the client
    before sending and on the server as they arrive. An abort code is checked whenever it is set,
    not only when the script says abort: a script without an outcome may draw abort from the
    server's mix."""
    if script.outcome != pb.OUTCOME_UNSPECIFIED and script.outcome not in OUTCOME_NAMES:
        raise ScriptError("outcome", f"unknown outcome {script.outcome}; expected one of "
                          + ", ".join(f"{v} ({k})" for k, v in OUTCOMES.items()))
    if script.on_cancel not in ON_CANCEL_NAMES:
        raise ScriptError("on_cancel", f"unknown on_cancel {script.on_cancel}")
    for name in ("abort_message", "fatal_message"):
        size = len(getattr(script, name).encode("utf-8", "surrogatepass"))
        if size > limits.max_message_bytes:
            raise ScriptError(name, f"at most {limits.max_message_bytes} bytes (so the status reaches the caller "
                                    f"intact), got {size}")
    if script.outcome == pb.OUTCOME_ABORT or script.abort_code:
        try:
            check_abort_code(script.abort_code)
        except ValueError as exc:
            raise ScriptError("abort_code", str(exc)) from None
    if not 0 <= script.abort_grpc_status <= 16:
        raise ScriptError("abort_grpc_status", f"must be a gRPC status code 1..16 (0 = ABORTED), got {script.abort_grpc_status}")


def check_cancel_poll(script: pb.Script | pb.PipeScript, limits: Limits = Limits()) -> None:
    """ScriptError unless the script's cancel_poll_ms (when it has one) is 0..max delay."""
    if script.HasField("cancel_poll_ms") and not 0 <= script.cancel_poll_ms <= limits.max_delay_ms:
        raise ScriptError("cancel_poll_ms", f"must be in 0..{limits.max_delay_ms}, got {script.cancel_poll_ms}")


def cancel_poll_ms(script: pb.Script | pb.PipeScript | None) -> int | None:
    """The poll interval a script asks for, in ms; None when it leaves it to the server."""
    return script.cancel_poll_ms if script is not None and script.HasField("cancel_poll_ms") else None


def check_field_types(script: Any) -> None:
    """ScriptError naming the first field of a `Script` or `PipeScript` whose value is not of its
    default's kind (seconds: a finite number; a count or code: an int; a name: a str; a flag: a
    bool), before protobuf or round() refuse it in words that name no field."""
    for f in fields(script):
        value, default = getattr(script, f.name), f.default
        if isinstance(default, bool):
            ok, kind = isinstance(value, bool), "True or False"
        elif isinstance(default, int):
            ok, kind = isinstance(value, int) and not isinstance(value, bool), "an int"
        elif isinstance(default, str):
            ok, kind = isinstance(value, str), "a str"
        else:   # seconds (a float, or None: the server's own)
            ok = (value is None and default is None) or (isinstance(value, (int, float)) and not isinstance(value, bool)
                                                         and math.isfinite(value))
            kind = "a finite number of seconds" + (" or None" if default is None else "")
        if not ok:
            raise ScriptError(f.name, f"must be {kind}, got {value!r}")


# What building a script's proto raises on a field of the wrong type (protobuf, round()): the
# fields are checked only then, as building is on every call's path (`field_type_error`).
BUILD_ERRORS: Final = (TypeError, ValueError, OverflowError)


def field_type_error(script: Any) -> ScriptError | None:
    """The ScriptError naming the first field of a `Script` or `PipeScript` of the wrong type, if any."""
    try:
        check_field_types(script)
    except ScriptError as exc:
        return exc
    return None


def to_ms(seconds: float | None) -> int | None:
    return None if seconds is None else round(seconds * 1000)


@dataclass(frozen=True)
class Script:
    """A call's script in seconds, as Python users write it."""

    outcome: OutcomeName = COMPLETE
    # the rest by name only: Script("abort", 5001) would be a 5001 s dispatch delay, not the code
    _: KW_ONLY
    dispatch_delay: float = 0.0
    outcome_delay: float = 0.0
    reply_bytes: int = 0
    echo: bool = False
    abort_code: int = DEFAULT_ABORT_CODE
    abort_status: int = 0          # gRPC status value; 0 = ABORTED
    abort_message: str = ""
    fatal_message: str = ""
    on_cancel: OnCancelName = ABORT
    headers_first: bool = False    # send initial metadata before the outcome (no trailers-only response)
    # seconds between the handler's cancel tests (RpcServerTestCancel); 0: sees a cancel at
    # once; None: the server's --cancel-poll-ms
    cancel_poll: float | None = None

    def to_proto(self) -> pb.Script:
        try:
            return self._to_proto()
        except BUILD_ERRORS as exc:
            raise (field_type_error(self) or exc) from None

    def _to_proto(self) -> pb.Script:
        if self.outcome not in OUTCOMES:
            raise ScriptError("outcome", f"unknown outcome {self.outcome!r}; expected one of {', '.join(OUTCOMES)}")
        if self.on_cancel not in ON_CANCEL:
            raise ScriptError("on_cancel", f"unknown on_cancel {self.on_cancel!r}; expected one of {', '.join(ON_CANCEL)}")
        return pb.Script(
            dispatch_delay_ms=round(self.dispatch_delay * 1000),
            outcome=OUTCOMES[self.outcome],
            outcome_delay_ms=round(self.outcome_delay * 1000),
            reply_bytes=self.reply_bytes,
            echo=self.echo,
            abort_code=self.abort_code if self.outcome == ABORT else 0,
            abort_grpc_status=self.abort_status,
            abort_message=self.abort_message,
            fatal_message=self.fatal_message,
            on_cancel=ON_CANCEL[self.on_cancel],
            headers_first=self.headers_first,
            cancel_poll_ms=to_ms(self.cancel_poll),
        )


class MixError(ValueError):
    pass


@dataclass
class Mix:
    """Weighted choice of outcomes, e.g. parsed from 'complete=80,abort=10,fatal=5,hold=5'."""

    weights: dict[str, float] = field(default_factory=lambda: {COMPLETE: 1.0})

    @classmethod
    def parse(cls, text: str, allowed: tuple[str, ...] = tuple(OUTCOMES)) -> "Mix":
        weights: dict[str, float] = {}
        for part in filter(None, (p.strip() for p in text.split(","))):
            name, sep, value = part.partition("=")
            name = name.strip()
            if not sep:
                raise MixError(f"mix entry {part!r}: expected NAME=WEIGHT")
            if name not in allowed:
                raise MixError(f"mix entry {part!r}: unknown name {name!r}; expected one of {', '.join(allowed)}")
            try:
                weight = float(value)
            except ValueError:
                raise MixError(f"mix entry {part!r}: weight {value!r} is not a number") from None
            if weight < 0 or weight != weight:
                raise MixError(f"mix entry {part!r}: weight must be >= 0")
            weights[name] = weights.get(name, 0.0) + weight
        if not weights or sum(weights.values()) <= 0:
            raise MixError(f"mix {text!r}: needs at least one positive weight")
        return cls(weights)

    def draw(self, rng: random.Random | None = None) -> str:
        r = (rng or random).random() * sum(self.weights.values())
        for name, weight in self.weights.items():
            r -= weight
            if r < 0:
                return name
        return next(reversed(self.weights))

    def __str__(self) -> str:
        return ",".join(f"{k}={v:g}" for k, v in self.weights.items())


def cancel_poll_mix(text: str, limits: Limits = Limits()) -> Mix:
    """A weighted choice of poll intervals in ms, e.g. '0=50,100=50' (`--cancel-poll`)."""
    names = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        name = part.partition("=")[0].strip()
        if not name.isdigit() or int(name) > limits.max_delay_ms:
            raise MixError(f"cancel poll entry {part!r}: {name!r} is not a poll interval in ms "
                           f"(0..{limits.max_delay_ms})")
        names.append(name)
    return Mix.parse(text, allowed=tuple(names))
