"""When a server handler that polls for cancels sees one (RpcServerTestCancel), without I/O.

A manager routine learns of a cancel only by asking the runtime (RpcServerTestCancel); real
handlers ask in a loop while they work, so they keep working for a while after the cancel
arrived. A handler with poll interval N asks at its poll instants, dispatch + k*N (k >= 1),
and once more at its outcome point; a cancel that reached the call between two instants is
seen at the next one, never before. With N = 0 the handler sees a cancel as it arrives.

The adapter (the server's call) tells `CancelPoll` when a cancel arrives and when it asks,
with its own monotonic clock, and only waits: the rule of what is seen when lives here.
docs/model.md, "Servers that poll for cancels".
"""

from __future__ import annotations

import math
from typing import Final

# A poll instant counts as reached within this much of it: a loop timer may fire a hair early.
_EPSILON: Final = 1e-6


class CancelPoll:
    """One call's cancel test: the cancels that arrived and are not seen yet, and its poll instants."""

    __slots__ = ("interval", "dispatched", "_next", "_pending")

    def __init__(self, interval: float, dispatched: float) -> None:
        """`interval` in seconds (> 0); `dispatched`: the handler's start on the caller's clock."""
        if not interval > 0:
            raise ValueError(f"a poll interval must be > 0 seconds, got {interval!r}")
        self.interval, self.dispatched = interval, dispatched
        self._next = dispatched + interval
        self._pending: list[tuple[str, float]] = []   # (cancel kind, arrival), oldest first

    @property
    def pending(self) -> bool:
        """A cancel arrived that the handler has not seen yet."""
        return bool(self._pending)

    def arrive(self, kind: str, now: float) -> None:
        """A cancel of `kind` reached the call at `now`; the handler sees it at its next poll."""
        self._pending.append((kind, now))

    def next_poll(self) -> float:
        """The next instant the handler asks (on the caller's clock)."""
        return self._next

    def until_next(self, now: float) -> float:
        """Seconds from `now` to the next poll instant (0 when it is due)."""
        return max(0.0, self._next - now)

    def test(self, now: float, at_outcome: bool = False) -> list[tuple[str, float]]:
        """The handler asks at `now`: the cancels it sees, as (kind, seconds since arrival).

        A poll sees the cancels that arrived by its instant (the latest one at or before `now`),
        even when the handler wakes late for it, and never one that arrived after: that one
        waits for the next instant. Asking between instants sees nothing, except at the outcome
        point, which sees everything that arrived. Past instants move on to the first one after
        `now`, so a late wake-up does not bunch polls together.
        """
        cutoff = now if at_outcome else None
        if now + _EPSILON >= self._next:
            k = math.floor((now + _EPSILON - self.dispatched) / self.interval)
            instant = self.dispatched + self.interval * k
            self._next = instant + self.interval
            cutoff = now if at_outcome else instant
        if cutoff is None or not self._pending:
            return []
        seen = [(kind, max(0.0, now - arrived)) for kind, arrived in self._pending if arrived <= cutoff + _EPSILON]
        self._pending = [p for p in self._pending if p[1] > cutoff + _EPSILON]
        return seen


def poll_interval(script_ms: int | None, default_ms: int) -> float:
    """The poll interval in seconds of a call whose script says `script_ms` (None: it says
    nothing, the server's default applies); 0 = the handler sees cancels as they arrive."""
    ms = default_ms if script_ms is None else script_ms
    return ms / 1000 if ms > 0 else 0.0
