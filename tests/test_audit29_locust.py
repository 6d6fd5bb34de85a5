"""Audit of the Locust user and `callstate load` under long, distributed and interrupted runs:
real Locust masters and workers (processes started and stopped here, by PID) against a real
`callstate serve`, and `callstate load` stopped by real signals. Locust runs in subprocesses
only: importing it here would monkey-patch this test process for gevent."""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import pytest

from tests.conftest import EVIDENCE_WAIT, ServerProcess, read_entries, start_server

pytestmark = [pytest.mark.timeout(120),
              pytest.mark.skipif(importlib.util.find_spec("locust") is None,
                                 reason="needs Locust (pip install 'callstate[locust]')")]
LOCUST = [sys.executable, "-m", "locust"]
ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}
LOCUSTFILE = "from callstate.locust import CallstateUser\n"


def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(what: str, holds: Callable[[], bool], procs: list[subprocess.Popen[bytes]] = (),  # type: ignore[assignment]
             timeout: float = EVIDENCE_WAIT) -> None:
    """Until `holds()`, bounded; fails naming `what` (at once if one of `procs` ended)."""
    deadline = time.monotonic() + timeout
    while not holds():
        assert all(p.poll() is None for p in procs), f"a process ended while waiting for {what}"
        assert time.monotonic() < deadline, f"no {what} within {timeout:g} s"
        time.sleep(0.05)


def ended_calls(path: Path) -> int:
    return sum(e["state"] == "End" and e["event"] == "enter" for e in read_entries(path))


class Distributed:
    """A headless master and its workers in `tmp`, each writing to `<name>.out`."""

    def __init__(self, tmp: Path, target: str, options: list[str], workers: int = 2, users: int = 6,
                 run_time: str = "60s") -> None:
        self.tmp, self.port = tmp, free_port()
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.start("master", ["--master", "--master-bind-host", "127.0.0.1", "--master-bind-port", str(self.port),
                              "--headless", "--expect-workers", str(max(workers, 1)), "--expect-workers-max-wait", "40",
                              "-u", str(users), "-r", str(users), "-t", run_time, "--host", target, *options])
        for i in range(workers):
            self.start(f"worker{i}", ["--worker", "--master-host", "127.0.0.1", "--master-port", str(self.port)])

    def start(self, name: str, args: list[str]) -> None:
        self.procs[name] = subprocess.Popen([*LOCUST, "-f", "locustfile.py", *args], cwd=self.tmp, env=ENV,
                                            stdout=open(self.tmp / f"{name}.out", "wb"), stderr=subprocess.STDOUT)

    def out(self, name: str) -> str:
        return (self.tmp / f"{name}.out").read_text(errors="replace")

    def stop(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.kill()
                p.wait(10)


def test_a_killed_worker_is_not_waited_for_at_the_end(tmp_path: Path, server: ServerProcess) -> None:
    """A worker SIGKILLed mid-run (Locust marks it missing) cannot answer the master's request
    for its last calls: the master waited the whole 15 s for it and then warned that it had
    not reported, as if the surviving workers were late."""
    (tmp_path / "locustfile.py").write_text(LOCUSTFILE)
    run = Distributed(tmp_path, server.target, ["--json-file", "run"])
    try:
        procs = list(run.procs.values())
        wait_for("calls from both workers", lambda: len(list(tmp_path.glob("callstate-client-*.jsonl"))) == 2
                 and all(ended_calls(p) for p in tmp_path.glob("callstate-client-*.jsonl")), procs, 40)
        run.procs["worker0"].kill()
        run.procs["worker0"].wait(10)
        wait_for("the master to see the worker missing", lambda: "setting state to missing" in run.out("master"),
                 [run.procs["master"]], 30)
        run.procs["master"].send_signal(signal.SIGTERM)   # the run ends: the master asks for last calls
        assert run.procs["master"].wait(60) == 0, run.out("master")
        assert run.procs["worker1"].wait(30) == 0, run.out("worker1")
    finally:
        run.stop()
    assert "did not report their last calls" not in run.out("master"), run.out("master")
    rows = {row["name"]: row["num_requests"] for row in json.loads((tmp_path / "run.json").read_text())}
    assert sum(n for name, n in rows.items() if name != "cancel propagation") > 0


def failures_table(path: Path) -> dict[str, int]:
    """Locust's --csv failure table: error text -> occurrences."""
    with open(path, newline="") as f:
        return {row["Error"]: int(row["Occurrences"]) for row in csv.DictReader(f)}


def test_the_failure_table_says_why_a_code_was_unexpected(tmp_path: Path, refused_target: str) -> None:
    """A wrong host fills Locust's failure table with 1722: the row said only "a final code the
    scenario does not expect", not what gRPC said (which address, connection refused)."""
    (tmp_path / "locustfile.py").write_text(LOCUSTFILE)
    run = subprocess.run([*LOCUST, "-f", "locustfile.py", "--headless", "-u", "2", "-r", "2", "-t", "2s",
                          "--host", refused_target, "--csv", "run", "--callstate-log-file", "",
                          "--callstate-cancel", "abortive=50", "--callstate-mix", "complete=50,abort=50"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=60, env=ENV)
    assert run.returncode == 1, run.stdout[-2000:] + run.stderr[-2000:]
    table = failures_table(tmp_path / "run_failures.csv")
    assert table, "the failures were counted"
    for error in table:   # the failure names gRPC's status and what it said: the address, refused
        assert error.startswith("UnexpectedCode('1722 RPC_S_SERVER_UNAVAILABLE (gRPC UNAVAILABLE: "), error
        assert refused_target in error, error
        assert error.endswith("): a final code its plan does not expect')"), error
    # one row per cause: neither the calls' ids nor their plans split it
    assert len(table) == 1, table


def test_a_local_run_whose_users_cannot_start_ends_at_once(tmp_path: Path, refused_target: str) -> None:
    """Without a master, users that cannot run (a state log that cannot be written) said so,
    then the headless run idled, no call made, until its -t ran out (an hour's run, an hour)."""
    (tmp_path / "locustfile.py").write_text(LOCUSTFILE)
    proc = subprocess.Popen([*LOCUST, "-f", "locustfile.py", "--headless", "-u", "2", "-r", "2", "-t", "10m",
                             "--host", refused_target, "--callstate-log-file",
                             str(tmp_path / "no-such-dir" / "client.jsonl")],
                            cwd=tmp_path, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        out, _ = proc.communicate(timeout=40)   # far below -t: the run ended itself
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    text = out.decode(errors="replace")
    assert proc.returncode == 2, text[-2000:]
    # the line names the option typed, not the class attribute behind it
    assert (f"callstate: CallstateUser: --callstate-log-file {tmp_path / 'no-such-dir' / 'client.jsonl'}: cannot "
            "write the state log (No such file or directory)") in text, text[-2000:]
    assert "Traceback" not in text


@pytest.mark.parametrize("options, line", [
    (["--callstate-pipe-messages", "2"],
     "error: --callstate-pipe-messages applies to pipes: set --callstate-pipes (e.g. in=10,out=10,both=10)"),
    (["--callstate-pipes", "in=50", "--callstate-pipe-messages", "1", "--callstate-pipe-cancel-at", "after-received:3"],
     "error: --callstate-pipe-cancel-at: after-received:3 is never reached with --callstate-pipe-messages 1: "
     "each side pushes that many"),
])
def test_pipe_options_read_together_are_a_usage_line_naming_them(tmp_path: Path, options: list[str],
                                                                  line: str, refused_target: str) -> None:
    """Pipe options that only fail together named the class attributes (`pipe_messages`,
    `pipe_cancel_at`) the user never wrote, in a log line rather than Locust's usage error."""
    (tmp_path / "locustfile.py").write_text(LOCUSTFILE)
    run = subprocess.run([*LOCUST, "-f", "locustfile.py", "--headless", "-t", "1s", "--host",
                          refused_target, *options], cwd=tmp_path, capture_output=True, text=True,
                         timeout=60, env=ENV)
    assert run.returncode == 2, run.stderr[-2000:]
    assert run.stderr.strip().splitlines()[-1].endswith(line), run.stderr[-2000:]
    assert "Traceback" not in run.stderr


def started_calls(path: Path) -> int:
    return sum(e["event"] == "enter" and e.get("move") == "started" for e in read_entries(path))


def test_load_a_second_signal_cancels_the_calls_in_flight_and_the_first_is_reported(tmp_path: Path) -> None:
    """`load` stopped by Ctrl-C waits for its calls in flight: held ones for their whole
    --hold-for, saying nothing, and a second SIGINT or SIGTERM was ignored (the run went on
    for the hold); the last signal's name replaced the first's, so Ctrl-C then SIGTERM exited 0."""
    srv = start_server(tmp_path, "--max-hold", "120")
    log, err = tmp_path / "client.jsonl", tmp_path / "load.err"
    proc = subprocess.Popen([sys.executable, "-m", "callstate", "load", "--target", srv.target, "--duration", "100",
                             "--concurrency", "4", "--mix", "hold=100", "--cancel", "none", "--hold-for", "90",
                             "--log-file", str(log), "--report", str(tmp_path / "report.json")],
                            cwd=tmp_path, env=ENV, stdout=subprocess.PIPE, stderr=open(err, "wb"))
    try:
        wait_for("4 held calls", lambda: started_calls(log) == 4, [proc])
        proc.send_signal(signal.SIGINT)
        wait_for("the line saying the run waits for its calls",
                 lambda: "SIGINT: starting no more calls; waiting for the 4 calls in flight" in err.read_text(), [proc])
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)   # far below the 90 s hold the calls would otherwise keep
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        srv.stop()
    text = out.decode()
    assert proc.returncode == 130, text + err.read_text()   # Ctrl-C came first
    assert "SIGTERM: cancelling the 4 calls in flight" in err.read_text()
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["interrupted"] == "SIGINT" and "(stopped early: SIGINT)" in text
    assert report["calls"] == 4 and report["by_code"] == {"1818": 4}
    assert report["paths"] == {"hold": 4, "cancel-at-stop": 4}
    assert report["check"]["ok"], report["check"]
    assert ended_calls(log) == 4
    check = subprocess.run([sys.executable, "-m", "callstate", "check", str(log), str(srv.log)], capture_output=True,
                           text=True, timeout=60)
    assert check.returncode == 0 and "OK: every invariant holds" in check.stdout, check.stdout + check.stderr


@pytest.mark.parametrize("attribute, line", [
    ("call_timeout = 0", "callstate: Mine: call_timeout = 0: '0' must be a finite number > 0"),   # was a traceback
    ("hold_for = -1", "callstate: Mine: hold_for = -1: '-1' must be a finite number > 0"),       # was taken
    ("delay = -1", "callstate: Mine: delay = -1: '-1' must be a finite number >= 0"),
])
def test_a_class_attribute_out_of_its_options_range_is_one_line(tmp_path: Path, attribute: str, line: str,
                                                                 refused_target: str) -> None:
    """Class attributes take the text the options take, but numbers the options refuse were
    taken (a negative hold or delay, a zero escalation), or failed in every user's spawn with a
    traceback (a zero call timeout), the run idling to its end."""
    (tmp_path / "bad.py").write_text(f"import callstate.locust\n\n\nclass Mine(callstate.locust.CallstateUser):\n"
                                     f"    {attribute}\n")
    run = subprocess.run([*LOCUST, "-f", "bad.py", "--headless", "-u", "1", "-r", "1", "-t", "2s", "--host",
                          refused_target, "--callstate-log-file", ""], cwd=tmp_path,
                         capture_output=True, text=True, timeout=60, env=ENV)
    assert run.returncode == 2, run.stderr[-2000:]
    assert line in run.stderr, run.stderr[-2000:]
    assert "Traceback" not in run.stderr


def test_a_host_whose_port_is_out_of_range_is_a_usage_line(tmp_path: Path, server: ServerProcess) -> None:
    """`--host 127.0.0.1:PORT+65536` ran against 127.0.0.1:PORT (gRPC takes the port modulo
    65536): a typo reached another service. `callstate load --target` refuses it; so does Locust now."""
    (tmp_path / "locustfile.py").write_text(LOCUSTFILE)
    host = f"127.0.0.1:{server.port + 65536}"
    run = subprocess.run([*LOCUST, "-f", "locustfile.py", "--headless", "-u", "1", "-r", "1", "-t", "2s", "--host",
                          host, "--callstate-log-file", str(tmp_path / "client.jsonl")], cwd=tmp_path,
                         capture_output=True, text=True, timeout=60, env=ENV)
    assert run.returncode == 2, run.stdout[-2000:] + run.stderr[-2000:]
    assert run.stderr.strip().splitlines()[-1].endswith(
        f"error: argument --host: '{host}': the port must be a number from 1 to 65535"), run.stderr[-2000:]
    assert not read_entries(tmp_path / "client.jsonl")   # no call was made, to any port


def test_an_option_typed_on_a_worker_is_kept(tmp_path: Path, server: ServerProcess) -> None:
    """Locust replaces a worker's custom options with the master's when it spawns, those the
    master was not given included: a worker's own --callstate-log-file (a path on its machine)
    was dropped without a word, its log written under the default name."""
    (tmp_path / "locustfile.py").write_text(LOCUSTFILE)
    run = Distributed(tmp_path, server.target, ["--json-file", "run"], workers=0, users=2, run_time="3s")
    run.start("worker0", ["--worker", "--master-host", "127.0.0.1", "--master-port", str(run.port),
                          "--callstate-log-file", "mine-{worker}.jsonl"])
    try:
        assert run.procs["master"].wait(60) == 0, run.out("master")
        assert run.procs["worker0"].wait(30) == 0, run.out("worker0")
    finally:
        run.stop()
    assert not list(tmp_path.glob("callstate-client-*.jsonl"))
    mine = list(tmp_path.glob("mine-*.jsonl"))
    assert len(mine) == 1 and ended_calls(mine[0]) > 0, mine
    rows = {row["name"]: row["num_requests"] for row in json.loads((tmp_path / "run.json").read_text())}
    assert sum(n for name, n in rows.items() if name != "cancel propagation") == ended_calls(mine[0])
