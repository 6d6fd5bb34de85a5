"""Observability audit: /metrics and tracing as an operator wires them in, on real `callstate serve`
processes on loopback."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from callstate.lifecycle import END, ENTER
from tests.conftest import cli, start_server
from tests.test_metrics import by, scrape

FD_LIMIT = 256
# the child sets its own limit before exec (no preexec_fn in a process that runs gRPC threads)
LIMITED = ("import os, resource, sys; resource.setrlimit(resource.RLIMIT_NOFILE, ({n}, {n})); "
           "os.execv(sys.executable, [sys.executable, '-m', 'callstate', *sys.argv[1:]])")


def wait_for_text(path: Path, pattern: str, proc: subprocess.Popen[bytes], timeout: float = 30) -> re.Match[str]:
    deadline = time.monotonic() + timeout
    while True:
        found = re.search(pattern, path.read_text() if path.exists() else "")
        if found:
            return found
        assert proc.poll() is None and time.monotonic() < deadline, f"no {pattern!r} in {path.read_text()}"
        time.sleep(0.05)


def test_idle_scrapers_do_not_take_the_sockets_calls_need(tmp_path: Path) -> None:
    """A server with a small descriptor limit and 300 idle /metrics connections (a stuck scraper,
    or anyone who can reach the port) still accepts calls: /metrics holds at most an eighth of the
    limit. Before, it held up to 1024, accept() failed with EMFILE (a traceback on stderr for each
    try) and calls could not connect until the idle connections timed out."""
    err, port_file = tmp_path / "serve.stderr", tmp_path / "serve.port"
    proc = subprocess.Popen(
        [sys.executable, "-c", LIMITED.format(n=FD_LIMIT), "serve", "--port", "0", "--port-file", str(port_file),
         "--log-file", str(tmp_path / "server.jsonl"), "--metrics-port", "0", "--metrics-idle-timeout", "120"],
        stdout=subprocess.DEVNULL, stderr=open(err, "wb"), cwd=tmp_path)
    idle: list[socket.socket] = []
    try:
        url = wait_for_text(err, r"metrics on (http://\S+/metrics)", proc).group(1)
        wait_for_text(err, r"serving ", proc)
        metrics_port = int(url.rsplit(":", 1)[1].split("/")[0])
        for _ in range(300):   # more than the limit: they cannot all be held
            try:
                idle.append(socket.create_connection(("127.0.0.1", metrics_port), timeout=2))
            except OSError:
                break   # the backlog is full: the server stopped accepting
        target = f"127.0.0.1:{port_file.read_text().strip()}"
        result = cli("call", "--target", target, "--outcome", "complete", "--timeout", "20", timeout=60)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "0 RPC_S_OK" in result.stdout + result.stderr
        assert proc.poll() is None
        assert "Too many open files" not in err.read_text() and "Traceback" not in err.read_text()
    finally:
        for s in idle:
            s.close()
        proc.terminate()
        proc.wait(30)


def test_serve_otel_without_a_collector_says_so_once_while_it_serves(tmp_path: Path) -> None:
    """`serve --otel` whose collector is down keeps serving and says so in one line when the first
    export fails, not hours later at its exit; the exit adds no second line and no retry spam."""
    pytest.importorskip("opentelemetry.exporter.otlp.proto.http")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        nobody = s.getsockname()[1]   # closed again: nothing listens there
    env = {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{nobody}",
           "OTEL_BSP_SCHEDULE_DELAY": "100"}
    srv = start_server(tmp_path, "--otel", env=env)
    try:
        first = cli("call", "--target", srv.target, "--outcome", "complete")
        assert first.returncode == 0, first.stderr
        warning = f"callstate serve: warning: OpenTelemetry spans not exported to http://127.0.0.1:{nobody}"
        wait_for_text(srv.stderr, re.escape(warning), srv.proc, timeout=60)
        second = cli("call", "--target", srv.target, "--outcome", "complete")   # still serving
        assert second.returncode == 0 and "0 RPC_S_OK" in second.stdout + second.stderr, second.stderr
    finally:
        assert srv.stop(timeout=30) == 0
    text = srv.stderr.read_text()
    assert text.count("warning: OpenTelemetry") == 1, text
    assert "Traceback" not in text and "Transient error" not in text and "retry" not in text, text


def final_codes(log: Path) -> Counter[str]:
    return Counter(str(e["code"]) for e in map(json.loads, log.read_text().splitlines())
                   if e["state"] == END and e["event"] == ENTER)


def test_metrics_of_both_sides_agree_with_check_over_the_same_run(tmp_path: Path) -> None:
    """300 calls with aborts, fatals, abortive and non-abortive cancels, polled and unpolled
    handlers: each side's /metrics counts the final codes its own log holds, both in-flight
    gauges are back at 0, and the propagation histograms count check's population."""
    srv = start_server(tmp_path, "--metrics-port", "0")
    load_err, client_log = tmp_path / "load.stderr", tmp_path / "client.jsonl"
    load = subprocess.Popen(
        [sys.executable, "-m", "callstate", "load", "--target", srv.target, "--calls", "300", "--concurrency", "8",
         "--mix", "complete=40,abort=30,fatal=10,hold=20", "--cancel", "abortive=30,non-abortive=20",
         "--cancel-poll", "0=50,5=50", "--log-file", str(client_log), "--metrics-port", "0",
         "--metrics-linger", "120", "--progress", "never"],
        stdout=subprocess.DEVNULL, stderr=open(load_err, "wb"), cwd=tmp_path)
    try:
        load_url = wait_for_text(load_err, r"metrics on (http://\S+/metrics)", load).group(1)
        wait_for_text(load_err, r"/metrics stays up", load, timeout=240)   # the run and its check are over
        server_url = wait_for_text(srv.stderr, r"metrics on (http://\S+/metrics)", srv.proc).group(1)
        client, server = scrape(load_url, timeout=10), scrape(server_url, timeout=10)
    finally:
        load.terminate()
        load.wait(30)
        srv.stop()
    assert by(client, "callstate_calls_total", "code") == final_codes(client_log)
    assert by(server, "callstate_calls_total", "code") == final_codes(srv.log)   # the barrier call too
    assert sum(final_codes(client_log).values()) == 300
    assert {"1818", "4242", "1726", "0"} <= set(final_codes(client_log))   # cancels, aborts, fatals all ran
    assert by(client, "callstate_calls_in_flight", "side") == {"client": 0}
    assert by(server, "callstate_calls_in_flight", "side") == {"server": 0}
    checked = cli("check", "--json", str(client_log), str(srv.log))
    report = json.loads(checked.stdout)
    assert report["ok"], checked.stdout
    for family, population in (("callstate_cancel_propagation_seconds_count", "cancel_propagation_ms"),
                               ("callstate_cancel_propagation_polled_seconds_count",
                                "cancel_propagation_polled_ms")):
        counted = sum(by(client, family, "kind").values())
        assert counted == report[population]["count"], (family, counted, report[population])
    assert report["cancel_propagation_ms"]["count"] > 0 and report["cancel_propagation_polled_ms"]["count"] > 0


def test_every_metric_help_names_the_values_its_event_label_takes() -> None:
    """The HELP of callstate_events names every event either side may record (client_closed and
    the pipe events were missing), and every family follows the naming rules: counters end in
    _total, durations are in seconds."""
    from prometheus_client import generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    from callstate.lifecycle import EVENTS, PIPE_EVENTS
    from callstate.observe.metrics import Metrics

    metrics = Metrics()
    metrics.side("server")
    metrics.cancel_propagation()
    families = {f.name: f for f in text_string_to_metric_families(generate_latest(metrics.registry).decode())}
    help_text = families["callstate_events"].documentation
    for table in (EVENTS, PIPE_EVENTS):
        for events in table.values():
            for event in events:
                assert event in help_text, (event, help_text)
    for name, family in families.items():
        assert family.documentation, name
        if family.type == "histogram":
            assert name.endswith("_seconds"), name
    raw = generate_latest(metrics.registry).decode()
    for line in raw.splitlines():
        if line.startswith("# TYPE ") and line.endswith(" counter"):
            assert line.split()[2].endswith("_total"), line


def test_serve_metrics_bind_errors_are_one_plain_line(tmp_path: Path) -> None:
    """A /metrics port in use or an address that is not this host's: one line that names it once
    (socket.create_server's own "(while attempting to bind on address ...)" tail repeated it)."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        in_use = cli("serve", "--port", "0", "--metrics-port", str(port), timeout=30)
    bad_host = cli("serve", "--port", "0", "--metrics-port", "0", "--metrics-bind", "999.1.1.1", timeout=30)
    for result, where in ((in_use, f"127.0.0.1:{port}"), (bad_host, "999.1.1.1:0")):
        assert result.returncode != 0
        [line] = result.stderr.strip().splitlines()
        assert line.startswith(f"callstate serve: cannot serve /metrics on {where}: "), line
        assert "while attempting" not in line and "Traceback" not in line, line
