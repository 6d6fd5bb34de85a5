"""Session 35, the server and its commands (srv35): defects a user met, each pinned here.

1. `health --wait` against a port where nothing listens ended "no answer within N s
   (DEADLINE_EXCEEDED ...)", blaming a silent server for a refused connection.
2. `serve --no-state-log --log-file X` was accepted and X never written; /metrics settings
   given without --metrics-port (serve and load) were dropped without a word.
3. An abort code of 997 RPC_S_ASYNC_CALL_PENDING (or 1914, 1915: a caller's own answers) was
   accepted everywhere a script is given, and a call aborted with 997 polls as still pending.
4. Doc blocks started `callstate serve ... &` and used the server at once (a race).
"""

from __future__ import annotations

import re
import socket
import time
from pathlib import Path

import grpc
import pytest

from callstate import codes
from callstate.v1 import callstate_pb2 as pb
from tests.conftest import ROOT, cli, start_server
from tests.documentation import _text, pages

PROTOS = ROOT / "tests" / "protos"
SHOP = ("--proto", str(PROTOS / "shop" / "v1" / "shop.proto"), "--proto-path", str(PROTOS))
OWN_ANSWERS = sorted(codes.CLIENT_ANSWERS)
BOUND = 20   # seconds a command refused at once may take, on a busy machine


def run(args: list[str]) -> int:
    """`callstate ARGS` in this process: its exit status (a usage error exits from the parser)."""
    from callstate.cli import main
    try:
        return main(args)
    except SystemExit as exc:
        return int(exc.code or 0)


def one_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


# -- 1. health --wait where nothing listens ---------------------------------------------------------

def test_health_wait_on_a_refused_port_says_nothing_is_listening_there(refused_target: str,
                                                                        capsys: pytest.CaptureFixture[str]) -> None:
    start = time.monotonic()
    assert run(["health", "--target", refused_target, "--wait", "--timeout", "0.5"]) == 1
    assert one_line(capsys) == (f"callstate health: nothing is listening at {refused_target} (connection refused) "
                                "after waiting 0.5 s")
    assert time.monotonic() - start >= 0.5   # it waited for a server starting there


def test_health_wait_on_a_port_that_takes_the_connection_and_stays_silent_still_says_no_answer(
        capsys: pytest.CaptureFixture[str]) -> None:
    """The near miss: something listens (the kernel takes the connection) and never answers, as a
    stopped server does: no refusal to name, the deadline's line as before."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        target = f"127.0.0.1:{silent.getsockname()[1]}"
        assert run(["health", "--target", target, "--wait", "--timeout", "0.5"]) == 1
    assert one_line(capsys) == (f"callstate health: {target}: no answer within 0.5 s (DEADLINE_EXCEEDED; --timeout "
                                "waits longer)")


# -- 2. options that contradict each other ----------------------------------------------------------

@pytest.mark.parametrize("args, named", [
    (["--no-state-log", "--log-file", "LOG"], ("--no-state-log", "--log-file")),
    (["--log-file", "LOG", "--no-state-log"], ("--no-state-log", "--log-file")),
    (["--log-file", "-", "--no-state-log"], ("--no-state-log", "--log-file")),   # even the default, given
    (["--metrics-token", "t0ken"], ("--metrics-token", "--metrics-port")),
    (["--metrics-bind", "0.0.0.0", "--metrics-idle-timeout", "3"],
     ("--metrics-bind", "--metrics-idle-timeout", "--metrics-port"))])
def test_serve_refuses_options_that_would_be_dropped_naming_them(args: list[str], named: tuple[str, ...],
                                                                  tmp_path: Path) -> None:
    """A process of its own: a server that starts instead would serve until the bound ends it."""
    log = tmp_path / "server.jsonl"
    done = cli("serve", "--port", "0", *(str(log) if a == "LOG" else a for a in args), timeout=BOUND)
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert done.stderr.startswith("callstate serve: ") and all(flag in done.stderr for flag in named), done.stderr
    assert not log.exists()


def test_load_refuses_metrics_settings_without_metrics_port(refused_target: str,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["load", "--target", refused_target, "--calls", "1", "--metrics-linger", "5"]) == 2
    assert one_line(capsys) == ("callstate load: error: --metrics-linger sets up the /metrics endpoint, which only "
                                "--metrics-port serves: add --metrics-port PORT (see callstate load --help)")


def test_serve_with_no_state_log_alone_still_serves(tmp_path: Path) -> None:
    """The near miss: --no-state-log alone (the harness leaves --log-file out) starts and serves."""
    srv = start_server(tmp_path, "--no-state-log")
    try:
        assert "state log: off" in srv.stderr.read_text()
    finally:
        assert srv.stop() == 0
    assert not srv.log.exists()


# -- 3. no abort with a caller's own answer ---------------------------------------------------------

def test_the_client_answers_are_the_code_tables_own_answers() -> None:
    """One list, in the core; the code table's "the client's own answer" rows and its abort row
    are made from it."""
    from callstate.code_docs import ABORT_ROW, OWN_ANSWER, ROWS, markdown
    assert {code for code, (status, _) in ROWS.items() if status == OWN_ANSWER} == set(codes.CLIENT_ANSWERS)
    assert OWN_ANSWERS == [codes.RPC_S_ASYNC_CALL_PENDING, codes.RPC_S_INVALID_ASYNC_HANDLE,
                           codes.RPC_S_INVALID_ASYNC_CALL]
    assert all(str(code) in ABORT_ROW[0] for code in OWN_ANSWERS)
    assert markdown() in (ROOT / "docs" / "model.md").read_text()   # python tools/gen_code_table.py


@pytest.mark.parametrize("code", OWN_ANSWERS)
def test_a_script_aborting_with_a_callers_own_answer_is_refused_naming_the_code(code: int) -> None:
    from callstate.pipe_script import validate_pipe
    from callstate.script import ScriptError, check_abort_code, validate

    with pytest.raises(ScriptError, match=rf"^script\.abort_code: must not be {code} {codes.name(code)}: a "
                                          r"caller's own answer"):
        validate(pb.Script(outcome=pb.OUTCOME_ABORT, abort_code=code))
    with pytest.raises(ScriptError, match=rf"must not be {code} "):
        validate_pipe(pb.PipeScript(outcome=pb.OUTCOME_ABORT, abort_code=code), "both")
    with pytest.raises(ValueError):
        check_abort_code(code)


@pytest.mark.parametrize("code", [codes.RPC_S_CALL_CANCELLED, codes.RPC_S_SERVER_UNAVAILABLE, 996, 998, 1913, 1916,
                                  5001])
def test_other_abort_codes_stay_open(code: int) -> None:
    """The near miss: the table's codes that do cross the wire, and the neighbours of the refused."""
    from callstate.script import validate
    validate(pb.Script(outcome=pb.OUTCOME_ABORT, abort_code=code))


@pytest.mark.parametrize("args", [["call", "--target", "REFUSED", "--outcome", "abort", "--code", "997"],
                                  ["load", "--target", "REFUSED", "--calls", "1", "--abort-code", "1914"]])
def test_the_commands_refuse_an_abort_code_that_is_a_callers_own_answer(args: list[str], refused_target: str,
                                                                        capsys: pytest.CaptureFixture[str]) -> None:
    assert run([refused_target if a == "REFUSED" else a for a in args]) == 2
    code = int(args[-1])
    line = one_line(capsys)
    assert f"{args[-2]}: '{code}': must not be {code} {codes.name(code)}: a caller's own answer" in line, line


def test_serve_refuses_an_abort_code_that_is_a_callers_own_answer() -> None:
    done = cli("serve", "--port", "0", "--no-state-log", "--abort-code", "1915", timeout=BOUND)
    assert done.returncode == 2 and done.stderr.strip() == (
        "callstate serve: error: argument --abort-code: '1915': must not be 1915 RPC_S_INVALID_ASYNC_CALL: a "
        "caller's own answer to a move its call's state does not allow: a call aborted with it would look never "
        "started (see callstate serve --help)"), done.stderr


def test_a_rules_file_aborting_with_997_is_refused_when_it_loads() -> None:
    from callstate.rules import RulesError, parse_rules
    from callstate.schema import from_protos

    schema = from_protos([str(PROTOS / "shop" / "v1" / "shop.proto")], [str(PROTOS)])
    rules = "rules:\n  - method: shop.v1.Shop/Charge\n    script: {outcome: abort, abort_code: %d}\n"
    with pytest.raises(RulesError, match=r"^rules:2: rules\[0\] \(shop\.v1\.Shop/Charge\)\.script\.abort_code: must "
                                         r"not be 997 RPC_S_ASYNC_CALL_PENDING"):
        parse_rules(rules % 997, schema)
    assert parse_rules(rules % 4321, schema).count == 1


def test_the_server_refuses_a_request_or_header_aborting_with_997(tmp_path: Path) -> None:
    """What arrives past the client's own check (any gRPC caller): the request's script on the
    Emulator's Call and a `callstate-script` header on a stand-in's method, both 87 naming the field."""
    from callstate.script_header import SCRIPT_HEADER as SCRIPT_KEY

    srv = start_server(tmp_path, *SHOP, "--no-state-log")
    try:
        with grpc.insecure_channel(srv.target) as channel:
            call = channel.unary_unary("/callstate.v1.Emulator/Call", request_serializer=pb.CallRequest.SerializeToString,
                                       response_deserializer=pb.CallReply.FromString)
            with pytest.raises(grpc.RpcError) as err:
                call(pb.CallRequest(script=pb.Script(outcome=pb.OUTCOME_ABORT, abort_code=997)), timeout=10)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "script.abort_code: must not be 997 RPC_S_ASYNC_CALL_PENDING" in err.value.details()
            charge = channel.unary_unary("/shop.v1.Shop/Charge", request_serializer=lambda b: b,
                                         response_deserializer=lambda b: b)
            with pytest.raises(grpc.RpcError) as err:
                charge(b"", metadata=((SCRIPT_KEY, '{"outcome": "abort", "abort_code": 997}'),), timeout=10)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "bad script header: script.abort_code: must not be 997" in err.value.details(), err.value.details()
            with pytest.raises(grpc.RpcError) as err:   # the near miss: an application code goes through
                charge(b"", metadata=((SCRIPT_KEY, '{"outcome": "abort", "abort_code": 4321}'),), timeout=10)
            assert codes.from_grpc(err.value.code(), err.value.trailing_metadata()) == 4321
    finally:
        srv.stop()


def test_the_checker_refuses_a_server_abort_with_a_callers_own_answer(tmp_path: Path) -> None:
    from callstate.lifecycle import ABORTED, CLIENT, COMPLETED, SERVER, own_path_error
    from callstate.logfile import check_files

    for code in OWN_ANSWERS:
        assert f"cannot end with {code} {codes.name(code)}" in (own_path_error(SERVER, ABORTED, code) or "")
    assert own_path_error(SERVER, ABORTED, 5001) is None and own_path_error(CLIENT, COMPLETED, 997) is None
    log = tmp_path / "server.jsonl"
    ts = "2026-12-06T09:00:00.%06dZ"
    log.write_text("".join(
        '{"ts":"%s","side":"server","call_id":"%s","state":"%s","prev":%s,"event":"enter","move":"%s"%s}\n'
        % (ts % i, call_id, state, prev, move, extra)
        for call_id, code in (("a997", 997), ("a5001", 5001))
        for i, (state, prev, move, extra) in enumerate((
            ("D", "null", "dispatch", ""), ("A", '"D"', "abort", ""),
            ("End", '"A"', "aborted", f',"code":{code},"grpc_status":"ABORTED"')))))
    report = check_files([log])
    assert [(v.kind, v.call_id) for v in report.violations] == [("wrong_final_code", "a997")], report.violations


# -- 4. docs wait for a server they start in the background ----------------------------------------

SERVE_IN_BACKGROUND = re.compile(r"^(\S*/)?callstate serve\b.*&\s*(#.*)?$")
WAITS = re.compile(r"^(\S*/)?callstate health --wait\b")


def test_every_doc_block_that_starts_a_server_in_the_background_waits_for_it() -> None:
    """docs/locust.md and docs/client-design.md (and four more blocks) ran their next command at
    once after `callstate serve ... &`, before the server listened."""
    from tests.test_docs import shell_blocks

    racing, seen = [], 0
    for page in pages():
        for block in shell_blocks(_text(page)):
            lines = [line.strip() for line in block.replace("\\\n", " ").splitlines() if line.strip()]
            for i, line in enumerate(lines):
                if SERVE_IN_BACKGROUND.match(line):
                    seen += 1
                    if i + 1 < len(lines) and not WAITS.match(lines[i + 1]):
                        racing.append(f"{page.relative_to(ROOT)}: {line}")
    assert seen >= 8 and not racing, racing
