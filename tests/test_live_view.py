"""The live view of `callstate load` and `callstate watch`: rich's Live dashboard on a terminal
(a real pty), plain lines when not on one."""

from __future__ import annotations

import fcntl
import io
import os
import pty
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from datetime import datetime
from pathlib import Path
from typing import Callable

import orjson
import pytest

from callstate import codes
from callstate.cli.live.stats import RATE_WINDOW_S, LiveStats
from callstate.cli.live.view import LINES, LIVE, MODES, choose, render
from callstate.client import Client, Script
from callstate.lifecycle import ABORTIVE, C, CAN, CANCEL_SEEN, CLIENT, D, END, ENTER, NON_ABORTIVE, SERVER
from callstate.check import check_entries
from callstate.statelog import Entry, to_dict
from tests.conftest import EVIDENCE_WAIT, ServerProcess, cli, complete_lines
from tests.documentation import blocks, section

ESC = "\x1b"
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
SETTLE_NOTICE = "callstate load: every call has ended here, 1 still runs on the server: waiting up to"
PLAIN_LINE = re.compile(r"^\s*\d+\.\d+s  \d+(/\d+)? calls  \d+(\.\d+)?/s  in flight -?\d+")


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def feed_cancelled_call(stats: LiveStats, call_id: str, t: float, kind: str, code: int) -> None:
    stats.entry(CLIENT, call_id, C, ENTER, t)
    stats.entry(SERVER, call_id, D, ENTER, t + 0.001)
    stats.entry(CLIENT, call_id, CAN, ENTER, t + 0.010, cancel=kind)
    stats.entry(SERVER, call_id, D, CANCEL_SEEN, t + 0.0105, cancel=kind)
    stats.entry(CLIENT, call_id, END, ENTER, t + 0.012, code=code)


def test_stats_count_rates_over_the_window_and_join_each_cancel_across_sides() -> None:
    clock = Clock()
    stats = LiveStats(CLIENT, total=100, clock=clock)
    for i in range(10):
        stats.entry(CLIENT, f"ok{i}", END, ENTER, 1.0, code=codes.RPC_S_OK)
    clock.now += RATE_WINDOW_S + 1    # those ten leave the rate window, not the totals
    for i in range(4):
        stats.entry(CLIENT, f"ok-late{i}", END, ENTER, 2.0, code=codes.RPC_S_OK)
    feed_cancelled_call(stats, "cancelled-1", 3.0, ABORTIVE, codes.RPC_S_CALL_CANCELLED)
    stats.in_flight = 7
    assert stats.by_code == {codes.RPC_S_OK: 14, codes.RPC_S_CALL_CANCELLED: 1}
    assert stats.rates() == {codes.RPC_S_OK: 4 / RATE_WINDOW_S, codes.RPC_S_CALL_CANCELLED: 1 / RATE_WINDOW_S}
    [recent] = stats.recent_cancels()
    assert recent.kind == ABORTIVE and recent.code == codes.RPC_S_CALL_CANCELLED
    assert round(recent.propagation_ms, 3) == 0.5 and round(recent.to_end_ms, 3) == 2.0
    assert stats.cancels == {ABORTIVE: 1}
    line = stats.plain_line()
    assert PLAIN_LINE.match(line) and "15/100 calls" in line and "in flight 7" in line and ESC not in line
    assert "1818 RPC_S_CALL_CANCELLED 1" in line and "last propagated in 0.50 ms" in line


def test_a_cancel_that_raced_the_dispatch_shows_no_propagation_as_check_counts_none() -> None:
    # the population of callstate.propagation: the client's Can after the server's dispatch
    stats = LiveStats(CLIENT, clock=Clock())
    stats.entry(CLIENT, "raced", C, ENTER, 1.0)
    stats.entry(CLIENT, "raced", CAN, ENTER, 1.001, cancel=ABORTIVE)
    stats.entry(SERVER, "raced", D, ENTER, 1.002)        # dispatched after the cancel
    stats.entry(SERVER, "raced", D, CANCEL_SEEN, 1.003, cancel=ABORTIVE)
    stats.entry(CLIENT, "raced", END, ENTER, 1.004, code=codes.RPC_S_CALL_CANCELLED)
    feed_cancelled_call(stats, "counted", 2.0, ABORTIVE, codes.RPC_S_CALL_CANCELLED)
    counted, raced = stats.recent_cancels()
    assert raced.call_id == "raced" and raced.propagation_ms is None and raced.to_end_ms is not None
    assert counted.call_id == "counted" and round(counted.propagation_ms, 3) == 0.5
    entries = [Entry(1.0, CLIENT, "raced", C, None, ENTER, "call"),
               Entry(1.001, CLIENT, "raced", CAN, C, ENTER, "cancel", cancel=ABORTIVE),
               Entry(1.002, SERVER, "raced", D, None, ENTER, "dispatch"),
               Entry(1.003, SERVER, "raced", D, D, CANCEL_SEEN, cancel=ABORTIVE)]
    assert check_entries([to_dict(e) for e in entries]).cancel_propagation_ms == []   # check agrees: not measured


def test_the_readme_shows_a_real_plain_line() -> None:
    block = blocks(section("Live view"))[0]
    assert PLAIN_LINE.match(block.splitlines()[0])


def test_dashboard_renders_codes_rates_in_flight_and_recent_cancels() -> None:
    from rich.console import Console

    clock = Clock()
    stats = LiveStats(CLIENT, total=10, clock=clock)
    feed_cancelled_call(stats, "a1b2c3d4e5f6a7b8", 1.0, NON_ABORTIVE, codes.RPC_S_OK)
    feed_cancelled_call(stats, "ffeeddccbbaa0099", 2.0, ABORTIVE, codes.RPC_S_CALL_CANCELLED)
    stats.in_flight = 3
    clock.now += 0.5   # one call each in half a second: 2 calls/s

    def screen(width: int) -> str:
        out = io.StringIO()   # a height too: rich sizes a TERM=dumb console 80x25 whatever the width given
        Console(file=out, force_terminal=True, width=width, height=40, color_system=None).print(
            render(stats, "the title"))
        return out.getvalue()

    wide = screen(120)
    assert "the title" in wide and "in flight 3" in wide and "calls ended 2 / 10" in wide
    assert re.search(r"0 RPC_S_OK\s+1\s+2\b", wide) and re.search(r"1818 RPC_S_CALL_CANCELLED\s+1\s+2\b", wide)
    assert "4 calls/s" in wide
    assert re.search(r"abortive\s+0\.50\s+2\.00\s+1818 RPC_S_CALL_CANCELLED", wide)
    for width in (120, 80):   # on an 80-column terminal too, every column of a recent cancel shows
        rows = [line for line in screen(width).splitlines() if "a1b2c3d4e5f6" in line or "ffeeddccbbaa" in line]
        assert len(rows) == 2, width
        assert "ffeeddccbbaa" in rows[0] and re.search(r"abortive\s+0\.50\s+2\.00\s+1818", rows[0]), rows
        assert re.search(r"non-abortive\s+0\.50\s+2\.00\s+0 RPC_S_OK", rows[1]), rows   # newest first


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_the_view_follows_the_mode_and_the_terminal(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    assert [choose(m, io.StringIO()) for m in MODES] == ["", LINES, ""]
    assert [choose(m, FakeTerminal()) for m in MODES] == [LIVE, LIVE, ""]
    monkeypatch.setitem(sys.modules, "rich.live", None)   # rich not installed: plain lines on a terminal too
    assert [choose(m, FakeTerminal()) for m in MODES] == [LINES, LINES, ""]


# -- on a real terminal --------------------------------------------------------------------------

class Pty:
    """A command with a pseudo-terminal (120x40) as stdin, stdout and stderr."""

    def __init__(self, *args: str) -> None:
        self.master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
        self.proc = subprocess.Popen([sys.executable, "-m", "callstate", *args], stdin=slave, stdout=slave,
                                     stderr=slave, start_new_session=True,
                                     env={**os.environ, "TERM": "xterm-256color", "COLUMNS": "120", "LINES": "40"})
        os.close(slave)
        self.screen = ""

    def read_until(self, done: Callable[[str], bool], timeout: float) -> str:
        """Everything written so far, once `done(output)` holds or the command exits."""
        deadline = time.monotonic() + timeout
        while not done(self.screen) and time.monotonic() < deadline:
            ready, _, _ = select.select([self.master], [], [], 0.1)
            if ready:
                try:
                    data = os.read(self.master, 65536)
                except OSError:   # EIO: the command exited and closed the terminal
                    break
                if not data:
                    break
                self.screen += data.decode(errors="replace")
            elif self.proc.poll() is not None:
                break
        return self.screen

    def close(self) -> int:
        try:
            return self.proc.wait(timeout=10)
        finally:
            if self.proc.poll() is None:
                os.killpg(self.proc.pid, signal.SIGKILL)
            os.close(self.master)


def test_load_draws_a_live_dashboard_on_a_terminal(server: ServerProcess, tmp_path: Path) -> None:
    # Every call held and cancelled non-abortively: the server logs cancel_seen for each, even
    # for a notice that overtakes its call on a busy machine (kept for the dispatch). A row's
    # Can→cancel_seen is the propagation `check` measures: a figure for a call the server had
    # dispatched before the client's Can, "-" for one it dispatched later or never saw (its
    # notice overtook it: at a load average of 20 the last 6 calls all were such, and the run's
    # propagation counted 310 of 400). Which is which is read from both sides' logs.
    client_log = tmp_path / "client.jsonl"
    term = Pty("load", "--target", server.target, "--calls", "400", "--concurrency", "8", "--delay", "0.01",
               "--mix", "hold=100", "--cancel", "non-abortive=100", "--cancel-at", "held:0.02", "--seed", "3",
               "--log-file", str(client_log))
    try:
        screen = term.read_until(lambda s: "check: OK" in s, timeout=90)
    finally:
        status = term.close()
    assert status == 0, screen[-3000:]
    assert screen.count("callstate load →") >= 2, "the dashboard is redrawn while the run goes"
    assert f"{ESC}[?25l" in screen and f"{ESC}[1A" in screen   # rich's Live: cursor hidden, frames rewritten
    last = ANSI.sub("", screen[screen.rindex("callstate load →"):])
    assert "calls ended 400 / 400" in last and "in flight 0" in last
    assert "final codes (client side)" in last and "1818 RPC_S_CALL_CANCELLED" in last
    rows = re.findall(r"([0-9a-f]{12})\s+non-abortive\s+(\S+)\s+\d+\.\d\d\s+1818 ", last)
    assert len(rows) == 6, last
    dispatched_first = dispatched_before_cancel(client_log, server.log, [prefix for prefix, _ in rows])
    assert [re.fullmatch(r"\d+\.\d\d", ms) is not None for _, ms in rows] == dispatched_first, (last, dispatched_first)
    assert all(ms == "-" for _, ms in rows if not re.fullmatch(r"\d+\.\d\d", ms)), last


def dispatched_before_cancel(client_log: Path, server_log: Path, prefixes: list[str]) -> list[bool]:
    """For each call (by its id's first 12 characters): whether the server's first entry of it
    is no later than the client's first Can (the calls a propagation is measured on; a call the
    server never saw, its notice and its cancel ahead of it, is not). The server's log is read
    once it holds the End of the run's barrier call, made after all of them and logged in order
    (its writer flushes every 50 ms)."""
    def firsts(path: Path, side: str, state: str | None) -> dict[str, datetime]:
        out: dict[str, datetime] = {}
        for line in path.read_bytes().splitlines():
            e = orjson.loads(line)
            if e["side"] == side and (state is None or (e["state"] == state and e["event"] == ENTER)):
                out.setdefault(e["call_id"][:12], datetime.fromisoformat(e["ts"].replace("Z", "+00:00")))
        return out
    deadline = time.monotonic() + EVIDENCE_WAIT
    while not any(e["call_id"].startswith("callstate-load-barrier-") and e["state"] == END
                  for e in map(orjson.loads, complete_lines(server_log.read_bytes()))):
        assert time.monotonic() < deadline, "the server's log never held the run's barrier call"
        time.sleep(0.05)
    cancelled, dispatched = firsts(client_log, CLIENT, CAN), firsts(server_log, SERVER, None)
    return [p in dispatched and dispatched[p] <= cancelled[p] for p in prefixes]


def test_load_prints_plain_lines_when_not_on_a_terminal(server: ServerProcess) -> None:
    args = ("load", "--target", server.target, "--calls", "300", "--concurrency", "4", "--delay", "0.01")
    always = cli(*args, "--progress", "always", timeout=90)
    assert always.returncode == 0, always.stderr
    # (a wait for the server's side past a second, on a busy machine, is said in a line of its own)
    lines = [line for line in always.stderr.splitlines() if not line.startswith(SETTLE_NOTICE[:39])]
    assert ESC not in always.stderr and "\r" not in always.stderr
    assert lines and all(PLAIN_LINE.match(line) for line in lines), lines
    assert "300/300 calls" in lines[-1] and "in flight 0" in lines[-1]
    auto = cli(*args, timeout=90)
    assert auto.returncode == 0 and auto.stderr == "", auto.stderr


def test_load_says_it_waits_for_the_server_after_the_run_and_repeats_no_line(
        server: ServerProcess, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        tmp_path: Path) -> None:
    """A held call (a pipe) cancelled as soon as the server has it, which a handler polling every
    2.5 s sees late: the run is over and waits for the server's End; the view says so once, and its
    frozen line is not printed again and again meanwhile."""
    import callstate.cli.load.run as load_run
    from callstate.cli import main

    # The notice comes SETTLE_NOTICE_S (1 s) into the wait for the server. With a 2 s poll and the
    # cancel at 0.3 s, the server ended the call 1.7 s after the client's cancel, and a loaded
    # machine spent the other 0.7 s between the client's End and that wait: the run said nothing
    # (the test's own margin, not the product). Run in process, the notice is due 0.1 s into the
    # wait (about the same suite time: no interpreter to start). The cancel comes at the pipe's
    # headers, which the server sends at dispatch, so the 2.5 s poll leaves about 2.4 s for the
    # way there: a unary call's cancel on a timer (held:0.3) beat the dispatch when a loaded machine
    # took longer than that, and a call the server never had is no call to wait for (check: FAILED,
    # no call reached the server)
    monkeypatch.setattr(load_run, "SETTLE_NOTICE_S", 0.1)
    rc = main(["load", "--target", server.target, "--calls", "1", "--pipes", "in=100", "--mix", "hold=100",
               "--cancel", "abortive=100", "--pipe-cancel-at", "after-headers", "--cancel-poll", "2500=100",
               "--progress", "always", "--log-file", str(tmp_path / "client.jsonl")])
    out, err = capsys.readouterr()
    assert rc == 0, out + err + (tmp_path / "client.jsonl").read_text()   # the client's side of a failure
    lines = err.splitlines()
    assert sum(line.startswith(SETTLE_NOTICE) for line in lines) == 1, lines
    plain = [line for line in lines if PLAIN_LINE.match(line)]
    assert plain and all(a != b for a, b in zip(plain, plain[1:])), plain   # each line says something new
    assert "check: OK" in out


def wait_for(condition: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def cancelled_call(target: str) -> None:
    """A held call cancelled once the server holds it (cancelled sooner, the server may never
    see it, and a watcher then has nothing to show)."""
    import grpc

    from callstate.v1 import callstate_pb2 as pb
    from callstate.v1 import callstate_pb2_grpc as pb_grpc
    with Client(target) as client, grpc.insecure_channel(target) as channel:
        call = client.start(Script("hold"))
        journal = pb_grpc.JournalStub(channel)
        deadline = time.monotonic() + 10
        while True:
            try:
                journal.GetCall(pb.GetCallRequest(call_id=call.call_id), timeout=5)
                break
            except grpc.RpcError:
                assert time.monotonic() < deadline, "the server never dispatched the call"
                time.sleep(0.01)
        call.cancel()
        call.wait(timeout=10)


def test_watch_draws_a_live_dashboard_on_a_terminal(server: ServerProcess) -> None:
    term = Pty("watch", "--target", server.target)
    try:
        term.read_until(lambda s: "callstate watch →" in s, timeout=20)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:   # until the watcher's stream has one of our calls
            cancelled_call(server.target)
            if re.search(r"abortive\s+\d+\.\d\d\s+1818", ANSI.sub("", term.read_until(lambda s: False, timeout=0.6))):
                break
        term.proc.send_signal(signal.SIGINT)
        screen = term.read_until(lambda s: False, timeout=10)
    finally:
        status = term.close()
    assert status == 0, screen[-3000:]
    last = ANSI.sub("", screen[screen.rindex("callstate watch →"):])
    assert "final codes (server side)" in last and re.search(r"1818 RPC_S_CALL_CANCELLED\s+\d+", last), last
    assert re.search(r"[0-9a-f]{12}\s+abortive\s+\d+\.\d\d\s+1818 RPC_S_CALL_CANCELLED", last), last
    assert f"{ESC}[?25l" in screen


def test_watch_dashboard_as_plain_lines_when_not_on_a_terminal(server: ServerProcess, tmp_path: Path) -> None:
    out = tmp_path / "watch.out"
    with open(out, "w") as f:
        proc = subprocess.Popen([sys.executable, "-m", "callstate", "watch", "--target", server.target,
                                 "--dashboard", "always"], stdout=f, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:   # until the watcher's stream has one of our calls
            cancelled_call(server.target)
            if wait_for(lambda: "1818 RPC_S_CALL_CANCELLED" in out.read_text(), timeout=2):
                break
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    text = out.read_text()
    lines = text.splitlines()
    assert ESC not in text and lines and all(PLAIN_LINE.match(line) for line in lines), lines
    assert "1818 RPC_S_CALL_CANCELLED" in lines[-1] and "cancels abortive" in lines[-1]
