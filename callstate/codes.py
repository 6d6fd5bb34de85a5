"""MS-RPC status codes, their names, and how they cross gRPC (docs/model.md, "Codes"), as data:
gRPC statuses by name (`callstate.grpc_status` makes them `grpc.StatusCode`).

An abort's exact code travels in trailing metadata (`callstate-code`), so a
client in any language can read it; otherwise the code is derived from the
gRPC status with the table below.
"""

from __future__ import annotations

from typing import Final, Iterable, Protocol, Union

from callstate.wire import CODE_KEY

RPC_S_OK: Final = 0
ERROR_ACCESS_DENIED: Final = 5
RPC_S_INVALID_ARG: Final = 87
RPC_S_ASYNC_CALL_PENDING: Final = 997
RPC_S_TIMEOUT: Final = 1460
RPC_S_SERVER_UNAVAILABLE: Final = 1722
RPC_S_SERVER_TOO_BUSY: Final = 1723
RPC_S_CALL_FAILED: Final = 1726
RPC_S_CALL_CANCELLED: Final = 1818
RPC_S_INVALID_ASYNC_HANDLE: Final = 1914
RPC_S_INVALID_ASYNC_CALL: Final = 1915
RPC_X_WRONG_PIPE_ORDER: Final = 1831       # a push or pull on a pipe the call does not have that way
RPC_X_PIPE_CLOSED: Final = 1916            # a push or pull on a pipe that has ended
RPC_X_PIPE_DISCIPLINE_ERROR: Final = 1917  # the call completed before all pipes were processed
RPC_X_PIPE_EMPTY: Final = 1918             # a pull on a pipe already pulled to its end

NAMES: Final[dict[int, str]] = {
    RPC_S_OK: "RPC_S_OK",
    ERROR_ACCESS_DENIED: "ERROR_ACCESS_DENIED",
    RPC_S_INVALID_ARG: "RPC_S_INVALID_ARG",
    RPC_S_ASYNC_CALL_PENDING: "RPC_S_ASYNC_CALL_PENDING",
    RPC_S_TIMEOUT: "RPC_S_TIMEOUT",
    RPC_S_SERVER_UNAVAILABLE: "RPC_S_SERVER_UNAVAILABLE",
    RPC_S_SERVER_TOO_BUSY: "RPC_S_SERVER_TOO_BUSY",
    RPC_S_CALL_FAILED: "RPC_S_CALL_FAILED",
    RPC_S_CALL_CANCELLED: "RPC_S_CALL_CANCELLED",
    RPC_S_INVALID_ASYNC_HANDLE: "RPC_S_INVALID_ASYNC_HANDLE",
    RPC_S_INVALID_ASYNC_CALL: "RPC_S_INVALID_ASYNC_CALL",
    RPC_X_WRONG_PIPE_ORDER: "RPC_X_WRONG_PIPE_ORDER",
    RPC_X_PIPE_CLOSED: "RPC_X_PIPE_CLOSED",
    RPC_X_PIPE_DISCIPLINE_ERROR: "RPC_X_PIPE_DISCIPLINE_ERROR",
    RPC_X_PIPE_EMPTY: "RPC_X_PIPE_EMPTY",
}

# The codes a caller's own library answers with, never a server: why each is the caller's. A poll
# (`status()`) answers 997 while the call is not done and complete() before the notification does
# too, so a call a server aborted with 997 would look pending for ever to a caller who polls; 1914
# and 1915 would pass for the caller's misuse of its handle. No script, rule or option may abort
# with one (`script.check_abort_code`), and the checker refuses a server abort that carries one.
CLIENT_ANSWERS: Final[dict[int, str]] = {
    RPC_S_ASYNC_CALL_PENDING: "a caller's own answer while its call is not done: a call aborted with it "
                              "would look still pending",
    RPC_S_INVALID_ASYNC_HANDLE: "a caller's own answer after its call's final complete: a call aborted with it "
                                "would look completed already",
    RPC_S_INVALID_ASYNC_CALL: "a caller's own answer to a move its call's state does not allow: a call aborted "
                              "with it would look never started",
}

# The gRPC statuses by name and number (the canonical codes every gRPC implementation shares).
# The core speaks of a status by its name; `callstate.grpc_status` turns it into `grpc.StatusCode`.
GRPC_STATUS_VALUES: Final[dict[str, int]] = {
    "OK": 0, "CANCELLED": 1, "UNKNOWN": 2, "INVALID_ARGUMENT": 3, "DEADLINE_EXCEEDED": 4, "NOT_FOUND": 5,
    "ALREADY_EXISTS": 6, "PERMISSION_DENIED": 7, "RESOURCE_EXHAUSTED": 8, "FAILED_PRECONDITION": 9, "ABORTED": 10,
    "OUT_OF_RANGE": 11, "UNIMPLEMENTED": 12, "INTERNAL": 13, "UNAVAILABLE": 14, "DATA_LOSS": 15,
    "UNAUTHENTICATED": 16,
}
_STATUS_BY_VALUE: Final[dict[int, str]] = {v: k for k, v in GRPC_STATUS_VALUES.items()}
OK: Final = "OK"
CANCELLED: Final = "CANCELLED"
DEADLINE_EXCEEDED: Final = "DEADLINE_EXCEEDED"   # the status of a call whose deadline expired
ABORTED: Final = "ABORTED"

# gRPC status -> MS-RPC code, when no `callstate-code` trailer says otherwise.
_FROM_GRPC: Final[dict[str, int]] = {
    OK: RPC_S_OK,
    CANCELLED: RPC_S_CALL_CANCELLED,
    DEADLINE_EXCEEDED: RPC_S_CALL_CANCELLED,  # "cancelled or timed out"
    "UNKNOWN": RPC_S_CALL_FAILED,
    "INTERNAL": RPC_S_CALL_FAILED,
    "UNAVAILABLE": RPC_S_SERVER_UNAVAILABLE,
    "RESOURCE_EXHAUSTED": RPC_S_SERVER_TOO_BUSY,
    "INVALID_ARGUMENT": RPC_S_INVALID_ARG,
    "PERMISSION_DENIED": ERROR_ACCESS_DENIED,
    "UNAUTHENTICATED": ERROR_ACCESS_DENIED,
}

# MS-RPC code -> the gRPC status the server sends it with.
_TO_GRPC: Final[dict[int, str]] = {
    RPC_S_OK: OK,
    RPC_S_CALL_CANCELLED: CANCELLED,
    RPC_S_CALL_FAILED: "UNKNOWN",
    RPC_S_SERVER_UNAVAILABLE: "UNAVAILABLE",
    RPC_S_SERVER_TOO_BUSY: "RESOURCE_EXHAUSTED",
    RPC_S_INVALID_ARG: "INVALID_ARGUMENT",
    ERROR_ACCESS_DENIED: "PERMISSION_DENIED",
    # The pipe rules: an operation the pipe's state does not allow, or reading past its end.
    # Only one way: several codes share FAILED_PRECONDITION, so the code trailer tells them
    # apart, and a status without it is not taken for a pipe rule (other services send these).
    RPC_X_WRONG_PIPE_ORDER: "FAILED_PRECONDITION",
    RPC_X_PIPE_CLOSED: "FAILED_PRECONDITION",
    RPC_X_PIPE_DISCIPLINE_ERROR: "FAILED_PRECONDITION",
    RPC_X_PIPE_EMPTY: "OUT_OF_RANGE",
}


class _Named(Protocol):
    """A `grpc.StatusCode` as the core sees it: by its name (the core does not import grpc)."""

    @property
    def name(self) -> str: ...


Status = Union[_Named, str, None]   # a grpc.StatusCode, its name, or no status


def status_name(status: Status) -> str:
    """The name of a status given as a `grpc.StatusCode` or as its name ("" for none)."""
    if status is None:
        return ""
    return status if isinstance(status, str) else status.name


def name(code: int) -> str:
    """The symbolic name of an MS-RPC code; application codes get a generic one."""
    return NAMES.get(code, f"APPLICATION_ERROR_{code}")


def describe(code: int) -> str:
    return f"{code} {name(code)}"


def grpc_status_name_for(code: int) -> str:
    """The name of the gRPC status an abort with `code` is sent with when the script names none."""
    return _TO_GRPC.get(code, ABORTED)


def status_name_of_value(value: int) -> str | None:
    """The name of the gRPC status with integer `value` (None when there is no such status)."""
    return _STATUS_BY_VALUE.get(value)


def from_grpc(status: Status, trailing_metadata: Iterable[tuple[str, str | bytes]] | None = None) -> int:
    """The MS-RPC code a client reads from a finished gRPC call."""
    for key, value in trailing_metadata or ():
        if key == CODE_KEY:
            try:
                return int(value)
            except (TypeError, ValueError):
                break  # a garbled trailer: fall back on the status
    return _FROM_GRPC.get(status_name(status), RPC_S_CALL_FAILED)


# the gRPC status a client records on a 1722 of its own making (it closed under the call)
LOCAL_CLOSE_STATUS: Final = CANCELLED


def client_outcome(status: Status, trailing_metadata: Iterable[tuple[str, str | bytes]] | None,
                   details: str | None, *, cancelled_here: bool = False,
                   abortive_cancel: bool = False) -> tuple[int, str, str]:
    """(MS-RPC code, gRPC status name, details) of a finished call, as the caller records it.

    The one mapping both client surfaces use. `cancelled_here`: the RPC was cancelled on the
    caller's side (its own abortive cancel, or the client closing under it). A CANCELLED
    status after the caller's abortive cancel is that cancel (1818); a local cancel without
    one is the client going away: 1722 with the status gRPC gave it (CANCELLED), which tells a
    checker this 1722 was the client's own close rather than a connection lost on the wire.
    """
    plain = not trailing_metadata and not details and not cancelled_here
    if plain and (known := _PLAIN_OUTCOMES.get((status, abortive_cancel))) is not None:
        return known   # the common case (a reply: OK, no trailers): worked out once per status
    if cancelled_here or status_name(status) == CANCELLED:
        if abortive_cancel:
            return RPC_S_CALL_CANCELLED, CANCELLED, "cancelled by the caller"
        if cancelled_here:
            return RPC_S_SERVER_UNAVAILABLE, LOCAL_CLOSE_STATUS, "the client was closed"
    outcome = from_grpc(status, trailing_metadata), status_name(status), details or ""
    if plain and len(_PLAIN_OUTCOMES) < 64:   # statuses are few; a bound all the same
        _PLAIN_OUTCOMES[(status, abortive_cancel)] = outcome
    return outcome


# client_outcome of a status with no trailers, details or local cancel, by (status, abortive_cancel)
_PLAIN_OUTCOMES: dict[tuple[Status, bool], tuple[int, str, str]] = {}


# Distinct final codes are counted one by one up to this many; the rest together under OTHER_CODE
# (outside the 32-bit range, so never a real code): a caller ending calls with ever new abort codes
# cannot grow the server's counters, GetCounters or /metrics without bound.
MAX_DISTINCT_CODES: Final = 256
OTHER_CODE: Final = 1 << 32
OTHER_CODE_NAME: Final = "OTHER_CODES"


def count_code(counts: dict[int, int], code: int) -> None:
    """counts[code] += 1, or counts[OTHER_CODE] once `counts` holds MAX_DISTINCT_CODES codes."""
    if code not in counts and len(counts) >= MAX_DISTINCT_CODES:
        code = OTHER_CODE
    counts[code] = counts.get(code, 0) + 1
