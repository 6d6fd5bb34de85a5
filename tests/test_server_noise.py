"""The server's stderr under cancel load: nothing when nothing is wrong. A caller cancelling
just as a fatal (or aborting) handler ends made grpc print ExecuteBatchError tracebacks
(88 in 3,000 such calls before the fix); a real failure still speaks."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import cli, start_server

pytestmark = pytest.mark.timeout(180)


def test_cancels_racing_fatal_ends_leave_no_traceback_on_the_servers_stderr(tmp_path: Path) -> None:
    srv = start_server(tmp_path)
    try:
        load = cli("load", "--target", srv.target, "--calls", "3000", "--concurrency", "32", "--mix",
                   "fatal=80,abort=20", "--delay", "0.002", "--cancel", "abortive=100", "--cancel-at", "random:0.004",
                   timeout=150)
        assert load.returncode == 0, load.stdout + load.stderr
        fatal = cli("call", "--target", srv.target, "--outcome", "fatal", "--message", "boom")
    finally:
        assert srv.stop() == 0
    err = srv.stderr.read_text()
    assert "Traceback" not in err and "ExecuteBatchError" not in err, err[-3000:]
    # what a caller sees of a fatal failure is what grpc sends for a handler that raised
    assert fatal.returncode == 1
    assert ("final: 1726 RPC_S_CALL_FAILED: Unexpected <class 'callstate.server.emulator.FatalHandlerError'>: boom"
            in fatal.stderr), fatal.stderr
