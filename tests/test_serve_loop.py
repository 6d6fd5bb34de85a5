"""`callstate serve --loop`: the same server on uvloop's event loop (what --loop auto, the default,
takes when uvloop imports; docs/performance.md) or asyncio's: it names the loop, serves calls and
cancels as on asyncio's, and stops flushing its log."""

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
from tests.conftest import ServerProcess, final, start_server, states

pytestmark = pytest.mark.timeout(60)
needs_uvloop = pytest.mark.skipif(importlib.util.find_spec("uvloop") is None,
                                  reason="uvloop is not installed (a base dependency where it builds: not here)")


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


def _serving_line(srv: ServerProcess) -> str:
    return next(ln for ln in srv.stderr.read_text().splitlines() if "serving" in ln)


@needs_uvloop
def test_auto_the_default_takes_uvloop_when_it_imports(tmp_path: Path) -> None:
    srv = start_server(tmp_path)
    try:
        assert _serving_line(srv).endswith(", event loop: uvloop)")
    finally:
        assert srv.stop() == 0


def test_loop_asyncio_keeps_asyncios_loop_and_says_so(tmp_path: Path) -> None:
    srv = start_server(tmp_path, "--loop", "asyncio")
    try:
        assert _serving_line(srv).endswith(", event loop: asyncio)")
    finally:
        assert srv.stop() == 0


def _without_uvloop(tmp_path: Path) -> dict[str, str]:
    """An environment in which `import uvloop` fails, as where it is not installed."""
    shadow = tmp_path / "shadow" / "uvloop"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('no uvloop here')\n")
    return {"PYTHONPATH": os.pathsep.join(filter(None, [str(shadow.parent), os.environ.get("PYTHONPATH")]))}


def test_auto_without_uvloop_serves_on_asyncio(tmp_path: Path) -> None:
    """Where uvloop does not build (Windows, PyPy) the default still serves, on asyncio's loop."""
    srv = start_server(tmp_path, env=_without_uvloop(tmp_path))
    try:
        assert _serving_line(srv).endswith(", event loop: asyncio)")
    finally:
        assert srv.stop() == 0


def test_an_unknown_loop_is_a_usage_error(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "callstate", "serve", "--port", "0", "--loop", "tokio"],
                         capture_output=True, text=True, timeout=30, cwd=tmp_path,
                         env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert out.returncode == 2 and "--loop" in out.stderr and "Traceback" not in out.stderr


def test_uvloop_asked_for_but_not_installed_is_one_line_and_exit_2(tmp_path: Path) -> None:
    """Without uvloop, --loop uvloop says what to do, in one line, and serves nothing."""
    env = {**os.environ, **_without_uvloop(tmp_path)}
    proc = subprocess.run([sys.executable, "-m", "callstate", "serve", "--port", "0", "--loop", "uvloop"],
                          capture_output=True, text=True, timeout=30, env=env)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "callstate serve: --loop uvloop needs uvloop, which is not installed here (pip install uvloop; or --loop asyncio)"]
