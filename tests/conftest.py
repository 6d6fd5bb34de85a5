"""Shared fixtures: a real `callstate serve` process on a real port, and log readers."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import orjson
import pytest

ROOT = Path(__file__).resolve().parent.parent

# Every process a test starts has its output block-buffered when piped, as a user's has: a
# PYTHONUNBUFFERED=1 inherited from the machine running the suite hid a command whose last
# output met a gone reader only at exit (`check --json | head`: exit 120, a traceback).
os.environ.pop("PYTHONUNBUFFERED", None)

# pytest's own `pytester` fixture: the pytest plugin's tests run inner pytest sessions with it
pytest_plugins = ["pytester"]


# How long a test waits for evidence by default: generous, since a busy 2-core machine can
# starve a server for seconds; a wait that finds its evidence returns at once.
EVIDENCE_WAIT = 20.0


def wait_for_text(path: Path, text: str, proc: subprocess.Popen[Any] | None = None,
                  timeout: float = EVIDENCE_WAIT) -> str:
    """The file's text once it holds `text` (bounded; the process must still run when given)."""
    deadline = time.monotonic() + timeout
    while True:
        got = path.read_text(errors="replace") if path.exists() else ""
        if text in got:
            return got
        assert time.monotonic() < deadline, f"no {text!r} in {path.name} within {timeout:g} s: {got!r}"
        assert proc is None or proc.poll() is None, f"the process ended ({proc.returncode}): {got!r}"
        time.sleep(0.02)


@dataclass
class ServerProcess:
    proc: subprocess.Popen[bytes]
    port: int
    log: Path
    stderr: Path

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def entries(self, call_id: str | None = None) -> list[dict[str, Any]]:
        return read_entries(self.log, call_id)

    def wait_entries(self, call_id: str, until: Callable[[list[dict[str, Any]]], bool] | None = None,
                     timeout: float = EVIDENCE_WAIT) -> list[dict[str, Any]]:
        """The server's entries for `call_id` once `until` holds (default: it reached End)."""
        return wait_entries(self.log, call_id, until, timeout)

    async def await_entries(self, call_id: str, until: Callable[[list[dict[str, Any]]], bool] | None = None,
                            timeout: float = EVIDENCE_WAIT) -> list[dict[str, Any]]:
        """`wait_entries` for async tests: lets the event loop run while waiting."""
        until = until or ended
        deadline = time.monotonic() + timeout
        while True:
            entries = read_entries(self.log, call_id)
            if until(entries) or time.monotonic() > deadline:
                return entries
            await asyncio.sleep(0.02)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout)


def complete_lines(data: bytes) -> list[bytes]:
    """The lines a writer has finished: a line is complete once its newline is written, so the
    tail after the last newline (a line still being written) is left for the next read."""
    return data[:data.rfind(b"\n") + 1].splitlines()


def read_entries(path: Path, call_id: str | None = None) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    out = []
    for line in complete_lines(path.read_bytes()):
        if line.strip():
            e = orjson.loads(line)
            if call_id is None or e["call_id"] == call_id:
                out.append(e)
    return out


def ended(entries: list[dict[str, Any]]) -> bool:
    return any(e["state"] == "End" and e["event"] == "enter" for e in entries)


def wait_entries(path: Path, call_id: str, until: Callable[[list[dict[str, Any]]], bool] | None = None,
                 timeout: float = EVIDENCE_WAIT) -> list[dict[str, Any]]:
    until = until or ended
    deadline = time.monotonic() + timeout
    while True:
        entries = read_entries(path, call_id)
        if until(entries) or time.monotonic() > deadline:
            return entries
        time.sleep(0.02)


def states(entries: list[dict[str, Any]]) -> list[str]:
    """The states entered, in order (events left out)."""
    return [e["state"] for e in entries if e["event"] == "enter"]


def final(entries: list[dict[str, Any]]) -> dict[str, Any]:
    return next(e for e in entries if e["state"] == "End" and e["event"] == "enter")


async def final_codes(calls: Iterable[Any]) -> list[int]:
    """Await each call in turn: 0 for a reply, else its CallError's code."""
    from callstate.errors import CallError

    out = []
    for call in calls:
        try:
            await call
            out.append(0)
        except CallError as err:
            out.append(err.code)
    return out


def at_default(*signals: int) -> list[str]:
    """An argv prefix: the child puts `signals` back at their default, then execs the rest. An
    ignored signal passes on through fork and exec, and pytest may run with SIGINT ignored (a
    script's background job) or SIGHUP (nohup); a test that sends one needs a child that takes it
    as a terminal would. The child resets them itself: no `preexec_fn` (docs/testing.md)."""
    reset = "".join(f"signal.signal({int(s)}, signal.SIG_DFL); " for s in signals)
    return [sys.executable, "-c", f"import os, signal, sys; {reset}os.execv(sys.argv[1], sys.argv[1:])"]


def start_server(tmp: Path, *args: str, name: str = "server", env: dict[str, str] | None = None,
                 launcher: Iterable[str] = ()) -> ServerProcess:
    """`callstate serve` on a port the kernel picks, once it serves: its port file, then its whole
    "serving" line on stderr, which it writes just after the file (a test reading that line at once
    found it missing under load). `launcher`: an argv prefix it is started through, e.g.
    `at_default(signal.SIGHUP)`."""
    port_file, log, err = tmp / f"{name}.port", tmp / f"{name}.jsonl", tmp / f"{name}.stderr"
    # --no-state-log refuses a --log-file beside it (the log would never be written)
    log_args = () if "--no-state-log" in args else ("--log-file", str(log))
    proc = subprocess.Popen(
        [*launcher, sys.executable, "-m", "callstate", "serve", "--port", "0", "--port-file", str(port_file),
         *log_args, *args],
        stdout=subprocess.DEVNULL, stderr=open(err, "wb"), cwd=tmp, env={**os.environ, **env} if env else None)
    deadline = time.monotonic() + 20
    while not (port_file.exists() and port_file.read_text().strip() and _says_serving(err)):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"callstate serve did not start: {err.read_text()}")
        time.sleep(0.02)
    return ServerProcess(proc, int(port_file.read_text()), log, err)


def _says_serving(stderr: Path) -> bool:
    return any(line.startswith("callstate: serving ") for line in stderr.read_text(errors="replace").splitlines(True)
               if line.endswith("\n"))


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    srv = start_server(tmp_path, "--max-hold", "20")
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def shared_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    srv = start_server(tmp_path_factory.mktemp("shared"), "--max-hold", "20")
    yield srv
    srv.stop()


def cli(*args: str, timeout: float = 30, cwd: Path | None = None,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "callstate", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd, env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})


# -- tiers: `pytest -m unit` (seconds), `-m e2e`, `-m gateways`, `-m containers` (docs/testing.md) ----
GATEWAY_FILES = {"test_conformance.py"}   # real proxies and broken relays in the middle
# What in a test's own source makes it end-to-end: a real server, process or socket.
E2E_HINTS = ("cli(", "start_server", "subprocess", "Popen", "Client(", "ServerProcess", "serve(", "socket",
             "run_load", "pytester", "Relay(", "Proxy(", "browser")
CONTAINER_HINTS = ("docker", "compose")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Give every test its tier from its file, its fixtures and its own source."""
    import inspect
    for item in items:
        path = Path(str(item.fspath))
        try:
            source = inspect.getsource(item.function) if isinstance(item, pytest.Function) else ""
        except (OSError, TypeError):
            source = ""
        fixtures = set(getattr(item, "fixturenames", ()))
        if "container" in path.parts or any(h in source for h in CONTAINER_HINTS):
            tier = "containers"
        elif path.name in GATEWAY_FILES:
            tier = "gateways"
        elif any(h in source for h in E2E_HINTS) or any("server" in f or f in ("channel", "run", "spans")
                                                        for f in fixtures):
            tier = "e2e"
        else:
            tier = "unit"
        item.add_marker(getattr(pytest.mark, tier))


@pytest.fixture
def refused_target() -> Iterator[str]:
    """HOST:PORT where a connection is refused for the whole test: a port this process holds bound
    but never listens on. A fixed low port ("127.0.0.1:1") is only unreachable while nobody else on
    the machine serves there; a server someone started on port 1 answered a test's reflection."""
    import socket
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        yield f"127.0.0.1:{held.getsockname()[1]}"


def check_own(client_log: Path, srv: ServerProcess, timeout: float = EVIDENCE_WAIT) -> Any:
    """`check_files` over a test's own calls on a server other tests share: the client log, and
    the server's lines of those calls once each call the server saw has ended there. The whole
    server log may hold another test's call still ending (an abortive cancel reaches the server
    after its caller moved on): `not_ended` for a call that is no concern of this test."""
    from callstate.logfile import check_files
    entries = read_entries(client_log)
    ids = set(dict.fromkeys(e["call_id"] for e in entries))
    # a call the client completed with 0 the server completed: its lines may still be in the
    # server's write buffer (flushed every 50 ms); another may never have reached it. The lines
    # judged are the very snapshot the wait found complete: a second read could hold the first
    # lines of a call the wait saw none of, without its End (not_ended).
    served = {e["call_id"] for e in entries if e["state"] == "End" and e.get("code") == 0}
    deadline = time.monotonic() + timeout
    while True:
        lines = [line for line in complete_lines(srv.log.read_bytes() if srv.log.exists() else b"")
                 if line.strip()]
        by_call: dict[str, list[dict[str, Any]]] = {call_id: [] for call_id in ids}
        for line in lines:
            e = orjson.loads(line)
            if e["call_id"] in by_call:
                by_call[e["call_id"]].append(e)
        if all(ended(es) or (not es and call_id not in served) for call_id, es in by_call.items()) \
                or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    own = client_log.with_name(f"{client_log.stem}.server-own.jsonl")
    own.write_bytes(b"".join(line + b"\n" for line in lines if orjson.loads(line)["call_id"] in ids))
    return check_files([client_log, own])
