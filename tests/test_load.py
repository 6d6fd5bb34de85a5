"""`callstate load`: small, bounded runs against a real server process."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from callstate.logfile import check_files
from tests.conftest import ServerProcess, cli, read_entries

ALL_PATHS = {"complete", "abort", "fatal", "hold", "cancel-abortive", "cancel-non-abortive", "cancel-at-before-start",
             "cancel-at-after-start", "cancel-at-random", "cancel-at-held"}


def test_closed_loop_run_covers_every_path_and_checks_both_sides(server: ServerProcess, tmp_path: Path) -> None:
    report_path, log = tmp_path / "report.json", tmp_path / "client.jsonl"
    result = cli("load", "--target", server.target, "--calls", "800", "--concurrency", "16", "--seed", "7",
                 "--report", str(report_path), "--log-file", str(log), timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(report_path.read_text())
    assert report["calls"] == 800 and report["check"]["ok"] and report["check"]["violations"] == 0
    assert ALL_PATHS <= set(report["paths"]), report["paths"]
    assert {"0", "1726", "1818", "4242"} <= set(report["by_code"])
    assert sum(report["by_code"].values()) == 800
    assert report["server"]["in_flight_after"] == 0
    assert report["cancel_propagation_ms"]["count"] > 0
    assert report["latency_ms"]["0"]["p50"] <= report["latency_ms"]["0"]["p99"] <= report["latency_ms"]["0"]["max"]
    assert "check: OK" in result.stdout and "calls/s" in result.stdout
    # the terminal's latency and the HTML report's are measured differently: the summary says which
    assert "latency: the client's clock, start() to complete()" in result.stdout
    # the same verdict from the two log files, through `callstate check` (once the server's
    # writer thread has flushed its last batch)
    deadline = time.monotonic() + 20
    while not (offline := check_files([log, server.log])).ok and time.monotonic() < deadline:
        time.sleep(0.1)
    assert offline.ok, offline.summary()
    assert len({e["call_id"] for e in read_entries(log) if e["state"] == "End"}) == 800


def test_open_loop_by_duration(server: ServerProcess, tmp_path: Path) -> None:
    # A rate a loaded machine still keeps (the loop catches up when it falls behind): 40 a second
    # for a second, never more, and short only by what a stall at the very end could cost.
    result = cli("load", "--target", server.target, "--duration", "1", "--rate", "40", "--channels", "2",
                 "--cancel", "abortive=50", "--json", timeout=60)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert 30 <= report["calls"] <= 41 and report["check"]["ok"], report["calls"]
    assert report["config"]["rate"] == 40 and report["config"]["concurrency"] is None


def test_a_server_killed_mid_run_fails_the_check(tmp_path: Path) -> None:
    from tests.conftest import start_server
    srv = start_server(tmp_path, "--max-hold", "20")
    proc = subprocess.Popen([sys.executable, "-m", "callstate", "load", "--target", srv.target, "--duration", "20",
                             "--concurrency", "8", "--mix", "hold=100", "--cancel", "abortive=100",
                             "--cancel-at", "after:0.5", "--settle", "2"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 20
        while len(read_entries(srv.log)) < 50 and time.monotonic() < deadline:   # the run is under way
            time.sleep(0.1)
        srv.proc.kill()   # SIGKILL: no End for the calls it held, no counters after the run
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
        srv.proc.kill()
    assert proc.returncode == 1, out + err
    assert "FAILED" in out and ("server_lost" in out or "not_ended" in out)


def test_a_shared_server_judges_only_this_runs_calls(server: ServerProcess) -> None:
    """Another client's call in flight before the run is not this run's leak, nor a reason to wait."""
    holder = subprocess.Popen([sys.executable, "-m", "callstate", "call", "--target", server.target,
                               "--outcome", "hold"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_in_flight(server.target, 1)
        t0 = time.monotonic()
        result = cli("load", "--target", server.target, "--calls", "200", "--settle", "90", timeout=120)
        assert result.returncode == 0, result.stdout + result.stderr
        assert time.monotonic() - t0 < 60   # did not wait out --settle for the other client's call
        assert "the server was shared: 1 call in flight before the run" in result.stdout
    finally:
        holder.kill()


def wait_in_flight(target: str, want: int, timeout: float = 20) -> None:
    import grpc

    from callstate.v1 import callstate_pb2 as pb
    from callstate.v1 import callstate_pb2_grpc as pb_grpc
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(target) as channel:
        stub = pb_grpc.JournalStub(channel)
        while stub.GetCounters(pb.CountersRequest(), timeout=5).in_flight != want:
            assert time.monotonic() < deadline, f"server never had {want} calls in flight"
            time.sleep(0.05)


def test_open_loop_never_exceeds_its_bounds(server: ServerProcess) -> None:
    result = cli("load", "--target", server.target, "--calls", "150", "--rate", "100000", "--json", timeout=60)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["calls"] + report["skipped"] == 150 and report["server"]["dispatched"] <= 150
    result = cli("load", "--target", server.target, "--calls", "300", "--rate", "100000", "--max-in-flight", "10",
                 "--mix", "hold=100", "--cancel", "none", "--hold-for", "0.05", "--json", timeout=60)
    report = json.loads(result.stdout)
    assert report["calls"] + report["skipped"] == 300 and report["skipped"] > 0 and report["calls"] >= 10


@pytest.mark.parametrize("sig, status", [(signal.SIGTERM, 0), (signal.SIGINT, 130)])
def test_a_signal_stops_the_run_gracefully_and_loses_no_entry(server: ServerProcess, tmp_path: Path,
                                                              sig: signal.Signals, status: int) -> None:
    """SIGTERM (a container stopping) is an orderly end judged by the check; Ctrl-C exits 130,
    as an interrupted command does. Either way the report and every call's End are written."""
    log, report_path = tmp_path / "client.jsonl", tmp_path / "report.json"
    proc = subprocess.Popen([sys.executable, "-m", "callstate", "load", "--target", server.target, "--duration", "60",
                             "--concurrency", "8", "--log-file", str(log), "--report", str(report_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 20
    while len(read_entries(server.log)) < 100 and time.monotonic() < deadline:   # the run is under way
        time.sleep(0.1)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == status, out + err
    report = json.loads(report_path.read_text())
    assert report["interrupted"] == sig.name and report["calls"] > 0 and report["check"]["ok"]
    entries = read_entries(log)
    ended = {e["call_id"] for e in entries if e["state"] == "End"}
    assert len(ended) == report["calls"] == len({e["call_id"] for e in entries})   # every call's End is in the file


def test_bad_input_is_a_clear_usage_error(refused_target: str) -> None:
    for args, needle in [(["--cancel", "abortive=80,non-abortive=30"], "more than 100%"),
                         (["--cancel-at", "sometime"], "cancel point 'sometime'"),
                         (["--mix", "complete=1,explode=2"], "unknown name 'explode'"),
                         (["--concurrency", "0"], "must be >= 1"),
                         (["--calls", "5", "--duration", "1"], "not allowed with"),
                         (["--pipes", "in=10", "--pipe-cancel-at", "after-sent:9", "--pipe-messages", "3"],
                          "--pipe-cancel-at after-sent:9 is never reached with --pipe-messages 3")]:
        result = cli("load", "--target", refused_target, *args)   # not the default port, someone's maybe
        assert result.returncode == 2 and needle in result.stderr, (args, result.stderr)
    result = cli("load", "--target", refused_target, "--calls", "1", timeout=30)
    assert result.returncode == 2 and "cannot reach" in result.stderr
    for flag in ("--report", "--log-file"):   # refused before the run, not after it
        result = cli("load", "--target", refused_target, flag, "/nonexistent-dir/x", timeout=30)
        assert result.returncode == 2 and "/nonexistent-dir/x" in result.stderr and "Traceback" not in result.stderr
    result = cli("call", "--target", refused_target, "--log-file", "/nonexistent-dir/x", timeout=30)
    assert result.returncode == 2 and "/nonexistent-dir/x" in result.stderr and "Traceback" not in result.stderr


def test_thousands_in_flight_are_spread_over_channels_the_server_takes_them_on(tmp_path: Path) -> None:
    """A server refuses calls over its --max-concurrent-streams (4096) on one connection (HTTP/2
    REFUSED_STREAM, 1722 at the caller): 6,000 held at once on one channel lost about 1,600 that
    way. By default `load` opens one channel per 2,000 calls it can have in flight."""
    from callstate.cli.load.run import channels_for
    from tests.conftest import start_server

    assert [channels_for(c, None, 10_000) for c in (1, 32, 2_000, 2_001, 6_000)] == [1, 1, 1, 2, 3]
    assert [channels_for(32, r, 10_000) for r in (1.0, 66.0, 100.0, 1_000.0)] == [1, 1, 2, 5]
    assert channels_for(32, 1_000.0, 100) == 1
    srv = start_server(tmp_path)
    try:
        result = cli("load", "--target", srv.target, "--calls", "6000", "--concurrency", "6000", "--mix", "hold=100",
                     "--hold-for", "2", "--cancel", "none", "--json", timeout=240)
    finally:
        srv.stop()
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr
    report = json.loads(result.stdout)
    assert report["config"]["channels"] == 3
    assert report["by_code"] == {"1818": 6000}, report["by_code"]
