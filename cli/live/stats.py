"""What the live views show, counted as entries arrive: calls/s per final code, calls in
flight, and the last few cancels with how fast they travelled.

Pure bookkeeping (no terminal, no I/O), fed by `callstate load` (both sides) and
`callstate watch` (the server's journal); `live.view` draws it.
"""

from __future__ import annotations

import time
from collections import Counter, OrderedDict, deque
from dataclasses import dataclass
from typing import Callable

from callstate import codes
from callstate.lifecycle import CAN, CANCEL_SEEN, CLIENT, D, END, ENTER, SERVER, cancel_kind_of
from callstate.propagation import PropagationTracker

RATE_WINDOW_S = 5.0     # calls/s is measured over the last few seconds, not since the start
RECENT_CANCELS = 6      # rows shown
CANCEL_WINDOW = 2048    # cancels remembered to join a client Can with the server's cancel_seen, which
                        # reaches `load` through the journal stream later, often after the client's End


def rate_text(rate: float) -> str:
    """calls/s as the load's summary, its HTML report and the live view's last frame print it:
    whole from 10/s, two significant digits below (a slow run's 0.5 calls/s is not "0")."""
    return f"{rate:.0f}" if rate >= 10 else f"{rate:.2g}"


@dataclass
class RecentCancel:
    call_id: str
    kind: str
    cancelled_at: float | None = None   # client Can (wall clock)
    seen_at: float | None = None        # server cancel_seen (wall clock)
    ended_at: float | None = None       # End on the side the view counts
    code: int | None = None
    # client Can -> server cancel_seen, for a call in the population `check`, the load report,
    # Prometheus and Locust measure (callstate.propagation); None for one outside it
    propagation_ms: float | None = None

    @property
    def to_end_ms(self) -> float | None:
        """From the first sign of the cancel to the call's End."""
        first = self.cancelled_at if self.cancelled_at is not None else self.seen_at
        if first is None or self.ended_at is None:
            return None
        return (self.ended_at - first) * 1000


class LiveStats:
    """Counts for a live view. `side` is the side whose End counts a call as finished
    (the client for a load run, the server for `watch`)."""

    def __init__(self, side: str, *, total: int | None = None, duration: float | None = None,
                 clock: Callable[[], float] = time.monotonic, owner_counts_cancels: bool = False) -> None:
        self.side = side
        self.total, self.duration = total, duration
        self.clock = clock
        self.t0 = clock()
        self._frozen: float | None = None   # the clock's reading at the run's end, once it ended
        # the owner sets `cancels` itself (the load: per call, as its paths line counts them),
        # rather than one count per Can entry (an escalation or the load's own end of a held call)
        self._count_client_cancels = not owner_counts_cancels
        self.by_code: Counter[int] = Counter()
        self._window: deque[tuple[float, int]] = deque()   # (when, code) of recent ends
        self.in_flight = 0           # set by the owner (the load's own count, or the server's counters)
        self.cancels: Counter[str] = Counter()
        self.recent: OrderedDict[str, RecentCancel] = OrderedDict()
        self._propagation = PropagationTracker(keep=4 * CANCEL_WINDOW)
        self.skipped = 0

    # -- feeding ---------------------------------------------------------------------------
    def entry(self, side: str, call_id: str, state: str, event: str, t: float, code: int | None = None,
              cancel: str | None = None, detail: str | None = None) -> None:
        """One state-log entry (fields as in the log; `t` is its wall-clock time)."""
        if event == ENTER:
            if side == CLIENT and state == CAN:
                kind = cancel_kind_of(cancel, detail) or "?"
                self._cancel(call_id, kind, count=self.side == CLIENT and self._count_client_cancels).cancelled_at = t
                self._propagation.client_cancelled(call_id, t, kind)
            elif side == SERVER and state == D:
                self._propagation.server_dispatched(call_id, t)
            elif state == END:
                if side == self.side:
                    self.ended(code if isinstance(code, int) else -1)
                rc = self.recent.get(call_id)
                if rc is not None and side == self.side:
                    rc.ended_at, rc.code = t, code
                if side == SERVER:
                    self._propagation.server_ended(call_id)
        elif event == CANCEL_SEEN and side == SERVER:
            rc = self._cancel(call_id, cancel_kind_of(cancel, detail) or "?", count=self.side == SERVER)
            rc.seen_at = rc.seen_at or t
            if (found := self._propagation.server_saw_cancel(call_id, t)) is not None:
                rc.propagation_ms = found.ms

    def ended(self, code: int) -> None:
        now = self.clock()
        self.by_code[code] += 1
        self._window.append((now, code))

    def _cancel(self, call_id: str, kind: str, count: bool) -> RecentCancel:
        rc = self.recent.get(call_id)
        if rc is None:
            rc = self.recent[call_id] = RecentCancel(call_id, kind)
            while len(self.recent) > CANCEL_WINDOW:
                self.recent.popitem(last=False)
        if count:
            self.cancels[kind] += 1
        return rc

    def restart(self) -> None:
        """The run starts now: its time and calls/s count from here (not from the connecting)."""
        self.t0 = self.clock()
        self._frozen = None

    def freeze(self, elapsed: float) -> None:
        """The run ended `elapsed` seconds after `restart` (as its summary measured it): later
        frames show that time and the calls/s up to then, as the summary does, however long
        the wait for the server's last entries."""
        self._frozen = self.t0 + elapsed

    # -- reading ---------------------------------------------------------------------------
    def _now(self) -> float:
        return self.clock() if self._frozen is None else self._frozen

    @property
    def elapsed(self) -> float:
        return self._now() - self.t0

    @property
    def finished(self) -> int:
        return sum(self.by_code.values())

    @property
    def frozen(self) -> bool:
        """The run has ended (`freeze`): its rates are the whole run's, as the summary gives them,
        and what is left to show is the server's late entries."""
        return self._frozen is not None

    def rate_text(self, rate: float) -> str:
        """A rate as a frame shows it: whole numbers while the run goes; once it ended, as the
        summary prints the whole run's (0.5, not 0)."""
        return rate_text(rate) if self.frozen else f"{rate:.0f}"

    def rates(self) -> dict[int, float]:
        """Calls/s per final code over the last RATE_WINDOW_S seconds (or since the start); once
        the run ended, over the whole run, as its summary counts them (a long run's last frame
        gave its last 5 s: 4/s beside the summary's 25 calls/s after a tail of held calls)."""
        now = self._now()
        if self.frozen:
            return {code: n / max(now - self.t0, 1e-3) for code, n in sorted(self.by_code.items())}
        while self._window and self._window[0][0] < now - RATE_WINDOW_S:
            self._window.popleft()
        span = min(RATE_WINDOW_S, max(now - self.t0, 1e-3))
        counts = Counter(code for _t, code in self._window)
        return {code: counts.get(code, 0) / span for code in sorted(self.by_code)}

    def recent_cancels(self, n: int = RECENT_CANCELS) -> list[RecentCancel]:
        """The last `n` cancelled calls that have ended, newest first."""
        out = []
        for rc in reversed(self.recent.values()):
            if rc.ended_at is not None:
                out.append(rc)
                if len(out) == n:
                    break
        return out

    def plain_line(self) -> str:
        """One line for logs and pipes (no cursor movement, no colour)."""
        rates = self.rates()
        head = f"{self.elapsed:6.1f}s  {self.finished}" + (f"/{self.total}" if self.total else "") + " calls"
        head += f"  {self.rate_text(sum(rates.values()))}/s  in flight {self.in_flight}"
        if self.skipped:
            head += f"  skipped {self.skipped}"
        by_code = ", ".join(f"{codes.describe(c)} {n} ({self.rate_text(rates.get(c, 0))}/s)" for c, n in sorted(self.by_code.items()))
        cancels = ", ".join(f"{k} {n}" for k, n in sorted(self.cancels.items()))
        line = head + (f"  | {by_code}" if by_code else "") + (f"  | cancels {cancels}" if cancels else "")
        last = next((rc for rc in self.recent_cancels() if rc.propagation_ms is not None), None)
        if last is not None:
            line += f" (last propagated in {last.propagation_ms:.2f} ms)"
        return line
