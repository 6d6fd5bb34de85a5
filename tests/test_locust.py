"""callstate.locust: a real Locust master with two worker processes against a real
`callstate serve`, its statistics against the workers' logs and the server's journal, and
`callstate check` over the whole distributed run. Locust runs in subprocesses only: importing
it here would monkey-patch this test process for gevent."""

from __future__ import annotations

import csv
import json
import os
import re
import socket
import subprocess
import sys
from collections import Counter
from pathlib import Path

import grpc
import pytest

from callstate import codes
from callstate.lifecycle import CAN, CLIENT, END, ENTER, PIPE_IN, PIPE_KINDS, SERVER, UNARY, kind_of_initial_move
from callstate.v1 import callstate_pb2 as pb
from callstate.v1 import callstate_pb2_grpc as pb_grpc
from tests.conftest import cli, read_entries, start_server, wait_for_text
from tests.documentation import blocks, section

pytestmark = pytest.mark.timeout(120)
BARRIER_PREFIX = "callstate-locust-barrier-"   # the workers' end-of-run barrier calls (server-only)
LOCUST = [sys.executable, "-m", "locust"]


def readme_locustfile() -> str:
    return blocks(section("Distributed load"), "python")[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stats_rows(path: Path) -> dict[str, dict[str, int]]:
    """Locust's final statistics (--json-file) of request type `callstate`, by request name."""
    return {row["name"]: row for row in json.loads(path.read_text()) if row["method"] == "callstate"}


def finals(entries: list[dict]) -> list[dict]:
    return [e for e in entries if e["state"] == END and e["event"] == ENTER]


def kinds(entries: list[dict]) -> dict[str, str]:
    """Each call's kind (unary or a pipe kind), from its first entry's move."""
    return {e["call_id"]: kind for e in entries if (kind := kind_of_initial_move(e.get("move")))}


def run_master_and_workers(tmp: Path, target: str, options: list[str], workers: int = 2,
                           worker_dir: Path | None = None, users: int = 6, run_time: str = "4s",
                           timeout: float = 120) -> tuple[int, list[int]]:
    """A headless master in `tmp` (locustfile.py, its json stats file `run`) and its workers (in
    `worker_dir`, default `tmp`), each writing its output to `master.out`/`workerN.out`: their
    exit statuses. `timeout`: how long the master may take."""
    worker_dir = worker_dir or tmp
    master_port = free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    common = ["-f", "locustfile.py"]
    procs: list[subprocess.Popen[bytes]] = []
    try:
        master = subprocess.Popen(
            [*LOCUST, *common, "--master", "--master-bind-host", "127.0.0.1", "--master-bind-port", str(master_port),
             "--headless", "--expect-workers", str(workers), "--expect-workers-max-wait", "40", "-u", str(users), "-r", str(users),
             "-t", run_time, "--stop-timeout", "5", "--host", target, "--json-file", "run", *options],
            cwd=tmp, env=env, stdout=open(tmp / "master.out", "wb"), stderr=subprocess.STDOUT)
        procs.append(master)
        for i in range(workers):
            procs.append(subprocess.Popen([*LOCUST, *common, "--worker", "--master-host", "127.0.0.1",
                                           "--master-port", str(master_port)], cwd=worker_dir, env=env,
                                          stdout=open(tmp / f"worker{i}.out", "wb"), stderr=subprocess.STDOUT))
        rc = master.wait(timeout)
        return rc, [p.wait(30) for p in procs[1:]]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(10)


def test_master_and_two_workers_report_per_code_and_pipe_kind_and_check_passes(tmp_path: Path) -> None:
    (tmp_path / "locustfile.py").write_text(readme_locustfile())
    srv = start_server(tmp_path, "--max-hold", "20")
    try:
        rc, worker_rcs = run_master_and_workers(tmp_path, srv.target, [
            "--csv", "run", "--csv-full-history",
            # held calls last 1 s: at the stop, workers take longer than the 0.5 s Locust's master
            # gives their final report, so the counts match only if the master waits for them
            "--callstate-abort-code", "5001", "--callstate-hold-for", "1",
            # a pipe share of each kind, cancelled at every point (the workers get it from the master)
            "--callstate-pipes", "in=20,out=20,both=20", "--callstate-pipe-messages", "3",
            "--callstate-pipe-cancel-at", "before-start,after-headers,after-sent:1,after-received:2,after-half-close"],
            users=8, run_time="5s", timeout=90)
        out = (tmp_path / "master.out").read_text()
        assert rc == 0, out
        assert worker_rcs == [0, 0], [(tmp_path / f"worker{i}.out").read_text() for i in range(2)]
        channel = grpc.insecure_channel(srv.target)
        counters = pb_grpc.JournalStub(channel).GetCounters(pb.CountersRequest(), timeout=5)
        channel.close()
    finally:
        srv.stop()

    rows = stats_rows(tmp_path / "run.json")
    logs = sorted(tmp_path.glob("callstate-client-*.jsonl"))
    assert len(logs) == 2, logs   # one client state log per worker, named by the worker's id
    per_worker = [read_entries(p) for p in logs]
    assert all(finals(entries) for entries in per_worker), "both workers made calls"
    client_finals = [e for entries in per_worker for e in finals(entries)]

    # one entry per final code, named "CODE NAME", a pipe's prefixed by its kind ("pipe-in CODE
    # NAME"); the command line's abort code reached the workers; the class attribute's mix has
    # no fatal outcome, so no 1726
    client_kinds = kinds([e for entries in per_worker for e in entries])
    by_name = Counter(("" if client_kinds[e["call_id"]] == UNARY else f"pipe-{client_kinds[e['call_id']]} ")
                      + codes.describe(e["code"]) for e in client_finals)
    code_rows = {name: row for name, row in rows.items() if name != "cancel propagation"}
    assert {name: row["num_requests"] for name, row in code_rows.items()} == dict(by_name)
    assert {"0 RPC_S_OK", "1818 RPC_S_CALL_CANCELLED", "5001 APPLICATION_ERROR_5001"} <= set(code_rows)
    for kind in PIPE_KINDS:   # each kind ended both normally and by its cancels
        assert {f"pipe-{kind} 0 RPC_S_OK", f"pipe-{kind} 1818 RPC_S_CALL_CANCELLED"} <= set(code_rows), code_rows
    assert not any(name.split(" ")[-2].startswith("1726") for name in code_rows)
    assert all(row["num_failures"] == 0 for row in rows.values())   # only expected codes

    # cancel propagation: its own entry, one sample per cancel the server saw after dispatching,
    # outside the Aggregated row (which counts calls only, and their rate) ...
    prop = rows["cancel propagation"]
    with open(tmp_path / "run_stats.csv", newline="") as f:
        final_csv = {row["Name"]: row for row in csv.DictReader(f)}
    assert int(final_csv["Aggregated"]["Request Count"]) == sum(r["num_requests"] for r in code_rows.values())
    assert int(final_csv["cancel propagation"]["Request Count"]) == prop["num_requests"]
    # ... and delivered while the run goes (workers report every 3 s), not only at the end
    with open(tmp_path / "run_stats_history.csv", newline="") as f:
        history = [row for row in csv.DictReader(f) if row["Name"] == "cancel propagation"]
    live = [int(row["Total Request Count"]) for row in history[:-1]]   # the last row: after the stop
    assert live and 0 < max(live) <= prop["num_requests"], (live, prop["num_requests"])
    report = cli("check", *map(str, logs), str(srv.log))
    assert report.returncode == 0, report.stdout + report.stderr
    assert "OK: every invariant holds" in report.stdout
    checked_n = int(re.search(r"cancel propagation .*?: n=(\d+)", report.stdout).group(1))  # type: ignore[union-attr]
    assert 0 < prop["num_requests"] <= checked_n

    # the server's journal counted what the workers' logs and Locust counted
    server = read_entries(srv.log)
    server_ids = {e["call_id"] for e in server}
    barrier_ids = {i for i in server_ids if i.startswith(BARRIER_PREFIX)}
    client_ids = {e["call_id"] for e in client_finals}
    assert len(barrier_ids) == 2
    assert server_ids - barrier_ids <= client_ids
    assert counters.dispatched == len(server_ids) and counters.in_flight == 0
    assert sum(counters.by_code.values()) == len(finals(server))
    assert {e["side"] for e in server} == {SERVER} and {e["side"] for e in client_finals} == {CLIENT}
    assert sum(r["num_requests"] for r in code_rows.values()) == len(client_ids)

    # pipe calls of each kind on both sides, every one of them judged by the check
    server_kinds = kinds(server)
    for kind in PIPE_KINDS:
        assert sum(k == kind for k in client_kinds.values()) > 3, Counter(client_kinds.values())
        assert sum(k == kind for k in server_kinds.values()) > 3, Counter(server_kinds.values())
    assert all(client_kinds[i] == k for i, k in server_kinds.items() if i in client_kinds)
    # the master's pipe options reached the workers: in pipes push 3 messages (not 5) and are
    # cancelled after the 1st (not the 2nd), after the half-close (3) or before any push (0)
    sent_at_cancel = {e["sent"] for entries in per_worker for e in entries
                      if e["state"] == CAN and e["event"] == ENTER and client_kinds[e["call_id"]] == PIPE_IN}
    assert 1 in sent_at_cancel and sent_at_cancel <= {0, 1, 3}, sent_at_cancel
    checked = int(re.search(r"^(\d+) calls, ", report.stdout, re.M).group(1))  # type: ignore[union-attr]
    assert checked == len(client_ids | server_ids)


SLOW_START = """
import time
import locust   # gevent's hub starts its clock here
t = time.perf_counter()
while time.perf_counter() - t < 2.5:   # imports that take a while on a busy machine
    pass
from callstate.locust import CallstateUser
"""


def test_unexpected_codes_are_failures_and_bad_options_one_line(tmp_path: Path, refused_target: str) -> None:
    (tmp_path / "locustfile.py").write_text(SLOW_START)
    dead = refused_target   # nobody listens: every call ends 1722, which no plan expects
    run = subprocess.run([*LOCUST, "-f", "locustfile.py", "--headless", "-u", "2", "-r", "2", "-t", "2s",
                          "--host", dead, "--json-file", "dead", "--callstate-log-file", ""],
                         cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert run.returncode == 1, run.stdout + run.stderr
    rows = stats_rows(tmp_path / "dead.json")
    row = rows["1722 RPC_S_SERVER_UNAVAILABLE"]
    assert row["num_failures"] == row["num_requests"] > 0
    # -t 2s ran for about 2 s, however long the imports took (gevent's clock is refreshed)
    assert row["last_request_timestamp"] - row["start_time"] > 1.5
    assert not list(tmp_path.glob("callstate-client-*.jsonl"))   # --callstate-log-file "" turns the log off

    bad = subprocess.run([*LOCUST, "-f", "locustfile.py", "--headless", "--callstate-mix", "sometimes=1"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2
    assert "argument --callstate-mix: mix entry 'sometimes=1': unknown name 'sometimes'" in bad.stderr
    assert "Traceback" not in bad.stderr
    for option, value, error in (("--callstate-pipes", "in=90,out=20", "pipe shares 'in=90,out=20' add up to more "
                                  "than 100%"), ("--callstate-pipe-cancel-at", "after-sent",
                                                 "pipe cancel point 'after-sent': after-sent needs :N")):
        bad = subprocess.run([*LOCUST, "-f", "locustfile.py", "--headless", option, value],
                             cwd=tmp_path, capture_output=True, text=True, timeout=60)
        assert bad.returncode == 2, bad.stderr
        assert bad.stderr.strip().splitlines()[-1].endswith(f"error: argument {option}: {error}"), bad.stderr
        assert "Traceback" not in bad.stderr
    for attributes, error in (
            ("    pipes = 'in=10'\n    pipe_messages = '2'\n    pipe_cancel_at = 'after-sent:3'\n",
             "callstate: Mine: pipe_cancel_at: after-sent:3 is never reached with pipe_messages 2"),
            ("    cancel_at = 'later'\n",
             "callstate: Mine: cancel_at = 'later': cancel point 'later': expected one of")):
        (tmp_path / "badattr.py").write_text("import callstate.locust\n\n\n"
                                             "class Mine(callstate.locust.CallstateUser):\n" + attributes)
        bad = subprocess.run([*LOCUST, "-f", "badattr.py", "--headless", "-t", "1s", "--host", dead],
                             cwd=tmp_path, capture_output=True, text=True, timeout=60)
        assert bad.returncode == 2
        assert error in bad.stderr
        assert "Traceback" not in bad.stderr


POOL_PROBE = """
import json, gevent
from locust import events

@events.test_stop.add_listener
def _pool(**_):   # the hub's pool, as the run leaves it
    open("pool.json", "w").write(json.dumps(gevent.get_hub().threadpool.maxsize))
"""


def test_cancel_propagation_reaches_the_statistics_while_the_run_goes(tmp_path: Path) -> None:
    """The follower of the server's journal kept up with a busy run (it fell seconds behind,
    most samples arriving in the catch-up after the stop: 315 live of 2,699 in a 20 s run)."""
    (tmp_path / "locustfile.py").write_text(readme_locustfile() + POOL_PROBE)
    srv = start_server(tmp_path, "--max-hold", "20", "--no-state-log")
    try:
        run = subprocess.run([*LOCUST, "-f", "locustfile.py", "--headless", "-u", "40", "-r", "40", "-t", "10s",
                              "--stop-timeout", "5", "--host", srv.target, "--json-file", "run", "--csv", "run",
                              "--csv-full-history", "--callstate-log-file", ""],
                             cwd=tmp_path, capture_output=True, text=True, timeout=90)
    finally:
        srv.stop()
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    stats = stats_rows(tmp_path / "run.json")
    final = stats["cancel propagation"]["num_requests"]
    with open(tmp_path / "run_stats_history.csv", newline="") as f:
        history = list(csv.DictReader(f))
    rows = [row for row in history if row["Name"] == "cancel propagation"]
    start = int(rows[0]["Timestamp"])
    live = max(int(row["Total Request Count"]) for row in rows if int(row["Timestamp"]) <= start + 8)
    # the cancelled calls themselves (counted as each call ends, no follower involved) by then: the
    # share of the run's cancels a follower that keeps up can have seen live. A machine that
    # starves Locust itself makes fewer calls early on, and a fixed share would blame the follower
    cancelled = next(name for name in stats if name.startswith(f"{codes.RPC_S_CALL_CANCELLED} "))
    cancels = stats[cancelled]["num_requests"]
    cancels_live = max(int(row["Total Request Count"]) for row in history if row["Name"] == cancelled
                       and int(row["Timestamp"]) <= start + 8)
    # 40 users, 40 channels: grpc waits for each on a thread of the hub's pool, which held 10
    # (callstate.locust.hub), and the follower's next message waited its turn behind them: 0.12
    # of the samples were live under stress-ng --cpu 2 (load 14), 3.6 s behind. Now 0.72-0.92 live
    # (load 12-29), close to the cancels' own share at that time (0.93 on a quiet machine): the bound
    # is half of that share
    assert final > 50 and cancels > 50 and live / final >= 0.5 * cancels_live / cancels, \
        (live, final, cancels_live, cancels)
    assert json.loads((tmp_path / "pool.json").read_text()) >= 40   # a thread for each user's channel


def test_a_follower_behind_catches_up_in_large_batches(server) -> None:  # type: ignore[no-untyped-def]
    """The Locust follower's channel (callstate.wire.FOLLOWER_WINDOW): while it reads nothing,
    the server's Follow holds its entries, and they come in a few large batches. With a window
    grown by bandwidth probing they had been let through as 10 ms batches, each a read."""
    from callstate.wire import FOLLOWER_WINDOW
    calls = 400
    channel = grpc.insecure_channel(server.target, options=list(FOLLOWER_WINDOW))
    try:
        stream = pb_grpc.JournalStub(channel).Follow(pb.WatchRequest(), timeout=60)
        next(stream)   # subscribed
        emulator = pb_grpc.EmulatorStub(channel)
        ids = [f"loc34-follow-{os.urandom(6).hex()}-{i}" for i in range(calls)]
        futures = [emulator.Call.future(pb.CallRequest(call_id=i, script=pb.Script(outcome=pb.OUTCOME_COMPLETE)),
                                        timeout=30) for i in ids]
        for f in futures:
            f.result()
        mine, ended, sizes = set(ids), set(), []
        for batch in stream:   # read only now: every call has ended on the server
            sizes.append(len(batch.entries))
            ended |= {e.call_id for e in batch.entries if e.state == END and e.event == ENTER} & mine
            if ended == mine:
                break
        stream.cancel()
    finally:
        channel.close()
    assert ended == mine
    # the window holds a few dozen of them; the rest waited on the server for the reader
    assert max(sizes) >= calls, sizes


SPAWN_PARSES = """
import callstate.locust
from locust import argument_parser
locust_own = argument_parser.default_args_dict()
built = []
make = argument_parser.get_empty_argument_parser
argument_parser.get_empty_argument_parser = lambda *a, **k: built.append(1) or make(*a, **k)
for _ in range(120):   # a worker told to spawn: once per option the master sent
    assert argument_parser.default_args_dict() == locust_own
print(len(built))
"""


def test_a_worker_told_to_spawn_reads_locusts_defaults_once() -> None:
    """Locust's worker builds its whole argument parser once per option the master sends when told
    to spawn (about 30 ms each on a loaded 2-core machine: 3.5 s for 120 options, the hub held and
    the heartbeat with it: the master marked workers missing). callstate.locust.hub reads them once."""
    done = subprocess.run([sys.executable, "-c", SPAWN_PARSES], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert int(done.stdout) <= 1, done.stdout


def test_a_journal_stream_that_ends_mid_run_is_said(tmp_path: Path) -> None:
    """The server stopped mid-run: the `cancel propagation` entry stops growing there, and the
    Locust output says so, once (the follower ended without a word)."""
    (tmp_path / "locustfile.py").write_text("from callstate.locust import CallstateUser\n")
    srv = start_server(tmp_path, "--max-hold", "20", "--no-state-log")
    log = tmp_path / "client.jsonl"
    run = subprocess.Popen([*LOCUST, "-f", "locustfile.py", "--headless", "-u", "2", "-r", "2", "-t", "4s",
                            "--host", srv.target, "--callstate-log-file", str(log)],
                           cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for_text(log, '"state":"End"', run)   # calls go through: the follower is subscribed
        srv.stop()
        out, _ = run.communicate(timeout=60)
    finally:
        srv.stop()
        if run.poll() is None:
            run.kill()
            run.wait(10)
    said = [line for line in out.splitlines() if "journal stream" in line]
    assert len(said) == 1 and "cancel propagation holds the calls until then" in said[0], out[-3000:]
