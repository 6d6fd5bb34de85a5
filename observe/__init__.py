"""Observers of state entries: Prometheus metrics (`metrics`) and OpenTelemetry spans (`tracing`).

Both sides already record every state they enter as an `Entry`; an observer is any
callable that takes one. The server's and the client's entry sinks fan out to observers
only when some are configured, so with metrics and tracing off the hot path is unchanged.
`prometheus_client` and `opentelemetry` are imported only by the modules that need them
(extras `callstate[metrics]` and `callstate[otel]`).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

from callstate.statelog import Entry

EntryObserver = Callable[[Entry], None]


def fan_out(first: EntryObserver | None, observers: Sequence[EntryObserver]) -> EntryObserver:
    """One append that feeds `first` (the state log; None when it is off) and then each observer."""
    calls = tuple(([first] if first is not None else []) + list(observers))
    if len(calls) == 1:
        return calls[0]

    def append(e: Entry) -> None:
        for call in calls:
            call(e)
    return append


class ObservedLog:
    """A client's entry sink (append / enabled / flush / close) that also feeds observers."""

    enabled = True

    def __init__(self, log: Any, observers: Sequence[EntryObserver]) -> None:
        self.inner = log
        on = log is not None and getattr(log, "enabled", True)
        # the log's append looked up per entry, not kept: a StateLog's is its queue's own while it
        # is on, and nothing once it is closed (a call that ends after its client closed)
        self.append: EntryObserver = fan_out((lambda e: log.append(e)) if on else None, observers)

    def flush(self) -> None:
        if self.inner is not None and hasattr(self.inner, "flush"):
            self.inner.flush()

    def close(self) -> None:
        if self.inner is not None and hasattr(self.inner, "close"):
            self.inner.close()


class ObserveError(RuntimeError):
    """Metrics or tracing cannot be set up (a missing extra, a bad OTEL_* value, a busy port):
    one line naming what is wrong."""
