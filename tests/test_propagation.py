"""Cancel propagation is one population and one figure: `callstate check` (and the load report
built on it), Prometheus (`callstate load --metrics-port`) and Locust's statistics entry give the
same figures for the same calls (callstate/propagation.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

from callstate.check import Checker, percentiles
from callstate.lifecycle import (ABORTIVE, CALL, CAN, CANCEL, CANCEL_SEEN, COMP, COMPLETE, COMPLETED, C, CLIENT, D,
                                 DISPATCH, END, ENTER, NON_ABORTIVE, SERVER)
from callstate.propagation import PropagationTracker, cancel_propagation
from callstate.statelog import Entry, to_dict, to_proto

T0 = 1_790_000_000.0   # a time of day in 2026: the log's RFC 3339 form keeps microseconds


def _calls() -> list[Entry]:
    """Both sides of five cancelled calls, in the order they happened."""
    def client(t: float, call_id: str, state: str, prev: str | None, move: str, **kw: Any) -> Entry:
        return Entry(T0 + t, CLIENT, call_id, state, prev, ENTER, move, **kw)

    def server(t: float, call_id: str, state: str, prev: str | None, event: str = ENTER, move: str | None = None,
               **kw: Any) -> Entry:
        return Entry(T0 + t, SERVER, call_id, state, prev, event, move, **kw)

    out = []
    # counted: dispatched at once, cancelled 10 ms later, seen 2 ms after that
    out += [client(1.0, "counted", C, None, CALL), server(1.001, "counted", D, None, move=DISPATCH),
            client(1.010, "counted", CAN, C, CANCEL, cancel=ABORTIVE),
            server(1.012, "counted", D, D, CANCEL_SEEN, cancel=ABORTIVE)]
    # a polling handler: seen 20 ms after the cancel, 15 of them waiting for its poll (reported apart)
    out += [client(2.0, "polled", C, None, CALL), server(2.001, "polled", D, None, move=DISPATCH),
            client(2.010, "polled", CAN, C, CANCEL, cancel=NON_ABORTIVE),
            server(2.030, "polled", D, D, CANCEL_SEEN, cancel=NON_ABORTIVE, delay_ms=15.0)]
    # the cancel raced the dispatch: not counted (it would time the dispatch)
    out += [client(3.0, "raced", C, None, CALL), client(3.001, "raced", CAN, C, CANCEL, cancel=ABORTIVE),
            server(3.002, "raced", D, None, move=DISPATCH), server(3.003, "raced", D, D, CANCEL_SEEN, cancel=ABORTIVE)]
    # the server completed without seeing the cancel: not counted
    out += [client(4.0, "unseen", C, None, CALL), server(4.001, "unseen", D, None, move=DISPATCH),
            client(4.005, "unseen", CAN, C, CANCEL, cancel=ABORTIVE), server(4.006, "unseen", COMP, D, move=COMPLETE),
            server(4.007, "unseen", END, COMP, move=COMPLETED, code=0, grpc_status="OK")]
    # seen twice: the first cancel_seen counts (4 ms)
    out += [client(5.0, "twice", C, None, CALL), server(5.001, "twice", D, None, move=DISPATCH),
            client(5.002, "twice", CAN, C, CANCEL, cancel=ABORTIVE),
            server(5.006, "twice", D, D, CANCEL_SEEN, cancel=ABORTIVE),
            server(5.010, "twice", D, D, CANCEL_SEEN, cancel=ABORTIVE)]
    return out


def _by_checker(entries: list[Entry]) -> dict[str, list[float]]:
    checker = Checker()
    for e in entries:   # as `check` reads them from the two logs
        checker.add(to_dict(e))
    report = checker.finish()
    return {"plain": report.cancel_propagation_ms, "polled": report.cancel_propagation_polled_ms}


def _by_prometheus(entries: list[Entry]) -> dict[str, tuple[int, float]]:
    from callstate.observe.metrics import Metrics

    propagation = Metrics().cancel_propagation()
    for e in entries:   # the client's own entries; the server's as load's journal stream delivers them
        if e.side == CLIENT:
            propagation.client(e)
        else:
            propagation.server(to_proto(e))
    return {name: (sum(sum(h.counts) for h in hists.values()), sum(h.sum for h in hists.values()) * 1000)
            for name, hists in (("plain", propagation.by_kind), ("polled", propagation.polled_by_kind))}


LOCUST_SCRIPT = """
import json, sys
from types import SimpleNamespace
from locust.event import Events
from locust.stats import RequestStats
from callstate.locust.process import PROPAGATION, PROPAGATION_POLLED, REQUEST_TYPE, ProcessState
from callstate.statelog import from_dict, to_proto
env = SimpleNamespace(events=Events(), stats=RequestStats())
state = ProcessState(env, None, True)
for d in json.load(sys.stdin):
    e = from_dict(d)
    if e.side == "client":
        state.sink.append(e)
    else:
        state.server_entry(to_proto(e))
out = {}
for key, name in (("plain", PROPAGATION), ("polled", PROPAGATION_POLLED)):
    entry = env.stats.entries.get((name, REQUEST_TYPE))
    out[key] = [entry.num_requests, entry.total_response_time] if entry is not None else [0, 0.0]
print(json.dumps(out))
"""


def _by_locust(entries: list[Entry]) -> dict[str, tuple[int, float]]:
    """In a subprocess: importing Locust monkey-patches the process for gevent."""
    run = subprocess.run([sys.executable, "-c", LOCUST_SCRIPT], input=json.dumps([to_dict(e) for e in entries]),
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr[-2000:]
    return {key: (n, total) for key, (n, total) in json.loads(run.stdout).items()}


def test_check_prometheus_and_locust_give_the_same_figures_for_the_same_calls() -> None:
    entries = _calls()
    checked = _by_checker(entries)
    assert checked["plain"] == pytest.approx([2.0, 4.0], abs=0.002)   # counted, twice (first seen)
    assert checked["polled"] == pytest.approx([20.0], abs=0.002)
    want = {key: (len(ms), sum(ms)) for key, ms in checked.items()}
    for name, got in (("prometheus", _by_prometheus(entries)), ("locust", _by_locust(entries))):
        for key in ("plain", "polled"):
            assert got[key][0] == want[key][0], (name, key, got, want)
            assert got[key][1] == pytest.approx(want[key][1], abs=0.005), (name, key, got, want)


def test_the_population_in_one_function() -> None:
    assert cancel_propagation(10.0, 9.0, 10.002) is not None
    assert cancel_propagation(10.0, 10.0, 10.002).ms == pytest.approx(2.0)   # type: ignore[union-attr]
    assert cancel_propagation(10.0, 10.001, 10.002) is None   # dispatched after the cancel
    assert cancel_propagation(10.0, 9.0, None) is None          # never seen
    assert cancel_propagation(None, 9.0, 10.0) is None          # never cancelled
    assert cancel_propagation(10.0, 9.0, 10.03, 15.0).polled    # type: ignore[union-attr]


def test_the_tracker_stays_bounded() -> None:
    tracker = PropagationTracker(keep=100)
    for i in range(1000):   # cancels the server never saw, other processes' dispatches
        tracker.client_cancelled(f"c{i}", float(i))
        tracker.server_dispatched(f"s{i}", float(i))
    assert len(tracker._cancelled) == len(tracker._dispatched) == 100


def test_check_and_the_load_report_print_the_figures_in_one_form() -> None:
    """`callstate check`'s summary and the load report's print the same two lines for the same
    figures (callstate/propagation.py's `figures_text` and `polled_text`), and the load page's
    sample run shows that form; the two commands had each spelt the lines out."""
    import re

    from callstate.cli.load.run import summary
    from callstate.propagation import figures_text, polled_text
    from tests.conftest import ROOT

    checker = Checker()
    for e in _calls():
        checker.add(to_dict(e))
    report = checker.finish()
    plain, polled, wait = (percentiles(report.cancel_propagation_ms), percentiles(report.cancel_propagation_polled_ms),
                           percentiles(report.cancel_poll_wait_ms))
    lines = [figures_text(plain), polled_text(polled, wait)]
    assert lines[0].startswith("cancel propagation (client Can -> server cancel_seen") and "n=2 " in lines[0]
    assert "n=1 " in lines[1] and "of it waiting for the poll: p50=15.000 ms" in lines[1]
    checked = report.summary().splitlines()
    assert all(line in checked for line in lines), checked
    loaded = summary({"calls": 5, "duration_s": 1.0, "calls_per_s": 5.0, "skipped": 0, "interrupted": "",
                      "by_code": {}, "latency_ms": {}, "paths": {}, "cancel_propagation_ms": plain,
                      "cancel_propagation_polled_ms": polled, "cancel_poll_wait_ms": wait,
                      "check": {"skipped": True, "ok": True}, "server": {}}).splitlines()
    assert all(line in loaded for line in lines), loaded
    sample = next(line for line in (ROOT / "docs" / "load.md").read_text().splitlines()
                  if line.startswith("cancel propagation (client"))
    form = re.escape(figures_text({"count": 0, "p50": 0, "p99": 0, "max": 0})).replace("0\\.000", r"\d+\.\d{3}")
    assert re.fullmatch(form.replace("n=0", r"n=\d+"), sample), sample
