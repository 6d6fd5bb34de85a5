"""The code table the documentation shows, written once: docs/model.md holds its rendering
between markers, and a test fails when the two differ or a code in `codes.NAMES` has no row.

The gRPC status column is prose (it says which statuses a client reads as the code, and what
the server sends); `tests/test_docs.py` checks it names the status `codes.grpc_status_name_for`
gives each code.
"""

from __future__ import annotations

from typing import Final

from callstate import codes
from callstate.script import ABORT_CODE_RULE

BEGIN: Final = "<!-- code table: generated from callstate/code_docs.py -->"
END: Final = "<!-- end of code table -->"

# the gRPC status column of a code only the caller's library answers with (`codes.CLIENT_ANSWERS`)
OWN_ANSWER: Final = "none: the client's own answer"

# code -> (gRPC status, when): in the order the table shows them
ROWS: Final[dict[int, tuple[str, str]]] = {
    codes.RPC_S_OK: ("OK", "the call completed"),
    codes.RPC_S_CALL_CANCELLED: ("CANCELLED (also DEADLINE_EXCEEDED: \"cancelled or timed out\")",
                                 "any cancel, or the caller's deadline"),
    codes.RPC_S_CALL_FAILED: ("UNKNOWN / INTERNAL", "the handler failed fatally (raised on the RPC thread)"),
    codes.RPC_S_SERVER_UNAVAILABLE: ("UNAVAILABLE", "no server, connection lost, server stopping, or the client "
                                                    "closed under the call"),
    codes.RPC_S_SERVER_TOO_BUSY: ("RESOURCE_EXHAUSTED", "over the server's `--max-in-flight` or "
                                                        "`--max-reply-backlog`"),
    codes.RPC_S_INVALID_ARG: ("INVALID_ARGUMENT (ALREADY_EXISTS for an id in flight)",
                              "a bad script or request: the message names the field"),
    codes.ERROR_ACCESS_DENIED: ("PERMISSION_DENIED / UNAUTHENTICATED", "refused by the server's access control"),
    codes.RPC_S_TIMEOUT: ("DEADLINE_EXCEEDED", "a call reached the server's `--max-hold` (held, delayed, or "
                                               "ignoring its cancel)"),
    codes.RPC_S_ASYNC_CALL_PENDING: (OWN_ANSWER, "`complete()` before the call-complete "
                                                                      "notification; nothing changes"),
    codes.RPC_S_INVALID_ASYNC_HANDLE: (OWN_ANSWER, "`complete()` or `cancel()` after the "
                                                                        "final complete"),
    codes.RPC_S_INVALID_ASYNC_CALL: (OWN_ANSWER, "a move the call's state does not allow "
                                                                      "(a pipe push out of turn, for instance)"),
    codes.RPC_X_WRONG_PIPE_ORDER: ("FAILED_PRECONDITION", "a push on an out pipe or a pull on an in pipe "
                                                          "(refused by the caller's library)"),
    codes.RPC_X_PIPE_CLOSED: ("FAILED_PRECONDITION", "a push after the null push, a push or pull after the call "
                                                     "ended (refused by the caller's library)"),
    codes.RPC_X_PIPE_DISCIPLINE_ERROR: ("FAILED_PRECONDITION", "the call completed before its pipes were "
                                                               "processed: a pipe rule broken (`pipe_breach`)"),
    codes.RPC_X_PIPE_EMPTY: ("OUT_OF_RANGE", "a pull after the pipe's end was pulled (refused by the caller's "
                                             "library)"),
}
ABORT_ROW: Final = (f"N (abort code: {ABORT_CODE_RULE})", "the script's status, ABORTED when none is given", "`RpcAsyncAbortCall(N)`")


def markdown() -> str:
    lines = [BEGIN, "", "| MS-RPC code | gRPC status | when |", "|---|---|---|"]
    lines += [f"| {code} `{codes.name(code)}` | {status} | {when} |" for code, (status, when) in ROWS.items()]
    lines += ["| " + " | ".join(ABORT_ROW) + " |", "", END]
    return "\n".join(lines)
