"""Session 34, a newcomer's audit: the README followed word for word, then bad input on every
command. Each test failed before its fix."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from concurrent import futures
from pathlib import Path
from typing import Callable

import pytest

from tests.conftest import cli
from tests.documentation import ROOT, blocks

CALL_TIMEOUT = 30
PROTOS = ROOT / "tests" / "protos"
SHOP = PROTOS / "shop" / "v1" / "shop.proto"


# -- a .proto that does not compile: protoc's own first error line, not its logging ----------

@pytest.mark.parametrize("text, said", [
    (b"x\0\x01\xff", ':1:1: Expected top-level statement (e.g. "message").'),   # a binary file
    (b'{"a": 1}\n', ':1:1: Expected top-level statement (e.g. "message").'),   # JSON given as --proto
])
def test_a_file_without_a_syntax_line_is_named_by_protocs_error_not_its_warning(tmp_path: Path, text: bytes,
                                                                              said: str) -> None:
    """Before: protoc logs a warning through abseil for a file with no `syntax` line, and the
    first line of its stderr was taken as the error: `callstate serve: WARNING: All log messages
    before absl::InitializeLog() is called are written to STDERR`, naming neither file nor fault."""
    from callstate.schema.model import SchemaError
    from callstate.schema.sources import from_protos
    proto = tmp_path / "api.proto"
    proto.write_bytes(text)
    with pytest.raises(SchemaError) as err:
        from_protos([proto])
    assert str(err.value) == f"{proto}{said}"


def test_a_missing_import_of_a_file_without_a_syntax_line_still_gets_its_hint(tmp_path: Path) -> None:
    from callstate.schema.model import SchemaError
    from callstate.schema.sources import from_protos
    proto = tmp_path / "api.proto"
    proto.write_text('package a;\nimport "gone/x.proto";\n')
    with pytest.raises(SchemaError) as err:
        from_protos([proto])
    assert str(err.value).startswith("gone/x.proto: File not found. (imports are looked up under "), str(err.value)
    assert f"imported at {proto}:2:1" in str(err.value)


# -- a FIFO or a device given as a file to read: refused at once -------------------------------

def _raised_at_once(read: Callable[[], object], fifo: Path) -> BaseException | None:
    """What `read()` raised, within seconds: a reader blocked opening `fifo` (no writer) is let go
    (a writer opens and closes it) and the test fails, rather than hang."""
    raised: list[BaseException | None] = [None]

    def run() -> None:
        try:
            read()
        except Exception as exc:   # noqa: BLE001 - what it raised is the result
            raised[0] = exc
    reader = threading.Thread(target=run, daemon=True)
    reader.start()
    reader.join(10)
    if reader.is_alive():
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))   # EOF for the blocked reader
        reader.join(10)
        pytest.fail(f"it waited for a writer on the FIFO {fifo}")
    return raised[0]


def test_data_file_rules_and_proto_that_are_a_fifo_are_refused_naming_it(tmp_path: Path) -> None:
    """Before: `call`/`load --data-file FIFO` waited for a writer forever, `--data-file /dev/zero`
    and `serve --rules /dev/zero` read until the memory ran out (the process was killed), and
    `--proto /dev/zero` was 'no such .proto file'. The README: file options refuse FIFOs and devices."""
    from callstate.files import load_rules
    from callstate.schema.drive import DriveError, MethodOptions
    from callstate.schema.model import SchemaError
    from callstate.schema.sources import from_protos
    from callstate.rules import RulesError
    fifo = tmp_path / "in.fifo"
    os.mkfifo(fifo)
    options = MethodOptions("shop.v1.Shop/Charge", data_file=str(fifo), proto=[str(SHOP)], proto_path=[str(PROTOS)])
    err = _raised_at_once(lambda: options.drive("127.0.0.1:1"), fifo)
    assert isinstance(err, DriveError) and str(err) == f"--data-file {fifo}: not a regular file (a FIFO or a device is refused)"
    schema = from_protos([SHOP], [PROTOS])
    err = _raised_at_once(lambda: load_rules(fifo, schema), fifo)
    assert isinstance(err, RulesError) and str(err) == f"{fifo}: not a regular file (a FIFO or a device is refused)"
    err = _raised_at_once(lambda: from_protos([fifo]), fifo)
    assert isinstance(err, SchemaError) and str(err) == f"{fifo}: not a regular file (a FIFO or a device), not a .proto file"


# -- --help: every default shown -----------------------------------------------------------------

def test_every_option_with_a_default_shows_it_in_its_help() -> None:
    """Before: `call --help` gave no default for --dispatch-delay, --delay, --reply-bytes,
    --at-count or --breach, where every other option of every command says its own."""
    import argparse

    from callstate.cli import build_parser
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    silent = [f"{name} {action.option_strings[0]}" for name, command in commands.items() for action in command._actions
              if action.option_strings and action.help not in (None, argparse.SUPPRESS)
              and action.default not in (None, False, "", [], argparse.SUPPRESS) and "default" not in action.help.lower()]
    assert not silent, silent


# -- call --log-file that cannot be opened: named as load names it ----------------------------

@pytest.mark.parametrize("pipe, where, why", [((), "none/c.jsonl", "No such file or directory"),
                                               (("--pipe", "in"), "logs", "Is a directory")])
def test_calls_log_file_that_cannot_be_opened_is_one_line_naming_the_option(tmp_path: Path, refused_target: str,
                                                                             pipe: tuple[str, ...], where: str,
                                                                             why: str) -> None:
    """Before: `callstate call: [Errno 2] No such file or directory: '/x/none/c.jsonl'` and
    `[Errno 21] Is a directory: 'logs'`, Python's text; load says `--log-file PATH: cannot write
    the state log (...)`. Nothing is called: the target refuses, and no state line is printed."""
    (tmp_path / "logs").mkdir()
    path = tmp_path / where
    done = cli("call", "--target", refused_target, *pipe, "--log-file", str(path), timeout=CALL_TIMEOUT)
    assert done.returncode == 2 and done.stdout == "", done.stdout + done.stderr
    assert done.stderr.strip() == f"callstate call: --log-file {path}: cannot write the state log ({why})"


# -- serve --port-file that names a log: refused, the log kept -----------------------------------

def test_a_port_file_that_holds_a_state_log_is_refused_and_the_log_kept(tmp_path: Path) -> None:
    """Before: `serve --port-file server.jsonl` (meant: --log-file) replaced the log with the port
    number, whole; a server still writing that log then wrote to a file no longer there."""
    from callstate.cli.serve import _not_a_port_file
    log = tmp_path / "server.jsonl"
    recorded = b'{"ts":"2026-12-06T06:59:01.284167Z","side":"server","call_id":"b0a1","state":"D"}\n'
    log.write_bytes(recorded)
    done = cli("serve", "--port", "0", "--no-state-log", "--port-file", str(log), timeout=CALL_TIMEOUT)
    assert done.returncode == 2 and log.read_bytes() == recorded, done.stderr
    assert done.stderr.strip() == (f"callstate serve: --port-file {log} holds something other than a port (a "
                                   "state log?): writing the port would replace it; give a file of its own")
    for earlier in (b"", b"50051\n"):   # a port file of an earlier run is a port file
        (tmp_path / "port").write_bytes(earlier)
        assert _not_a_port_file(str(tmp_path / "port")) == ""


# -- health --wait: what a script runs after `callstate serve ... &` -----------------------------

def test_health_wait_waits_for_a_server_that_is_not_listening_yet(refused_target: str) -> None:
    """Before: no way to wait; the README's quick start ran `callstate call` right after `serve &`,
    and a call that came before the server listened ended 1722 (the stand-in, compiling its
    proto first, lost that race every time: `reflection from 127.0.0.1:50051: UNAVAILABLE`).
    With --wait a refused connection is retried until --timeout, which then says so."""
    start = time.monotonic()
    done = cli("health", "--target", refused_target, "--wait", "--timeout", "0.5", timeout=CALL_TIMEOUT)
    assert done.returncode == 1, done.stdout + done.stderr
    # (session 35: the refused connection is named, not the deadline; tests/test_audit35_srv.py)
    assert done.stderr.strip() == (f"callstate health: nothing is listening at {refused_target} (connection "
                                   "refused) after waiting 0.5 s")
    assert time.monotonic() - start >= 0.5   # it waited rather than failing on the refused connect (UNAVAILABLE)
    # what docs/operations.md quotes for a stopped server, the same line (it quoted watch's keepalive line)
    page = " ".join((ROOT / "docs" / "operations.md").read_text().split())
    assert "`health` with `no answer within 5 s (DEADLINE_EXCEEDED; --timeout waits longer)`" in page
    assert "`watch` (and `health`," not in page


def test_health_wait_answers_serving_once_a_late_server_listens() -> None:
    """Its first connection fails (taken, then closed: the server is not up), the server starts
    after that, on the same port, and health reconnects to it: SERVING, exit 0."""
    import grpc
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc

    from callstate.cli.health import EMULATOR
    with socket.socket() as held:   # the port's first listener, handing it to the server (SO_REUSEPORT) with no gap
        held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        held.bind(("127.0.0.1", 0))
        held.listen(8)
        held.settimeout(CALL_TIMEOUT)
        target = f"127.0.0.1:{held.getsockname()[1]}"
        waiting = subprocess.Popen([sys.executable, "-m", "callstate", "health", "--target", target, "--wait",
                                    "--timeout", "20"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=2), options=[("grpc.so_reuseport", 1)])
        try:
            first, _ = held.accept()   # health has tried: its connection ends before any answer
            first.close()
            servicer = health.HealthServicer()
            for name in ("", EMULATOR):
                servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
            health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
            assert server.add_insecure_port(target) == held.getsockname()[1]
            server.start()
            held.close()   # from now on only the server listens there
            out, err = waiting.communicate(timeout=CALL_TIMEOUT)
        finally:
            waiting.kill()
            server.stop(None)
    assert waiting.returncode == 0 and out.strip() == "SERVING", out + err


def test_the_readme_waits_for_each_server_it_starts_in_the_background() -> None:
    """A block that starts `callstate serve ... &` runs `callstate health --wait` before any
    command that talks to it: copied into a script, the next line otherwise races the start."""
    readme = (ROOT / "README.md").read_text()
    started = 0
    for block in blocks(readme, "sh"):
        commands = [line.split("#")[0].strip() for line in block.splitlines() if line.startswith("callstate ")]
        for i, line in enumerate(commands):
            if line.startswith("callstate serve") and line.endswith("&"):
                started += 1
                assert i + 1 < len(commands) and commands[i + 1].startswith("callstate health --wait"), block
    assert started >= 2
