"""Audit of `callstate conformance` as a first-time user meets it: real nginx, real `callstate
serve`, absurd options, outputs that cannot be written, a proxy that does not forward pipes."""

from __future__ import annotations

import os
import shutil
import socket
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import orjson
import pytest

from callstate.cli.conformance.properties import PIPE_CANCEL, PROPERTIES
from tests.conftest import ServerProcess, cli
from tests.middleboxes import free_port, readme_nginx_server, start_nginx

needs_nginx = pytest.mark.skipif(shutil.which("nginx") is None,
                                 reason="nginx is not installed (tools/system-deps.sh installs it)")

# Quick settings for the runs through nginx; generous bounds, so a busy 2-core machine passes.
QUICK = ("--calls", "2", "--concurrency", "2", "--hold-seconds", "0.5", "--streams", "10", "--max-bytes", "65536",
         "--cancel-bound-ms", "5000", "--wait", "30")


def one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


def rows(report: Path, path: str) -> dict[str, dict[str, Any]]:
    return {r["property"]: r for r in orjson.loads(report.read_bytes())["rows"][path]}


def test_small_bytes_over_the_largest_reply_is_a_usage_error(refused_target: str) -> None:
    """--small-bytes past the largest reply was taken, and the first call's script refused by the
    client raised a traceback (exit 1) in the middle of the run; now one line, exit 2, before it."""
    res = cli("conformance", "--proxy", refused_target, "--serve-port", "0", "--small-bytes", "99999999")
    assert res.returncode == 2, res.stdout + res.stderr
    assert "--small-bytes 99999999 is over the largest reply" in one_line(res.stderr)


def test_unreachable_names_why_refused_or_tls(tmp_path: Path, server: ServerProcess, refused_target: str) -> None:
    """"no connection within 5 s" alone hid the reason every other command gives: refused, or
    --tls-ca against a plaintext server."""
    refused = cli("conformance", "--server", server.target, "--proxy", refused_target)
    assert refused.returncode == 2
    line = one_line(refused.stderr)
    assert "cannot reach the proxy" in line and "Connection refused" in line, line
    from tests.certs import make_tls_files
    tls = make_tls_files(tmp_path / "tls")
    plain = cli("conformance", "--server", server.target, "--proxy", server.target, "--tls-ca", str(tls.ca))
    assert plain.returncode == 2
    line = one_line(plain.stderr)
    assert "cannot reach the callstate server" in line and "does not speak TLS" in line, line


@needs_nginx
@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="no /dev/full to make a write fail")
def test_a_report_that_cannot_be_written_is_one_line_and_the_junit_is_still_written(tmp_path: Path) -> None:
    """A full disk at the end of a run through nginx: the write of --report raised a traceback
    (exit 1) and --junit-xml was never written. Now one line naming the file and why, exit 2
    (what CI reads is missing), the table printed, and the JUnit whole."""
    upstream = free_port()
    proxy = start_nginx(tmp_path, free_port(), upstream)
    junit = tmp_path / "junit.xml"
    try:
        res = cli("conformance", "--serve-port", str(upstream), "--proxy", proxy.target, *QUICK,
                  "--report", "/dev/full", "--junit-xml", str(junit), timeout=400)
    finally:
        proxy.stop()
    assert res.returncode == 2, res.stdout + res.stderr
    assert one_line(res.stderr) == "callstate conformance: --report /dev/full: cannot write it (No space left on device)"
    assert "conformance: OK" in res.stdout, res.stdout
    cases = ET.parse(junit).getroot().findall(".//testcase")
    assert len(cases) == 2 * len(PROPERTIES) and not ET.parse(junit).getroot().findall(".//failure")


@needs_nginx
def test_pipes_the_proxy_never_forwards_are_not_in_flight_on_the_server(tmp_path: Path) -> None:
    """nginx sends PipeOut nowhere (502): the pipe-cancel row said "N in flight" and "N of N
    cancels never reached the server" of pipes the server never had. Now they are counted as
    never reaching the server, and nothing is in flight."""
    upstream, dead = free_port(), free_port()
    block = readme_nginx_server().replace(
        "    location / {", f"    location = /callstate.v1.Emulator/PipeOut {{ grpc_pass grpc://127.0.0.1:{dead}; }}\n"
                           "    location / {", 1)
    assert "PipeOut" in block
    proxy = start_nginx(tmp_path, free_port(), upstream, block)
    report = tmp_path / "report.json"
    try:
        res = cli("conformance", "--serve-port", str(upstream), "--proxy", proxy.target, *QUICK, "--wait", "3",
                  "--only", PIPE_CANCEL, "--report", str(report), timeout=400)   # the other pipe rows only wait
    finally:
        proxy.stop()
    assert res.returncode == 1, res.stdout + res.stderr
    row = rows(report, "proxy")[PIPE_CANCEL]
    assert row["verdict"] == "FAIL", row
    assert row["in_flight"] == 0 and row["figures"].endswith("; 0 in flight"), row
    assert row["never_dispatched"] == row["calls"] == 4, row
    assert "4 of 4 calls never reached the server" in row["note"] and "cancels never" not in row["note"], row
    assert "left in flight" not in row["note"], row


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@needs_nginx
@pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback (::1) on this host")
def test_serve_bind_ipv6_loopback(tmp_path: Path) -> None:
    """--serve-bind ::1 started the server, then conformance looked for it at "::1:PORT" (no
    brackets) and gave up: "cannot reach the callstate server". nginx forwards to [::1]."""
    upstream = free_port()
    block = readme_nginx_server().replace("grpc://127.0.0.1:50051;", f"grpc://[::1]:{upstream};")
    proxy = start_nginx(tmp_path, free_port(), upstream, block)
    report = tmp_path / "report.json"
    try:
        res = cli("conformance", "--serve-port", str(upstream), "--serve-bind", "::1", "--proxy", proxy.target,
                  *QUICK, "--report", str(report), timeout=400)
    finally:
        proxy.stop()
    assert res.returncode == 0, res.stdout + res.stderr
    assert orjson.loads(report.read_bytes())["upstream"] == f"[::1]:{upstream}"
    assert f"direct to [::1]:{upstream}" in res.stdout


class Terminal:
    """A command whose stderr is a pseudo-terminal (progress lines are shown only on one), read
    by a thread as it comes."""

    def __init__(self, *args: str) -> None:
        import pty
        import subprocess
        import sys
        import threading
        self.parent, child = pty.openpty()
        self.proc = subprocess.Popen([sys.executable, "-m", "callstate", *args], stdout=subprocess.DEVNULL,
                                     stderr=child)
        os.close(child)
        self.text = ""
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while True:
            try:
                chunk = os.read(self.parent, 4096)
            except OSError:   # EIO: the child closed the terminal
                return
            if not chunk:
                return
            self.text += chunk.decode(errors="replace")

    def wait_for(self, words: str, timeout: float) -> None:
        import time
        deadline = time.monotonic() + timeout
        while words not in self.text:
            assert self.proc.poll() is None and time.monotonic() < deadline, f"no {words!r}: {self.text}"
            time.sleep(0.05)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(30)
        self._reader.join(10)
        os.close(self.parent)


def _children(pid: int) -> list[int]:
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(proc.name))
        except (OSError, ValueError, IndexError):
            continue
    return found


@needs_nginx
def test_a_stalled_proxy_shows_the_row_still_running_and_ctrl_c_keeps_the_rows(tmp_path: Path) -> None:
    """nginx SIGSTOPped mid-run: every call through it waits --wait, so a row takes minutes
    (330 s each at the defaults), and the terminal showed nothing until the row ended. Now a
    line every 10 s names the row still running; Ctrl-C then ends the run at once with 130 and
    the rows judged so far in the report."""
    import signal
    upstream = free_port()
    proxy = start_nginx(tmp_path, free_port(), upstream)
    report = tmp_path / "report.json"
    stopped: list[int] = []
    term = Terminal("conformance", "--serve-port", str(upstream), "--proxy", proxy.target, *QUICK,
                    "--report", str(report))
    try:
        term.wait_for("[proxy 1/20] complete-small pass", 300)
        stopped = [proxy.proc.pid, *_children(proxy.proc.pid)]   # the master and its worker
        for pid in stopped:
            os.kill(pid, signal.SIGSTOP)
        term.wait_for(" still running (10 s", 200)
        term.proc.send_signal(signal.SIGINT)
        assert term.proc.wait(60) == 130, term.text
    finally:
        for pid in stopped:
            os.kill(pid, signal.SIGCONT)
        term.close()
        proxy.stop()
    assert "interrupted by SIGINT" in term.text
    data = orjson.loads(report.read_bytes())
    assert data["ok"] is False and data["error"] == "interrupted by SIGINT before the run ended"
    assert len(data["rows"]["direct"]) == 17 and data["rows"]["proxy"][0]["property"] == "complete-small", data["rows"]


@pytest.mark.parametrize("args, words", [
    (("--hold-seconds", "700"), "--hold-seconds 700 is over the longest delay a script may ask for (600 s)"),
    (("--hold-seconds", "3", "--max-hold", "2"), "--max-hold 2 would end the held calls before their --hold-seconds 3"),
])
def test_hold_settings_the_run_cannot_keep_are_usage_errors(args: tuple[str, ...], words: str,
                                                             refused_target: str) -> None:
    """--hold-seconds past the longest script delay raised a traceback when the held calls
    started; a --max-hold under it let the server end every held call, on the direct path too."""
    res = cli("conformance", "--proxy", refused_target, "--serve-port", "0", *args)
    assert res.returncode == 2, res.stdout + res.stderr
    assert words in one_line(res.stderr)


@needs_nginx
def test_a_hold_past_nginxs_read_timeout_is_held_by_the_server_serve_port_starts(tmp_path: Path) -> None:
    """What the docs tell a user to do: --hold-seconds above nginx's grpc_read_timeout (60 s).
    The server --serve-port started kept its --max-hold of 60 and ended every held call first,
    so the baseline failed too (1460). Now that server's max hold is past the hold: read from
    the running server's own command line (the held row itself would take over a minute; the
    `--server` case below shows the row naming a max hold that ends its calls)."""
    import signal
    upstream = free_port()
    proxy = start_nginx(tmp_path, free_port(), upstream)
    term = Terminal("conformance", "--serve-port", str(upstream), "--proxy", proxy.target, *QUICK,
                    "--hold-seconds", "61")
    try:
        term.wait_for("[direct 1/20] complete-small pass", 300)   # its server is up and answering
        [server] = [pid for pid in _children(term.proc.pid)
                    if b"serve" in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")]
        argv = Path(f"/proc/{server}/cmdline").read_bytes().decode().split("\0")
        assert float(argv[argv.index("--max-hold") + 1]) > 61, argv
        term.proc.send_signal(signal.SIGINT)
        assert term.proc.wait(60) == 130, term.text
    finally:
        term.close()
        proxy.stop()


def test_held_calls_a_servers_max_hold_ends_say_so(tmp_path: Path) -> None:
    """--server, whose --max-hold conformance cannot set: the held row said only "1460
    RPC_S_TIMEOUT, before the 3 s hold ended"; now it names the server's --max-hold."""
    from tests.conftest import start_server
    srv = start_server(tmp_path, "--max-hold", "2")
    report = tmp_path / "report.json"
    try:
        res = cli("conformance", "--server", srv.target, "--proxy", srv.target, *QUICK, "--hold-seconds", "3",
                  "--report", str(report), timeout=300)
    finally:
        srv.stop()
    assert res.returncode == 1, res.stdout + res.stderr
    held = rows(report, "direct")["held"]
    assert held["verdict"] == "FAIL" and "the server's --max-hold ended it" in held["note"], held
