"""One server-side call: its lifecycle, its cancel signals, and how it waits.

`ServerCall` is the thin adapter between the sans-IO server table and
asyncio: it applies moves, records each state entered, and turns the two ways
a caller can cancel into events the script reacts to:

* abortive cancel (or a disconnect): gRPC cancels the handler's task, so the
  wait raises CancelledError at once;
* the cancel notice (non-abortive): `Emulator.Cancel` resolves the future
  the wait is watching.

Neither polls; both wake the handler within one loop iteration.
"""

from __future__ import annotations

import asyncio
import functools
import time
from typing import Callable

from callstate import codes
from callstate.lifecycle import (ABORTIVE, CANCEL_SEEN, ENTER, INITIAL, INITIAL_MOVE, SERVER, UNARY, Lifecycle,
                                 initial_move, move_to_end)
from callstate.statelog import Entry
from callstate.server.journal import Journal

# Entry(...) without the Python-level __new__ of a NamedTuple: all fifteen fields, in order.
_entry = functools.partial(tuple.__new__, Entry)

_INITIAL, _INITIAL_MOVE = INITIAL[SERVER], INITIAL_MOVE[SERVER]


class ServerCall:
    __slots__ = ("call_id", "lifecycle", "cancel_kind", "rpc_cancelled", "stopping", "cancel_key", "_wake", "_rec",
                 "_journal", "_log", "method", "rule")

    def __init__(self, call_id: str, journal: Journal, log_append: Callable[[Entry], None], outcome: str = "",
                 kind: str = UNARY, deadline_ms: int | None = None, method: str | None = None,
                 rule: str | None = None) -> None:
        self.call_id = call_id
        self.method, self.rule = method, rule   # a stand-in's call: named in each of its entries
        self.lifecycle = Lifecycle(SERVER, keep_history=False, kind=kind)   # the journal keeps the history
        self.cancel_kind: str | None = None   # the first cancel seen: ABORTIVE or NON_ABORTIVE
        self.rpc_cancelled = False            # the gRPC call is gone: no reply can be sent
        self.stopping = False
        self.cancel_key = ""   # the caller's secret: a cancel notice must repeat it (empty: anyone's notice)
        self._wake: asyncio.Future[None] | None = None   # made on the first pause
        self._journal = journal
        self._log = log_append
        self._rec = journal.open(call_id, outcome, deadline_ms, method, rule)
        first = _INITIAL_MOVE if kind == UNARY else initial_move(SERVER, kind)
        self._emit(_entry((time.time(), SERVER, call_id, _INITIAL, None, ENTER, first, None, None, None, None, None, None,
                           method, rule)))

    def _emit(self, e: Entry) -> None:
        self._journal.add(self._rec, e)
        self._log(e)

    @property
    def state(self) -> str:
        return self.lifecycle.state

    def move(self, move: str, code: int | None = None, grpc_status: str | None = None, detail: str | None = None,
             sent: int | None = None, received: int | None = None) -> None:
        prev, state = self.lifecycle.move(move)
        e = _entry((time.time(), SERVER, self.call_id, state, prev, ENTER, move, code, grpc_status, detail, None, sent,
                    received, self.method, self.rule))
        self._journal.add(self._rec, e)   # _emit, inlined on the hot path
        self._log(e)

    def end_on_error(self, exc: BaseException) -> None:
        """Close a call that an unexpected error interrupted, by the legal move to End."""
        while not self.lifecycle.ended:
            move = move_to_end(SERVER, self.state, self.lifecycle.kind)
            assert move is not None, "every server state has a move straight to End"
            self.move(move, codes.RPC_S_CALL_FAILED, codes.grpc_status_for(codes.RPC_S_CALL_FAILED).name,
                      f"handler error: {type(exc).__name__}: {exc}")

    def cancel_seen(self, kind: str) -> None:
        """Record a cancel (no state change: docs/model.md, "Server") and wake a waiting handler."""
        if self.lifecycle.ended:
            return
        if kind == ABORTIVE:
            self.rpc_cancelled = True
        if self.cancel_kind is None:
            self.cancel_kind = kind
        self._emit(Entry(time.time(), SERVER, self.call_id, self.state, self.state, CANCEL_SEEN, cancel=kind,
                         method=self.method, rule=self.rule))
        if self._wake is not None and not self._wake.done():
            self._wake.set_result(None)

    def wake_future(self) -> asyncio.Future[None]:
        """A fresh future that a cancel, the server stopping or `wake()` resolves (pipe handlers
        wait on it for their reader's progress too)."""
        if self._wake is None or self._wake.done():
            self._wake = asyncio.get_running_loop().create_future()
        return self._wake

    def wake(self) -> None:
        if self._wake is not None and not self._wake.done():
            self._wake.set_result(None)

    def stop(self) -> None:
        """The server is stopping: cut any wait short, even one ignoring cancels."""
        self.stopping = True
        if self._wake is not None and not self._wake.done():
            self._wake.set_result(None)

    async def pause(self, seconds: float, ignore_cancels: bool) -> bool:
        """Wait `seconds`; True when a cancel (or the server stopping) cut it short."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while True:
            if self.stopping or (self.cancel_kind is not None and not ignore_cancels):
                return True
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            if self._wake is None or self._wake.done():
                self._wake = loop.create_future()
            try:
                await asyncio.wait((self._wake,), timeout=remaining)
            except asyncio.CancelledError:
                self.cancel_seen(ABORTIVE)
