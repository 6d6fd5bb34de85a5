"""Cancel propagation: which calls count, and the figure: one definition for `callstate check`,
the load report, the live view, Prometheus and Locust, so that they measure the same population.

A call counts when its client cancelled it (its first `Can`) after the server had dispatched it
(the server's first state, at or before that Can), and the server then saw the cancel (its first
`cancel_seen`). A cancel racing the dispatch would measure the dispatch, and a cancel the server
never saw has no arrival: neither counts. The figure is the server's first `cancel_seen` minus the
client's first `Can`, in milliseconds (across hosts it includes their clocks' difference).

A server whose handler polls for cancels (`cancel_poll_ms` > 0) logs on that `cancel_seen` how
long the cancel waited for the poll (`delay_ms`): such a call's figure includes that wait, so it
is reported apart (`polled`), with the wait beside it.

`cancel_propagation` is the pure rule; `PropagationTracker` applies it to entries arriving one
by one (a client's own log and the server's journal stream), in bounded memory.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass
from typing import Any

from callstate.lifecycle import CANCEL_SEEN, END, ENTER
from callstate.statelog import parse_ts


def figures_text(prop: dict[str, Any]) -> str:
    """The summary line of the calls that count (`percentiles` of their figures), as `callstate
    check` and the load report print it."""
    return (f"cancel propagation (client Can -> server cancel_seen, calls already dispatched): n={prop['count']} "
            f"p50={prop['p50']:.3f} ms p99={prop['p99']:.3f} ms max={prop['max']:.3f} ms")


def polled_text(polled: dict[str, Any], wait: dict[str, Any]) -> str:
    """The summary line of the polled calls' figures and, of them, the wait for the poll."""
    return (f"cancel propagation to polling handlers (client Can -> the poll that saw it): n={polled['count']} "
            f"p50={polled['p50']:.3f} ms p99={polled['p99']:.3f} ms max={polled['max']:.3f} ms; "
            f"of it waiting for the poll: p50={wait['p50']:.3f} ms max={wait['max']:.3f} ms")


@dataclass(frozen=True)
class Propagation:
    ms: float                          # client Can -> server cancel_seen
    poll_wait_ms: float | None = None  # a polling handler: of it, the wait for the poll
    kind: str = ""                     # the client's cancel kind (abortive, non-abortive), when known

    @property
    def polled(self) -> bool:
        return self.poll_wait_ms is not None


def cancel_propagation(cancelled: float | None, dispatched: float | None, seen: float | None,
                       poll_wait_ms: float | None = None, kind: str = "") -> Propagation | None:
    """The call's propagation, or None when it is not in the population. Times in seconds:
    the client's first Can, the server's first state, the server's first cancel_seen."""
    if cancelled is None or dispatched is None or seen is None or dispatched > cancelled:
        return None
    return Propagation((seen - cancelled) * 1000, poll_wait_ms, kind)


class PropagationTracker:
    """`cancel_propagation` over entries that arrive one at a time. Each side's first time is
    kept until the call's server End (or forgotten oldest first beyond `keep`: calls the server
    never saw, other processes' calls)."""

    def __init__(self, keep: int = 100_000) -> None:
        self._keep = keep
        self._cancelled: collections.OrderedDict[str, tuple[float, str]] = collections.OrderedDict()
        self._dispatched: collections.OrderedDict[str, float] = collections.OrderedDict()
        self._done: set[str] = set()   # already measured (only the first cancel_seen counts)

    def client_cancelled(self, call_id: str, t: float, kind: str = "") -> None:
        """The client entered Can (only the first one counts)."""
        _first(self._cancelled, call_id, (t, kind), self._keep)

    def server_dispatched(self, call_id: str, t: float) -> None:
        """The server's first state of the call."""
        _first(self._dispatched, call_id, t, self._keep)

    def server_saw_cancel(self, call_id: str, t: float, poll_wait_ms: float | None = None) -> Propagation | None:
        """A server cancel_seen: the call's figure the first time, when the call counts."""
        if call_id in self._done:
            return None
        cancelled, kind = self._cancelled.get(call_id, (None, ""))
        found = cancel_propagation(cancelled, self._dispatched.get(call_id), t, poll_wait_ms, kind)
        self._done.add(call_id)
        if len(self._done) > self._keep:
            self._done.clear()
        return found

    def server_ended(self, call_id: str) -> None:
        self._cancelled.pop(call_id, None)
        self._dispatched.pop(call_id, None)
        self._done.discard(call_id)

    def server(self, e: Any) -> Propagation | None:
        """A server entry as the journal streams it (a `callstate.v1.StateEntry`): its dispatch,
        its End, or its cancel_seen (the call's figure, the first time, when the call counts)."""
        if e.event == CANCEL_SEEN:
            return self.server_saw_cancel(e.call_id, parse_ts(e.ts), e.delay_ms if e.HasField("delay_ms") else None)
        if e.event == ENTER and not e.prev:
            self.server_dispatched(e.call_id, parse_ts(e.ts))
        elif e.event == ENTER and e.state == END:
            self.server_ended(e.call_id)
        return None


def _first(times: collections.OrderedDict[str, Any], call_id: str, t: Any, keep: int) -> None:
    if call_id not in times:
        times[call_id] = t
        if len(times) > keep:
            times.popitem(last=False)
