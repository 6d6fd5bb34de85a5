"""Audit 32 of what callstate tells an operator: `watch` over replicas on its dashboard, the load's
verdict when the server is lost, what `report` and `check --json` say about a damaged log, and the
journal commands against a server that does not answer. Real servers on loopback where the point
is a process's behaviour; in-process otherwise."""

from __future__ import annotations

import asyncio
import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson

from tests.conftest import EVIDENCE_WAIT, cli, start_server, wait_for_text


# -- watch's dashboard over replicas: one lost, the others still followed --------------------------
def test_the_watch_dashboard_goes_on_when_a_replica_is_killed(tmp_path: Path) -> None:
    """`watch --target A --target B` on a terminal draws the dashboard; with one replica killed the
    whole watch ended there (exit 1, the survivor no longer followed), although its help says a
    target lost mid-watch "is said at once and the others are still followed". Entry lines did
    so; the dashboard (here its plain lines, `--dashboard always`) now does too."""
    one, two = start_server(tmp_path, name="one"), start_server(tmp_path, name="two")
    out, err = tmp_path / "watch.out", tmp_path / "watch.err"
    proc = subprocess.Popen([sys.executable, "-m", "callstate", "watch", "--target", one.target, "--target",
                             two.target, "--dashboard", "always"], stdout=open(out, "wb"), stderr=open(err, "wb"),
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        wait_for_text(err, "watching", proc)
        two.stop(signal.SIGKILL)
        wait_for_text(err, f"callstate watch: {two.target}: UNAVAILABLE: the connection was lost while watching", proc)
        made = cli("call", "--target", one.target)
        assert made.returncode == 0, made.stderr
        wait_for_text(out, " 1 calls ", proc)   # the survivor's call, counted on the dashboard
        proc.send_signal(signal.SIGINT)
        assert proc.wait(EVIDENCE_WAIT) == 1   # a target was lost
        assert len(err.read_text().splitlines()) == 2, err.read_text()   # "watching", the lost one once
    finally:
        if proc.poll() is None:
            proc.kill()
        one.stop()
        two.stop()


def test_the_dashboards_in_flight_is_the_sum_of_the_replicas_that_answer() -> None:
    """The dashboard's in-flight count asked every replica in turn and kept its old value when
    any one failed: with a replica lost it froze for the rest of the watch."""
    from callstate.cli.live.view import LINES
    from callstate.cli.watch import _Dashboard

    class Answers:
        def __init__(self, in_flight: int | None) -> None:
            self.in_flight = in_flight

        async def GetCounters(self, *_args: object, **_kw: object) -> "Answers":
            if self.in_flight is None:
                raise ConnectionError("lost")
            return self

    async def go() -> int:
        import callstate.cli.watch as watch
        saved, watch.sys.stdout = watch.sys.stdout, io.StringIO()
        try:
            board = _Dashboard([Answers(None), Answers(3), Answers(4)], LINES, "a, b, c")
            deadline = time.monotonic() + EVIDENCE_WAIT
            while board.stats.in_flight != 7 and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            await board.stop()
            return board.stats.in_flight
        finally:
            watch.sys.stdout = saved

    assert asyncio.run(go()) == 7


# -- load: a server lost mid-run does not make calls "unknown to the server" -----------------------
def test_a_lost_server_does_not_make_the_calls_its_stream_did_not_bring_unknown_to_it() -> None:
    """`load` against a server killed (or SIGSTOPped) mid-run said `unknown_to_server: 1 e.g. cf83…:
    client completed with 0` beside `server_lost`: a call the server had completed and logged
    (`callstate check` over its state log found it, OK), whose entries the broken journal stream
    never brought. With the server lost, that is not known: the server_lost line says how many
    such calls the stream did not bring, and no call is named as one the server never had."""
    from callstate.check import Checker
    from tests.test_check import client_ok, server_complete

    entries = server_complete("a") + client_ok("a") + client_ok("b")   # b's server entries never came
    for retire in (False, True):   # the report's checker, and load's (which judges calls as it reads)
        lost = Checker(retire=retire)
        for entry in entries:
            lost.add(entry)
        report = lost.finish(server_lost="the journal stream broke: UNAVAILABLE: Socket closed")
        assert [v.kind for v in report.violations] == ["server_lost"], report.summary()
        assert report.violations[0].message == ("the journal stream broke: UNAVAILABLE: Socket closed; 1 call the "
                                                "client completed with 0 is not in what the server's side brought "
                                                "before (its state log may have it)")
        kept = Checker(retire=retire)   # the near miss: a server still there, the call it never had
        for entry in entries:
            kept.add(entry)
        assert [v.kind for v in kept.finish().violations] == ["unknown_to_server"]


# -- a log cut short: the warning goes where the verdict goes ---------------------------------------
def test_a_log_cut_short_is_said_in_the_report_page_and_in_check_json(tmp_path: Path) -> None:
    """A server log whose writer was killed mid-line is checked up to its cut, with a warning on
    stderr. The HTML report (an artifact passed on) and `check --json` (read by a pipeline) gave
    the verdict without it: 'FAILED: server stopped in A at server.jsonl:5' with nothing saying
    the log itself ends there."""
    from tests.test_check import client_ok, server_abort, server_complete, write

    client = write(tmp_path / "client.jsonl", client_ok("a") + client_ok("b", 77))
    whole = write(tmp_path / "whole.jsonl", server_complete("a") + server_abort("b", 77))
    server = tmp_path / "server.jsonl"
    server.write_bytes(whole.read_bytes()[:-20])   # the last line (b's End) cut short
    warning = ("server.jsonl:6: the last line is cut short (no newline, not JSON): ignored; the 5 lines before it "
               "are checked")

    checked = cli("check", "--json", client.name, server.name, cwd=tmp_path)
    assert checked.returncode == 1 and f"callstate check: warning: {warning}" in checked.stderr, checked.stderr
    assert orjson.loads(checked.stdout)["warnings"] == [warning]

    page = tmp_path / "report.html"
    made = cli("report", client.name, server.name, "--html", str(page), "--json", str(tmp_path / "r.json"),
               cwd=tmp_path)
    assert made.returncode == 1 and f"callstate report: warning: {warning}" in made.stderr, made.stderr
    assert orjson.loads((tmp_path / "r.json").read_bytes())["warnings"] == [warning]
    text = page.read_text()
    assert f"warning: {warning}" in text[text.index('id="check"'):]   # in the check's section, beside its verdict

    whole_run = cli("check", "--json", client.name, whole.name, cwd=tmp_path)   # the near miss: a whole log
    assert orjson.loads(whole_run.stdout)["warnings"] == [] and "warning" not in whole_run.stderr


# -- the journal commands against a server that does not answer -----------------------------------
def test_counters_and_a_call_looked_for_on_a_hung_replica_say_what_was_waited_for(tmp_path: Path) -> None:
    """`watch --counters` (and `--call-id` over replicas) against a server that takes the
    connection and never answers (SIGSTOPped, hung) said `DEADLINE_EXCEEDED: Deadline Exceeded`:
    no word of how long it waited, which wait, or what that means. Here the hung server is a
    socket that listens and never answers."""
    import socket

    with socket.socket() as hung:
        hung.bind(("127.0.0.1", 0))
        hung.listen(16)
        target = f"127.0.0.1:{hung.getsockname()[1]}"
        counters = cli("watch", "--target", target, "--counters", "--timeout", "0.5")
        assert counters.returncode == 1 and "Traceback" not in counters.stderr, counters.stderr
        assert counters.stderr == (f"callstate watch: {target}: no answer within 0.5 s (--timeout): is the server "
                                   "stopped (SIGSTOP), hung or overloaded?\n")
        srv = start_server(tmp_path)
        try:
            looked = cli("watch", "--target", srv.target, "--target", target, "--call-id", "no-such-call",
                         "--timeout", "1")
        finally:
            srv.stop()
        assert looked.returncode == 1, looked.stderr
        assert looked.stderr.splitlines() == [
            f"callstate watch: {target}: no answer within 1 s (--timeout): is the server stopped (SIGSTOP), hung or "
            "overloaded?",
            f"callstate watch: no call 'no-such-call' on {srv.target} (never made there, or ended longer ago than its "
            "journal keeps: --journal-size)"], looked.stderr


def test_a_server_that_answers_no_keepalive_ping_is_not_said_to_refuse_connections() -> None:
    """`watch` (and `health`) against a SIGSTOPped server said only gRPC's `failed to connect to all
    addresses; ... (ping timeout)`: an operator checks the address and the port, while the
    connection was made and the server behind it is stopped. The line now says so."""
    import socket

    with socket.socket() as hung:   # takes the connection (the kernel does), answers nothing
        hung.bind(("127.0.0.1", 0))
        hung.listen(16)
        target = f"127.0.0.1:{hung.getsockname()[1]}"
        run = cli("watch", "--target", target, "--keepalive", "1")   # `health` says it with the same words
        assert run.returncode == 1 and "Traceback" not in run.stderr, run.stderr
        assert "ping timeout" in run.stderr and run.stderr.rstrip().endswith(
            "(the server took the connection but answered nothing, not even keepalive pings, within 1 s "
            "(--keepalive): is it stopped (SIGSTOP) or hung?)"), run.stderr


# -- check: logs of two runs are not judged, even when the client's calls ended 0 ---------------------
def test_logs_of_two_runs_are_not_judged_rather_than_blamed_on_a_missing_replica(tmp_path: Path) -> None:
    """The README: 'a client log and a server log that share no call (two runs' logs) are NOT
    JUDGED'. That held only when no client call ended 0: with a run's usual completes, today's
    client log beside yesterday's server log said `FAILED: 925 violations, unknown_to_server ...
    (behind several replicas: is one replica's log missing?)`, sending the operator after a
    replica. Now NOT JUDGED, as for any two runs' logs; a pair that shares a call is still judged."""
    from callstate.logfile import check_files
    from tests.test_check import client_ok, server_complete, write

    client = write(tmp_path / "client.jsonl", client_ok("a") + client_ok("b") + client_ok("c", 1818))
    other_run = write(tmp_path / "yesterday.jsonl", server_complete("x") + server_complete("y"))
    report = check_files([client, other_run])
    assert report.violations == [] and report.summary().splitlines()[-1] == (
        "NOT JUDGED: the client and server logs share no call (logs of different runs?): the two sides were not "
        "compared"), report.summary()
    assert not report.verdict_ok()

    same_run = write(tmp_path / "server.jsonl", server_complete("a") + server_complete("x"))   # shares a
    judged = check_files([client, same_run])
    assert [(v.kind, v.call_id) for v in judged.violations] == [("unknown_to_server", "b")], judged.summary()


# -- Ctrl-C before every replica answered: name the ones that did not ----------------------------------
def test_ctrl_c_before_a_hung_replica_answered_names_only_that_replica() -> None:
    """`watch --target A --target B` with B SIGSTOPped, then Ctrl-C: it said `stopped before A, B
    answered (not subscribed)`, naming A, which had answered (its stream was merely not over), so
    the operator went after both. Only the targets whose subscription had not come are named."""
    from callstate.cli.watch import _Watch

    answered = []

    class Stream:
        def __init__(self, answers: bool) -> None:
            self.answers = answers

        async def initial_metadata(self) -> tuple[()]:
            if not self.answers:
                await asyncio.Event().wait()   # a stopped server: never
            answered.append(self)
            return ()

        def done(self) -> bool:
            return False   # a stream still open, answered or not

    async def go() -> list[int]:
        stop = asyncio.Event()
        streams = [Stream(True), Stream(False), Stream(True)]
        waiting = asyncio.ensure_future(_Watch._subscribed(streams, stop))
        deadline = time.monotonic() + EVIDENCE_WAIT
        while len(answered) < 2 and time.monotonic() < deadline:   # the ones that answer, answered
            await asyncio.sleep(0.01)
        await asyncio.sleep(0)   # their waits are done
        stop.set()   # Ctrl-C
        return await asyncio.wait_for(waiting, EVIDENCE_WAIT)

    assert asyncio.run(go()) == [1]


# -- the report's calls in flight: the most at once, not a sample at each bucket's end -------------------
def test_the_reports_calls_in_flight_shows_a_burst_between_two_bucket_ends() -> None:
    """The over-time chart drew calls in flight as the count at each bucket's end, titled 'calls in
    flight, peak N': a burst of 1,000 calls held 0.2 s inside one 1-second bucket of a 100 s run
    showed as 'peak 1', a flat line. An operator looking for a pile-up saw none. The line is now the
    most calls in flight at once within each bucket; the JSON keeps the bucket-end count too."""
    from callstate.cli.report.html_report import charts
    from callstate.cli.report.run_report import ReportBuilder
    from callstate.statelog import format_ts

    def call(call_id: str, t0: float, t1: float) -> list[dict[str, object]]:
        return [{"ts": format_ts(t0), "side": "server", "call_id": call_id, "state": "D", "prev": None,
                 "event": "enter", "move": "dispatch"},
                {"ts": format_ts(t1), "side": "server", "call_id": call_id, "state": "Comp", "prev": "D",
                 "event": "enter", "move": "complete"},
                {"ts": format_ts(t1), "side": "server", "call_id": call_id, "state": "End", "prev": "Comp",
                 "event": "enter", "move": "completed", "code": 0, "grpc_status": "OK"}]

    t = 1_780_000_000.0
    builder = ReportBuilder()
    for e in call("long", t, t + 100) + [x for i in range(1000) for x in call(f"burst-{i}", t + 50.5, t + 50.7)]:
        builder.add(e)
    report = builder.build(allow_one_side=True)
    timeline = report["timeline"]
    assert timeline["bucket_s"] == 1 and max(timeline["in_flight"]) == 1   # the count at each bucket's end
    assert max(timeline["in_flight_peak"]) == 1001 and timeline["in_flight_peak"][50] == 1001
    assert timeline["in_flight_peak"][49] == timeline["in_flight_peak"][51] == 1
    assert timeline["in_flight_peak"][-1] == 1   # the long call, until its End in the last bucket
    svg = charts(report)["timeline"]
    assert "calls in flight (most at once in the bucket), peak 1001" in svg


# -- load against a server that takes the connection and answers nothing --------------------------
def test_load_says_a_server_that_took_the_connection_but_answered_nothing_may_be_stopped(
        refused_target: str) -> None:
    """`load` against a SIGSTOPped server said `cannot reach a callstate server at X (no connection
    within 5 s: is it up? if it uses TLS, pass --tls-ca)`: the server is up, and TLS has nothing to
    do with it. A channel still connecting after the wait (the port took the connection, nothing
    answered) now says so; a refused port keeps the old question. The channel states are real."""
    import socket

    import grpc

    from callstate.cli.load.run import unreachable

    async def state_of(target: str, until: grpc.ChannelConnectivity | None = None) -> grpc.ChannelConnectivity:
        """The channel's state 0.5 s after it began to connect (the hung port: still connecting), or
        once it reached `until`: a refused connect fails at once, but a loaded machine's gRPC
        thread may say so after the 0.5 s, and the channel was then still CONNECTING."""
        channel = grpc.aio.insecure_channel(target)
        try:
            await asyncio.wait_for(channel.channel_ready(), 0.5)
        except asyncio.TimeoutError:
            pass
        deadline = time.monotonic() + EVIDENCE_WAIT
        state = channel.get_state()
        while until is not None and state != until and time.monotonic() < deadline:
            try:
                await asyncio.wait_for(channel.wait_for_state_change(state), deadline - time.monotonic())
            except asyncio.TimeoutError:
                pass
            state = channel.get_state()
        await channel.close()
        return state

    with socket.socket() as hung:
        hung.bind(("127.0.0.1", 0))
        hung.listen(16)
        target = f"127.0.0.1:{hung.getsockname()[1]}"
        assert unreachable(target, asyncio.run(state_of(target)), secure=False) == (
            f"cannot reach a callstate server at {target} (still connecting after 5 s: nothing answered; is the "
            "server stopped (SIGSTOP) or hung, or does the address drop what is sent to it (a firewall, a wrong "
            "address)?)")
    refused = asyncio.run(state_of(refused_target, until=grpc.ChannelConnectivity.TRANSIENT_FAILURE))
    assert unreachable(refused_target, refused, secure=False) == (
        f"cannot reach a callstate server at {refused_target} (no connection within 5 s: is it up? if it uses TLS, "
        "pass --tls-ca)")


# -- load --html: a run judged before the server had ended its calls says so on the page -----------------
def test_the_load_page_says_the_wait_for_the_server_was_cut_short() -> None:
    """A signal during the load's wait for the server to end its calls (`--settle`) makes it judge
    the run on what the server had ended by then: the summary says `(the wait for the server to
    end them cut short: SIGTERM)`, but the HTML page (its Run table has 'stopped early') did not,
    and its not_ended violations stood unexplained."""
    from callstate.cli.report.html_report import render
    from callstate.cli.report.run_report import ReportBuilder
    from tests.test_check import client_ok, server_complete

    builder = ReportBuilder()
    for entry in server_complete("a") + client_ok("a"):
        builder.add(entry)
    run = {"target": "127.0.0.1:50051", "config": {"calls": 1}, "calls_per_s": 1.0, "duration_s": 1.0, "skipped": 0,
           "interrupted": "", "settle_cut": "SIGTERM", "check": {"ok": True}}
    page = render(builder.build(run=run))
    assert "the wait for the server to end the calls</th><td>cut short: SIGTERM" in page
    assert "cut short" not in render(ReportBuilder().build(run={**run, "settle_cut": ""}))   # the near miss
