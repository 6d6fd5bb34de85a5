"""The properties `callstate conformance` checks, one line each, and the result of one row."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

COMPLETE_SMALL: Final = "complete-small"
COMPLETE_LARGE: Final = "complete-large"
ABORT_TRAILERS_ONLY: Final = "abort-trailers-only"
ABORT_AFTER_HEADERS: Final = "abort-after-headers"
FATAL: Final = "fatal"
UNIMPLEMENTED: Final = "unimplemented"
CANCEL_ABORTIVE: Final = "cancel-abortive"
CANCEL_NON_ABORTIVE: Final = "cancel-non-abortive"
DEADLINE: Final = "deadline"
HELD: Final = "held"
MANY_STREAMS: Final = "many-streams"
LARGE_METADATA: Final = "large-metadata"
PIPE_OUT_STREAMED: Final = "pipe-out-streamed"
PIPE_IN_HALF_CLOSE: Final = "pipe-in-half-close"
PIPE_EARLY_ANSWER: Final = "pipe-early-answer"
PIPE_BOTH_FULL_DUPLEX: Final = "pipe-both-full-duplex"
PIPE_ABORT_MID_STREAM: Final = "pipe-abort-mid-stream"
PIPE_CANCEL: Final = "pipe-cancel"
CHECK: Final = "check"
GRACEFUL_STOP: Final = "graceful-stop"
RUNNING_EVERY: Final = 10.0   # s between the progress lines of a row still running: through a stalled proxy one takes minutes

PROPERTIES: Final[dict[str, str]] = {
    COMPLETE_SMALL: "a completed call's reply (an echo of random bytes, --small-bytes) arrives intact with 0",
    COMPLETE_LARGE: "a reply near the maximum message size (--max-bytes) arrives intact with 0",
    ABORT_TRAILERS_ONLY: "an abort's exact code reaches the client (trailer callstate-code), trailers-only response",
    ABORT_AFTER_HEADERS: "the same when the handler sent initial metadata first (Script.headers_first)",
    FATAL: "a handler that fails fatally reaches the client as 1726 RPC_S_CALL_FAILED",
    UNIMPLEMENTED: "an unknown method reaches the client as UNIMPLEMENTED",
    CANCEL_ABORTIVE: "every abortive cancel (RST_STREAM) reaches the server, p99 within --cancel-bound-ms; "
                     "nothing left in flight",
    CANCEL_NON_ABORTIVE: "a cancel notice reaches the handler and its answer (complete anyway) reaches the client",
    DEADLINE: "a client deadline reaches the server (grpc-timeout), the server sees the cancel, both sides end",
    HELD: "calls held for --hold-seconds complete intact: no idle timeout cuts them",
    MANY_STREAMS: "--streams concurrent calls on one connection all complete",
    LARGE_METADATA: "a request header of --metadata-bytes and an abort message (trailers) of up to the server's "
                    "limit (2 KiB) cross intact",
    PIPE_OUT_STREAMED: "an out pipe's messages, paced by the server, arrive in order while its stream is still open "
                       "(the server holds it until the caller's cancel notice, then completes with 0): streamed, "
                       "not held until the end",
    PIPE_IN_HALF_CLOSE: "an in pipe's pushes and its null push (half-close) reach the server: it counts every "
                        "message, then NP, then completes with 0",
    PIPE_EARLY_ANSWER: "an in pipe's server completes after the caller's 2nd message, before the caller "
                       "half-closes: its reply (0) reaches the caller, not a reset",
    PIPE_BOTH_FULL_DUPLEX: "a bidi pipe's server answers (an exact abort code) after the caller's first message, "
                           "before the caller half-closes",
    PIPE_ABORT_MID_STREAM: "an out pipe aborted after its Nth message: the N messages, then the exact code",
    PIPE_CANCEL: "abortive cancels of held out pipes, mid-stream, reach the server, p99 within --cancel-bound-ms; "
                 "nothing left in flight",
    CHECK: "`callstate check` over both sides' entries of every call above: every invariant holds",
    GRACEFUL_STOP: "calls in flight when the server stops gracefully end with 1722 at the client, none hang "
                   "(needs --serve-port)",
}


@dataclass
class Row:
    """One property on one path (direct or through the proxy)."""

    prop: str
    ok: bool | None               # None: skipped (see `note`)
    figures: str = ""             # short, for the table
    note: str = ""                # why it failed or was skipped
    data: dict[str, Any] = field(default_factory=dict)   # the numbers, for --report
    seconds: float = 0.0          # how long the row took to judge

    @property
    def verdict(self) -> str:
        return "skip" if self.ok is None else "pass" if self.ok else "FAIL"

    def to_json(self) -> dict[str, Any]:
        return {"property": self.prop, "verdict": self.verdict, "figures": self.figures, "note": self.note,
                "seconds": round(self.seconds, 3), **self.data}
