"""`callstate serve --loop uvloop`: the same server on uvloop's event loop (docs/performance.md):
it says so, serves calls and cancels as on asyncio's, and stops flushing its log."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from callstate import codes
from callstate.client import AsyncClient, CallError, Script
from callstate.lifecycle import ABORTIVE, CANCEL_SEEN
from tests.conftest import final, start_server, states

pytestmark = pytest.mark.timeout(60)
needs_uvloop = pytest.mark.skipif(importlib.util.find_spec("uvloop") is None,
                                  reason="uvloop is not installed (the fast extra; the dev extra has it)")


@needs_uvloop
def test_the_server_runs_on_uvloop_and_serves_completes_aborts_and_cancels(tmp_path: Path) -> None:
    srv = start_server(tmp_path, "--loop", "uvloop", "--max-hold", "20")
    try:
        assert "event loop: uvloop" in srv.stderr.read_text()

        async def go() -> tuple[str, str, str]:
            async with AsyncClient(srv.target) as client:
                done = client.start(Script(outcome="complete"))
                await done
                aborted = client.start(Script(outcome="abort", abort_code=5))
                with pytest.raises(CallError):
                    await aborted
                held = client.start(Script(outcome="hold"))
                await srv.await_entries(held.call_id, until=bool)   # dispatched: the cancel reaches a running handler
                held.cancel(abortive=True)
                with pytest.raises(CallError):
                    await held
                return done.call_id, aborted.call_id, held.call_id

        complete_id, abort_id, held_id = asyncio.run(go())
        assert final(srv.wait_entries(complete_id))["code"] == codes.RPC_S_OK
        assert final(srv.wait_entries(abort_id))["code"] == 5
        held = srv.wait_entries(held_id)
        assert any(e["event"] == CANCEL_SEEN and e.get("cancel") == ABORTIVE for e in held), held
        assert states(held)[-1] == "End"
    finally:
        assert srv.stop() == 0


def test_asyncio_stays_the_default_and_says_nothing_of_its_loop(tmp_path: Path) -> None:
    srv = start_server(tmp_path)
    try:
        line = next(ln for ln in srv.stderr.read_text().splitlines() if "serving" in ln)
        assert "event loop" not in line, line
    finally:
        srv.stop()


def test_an_unknown_loop_is_a_usage_error(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "callstate", "serve", "--port", "0", "--loop", "tokio"],
                         capture_output=True, text=True, timeout=30, cwd=tmp_path,
                         env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert out.returncode == 2 and "--loop" in out.stderr and "Traceback" not in out.stderr


def test_uvloop_asked_for_but_not_installed_is_one_line_and_exit_2(tmp_path: Path) -> None:
    """Without the `fast` extra, --loop uvloop says what to install, in one line, and serves nothing."""
    shadow = tmp_path / "shadow" / "uvloop"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('no uvloop here')\n")   # as if not installed
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(shadow.parent), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, "-m", "callstate", "serve", "--port", "0", "--loop", "uvloop"],
                          capture_output=True, text=True, timeout=30, env=env)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == ["callstate serve: --loop uvloop needs uvloop (pip install 'callstate[fast]')"]
