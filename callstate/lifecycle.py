"""The two MS-RPC asynchronous call lifecycles, as data.

Everything that decides which state a call may enter lives in this module, and
the module does not know who is asking: the client library, the server's
handlers and `callstate check` all read the same tables, so the two sides of a
call cannot be judged by different rules (the h11 approach).

The tables are side -> state -> move -> next state. A move missing from the
table is illegal, and `next_state` says which side, which state and which move.
"""

from __future__ import annotations

from typing import Final, Literal, Mapping

Side = Literal["client", "server"]
SIDES: Final[tuple[Side, ...]] = ("client", "server")

END: Final = "End"

# RPC_ASYNC_STATE on the caller's side (reference: "Asynchronous Call State").
CLIENT_TABLE: Final[Mapping[str, Mapping[str, str]]] = {
    "C": {
        "started": "WComp",       # the call went out; a notification will follow
        "start_failed": END,      # making the call raised: nothing to complete
        "cancel": "Can",          # the caller cancels at once
    },
    "Can": {
        "cancel_issued": "WComp",  # RpcAsyncCancelCall returned; still wait and complete
    },
    "WComp": {
        "complete": "Comp",       # notification received, the caller completes
        "cancel": "Can",          # cancel is legal any time before completion
    },
    "Comp": {
        "completed": END,         # RpcAsyncCompleteCall returned its final code
    },
    END: {},
}

# The manager routine's side.
SERVER_TABLE: Final[Mapping[str, Mapping[str, str]]] = {
    "D": {
        "complete": "Comp",       # process the call, then RpcAsyncCompleteCall
        "abort": "A",             # fail gracefully: RpcAsyncAbortCall(code)
        "fatal": END,             # fail fatally: raise on the RPC thread
    },
    "A": {
        "aborted": END,
    },
    "Comp": {
        "completed": END,
    },
    END: {},
}

TABLES: Final[Mapping[Side, Mapping[str, Mapping[str, str]]]] = {
    "client": CLIENT_TABLE,
    "server": SERVER_TABLE,
}
INITIAL: Final[Mapping[Side, str]] = {"client": "C", "server": "D"}

# Events that a side may record without changing state (SPEC §2: a cancel seen
# by the server changes no state; the client records the notification).
EVENTS: Final[Mapping[Side, frozenset[str]]] = {
    "client": frozenset({"complete_pending", "cancel_sent", "cancel_escalated"}),
    "server": frozenset({"cancel_seen"}),
}


class LifecycleError(Exception):
    """An illegal move: names the side, the state and the move."""

    def __init__(self, side: str, state: str | None, move: str, detail: str = "") -> None:
        self.side, self.state, self.move = side, state, move
        legal = sorted(TABLES[side][state]) if side in TABLES and state in TABLES[side] else []
        msg = f"{side} lifecycle: move {move!r} is illegal in state {state!r}"
        msg += f" (legal: {', '.join(legal)})" if legal else " (no move leaves it)" if state == END else ""
        super().__init__(msg + (f": {detail}" if detail else ""))


def next_state(side: Side, state: str, move: str) -> str:
    """The state `move` leads to from `state`, or LifecycleError."""
    try:
        return TABLES[side][state][move]
    except KeyError:
        raise LifecycleError(side, state, move) from None


def move_to_end(side: Side, state: str) -> str | None:
    """The move that leads straight from `state` to End, if there is one.

    Adapters use it to close a call that failed unexpectedly, so even a bug
    ends the call by a legal move (an exception in D is the fatal path).
    """
    return next((m for m, target in TABLES[side][state].items() if target == END), None)


def initial_move(side: Side) -> str:
    """The pseudo-move that enters the initial state (logged with prev=None)."""
    return "call" if side == "client" else "dispatch"


def is_legal(side: Side, prev: str | None, move: str, state: str) -> bool:
    """Whether entering `state` from `prev` by `move` follows the table."""
    if prev is None:
        return state == INITIAL[side] and move == initial_move(side)
    return TABLES.get(side, {}).get(prev, {}).get(move) == state


class Lifecycle:
    """One call's position in one side's table, with the states it went through.

    Pure bookkeeping: no I/O, no clock. Adapters call `move()` and write the
    returned (prev, state) pair to the state log.
    """

    __slots__ = ("side", "state", "history", "_table")

    def __init__(self, side: Side, keep_history: bool = True) -> None:
        self.side: Side = side
        self._table = TABLES[side]
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


def mermaid(side: Side) -> str:
    """A Mermaid state diagram drawn from the table (the README embeds these)."""
    lines = ["stateDiagram-v2", f"    [*] --> {INITIAL[side]}"]
    for state, moves in TABLES[side].items():
        for move, target in moves.items():
            lines.append(f"    {state} --> {target}: {move}")
    lines.append(f"    {END} --> [*]")
    return "\n".join(lines)
