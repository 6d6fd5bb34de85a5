"""Review of session 34's change (rev34): what the merged features still got wrong, each with the
case that showed it."""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from pathlib import Path

import pytest

from callstate.cli.conformance.properties import COMPLETE_SMALL, GRACEFUL_STOP, Row
from callstate.cli.conformance.report import DIRECT, PROXY, holds, to_json
from callstate.client import AsyncClient, Client, Script
from tests.conftest import EVIDENCE_WAIT, ServerProcess
from tests.test_audit34_lib import BOUND, _interrupted
from tests.test_scale import RENDER, TEMPLATE


def test_a_conformance_report_that_tested_nothing_is_not_ok() -> None:
    """`--only graceful-stop` with `--server`: every row skipped, NOT TESTED, exit 1; the --report
    JSON still said `"ok": true`, so a CI step that reads the report (not the exit status) went green
    on a run that measured nothing. `ok` is now what the exit status says, as `callstate check
    --json` says `"ok": false` on logs it could not judge."""
    skipped = {path: [Row(GRACEFUL_STOP, None, note="skipped: only with --serve-port")] for path in (DIRECT, PROXY)}
    assert not holds(skipped)
    assert to_json(skipped, "p:1", "s:2", {}, 1.0)["ok"] is False
    tested = {DIRECT: [Row(COMPLETE_SMALL, True, "4/4")], PROXY: [Row(COMPLETE_SMALL, True, "4/4"),
                                                               Row(GRACEFUL_STOP, None, note="skipped")]}
    assert to_json(tested, "p:1", "s:2", {}, 1.0)["ok"] is True   # one row tested, none failed: OK
    assert to_json(tested, "p:1", "s:2", {}, 1.0, "interrupted by SIGINT before the run ended")["ok"] is False


class _Failed(BaseException):
    """What pytest.fail() raises: not an Exception."""


def test_ctrl_c_in_result_stays_a_keyboard_interrupt_when_a_callback_fails_on_the_cancel(
        shared_server: ServerProcess) -> None:
    """Ctrl-C in a sync `result()` cancels the call abortively, whose rushed notification runs the
    done-callbacks on the interrupted thread. A callback that fails as pytest.fail() does (a harness's
    `on_complete` that finds 1818 wrong) replaced the KeyboardInterrupt with its own exception (a
    test session went on instead of stopping), and the call was never completed: `result()`'s
    completion on the caller's behalf was skipped, leaving it in WComp. Now Ctrl-C stays a
    KeyboardInterrupt, the call is completed (1818), and the callback's failure is the caller's
    next wait's, as one raised on gRPC's thread is."""
    def fails(call: object) -> None:
        raise _Failed("the harness's callback found the call wrong")

    with Client(shared_server.target) as client:
        call = client.start(Script("hold"), on_complete=fails)
        _interrupted(call, call.result)   # pytest.raises(KeyboardInterrupt)
        assert call.history == ["C", "WComp", "Can", "WComp", "Comp", "End"] and call.code == 1818
        with pytest.raises(_Failed):
            call.wait(BOUND)
        assert call.wait(BOUND) is True   # raised once


@pytest.mark.parametrize("replicas", ["127.0.0.1:50051 emulator", "127.0.0.1:50051,127.0.0.1:50052", "h:", ":50051"])
def test_render_refuses_a_replica_that_is_not_host_port(tmp_path: Path, replicas: str) -> None:
    """deploy/nginx/render.sh with CALLSTATE_REPLICAS: a bare HOST became `server emulator;`, which
    nginx takes as port 80 (every call through it then failed, 502, with nothing said), and a
    comma-separated list one `server` of an odd name. Now one line naming the entry, exit 1, and
    no config written."""
    out = tmp_path / "callstate.conf"
    done = subprocess.run(["sh", str(RENDER), str(TEMPLATE), str(out)], capture_output=True, text=True, timeout=30,
                          env={**os.environ, "CALLSTATE_REPLICAS": replicas})
    assert done.returncode == 1 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "is not HOST:PORT" in done.stderr and not out.exists() and not Path(f"{out}.tmp").exists()
    fine = subprocess.run(["sh", str(RENDER), str(TEMPLATE), str(out)], capture_output=True, text=True, timeout=30,
                          env={**os.environ, "CALLSTATE_REPLICAS": "127.0.0.1:50051 [::1]:50052"})
    assert fine.returncode == 0, fine.stderr
    assert [ln.split()[1] for ln in out.read_text().splitlines() if ln.strip().startswith("server 1") or
            ln.strip().startswith("server [")] == ["127.0.0.1:50051", "[::1]:50052"]


def test_notice_astray_names_a_short_early_notice_ttl_on_one_server() -> None:
    """`callstate serve --early-notice-ttl 0.001` and a load whose non-abortive cancels overtake their
    calls: one server, no balancer, and `load` failed with notice_astray, its line saying only that the
    notice went to another server than its call (the server had let the kept notice go before the
    dispatch, 3 ms later). The line now names that cause too."""
    from tests.test_audit34_scale import _client, _server
    from callstate.check import NOTICE_KEPT, check_entries
    (violation,) = check_entries(_client(NOTICE_KEPT) + _server()).violations
    assert violation.kind == "notice_astray" and "--early-notice-ttl under 1 s" in violation.message, violation


def test_await_call_once_notified_raises_a_callbacks_failure_as_result_does(shared_server: ServerProcess) -> None:
    """`await call` on an `AsyncCall` already notified takes a shortcut (no coroutine to run); a
    callback's failure kept for the caller's wait (tests/test_audit34_lib.py, `result()`) must reach it
    there too. Nothing covered that shortcut: it could skip the failure and the suite still passed."""
    from tests.test_audit34_lib import _Failed as LibFailed, _fails

    async def main() -> None:
        async with AsyncClient(shared_server.target) as aclient:
            acall = aclient.prepare(Script("complete"), on_complete=_fails).start()
            deadline = time.monotonic() + EVIDENCE_WAIT
            while not acall.done() and time.monotonic() < deadline:   # evidence: notified before the await
                await asyncio.sleep(0.005)
            assert acall.done()
            with pytest.raises(LibFailed):
                await acall
            assert (await acall).call_id == acall.call_id   # raised once; then the reply
            assert acall.history[-1] == "End" and acall.code == 0

    asyncio.run(main())
