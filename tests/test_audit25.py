"""What a command writes never replaces what was recorded: an output named twice, or named as
a log the command reads (report's LOG, load's --log-file, serve's --log-file), is refused
before anything is written (exit 2, one line naming both); an output of a run that fails
before its end is not left behind empty; reports are written whole, readable as any new file."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest

from callstate.lifecycle import PUSH
from tests.conftest import EVIDENCE_WAIT, ServerProcess, cli, start_server

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def log(shared_server: ServerProcess, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A client state log of one real call (the shared server has the other side)."""
    path = tmp_path_factory.mktemp("logs") / "client.jsonl"
    result = cli("call", "--target", shared_server.target, "--log-file", str(path), timeout=EVIDENCE_WAIT * 3)
    assert result.returncode == 0, result.stderr
    return path


def one_line(result: object) -> str:
    err = result.stderr  # type: ignore[attr-defined]
    assert "Traceback" not in err, err
    [line] = err.splitlines()
    return line


def new_file_mode() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def test_report_never_writes_over_a_log_it_reads(log: Path, tmp_path: Path) -> None:
    kept = tmp_path / "client.jsonl"
    kept.write_bytes(log.read_bytes())
    for out in (["--html", str(kept)], ["--html", str(tmp_path / "r.html"), "--json", str(kept)]):
        result = cli("report", str(kept), *out, cwd=tmp_path)
        assert result.returncode == 2, result.stderr
        assert f"is the same file as the log {kept}" in one_line(result)
        assert kept.read_bytes() == log.read_bytes()
    assert not (tmp_path / "r.html").exists()


def test_report_html_and_json_in_one_file_is_refused(log: Path, tmp_path: Path) -> None:
    out = tmp_path / "r.html"
    result = cli("report", str(log), "--html", str(out), "--json", "./r.html", cwd=tmp_path)
    assert result.returncode == 2
    assert one_line(result) == f"callstate report: --json ./r.html is the same file as --html {out}: writing one " \
                               "would replace the other"
    assert not out.exists()


def test_report_that_cannot_read_its_logs_leaves_no_empty_report(tmp_path: Path) -> None:
    html, json = tmp_path / "r.html", tmp_path / "r.json"
    result = cli("report", str(tmp_path / "missing.jsonl"), "--html", str(html), "--json", str(json))
    assert result.returncode == 2 and "missing.jsonl" in one_line(result)
    assert not html.exists() and not json.exists()


def test_report_files_are_readable_as_any_new_file(log: Path, tmp_path: Path) -> None:
    html, json = tmp_path / "r.html", tmp_path / "r.json"
    result = cli("report", str(log), "--html", str(html), "--json", str(json), "--allow-one-side")
    assert result.returncode in (0, 1), result.stderr
    assert html.read_bytes().startswith(b"<!DOCTYPE html>")
    for path in (html, json):   # mkstemp's 0600 would hide a CI's report from its publisher
        assert path.stat().st_mode & 0o777 == new_file_mode(), oct(path.stat().st_mode)


def test_load_never_writes_its_report_over_its_state_log(tmp_path: Path, refused_target: str) -> None:
    state_log = tmp_path / "run.jsonl"
    state_log.write_bytes(b"recorded\n")
    for flag in ("--report", "--html"):
        result = cli("load", "--target", refused_target, "--calls", "1", "--log-file", str(state_log), flag,
                     "./run.jsonl", cwd=tmp_path)
        assert result.returncode == 2
        assert one_line(result) == f"callstate load: {flag} ./run.jsonl is the same file as --log-file {state_log}: " \
                                   "writing one would replace the other"
        assert state_log.read_bytes() == b"recorded\n"


def test_load_that_cannot_reach_its_server_leaves_no_empty_reports(tmp_path: Path, refused_target: str) -> None:
    html, json = tmp_path / "load.html", tmp_path / "load.json"
    result = cli("load", "--target", refused_target, "--calls", "1", "--html", str(html), "--report", str(json),
                 timeout=EVIDENCE_WAIT * 3)
    assert result.returncode == 2 and "cannot reach" in one_line(result)
    assert not html.exists() and not json.exists()


def test_load_report_is_readable_as_any_new_file(shared_server: ServerProcess, tmp_path: Path) -> None:
    json = tmp_path / "load.json"
    result = cli("load", "--target", shared_server.target, "--calls", "4", "--cancel", "none", "--mix",
                 "complete=1", "--report", str(json), timeout=EVIDENCE_WAIT * 3)
    assert result.returncode == 0, result.stderr
    assert json.stat().st_mode & 0o777 == new_file_mode(), oct(json.stat().st_mode)


def test_serve_never_writes_its_port_over_its_state_log(tmp_path: Path) -> None:
    state_log = tmp_path / "server.jsonl"
    state_log.write_bytes(b"recorded\n")
    result = cli("serve", "--port", "0", "--log-file", str(state_log), "--port-file", "server.jsonl", cwd=tmp_path)
    assert result.returncode == 2
    assert one_line(result) == f"callstate serve: --port-file server.jsonl is the same file as --log-file " \
                               f"{state_log}: writing one would replace the other"
    assert state_log.read_bytes() == b"recorded\n"


def test_conformance_report_and_junit_in_one_file_is_refused(tmp_path: Path, refused_target: str) -> None:
    result = cli("conformance", "--serve-port", "0", "--proxy", refused_target, "--report", "out.xml",
                 "--junit-xml", str(tmp_path / "out.xml"), cwd=tmp_path)
    assert result.returncode == 2
    assert "--junit-xml" in one_line(result) and "is the same file as --report out.xml" in one_line(result)
    assert not (tmp_path / "out.xml").exists()


def test_conformance_files_are_readable_as_any_new_file(tmp_path: Path, refused_target: str) -> None:
    """Written even when the run cannot start (here: no proxy), and with a new file's mode."""
    report, junit = tmp_path / "c.json", tmp_path / "c.xml"
    result = cli("conformance", "--serve-port", "0", "--proxy", refused_target, "--report", str(report),
                 "--junit-xml", str(junit), timeout=EVIDENCE_WAIT * 3)
    assert result.returncode == 2 and "cannot reach the proxy" in one_line(result)
    for path in (report, junit):
        assert path.stat().st_mode & 0o777 == new_file_mode(), oct(path.stat().st_mode)


def test_a_report_through_a_symbolic_link_lands_in_its_file(log: Path, tmp_path: Path) -> None:
    real, link = tmp_path / "real.json", tmp_path / "link.json"
    real.write_bytes(b"old\n")
    link.symlink_to(real)
    result = cli("report", str(log), "--html", str(tmp_path / "r.html"), "--json", str(link), "--allow-one-side")
    assert result.returncode in (0, 1), result.stderr
    assert link.is_symlink() and real.read_bytes().startswith(b"{")


def test_a_report_into_a_fifo_is_written_into_it_not_renamed_over_it(tmp_path: Path) -> None:
    """/dev/stdout and /dev/null are no regular files either: renaming a file over one (as root)
    would replace the device itself. Shown with a FIFO of the test's own."""
    import stat
    import threading

    from callstate.cli.outputs import writable
    from callstate.files import write_atomically

    fifo = tmp_path / "out.fifo"
    os.mkfifo(fifo)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()), daemon=True)
    reader.start()
    assert writable(str(fifo)) == ""
    write_atomically(fifo, b"the report\n")
    reader.join(EVIDENCE_WAIT)
    assert got == [b"the report\n"]
    assert stat.S_ISFIFO(fifo.stat().st_mode)


def test_the_same_device_for_two_outputs_loses_nothing_and_is_allowed() -> None:
    from callstate.cli.outputs import clash

    assert clash((("--report", os.devnull), ("--html", os.devnull))) == ""


@pytest.mark.parametrize("argv", [["load", "--target", "REFUSED", "--calls", "99999999999999"],
                                  ["serve", "--port", "0", "--journal-size", "9999999999"]])
def test_an_integer_bound_is_named_in_full(argv: list[str], refused_target: str) -> None:
    """It said "at most 2.14748e+09": a rounded figure, below the real bound."""
    result = cli(*(refused_target if a == "REFUSED" else a for a in argv))
    assert result.returncode == 2
    assert "must be at most 2147483647 " in one_line(result), result.stderr


def test_a_log_named_twice_is_checked_once(log: Path, shared_server: ServerProcess, tmp_path: Path) -> None:
    """A folder and one of its files, or ./x and x: read twice, every call in it ended twice
    and the check FAILED on a log that is fine."""
    folder = tmp_path / "logs"
    folder.mkdir()
    (folder / "client.jsonl").write_bytes(log.read_bytes())
    once = cli("check", "--allow-one-side", str(folder))
    twice = cli("check", "--allow-one-side", str(folder), str(folder / "client.jsonl"), "logs/client.jsonl",
                cwd=tmp_path)
    assert once.returncode == 0, once.stdout
    assert twice.returncode == 0, twice.stdout
    assert twice.stdout == once.stdout
    report = cli("report", "--allow-one-side", str(folder), "logs/client.jsonl", "--html", str(tmp_path / "r.html"),
                 cwd=tmp_path)
    assert report.returncode == 0 and "check OK" in report.stdout, report.stdout


def test_health_of_an_unknown_service_names_it(shared_server: ServerProcess) -> None:
    result = cli("health", "--target", shared_server.target, "--service", "no.such.Service")
    assert result.returncode == 1
    assert one_line(result) == f"callstate health: {shared_server.target}: NOT_FOUND: it has no health status " \
                               "for --service 'no.such.Service'"


def test_load_paths_count_the_cancels_that_happened(shared_server: ServerProcess, tmp_path: Path) -> None:
    """A cancel drawn for a call that ended before it came (here: 30 s after start, for calls
    that complete at once) is no path the call took: the paths line counted it as a cancel,
    so it disagreed with the client's log and with the live view's cancels."""
    import orjson

    from callstate.lifecycle import CAN, ENTER

    report, state_log = tmp_path / "load.json", tmp_path / "client.jsonl"
    result = cli("load", "--target", shared_server.target, "--calls", "40", "--concurrency", "4", "--mix",
                 "complete=1", "--cancel", "non-abortive=100", "--cancel-at", "before-start,after:30", "--seed", "3",
                 "--report", str(report), "--log-file", str(state_log), timeout=EVIDENCE_WAIT * 3)
    assert result.returncode == 0, result.stdout + result.stderr
    paths = orjson.loads(report.read_bytes())["paths"]
    cancelled = {e["call_id"] for e in map(orjson.loads, state_log.read_bytes().splitlines())
                 if e["state"] == CAN and e["event"] == ENTER}
    assert 0 < len(cancelled) < 40   # both points were drawn
    assert paths["cancel-non-abortive"] == paths["cancel-at-before-start"] == len(cancelled), paths
    assert "cancel-at-after" not in paths, paths


@pytest.fixture(scope="module")
def short_hold_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    srv = start_server(tmp_path_factory.mktemp("short"), "--max-hold", "2", "--no-state-log")
    yield srv
    srv.stop()


@pytest.mark.parametrize("kind", ["in", "both"])
def test_a_paced_pipe_ends_when_the_server_ends_it(short_hold_server: ServerProcess, kind: str) -> None:
    """--interval paces the caller's pushes; the wait between them used to outlive the call
    (here: the server's --max-hold ends it after 2 s, while the caller waits 1e9 s)."""
    result = cli("call", "--target", short_hold_server.target, "--pipe", kind, "--outcome", "hold", "--interval",
                 "1e9", timeout=EVIDENCE_WAIT * 3)
    assert result.returncode == 1, result.stderr
    assert result.stderr.startswith("final: 1460 RPC_S_TIMEOUT"), result.stderr


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_paced_pipe_ends_on_ctrl_c(shared_server: ServerProcess, tmp_path: Path, sig: int) -> None:
    """Ctrl-C or SIGTERM cancels the call (abortive, 1818) and the command ends: the wait
    between pushes ignored both and the command never ended."""
    out = tmp_path / "call.out"
    with open(out, "wb") as f:
        proc = subprocess.Popen([sys.executable, "-m", "callstate", "call", "--target", shared_server.target,
                                 "--pipe", "in", "--outcome", "hold", "--interval", "1e9"],
                                stdout=f, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        deadline = time.monotonic() + EVIDENCE_WAIT * 3
        while PUSH not in out.read_text():   # the state line of the pipe that has started
            assert proc.poll() is None and time.monotonic() < deadline, out.read_text()
            time.sleep(0.02)
        proc.send_signal(sig)
        assert proc.wait(EVIDENCE_WAIT * 3) == 1, out.read_text()
        assert "final: 1818 RPC_S_CALL_CANCELLED" in out.read_text()
    finally:
        proc.kill()
        proc.wait()


def test_the_port_file_appears_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A harness that reads the port file as soon as it exists never reads it empty: the port is
    written beside it and renamed over it (seen here at the rename), through a symbolic link to
    the file it names, and into a FIFO in place."""
    from callstate.server import app

    seen: list[tuple[bool, str]] = []
    real_replace = os.replace

    def spy(src: str, dst: Path) -> None:
        seen.append((Path(dst).exists(), Path(src).read_text()))
        real_replace(src, dst)
    monkeypatch.setattr(os, "replace", spy)
    port_file = tmp_path / "port"
    app.write_port_file(str(port_file), 50123)
    assert seen == [(False, "50123\n")] and port_file.read_text() == "50123\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["port"]   # no temporary file left behind
    assert port_file.stat().st_mode & 0o777 == new_file_mode()   # as open() makes it

    link = tmp_path / "link"
    link.symlink_to(port_file)
    app.write_port_file(str(link), 50124)
    assert link.is_symlink() and port_file.read_text() == "50124\n"

    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    got: list[str] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_text()), daemon=True)
    reader.start()
    app.write_port_file(str(fifo), 50125)
    reader.join(10)
    assert got == ["50125\n"] and stat.S_ISFIFO(fifo.stat().st_mode)
