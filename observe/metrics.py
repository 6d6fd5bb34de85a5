"""Prometheus metrics from state entries, served on /metrics by prometheus-client.

`SideMetrics(registry_metrics, side).observe` is an entry observer: per entry it does a
dict lookup of a pre-bound label child and an increment (plus a histogram observation on
End), never any string formatting, so the server keeps its calls/s with metrics on
(`benchmarks/run.py metrics`). Families are declared once per registry in `Families`.
"""

from __future__ import annotations

import collections
from typing import Any, Iterator

from callstate.observe import ObserveError

try:
    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
    from prometheus_client.metrics_core import Metric
    from prometheus_client.registry import Collector
except ImportError as exc:   # pragma: no cover - exercised by installs without the extra
    raise ObserveError("metrics need the prometheus-client library: pip install 'callstate[metrics]'") from exc

from callstate import codes
from callstate.lifecycle import END, ENTER
from callstate.statelog import Entry

# Calls last from well under a millisecond to a held call's 30 s; a cancel travels in
# tens of microseconds on loopback and seconds on a sick network.
DURATION_BUCKETS = (.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60)
CANCEL_BUCKETS = (.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5)


class Families:
    """Every callstate metric family, registered once in one registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.calls = Counter("callstate_calls", "Calls that reached End, by side and final MS-RPC code",
                             ("side", "code", "name"), registry=r)
        self.in_flight = Gauge("callstate_calls_in_flight", "Calls entered and not yet at End", ("side",), registry=r)
        self.states = Counter("callstate_state_entries", "States entered, by side and state", ("side", "state"),
                              registry=r)
        self.events = Counter("callstate_events", "Events recorded without a state change (cancel_seen, "
                              "complete_pending, cancel_sent, cancel_escalated)", ("side", "event"), registry=r)
        self.cancels = Counter("callstate_cancels", "Cancels by kind: issued by the client (Can), seen by the "
                               "server (cancel_seen)", ("side", "kind"), registry=r)
        self.duration = Histogram("callstate_call_duration_seconds", "Call latency: first state to End, by side "
                                  "and final code", ("side", "code"), buckets=DURATION_BUCKETS, registry=r)
        self.cancel_to_end = Histogram("callstate_cancel_to_end_seconds", "From a side's first cancel (client Can, "
                                       "server cancel_seen) to its End", ("side", "kind"), buckets=CANCEL_BUCKETS,
                                       registry=r)
        self.propagation = Histogram("callstate_cancel_propagation_seconds", "Client Can -> server cancel_seen "
                                     "(measured by `callstate load`, which sees both sides)", ("kind",),
                                     buckets=CANCEL_BUCKETS, registry=r)


class SideMetrics:
    """The entry observer of one side: `observe(entry)`."""

    __slots__ = ("_f", "side", "_in_flight", "_states", "_events", "_cancels", "_codes", "_to_end", "_started",
                 "_cancelled")

    def __init__(self, families: Families, side: str) -> None:
        self._f, self.side = families, side
        self._in_flight = families.in_flight.labels(side)
        # label children are bound on first use and kept: the hot path never formats a label
        self._states: dict[str, Any] = {}
        self._events: dict[str, Any] = {}
        self._cancels: dict[str, Any] = {}
        self._codes: dict[int | None, tuple[Any, Any]] = {}
        self._to_end: dict[str, Any] = {}
        self._started: dict[str, float] = {}                  # call id -> first entry's time
        self._cancelled: dict[str, tuple[float, str]] = {}    # call id -> (first cancel's time, kind)

    def observe(self, e: Entry) -> None:
        if e.event == ENTER:
            child = self._states.get(e.state)
            if child is None:
                child = self._states[e.state] = self._f.states.labels(self.side, e.state)
            child.inc()
            if e.prev is None:
                self._started[e.call_id] = e.t
                self._in_flight.inc()
            elif e.state == END:
                self._ended(e)
        else:
            child = self._events.get(e.event)
            if child is None:
                child = self._events[e.event] = self._f.events.labels(self.side, e.event)
            child.inc()
        if e.cancel is not None:
            self._cancel(e)

    def _cancel(self, e: Entry) -> None:
        kind = e.cancel
        assert kind is not None
        child = self._cancels.get(kind)
        if child is None:
            child = self._cancels[kind] = self._f.cancels.labels(self.side, kind)
        child.inc()
        if e.call_id in self._started and e.call_id not in self._cancelled:
            self._cancelled[e.call_id] = (e.t, kind)

    def _ended(self, e: Entry) -> None:
        pair = self._codes.get(e.code)
        if pair is None:
            code = "none" if e.code is None else str(e.code)
            name = codes.name(e.code) if e.code is not None else ""
            pair = self._codes[e.code] = (self._f.calls.labels(self.side, code, name),
                                          self._f.duration.labels(self.side, code))
        pair[0].inc()
        self._in_flight.dec()
        t0 = self._started.pop(e.call_id, None)
        if t0 is not None:
            pair[1].observe(e.t - t0)
        cancelled = self._cancelled.pop(e.call_id, None)
        if cancelled is not None:
            t, kind = cancelled
            child = self._to_end.get(kind)
            if child is None:
                child = self._to_end[kind] = self._f.cancel_to_end.labels(self.side, kind)
            child.observe(e.t - t)


class CancelPropagation:
    """Client Can -> server cancel_seen, where one process sees both (the load generator).

    `client(entry)` observes the client's entries; `server_cancel_seen(call_id, t)` is fed
    from the server's journal stream. Cancels the server never sees (cancelled before start,
    or after the call ended there) are forgotten oldest first beyond `keep`."""

    def __init__(self, families: Families, keep: int = 100_000) -> None:
        self._hist = families.propagation
        self._children: dict[str, Any] = {}
        self._pending: collections.OrderedDict[str, tuple[float, str]] = collections.OrderedDict()
        self._keep = keep

    def client(self, e: Entry) -> None:
        if e.cancel is not None and e.call_id not in self._pending:
            self._pending[e.call_id] = (e.t, e.cancel)
            if len(self._pending) > self._keep:
                self._pending.popitem(last=False)

    def server_cancel_seen(self, call_id: str, t: float) -> None:
        pending = self._pending.pop(call_id, None)
        if pending is None:
            return
        t0, kind = pending
        child = self._children.get(kind)
        if child is None:
            child = self._children[kind] = self._hist.labels(kind)
        child.observe(max(0.0, t - t0))


class JournalCollector(Collector):
    """The server journal's own counters, read at scrape time (nothing on the hot path)."""

    def __init__(self, journal: Any) -> None:
        self._journal = journal

    def collect(self) -> Iterator[Metric]:
        j = self._journal
        yield GaugeMetricFamily("callstate_journal_calls", "Calls the server's journal holds (in flight and "
                                "recently ended)", value=len(j))
        yield CounterMetricFamily("callstate_journal_evicted", "Ended calls the bounded journal forgot, oldest "
                                  "first (their history is no longer in GetCall)", value=j.evicted)
        yield CounterMetricFamily("callstate_watch_dropped", "Entries dropped by full Watch/Follow queues "
                                  "(a watcher too slow to keep up)", value=j.watch_dropped)


class MetricsEndpoint:
    """/metrics over HTTP (prometheus-client's server, on its own daemon thread)."""

    def __init__(self, registry: CollectorRegistry, bind: str, port: int) -> None:
        try:
            self._httpd, self._thread = start_http_server(port, bind, registry)
        except OSError as exc:
            raise ObserveError(f"cannot serve /metrics on {bind}:{port}: {exc.strerror or exc}") from None
        self.bind = bind
        self.port: int = self._httpd.server_port

    @property
    def url(self) -> str:
        host = f"[{self.bind}]" if ":" in self.bind else self.bind
        return f"http://{host}:{self.port}/metrics"

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
