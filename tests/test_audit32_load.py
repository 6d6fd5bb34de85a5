"""Audit 32 of the load-testing paths (`callstate load`, the Locust user's host): each test here
failed before its fix. In-process where that proves the point; `callstate load` runs as a
subprocess against a real `callstate serve` where the command's own output is the point."""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from callstate.v1 import callstate_pb2 as pb
from tests.conftest import cli

pytestmark = pytest.mark.timeout(60)


# -- calls/s of a slow run ----------------------------------------------------------------------

def _slow_report(calls: int, seconds: float) -> dict:
    from callstate.cli.load.run import LoadConfig, LoadRun

    run = LoadRun(LoadConfig(verify=False))
    run.finished = calls
    return run.report(seconds, pb.Counters(), None)


@pytest.mark.parametrize("calls, seconds, shown", [(4, 8.02, "0.5"), (2, 100.0, "0.02"), (3, 2.0, "1.5")])
def test_a_slow_runs_calls_per_second_is_not_rounded_away(calls: int, seconds: float, shown: str) -> None:
    # `--duration 1 --delay 8 --concurrency 4`: "4 calls in 8.02 s: 0 calls/s" (and 0.0 in the
    # JSON report for 2 calls in 100 s, a slow --rate): a run that made calls said it made none
    from callstate.cli.load.run import summary

    report = _slow_report(calls, seconds)
    assert report["calls_per_s"] == pytest.approx(calls / seconds, rel=0.01)
    first = summary(report).splitlines()[0]
    assert re.match(rf"{calls} calls in {seconds:.2f} s: {re.escape(shown)} calls/s", first), first


def test_a_fast_runs_calls_per_second_stays_whole() -> None:
    from callstate.cli.load.run import summary

    report = _slow_report(4594, 1.0)
    assert report["calls_per_s"] == 4594.0
    assert summary(report).startswith("4594 calls in 1.00 s: 4594 calls/s")


def test_the_html_reports_calls_per_second_of_a_slow_run_is_not_rounded_away() -> None:
    # its card read "0 calls/s over 8.02 s" for 4 calls
    from callstate.cli.load.run import LoadConfig, LoadRun
    from callstate.cli.report import html_report

    run = LoadRun(LoadConfig(verify=False, collect_report=True))
    run.finished = 4
    page = html_report.render(run.html_report(run.report(8.02, pb.Counters(), None)))
    assert "<b>0.5</b>calls/s over 8.02 s" in page


# -- a target given as a URL ---------------------------------------------------------------------

@pytest.mark.parametrize("target", ["https://127.0.0.1:50051", "http://127.0.0.1:50051", "grpc://h:1", "HTTPS://h"])
def test_a_target_whose_scheme_grpc_cannot_resolve_is_refused_naming_the_scheme(target: str) -> None:
    from callstate.arg_types import grpc_target

    scheme = target.split("://")[0]
    with pytest.raises(argparse.ArgumentTypeError, match=rf"gRPC has no {scheme}:// targets: give HOST:PORT"):
        grpc_target(target)
    for uri in ("dns:///127.0.0.1:50051", "unix:///tmp/s.sock", "ipv4://1.2.3.4:5", "xds:///svc"):
        assert grpc_target(uri) == uri


def test_load_with_an_https_target_is_one_usage_line_at_once(refused_target: str) -> None:
    # it waited 5 s and said "cannot reach a callstate server at https://...: is it up?" of a
    # server that was up: gRPC looked up the whole URL as a host name. Refused before any
    # connection is tried: the one line is argparse's ("error: argument --target:", exit 2),
    # printed while the command line is parsed, before the run starts (no clock: a bound of 4 s
    # failed at 6.4 s under a load average of 20, the interpreter's start alone)
    run = cli("load", "--target", f"https://{refused_target}", "--calls", "1", "--progress", "never", timeout=30)
    assert run.returncode == 2, run.stderr
    assert run.stderr.strip().splitlines() == [
        f"callstate load: error: argument --target: 'https://{refused_target}': gRPC has no https:// targets: give "
        f"HOST:PORT, here {refused_target} (TLS is an option of its own, not a scheme) (see callstate load --help)"]


@pytest.mark.skipif(importlib.util.find_spec("locust") is None, reason="needs Locust (pip install 'callstate[locust]')")
def test_locust_with_an_https_host_is_a_usage_error_not_a_run_of_failures(tmp_path: Path, refused_target: str) -> None:
    # every call failed as 1722 (errors resolving https://...): thousands of failures a second
    # and exit status 1, where a --host callstate load would refuse is a usage error
    (tmp_path / "locustfile.py").write_text("from callstate.locust import CallstateUser\n")
    run = subprocess.run([sys.executable, "-m", "locust", "-f", "locustfile.py", "--headless", "-u", "1", "-r", "1",
                          "-t", "3s", "--host", f"https://{refused_target}"], cwd=tmp_path, capture_output=True,
                         text=True, timeout=60, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert run.returncode == 2, run.stderr[-2000:]
    assert run.stderr.strip().splitlines()[-1].endswith(   # the prog is `__main__.py` under python -m
        f"error: argument --host: 'https://{refused_target}': gRPC has no https:// targets: give HOST:PORT, "
        f"here {refused_target} (TLS is an option of its own, not a scheme)")
    assert "Traceback" not in run.stderr
    assert not list(tmp_path.glob("callstate-client-*.jsonl"))   # no call was made


# -- a --duration run whose calls outlast it ------------------------------------------------------

def _load_signalled_once_said(tmp_path: Path, args: list[str], said: str) -> tuple[int, str, str, str]:
    """`callstate load` with `args` against a server of its own, sent SIGINT once its stderr holds
    `said`: (exit status, stdout, stderr when signalled, stderr at the end)."""
    import signal

    from tests.conftest import EVIDENCE_WAIT, start_server, wait_for_text

    srv = start_server(tmp_path)
    err = tmp_path / "load.err"
    try:
        with open(err, "wb") as stderr:
            proc = subprocess.Popen([sys.executable, "-m", "callstate", "load", "--target", srv.target, *args,
                                     "--progress", "never"], stdout=subprocess.PIPE, stderr=stderr, text=True)
        try:
            before = wait_for_text(err, said, proc)
            proc.send_signal(signal.SIGINT)
            out, _ = proc.communicate(timeout=EVIDENCE_WAIT)   # not the calls' hold, nor --settle's wait
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    finally:
        srv.stop()
    return proc.returncode, out, before, err.read_text()


def test_a_duration_run_whose_calls_outlast_it_says_so_and_one_sigint_cuts_them(tmp_path: Path) -> None:
    # `--duration 0.5` with calls held for 20 s ran 20 s without a word (a stalled server's
    # calls: until keepalive gave up), and its first Ctrl-C only said it would wait for them
    status, out, before, err = _load_signalled_once_said(
        tmp_path, ["--duration", "0.5", "--concurrency", "3", "--mix", "hold=100", "--hold-for", "20", "--cancel", "none"],
        "is up")
    assert before.splitlines()[:1] == [
        "callstate load: --duration 0.5 s is up: starting no more calls; waiting for the 3 calls still in "
        "flight to end (SIGINT or SIGTERM cancels them)"], before
    assert status == 130, (out, err)
    assert "callstate load: SIGINT: cancelling the 3 calls in flight" in err
    assert re.match(r"3 calls in [\d.]+ s: [\d.]+ calls/s \(stopped early: SIGINT\)", out), out
    assert "paths: cancel-at-stop 3, hold 3" in out and "check: OK" in out, out

# -- the live view's last frame and the summary ----------------------------------------------------

class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _tailed_run() -> "object":
    """200 calls: 187 end within the first second, the 13 held ones at 7.99 s (`--duration 1
    --rate 200 --mix complete=90,hold=10 --hold-for 7`): the summary says 25 calls/s."""
    from callstate.cli.live.stats import LiveStats
    from callstate.lifecycle import CLIENT

    clock = _Clock()
    stats = LiveStats(CLIENT, clock=clock, owner_counts_cancels=True)
    stats.restart()
    for i in range(187):
        clock.now = 100.0 + i / 200
        stats.ended(0)
    clock.now = 107.99
    for _ in range(13):
        stats.ended(1818)
    stats.freeze(7.99)
    clock.now = 108.5   # the wait for the server's last entries: the frame stays at the run's end
    return stats


def test_the_live_views_last_line_gives_the_whole_runs_calls_per_second_as_the_summary_does() -> None:
    # it gave the last 5 s: "8.0s  200 calls  4/s" beside the summary's "200 calls in 7.99 s: 25 calls/s"
    from callstate.cli.load.run import summary

    stats = _tailed_run()
    line = stats.plain_line()
    assert re.match(r"\s*8\.0s  200 calls  25/s  in flight 0  \| 0 RPC_S_OK 187 \(23/s\), "
                    r"1818 RPC_S_CALL_CANCELLED 13 \(1\.6/s\)", line), line
    report = _slow_report(200, 7.99)
    assert summary(report).startswith("200 calls in 7.99 s: 25 calls/s")


def test_the_dashboards_last_frame_says_its_rates_are_the_whole_runs() -> None:
    pytest.importorskip("rich")
    from rich.console import Console

    from callstate.cli.live.view import render

    console = Console(width=100, record=True, color_system=None)
    console.print(render(_tailed_run(), "callstate load"))
    text = console.export_text()
    assert "25 calls/s" in text and "calls/s, whole run" in text and "last 5 s" not in text, text


# -- the wait for the server after the run --------------------------------------------------------

def test_the_wait_for_the_server_to_end_the_runs_calls_is_said_and_a_sigint_ends_it(tmp_path: Path) -> None:
    # the client's calls had all ended (abortive cancels the server ignored: it runs them for
    # their --delay): the run sat silent for up to --settle's 15 s after its last call
    status, out, before, err = _load_signalled_once_said(
        tmp_path, ["--calls", "2", "--concurrency", "2", "--mix", "complete=100", "--delay", "20", "--cancel",
                   "abortive=100", "--cancel-at", "after:0.1", "--on-cancel", "ignore=100"], "--settle")
    assert before.splitlines() == [
        "callstate load: every call has ended here, 2 still run on the server: waiting up to 15 s for it to "
        "end them (--settle; SIGINT or SIGTERM ends the wait)"], before
    assert status == 130, (out, err)
    assert out.startswith("2 calls in ") and "(the wait for the server to end them cut short: SIGINT)" in out, out
