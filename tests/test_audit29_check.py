"""Audit 29: `callstate check` and `callstate report` on real logs, damaged and awkward: every
statement they make is true and the two agree. Logs of two different runs are never judged OK;
the report counts a call under the final code `check` gives it; a folder that cannot be read is
named so (not as "no state log in it"); a log's text never reaches the terminal as control
characters; the side counts add up to the entries when some are bad, and a call id that is not
text is named; the report shows a bad entry's own line; `report --json`'s `ok` is its verdict."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterator

import orjson
import pytest

from callstate.lifecycle import CLIENT, END, ENTER
from tests import browser
from tests.conftest import cli, read_entries, start_server

pytestmark = pytest.mark.timeout(300)


class Runs:
    """Two real runs, each a `callstate serve` of its own and a `callstate load` against it; the
    servers are stopped (SIGTERM: every call ended, the log flushed) before the logs are read."""

    def __init__(self, tmp: Path) -> None:
        self.client_a, self.server_a = self._run(tmp, "a", "--calls", "80", "--concurrency", "8", "--seed", "29")
        # run B: every call ends with a code only a server's handler gives (an abort, a fatal)
        self.client_b, self.server_b = self._run(tmp, "b", "--calls", "30", "--concurrency", "4",
                                                 "--mix", "abort=50,fatal=50", "--cancel", "none")

    @staticmethod
    def _run(tmp: Path, name: str, *load: str) -> tuple[Path, Path]:
        client = tmp / f"client-{name}.jsonl"
        srv = start_server(tmp, "--max-hold", "20", name=f"server-{name}")
        try:
            done = cli("load", "--target", srv.target, "--log-file", str(client), *load, timeout=120)
            assert done.returncode == 0, done.stdout + done.stderr
        finally:
            assert srv.stop() == 0, srv.stderr.read_text()
        return client, srv.log


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runs]:
    yield Runs(tmp_path_factory.mktemp("audit29"))


def check_json(*logs: Path | str) -> dict[str, Any]:
    done = cli("check", "--json", *map(str, logs))
    assert done.returncode in (0, 1), done.stderr
    return orjson.loads(done.stdout)


def report_json(tmp: Path, *logs: Path | str) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    html, out = tmp / "report.html", tmp / "report.json"
    done = cli("report", *map(str, logs), "--html", str(html), "--json", str(out))
    assert done.returncode in (0, 1), done.stderr
    return done, json.loads(out.read_text())


def write_lines(path: Path, entries: list[dict[str, Any]]) -> Path:
    path.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in entries))
    return path


def page_text(html: Path) -> str:
    return " ".join(re.sub(r"<[^>]+>", " ", html.read_text()).split())


# -- logs of two different runs: never a false OK ----------------------------------------------------

def test_a_client_log_and_a_server_log_of_different_runs_are_not_judged_ok(runs: Runs, tmp_path: Path) -> None:
    """Run B's client log with run A's server log: no call of one is in the other. It used to say
    `OK: every invariant holds` (exit 0), having compared nothing: run B's calls ended with aborts
    and fatals, codes only a server gives, yet no server log given has them."""
    same = cli("check", str(runs.client_b), str(runs.server_b))   # the right pair: judged, and OK
    assert same.returncode == 0 and same.stdout.splitlines()[-1] == "OK: every invariant holds", same.stdout
    mixed = cli("check", str(runs.client_b), str(runs.server_a))
    assert mixed.returncode == 1, mixed.stdout
    assert not any(line.startswith("OK") for line in mixed.stdout.splitlines()), mixed.stdout
    last = mixed.stdout.splitlines()[-1]
    assert last.startswith("NOT JUDGED: the client and server logs share no call"), mixed.stdout
    [why] = mixed.stderr.splitlines()
    assert why.startswith("callstate check: the client and server logs share no call"), why
    data = check_json(runs.client_b, runs.server_a)
    assert data["ok"] is False and data["both_sides"] == 0 and data["violations"] == 0, data
    assert check_json(runs.client_b, runs.server_b)["both_sides"] == 30
    done, report = report_json(tmp_path, runs.client_b, runs.server_a)
    assert done.returncode == 1 and "check NOT JUDGED (the client and server logs share no call" in done.stdout
    assert report["check"]["verdict"] == "NOT JUDGED" and report["check"]["ok"] is False


# -- the report's final codes are check's --------------------------------------------------------------

def test_report_counts_each_call_under_the_final_code_check_gives_it(runs: Runs, tmp_path: Path) -> None:
    """A client log cut off mid-run (its writer killed): calls the server ended but the client
    never did. `check` counts them under the server's code; the report used to list them as
    `not ended`, so its rows per code disagreed with check's for the same logs."""
    client = read_entries(runs.client_a)
    cut = write_lines(tmp_path / "client-cut.jsonl", client[:len(client) // 2])
    server_ended = {e["call_id"] for e in read_entries(runs.server_a) if e["state"] == END and e["event"] == ENTER}
    kept = read_entries(cut)
    client_ended = {e["call_id"] for e in kept if e["state"] == END and e["event"] == ENTER}
    cut_off = {e["call_id"] for e in kept} - client_ended
    assert cut_off & server_ended, "the cut left no call the server ended and the client did not"
    checked = check_json(cut, runs.server_a)
    done, report = report_json(tmp_path, cut, runs.server_a)
    assert done.returncode == 1   # not_ended: the cut calls on the client side
    assert {str(row["code"]): row["count"] for row in report["by_code"]} == checked["by_code"]
    assert report["calls"] - report["ended"] == checked["no_final_code"]
    assert report["calls"] == checked["calls"] and sum(checked["by_code"].values()) == report["ended"]


# -- bad input: one clear line ---------------------------------------------------------------------------

def as_other_user() -> list[str]:
    """The prefix that runs a command as a user a file's mode applies to (root reads anything)."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root without setpriv: a mode cannot keep a folder from this user")
    return [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups"]


@pytest.mark.parametrize("mode", [0o000, 0o311], ids=["no-access", "enter-only"])
def test_a_folder_that_cannot_be_read_is_named_so_not_called_empty(runs: Runs, mode: int) -> None:
    """It used to say `a folder with no state log in it (no *.jsonl file)`: the folder has one."""
    prefix = as_other_user()
    with tempfile.TemporaryDirectory(prefix="audit29-") as top:   # not under pytest's private tmp
        os.chmod(top, 0o755)
        folder = Path(top) / "logs"
        folder.mkdir()
        shutil.copy(runs.server_a, folder / "server.jsonl")
        os.chmod(folder / "server.jsonl", 0o644)
        os.chmod(folder, mode)
        try:
            done = subprocess.run([*prefix, sys.executable, "-m", "callstate", "check", str(folder)],
                                  capture_output=True, text=True, timeout=60)
        finally:
            os.chmod(folder, 0o755)
    assert done.returncode == 2 and done.stdout == "", done.stdout
    assert done.stderr.splitlines() == [f"callstate check: {folder}: the folder cannot be read (Permission denied)"]


# -- a log's text on the terminal ------------------------------------------------------------------------

def test_check_never_prints_a_logs_control_characters_raw(runs: Runs, tmp_path: Path) -> None:
    """A call id with ESC sequences (clear the screen, set the window title) and a C1 CSI: the
    summary names the call with them escaped, and the JSON still reads back the id as logged."""
    evil = "evil\x1b[2J\x1b]0;title\x07\u009b31m"
    entries = read_entries(runs.client_a)
    victim = next(e["call_id"] for e in entries if e["state"] == END)
    damaged = [{**e, "call_id": evil} if e["call_id"] == victim else e for e in entries
               if not (e["call_id"] == victim and e["state"] == END)]   # not_ended names the call
    log = write_lines(tmp_path / "client.jsonl", damaged)
    text = cli("check", str(log), str(runs.server_a))
    assert text.returncode == 1 and "not_ended" in text.stdout, text.stdout
    assert not re.search("[\x00-\x09\x0b-\x1f\x7f-\x9f]", text.stdout), repr(text.stdout)
    assert "evil\\u001b[2J\\u001b]0;title\\u0007\\u009b31m" in text.stdout
    as_json = cli("check", "--json", str(log), str(runs.server_a))
    assert not re.search("[\x00-\x09\x0b-\x1f\x7f-\x9f]", as_json.stdout), repr(as_json.stdout)
    shown = orjson.loads(as_json.stdout)["violations_by_kind"]["not_ended"]["examples"]
    assert [x["call_id"] for x in shown] == [evil]


# -- bad entries: the counts add up, and each one says what is wrong ------------------------------------

@pytest.fixture
def damaged(runs: Runs, tmp_path: Path) -> tuple[Path, str]:
    """Run A's client log with one entry of an unknown side (a typo) and one whose call id is a
    number; returns the log and the call whose side is misspelt."""
    entries = read_entries(runs.client_a)
    entries[0] = {**entries[0], "side": "clinet"}
    entries[5] = {**entries[5], "call_id": 12345}
    return write_lines(tmp_path / "client-damaged.jsonl", entries), entries[0]["call_id"]


def test_side_counts_add_up_to_the_entries_when_some_are_bad(runs: Runs, damaged: tuple[Path, str],
                                                           tmp_path: Path) -> None:
    """`N entries from 2 files (X client, Y server)` left the bad ones out: X + Y != N."""
    log, _ = damaged
    done = cli("check", str(log), str(runs.server_a))
    assert done.returncode == 1 and "bad_entry: 2" in done.stdout, done.stdout
    head = done.stdout.splitlines()[0]
    found = re.fullmatch(r"\d+ calls, (\d+) entries from 2 files \((\d+) client, (\d+) server, (\d+) bad\)", head)
    assert found, head
    total, *parts = map(int, found.groups())
    assert sum(parts) == total and parts[2] == 2, head
    data = check_json(log, runs.server_a)
    assert data["bad_entries"] == 2 and sum(data["by_side"].values()) + data["bad_entries"] == data["entries"]
    _, report = report_json(tmp_path, log, runs.server_a)
    assert report["bad_entries"] == 2
    card = re.search(r'<div class="card"><b>(\d+)</b>log entries(.*?)</div>', (tmp_path / "report.html").read_text())
    assert card and f"{report['by_side'][CLIENT]} client" in card.group(2) and "2 bad" in card.group(2), card


def test_a_call_id_that_is_not_text_is_named_as_the_problem(runs: Runs, damaged: tuple[Path, str]) -> None:
    """It used to read `12345: ...:6: side='client' state='WComp'`: both fine, the id not named."""
    log, _ = damaged
    data = check_json(log, runs.server_a)
    messages = [x["message"] for x in data["violations_by_kind"]["bad_entry"]["examples"]]
    assert f"{log}:6: call_id 12345 is not text" in messages, messages


def test_the_report_shows_a_bad_entrys_own_line_in_its_example(runs: Runs, damaged: tuple[Path, str],
                                                               tmp_path: Path) -> None:
    """The bad_entry example showed the call's client and server histories without the entry
    that was bad (its side is neither): the page now shows it apart, with its side."""
    log, call_id = damaged
    done, report = report_json(tmp_path, log, runs.server_a)
    [kind] = [k for k in report["check"]["kinds"] if k["kind"] == "bad_entry"]
    assert kind["example"]["call_id"] == call_id
    assert [e["side"] for e in kind["example"]["other"]] == ["clinet"]
    page = page_text(tmp_path / "report.html")
    section = page[page.index("bad_entry (2)"):]
    assert "entries of no known side" in section and "side=clinet" in section, section[:2000]


@pytest.mark.skipif(browser.CHROMIUM is None, reason=browser.MISSING)
def test_the_bad_entry_example_renders_in_chromium(runs: Runs, damaged: tuple[Path, str], tmp_path: Path) -> None:
    """The page with the extra table, as a real browser lays it out: the bad line is on it."""
    log, _ = damaged
    report_json(tmp_path, log, runs.server_a)
    shown = browser.render(tmp_path / "report.html", tmp_path)
    assert not shown.console and not shown.requests, (shown.console, shown.requests)
    dom = subprocess.run([browser.CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                          f"--user-data-dir={tmp_path / 'dom-profile'}", "--host-resolver-rules=MAP * ~NOTFOUND",
                          "--dump-dom", (tmp_path / "report.html").resolve().as_uri()],
                         capture_output=True, text=True, timeout=browser.RENDER_TIMEOUT_S, start_new_session=True)
    assert dom.returncode == 0, dom.stderr[-2000:]
    text = " ".join(re.sub(r"<[^>]+>", " ", dom.stdout).split())
    assert "entries of no known side" in text and "side=clinet" in text


# -- report --json: ok is the verdict ------------------------------------------------------------------

def test_report_json_ok_is_false_when_the_run_was_not_judged(runs: Runs, tmp_path: Path) -> None:
    """One side only, or an empty log: `report` exits 1 with NOT JUDGED, and its JSON said
    `"ok": true` where `check --json` says false for the same logs."""
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    for logs in ([runs.server_a], [empty]):
        done, report = report_json(tmp_path, *logs)
        assert done.returncode == 1 and "check NOT JUDGED" in done.stdout, done.stdout
        assert report["check"]["verdict"] == "NOT JUDGED"
        assert report["check"]["ok"] is False is check_json(*logs)["ok"]
    done, report = report_json(tmp_path, runs.server_a, runs.client_a)   # both sides: judged, OK
    assert done.returncode == 0 and "check OK" in done.stdout, done.stdout + done.stderr
    assert report["check"]["ok"] is True is check_json(runs.server_a, runs.client_a)["ok"]


def test_a_line_that_is_not_utf8_is_named_with_its_byte_and_column(runs: Runs, tmp_path: Path) -> None:
    """A log re-saved in Latin-1 (an é in a call id): orjson's message spoke of surrogates at
    column 1, wherever the byte was; the line says which byte and where."""
    lines = runs.client_a.read_bytes().splitlines(keepends=True)
    column = lines[2].index(b'"call_id":"') + len(b'"call_id":"') + 1
    lines[2] = lines[2].replace(b'"call_id":"', b'"call_id":"\xe9', 1)
    log = tmp_path / "latin1.jsonl"
    log.write_bytes(b"".join(lines))
    for command in ("check", "report"):
        html = ["--html", str(tmp_path / "r.html")] if command == "report" else []
        done = cli(command, str(log), str(runs.server_a), *html)
        assert done.returncode == 2 and done.stdout == "", done.stdout
        assert done.stderr.splitlines() == [f"callstate {command}: {log}:3: not JSON (not UTF-8 text: byte 0xe9 at "
                                            f"column {column})"], done.stderr


def test_a_json_document_given_as_a_log_gets_one_line_and_no_false_warning(runs: Runs, tmp_path: Path) -> None:
    """`check --json`'s own output given back as a log (a report for a log: an easy slip). Its
    first line, `{`, passed for an entry cut short: a warning said its writer stopped mid-line
    and the log was appended to after it, before the error about line 2."""
    document = tmp_path / "check.json"
    document.write_text(cli("check", "--json", str(runs.client_a), str(runs.server_a)).stdout)
    for command in ("check", "report"):
        html = ["--html", str(tmp_path / "r.html")] if command == "report" else []
        done = cli(command, str(document), *html)
        assert done.returncode == 2 and done.stdout == "", done.stdout
        [line] = done.stderr.splitlines()
        assert line.startswith(f"callstate {command}: {document}:1: not JSON ("), line
        assert line.endswith("and line 2 is no entry either: not a JSON-lines state log (one entry per line)?"), line
