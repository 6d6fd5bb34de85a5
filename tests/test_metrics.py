"""Prometheus metrics: scrape /metrics of real `callstate serve` and `callstate load` processes and
hold every count to the server's journal (GetCounters) and the client's state log."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from callstate.client import CallError, Client, Script
from callstate.lifecycle import ABORTIVE, CAN, CLIENT, D, END, ENTER, NON_ABORTIVE, SERVER
from callstate.v1 import callstate_pb2 as pb
from callstate.v1 import callstate_pb2_grpc as pb_grpc
from tests.conftest import ServerProcess, cli, read_entries, start_server
from tests.documentation import section

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def wait_for(predicate: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def metrics_url(stderr: Path) -> str:
    found = re.search(r"metrics on (http://\S+/metrics)", stderr.read_text() if stderr.exists() else "")
    return found.group(1) if found else ""


def scrape(url: str, timeout: float = 5) -> Samples:
    text = urllib.request.urlopen(url, timeout=timeout).read().decode()
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def by(samples: Samples, name: str, key: str, **match: str) -> dict[str, float]:
    """The samples of `name` whose labels include `match`, keyed by the label `key`."""
    out: dict[str, float] = {}
    for (n, labels), value in samples.items():
        d = dict(labels)
        if n == name and all(d.get(k) == v for k, v in match.items()):
            out[d[key]] = out.get(d[key], 0) + value
    return out


def one(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def counters(target: str) -> pb.Counters:
    with grpc.insecure_channel(target) as channel:
        return pb_grpc.JournalStub(channel).GetCounters(pb.CountersRequest(), timeout=5)


@pytest.fixture
def metered_server(tmp_path: Path) -> Any:
    srv = start_server(tmp_path, "--max-hold", "20", "--journal-size", "3", "--metrics-port", "0")
    yield srv
    srv.stop()


def test_serve_metrics_count_what_the_journal_counts(metered_server: ServerProcess) -> None:
    srv = metered_server
    url = wait_for(lambda: metrics_url(srv.stderr), 10, "the metrics line on stderr")
    with Client(srv.target) as client:
        # a held call: in flight on the gauge while it waits
        held = client.start(Script("hold", on_cancel="abort"))
        srv.wait_entries(held.call_id, lambda es: any(e["state"] == D for e in es))
        live = scrape(url)
        assert one(live, "callstate_calls_in_flight", side=SERVER) == 1
        held.cancel()   # abortive: the server sees it, ends 1818
        with pytest.raises(CallError):
            held.result(timeout=10)
        codes_seen = []
        for script in [Script("complete")] * 4 + [Script("abort", abort_code=5001)] * 2 + [Script("fatal")]:
            try:
                client.start(script).result(timeout=10)
                codes_seen.append(0)
            except CallError as err:
                codes_seen.append(err.code)
        notice = client.start(Script("hold", on_cancel="complete"))
        srv.wait_entries(notice.call_id, lambda es: any(e["state"] == D for e in es))
        notice.cancel(abortive=False)
        notice.result(timeout=10)   # the server completes: 0
    held_id = held.call_id
    srv.wait_entries(held_id)
    total = 9
    c = wait_for(lambda: (got := counters(srv.target)).ended == total and got.in_flight == 0 and got, 10,
                 "every call ended on the server")
    m = scrape(url)

    expected = {"0": 5, "5001": 2, "1726": 1, "1818": 1}
    assert codes_seen == [0, 0, 0, 0, 5001, 5001, 1726]
    assert by(m, "callstate_calls_total", "code", side=SERVER) == expected
    assert {str(k): v for k, v in c.by_code.items()} == expected
    assert by(m, "callstate_calls_total", "name", side=SERVER)["RPC_S_CALL_CANCELLED"] == 1
    assert by(m, "callstate_state_entries_total", "state", side=SERVER) == dict(c.by_state)
    assert one(m, "callstate_calls_in_flight", side=SERVER) == c.in_flight == 0
    assert by(m, "callstate_events_total", "event", side=SERVER) == {"cancel_seen": c.cancels_seen}
    assert by(m, "callstate_cancels_total", "kind", side=SERVER) == {ABORTIVE: 1, NON_ABORTIVE: 1}
    assert sum(by(m, "callstate_call_duration_seconds_count", "code", side=SERVER).values()) == c.ended
    # the held call lasted as long as its wait: its latency lands above the 1 ms bucket
    assert one(m, "callstate_call_duration_seconds_bucket", side=SERVER, code="1818", le="0.001") == 0
    assert by(m, "callstate_cancel_to_end_seconds_count", "kind", side=SERVER) == {ABORTIVE: 1, NON_ABORTIVE: 1}
    # the journal keeps 3 ended calls and forgets the rest
    assert one(m, "callstate_journal_calls") == c.journal_calls == 3
    assert one(m, "callstate_journal_evicted_total") == total - 3
    assert one(m, "callstate_watch_dropped_total") == c.watch_dropped == 0


def test_load_metrics_count_what_the_client_log_holds(server: ServerProcess, tmp_path: Path) -> None:
    log, report_path, err = tmp_path / "client.jsonl", tmp_path / "report.json", tmp_path / "load.stderr"
    proc = subprocess.Popen(
        [sys.executable, "-m", "callstate", "load", "--target", server.target, "--calls", "200", "--seed", "3",
         "--cancel", "abortive=30,non-abortive=20", "--log-file", str(log), "--report", str(report_path),
         # cancels before the call goes out (never counted for propagation) and of held calls 50 ms
         # after their start (dispatched by then: counted)
         "--cancel-at", "before-start,held:0.05",
         "--metrics-port", "0", "--metrics-linger", "60"],
        stdout=subprocess.DEVNULL, stderr=open(err, "wb"))
    try:
        url = wait_for(lambda: metrics_url(err), 20, "the load's metrics line on stderr")
        report = wait_for(lambda: _json(report_path), 60, "the load report")
        wait_for(lambda: "stays up" in err.read_text(), 10, "the load to finish and linger")
        m = scrape(url)
        entries = read_entries(log)
        ends = Counter(str(e["code"]) for e in entries if e["state"] == END and e["event"] == ENTER)
        cans = Counter(e["cancel"] for e in entries if e["state"] == CAN and e["event"] == ENTER)
        states = Counter(e["state"] for e in entries if e["event"] == ENTER)
        assert by(m, "callstate_calls_total", "code", side=CLIENT) == dict(ends) == report["by_code"]
        assert by(m, "callstate_state_entries_total", "state", side=CLIENT) == dict(states)
        assert by(m, "callstate_cancels_total", "kind", side=CLIENT) == dict(cans)
        assert cans[ABORTIVE] > 0 and cans[NON_ABORTIVE] > 0
        assert one(m, "callstate_calls_in_flight", side=CLIENT) == 0
        assert sum(by(m, "callstate_call_duration_seconds_count", "code", side=CLIENT).values()) == 200
        # Can -> cancel_seen (from the journal stream), for the calls the load report counts: the
        # same population (callstate/propagation.py), not every cancel the server saw
        server_seen = {e["call_id"] for e in server.entries() if e["event"] == "cancel_seen"}
        ours = {e["call_id"] for e in entries if e["state"] == CAN}
        propagated = sum(by(m, "callstate_cancel_propagation_seconds_count", "kind").values())
        assert 0 < propagated == report["cancel_propagation_ms"]["count"] <= len(server_seen & ours)
        assert not by(m, "callstate_cancel_propagation_polled_seconds_count", "kind")   # no handler polls here
        proc.send_signal(signal.SIGTERM)   # ends the linger early
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def test_metrics_port_errors_are_one_line(tmp_path: Path, refused_target: str) -> None:
    import socket
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = str(busy.getsockname()[1])
        result = cli("serve", "--port", "0", "--metrics-port", port, timeout=30)
        assert result.returncode == 1
        assert result.stderr.strip().startswith(f"callstate serve: cannot serve /metrics on 127.0.0.1:{port}")
        assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
        result = cli("load", "--target", refused_target, "--metrics-port", port, timeout=30)
        assert result.returncode == 2 and "cannot serve /metrics" in result.stderr and "Traceback" not in result.stderr
    bad = cli("serve", "--metrics-port", "70000")
    assert bad.returncode == 2 and "--metrics-port" in bad.stderr


def test_readme_table_names_every_metric() -> None:
    """The README's table and the families /metrics serves are the same set of names."""
    from prometheus_client import generate_latest

    from callstate.lifecycle import COMP, COMPLETE, COMPLETED, DISPATCH, CANCEL, CANCEL_SEEN, C, CALL
    from callstate.observe.metrics import Metrics
    from callstate.statelog import Entry, to_proto

    class FakeJournal:
        evicted = watch_dropped = 0

        def __len__(self) -> int:
            return 0

    metrics = Metrics(FakeJournal())
    server, client, propagation = metrics.side(SERVER), metrics.side(CLIENT), metrics.cancel_propagation()
    server_entries = (Entry(1.0, SERVER, "a", D, None, ENTER, DISPATCH),
                      Entry(1.1, SERVER, "a", D, D, CANCEL_SEEN, cancel=ABORTIVE),
                      Entry(1.2, SERVER, "a", COMP, D, ENTER, COMPLETE), Entry(1.3, SERVER, "a", END, COMP, ENTER, COMPLETED, 0))
    for e in server_entries:
        server.observe(e)
    for e in (Entry(1.0, CLIENT, "a", C, None, ENTER, CALL), Entry(1.05, CLIENT, "a", CAN, C, ENTER, CANCEL, cancel=ABORTIVE)):
        client.observe(e)
        propagation.client(e)
    for e in server_entries:   # as load's journal stream delivers them
        propagation.server(to_proto(e))
    served = set()
    for family in text_string_to_metric_families(generate_latest(metrics.registry).decode()):
        served.add(family.name + "_total" if family.type == "counter" else family.name)
    table = section("Prometheus")
    assert set(re.findall(r"^\| `(callstate_\w+)` \|", table, re.M)) == served
    assert one({(s.name, frozenset(s.labels.items())): s.value
                for f in text_string_to_metric_families(generate_latest(metrics.registry).decode())
                for s in f.samples}, "callstate_cancel_propagation_seconds_count", kind=ABORTIVE) == 1


def test_histogram_buckets_match_prometheus_clients_own() -> None:
    """Our lock-free histogram renders the same cumulative buckets as prometheus_client.Histogram
    for the same values, bucket bounds included (le is inclusive)."""
    import random

    from prometheus_client import CollectorRegistry, Histogram as Reference

    from callstate.observe.metrics import DURATION_BUCKETS, Histogram

    rng = random.Random(5)
    values = list(DURATION_BUCKETS) + [0.0, 100.0] + [rng.uniform(0, 70) ** 2 / 70 for _ in range(500)]
    ours, ref = Histogram(DURATION_BUCKETS), Reference("h", "h", buckets=DURATION_BUCKETS, registry=CollectorRegistry())
    for v in values:
        ours.observe(v)
        ref.observe(v)
    theirs = {s.labels["le"]: s.value for s in ref.collect()[0].samples if s.name == "h_bucket"}
    assert {le: float(n) for le, n in ours.buckets()} == theirs
    assert ours.sum == pytest.approx(sum(values))
