"""What callstate tells its users after a run agrees with the logs and with its own exit status:
the HTML report's verdict is the command's (never a green OK where the command says NOT JUDGED
or FAILED); `report` reads a log cut short as `check` does, and a log appended to after a cut
line stays checkable; messages name the log and line where a history stops, and never a missing
code as 0; counts per final code add up to the calls; `load`'s paths line counts only the
cancels its log holds, and says when the server was lost; conformance's shares never round a
loss up to 100% and its counts are of calls; help names every exit status."""

from __future__ import annotations

import asyncio
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import grpc
import orjson
import pytest

from callstate.check import counted
from callstate.lifecycle import CAN, CANCEL_SEEN, CLIENT, END, ENTER, SERVER
from tests.conftest import EVIDENCE_WAIT, ServerProcess, cli, read_entries, start_server

pytestmark = pytest.mark.timeout(180)


def verdict(html: Path) -> str:
    """The report page's verdict box, as text."""
    found = re.findall(r'<div class="verdict[^"]*">([^<]*)</div>', html.read_text())
    assert len(found) == 1, found
    return found[0]


@pytest.fixture(scope="module")
def one_call(shared_server: ServerProcess, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Both sides' logs of one real completed call: (client log, server log holding only it)."""
    folder = tmp_path_factory.mktemp("one-call")
    client = folder / "client.jsonl"
    result = cli("call", "--target", shared_server.target, "--outcome", "complete", "--log-file", str(client),
                 timeout=EVIDENCE_WAIT * 3)
    assert result.returncode == 0, result.stderr
    [call_id] = {e["call_id"] for e in read_entries(client)}
    entries = shared_server.wait_entries(call_id)
    assert entries and entries[-1]["state"] == END, entries
    server = folder / "server.jsonl"
    server.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in entries))
    return client, server


# -- the HTML report's verdict is the command's ----------------------------------------------------

def test_report_page_of_one_side_says_not_judged_as_the_command_does(one_call: tuple[Path, Path],
                                                                    tmp_path: Path) -> None:
    client, _server = one_call
    out = tmp_path / "one-side.html"
    result = cli("report", str(client), "--html", str(out))
    assert result.returncode == 1 and "check NOT JUDGED" in result.stdout, result.stdout
    shown = verdict(out)
    assert shown.startswith("NOT JUDGED: only the client side is logged"), shown
    assert "OK" not in shown


def test_report_page_of_an_empty_log_says_not_judged(tmp_path: Path) -> None:
    log = tmp_path / "empty.jsonl"
    log.write_bytes(b"")
    out = tmp_path / "empty.html"
    result = cli("report", str(log), "--html", str(out))
    assert result.returncode == 1 and "check NOT JUDGED" in result.stdout, result.stdout
    assert verdict(out) == "NOT JUDGED: nothing was checked: no entries"


def test_report_page_of_both_sides_still_says_ok(one_call: tuple[Path, Path], tmp_path: Path) -> None:
    out = tmp_path / "both.html"
    result = cli("report", *map(str, one_call), "--html", str(out))
    assert result.returncode == 0 and "check OK" in result.stdout, result.stdout + result.stderr
    assert verdict(out) == "OK: every invariant holds on both sides (1 call)"


def test_load_page_fails_where_the_load_fails_without_a_violation(tmp_path: Path) -> None:
    """Every call refused by the server's limits: no invariant is broken, yet the run proved
    nothing and `load` says FAILED (exit 1); its page says so too, with the load's reason."""
    srv = start_server(tmp_path, "--max-payload-bytes", "10", name="small")
    try:
        out = tmp_path / "load.html"
        result = cli("load", "--target", srv.target, "--calls", "6", "--concurrency", "2", "--payload", "100",
                     "--cancel", "none", "--mix", "complete=1", "--progress", "never", "--html", str(out),
                     timeout=120)
    finally:
        srv.stop()
    assert result.returncode == 1, result.stdout + result.stderr
    assert "check: FAILED — 0 violations; the server refused 6 of 6 calls" in result.stdout, result.stdout
    shown = verdict(out)
    assert shown.startswith("FAILED: the server refused 6 of 6 calls (87 RPC_S_INVALID_ARG)"), shown


def test_load_page_of_an_unchecked_run_says_not_judged(shared_server: ServerProcess, tmp_path: Path) -> None:
    out = tmp_path / "unchecked.html"
    result = cli("load", "--target", shared_server.target, "--calls", "5", "--concurrency", "1", "--no-verify",
                 "--progress", "never", "--html", str(out), timeout=120)
    assert result.returncode == 0 and "check: skipped (--no-verify)" in result.stdout, result.stdout + result.stderr
    assert verdict(out) == "NOT JUDGED: the run was not checked (--no-verify)"


# -- report reads a log cut short as check does ----------------------------------------------------

def test_report_warns_about_a_cut_last_line_and_reports_the_rest(one_call: tuple[Path, Path],
                                                                  tmp_path: Path) -> None:
    client, server = one_call
    cut = tmp_path / "server.jsonl"
    lines = server.read_bytes()
    cut.write_bytes(lines + lines[:25])   # a writer killed mid-line (the server's, say)
    checked = cli("check", str(client), str(cut))
    assert checked.returncode == 0 and "cut short" in checked.stderr, checked.stdout + checked.stderr
    out, data = tmp_path / "cut.html", tmp_path / "cut.json"
    result = cli("report", str(client), str(cut), "--html", str(out), "--json", str(data))
    assert "Traceback" not in result.stderr
    assert result.returncode == 0, result.stdout + result.stderr   # as `check` judges it
    n = lines.count(b"\n")
    [warning] = result.stderr.splitlines()
    assert warning.startswith(f"callstate report: warning: {cut}:{n + 1}: the last line is cut short"), warning
    assert orjson.loads(data.read_bytes())["by_side"][SERVER] == n
    assert verdict(out) == "OK: every invariant holds on both sides (1 call)"
    cut.write_bytes(b"{not json}\n" + lines)   # a bad line inside is still an error
    assert cli("report", str(client), str(cut), "--html", str(out)).returncode == 2


# -- load's paths line counts the cancels the log holds --------------------------------------------

def _held_load(target: str, tmp_path: Path, *args: str) -> tuple[Any, list[dict[str, Any]], dict[str, int]]:
    """`callstate load --mix hold=100 --cancel none ARGS` to completion: its result, its client
    log's entries and its report's paths."""
    log, report = tmp_path / "client.jsonl", tmp_path / "load.json"
    result = cli("load", "--target", target, "--mix", "hold=100", "--cancel", "none", "--progress", "never",
                 "--log-file", str(log), "--report", str(report), *args, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    return result, read_entries(log), orjson.loads(report.read_bytes())["paths"]


def test_load_counts_no_hold_for_end_when_the_server_ended_the_held_calls(tmp_path: Path) -> None:
    """Held calls ended by the server's --max-hold long before --hold-for: none was cancelled
    (no Can in the client's log), so the paths line has no `hold-for`."""
    srv = start_server(tmp_path, "--max-hold", "0.2", name="short-hold")
    try:
        result, entries, paths = _held_load(srv.target, tmp_path, "--calls", "4", "--concurrency", "4",
                                            "--hold-for", "600")
    finally:
        srv.stop()
    assert not [e for e in entries if e["state"] == CAN], "no call was cancelled"
    assert {e["code"] for e in entries if e["state"] == END} == {1460}   # RPC_S_TIMEOUT: the server's max hold
    assert paths == {"hold": 4}, paths
    assert "hold-for" not in result.stdout


def test_load_counts_the_hold_for_ends_it_made(shared_server: ServerProcess, tmp_path: Path) -> None:
    # --no-verify: what is counted is the client's own; at load 20 a 0.01 s hold-for cancelled all
    # four calls before the server dispatched one, and the server-side check said "no call reached the server".
    _, entries, paths = _held_load(shared_server.target, tmp_path, "--calls", "4", "--concurrency", "4",
                                   "--hold-for", "0.01", "--no-verify")
    assert len([e for e in entries if e["state"] == CAN and e["event"] == ENTER]) == 4
    assert paths == {"hold": 4, "hold-for": 4}


# -- conformance's shares ----------------------------------------------------------------------------

def judge(seen: int, sent: int, nowhere: str) -> Any:
    from callstate.cli.conformance.battery import Battery, BatteryConfig
    from callstate.cli.conformance.calls import Result
    from callstate.cli.conformance.cancels import judge_propagation
    from callstate.cli.conformance.journal import ServerJournal
    from callstate.cli.conformance.properties import CANCEL_ABORTIVE
    from callstate.statelog import Entry

    async def run() -> Any:
        channel = grpc.aio.insecure_channel(nowhere)   # never used: the entries are given
        journal = ServerJournal(channel, "test")
        battery = Battery("proxy", nowhere, journal, BatteryConfig(wait=0.2))
        try:
            results = []
            for i in range(sent):
                call_id = f"share-{i:04d}"
                journal.watch(call_id)
                battery.recorder.append(Entry(t=1795600800.0, side=CLIENT, call_id=call_id, state=CAN, prev=None,
                                              event=ENTER))
                results.append(Result(call_id, 1818, "CANCELLED"))
            for r in results:
                events = ((CANCEL_SEEN, "A"), (ENTER, END)) if int(r.call_id[-4:]) < seen else ((ENTER, END),)
                for event, state in events:
                    journal.entries(r.call_id).append({"ts": "2026-11-25T10:00:00.001000Z", "side": SERVER,
                                                       "call_id": r.call_id, "state": state, "event": event})
            return await judge_propagation(battery, CANCEL_ABORTIVE, results, 0)
        finally:
            await battery.close()
            await channel.close()
    return asyncio.run(run())


@pytest.mark.parametrize("seen, sent, shown", [(199, 200, ">99%"), (1, 200, "<1%"), (200, 200, "100%"),
                                                (0, 200, "0%"), (1, 3, "33%")])
def test_a_cancel_share_is_never_rounded_to_all_or_none(seen: int, sent: int, shown: str, refused_target: str) -> None:
    row = judge(seen, sent, refused_target)
    assert row.figures.startswith(f"{seen}/{sent} ({shown}) reached the server"), row.figures
    assert row.ok is (seen == sent), row


# -- check names the log of a history cut off ---------------------------------------------------------

def test_a_call_cut_off_by_a_killed_replica_names_that_replicas_log(tmp_path: Path) -> None:
    """Two replicas' logs and the clients' in one folder; one replica killed while holding a
    call: `not_ended` names the file and line where that call's server history stops."""
    logs = tmp_path / "logs"
    logs.mkdir()
    alive = start_server(logs, "--max-hold", "60", name="replica-a")
    doomed = start_server(logs, "--max-hold", "60", name="replica-b")
    held = None
    try:
        done = cli("call", "--target", alive.target, "--log-file", str(logs / "client-a.jsonl"))
        assert done.returncode == 0, done.stderr
        held = subprocess.Popen([sys.executable, "-m", "callstate", "call", "--target", doomed.target,
                                 "--outcome", "hold", "--log-file", str(logs / "client-b.jsonl")],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + EVIDENCE_WAIT
        while not read_entries(doomed.log) and time.monotonic() < deadline:   # dispatched, and on disk
            time.sleep(0.02)
        [dispatched] = read_entries(doomed.log)
        doomed.stop(signal.SIGKILL)
        assert held.wait(EVIDENCE_WAIT) != 0   # the caller sees the server go
        alive_entries = alive.wait_entries(read_entries(logs / "client-a.jsonl")[0]["call_id"])
        assert alive_entries[-1]["state"] == END
    finally:
        if held is not None and held.poll() is None:
            held.kill()
        alive.stop()
        doomed.stop(signal.SIGKILL)
    result = cli("check", str(logs))
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stdout + result.stderr
    assert "not_ended: 1" in result.stdout, result.stdout
    assert f"{dispatched['call_id']}: {doomed.log}:1: server stopped in D" in result.stdout, result.stdout


# -- the pytest plugin's side-by-side histories --------------------------------------------------------

def test_side_by_side_keeps_one_straight_divider_for_long_client_cells() -> None:
    """A client End with a long code name and a cancel kind is wider than the default column:
    the divider moves out for every row, so each server entry stays in the server column."""
    from callstate.pytest_plugin.sidebyside import side_by_side

    call = {"call_id": "x", "side": CLIENT}
    client = [{**call, "ts": "2026-11-25T10:00:00.000001Z", "state": "C", "prev": None, "event": ENTER, "move": "call"},
              {**call, "ts": "2026-11-25T10:00:00.000003Z", "state": END, "prev": "Comp", "event": ENTER,
               "move": "completed", "code": 1917, "cancel": "non-abortive"}]
    server = [{"call_id": "x", "side": SERVER, "ts": "2026-11-25T10:00:00.000002Z", "state": "D", "prev": None,
               "event": ENTER, "move": "dispatch"}]
    table = side_by_side(client, server).splitlines()
    assert "1917 RPC_X_PIPE_DISCIPLINE_ERROR [non-abortive]" in table[-1]
    dividers = {line.index("|") if "|" in line else line.index("+") for line in table}
    assert len(dividers) == 1, "\n".join(table)


# -- a server killed under load ------------------------------------------------------------------------

def test_load_whose_server_is_killed_says_so_and_its_counts_match_its_log(tmp_path: Path) -> None:
    srv = start_server(tmp_path, "--max-hold", "60", name="doomed")
    log, report, html = tmp_path / "client.jsonl", tmp_path / "load.json", tmp_path / "load.html"
    load = subprocess.Popen([sys.executable, "-m", "callstate", "load", "--target", srv.target, "--duration", "120",
                             "--concurrency", "4", "--delay", "0.005", "--progress", "never", "--log-file", str(log),
                             "--report", str(report), "--html", str(html)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + EVIDENCE_WAIT
        while len(read_entries(srv.log)) < 50 and time.monotonic() < deadline:   # the run is under way
            time.sleep(0.05)
        srv.stop(signal.SIGKILL)
        out, err = load.communicate(timeout=120)
    finally:
        if load.poll() is None:
            load.kill()
        srv.stop(signal.SIGKILL)
    assert load.returncode == 1 and "Traceback" not in err, out + err
    first = out.splitlines()[0]
    assert first.endswith("(stopped early: the server was lost)"), first
    assert "server_lost: 1" in out, out
    data = orjson.loads(report.read_bytes())
    ends = [e for e in read_entries(log) if e["state"] == END and e["event"] == ENTER]
    assert data["calls"] == len(ends) == sum(data["by_code"].values())
    assert verdict(html).startswith(f"FAILED: {counted(data['check']['violations'], 'violation')}")   # 1 violation
    assert "<th>stopped early</th><td>the server was lost</td>" in html.read_text()


# -- a log appended to after a line cut short -------------------------------------------------------------

def test_a_server_restarted_on_a_log_cut_mid_line_keeps_both_runs_checkable(tmp_path: Path) -> None:
    """A server's log whose last line was cut (its writer killed mid-line, a full disk), and
    the server restarted on the same --log-file, as a container restart policy does: the new
    run's lines are not glued onto the cut one, and `check` skips that line with a warning and
    judges every other entry of both runs."""
    first = start_server(tmp_path, name="server")
    try:
        before = cli("call", "--target", first.target, "--log-file", str(tmp_path / "client.jsonl"))
        assert before.returncode == 0, before.stderr
        first.wait_entries(read_entries(tmp_path / "client.jsonl")[0]["call_id"])
    finally:
        first.stop()
    whole = first.log.read_bytes()
    first.log.write_bytes(whole + whole.splitlines(keepends=True)[0][:40])   # killed mid-line
    (tmp_path / "server.port").unlink()
    second = start_server(tmp_path, name="server")   # the same log file
    try:
        after = cli("call", "--target", second.target, "--log-file", str(tmp_path / "client.jsonl"))
        assert after.returncode == 0, after.stderr
    finally:
        assert second.stop() == 0   # SIGTERM: the server writes every entry before it exits
    lines = second.log.read_bytes().split(b"\n")
    cut = whole.count(b"\n") + 1
    assert lines[cut - 1] == whole.splitlines()[0][:40], "the cut line ends where it was cut"
    assert all(orjson.loads(line) for line in lines[cut:] if line), "the new run's lines are whole"
    result = cli("check", str(tmp_path / "client.jsonl"), str(second.log))
    assert result.returncode == 0, result.stdout + result.stderr
    [warning] = result.stderr.splitlines()
    assert warning.startswith(f"callstate check: warning: {second.log}:{cut}: a line cut short"), warning
    assert result.stdout.startswith("2 calls,"), result.stdout
    bad = tmp_path / "bad.jsonl"   # a line that is not the start of an entry is still an error
    bad.write_bytes(whole + b"{not json}\n" + whole)
    assert cli("check", str(bad)).returncode == 2


def test_only_the_start_of_an_entry_passes_for_a_line_cut_short() -> None:
    from callstate.statelog import LogFormatError, parse_log

    whole = orjson.dumps({"ts": "2026-11-25T10:00:00.000001Z", "side": CLIENT, "call_id": "x", "state": "C",
                          "prev": None, "event": ENTER, "move": "call", "detail": "é ✓ \"quoted\""})
    for cut in range(1, len(whole)):   # every place a writer can stop, inside a character too
        warned: list[str] = []
        got = list(parse_log([whole[:cut] + b"\n", whole + b"\n"], "log", warned.append))
        assert [n for n, _ in got] == [2] and len(warned) == 1 and "log:1: a line cut short" in warned[0], cut
    for bad in (b"{not json}", b"garbage", whole[:30] + whole, whole + whole, b"[1, 2"):
        with pytest.raises(LogFormatError, match="log:1: not JSON"):
            list(parse_log([bad + b"\n", whole + b"\n"], "log", [].append))
        with pytest.raises(LogFormatError):   # and without a warn, any of them is an error
            list(parse_log([whole[:30] + b"\n", whole + b"\n"], "log"))


def test_a_call_no_server_log_has_names_its_client_log(one_call: tuple[Path, Path], tmp_path: Path) -> None:
    """Two workers' client logs, and the server log of one worker's calls only (a replica's log
    left out): unknown_to_server names the client log and line of the call's End."""
    client, server = one_call
    other = tmp_path / "worker-2.jsonl"
    entries = read_entries(client)
    other.write_bytes(b"".join(orjson.dumps({**e, "call_id": "elsewhere"}) + b"\n" for e in entries))
    result = cli("check", str(client), str(other), str(server))
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"elsewhere: {other}:{len(entries)}: client completed with 0" in result.stdout, result.stdout
    assert "is one replica's log missing?" in result.stdout, result.stdout   # the likely cause, said


def test_load_counts_held_pipes_it_ended_itself_as_hold_for_not_as_cancels_asked_for(
        shared_server: ServerProcess, tmp_path: Path) -> None:
    """--cancel none: held pipes are still ended by the generator's own abortive cancel, which
    the paths line counts apart as hold-for (as for unary calls), not as cancel-abortive."""
    _, entries, paths = _held_load(shared_server.target, tmp_path, "--calls", "6", "--concurrency", "3",
                                   "--pipes", "out=100")
    assert len([e for e in entries if e["state"] == CAN and e["event"] == ENTER]) == 6
    assert paths == {"hold": 6, "hold-for": 6, "pipe-out": 6}


# -- help text says what the commands do -----------------------------------------------------------------

def help_text(command: str) -> str:
    result = cli(command, "--help")
    assert result.returncode == 0, result.stderr
    return " ".join(result.stdout.split())


def test_check_help_names_every_exit_status_it_gives(one_call: tuple[Path, Path], tmp_path: Path) -> None:
    text = help_text("check")
    client, _server = one_call
    empty, wrong = tmp_path / "empty.jsonl", tmp_path / "wrong.jsonl"
    empty.write_bytes(b"")
    wrong.write_bytes(b'{"not": "an entry"}\n')
    assert cli("check", str(empty)).returncode == 1   # no violation, nothing judged
    assert cli("check", str(client)).returncode == 1   # no violation, one side only
    assert "Exit status 1 on any violation or when nothing could be judged (no entries, or one side only" in text
    assert cli("check", str(wrong)).returncode == 2
    assert "holds a line that is not a state entry" in text


def test_load_help_names_every_exit_status_it_gives() -> None:
    text = help_text("load")
    assert ("Exit status 1 when an invariant fails or the run proved nothing (no call reached the server, or every "
            "call was refused)") in text   # test_load_page_fails_where_the_load_fails_without_a_violation: exit 1
    assert "130 after Ctrl-C" in text


def test_conformance_help_names_its_exit_status_when_interrupted() -> None:
    # test_conformance.py's test_a_signal_ends_a_run_at_once_with_its_exit_status_and_no_server_left: 128 + signal
    assert "130 or 143 when interrupted (SIGINT, SIGTERM" in help_text("conformance")


def test_conformance_deadline_row_counts_calls_not_its_own_note(tmp_path: Path, refused_target: str) -> None:
    """A proxy that takes the connection and never answers: every call ends at its deadline on
    the client, none reaches the server. The row fails saying so, and its count is of calls:
    none of them failed on its own, so it is not one short (the row's note is not a call)."""
    import socket
    import threading

    from callstate.cli.conformance.battery import Battery, BatteryConfig
    from callstate.cli.conformance.cancels import deadline
    from callstate.cli.conformance.journal import ServerJournal

    held: list[socket.socket] = []
    listener = socket.create_server(("127.0.0.1", 0))

    def accept() -> None:
        while True:
            try:
                held.append(listener.accept()[0])   # kept open, never read: no HTTP/2 answer
            except OSError:
                return
    threading.Thread(target=accept, daemon=True).start()
    target = f"127.0.0.1:{listener.getsockname()[1]}"

    async def judge() -> Any:
        channel = grpc.aio.insecure_channel(refused_target)   # the server's journal: never reached
        journal = ServerJournal(channel, "test")
        battery = Battery("proxy", target, journal, BatteryConfig(calls=2, concurrency=2, deadline=0.1, wait=0.5))
        try:
            return await deadline(battery)
        finally:
            await battery.close()
            await channel.close()
    try:
        row = asyncio.run(judge())
    finally:
        listener.close()
        for conn in held:
            conn.close()
    assert row.ok is False and row.note == "no call reached the server before its deadline x1", row
    assert row.figures == "4/4 ended on both sides, 0 seen by the server", row.figures
    assert row.data["failed"] == 0 and row.data["calls"] == 4


def test_a_code_mismatch_never_names_a_missing_code_as_0(one_call: tuple[Path, Path]) -> None:
    """A client End without its code (a log from another writer): the mismatch says so, where
    it used to read `client 0 RPC_S_OK vs server 0 RPC_S_OK`."""
    from callstate.check import check_entries

    client, server = one_call
    entries = [{k: v for k, v in e.items() if not (e["state"] == END and k == "code")} for e in read_entries(client)]
    report = check_entries(entries + read_entries(server))
    [mismatch] = [v.message for v in report.violations if v.kind == "code_mismatch"]
    assert mismatch == "client no code (None) vs server 0 RPC_S_OK", mismatch


# -- counts per final code add up to the calls -----------------------------------------------------------

def test_check_counts_a_call_no_side_ended_so_the_codes_add_up(one_call: tuple[Path, Path], tmp_path: Path) -> None:
    client, _server = one_call
    cut = tmp_path / "client.jsonl"
    cut.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in read_entries(client) if e["state"] != END))
    result = cli("check", "--allow-one-side", str(cut))
    assert result.returncode == 1, result.stdout + result.stderr   # not_ended
    lines = result.stdout.splitlines()
    assert lines[0].startswith("1 call,") and lines[1].split() == ["1", "no", "final", "code", "(no", "side",
                                                                    "logged", "the", "call's", "End", "with", "one)"]
    data = orjson.loads(cli("check", "--allow-one-side", "--json", str(cut)).stdout)
    assert data["by_code"] == {} and data["no_final_code"] == 1


def test_report_page_counts_the_calls_not_ended_so_its_rows_add_up(one_call: tuple[Path, Path],
                                                                    tmp_path: Path) -> None:
    client, server = one_call
    cut = tmp_path / "client.jsonl"
    cut.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in read_entries(client) if e["state"] != END))
    out = tmp_path / "cut.html"
    result = cli("report", str(cut), str(server), "--html", str(out))
    assert result.returncode == 1 and "check FAILED (1 violation)" in result.stdout, result.stdout
    page = " ".join(re.sub(r"<[^>]+>", " ", out.read_text()).split())
    # the server logged the call's End: its final code is the server's, as `callstate check` counts it
    # (audit 29); a call no side ended is the "not ended" row
    assert "0 RPC_S_OK 1 " in page and "not ended" not in page, page
    server_cut = tmp_path / "server.jsonl"
    server_cut.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in read_entries(server) if e["state"] != END))
    assert cli("report", str(cut), str(server_cut), "--html", str(out)).returncode == 1
    page = " ".join(re.sub(r"<[^>]+>", " ", out.read_text()).split())
    assert "not ended (no End to measure to) 1 - - - -" in page, page
