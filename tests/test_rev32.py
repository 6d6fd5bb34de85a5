"""Review 32's findings on the day's change: each test names the defect it guards."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

import callstate.cli as cli_module
from callstate.client import Client, Script
from tests.conftest import EVIDENCE_WAIT, ServerProcess, check_own
from tests.test_audit32_library import _fails


def test_an_outcome_point_of_the_other_side_is_refused_for_the_kind_not_the_count(
        refused_target: str, capsys: pytest.CaptureFixture[str]) -> None:
    """`call --pipe in --at after-out --at-count 5` said 'is never reached: the server pushes only 3
    messages (--server-messages)', as if more --server-messages would do: an in pipe's server pushes
    none. The point's kind is judged first; refused before any connection (exit 2, one line)."""
    status = cli_module.main(["call", "--target", refused_target, "--pipe", "in", "--at", "after-out", "--at-count", "5"])
    assert (status, capsys.readouterr().err.strip()) == (
        2, "callstate call: --pipe in: script.at: after-out does not apply to an in pipe")


def test_a_callback_held_up_until_start_is_logged_like_one_on_grpcs_thread(
        shared_server: ServerProcess, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """An `on_complete` that calls pytest.fail() is logged when gRPC's thread runs it; but when the
    outcome beat `start()` out of C (a loaded machine), start() ran the held callbacks itself and
    raised pytest.fail's exception from `call.start()`: test_audit32_library's sync test failed
    so in 1 of 3 runs under FLAKE_HOG=2. Here the outcome is made to beat started()."""
    from callstate.client.sync import Call

    started = Call.started

    def after_the_outcome(self: Call) -> None:
        deadline = time.monotonic() + EVIDENCE_WAIT
        while not self._arrived:   # evidence: gRPC's thread brought the outcome, held until started()
            assert time.monotonic() < deadline, "no outcome"
            time.sleep(0.005)
        started(self)

    monkeypatch.setattr(Call, "started", after_the_outcome)
    with Client(shared_server.target) as client:
        call = client.prepare(Script("complete"), on_complete=_fails)
        call.start()   # runs the held callback: it must not raise pytest.fail's exception here
        with pytest.raises(pytest.fail.Exception):   # the caller's wait raises it, as on gRPC's thread
            call.result(EVIDENCE_WAIT)
    assert "a done-callback of call" in caplog.text


def test_check_own_waits_for_the_server_lines_of_a_call_the_client_completed(
        shared_server: ServerProcess, tmp_path: Path) -> None:
    """The server's state log is written every 50 ms: a call the client completed with 0 may not
    be in it yet when check_own reads it, and check_own waited only for calls the server log
    already had: `unknown_to_server` (test_audit32_pipes' payload-limit test, 1 run in 6). Here
    the server's lines of a real call come 0.2 s late, as a loaded writer's would."""
    import json
    import types

    from tests.conftest import wait_entries

    log = tmp_path / "client.jsonl"
    with Client(shared_server.target, log=str(log)) as client:
        calls = [client.start(Script("complete")) for _ in range(2)]
        assert all(call.result(EVIDENCE_WAIT) is not None for call in calls)
    first, second = ("".join(json.dumps(e) + "\n" for e in wait_entries(shared_server.log, call.call_id))
                     for call in calls)
    late = tmp_path / "server.jsonl"
    late.write_text(first)   # one call's lines are in, the other's still in the writer's buffer

    def flush() -> None:
        with late.open("a") as f:
            f.write(second)

    writer = threading.Timer(0.2, flush)   # the writer's lag, not a synchronisation
    writer.start()
    try:
        assert check_own(log, types.SimpleNamespace(log=late)).ok   # type: ignore[arg-type]
    finally:
        writer.join()
