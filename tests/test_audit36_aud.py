"""Session 36's audit as a new user meets callstate: the README and the pages it leads to,
followed verbatim; bad input across the commands; the numbers a user reads."""

from __future__ import annotations

import gzip
import re
from pathlib import Path

import pytest

from tests.conftest import ServerProcess

pytestmark = pytest.mark.timeout(120)

ENTRY = (b'{"ts":"2026-12-06T12:20:33.863236Z","side":"client","call_id":"c1","state":"C","prev":null,'
         b'"event":"enter","move":"call"}\n')
REFUSED = ("holds a state log (its first line is a state entry): the report would replace every call it "
           "recorded; give the report a file of its own")


def _logs(tmp_path: Path) -> dict[str, bytes]:
    """A state log in each form `check` reads: plain, with a byte order mark, gzip'd."""
    return {"plain.jsonl": ENTRY, "bom.jsonl": b"\xef\xbb\xbf" + ENTRY, "rotated.jsonl.gz": gzip.compress(ENTRY)}


def test_a_report_named_over_a_state_log_is_refused_and_the_log_kept(tmp_path: Path) -> None:
    """`load --report client.jsonl` (the log's name typed for the report's, or the shell's completion)
    replaced the state log of every earlier call with the run's JSON report, without a word; so did
    `report --html`, `--json` and conformance's reports over a log the command was not given."""
    from callstate.cli.outputs import output_problem

    for name, data in _logs(tmp_path).items():
        log = tmp_path / name
        log.write_bytes(data)
        why = output_problem([str(log)], [("--report", str(log))])
        assert why == f"--report {log} {REFUSED}", why
        assert log.read_bytes() == data
    # what a report may replace: an earlier report, an empty file, a port, anything not a state entry
    for name, data in {"old.json": b'{\n  "calls": 3\n}\n', "empty.jsonl": b"", "one.json": b'{"calls": 3}\n',
                       "page.html": b"<!doctype html>\n", "cut.jsonl.gz": gzip.compress(ENTRY)[:12]}.items():
        (tmp_path / name).write_bytes(data)
        assert output_problem([str(tmp_path / name)], [("--report", str(tmp_path / name))]) == "", name


@pytest.mark.parametrize("command, flag", [("load", "--report"), ("load", "--html"), ("report", "--html"),
                                           ("report", "--json"), ("conformance", "--junit-xml")])
def test_each_command_that_writes_a_report_refuses_a_state_log_before_it_runs(
        tmp_path: Path, refused_target: str, command: str, flag: str, capsys: pytest.CaptureFixture[str]) -> None:
    from callstate.cli import main

    log, other = tmp_path / "client.jsonl", tmp_path / "server.jsonl"
    log.write_bytes(ENTRY)
    other.write_bytes(ENTRY.replace(b'"client"', b'"server"').replace(b'"C"', b'"D"').replace(b'"call"', b'"dispatch"'))
    args = {"load": ["load", "--target", refused_target, "--calls", "1"],
            "report": ["report", str(other), *(["--html", str(tmp_path / "r.html")] if flag == "--json" else [])],
            "conformance": ["conformance", "--proxy", refused_target, "--server", refused_target]}[command]
    assert main([*args, flag, str(log)]) == 2
    assert capsys.readouterr().err.strip() == f"callstate {command}: {flag} {log} {REFUSED}"
    assert log.read_bytes() == ENTRY and not (tmp_path / "r.html").exists()


def test_watch_refuses_an_empty_call_id_rather_than_watching_every_call(refused_target: str,
                                                                        capsys: pytest.CaptureFixture[str]) -> None:
    """`watch --call-id "$ID"` with ID unset watched every call as if they were the one asked for."""
    from callstate.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["watch", "--target", refused_target, "--call-id", "", "--timeout", "1"])
    assert exit_.value.code == 2
    assert capsys.readouterr().err.strip() == ("callstate watch: error: argument --call-id: an empty call id names "
                                               "no call: give the call's whole id (see callstate watch --help)")


def test_watch_call_id_whose_timeout_runs_out_first_is_no_success(shared_server: ServerProcess,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """`watch --call-id ID --timeout 1` on a call still held, or one never made, exited 0 without a
    word, as if the call had ended: a script waiting on it went on."""
    from callstate.cli import main
    from callstate.client import Client, Script
    from callstate.errors import CallError

    watch = ["watch", "--target", shared_server.target, "--timeout", "1", "--call-id"]
    with Client(shared_server.target) as client:
        call = client.start(Script("hold"))
        shared_server.wait_entries(call.call_id, lambda es: any(e["state"] == "D" for e in es))
        try:
            assert main([*watch, call.call_id]) == 1
        finally:
            call.cancel()
        with pytest.raises(CallError):
            call.result(timeout=10)
    held = capsys.readouterr()
    assert re.search(r"^\w{12}  \S+  server  D ", held.out, re.M), held.out
    assert held.err.splitlines()[-1] == (f"callstate watch: --timeout 1 s ran out before call '{call.call_id}' "
                                         f"ended on {shared_server.target} (its entries shown above)"), held.err
    assert main([*watch, "never-made-a36"]) == 1
    never = capsys.readouterr().err
    assert never.splitlines()[-1].endswith("ran out before call 'never-made-a36' ended on "
                                           f"{shared_server.target} (no entry of it came)"), never


@pytest.mark.parametrize("call_id, why", [
    ("\u2018c1\u2019", "'\u2018c1\u2019': no call has such an id: only printable ASCII (a gRPC metadata value), got '\u2018'"),
    ("c1\t", "'c1\\t': no call has such an id: only printable ASCII (a gRPC metadata value), got '\\t'"),
    ("x" * 4097, "'xxxxxxxxxxxx'...: no call has such an id: at most 4096 characters, got 4097")],
    ids=["smart-quotes", "tab", "too-long"])
def test_watch_refuses_a_call_id_no_server_takes_rather_than_waiting_for_it_for_ever(
        call_id: str, why: str, refused_target: str, capsys: pytest.CaptureFixture[str]) -> None:
    """An id copied with a smart quote or a tab in it was 'waited for' until Ctrl-C: no server takes it."""
    from callstate.cli import main
    from callstate.cli.watch import _call_id

    with pytest.raises(SystemExit) as exit_:
        main(["watch", "--target", refused_target, "--call-id", call_id])
    assert exit_.value.code == 2
    assert capsys.readouterr().err.strip() == f"callstate watch: error: argument --call-id: {why} (see callstate watch --help)"
    assert _call_id("x" * 4096) and _call_id("abc def")   # the longest any server takes; a space is printable


def test_a_number_past_every_bound_is_refused_with_the_options_own_bound() -> None:
    """`load --rate 2e9` said "must be at most 1e+09" (the bound every number has), and `--rate 1e9`
    then "must be in 0.001..1e+06": the first line sent the user to a value still refused. So did
    --port, --metrics-port, --serve-port (2147483647, not 0-65535), --keepalive, --concurrency,
    --channels and --streams. Every option of every command: a bound a message names is taken."""
    import argparse

    from callstate.cli import COMMANDS, build_parser, subcommands

    misleading = []
    for command, sub in subcommands(build_parser(load=set(COMMANDS))).items():
        for action in sub._actions:
            if not action.option_strings or not callable(action.type):
                continue
            for huge, said, at_it in (("30000000000", "2147483647", "2147483647"), ("3e12", "1e+09", "1e9")):
                try:
                    action.type(huge)
                    continue
                except (argparse.ArgumentTypeError, ValueError) as exc:   # argparse says ValueError's itself
                    why = str(exc)
                if f"at most {said}" in why:
                    try:
                        action.type(at_it)
                    except argparse.ArgumentTypeError as exc:
                        misleading.append(f"{command} {action.option_strings[-1]} {huge}: {why}; {at_it}: {exc}")
    assert not misleading, "\n".join(misleading)


@pytest.mark.parametrize("command", ["check", "report"])
def test_a_dash_for_standard_input_is_said_to_be_no_log_file(tmp_path: Path, command: str,
                                                             capsys: pytest.CaptureFixture[str],
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """`callstate check -` (standard input, as many tools take it) said "-: No such file or directory"."""
    from callstate.cli import main

    monkeypatch.chdir(tmp_path)
    args = ["--html", "r.html"] if command == "report" else []
    assert main([command, "-", *args]) == 2
    assert capsys.readouterr().err.strip() == (f"callstate {command}: -: standard input is not read (logs are read "
                                               "as regular files only): save the stream to a file and give its name")
    (tmp_path / "-").write_bytes(ENTRY)   # a file named "-" is still read
    assert main(["check", "--allow-one-side", "-"]) == 1   # the call never ended: read and judged
    assert "not_ended" in capsys.readouterr().out


@pytest.mark.parametrize("other, verb", [(["--json"], "--json asks"), (["--call-id", "c1"], "--call-id asks"),
                                         (["--counters"], "--counters asks"),
                                         (["--json", "--counters"], "--json and --counters ask")])
def test_watch_dashboard_always_with_another_output_is_a_usage_error(other: list[str], verb: str, refused_target: str,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """`watch --json --dashboard always` printed the dashboard's plain lines where a script read JSON;
    with --call-id or --counters the dashboard asked for was not drawn at all."""
    from callstate.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["watch", "--target", refused_target, "--dashboard", "always", *other])
    assert exit_.value.code == 2
    assert capsys.readouterr().err.strip() == ("callstate watch: error: --dashboard always draws the dashboard in "
                                               f"place of entry lines, and {verb} for another output: give one of "
                                               "them (see callstate watch --help)")


def test_load_against_a_server_that_wants_a_token_says_it_was_refused_not_that_it_may_be_no_callstate(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`load` without the token (or with a wrong one) asked "is it a callstate server?" of a callstate
    server that had said which token it wants; conformance already said it was refused. So it did of
    one whose watchers were all taken (RESOURCE_EXHAUSTED, naming --max-watchers)."""
    from callstate.cli import main
    from tests.conftest import start_server

    journal = "(callstate.v1.Journal/Follow)"
    srv = start_server(tmp_path, "--token", "sekret", "--no-state-log", "--max-watchers", "0")
    try:
        for token, line in (
                ([], f"refused its journal {journal} to this client (UNAUTHENTICATED: this server requires a bearer "
                     "token (pass --token or set CALLSTATE_TOKEN))"),
                (["--token", "wrong"], f"refused its journal {journal} to this client (PERMISSION_DENIED: wrong "
                                       "bearer token)"),
                (["--token", "sekret"], f"did not open its journal {journal}: RESOURCE_EXHAUSTED: this server takes "
                                        "no watchers (--max-watchers 0)")):
            assert main(["load", "--target", srv.target, "--calls", "1", "--progress", "never", *token]) == 2
            assert capsys.readouterr().err.strip() == f"callstate load: {srv.target} {line}"
        assert main(["conformance", "--proxy", srv.target, "--server", srv.target, "--only", "fatal", "--quiet",
                     "--token", "sekret"]) == 2   # conformance says the same of the watchers
        assert capsys.readouterr().err.strip().splitlines()[-1] == (
            f"callstate conformance: {srv.target} did not open its journal {journal}: RESOURCE_EXHAUSTED: this "
            "server takes no watchers (--max-watchers 0)")
    finally:
        srv.stop()


LEAN = ("-p", "no:cacheprovider", "-p", "no:hypothesispytest", "-p", "no:locust", "-p", "no:anyio")


@pytest.mark.parametrize("log_dir", ["afile", "afile/sub"])
def test_a_callstate_log_dir_that_is_a_file_is_a_usage_error(pytester: pytest.Pytester, log_dir: str) -> None:
    """`--callstate-log-dir` naming a file ran every test and failed each at its teardown with a
    NotADirectoryError traceback (a passing test too: its stale logs were looked for there)."""
    pytester.makefile("", afile="not a folder")
    pytester.makepyfile(test_x="def test_x(callstate_calls):\n    pass\n")
    result = pytester.runpytest_subprocess(*LEAN, "--callstate-log-dir", log_dir, timeout=50)
    assert result.ret == pytest.ExitCode.USAGE_ERROR, result.stdout.str()
    assert result.stderr.lines[0] == (f"ERROR: callstate: --callstate-log-dir {log_dir}: {pytester.path / 'afile'} "
                                      "is a file, not a folder (a failed test's logs go in DIR/<test id>/)")
    assert (pytester.path / "afile").read_text() == "not a folder"
    made = pytester.runpytest_subprocess(*LEAN, "--callstate-log-dir", "new/kept", timeout=50)
    assert made.ret == pytest.ExitCode.OK, made.stdout.str()   # a folder not there yet is made when needed


@pytest.mark.parametrize("command", [["call"], ["call", "--pipe", "out"], ["load", "--calls", "1"], ["serve"]],
                         ids=["call", "pipe", "load", "serve"])
def test_a_gzipd_log_file_is_refused_rather_than_appended_to(tmp_path: Path, refused_target: str,
                                                             command: list[str],
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    """`--log-file server.jsonl.1.gz` (a rotated log) got plain lines appended to its gzip stream:
    `callstate check` then refused the whole file ("a gzip'd log cut short or damaged")."""
    from callstate.cli import main
    from tests.conftest import cli

    log, data = tmp_path / "rotated.jsonl.gz", gzip.compress(ENTRY)
    log.write_bytes(data)
    why = f"--log-file {log} is gzip'd (a rotated log?): lines appended to it would make it unreadable to " \
          "`callstate check`; give a new file"
    if command == ["serve"]:   # a process of its own: serve takes the signals
        res = cli("serve", "--port", "0", "--log-file", str(log))
        assert res.returncode == 2 and res.stderr.strip() == f"callstate serve: {why}", res.stderr
    else:
        assert main([*command, "--target", refused_target, "--log-file", str(log)]) == 2
        assert capsys.readouterr().err.strip() == f"callstate {command[0]}: {why}"
    assert log.read_bytes() == data


def test_every_max_flag_of_serve_is_in_the_limits_page() -> None:
    """docs/limits.md: "Every bound of the server is a `callstate serve` flag"; its table left out
    `--max-reply-backlog-per-connection`, a bound a proxy's operator is the one to set."""
    from callstate.cli import build_parser, subcommands

    page = (Path(__file__).resolve().parent.parent / "docs" / "limits.md").read_text()
    serve = subcommands(build_parser(load={"serve"}))["serve"]
    flags = {f for a in serve._actions for f in a.option_strings if f.startswith("--max-")}
    assert len(flags) >= 10 and not {f for f in flags if f"`{f}`" not in page}, sorted(flags)


def test_a_number_of_hundreds_of_digits_is_one_short_line_for_every_option() -> None:
    """`load --calls 111...` (400 digits) was a traceback (OverflowError: int too large to convert to
    float), in 18 options of five commands; a number of 5,000 digits was echoed back whole."""
    import argparse

    from callstate.cli import COMMANDS, build_parser, subcommands

    numbers = {("load", "--calls"), ("load", "--concurrency"), ("load", "--rate"), ("serve", "--port"),
               ("serve", "--journal-size"), ("watch", "--count"), ("conformance", "--calls"), ("call", "--timeout")}
    said = {}
    for command, sub in subcommands(build_parser(load=set(COMMANDS))).items():
        for action in sub._actions:
            if not action.option_strings or not callable(action.type):
                continue
            for value in ("1" * 400, "9" * 5000, "-" + "1" * 400):
                try:
                    action.type(value)
                except (argparse.ArgumentTypeError, ValueError) as exc:   # argparse's own two: one usage line
                    said[command, action.option_strings[-1], value[:2]] = str(exc)
    short = {key: why for key, why in said.items() if key[:2] in numbers}
    assert len(short) == 3 * len(numbers) and max(map(len, short.values())) < 120, short
    assert short["load", "--calls", "99"] == "'999999999999999999999999999999'... (5000 characters) is not an integer"


@pytest.mark.parametrize("reply, what", [(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n",
                                          "HTTP/1.x (HTTP status 404)"),
                                         (b"<!DOCTYPE html>\n<p>no</p>\n", "in a protocol other than HTTP/2")],
                         ids=["http1", "other"])
def test_load_at_a_port_that_answers_http1_says_so_not_is_it_up(monkeypatch: pytest.MonkeyPatch, reply: bytes,
                                                                what: str, capsys: pytest.CaptureFixture[str]) -> None:
    """`load --target` a web server's or a /metrics port said "no connection within 5 s: is it up? if
    it uses TLS, pass --tls-ca": it is up, in plaintext; gRPC had said what answered (HTTP/1.x)."""
    import socket
    import threading

    from callstate.cli import main
    from callstate.cli.load import run as load_run

    def answer(listener: socket.socket) -> None:   # every connection: the reply, then closed
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:   # closed: the test is over
                return
            with conn:
                conn.recv(1024)
                conn.sendall(reply)

    monkeypatch.setattr(load_run, "CONNECT_S", 1)   # the wait before it says why: the reason is what is tested
    with socket.socket() as web:
        web.bind(("127.0.0.1", 0))
        web.listen(16)
        threading.Thread(target=answer, args=(web,), daemon=True).start()
        target = f"127.0.0.1:{web.getsockname()[1]}"
        try:
            assert main(["load", "--target", target, "--calls", "1", "--progress", "never"]) == 2
        finally:
            web.shutdown(socket.SHUT_RDWR)   # wakes the accept(): its thread ends
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == (f"callstate load: cannot reach a callstate server at {target}: it answers {what}, not gRPC: "
                   "another service's port (a web server, a /metrics endpoint)?"), err


def test_locust_refuses_a_gzipd_log_file_as_the_commands_do(tmp_path: Path, refused_target: str) -> None:
    """`--callstate-log-file rotated.jsonl.gz` on Locust appended plain lines to the gzip stream,
    as `call`, `load` and `serve` did: the users stop before any call, saying so, and the log is kept."""
    import os
    import subprocess
    import sys

    log, data = tmp_path / "rotated.jsonl.gz", gzip.compress(ENTRY)
    log.write_bytes(data)
    (tmp_path / "locustfile.py").write_text("import callstate.locust\n\n\n"
                                            "class Plain(callstate.locust.CallstateUser):\n    pass\n")
    run = subprocess.run([sys.executable, "-m", "locust", "-f", "locustfile.py", "--headless", "-u", "1", "-r", "1",
                          "-t", "10m", "--host", refused_target, "--callstate-log-file", str(log)],
                         cwd=tmp_path, env={**os.environ, "PYTHONUNBUFFERED": "1"}, capture_output=True, text=True,
                         timeout=60)
    text = run.stdout + run.stderr
    assert run.returncode == 2, text[-2000:]
    assert (f"callstate: Plain: --callstate-log-file {log} is gzip'd (a rotated log?): lines appended to it "
            "would make it unreadable to `callstate check`; give a new file") in text, text[-2000:]
    assert "Traceback" not in text and log.read_bytes() == data


@pytest.mark.parametrize("extra, line", [
    ([], "cancel propagation: none measured: no cancel of the 5 reached the server after its call's dispatch (they "
         "came before it, or were never seen; --cancel-at held:0.05 measures it in bulk)"),
    (["--no-verify"], "cancel propagation: not measured (--no-verify: the server's journal is not followed)")],
    ids=["before-dispatch", "no-verify"])
def test_loads_summary_says_why_a_run_of_cancels_has_no_propagation_figure(
        shared_server: ServerProcess, extra: list[str], line: str, capsys: pytest.CaptureFixture[str]) -> None:
    """A run whose every cancel came before the dispatch (or with --no-verify) printed no propagation
    line at all: a summary of cancels silent on the figure the command is for."""
    from callstate.cli import main

    assert main(["load", "--target", shared_server.target, "--calls", "5", "--cancel", "abortive=100", "--cancel-at",
                 "before-start", "--progress", "never", *extra]) == 0
    out = capsys.readouterr().out.splitlines()
    [paths] = [text for text in out if text.startswith("paths: ")]
    assert "cancel-abortive 5, cancel-at-before-start 5" in paths and line in out, out
