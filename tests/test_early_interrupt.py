"""Ctrl-C in a command's first moments: one line at most and the interrupted command's exit
status, never a KeyboardInterrupt traceback, and nothing already recorded lost.

The command's modules (grpc, protobuf) take a tenth of a second to load, seconds on a busy
machine. `callstate.cli` itself loads next to nothing, so `main()` is running by then: it notes
a Ctrl-C while the command's modules load (exit 130 once they have), and catches the
KeyboardInterrupt until the command installs its own handler. The instants tested are found
by evidence in the process itself (a library mapped into its memory, a line it has written),
not by a sleep.

Not covered, because no code of the project has run yet: a signal before the interpreter has
installed its handler kills the process with SIGINT (no traceback; the shell says 130), and one
while the interpreter imports `site` is CPython's own "Fatal Python error" (a few ms).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Iterator

import orjson
import pytest

from tests.conftest import EVIDENCE_WAIT, ServerProcess, complete_lines, start_server

PROTOBUF = "google/_upb/_message"   # protobuf's C module: mapped while the command's modules load
GRPC = "grpc/_cython/cygrpc"        # grpc's, later (commands that make or serve calls)
# What the interrupted command itself may exit with, once its own handler runs: serve stops
# gracefully (0); watch follows until Ctrl-C (0); call cancels its call, which ends 1818 (1).
# Before that, main() answers 130; a signal in the interpreter's last moments (its handlers
# restored) kills it with SIGINT, which a shell reports as 130 too.
INTERRUPTED = {130, -signal.SIGINT}
OWN_STATUS = {"serve": {0}, "watch": {0}, "call": {1}, "load": set(), "check": set()}
# Commands tried at the first point only; what they print when the signal comes after all
# (the test's process was slow): health's SERVING (0), report's verdict on a one-sided log (1).
FIRST_POINT_ONLY = {"report": {1}, "health": {0}, "conformance": set()}


@pytest.fixture(scope="module")
def quiet_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    srv = start_server(tmp_path_factory.mktemp("interrupt"), "--max-hold", "60")
    yield srv
    srv.stop()


def mapped(pid: int, library: str) -> bool:
    try:
        return library in Path(f"/proc/{pid}/maps").read_text()
    except OSError:   # it has exited
        return False


def wait_for(proc: subprocess.Popen[bytes], evidence: Callable[[], bool]) -> None:
    """Poll (1 ms) until `evidence` holds; bounded, and the process must still be running."""
    deadline = time.monotonic() + EVIDENCE_WAIT * 3
    while not evidence():
        assert proc.poll() is None, f"exited ({proc.returncode}) before the evidence"
        assert time.monotonic() < deadline, "no evidence in time"
        time.sleep(0.001)


def command_line(name: str, target: str, server_log: Path, tmp: Path, refused: str) -> list[str]:
    log = str(tmp / f"{name}.jsonl")
    return {
        "serve": ["serve", "--port", "0", "--port-file", str(tmp / "port"), "--log-file", log],
        "call": ["call", "--target", target, "--outcome", "hold", "--log-file", log],
        "load": ["load", "--target", target, "--duration", "120", "--log-file", log],
        "watch": ["watch", "--target", target, "--dashboard", "never"],
        "check": ["check", "--allow-one-side", str(server_log)],
        "report": ["report", str(server_log), "--html", str(tmp / "report.html")],
        "health": ["health", "--target", target],
        "conformance": ["conformance", "--serve-port", "0", "--proxy", refused],
    }[name]


def running(name: str, proc: subprocess.Popen[bytes], server_log: Path, tmp: Path) -> Callable[[], bool]:
    """Evidence that the command is past its imports and at work."""
    if name == "serve":
        return lambda: (tmp / "port").exists() and bool((tmp / "port").read_text().strip())
    if name in ("call", "load"):   # its first state logged
        log = tmp / f"{name}.jsonl"
        return lambda: log.exists() and bool(complete_lines(log.read_bytes()))
    if name == "watch":
        return lambda: b"watching" in (tmp / "stderr").read_bytes()
    raise AssertionError(f"no evidence of {name} at work")


POINTS = {   # the instants Ctrl-C is sent at, each after its evidence
    "protobuf loaded": lambda proc, name, log, tmp: (lambda: mapped(proc.pid, PROTOBUF)),
    "grpc loaded": lambda proc, name, log, tmp: (lambda: mapped(proc.pid, GRPC)),
    "at work": lambda proc, name, log, tmp: running(name, proc, log, tmp),
}


CONSOLE_SCRIPT = Path(sys.executable).with_name("callstate")   # what `pip install` puts on PATH
# SIGINT at its default, then exec: an ignored SIGINT passes on through fork and exec
DEFAULT_SIGINT = [sys.executable, "-c", "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
                  "os.execv(sys.argv[1], sys.argv[1:])"]


# check loads no grpc, and judges a log too fast to be caught at work: the first point only
CASES = [(name, point) for name in OWN_STATUS for point in POINTS if name != "check" or point == "protobuf loaded"]
CASES += [(name, "protobuf loaded") for name in FIRST_POINT_ONLY]


@pytest.mark.parametrize("name, point", CASES)
def test_ctrl_c_early_in_a_command_exits_without_a_traceback(quiet_server: ServerProcess, tmp_path: Path,
                                                              name: str, point: str, refused_target: str) -> None:
    # the console script for check (it imports callstate.cli before main() runs), -m for the rest
    entry = ([str(CONSOLE_SCRIPT)] if name == "check" and CONSOLE_SCRIPT.exists()
             else [sys.executable, "-m", "callstate"])
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:   # pytest as a script's background job: the command
        entry = [*DEFAULT_SIGINT, *entry]                     # as a terminal starts it (check, report, health keep an ignored one)
    stderr = tmp_path / "stderr"
    with open(stderr, "wb") as err_file:
        proc = subprocess.Popen([*entry, *command_line(name, quiet_server.target, quiet_server.log, tmp_path,
                                                       refused_target)],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err_file,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        wait_for(proc, POINTS[point](proc, name, quiet_server.log, tmp_path))
        proc.send_signal(signal.SIGINT)
        status = proc.wait(EVIDENCE_WAIT * 2)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    err = stderr.read_text()
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert status in INTERRUPTED | {**OWN_STATUS, **FIRST_POINT_ONLY}[name], (status, err)
    log = tmp_path / f"{name}.jsonl"
    if name in ("call", "load") and log.exists():   # what was recorded is all there, line by line
        data = log.read_bytes()
        assert data == b"" or data.endswith(b"\n"), data[-200:]
        for line in data.splitlines():
            orjson.loads(line)
        if point == "at work" and name == "call":   # its own handler: the call ended, and so said
            assert b'"End"' in data, data


def test_ctrl_c_while_a_command_loads_is_noted_not_raised_inside_the_loading(monkeypatch: pytest.MonkeyPatch,
                                                                            tmp_path: Path) -> None:
    """A KeyboardInterrupt raised inside an extension module's initialisation (orjson's was
    seen) can crash the interpreter with SIGSEGV or come out as an ImportError: while the
    command's modules load, main() notes Ctrl-C and answers 130 once they have loaded."""
    import callstate.cli as cli_module

    real, finished = cli_module.build_parser, []

    def loading(*args: object, **kwargs: object) -> object:
        signal.raise_signal(signal.SIGINT)   # Ctrl-C, in the middle of the imports
        for _ in range(1000):   # Python runs a signal's handler between bytecodes: here
            pass
        finished.append(True)
        return real(*args, **kwargs)  # type: ignore[arg-type]
    monkeypatch.setattr(cli_module, "build_parser", loading)
    # a terminal's Ctrl-C: Python's handler, even when pytest runs as a script's background job with
    # SIGINT ignored (check then ignores it while it loads too: tests/test_audit34_rvb.py)
    found = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        assert cli_module.main(["check", str(tmp_path / "absent.jsonl")]) == 130   # 2 had it run
        assert finished == [True], "the KeyboardInterrupt was raised inside the loading"
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler   # the handler is given back
    finally:
        signal.signal(signal.SIGINT, found)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_before_the_start_cancels_the_call_once_it_is_started(sig: int) -> None:
    """`callstate call` takes Ctrl-C and SIGTERM from before it starts the call: one that comes
    while the call is still in C is kept and cancels the call once it is started (it used to
    find the default handlers: exit 130 with the call closed as 1722, or killed by SIGTERM);
    one that comes after cancels at once."""
    import asyncio
    from types import SimpleNamespace

    from callstate.cli.interrupt import CancelOnSignals
    from callstate.lifecycle import C, WCOMP

    async def until(done: Callable[[], bool]) -> None:
        deadline = asyncio.get_running_loop().time() + EVIDENCE_WAIT
        while not done() and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.01)

    async def go() -> None:
        call = SimpleNamespace(state=C)
        cancels: list[str] = []
        signals = CancelOnSignals(call, lambda c: cancels.append(c.state))
        os.kill(os.getpid(), sig)
        await until(lambda: bool(signals.caught))
        assert signals.caught == [sig] and cancels == []   # in C: kept, not applied
        call.state = WCOMP
        signals.started()
        assert cancels == [WCOMP]                          # applied once the call is started
        os.kill(os.getpid(), sig)
        await until(lambda: len(cancels) == 2)
        assert cancels == [WCOMP, WCOMP]                   # after the start: at once
    asyncio.run(go())


@pytest.mark.parametrize("catches", [True, False])
def test_a_command_that_catches_ctrl_c_gets_python_s_handler_not_an_ignored_sigint(catches: bool) -> None:
    """Started with SIGINT ignored (a script's background job), a command that catches Ctrl-C
    itself once started (call, watch, load, conformance) gets Python's handler back after
    loading, not the ignored one: a Ctrl-C or `kill -INT` before its own handler was lost, and
    `call` then held its call until killed. The others (check, report, health) keep it ignored."""
    from callstate.cli import _DeferredInterrupt

    found = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with _DeferredInterrupt(catches=catches):
            pass
        assert signal.getsignal(signal.SIGINT) is (signal.default_int_handler if catches else signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        with pytest.raises(SystemExit), _DeferredInterrupt(catches=catches):   # refused at parse time: no run
            raise SystemExit(2)
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN   # the handler found, given back
    finally:
        signal.signal(signal.SIGINT, found)


def sigint_masks(pid: int) -> tuple[bool, bool] | None:
    """Whether the process ignores SIGINT, and whether it catches it (None once it has exited)."""
    try:
        fields = dict(line.split(":\t", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                      if ":\t" in line)
    except OSError:
        return None
    bit = 1 << (signal.SIGINT - 1)
    return bool(int(fields["SigIgn"], 16) & bit), bool(int(fields["SigCgt"], 16) & bit)


def test_a_call_started_with_sigint_ignored_never_drops_ctrl_c_once_its_code_catches_it(
        quiet_server: ServerProcess, tmp_path: Path) -> None:
    """`callstate call ... &` in a script: from the moment its code catches SIGINT until the call
    is on its way, SIGINT is never ignored (the ignored handler came back between the loading and
    the call's own handler: a Ctrl-C there was lost, seen as a hang under load)."""
    log, err = tmp_path / "call.jsonl", tmp_path / "stderr"
    with open(err, "wb") as err_file:
        proc = subprocess.Popen(["sh", "-c", 'trap "" INT; exec "$0" -m callstate "$@"', sys.executable, "call",
                                 "--target", quiet_server.target, "--outcome", "hold", "--log-file", str(log)],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err_file)
    try:
        python = os.path.realpath(sys.executable)

        def caught() -> bool:   # once the shell has exec'd Python and main() has its handler in
            masks = sigint_masks(proc.pid)
            try:
                execd = os.path.realpath(f"/proc/{proc.pid}/exe") == python
            except OSError:
                execd = False
            return execd and masks is not None and masks[1]
        wait_for(proc, caught)
        samples, deadline = 0, time.monotonic() + EVIDENCE_WAIT * 3
        while not (log.exists() and b'"WComp"' in log.read_bytes()):
            masks = sigint_masks(proc.pid)
            assert masks is not None and proc.poll() is None, err.read_text()
            assert not masks[0], f"SIGINT ignored after {samples} samples"
            assert time.monotonic() < deadline, "the call was not started in time"
            samples += 1
            time.sleep(0.001)
        proc.send_signal(signal.SIGINT)   # the call's own handler: its abortive cancel
        assert proc.wait(EVIDENCE_WAIT * 2) == 1, err.read_text()
        assert b'"Can"' in log.read_bytes()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
