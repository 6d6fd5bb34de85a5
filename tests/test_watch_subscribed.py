"""`callstate watch` says "watching" once the server has its stream (the server sends the Watch
response headers as it subscribes it, and the command awaits them): a call made after that
line is seen, every time. A stalled or unreachable target still ends it cleanly."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Iterator

import orjson
import pytest

from tests.conftest import EVIDENCE_WAIT, ServerProcess, cli, start_server

HEADERS = 0x1   # HTTP/2 frame type
PREFACE = 24    # bytes of the client's connection preface


@pytest.fixture(scope="module")
def quiet_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server no other test calls: only the test's own call is in its journal's stream."""
    srv = start_server(tmp_path_factory.mktemp("watched"), "--max-hold", "20")
    yield srv
    srv.stop()


def wait_until(what: str, evidence: Callable[[], object], proc: subprocess.Popen[bytes] | None = None,
               timeout: float = EVIDENCE_WAIT * 3) -> None:
    deadline = time.monotonic() + timeout
    while not evidence():
        assert proc is None or proc.poll() is None, f"the watcher exited ({proc.returncode}) before {what}"
        assert time.monotonic() < deadline, f"no {what} within {timeout} s"
        time.sleep(0.01)


class Watcher:
    """`callstate watch --json` on `targets`, its stdout and stderr in files."""

    def __init__(self, tmp: Path, *targets: str) -> None:
        self.out, self.err = tmp / "watch.out", tmp / "watch.err"
        args = [arg for target in targets for arg in ("--target", target)]
        with open(self.out, "wb") as out, open(self.err, "wb") as err:
            self.proc = subprocess.Popen([sys.executable, "-m", "callstate", "watch", "--json", *args],
                                         stdout=out, stderr=err, env={**os.environ, "PYTHONUNBUFFERED": "1"})

    def said(self, text: str) -> bool:
        return text in self.err.read_text()

    def states_of(self, call_id: str) -> list[str]:
        lines = self.out.read_bytes()
        lines = lines[:lines.rfind(b"\n") + 1]
        return [e["state"] for e in map(orjson.loads, lines.splitlines()) if e["call_id"] == call_id]

    def interrupt(self) -> int:
        self.proc.send_signal(signal.SIGINT)
        return self.proc.wait(EVIDENCE_WAIT)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def one_call(target: str) -> str:
    """One completed call; its id."""
    done = cli("call", "--target", target, "--json", timeout=EVIDENCE_WAIT * 3)
    assert done.returncode == 0, done.stderr
    return orjson.loads(done.stdout.splitlines()[0])["call_id"]


def test_one_call_made_after_watching_is_seen(quiet_server: ServerProcess, tmp_path: Path) -> None:
    """The flake of the suites that looped calls until the watcher had its entries: exactly one
    call, made once "watching" is printed, must be shown."""
    watcher = Watcher(tmp_path, quiet_server.target)
    try:
        wait_until('"watching"', lambda: watcher.said("watching"), watcher.proc)
        call_id = one_call(quiet_server.target)
        wait_until("the call's End", lambda: "End" in watcher.states_of(call_id), watcher.proc)
        assert watcher.interrupt() == 0   # following until Ctrl-C is watch's job: a clean end
    finally:
        watcher.kill()
    assert watcher.states_of(call_id)[0] == "D"
    assert "Traceback" not in watcher.err.read_text()


class HeldRelay:
    """A TCP relay that lets a client's connection set up (preface, SETTINGS) and holds
    everything from its first request (an HTTP/2 HEADERS frame) until `release()`: a watcher's
    Watch request that has left the client and not reached the server."""

    def __init__(self, upstream: int) -> None:
        self.upstream, self.port = upstream, 0
        self.holding = threading.Event()   # a request has come and is held
        self._loop = asyncio.new_event_loop()
        self._gate = asyncio.Event()
        ready = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(ready,), daemon=True)
        self._thread.start()
        assert ready.wait(EVIDENCE_WAIT), "the relay did not start"

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def release(self) -> None:
        self._loop.call_soon_threadsafe(self._gate.set)

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(EVIDENCE_WAIT)

    def _run(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(asyncio.start_server(self._serve, "127.0.0.1", 0))
        self.port = server.sockets[0].getsockname()[1]
        ready.set()
        self._loop.run_forever()
        server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream)
        pumps = [asyncio.ensure_future(self._upward(reader, up_writer)),
                 asyncio.ensure_future(self._pump(up_reader, writer))]
        await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        for task in pumps:
            task.cancel()
        for w in (writer, up_writer):
            w.close()

    async def _upward(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            writer.write(await reader.readexactly(PREFACE))
            while True:
                header = await reader.readexactly(9)   # length (3), type, flags, stream (4)
                payload = await reader.readexactly(int.from_bytes(header[:3], "big"))
                if header[3] == HEADERS and not self._gate.is_set():
                    self.holding.set()
                    await self._gate.wait()
                writer.write(header + payload)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            return

    @staticmethod
    async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            return


def test_watching_is_not_said_before_every_target_has_the_stream(quiet_server: ServerProcess,
                                                                 tmp_path: Path) -> None:
    """Two targets, one of them behind a relay that holds the Watch request: no "watching"
    while it is held (it used to be printed before the request was even made), then once it
    is through; and the one call made then is seen."""
    relay = HeldRelay(quiet_server.port)
    watcher = Watcher(tmp_path, quiet_server.target, relay.target)
    try:
        wait_until("the held Watch request", relay.holding.is_set, watcher.proc)
        assert not watcher.said("watching"), watcher.err.read_text()
        relay.release()
        wait_until('"watching"', lambda: watcher.said("watching"), watcher.proc)
        call_id = one_call(quiet_server.target)
        # each target's stream shows it: both servers here are the same one
        wait_until("the call's End twice", lambda: watcher.states_of(call_id).count("End") == 2, watcher.proc)
        assert watcher.interrupt() == 0
    finally:
        watcher.kill()
        relay.stop()


def established_to(port: int) -> bool:
    """A TCP connection to `port` is established (a client's end of it; gRPC's sockets are
    IPv6 ones, 127.0.0.1 mapped)."""
    rows = [row for table in ("tcp", "tcp6") for row in Path(f"/proc/net/{table}").read_text().splitlines()[1:]]
    return any(row.split()[2].endswith(f":{port:04X}") and row.split()[3] == "01" for row in rows)


def test_ctrl_c_before_a_stalled_target_answers_ends_the_watch(tmp_path: Path) -> None:
    """A SIGSTOPped server accepts the connection (the kernel does) and never answers: Ctrl-C
    ends the watch at once, exit 130 (it never watched), one line naming the target."""
    srv = start_server(tmp_path, "--no-state-log")
    watcher = None
    os.kill(srv.proc.pid, signal.SIGSTOP)
    try:
        watcher = Watcher(tmp_path, srv.target)
        wait_until("the watcher's connection", lambda: established_to(srv.port), watcher.proc)
        assert watcher.interrupt() == 130
        err = watcher.err.read_text()
        assert err.splitlines() == [f"callstate watch: stopped before {srv.target} answered (not subscribed)"], err
    finally:
        if watcher is not None:
            watcher.kill()
        os.kill(srv.proc.pid, signal.SIGCONT)
        srv.stop()


def test_an_unreachable_target_is_one_line_and_no_watching(tmp_path: Path) -> None:
    srv = start_server(tmp_path, "--no-state-log")
    srv.stop()   # its port is free now: nothing listens there
    result = cli("watch", "--target", srv.target, timeout=EVIDENCE_WAIT * 3)
    assert result.returncode == 1
    [line] = result.stderr.splitlines()
    assert line.startswith(f"callstate watch: {srv.target}: UNAVAILABLE: "), line


@pytest.mark.parametrize("one_call_only", [False, True])
def test_a_timeout_before_a_stalled_target_answers_is_no_success(tmp_path: Path, one_call_only: bool) -> None:
    """--timeout ends a watch with exit 0 once it watched for that long; a target that has not
    answered by then was never watched: exit 1, one line saying so (it used to exit 0 silently)."""
    srv = start_server(tmp_path, "--no-state-log")
    os.kill(srv.proc.pid, signal.SIGSTOP)
    try:
        result = cli("watch", "--target", srv.target, "--timeout", "1", *(["--call-id", "c1"] * one_call_only),
                     timeout=EVIDENCE_WAIT * 3)
        assert result.returncode == 1, result.stderr
        assert result.stderr.splitlines() == [f"callstate watch: {srv.target}: no answer within --timeout 1 s "
                                              "(nothing was watched)"], result.stderr
    finally:
        os.kill(srv.proc.pid, signal.SIGCONT)
        srv.stop()


def test_a_timeout_after_watching_ends_the_watch_with_success(quiet_server: ServerProcess) -> None:
    result = cli("watch", "--target", quiet_server.target, "--timeout", "1", timeout=EVIDENCE_WAIT * 3)
    assert result.returncode == 0, result.stderr
    assert result.stderr.startswith(f"watching {quiet_server.target}"), result.stderr
