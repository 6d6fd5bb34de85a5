"""Audit 34, replicas behind a balancer as a user runs them: a cancel notice that reaches another
replica than its call is named by `check` (notice_astray), not passed as OK; `load` through a
balancer without --no-verify says why calls look unknown to the server."""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from callstate.check import KINDS, NOTICE_KEPT, check_entries
from callstate.client.notice import notice_outcome
from callstate.v1 import callstate_pb2 as pb
from tests.conftest import EVIDENCE_WAIT, ServerProcess, cli, read_entries, start_server, wait_for_text
from tests.middleboxes import free_port
from tests.test_scale import TEMPLATE, shipped_nginx

pytestmark = pytest.mark.timeout(120)
needs_nginx = pytest.mark.skipif(shutil.which("nginx") is None,
                                 reason="needs nginx (tools/system-deps.sh installs it)")
CALL = "a346882eb1050bfbc43473dcbac3c5f9"


def _e(ms: float, side: str, state: str, prev: str | None, move: str = "", event: str = "enter",
       **extra: Any) -> dict[str, Any]:
    sec, frac = divmod(ms / 1000, 1)
    e = {"ts": f"2026-12-06T06:52:{int(sec):02d}.{int(frac * 1e6):06d}Z", "side": side, "call_id": CALL,
         "state": state, "prev": prev, "event": event}
    if move:
        e["move"] = move
    return {**e, **extra}


def _client(detail: str) -> list[dict[str, Any]]:
    """A held call's caller: a non-abortive cancel whose notice is answered `detail`, escalated to
    abortive 50 ms later (as `load` logged it through a round-robin nginx)."""
    return [_e(512, "client", "C", None, "call"), _e(512.3, "client", "WComp", "C", "started"),
            _e(523.6, "client", "Can", "WComp", "cancel", cancel="non-abortive"),
            _e(523.7, "client", "WComp", "Can", "cancel_issued"),
            _e(555.8, "client", "WComp", "WComp", event="cancel_sent", detail=detail),
            _e(582.9, "client", "WComp", "WComp", event="cancel_escalated", detail="no answer 0.05s after the notice"),
            _e(583.0, "client", "Can", "WComp", "cancel", cancel="abortive"),
            _e(583.1, "client", "WComp", "Can", "cancel_issued"),
            _e(592.3, "client", "Comp", "WComp", "complete"),
            _e(592.4, "client", "End", "Comp", "completed", code=1818, grpc_status="CANCELLED")]


def _server(dispatched: float = 531.3, notice_seen: bool = False) -> list[dict[str, Any]]:
    seen = [_e(dispatched, "server", "D", "D", event="cancel_seen", cancel="non-abortive")] if notice_seen else []
    return [_e(dispatched, "server", "D", None, "dispatch"), *seen,
            _e(dispatched + 54, "server", "D", "D", event="cancel_seen", cancel="abortive"),
            _e(dispatched + 54.1, "server", "A", "D", "abort", detail="code=1818"),
            _e(dispatched + 54.2, "server", "End", "A", "aborted", code=1818, grpc_status="CANCELLED")]


def _kinds(entries: list[dict[str, Any]]) -> list[str]:
    return [v.kind for v in check_entries(entries).violations]


def test_a_notice_kept_by_another_server_than_its_call_is_named() -> None:
    # the client's own words for a notice kept for a dispatch: what the checker looks for
    assert notice_outcome(pb.CancelReply(delivered=True, state="")) == NOTICE_KEPT
    # kept by a server that never dispatched the call; the one that did saw no notice: astray
    assert _kinds(_client(NOTICE_KEPT) + _server()) == ["notice_astray"]
    assert "balancer" in KINDS["notice_astray"] and "callstate-call-id" in KINDS["notice_astray"]
    # near misses, each OK: the notice kept, then applied at the dispatch (a notice that overtook
    # its call on the right server) ...
    assert _kinds(_client(NOTICE_KEPT) + _server(dispatched=560.0, notice_seen=True)) == []
    # ... a notice delivered to the live call, or one that found it ended
    assert _kinds(_client("delivered in D") + _server()) == []
    assert _kinds(_client("not delivered: the call had already ended (End)") + _server()) == []
    # ... the call ended on its server before the client cancelled (a journal that forgot it keeps
    # a late notice too), or came long after the notice (past --early-notice-ttl)
    assert _kinds(_client(NOTICE_KEPT) + [e for e in _server(dispatched=400.0) if "cancel" not in e]) == []
    assert _kinds(_client(NOTICE_KEPT) + _server(dispatched=1600.0)) == []


@pytest.fixture(scope="module")
def two_replicas(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[ServerProcess]]:
    logs = tmp_path_factory.mktemp("replicas")
    servers: list[ServerProcess] = []
    try:
        for i in range(2):
            servers.append(start_server(logs, "--max-hold", "20", name=f"replica-{i}"))
        yield servers
    finally:
        for srv in servers:
            srv.stop()


@needs_nginx
def test_check_names_notices_a_round_robin_balancer_sent_astray(tmp_path: Path,
                                                               two_replicas: list[ServerProcess]) -> None:
    # a user's own nginx without the shipped config's hash on the call id: calls and their notices
    # are spread round-robin; one call at a time, each notice goes to the other replica than its call
    template = "\n".join(ln for ln in TEMPLATE.read_text().splitlines() if "hash $http_callstate_call_id" not in ln)
    (tmp_path / "nginx").mkdir()
    nginx = shipped_nginx(tmp_path / "nginx", free_port(), [srv.port for srv in two_replicas], template)
    client_log = tmp_path / "client.jsonl"
    try:
        run = cli("load", "--target", nginx.target, "--calls", "12", "--concurrency", "1", "--mix", "hold=100",
                  "--cancel", "non-abortive=100", "--cancel-at", "held:0.05", "--no-verify", "--log-file",
                  str(client_log), "--progress", "never", timeout=60)
        assert run.returncode == 0, run.stdout + run.stderr
    finally:
        nginx.stop()
    ours = {e["call_id"] for e in read_entries(client_log)}
    deadline = time.monotonic() + EVIDENCE_WAIT
    while True:   # every call of ours a replica has logged has ended there (one cut off before it
        # reached a replica has no server side)
        seen = [e for srv in two_replicas for e in srv.entries() if e["call_id"] in ours]
        open_calls = {e["call_id"] for e in seen} - {e["call_id"] for e in seen if e["state"] == "End"}
        if not open_calls:
            break
        assert time.monotonic() < deadline, f"calls not ended on their replica: {open_calls}"
        time.sleep(0.02)
    check = cli("check", str(client_log), *(str(srv.log) for srv in two_replicas))
    assert check.returncode == 1, check.stdout + check.stderr
    assert "notice_astray" in check.stdout and "another replica than its call" in check.stdout, check.stdout
    # each named: as many as the notices kept for a dispatch, but for one that found its call's
    # replica after all (round-robin's turn taken by another RPC of the run)
    kept = sum(1 for e in read_entries(client_log) if e.get("detail") == NOTICE_KEPT)
    astray = int(re.search(r"notice_astray: (\d+) ", check.stdout).group(1))  # type: ignore[union-attr]
    assert kept - 2 <= astray <= kept and astray >= 3, (kept, check.stdout)


@needs_nginx
def test_load_through_a_balancer_without_no_verify_says_so(tmp_path: Path, two_replicas: list[ServerProcess]) -> None:
    (tmp_path / "nginx").mkdir()
    nginx = shipped_nginx(tmp_path / "nginx", free_port(), [srv.port for srv in two_replicas])
    try:
        # the journal stream reaches one replica; the calls are spread over both by their ids
        run = cli("load", "--target", nginx.target, "--calls", "40", "--concurrency", "8", "--mix", "complete=100",
                  "--settle", "1", "--log-file", str(tmp_path / "client.jsonl"), "--progress", "never", timeout=60)
    finally:
        nginx.stop()
    assert run.returncode == 1, run.stdout + run.stderr
    assert "unknown_to_server" in run.stdout, run.stdout
    assert f"is {nginx.target} a balancer in front of several servers (replicas)?" in run.stdout, run.stdout
    assert "--no-verify" in run.stdout, run.stdout


def test_watch_over_several_targets_names_each_lines_server(capsys: pytest.CaptureFixture[str]) -> None:
    import argparse

    from callstate.cli.watch import _Watch

    entry = pb.StateEntry(ts="2026-12-06T07:09:46.176462Z", side="server", call_id=CALL, state="D", event="enter",
                          move="dispatch")
    for as_json in (False, True):
        opts = argparse.Namespace(json=as_json, count=None, settings=argparse.Namespace(metadata=()))
        # the same call id on two replicas is two calls: each line says whose it is
        watch = _Watch(opts, ["10.0.0.1:50051", "10.0.0.2:50051"], [])
        watch.show(entry, "10.0.0.2:50051")
        watch.show(entry, "10.0.0.1:50051")
        one = _Watch(opts, ["10.0.0.1:50051"], [])   # one server: its lines as ever
        one.show(entry, "10.0.0.1:50051")
        lines = capsys.readouterr().out.splitlines()
        if as_json:
            assert [json.loads(x).get("target") for x in lines] == ["10.0.0.2:50051", "10.0.0.1:50051", None]
        else:
            assert [x.split()[0] for x in lines] == ["10.0.0.2:50051", "10.0.0.1:50051", CALL[:12]], lines
            assert lines[0].split()[1] == CALL[:12] and "--dispatch-->" in lines[0], lines


def test_watch_follows_a_restarted_replica_again(tmp_path: Path, two_replicas: list[ServerProcess]) -> None:
    out, err = tmp_path / "watch.out", tmp_path / "watch.err"
    watch = subprocess.Popen([sys.executable, "-m", "callstate", "watch", "--json", "--dashboard", "never",
                              *(a for srv in two_replicas for a in ("--target", srv.target))],
                             stdout=open(out, "wb"), stderr=open(err, "wb"))
    try:
        wait_for_text(err, "watching", watch)
        first = two_replicas[0]
        assert first.stop() == 0
        wait_for_text(err, f"{first.target} ended the stream: the server is stopping", watch)
        # the replica restarted on its address: followed again, and its new calls shown, named by it
        two_replicas[0] = start_server(first.log.parent, "--max-hold", "20", "--port", str(first.port),
                                       name="replica-0-restarted")
        wait_for_text(err, f"{first.target} answers again: following it again", watch)
        done = cli("call", "--target", first.target, "--outcome", "complete", "--json")
        assert done.returncode == 0, done.stderr
        call_id = json.loads(done.stdout.splitlines()[0])["call_id"]
        shown = wait_for_text(out, call_id, watch)
        assert any(e["call_id"] == call_id and e["target"] == first.target
                   for e in map(json.loads, shown.splitlines())), shown
    finally:
        watch.send_signal(signal.SIGINT)
        rc = watch.wait(20)
    assert rc == 0, err.read_text()
