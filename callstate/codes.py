"""MS-RPC status codes, their names, and how they cross gRPC (docs/model.md, "Codes").

An abort's exact code travels in trailing metadata (`callstate-code`), so a
client in any language can read it; otherwise the code is derived from the
gRPC status with the table below.
"""

from __future__ import annotations

from typing import Final, Iterable

import grpc

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


# gRPC status -> MS-RPC code, when no `callstate-code` trailer says otherwise.
_FROM_GRPC: Final[dict[grpc.StatusCode, int]] = {
    grpc.StatusCode.OK: RPC_S_OK,
    grpc.StatusCode.CANCELLED: RPC_S_CALL_CANCELLED,
    grpc.StatusCode.DEADLINE_EXCEEDED: RPC_S_CALL_CANCELLED,  # "cancelled or timed out"
    grpc.StatusCode.UNKNOWN: RPC_S_CALL_FAILED,
    grpc.StatusCode.INTERNAL: RPC_S_CALL_FAILED,
    grpc.StatusCode.UNAVAILABLE: RPC_S_SERVER_UNAVAILABLE,
    grpc.StatusCode.RESOURCE_EXHAUSTED: RPC_S_SERVER_TOO_BUSY,
    grpc.StatusCode.INVALID_ARGUMENT: RPC_S_INVALID_ARG,
    grpc.StatusCode.PERMISSION_DENIED: ERROR_ACCESS_DENIED,
    grpc.StatusCode.UNAUTHENTICATED: ERROR_ACCESS_DENIED,
}

# MS-RPC code -> the gRPC status the server sends it with.
_TO_GRPC: Final[dict[int, grpc.StatusCode]] = {
    RPC_S_OK: grpc.StatusCode.OK,
    RPC_S_CALL_CANCELLED: grpc.StatusCode.CANCELLED,
    RPC_S_CALL_FAILED: grpc.StatusCode.UNKNOWN,
    RPC_S_SERVER_UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
    RPC_S_SERVER_TOO_BUSY: grpc.StatusCode.RESOURCE_EXHAUSTED,
    RPC_S_INVALID_ARG: grpc.StatusCode.INVALID_ARGUMENT,
    ERROR_ACCESS_DENIED: grpc.StatusCode.PERMISSION_DENIED,
    # The pipe rules: an operation the pipe's state does not allow, or reading past its end.
    # Only one way: several codes share FAILED_PRECONDITION, so the code trailer tells them
    # apart, and a status without it is not taken for a pipe rule (other services send these).
    RPC_X_WRONG_PIPE_ORDER: grpc.StatusCode.FAILED_PRECONDITION,
    RPC_X_PIPE_CLOSED: grpc.StatusCode.FAILED_PRECONDITION,
    RPC_X_PIPE_DISCIPLINE_ERROR: grpc.StatusCode.FAILED_PRECONDITION,
    RPC_X_PIPE_EMPTY: grpc.StatusCode.OUT_OF_RANGE,
}

_STATUS_BY_VALUE: Final[dict[int, grpc.StatusCode]] = {s.value[0]: s for s in grpc.StatusCode}


def name(code: int) -> str:
    """The symbolic name of an MS-RPC code; application codes get a generic one."""
    return NAMES.get(code, f"APPLICATION_ERROR_{code}")


def describe(code: int) -> str:
    return f"{code} {name(code)}"


def grpc_status_for(code: int) -> grpc.StatusCode:
    """The gRPC status an abort with `code` is sent with when the script names none."""
    return _TO_GRPC.get(code, grpc.StatusCode.ABORTED)


def status_from_value(value: int) -> grpc.StatusCode | None:
    """grpc.StatusCode for its integer value (None when there is no such status)."""
    return _STATUS_BY_VALUE.get(value)


def from_grpc(status: grpc.StatusCode | None, trailing_metadata: Iterable[tuple[str, str | bytes]] | None = None) -> int:
    """The MS-RPC code a client reads from a finished gRPC call."""
    for key, value in trailing_metadata or ():
        if key == CODE_KEY:
            try:
                return int(value)
            except (TypeError, ValueError):
                break  # a garbled trailer: fall back on the status
    if status is None:
        return RPC_S_CALL_FAILED
    return _FROM_GRPC.get(status, RPC_S_CALL_FAILED)


# the gRPC status a client records on a 1722 of its own making (it closed under the call)
LOCAL_CLOSE_STATUS: Final = grpc.StatusCode.CANCELLED.name


def client_outcome(status: grpc.StatusCode | None, trailing_metadata: Iterable[tuple[str, str | bytes]] | None,
                   details: str | None, *, cancelled_here: bool = False,
                   abortive_cancel: bool = False) -> tuple[int, str, str]:
    """(MS-RPC code, gRPC status name, details) of a finished call, as the caller records it.

    The one mapping both client surfaces use. `cancelled_here`: the RPC was cancelled on the
    caller's side (its own abortive cancel, or the client closing under it). A CANCELLED
    status after the caller's abortive cancel is that cancel (1818); a local cancel without
    one is the client going away: 1722 with the status gRPC gave it (CANCELLED), which tells a
    checker this 1722 was the client's own close rather than a connection lost on the wire.
    """
    if cancelled_here or status == grpc.StatusCode.CANCELLED:
        if abortive_cancel:
            return RPC_S_CALL_CANCELLED, grpc.StatusCode.CANCELLED.name, "cancelled by the caller"
        if cancelled_here:
            return RPC_S_SERVER_UNAVAILABLE, LOCAL_CLOSE_STATUS, "the client was closed"
    return from_grpc(status, trailing_metadata), status.name if status is not None else "", details or ""


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
