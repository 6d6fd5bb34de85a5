"""The two MS-RPC asynchronous call lifecycles, and every rule that joins them, as data.

Everything that decides which state a call may enter, which final code a path
ends with, and when the two sides of a call agree lives in this module, and the
module does not know who is asking: the client library, the server's handlers,
the load generator and `callstate check` all import these names and rules, so
the two sides of a call cannot be judged by different rules (the h11 approach).
The model is explained in docs/model.md.

The tables are side -> state -> move -> next state. A move missing from the
table is illegal, and `next_state` says which side, which state and which move.
"""

from __future__ import annotations

from typing import Final, Literal, Mapping

from callstate import codes

Side = Literal["client", "server"]
CLIENT: Final = "client"
SERVER: Final = "server"
SIDES: Final[tuple[Side, ...]] = (CLIENT, SERVER)

# -- states -----------------------------------------------------------------------------------
C: Final = "C"            # client: make the call
CAN: Final = "Can"        # client: RpcAsyncCancelCall issued
WCOMP: Final = "WComp"    # client: waiting for the call-complete notification
COMP: Final = "Comp"      # both: completing (client RpcAsyncCompleteCall; server's reply sent)
D: Final = "D"            # server: dispatched, the handler runs its script
A: Final = "A"            # server: RpcAsyncAbortCall(code)
END: Final = "End"        # both: final

# -- moves (the labels on the tables' edges) ---------------------------------------------------
CALL: Final = "call"                  # pseudo-move entering the client's initial state
DISPATCH: Final = "dispatch"          # pseudo-move entering the server's initial state
STARTED: Final = "started"
START_FAILED: Final = "start_failed"
CANCEL: Final = "cancel"
CANCEL_ISSUED: Final = "cancel_issued"
COMPLETE: Final = "complete"
COMPLETED: Final = "completed"
ABORT: Final = "abort"
ABORTED: Final = "aborted"
FATAL: Final = "fatal"

# -- events: recorded without a state change --------------------------------------------------
ENTER: Final = "enter"                        # not an event: the entry records a state entered
COMPLETE_PENDING: Final = "complete_pending"  # client: complete() before the notification (997)
CANCEL_SENT: Final = "cancel_sent"            # client: what became of a non-abortive notice
CANCEL_ESCALATED: Final = "cancel_escalated"  # client: a notice went unanswered, now abortive
# The `cancel_sent` detail of a notice the server kept for a dispatch it had not seen yet: the
# server that kept it must be the one that dispatches the call (the checker's notice_astray).
NOTICE_KEPT: Final = "delivered: kept for the dispatch"
CANCEL_SEEN: Final = "cancel_seen"            # server: a cancel reached the handler
CLIENT_CLOSED: Final = "client_closed"        # client: close() cut the call off in flight (its 1722)

# -- cancel kinds (fAbortCall), recorded in the entry's `cancel` field -------------------------
ABORTIVE: Final = "abortive"           # a gRPC cancel (RST_STREAM), or the caller vanished
NON_ABORTIVE: Final = "non-abortive"   # the cancel notice; the server's own answer still counts
CANCEL_KINDS: Final[tuple[str, ...]] = (ABORTIVE, NON_ABORTIVE)
# Logs written before the `cancel` field carried the kind in `detail`, the server's
# non-abortive kind spelled "notice"; `cancel_kind_of` reads both.
_LEGACY_CANCEL_DETAIL: Final[Mapping[str, str]] = {ABORTIVE: ABORTIVE, NON_ABORTIVE: NON_ABORTIVE,
                                                   "notice": NON_ABORTIVE}

# -- the tables -------------------------------------------------------------------------------
# RPC_ASYNC_STATE on the caller's side.
CLIENT_TABLE: Final[Mapping[str, Mapping[str, str]]] = {
    C: {
        STARTED: WCOMP,          # the call went out; a notification will follow
        START_FAILED: END,       # making the call raised: nothing to complete
        CANCEL: CAN,             # the caller cancels at once
    },
    CAN: {
        CANCEL_ISSUED: WCOMP,    # RpcAsyncCancelCall returned; still wait and complete
    },
    WCOMP: {
        COMPLETE: COMP,          # notification received, the caller completes
        CANCEL: CAN,             # cancel is legal any time before completion
    },
    COMP: {
        COMPLETED: END,          # RpcAsyncCompleteCall returned its final code
    },
    END: {},
}

# The manager routine's side.
SERVER_TABLE: Final[Mapping[str, Mapping[str, str]]] = {
    D: {
        COMPLETE: COMP,          # process the call, then RpcAsyncCompleteCall
        ABORT: A,                # fail gracefully: RpcAsyncAbortCall(code)
        FATAL: END,              # fail fatally: raise on the RPC thread
    },
    A: {
        ABORTED: END,
    },
    COMP: {
        COMPLETED: END,
    },
    END: {},
}

TABLES: Final[Mapping[str, Mapping[str, Mapping[str, str]]]] = {CLIENT: CLIENT_TABLE, SERVER: SERVER_TABLE}
INITIAL: Final[Mapping[str, str]] = {CLIENT: C, SERVER: D}
INITIAL_MOVE: Final[Mapping[str, str]] = {CLIENT: CALL, SERVER: DISPATCH}

# Events a side may record without changing state: a cancel seen by the server changes
# no state; the client records what became of its notice and its complete() attempts.
EVENTS: Final[Mapping[str, frozenset[str]]] = {
    CLIENT: frozenset({COMPLETE_PENDING, CANCEL_SENT, CANCEL_ESCALATED, CLIENT_CLOSED}),
    SERVER: frozenset({CANCEL_SEEN}),
}


class LifecycleError(Exception):
    """An illegal move: names the side, the state and the move."""

    def __init__(self, side: str, state: str | None, move: str, detail: str = "") -> None:
        self.side, self.state, self.move, self.detail = side, state, move, detail
        legal = sorted(TABLES[side][state]) if side in TABLES and state in TABLES[side] else []
        msg = f"{side} lifecycle: move {move!r} is illegal in state {state!r}"
        msg += f" (legal: {', '.join(legal)})" if legal else " (no move leaves it)" if state == END else ""
        super().__init__(msg + (f": {detail}" if detail else ""))

    def __reduce__(self) -> tuple[object, ...]:
        # rebuilt from what __init__ takes (its args hold the message): it crosses processes
        return type(self), (self.side, self.state, self.move, self.detail)


def next_state(side: str, state: str, move: str) -> str:
    """The state `move` leads to from `state`, or LifecycleError."""
    try:
        return TABLES[side][state][move]
    except KeyError:
        raise LifecycleError(side, state, move) from None


def move_to_end(side: str, state: str, kind: str = "unary") -> str | None:
    """The move that leads straight from `state` to End, if there is one.

    Adapters use it to close a call that failed unexpectedly, so even a bug
    ends the call by a legal move (an exception in D is the fatal path).
    """
    return next((m for m, target in table_for(side, kind)[state].items() if target == END), None)


def initial_move(side: str, kind: str = "unary") -> str:
    """The pseudo-move that enters the initial state (logged with prev=None); a pipe's names
    its kind, so a log says which table each call follows."""
    return INITIAL_MOVE[side] if kind == UNARY else PIPE_INITIAL_MOVE[side][kind]


def is_legal(side: str, prev: str | None, move: str | None, state: str, kind: str = "unary") -> bool:
    """Whether entering `state` from `prev` by `move` follows the table of `kind` (unary or a
    pipe kind). `move` may be None (an entry that names no move): then any edge from `prev` to
    `state` is legal."""
    if prev is None:
        return state == INITIAL.get(side) and move in (None, initial_move(side, kind))
    moves = KIND_TABLES.get(kind, {}).get(side, {}).get(prev, {})
    return moves.get(move) == state if move is not None else state in moves.values()


class Lifecycle:
    """One call's position in one side's table, with the states it went through.

    Pure bookkeeping: no I/O, no clock. Adapters call `move()` and write the
    returned (prev, state) pair to the state log.
    """

    __slots__ = ("side", "kind", "state", "history", "_table")

    def __init__(self, side: Side, keep_history: bool = True, kind: str = "unary") -> None:
        self.side: Side = side
        self.kind = kind
        self._table = table_for(side, kind)
        self.state: str = INITIAL[side]
        self.history: list[str] | None = [self.state] if keep_history else None

    @property
    def ended(self) -> bool:
        return self.state == END

    def move(self, move: str) -> tuple[str, str]:
        """Apply `move`; returns (prev, new state) or raises LifecycleError."""
        prev = self.state
        try:   # next_state, inlined: this runs for every state of every call
            self.state = self._table[prev][move]
        except KeyError:
            raise LifecycleError(self.side, prev, move) from None
        if self.history is not None:
            self.history.append(self.state)
        return prev, self.state

    def __repr__(self) -> str:
        return f"<Lifecycle {self.side} {' -> '.join(self.history or [self.state])}>"


# -- rules that join the moves to codes and to the other side ----------------------------------

def cancel_kind(abortive: bool) -> str:
    return ABORTIVE if abortive else NON_ABORTIVE


def cancel_kind_of(cancel: object, detail: object = None) -> str | None:
    """The cancel kind an entry records: its `cancel` field, or, in logs written before
    that field existed, its `detail` (where the server spelled non-abortive "notice")."""
    if cancel in CANCEL_KINDS:
        return cancel  # type: ignore[return-value]
    return _LEGACY_CANCEL_DETAIL.get(detail) if isinstance(detail, str) else None


def notifiable(state: str) -> bool:
    """Client rule: the call-complete notification reaches the caller only in WComp, the one
    state the table lets it complete from. An outcome that arrives while the caller is still
    in C (the reply beat `started`) or in Can is held until the caller enters WComp."""
    return state == WCOMP


# The final code each server path into End produces; an abort carries its own (non-zero) code.
SERVER_END_CODES: Final[Mapping[str, int]] = {COMPLETED: codes.RPC_S_OK, FATAL: codes.RPC_S_CALL_FAILED}


def server_end_code(move: str, abort_code: int = 0) -> int:
    """The code a server call ends with when it enters End by `move`."""
    return abort_code if move == ABORTED else SERVER_END_CODES[move]


def own_path_error(side: str, move: str | None, code: object) -> str | None:
    """Why `code` cannot end a call that entered End by `move` on `side` (None when it can).

    Server: D -> Comp -> End is 0, a fatal D -> End is 1726, an abort ends non-zero and with none
    of a caller's own answers (`codes.CLIENT_ANSWERS`). Client:
    a call that failed to start (C -> End) ends non-zero; a completed one may end with any code.
    """
    if not isinstance(code, int) or isinstance(code, bool):
        return f"End carries no integer code ({code!r})"
    if side == SERVER:
        if move in SERVER_END_CODES and code != SERVER_END_CODES[move]:
            return f"server path --{move}--> End must end with {codes.describe(SERVER_END_CODES[move])}, not {code}"
        if move == ABORTED and code == codes.RPC_S_OK:
            return "server path A --aborted--> End must end with a non-zero code, not 0"
        if move == ABORTED and code in codes.CLIENT_ANSWERS:
            return f"server path A --aborted--> End cannot end with {codes.describe(code)}, {codes.CLIENT_ANSWERS[code]}"
    elif side == CLIENT and move == START_FAILED and code == codes.RPC_S_OK:
        return "client path C --start_failed--> End must end with a non-zero code, not 0"
    return None


# Tolerances of the cross-side rule, each named so that reports and tests can point at it.
AGREE_EQUAL: Final = "equal"
AGREE_CALLER_CANCELLED: Final = "caller_cancelled"   # 1818 after an abortive cancel or deadline
AGREE_CONNECTION_LOST: Final = "connection_lost"     # 1722 while the server saw the caller vanish
AGREE_CLIENT_CLOSE: Final = "client_close"           # 1722 at a client that closed with the call in flight


def codes_agree(client_code: int | None, server_code: int | None, *, client_abortive: bool,
                client_deadline: bool, server_saw_abortive: bool, close_explained: bool = True,
                client_closed: bool = False) -> str | None:
    """Whether a client's final code agrees with the server's outcome: the name of the rule
    that accepts it, or None when it disagrees.

    * equal codes (complete -> 0, abort N -> N, fatal -> 1726, 1722 on a server stop);
    * 1818 at a client that cancelled abortively or whose deadline expired: its cancel wins
      whatever the server did, unless the answer was already on its way (then codes are equal);
    * 1722 at a client whose connection died while the server saw it as an abortive cancel;
      when the client ended the call itself as closed (a local cancel), only if it recorded
      closing (`close_explained`): otherwise its cancel went unrecorded and it should be 1818;
    * 1722 at a client that recorded closing with the call in flight (`client_closed`): its
      close cut the call off whatever the server did (a reply on its way is lost with it).
    """
    if client_code == server_code:
        return AGREE_EQUAL
    if client_code == codes.RPC_S_CALL_CANCELLED and (client_abortive or client_deadline):
        return AGREE_CALLER_CANCELLED
    if client_code == codes.RPC_S_SERVER_UNAVAILABLE and server_saw_abortive and close_explained:
        return AGREE_CONNECTION_LOST
    if client_code == codes.RPC_S_SERVER_UNAVAILABLE and client_closed:
        return AGREE_CLIENT_CLOSE
    return None


def mermaid(side: str, kind: str = "unary") -> str:
    """A Mermaid state diagram drawn from the table (the README embeds these)."""
    lines = ["stateDiagram-v2", f"    [*] --> {INITIAL[side]}"]
    for state, moves in table_for(side, kind).items():
        for move, target in moves.items():
            lines.append(f"    {state} --> {target}: {move}")
    lines.append(f"    {END} --> [*]")
    return "\n".join(lines)


# -- asynchronous pipes -------------------------------------------------------------------------
# An MS-RPC async call may carry pipes: the side that sends pushes buffers (each confirmed by
# an RpcSendComplete notification), the side that receives pulls them (RpcReceiveComplete), and
# the sender ends its pipe with a null push (0 elements). Over gRPC: an in pipe is a
# client-streaming call, an out pipe server-streaming, both a bidi stream; a null push is the
# half-close (in pipe) or the end of the server's stream (out pipe).
#
# Per-message notifications are self-loops (Push --send_complete--> Push), so a log that leaves
# them out (the default: 100,000 messages must not write 100,000 lines) is still a legal path;
# the transitions that leave a pipe state carry the message counts (the entry's `sent` and
# `received` fields).
UNARY: Final = "unary"
PIPE_IN: Final = "in"        # client-streaming: the client pushes, the server pulls
PIPE_OUT: Final = "out"      # server-streaming: the server pushes, the client pulls
PIPE_BOTH: Final = "both"    # bidi: both push and pull at once
PIPE_KINDS: Final[tuple[str, ...]] = (PIPE_IN, PIPE_OUT, PIPE_BOTH)
KINDS: Final[tuple[str, ...]] = (UNARY, *PIPE_KINDS)

# states (MS-RPC names the pushing and the pulling state both "P"; here they are told apart)
PUSH: Final = "Push"   # this side pushes on its pipe (bidi: and pulls the other one)
PULL: Final = "Pull"   # this side pulls from the peer's pipe
NP: Final = "NP"       # server: the client's null push arrived, the in pipe is drained

# moves
SEND_COMPLETE: Final = "send_complete"         # RpcSendComplete: one message pushed (self-loop)
RECEIVE_COMPLETE: Final = "receive_complete"   # RpcReceiveComplete: one message pulled (self-loop)
NULL_PUSH: Final = "null_push"                 # client: push 0 elements, i.e. half-close its pipe
NULL_PULL: Final = "null_pull"                 # the peer's null push arrives: its pipe has ended
START_PUSH: Final = "start_push"               # server: leave D to push (out pipe, bidi)
START_PULL: Final = "start_pull"               # server: leave D to pull (in pipe)

# client event: the server's initial metadata (headers) arrived; a cancel point of its own
HEADERS: Final = "headers"
# either side: a pipe rule was broken (by this side, or seen broken by the peer); such a call
# ends with RPC_X_PIPE_DISCIPLINE_ERROR (1917), and a 1917 needs one (`breach_missing`)
PIPE_BREACH: Final = "pipe_breach"

# Pseudo-moves entering the initial state of a pipe call: they name the kind, so the checker
# knows which table a call follows from its first entry.
PIPE_INITIAL_MOVE: Final[Mapping[str, Mapping[str, str]]] = {
    CLIENT: {PIPE_IN: "call_in", PIPE_OUT: "call_out", PIPE_BOTH: "call_both"},
    SERVER: {PIPE_IN: "dispatch_in", PIPE_OUT: "dispatch_out", PIPE_BOTH: "dispatch_both"},
}

_CLIENT_TAIL: Final[Mapping[str, Mapping[str, str]]] = {
    CAN: {CANCEL_ISSUED: WCOMP},
    WCOMP: {COMPLETE: COMP, CANCEL: CAN},
    COMP: {COMPLETED: END},
    END: {},
}
_SERVER_ENDS: Final[Mapping[str, str]] = {COMPLETE: COMP, ABORT: A, FATAL: END}   # from any live server state
_SERVER_TAIL: Final[Mapping[str, Mapping[str, str]]] = {A: {ABORTED: END}, COMP: {COMPLETED: END}, END: {}}

PIPE_TABLES: Final[Mapping[str, Mapping[str, Mapping[str, Mapping[str, str]]]]] = {
    PIPE_IN: {
        CLIENT: {
            C: {STARTED: PUSH, START_FAILED: END, CANCEL: CAN},
            # a call-complete notification while pushing (the server ended first): complete
            PUSH: {SEND_COMPLETE: PUSH, NULL_PUSH: WCOMP, COMPLETE: COMP, CANCEL: CAN},
            **_CLIENT_TAIL,
        },
        SERVER: {
            D: {START_PULL: PULL, **_SERVER_ENDS},
            PULL: {RECEIVE_COMPLETE: PULL, NULL_PULL: NP, **_SERVER_ENDS},
            NP: {**_SERVER_ENDS},
            **_SERVER_TAIL,
        },
    },
    PIPE_OUT: {
        CLIENT: {
            C: {STARTED: PULL, START_FAILED: END, CANCEL: CAN},
            # the end of the server's stream (ok or not) is its null push: then complete
            PULL: {RECEIVE_COMPLETE: PULL, NULL_PULL: WCOMP, CANCEL: CAN},
            **_CLIENT_TAIL,
        },
        SERVER: {
            D: {START_PUSH: PUSH, **_SERVER_ENDS},
            PUSH: {SEND_COMPLETE: PUSH, **_SERVER_ENDS},   # ending the stream is its null push
            **_SERVER_TAIL,
        },
    },
    PIPE_BOTH: {
        CLIENT: {
            C: {STARTED: PUSH, START_FAILED: END, CANCEL: CAN},
            PUSH: {SEND_COMPLETE: PUSH, RECEIVE_COMPLETE: PUSH, NULL_PUSH: PULL, COMPLETE: COMP, CANCEL: CAN},
            PULL: {RECEIVE_COMPLETE: PULL, NULL_PULL: WCOMP, CANCEL: CAN},
            **_CLIENT_TAIL,
        },
        SERVER: {
            D: {START_PUSH: PUSH, **_SERVER_ENDS},
            PUSH: {SEND_COMPLETE: PUSH, RECEIVE_COMPLETE: PUSH, NULL_PULL: NP, **_SERVER_ENDS},
            NP: {SEND_COMPLETE: NP, **_SERVER_ENDS},   # the in pipe is drained, the out pipe may go on
            **_SERVER_TAIL,
        },
    },
}

KIND_TABLES: Final[Mapping[str, Mapping[str, Mapping[str, Mapping[str, str]]]]] = {UNARY: TABLES, **PIPE_TABLES}
KIND_OF_INITIAL_MOVE: Final[Mapping[str, str]] = {
    **{m: UNARY for m in INITIAL_MOVE.values()},
    **{m: kind for moves in PIPE_INITIAL_MOVE.values() for kind, m in moves.items()},
}
# every state a side may be in, whatever the kind (the checker's first test of an entry)
SIDE_STATES: Final[Mapping[str, frozenset[str]]] = {
    side: frozenset(s for tables in KIND_TABLES.values() for s in tables[side]) for side in SIDES}
# pipe events besides the unary ones
PIPE_EVENTS: Final[Mapping[str, frozenset[str]]] = {CLIENT: frozenset({HEADERS, PIPE_BREACH}),
                                                    SERVER: frozenset({PIPE_BREACH})}

# Client states in which a pipe call's call-complete notification reaches the caller: WComp as
# for unary calls, and Push (the server ended the call while the caller was still pushing).
PIPE_NOTIFIABLE: Final = frozenset({WCOMP, PUSH})


def table_for(side: str, kind: str = UNARY) -> Mapping[str, Mapping[str, str]]:
    """The table one side of a call of `kind` follows; KeyError names an unknown kind."""
    return KIND_TABLES[kind][side]


def kind_of_initial_move(move: object) -> str | None:
    """The call kind an initial entry's move names (None when it names none we know)."""
    return KIND_OF_INITIAL_MOVE.get(move) if isinstance(move, str) else None


def pipe_notifiable(state: str) -> bool:
    return state in PIPE_NOTIFIABLE


def breach_missing(code: object, breach_logged: bool) -> bool:
    """Pipe rule: a pipe call that ended with RPC_X_PIPE_DISCIPLINE_ERROR (1917) has a logged
    breach on one side; True when it ended 1917 and neither side logged one."""
    return code == codes.RPC_X_PIPE_DISCIPLINE_ERROR and not breach_logged
