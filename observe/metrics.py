"""Prometheus metrics from state entries, served on /metrics by prometheus-client.

The hot path keeps plain counts: `SideMetrics.observe` does a few dict increments per entry
(and, on End, one bisect into a histogram's bucket list), with no lock, no label lookup and
no string formatting; `_Collector` turns the counts into metric families only when /metrics
is scraped. So the server keeps its calls/s with metrics on (`benchmarks/run.py metrics`).
Observers run on one thread (the event loop of the server or of `callstate load`); the
scrape, on prometheus-client's HTTP thread, only copies dicts (atomic under the GIL).
"""

from __future__ import annotations

import asyncio
import bisect
import hmac
import resource
import socket
from typing import Any, Iterator

from callstate.observe import ObserveError

try:
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest, start_http_server
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
    from prometheus_client.metrics_core import Metric
    from prometheus_client.registry import Collector
except ImportError as exc:   # pragma: no cover - exercised by installs without the extra
    raise ObserveError("metrics need the prometheus-client library: pip install 'callstate[metrics]'") from exc

from callstate import codes
from callstate.lifecycle import CAN, END, ENTER, EVENTS, PIPE_EVENTS
from callstate.propagation import PropagationTracker
from callstate.statelog import Entry
from callstate.wire import bearer_credentials

# Calls last from well under a millisecond to a held call's 30 s; a cancel travels in
# tens of microseconds on loopback and seconds on a sick network.
DURATION_BUCKETS = (.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60)
CANCEL_BUCKETS = (.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5)

# every event a side may record, so the HELP names each value the `event` label takes
EVENTS_HELP = "Events recorded without a state change ({})".format(", ".join(sorted(
    {e for table in (EVENTS, PIPE_EVENTS) for events in table.values() for e in events})))

# each Can / cancel_seen entry counts, so a call whose non-abortive cancel was escalated counts
# under both kinds; the calls cancelled, by their first cancel's kind, are cancel_to_end's count
CANCELS_HELP = ("Cancels by kind, each one: issued by the client (Can), seen by the server (cancel_seen); an "
                "escalated cancel counts again as abortive. Calls cancelled, by their first cancel's kind: "
                "callstate_cancel_to_end_seconds_count")


class Histogram:
    """Bucket counts (not cumulative; the last one is +Inf) and the sum of observations."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1   # le: value <= bound
        self.sum += value

    def buckets(self) -> list[tuple[str, int]]:
        counts, total, out = list(self.counts), 0, []
        for bound, n in zip(self.bounds + (float("inf"),), counts):
            total += n
            out.append(("+Inf" if bound == float("inf") else repr(float(bound)), total))
        return out


class SideMetrics:
    """The entry observer of one side (`observe(entry)`), and its counts."""

    __slots__ = ("side", "in_flight", "states", "events", "cancels", "calls", "duration", "cancel_to_end",
                 "_started", "_cancelled")

    def __init__(self, side: str) -> None:
        self.side = side
        self.in_flight = 0
        self.states: dict[str, int] = {}
        self.events: dict[str, int] = {}
        self.cancels: dict[str, int] = {}
        self.calls: dict[int | None, int] = {}                # final code -> calls
        self.duration: dict[int | None, Histogram] = {}        # final code -> first state to End
        self.cancel_to_end: dict[str, Histogram] = {}          # kind -> first cancel to End
        self._started: dict[str, float] = {}                   # call id -> first entry's time
        self._cancelled: dict[str, tuple[float, str]] = {}     # call id -> (first cancel's time, kind)

    def observe(self, e: Entry) -> None:
        if e.event == ENTER:
            states = self.states
            states[e.state] = states.get(e.state, 0) + 1
            if e.prev is None:
                self._started[e.call_id] = e.t
                self.in_flight += 1
            elif e.state == END:
                self._ended(e)
        else:
            events = self.events
            events[e.event] = events.get(e.event, 0) + 1
        if e.cancel is not None:
            self._cancel(e)

    def _cancel(self, e: Entry) -> None:
        kind = e.cancel
        assert kind is not None
        self.cancels[kind] = self.cancels.get(kind, 0) + 1
        if e.call_id in self._started and e.call_id not in self._cancelled:
            self._cancelled[e.call_id] = (e.t, kind)

    def _ended(self, e: Entry) -> None:
        code = e.code
        if code not in self.calls and len(self.calls) >= codes.MAX_DISTINCT_CODES:
            code = codes.OTHER_CODE   # label sets stay bounded: /metrics stays small to scrape
        self.calls[code] = self.calls.get(code, 0) + 1
        self.in_flight -= 1
        t0 = self._started.pop(e.call_id, None)
        if t0 is not None:
            hist = self.duration.get(code)
            if hist is None:
                hist = self.duration[code] = Histogram(DURATION_BUCKETS)
            hist.observe(e.t - t0)
        cancelled = self._cancelled.pop(e.call_id, None)
        if cancelled is not None:
            t, kind = cancelled
            hist = self.cancel_to_end.get(kind)
            if hist is None:
                hist = self.cancel_to_end[kind] = Histogram(CANCEL_BUCKETS)
            hist.observe(e.t - t)


class CancelPropagation:
    """Client Can -> server cancel_seen, where one process sees both (the load generator), for
    the calls `callstate.propagation` counts (the population `check` and the load report use);
    calls whose handler polls for cancels are observed apart (`polled_by_kind`).

    `client(entry)` observes the client's entries; `server(entry)` the server's, as its journal
    streams them (`callstate.v1.StateEntry`)."""

    def __init__(self, keep: int = 100_000) -> None:
        self.by_kind: dict[str, Histogram] = {}
        self.polled_by_kind: dict[str, Histogram] = {}
        self._tracker = PropagationTracker(keep)

    def client(self, e: Entry) -> None:
        if e.state == CAN and e.event == ENTER:
            self._tracker.client_cancelled(e.call_id, e.t, e.cancel or "")

    def server(self, e: Any) -> None:
        found = self._tracker.server(e)
        if found is None:
            return
        hists = self.polled_by_kind if found.polled else self.by_kind
        hist = hists.get(found.kind)
        if hist is None:
            hist = hists[found.kind] = Histogram(CANCEL_BUCKETS)
        hist.observe(found.ms / 1000)


def _code_label(code: int | None) -> tuple[str, str]:
    if code == codes.OTHER_CODE:
        return "other", codes.OTHER_CODE_NAME
    return ("none", "") if code is None else (str(code), codes.name(code))


class Metrics:
    """One registry with callstate's metric families, rendered from the observers' counts at scrape time."""

    def __init__(self, journal: Any = None) -> None:
        self.registry = CollectorRegistry()
        self.sides: list[SideMetrics] = []
        self.propagation: CancelPropagation | None = None
        self.registry.register(_Collector(self))
        if journal is not None:
            self.registry.register(JournalCollector(journal))

    def side(self, side: str) -> SideMetrics:
        observer = SideMetrics(side)
        self.sides.append(observer)
        return observer

    def cancel_propagation(self) -> CancelPropagation:
        self.propagation = CancelPropagation()
        return self.propagation


class _Collector(Collector):
    def __init__(self, metrics: Metrics) -> None:
        self._m = metrics

    def collect(self) -> Iterator[Metric]:
        calls = CounterMetricFamily("callstate_calls", "Calls that reached End, by side and final MS-RPC code",
                                    labels=("side", "code", "name"))
        in_flight = GaugeMetricFamily("callstate_calls_in_flight", "Calls entered and not yet at End",
                                      labels=("side",))
        states = CounterMetricFamily("callstate_state_entries", "States entered, by side and state",
                                     labels=("side", "state"))
        events = CounterMetricFamily("callstate_events", EVENTS_HELP, labels=("side", "event"))
        cancels = CounterMetricFamily("callstate_cancels", CANCELS_HELP, labels=("side", "kind"))
        duration = HistogramMetricFamily("callstate_call_duration_seconds", "Call latency: first state to End, "
                                         "by side and final code", labels=("side", "code"))
        to_end = HistogramMetricFamily("callstate_cancel_to_end_seconds", "From a side's first cancel (client "
                                       "Can, server cancel_seen) to its End", labels=("side", "kind"))
        for s in self._m.sides:
            in_flight.add_metric((s.side,), s.in_flight)
            for code, n in dict(s.calls).items():
                calls.add_metric((s.side, *_code_label(code)), n)
            for state, n in dict(s.states).items():
                states.add_metric((s.side, state), n)
            for event, n in dict(s.events).items():
                events.add_metric((s.side, event), n)
            for kind, n in dict(s.cancels).items():
                cancels.add_metric((s.side, kind), n)
            for code, hist in dict(s.duration).items():
                duration.add_metric((s.side, _code_label(code)[0]), hist.buckets(), hist.sum)
            for kind, hist in dict(s.cancel_to_end).items():
                to_end.add_metric((s.side, kind), hist.buckets(), hist.sum)
        yield from (calls, in_flight, states, events, cancels, duration, to_end)
        if self._m.propagation is not None:
            yield from _propagation_families(self._m.propagation)


def _propagation_families(propagation: CancelPropagation) -> Iterator[Metric]:
    prop = HistogramMetricFamily("callstate_cancel_propagation_seconds", "Client Can -> server cancel_seen, "
                                 "calls the server had dispatched (measured by `callstate load`, which sees both "
                                 "sides)", labels=("kind",))
    polled = HistogramMetricFamily("callstate_cancel_propagation_polled_seconds", "The same for calls whose "
                                   "handler polls for cancels (cancel_poll_ms): it includes the wait for the poll",
                                   labels=("kind",))
    for family, hists in ((prop, propagation.by_kind), (polled, propagation.polled_by_kind)):
        for kind, hist in dict(hists).items():
            family.add_metric((kind,), hist.buckets(), hist.sum)
    yield from (prop, polled)


class JournalCollector(Collector):
    """The server journal's own counters, read at scrape time."""

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


def connection_cap(requested: int) -> int:
    """At most an eighth of the process's file descriptors for /metrics connections (as many again
    may be accepted in one burst before the excess is closed): idle or stuck scrapers must not take
    the sockets the gRPC server needs to accept calls (a soft limit of 1024, a common default, was
    all used up by 1024 idle scrapers and calls could not connect)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return requested if soft == resource.RLIM_INFINITY else max(1, min(requested, soft // 8))


class AsyncMetricsEndpoint:
    """/metrics served on the running event loop (the server's own): no thread per connection,
    a connection that sends no complete request within `idle_timeout` seconds is closed, at most
    `max_connections` at once, and with `token` a scrape must carry `Authorization: Bearer <token>`
    (401 otherwise). One request per connection (`Connection: close`), which Prometheus handles."""

    def __init__(self, registry: CollectorRegistry, bind: str, port: int, token: str | None = None,
                 idle_timeout: float = 10.0, max_connections: int = 1024) -> None:
        try:
            self._sock = socket.create_server((bind, port), family=socket.AF_INET6 if ":" in bind else socket.AF_INET)
        except OSError as exc:   # create_server appends the address the line already names
            why = (exc.strerror or str(exc)).split(" (while attempting to bind")[0]
            raise ObserveError(f"cannot serve /metrics on {bind}:{port}: {why}") from None
        self._sock.setblocking(False)
        self.registry, self.bind, self.port = registry, bind, self._sock.getsockname()[1]
        self._expected = token.encode() if token else None
        self.idle_timeout, self.max_connections = idle_timeout, connection_cap(max_connections)
        self.connections: set[asyncio.StreamWriter] = set()
        self._server: asyncio.AbstractServer | None = None
        self._starting = asyncio.get_running_loop().create_task(self._start())

    async def _start(self) -> None:
        # backlog is also how many connections asyncio accepts in one go: at most the cap
        self._server = await asyncio.start_server(self._serve, sock=self._sock, limit=16 * 1024,
                                                  backlog=min(100, self.max_connections))

    @property
    def url(self) -> str:
        host = f"[{self.bind}]" if ":" in self.bind else self.bind
        return f"http://{host}:{self.port}/metrics"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self.connections) >= self.max_connections:
            writer.close()
            return
        self.connections.add(writer)
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), self.idle_timeout)
            status, body, extra = self._answer(head)
            # a HEAD is answered with the headers GET would get, its Content-Length too, and no body
            sent = b"" if head.startswith(b"HEAD ") else body
            writer.write(f"HTTP/1.1 {status}\r\nContent-Length: {len(body)}\r\nConnection: close\r\n{extra}"
                         "\r\n".encode() + sent)
            await asyncio.wait_for(writer.drain(), self.idle_timeout)
        except (asyncio.TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass   # idle, cut short or too large: closed without an answer
        finally:
            self.connections.discard(writer)
            writer.close()

    def _answer(self, head: bytes) -> tuple[str, bytes, str]:
        lines = head.split(b"\r\n")
        parts = lines[0].split()
        if len(parts) != 3 or parts[0] not in (b"GET", b"HEAD"):
            return "405 Method Not Allowed", b"", "Allow: GET\r\n"
        if parts[1].split(b"?")[0] not in (b"/", b"/metrics"):
            return "404 Not Found", b"", ""
        if self._expected is not None:
            given = next((bearer_credentials(line.split(b":", 1)[1]) for line in lines[1:]
                          if line.lower().startswith(b"authorization:")), b"")
            if not given or not hmac.compare_digest(given, self._expected):
                return "401 Unauthorized", b"this endpoint needs Authorization: Bearer <--metrics-token>\n", \
                    'WWW-Authenticate: Bearer realm="callstate"\r\n'
        body = generate_latest(self.registry)
        return "200 OK", body, f"Content-Type: {CONTENT_TYPE_LATEST}\r\n"

    def close(self) -> None:
        if self._server is not None:
            self._server.close()
        else:
            self._starting.cancel()
        self._sock.close()
        for writer in list(self.connections):
            writer.close()
