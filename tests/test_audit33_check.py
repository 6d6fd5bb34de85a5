"""Audit 33: `callstate check` on logs that are legal but unusual gives a true verdict, or says
NOT JUDGED with one reason: a log with a byte order mark, a gzip'd log (given, or in a folder),
call ids a later run used again, a log still being written (it grows while read, or a process
still has it open for writing: a server stopped by SIGSTOP), and a server killed mid-run."""

from __future__ import annotations

import gzip
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from callstate import logfile
from callstate.check import KINDS
from callstate.logfile import ReadProgress, check_files
from callstate.statelog import LogFormatError
from tests.conftest import cli, start_server, wait_for_text

pytestmark = pytest.mark.timeout(120)


def entry(t: float, side: str, call_id: str, state: str, prev: str | None, move: str, **extra: Any) -> dict[str, Any]:
    sec = int(t)
    ts = f"2026-11-24T10:{sec // 60 % 60:02d}:{sec % 60:02d}.{int((t - sec) * 1e6):06d}Z"
    if t >= 3600:
        ts = f"2026-11-24T{10 + sec // 3600:02d}" + ts[13:]
    return {"ts": ts, "side": side, "call_id": call_id, "state": state, "prev": prev, "event": "enter",
            "move": move, **extra}


def client(t: float, call_id: str) -> list[dict[str, Any]]:
    return [entry(t, "client", call_id, "C", None, "call"), entry(t + .001, "client", call_id, "WComp", "C", "started"),
            entry(t + .01, "client", call_id, "Comp", "WComp", "complete"),
            entry(t + .011, "client", call_id, "End", "Comp", "completed", code=0, grpc_status="OK")]


def server(t: float, call_id: str) -> list[dict[str, Any]]:
    return [entry(t + .002, "server", call_id, "D", None, "dispatch"),
            entry(t + .008, "server", call_id, "Comp", "D", "complete"),
            entry(t + .009, "server", call_id, "End", "Comp", "completed", code=0, grpc_status="OK")]


def lines(entries: list[dict[str, Any]]) -> bytes:
    return b"".join(orjson.dumps(e) + b"\n" for e in entries)


def run_logs(tmp: Path, calls: int = 20) -> tuple[Path, Path]:
    c = tmp / "client.jsonl"
    s = tmp / "server.jsonl"
    c.write_bytes(lines([e for i in range(calls) for e in client(i, f"k{i}")]))
    s.write_bytes(lines([e for i in range(calls) for e in server(i, f"k{i}")]))
    return c, s


# -- a byte order mark, a gzip'd log ----------------------------------------------------------------

def test_a_log_with_a_byte_order_mark_or_gzipd_is_read(tmp_path: Path) -> None:
    c, s = run_logs(tmp_path)
    bom = tmp_path / "bom.jsonl"
    bom.write_bytes(b"\xef\xbb\xbf" + s.read_bytes())   # saved by an editor, or PowerShell's Out-File
    assert check_files([c, bom]).ok
    folder = tmp_path / "logs"
    folder.mkdir()
    (folder / "client.jsonl").write_bytes(c.read_bytes())
    (folder / "server.jsonl.gz").write_bytes(gzip.compress(s.read_bytes()))   # a rotated log
    report = check_files([folder / "client.jsonl", folder / "server.jsonl.gz"])
    assert report.ok and report.both_sides == 20, report.summary()
    done = cli("check", str(folder))   # the folder's *.jsonl.gz too
    assert done.returncode == 0 and "20 calls" in done.stdout and "from 2 files" in done.stdout, done.stdout
    # a last line cut short (its writer killed mid-line) is skipped with a warning, gzip'd or not
    for name, data in (("cut.jsonl", b"\xef\xbb\xbf" + s.read_bytes()[:-20]),
                       ("cut-whole.jsonl.gz", gzip.compress(b"\xef\xbb\xbf" + s.read_bytes()[:-20]))):
        warned: list[str] = []
        (tmp_path / name).write_bytes(data)
        report = check_files([c, tmp_path / name], warn=warned.append)
        assert [(v.kind, v.call_id) for v in report.violations] == [("not_ended", "k19")], report.summary()
        assert warned[0].startswith(f"{tmp_path / name}:60: the last line is cut short"), warned
    # a gzip stream cut short: one line naming it, exit 2, no traceback
    cut = tmp_path / "cut.jsonl.gz"
    cut.write_bytes(gzip.compress(s.read_bytes())[:200])
    with pytest.raises(LogFormatError, match="cut.jsonl.gz: a gzip'd log cut short or damaged"):
        check_files([c, cut])
    done = cli("check", str(c), str(cut))
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.startswith(f"callstate check: {cut}: a gzip'd log cut short or damaged"), done.stderr


# -- call ids used again by a later run -------------------------------------------------------------

@pytest.mark.parametrize("apart, chunk", [(2.0, 1024), (3600.0, 20)])   # still held; long judged and dropped
def test_call_ids_a_later_run_used_again_are_not_judged_as_one_call(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                   apart: float, chunk: int) -> None:
    """A harness naming its calls ("case-1"), run twice into the same logs: no after_end per
    entry of the second run (a false FAILED), but NOT JUDGED with the one reason."""
    monkeypatch.setattr(logfile, "CHUNK", chunk)
    runs = [(0.0, 30), (apart, 30)]
    c, s = tmp_path / "client.jsonl", tmp_path / "server.jsonl"
    c.write_bytes(lines([e for at, n in runs for i in range(n) for e in client(at + i * .05, f"case-{i}")]))
    s.write_bytes(lines([e for at, n in runs for i in range(n) for e in server(at + i * .05, f"case-{i}")]))
    report = check_files([c, s])
    assert report.ok and report.reused_ids == 30, report.summary()
    why = report.not_judged()
    assert why is not None and why.startswith("30 call ids are used by more than one call"), why
    assert report.to_json()["reused_ids"] == 30 and report.to_json()["ok"] is False
    if chunk != 1024:
        return
    done = cli("check", str(c), str(s))
    assert done.returncode == 1 and "NOT JUDGED: 30 call ids are used by more than one call" in done.stdout, done.stdout


def test_a_copy_of_a_log_is_not_taken_for_a_later_run(tmp_path: Path) -> None:
    c, s = run_logs(tmp_path, 5)
    copy = tmp_path / "server-copy.jsonl"
    copy.write_bytes(s.read_bytes())   # the same entries at the same times: every call ends twice
    report = check_files([c, s, copy])
    assert not report.ok and report.reused_ids == 0 and set(report.by_kind()) == {"after_end"}, report.summary()


# -- a log still being written ----------------------------------------------------------------------

def test_a_log_that_grows_while_read_is_not_judged_on_its_calls_in_flight(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    c, s = run_logs(tmp_path, 40)
    with s.open("ab") as f:   # the last call is still in flight on the server
        f.write(lines(client(50, "live")[:0] + server(50, "live")[:1]))
    with c.open("ab") as f:
        f.write(lines(client(50, "live")[:2]))
    monkeypatch.setattr(logfile, "CHUNK", 10)
    warned: list[str] = []

    def writer_goes_on(p: ReadProgress) -> None:   # the server writes on as the log is read
        with s.open("ab") as f:
            f.write(lines([entry(51, "server", f"more{p.entries}", "D", None, "dispatch")]))

    report = check_files([c, s], warn=warned.append, progress=writer_goes_on)
    assert set(report.by_kind()) == {"not_ended"}, report.summary()
    why = report.shown_not_judged()
    assert why is not None and why.startswith(f"{s} grew while it was read"), report.summary()
    assert f"{s} grew while it was read: a log still being written" in warned
    assert "NOT JUDGED" in report.summary() and "FAILED" not in report.summary()
    # read again once it has stopped: the calls left in flight fail
    report = check_files([c, s])
    assert report.shown_not_judged() is None and "FAILED" in report.summary() and not report.live


def test_a_stopped_server_is_not_judged_and_a_killed_one_fails(tmp_path: Path) -> None:
    """`callstate serve` holding a call, then SIGSTOP: its log is open for writing by a stopped
    process, so the call in flight is no failure yet; then kill -9: now it is, and the wording
    says what a killed server leaves."""
    srv = start_server(tmp_path, "--max-hold", "60")
    client_log = tmp_path / "client.jsonl"
    call = subprocess.Popen([sys.executable, "-m", "callstate", "call", "--target", srv.target, "--outcome", "hold",
                             "--log-file", str(client_log)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_text(srv.log, '"state":"D"', srv.proc)
        wait_for_text(client_log, '"state":"WComp"', call)
        os.kill(srv.proc.pid, signal.SIGSTOP)
        done = cli("check", str(client_log), str(srv.log))
        assert done.returncode == 1, done.stdout + done.stderr
        assert f"NOT JUDGED: {srv.log} is open for writing by process {srv.proc.pid} (stopped)" in done.stdout, done.stdout
        assert "FAILED" not in done.stdout and "Traceback" not in done.stderr
        os.kill(srv.proc.pid, signal.SIGKILL)
        assert call.wait(30) != 0   # the call ends at the client: the server is gone
        done = cli("check", "--json", str(client_log), str(srv.log))
        got = orjson.loads(done.stdout)
        assert done.returncode == 1 and got["ok"] is False and got["not_judged"] is None, done.stdout
        assert "not_ended" in got["violations_by_kind"] and "kill -9" in KINDS["not_ended"], got
        assert "kill -9" in KINDS["unknown_to_server"]
    finally:
        call.kill()
        call.wait(10)
        if srv.proc.poll() is None:
            os.kill(srv.proc.pid, signal.SIGCONT)
        srv.stop(signal.SIGKILL)


# -- one entry of a time far off --------------------------------------------------------------------

def test_one_entry_of_a_time_far_off_does_not_judge_the_calls_in_flight_early(tmp_path: Path) -> None:
    """A server log with one entry a day ahead (a clock that jumped for a moment) at the start of
    a chunk: the reading's time must not jump with it, else every call in flight is judged before
    its server side comes (thousands of false time_order and unknown_to_server); the checker that
    holds every call finds nothing wrong either."""
    c, s = tmp_path / "client.jsonl", tmp_path / "server.jsonl"
    calls = 1500
    c.write_bytes(lines([e for i in range(calls) for e in client(i, f"k{i}")]))
    srv = [e for i in range(calls) for e in server(i, f"k{i}")]
    at = logfile.CHUNK   # the first entry of the server log's second chunk: a Comp
    srv[at] = dict(srv[at], ts="2026-11-25T10:00:00.000000Z")
    assert srv[at]["state"] == "Comp" and srv[at]["ts"] > srv[-1]["ts"]
    s.write_bytes(lines(srv))
    report = check_files([c, s])
    assert report.ok and report.both_sides == calls, report.summary()
