"""Review of session 33's check changes: a log another process holds open for writing (its
writer still running) when `check_files` is given no `warn`; and which violations such a log
explains (its own calls in flight), not a finished log's unended call beside it."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import orjson
import pytest

from callstate.logfile import check_files
from tests.conftest import ROOT, cli
from tests.test_audit33_check import client, lines, server

pytestmark = pytest.mark.timeout(60)

HOLD = ("import sys; f = open(sys.argv[1], sys.argv[2]); print('open', flush=True); sys.stdin.read()")


@contextlib.contextmanager
def holding(path: Path, mode: str) -> Iterator[None]:
    """`path` held open (`mode`) by another process until the block ends: it says so once open."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(path), mode], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "open\n"
        yield
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(30)


@pytest.fixture
def held(tmp_path: Path) -> Iterator[Path]:
    """server.jsonl, held open for appending by another process (a server still running)."""
    path = tmp_path / "server.jsonl"
    path.touch()
    with holding(path, "ab"):
        yield path


def test_a_log_open_for_writing_elsewhere_is_said_without_a_warn_callback(tmp_path: Path, held: Path) -> None:
    c = tmp_path / "client.jsonl"
    c.write_bytes(lines(client(0, "a") + client(1, "b")[:2]))   # b: in flight on both sides
    held.write_bytes(lines(server(0, "a") + server(1, "b")[:1]))
    report = check_files([c, held])   # no warn: the note is the report's, not a TypeError
    assert set(report.by_kind()) == {"not_ended"}, report.summary()
    why = report.shown_not_judged()
    assert why is not None and why.startswith(f"{held} is open for writing by process"), report.summary()
    assert any(w.startswith(f"{held} is open for writing") for w in report.warnings), report.warnings


def test_a_finished_logs_unended_call_fails_while_another_log_is_written(tmp_path: Path, held: Path) -> None:
    """A harness that never ended its call (the client log is complete) beside a server that
    keeps running (as a long-lived one does): FAILED, not NOT JUDGED until the server stops."""
    c = tmp_path / "client.jsonl"
    c.write_bytes(lines(client(0, "a") + client(1, "b")[:2]))   # b: the client never ended it
    held.write_bytes(lines(server(0, "a") + server(1, "b")))     # the server did
    report = check_files([c, held])
    assert [(v.kind, v.call_id) for v in report.violations] == [("not_ended", "b")], report.summary()
    assert report.live and report.shown_not_judged() is None, report.summary()
    assert "FAILED: 1 violation" in report.summary()


def test_a_call_the_written_server_log_lacks_yet_is_not_judged(tmp_path: Path, held: Path) -> None:
    """The client completed its call with 0, the server's entries of it are still to come."""
    c = tmp_path / "client.jsonl"
    c.write_bytes(lines(client(0, "a") + client(1, "b")))
    held.write_bytes(lines(server(0, "a")))
    report = check_files([c, held])
    assert [(v.kind, v.call_id) for v in report.violations] == [("unknown_to_server", "b")], report.summary()
    why = report.shown_not_judged()
    assert why is not None and why.startswith(f"{held} is open for writing"), report.summary()


def test_the_operations_page_says_what_check_does_with_a_reused_id(tmp_path: Path) -> None:
    """docs/operations.md said a second lifecycle under one id is reported as an entry after
    End; `check` now says NOT JUDGED naming the ids used again, as the page must."""
    c, s = tmp_path / "client.jsonl", tmp_path / "server.jsonl"
    c.write_bytes(lines(client(0, "same") + client(100, "same")))
    s.write_bytes(lines(server(0, "same") + server(100, "same")))
    done = cli("check", str(c), str(s))
    assert done.returncode == 1 and "NOT JUDGED: 1 call id is used by more than one call" in done.stdout, done.stdout
    assert "after_end" not in done.stdout
    page = (ROOT / "docs" / "operations.md").read_text()
    section = " ".join(page.split("## A call id sent twice")[1].split("\n## ")[0].split())
    assert "entry after End" not in section and "NOT JUDGED (exit 1), naming how many ids" in section, section


def test_a_log_a_reader_holds_open_is_not_taken_for_one_being_written(tmp_path: Path) -> None:
    """`tail -f server.jsonl` (open for reading) beside a server that was stopped: its calls left
    in flight fail; only a writer's hold makes them NOT JUDGED."""
    c, s = tmp_path / "client.jsonl", tmp_path / "server.jsonl"
    c.write_bytes(lines(client(0, "a") + client(1, "b")[:2]))
    s.write_bytes(lines(server(0, "a") + server(1, "b")[:1]))
    with holding(s, "rb"):
        report = check_files([c, s])
    assert not report.live and report.shown_not_judged() is None and "FAILED: 2 violations" in report.summary()


def test_report_gives_checks_verdict_on_a_log_still_being_written(tmp_path: Path, held: Path) -> None:
    """`report` reads the logs as `check` does (merged by time): its verdict on a log a running
    server still writes is check's NOT JUDGED too, not FAILED on the calls that server holds."""
    c = tmp_path / "client.jsonl"
    c.write_bytes(lines(client(0, "a") + client(1, "b")[:2]))
    held.write_bytes(lines(server(0, "a") + server(1, "b")[:1]))
    checked = cli("check", str(c), str(held))
    assert checked.returncode == 1 and f"NOT JUDGED: {held} is open for writing" in checked.stdout, checked.stdout
    done = cli("report", str(c), str(held), "--html", str(tmp_path / "r.html"), "--json", str(tmp_path / "r.json"))
    assert done.returncode == 1, done
    assert done.stdout.strip().startswith(f"{tmp_path / 'r.html'}: 2 calls, check NOT JUDGED ({held} is open for "
                                          "writing by process"), done.stdout
    assert f"callstate report: warning: {held} is open for writing" in done.stderr, done.stderr
    page = orjson.loads((tmp_path / "r.json").read_bytes())["check"]
    assert page["verdict"] == "NOT JUDGED" and page["ok"] is False and page["violations"] == 2, page


def test_the_load_page_lists_the_reports_new_reasons_for_not_judged(tmp_path: Path) -> None:
    """docs/load.md: "The page's verdict is the command's: ... NOT JUDGED with the reason (...)":
    the list must hold the reasons this session added (ids used again, a log still written)."""
    c, s = tmp_path / "client.jsonl", tmp_path / "server.jsonl"
    c.write_bytes(lines(client(0, "same") + client(100, "same")))
    s.write_bytes(lines(server(0, "same") + server(100, "same")))
    done = cli("report", str(c), str(s), "--html", str(tmp_path / "r.html"))
    assert done.returncode == 1 and "check NOT JUDGED (1 call id is used by more than one call" in done.stdout, done
    page = " ".join((ROOT / "docs" / "load.md").read_text().split())
    reasons = page.split("The page's verdict is the command's: OK, FAILED, or NOT JUDGED with the reason (")[1]
    reasons = reasons.split("; the JSON's")[0]
    assert "call ids a later call used again" in reasons and "a log still being written" in reasons, reasons
