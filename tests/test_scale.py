"""Past one process: replicas of `callstate serve` behind a real nginx with the shipped config
(deploy/nginx), a cancellation-heavy load through it, and the tools that read several servers
(`check`/`report` over several server logs or a folder, `watch` over several targets)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from callstate.client.notice import NOTICE_CLIENT_CLOSED
from callstate.lifecycle import ABORTIVE, CANCEL_SEEN, CANCEL_SENT, D, NON_ABORTIVE
from tests.conftest import ROOT, ServerProcess, cli, read_entries, start_server
from tests.middleboxes import NGINX_CONF, ProxyProcess, free_port

TEMPLATE = ROOT / "deploy" / "nginx" / "templates" / "callstate.conf.template"
RENDER = ROOT / "deploy" / "nginx" / "render.sh"
REPLICAS = 3


def shipped_nginx(tmp: Path, port: int, upstreams: list[int], template: str | None = None) -> ProxyProcess:
    """Debian's nginx with the shipped http-block config (or `template`, a variant of its text),
    rendered as the docs say for replicas you run yourself: deploy/nginx/render.sh with
    CALLSTATE_REPLICAS, one `server` line per local replica."""
    source = TEMPLATE
    if template is not None:
        source = tmp / "variant.conf.template"
        source.write_text(template)
    rendered = tmp / "callstate.conf"
    env = {**os.environ, "CALLSTATE_REPLICAS": " ".join(f"127.0.0.1:{p}" for p in upstreams),
           "CALLSTATE_GATEWAY_PORT": f"127.0.0.1:{port}"}
    subprocess.run(["sh", str(RENDER), str(source), str(rendered)], env=env, check=True, capture_output=True)
    block = rendered.read_text()
    assert "${CALLSTATE" not in block and block.count("server 127.0.0.1:") == len(upstreams), block
    for name in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (tmp / name).mkdir(exist_ok=True)
        (tmp / name).chmod(0o777)   # workers run as nobody when nginx starts as root
    conf = tmp / "nginx.conf"
    conf.write_text(NGINX_CONF.format(tmp=tmp, server=block))
    return ProxyProcess([shutil.which("nginx") or "nginx", "-c", str(conf), "-p", str(tmp), "-e",
                         str(tmp / "nginx-error.log")], port, tmp / "nginx-stderr.log")


@pytest.fixture
def replicas(tmp_path: Path) -> Any:
    logs = tmp_path / "server-logs"
    logs.mkdir()
    servers: list[ServerProcess] = []
    try:
        for i in range(REPLICAS):
            servers.append(start_server(logs, "--max-hold", "30", "--mix", "complete=100", name=f"replica-{i}"))
        yield servers
    finally:
        for srv in servers:
            if srv.proc.poll() is None:
                srv.stop()


def _by_call(entries: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for e in entries:
        out.setdefault(e["call_id"], []).append(e)
    return out


@pytest.mark.skipif(shutil.which("nginx") is None, reason="needs nginx (tools/system-deps.sh installs it)")
def test_every_cancel_notice_reaches_its_replica_through_nginx(tmp_path: Path, replicas: list[ServerProcess]) -> None:
    nginx = shipped_nginx(tmp_path, free_port(), [srv.port for srv in replicas])
    client_log = tmp_path / "client.jsonl"
    try:
        # cancellation-heavy: half of the calls held, 30% of all calls cancelled non-abortively
        # (a notice on its own RPC, routed by the call id it carries), 20% abortively
        run = cli("load", "--target", nginx.target, "--calls", "600", "--concurrency", "24",
                  "--mix", "complete=40,abort=10,hold=50", "--cancel", "abortive=20,non-abortive=30",
                  "--hold-for", "1", "--log-file", str(client_log), "--no-verify", "--progress", "never",
                  "--seed", "17", timeout=240)
        assert run.returncode == 0, run.stdout + run.stderr
    finally:
        nginx.stop()
    for srv in replicas:
        assert srv.stop(signal.SIGTERM, 30) == 0   # flushes its state log

    client = _by_call(read_entries(client_log))
    holder: dict[str, int] = {}   # call id -> the replica that dispatched it
    server: list[dict[str, list[dict[str, Any]]]] = []
    for i, srv in enumerate(replicas):
        calls = _by_call(srv.entries())
        server.append(calls)
        for call_id, entries in calls.items():
            if any(e["state"] == D and e["prev"] is None for e in entries):
                assert call_id not in holder, f"{call_id} dispatched by two replicas"
                holder[call_id] = i
    assert len(client) == 600
    # the balancer spread the calls: every replica held a real share of them
    shares = [sum(1 for i in holder.values() if i == r) for r in range(REPLICAS)]
    assert min(shares) >= 600 // REPLICAS // 3, shares

    notices = routed = 0
    for call_id, entries in client.items():
        sent = [e for e in entries if e["event"] == CANCEL_SENT]
        if not sent:
            continue
        notices += 1
        detail = sent[0].get("detail", "")
        if detail == NOTICE_CLIENT_CLOSED:   # the load ended before the answer came back: nothing to route
            continue
        # "ended (unknown)": the replica asked had never seen the call; "kept for the dispatch" on
        # a replica that never dispatches it would leave the call deaf to its cancel
        assert "(unknown)" not in detail, (call_id, detail)
        if call_id not in holder:   # escalated to an abortive cancel before it reached any replica
            assert any(e.get("cancel") == ABORTIVE for e in entries), (call_id, detail)
            continue
        routed += 1
        if detail.startswith("delivered"):
            seen = [e for e in server[holder[call_id]][call_id] if e["event"] == CANCEL_SEEN]
            assert any(e.get("cancel") == NON_ABORTIVE for e in seen), (call_id, detail, holder[call_id])
    # 30% of 600 drew a notice; a held call (half of them) always sends it, a call that completes
    # or aborts may end before its cancel point, more often on a busy machine (94 seen once)
    assert notices >= 60, notices
    assert routed >= 30, (routed, notices)   # any one misrouted notice fails above

    # check over one client log and the folder of the three server logs
    check = cli("check", str(client_log), str(replicas[0].log.parent))
    assert check.returncode == 0, check.stdout + check.stderr


def test_check_and_report_read_a_folder_of_server_logs(tmp_path: Path) -> None:
    logs = tmp_path / "servers"
    logs.mkdir()
    servers = [start_server(logs, "--max-hold", "10", name=f"replica-{i}") for i in range(2)]
    client_log = tmp_path / "client.jsonl"
    try:
        for srv in servers:
            run = cli("load", "--target", srv.target, "--calls", "40", "--concurrency", "4", "--log-file",
                      str(client_log), "--progress", "never", "--mix", "complete=70,abort=30", timeout=120)
            assert run.returncode == 0, run.stdout + run.stderr
    finally:
        for srv in servers:
            srv.stop()
    (logs / "replica-0.stderr").write_text("not a log: ignored, it is not *.jsonl\n")
    whole = cli("check", "--json", str(client_log), str(logs))
    assert whole.returncode == 0, whole.stdout + whole.stderr
    assert sorted(Path(f).name for f in json.loads(whole.stdout)["files"])[-2:] == \
        ["replica-0.jsonl", "replica-1.jsonl"]
    # one server log left out: the other replica's calls have a client side only
    partial = cli("check", str(client_log), str(logs / "replica-0.jsonl"))
    assert partial.returncode == 1, partial.stdout
    empty = tmp_path / "empty"
    empty.mkdir()
    bad = cli("check", str(client_log), str(empty))
    assert bad.returncode == 2 and "no state log" in bad.stderr and "Traceback" not in bad.stderr
    report = cli("report", str(client_log), str(logs), "--html", str(tmp_path / "r.html"))
    assert report.returncode == 0, report.stdout + report.stderr
    assert "82 calls, check OK" in report.stdout, report.stdout   # and each load's barrier call


def test_watch_merges_several_targets(tmp_path: Path, refused_target: str) -> None:
    servers = [start_server(tmp_path, "--max-hold", "10", name=f"replica-{i}") for i in range(2)]
    try:
        for n, srv in enumerate(servers):
            for _ in range(n + 2):   # 2 calls on the first, 3 on the second
                done = cli("call", "--target", srv.target, "--outcome", "complete")
                assert done.returncode == 0, done.stderr
        args = [a for srv in servers for a in ("--target", srv.target)]
        counters = cli("watch", *args, "--counters")
        assert counters.returncode == 0, counters.stderr
        merged = json.loads(counters.stdout)
        assert merged["dispatched"] == 5 and merged["ended"] == 5 and merged["in_flight"] == 0, merged
        assert merged["by_code"] == {"0": 5}, merged
        assert "the counters of 2 servers, summed" in counters.stderr   # totals, said to be
        # the stream: calls on each server in turn, both servers' entries in one watch
        watch = subprocess.Popen([sys.executable, "-m", "callstate", "watch", *args, "--json", "--count", "12",
                                  "--dashboard", "never"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 90
            while watch.poll() is None and time.monotonic() < deadline:
                for srv in servers:   # calls until the watcher has seen enough (it may subscribe late)
                    done = cli("call", "--target", srv.target, "--outcome", "complete", "--json")
                    assert done.returncode == 0, done.stderr
            out, err = watch.communicate(timeout=30)
        finally:
            if watch.poll() is None:
                watch.kill()
        assert watch.returncode == 0, err
        lines = [json.loads(x) for x in out.splitlines() if x.strip()]
        assert len(lines) == 12, out
        # each line names the replica it came from, the one whose log has the call (waited for: the
        # journal's stream can be ahead of the state log's writer, which writes every 50 ms)
        targets = [srv.target for srv in servers]
        for e in lines:
            assert servers[targets.index(e["target"])].wait_entries(e["call_id"]), e
        ids = {e["call_id"] for e in lines}
        seen_on = {i for i, srv in enumerate(servers) for e in srv.entries() if e["call_id"] in ids}
        assert seen_on == {0, 1}, (seen_on, out)
        down = cli("watch", *args, "--target", refused_target, "--counters", "--timeout", "3")
        assert down.returncode == 1 and "Traceback" not in down.stderr, down.stderr
    finally:
        for srv in servers:
            srv.stop()
