"""Every bad flag or value: one line on stderr naming it, a non-zero exit, no traceback, no hang.
And the inputs that are not errors but used to be: a log cut short, a full disk."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import grpc
import orjson
import pytest

from callstate.lifecycle import END
from callstate.v1 import callstate_pb2 as pb
from callstate.v1 import callstate_pb2_grpc as pb_grpc
from tests.conftest import ServerProcess, cli, start_server, states

pytestmark = pytest.mark.timeout(60)
# where a call would go: the test's refused_target (a port it holds, never listening), filled in like
# {tmp}; bad usage must be caught before any call (a fixed port, 9, may be someone's server)
UNREACHABLE = "{refused}"


def run_cli(*args: str | bytes, cwd: Path | None = None, timeout: float = 20) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "callstate", *args], capture_output=True, timeout=timeout, cwd=cwd,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})


def fifo(tmp: Path) -> str:
    path = tmp / "pipe.jsonl"
    os.mkfifo(path)
    return str(path)


def typed_wrong(tmp: Path) -> str:
    return str(tmp / "missing.jsonl")


BAD = [
    # (argv, with {tmp} filled in; what stderr must name)
    (["call", "--target", UNREACHABLE, "--dispatch-delay", "nan"], "--dispatch-delay"),
    (["call", "--target", UNREACHABLE, "--dispatch-delay", "inf"], "--dispatch-delay"),
    (["call", "--target", UNREACHABLE, "--dispatch-delay", "1e30"], "--dispatch-delay"),
    (["call", "--target", UNREACHABLE, "--reply-bytes", "99999999999999999999"], "--reply-bytes"),
    (["call", "--target", UNREACHABLE, "--reply-bytes", "lots"], "--reply-bytes"),
    (["call", "--target", UNREACHABLE, "--code", "99999999999"], "--code"),
    (["call", "--target", UNREACHABLE, "--code", "0"], "--code"),
    (["call", "--target", UNREACHABLE, "--grpc-status", "99"], "--grpc-status"),
    (["call", "--target", UNREACHABLE, "--grpc-status", "-1"], "--grpc-status"),
    (["call", "--target", UNREACHABLE, "--message", b"caf\xe9"], "--message"),
    (["call", "--target", UNREACHABLE, "--log-file", "{tmp}/no/such/dir/c.jsonl"], "c.jsonl"),
    (["serve", "--port", "0", "--port-file", "/nonexistent/p"], "--port-file"),
    (["serve", "--port", "0", "--log-file", "/nonexistent/s.jsonl"], "--log-file"),
    (["serve", "--abort-code", "0"], "--abort-code"),
    (["serve", "--abort-code", "4294967296"], "--abort-code"),
    (["serve", "--max-reply-bytes", "5000000"], "--max-reply-bytes"),
    (["serve", "--max-hold", "nan"], "--max-hold"),
    (["load", "--target", UNREACHABLE, "--payload", "5000000"], "--payload"),
    (["load", "--target", UNREACHABLE, "--abort-code", "0"], "--abort-code"),
    (["load", "--target", UNREACHABLE, "--abort-code", "-2147483649"], "--abort-code"),
    (["check", "{fifo}"], "not a regular file"),
    (["check", "{tmp}/missing.jsonl"], "missing.jsonl"),
    (["check", "/dev/null"], "not a regular file"),
    # a target with no port would go to gRPC's default, 443, in silence
    (["call", "--target", "127.0.0.1:"], "none given: gRPC would use 443"),
    (["load", "--target", "127.0.0.1:"], "the port must be a number from 1 to 65535"),
    (["watch", "--target", UNREACHABLE, "--target", "::1"], "an IPv6 address goes in brackets"),
    (["health", "--target", ":50051"], "has no host"),
    # a user's method sends --data: --payload was dropped without a word
    (["load", "--target", UNREACHABLE, "--method", "shop.v1.Shop/Charge", "--payload", "10"], "--payload applies"),
    # "-" made a file named "-" in the working directory
    (["load", "--target", UNREACHABLE, "--report", "-"], "give a file name"),
    (["conformance", "--proxy", UNREACHABLE, "--server", UNREACHABLE, "--report", "-"], "give a file name"),
]


@pytest.mark.parametrize("argv,names", BAD, ids=[" ".join(str(a) for a in argv[:1] + argv[-2:]) for argv, _ in BAD])
def test_bad_input_is_one_line_naming_it(tmp_path: Path, argv: list[str | bytes], names: str,
                                         refused_target: str) -> None:
    fill = {"tmp": str(tmp_path), "fifo": fifo(tmp_path) if "{fifo}" in argv else "", "refused": refused_target}
    args = [a.format(**fill) if isinstance(a, str) else a for a in argv]
    result = run_cli(*args, cwd=tmp_path)
    err = result.stderr.decode(errors="replace")
    lines = [line for line in err.splitlines() if line.strip()]
    assert result.returncode != 0, (result.returncode, err)
    assert "Traceback" not in err
    assert len(lines) == 1 and names in lines[0], err


def test_a_non_utf8_payload_is_sent_as_the_bytes_given(shared_server: ServerProcess) -> None:
    result = run_cli("call", "--target", shared_server.target, "--echo", "--payload", b"\xff\xfe\x00"[:2])
    assert result.returncode == 0 and b"reply of 2 bytes" in result.stderr, result.stderr


def test_check_reports_wrong_typed_fields_as_bad_entries(tmp_path: Path) -> None:
    log = tmp_path / "typed.jsonl"
    log.write_bytes(orjson.dumps({"ts": 5, "side": "server", "call_id": "x", "state": "D", "prev": None,
                                  "event": "enter", "move": "dispatch"}) + b"\n"
                    + orjson.dumps({"ts": "2026-11-24T10:00:00.000001Z", "side": "server", "call_id": "x",
                                    "state": "End", "prev": "D", "event": "enter", "move": "fatal", "code": "1726",
                                    "grpc_status": "UNKNOWN"}) + b"\n")
    result = cli("check", str(log))
    assert result.returncode == 1 and "bad_entry" in result.stdout and "Traceback" not in result.stderr


def test_check_warns_about_a_cut_last_line_and_checks_the_rest(tmp_path: Path, shared_server: ServerProcess) -> None:
    with grpc.insecure_channel(shared_server.target) as channel:
        reply = pb_grpc.EmulatorStub(channel).Call(pb.CallRequest(script=pb.Script(outcome=pb.OUTCOME_COMPLETE)))
    entries = shared_server.wait_entries(reply.call_id)
    log = tmp_path / "cut.jsonl"
    lines = [orjson.dumps(e) + b"\n" for e in entries]
    log.write_bytes(b"".join(lines) + lines[0][:25])   # a writer killed mid-line
    result = cli("check", "--allow-one-side", str(log))   # the server's log alone
    assert result.returncode == 0, result.stdout + result.stderr
    assert "cut short" in result.stderr and f"{log}:{len(lines) + 1}" in result.stderr
    assert f"{len(lines)} entries" in result.stdout
    log.write_bytes(b"".join(lines) + b"{not json}\n" + lines[0])   # a bad line inside is still an error
    assert cli("check", str(log)).returncode == 2


def test_load_report_on_a_full_disk_is_a_clear_error(shared_server: ServerProcess) -> None:
    result = cli("load", "--target", shared_server.target, "--calls", "20", "--report", "/dev/full")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "--report /dev/full" in result.stderr and "check: OK" in result.stdout


def test_server_keeps_serving_when_its_state_log_fills_the_disk(tmp_path: Path) -> None:
    srv = start_server(tmp_path, "--log-file", "/dev/full", name="full")
    try:
        for _ in range(3):
            with grpc.insecure_channel(srv.target) as channel:
                reply = pb_grpc.EmulatorStub(channel).Call(pb.CallRequest(script=pb.Script(outcome=pb.OUTCOME_COMPLETE,
                                                                                            reply_bytes=3)), timeout=10)
                assert len(reply.payload) == 3
                history = pb_grpc.JournalStub(channel).GetCall(pb.GetCallRequest(call_id=reply.call_id), timeout=10)
                assert states([{"state": e.state, "event": e.event} for e in history.entries])[-1] == END
        deadline = time.monotonic() + 10   # the writer thread says so on its next flush
        while "state log cannot be written" not in srv.stderr.read_text() and time.monotonic() < deadline:
            time.sleep(0.02)
        err = srv.stderr.read_text()
        assert "state log cannot be written" in err and "Traceback" not in err
    finally:
        assert srv.stop() == 0


def test_load_fails_when_the_server_refuses_every_call(tmp_path: Path) -> None:
    srv = start_server(tmp_path, "--max-reply-bytes", "10", "--no-state-log")
    try:
        result = cli("load", "--target", srv.target, "--calls", "30", "--payload", "100", "--cancel", "none")
        assert result.returncode == 1 and "the server refused" in result.stdout, result.stdout + result.stderr
    finally:
        srv.stop()


def test_load_fails_when_no_call_could_run(tmp_path: Path) -> None:
    srv = start_server(tmp_path, "--max-in-flight", "0", "--no-state-log")   # every call: 1723
    try:
        result = cli("load", "--target", srv.target, "--calls", "30", "--cancel", "none", "--mix", "complete=1")
        assert result.returncode == 1 and "no call could run" in result.stdout, result.stdout + result.stderr
    finally:
        srv.stop()


def test_a_terminal_that_cannot_show_a_character_still_gets_the_run_and_its_report(
        shared_server: ServerProcess, tmp_path: Path) -> None:
    """The summary's em dash on an ASCII-only stdout raised UnicodeEncodeError after the run:
    a traceback, exit 1, and the --report never written. Now the character is escaped."""
    report = tmp_path / "r.json"
    result = cli("load", "--target", shared_server.target, "--calls", "20", "--progress", "never",
                 "--report", str(report), timeout=120, env={"PYTHONIOENCODING": "ascii"})
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stdout + result.stderr
    assert "check: OK \\u2014" in result.stdout and report.exists(), result.stdout

