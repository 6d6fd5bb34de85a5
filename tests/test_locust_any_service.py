"""callstate.locust on a user's own method (`--callstate-method`): a real Locust (a master with
two workers, or one local process) against a real `callstate serve --proto` stand-in of the test
proto (shop.v1), its statistics named by the method, the stand-in's state log, and `callstate
check` over both sides. Locust runs in subprocesses only (it monkey-patches for gevent)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any, Iterator

import grpc
import pytest

from callstate import codes
from callstate.lifecycle import CAN, CLIENT, D, ENTER, PIPE_BOTH, SERVER, UNARY, kind_of_initial_move
from callstate.v1 import callstate_pb2 as pb
from callstate.v1 import callstate_pb2_grpc as pb_grpc
from tests.conftest import ServerProcess, cli, read_entries, start_server
from tests.documentation import blocks, section
from tests.test_drive import CHARGE, CHAT, PROTOS, SHOP
from tests.test_locust import LOCUST, finals, kinds, run_master_and_workers, stats_rows

pytestmark = pytest.mark.timeout(180)
LOCUSTFILE = "from callstate.locust import CallstateUser\n"
PROPAGATION = "cancel propagation"


# the request the tests send matches this rule, which names itself in the stand-in's log and
# gives the reply a completed call returns (a script header replaces only its script)
RULE = {"name": "order-o-1", "method": CHARGE, "match": {"request": {"order_id": "o-1"}},
        "reply": {"charge_id": "paid-o-1"}}
REPLY_BYTES = len(b"\x12\x08paid-o-1")   # ChargeReply{charge_id: "paid-o-1"} on the wire


@pytest.fixture(scope="module")
def standin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    tmp = tmp_path_factory.mktemp("standin")
    (tmp / "rules.json").write_text(json.dumps({"rules": [RULE]}))
    srv = start_server(tmp, "--proto", str(SHOP), "--proto-path", str(PROTOS), "--rules", str(tmp / "rules.json"),
                       "--max-hold", "20")
    yield srv
    srv.stop()


def named_by_code(entries: list[dict[str, Any]], prefix: str) -> Counter[str]:
    """What Locust's rows must count: the client's calls by "<method> <final code>"."""
    return Counter(f"{prefix} {codes.describe(e['code'])}" for e in finals(entries))


def server_entries_of(standin: ServerProcess, ids: set[str], timeout: float = 30.0) -> list[dict[str, Any]]:
    """The stand-in's entries of these calls once it has none in flight and has logged the End of
    each it saw (a call cancelled before it left never reaches it); bounded in time."""
    channel = grpc.insecure_channel(standin.target)
    try:
        deadline = time.monotonic() + timeout
        while True:
            entries = [e for e in read_entries(standin.log) if e["call_id"] in ids]
            seen, ended = {e["call_id"] for e in entries}, {e["call_id"] for e in finals(entries)}
            idle = pb_grpc.JournalStub(channel).GetCounters(pb.CountersRequest(), timeout=5).in_flight == 0
            if (idle and seen == ended) or time.monotonic() > deadline:
                return entries
            time.sleep(0.05)
    finally:
        channel.close()


def docs_locustfile() -> str:
    return blocks(section("Your own service on Locust"), "python")[0]


def test_master_and_workers_load_a_user_method_and_check_passes(standin: ServerProcess, tmp_path: Path) -> None:
    """docs/locust.md's locustfile (unary `shop.v1.Shop/Charge`, its request a dict, the schema
    from the stand-in's reflection, which each worker reads) with the master's options reaching
    the workers: rows named by the method, the scenario's codes (the abort code typed travels in
    the script header), every call dispatched on Charge with the request given."""
    (tmp_path / "locustfile.py").write_text(docs_locustfile())
    rc, workers = run_master_and_workers(tmp_path, standin.target,
                                         ["--callstate-abort-code", "5001", "--callstate-hold-for", "1"])
    assert rc == 0, (tmp_path / "master.out").read_text()[-3000:]
    assert workers == [0, 0], [(tmp_path / f"worker{i}.out").read_text()[-3000:] for i in range(2)]

    logs = sorted(tmp_path.glob("callstate-client-*.jsonl"))
    assert len(logs) == 2, logs
    client = [e for p in logs for e in read_entries(p)]
    assert {e["side"] for e in client} == {CLIENT} and {e.get("method") for e in client} == {CHARGE}
    assert set(kinds(client).values()) == {UNARY}
    rows = stats_rows(tmp_path / "run.json")
    code_rows = {name: row for name, row in rows.items() if name != PROPAGATION}
    assert {name: row["num_requests"] for name, row in code_rows.items()} == dict(named_by_code(client, CHARGE))
    assert {f"{CHARGE} 0 RPC_S_OK", f"{CHARGE} 1818 RPC_S_CALL_CANCELLED",
            f"{CHARGE} 5001 APPLICATION_ERROR_5001"} <= set(code_rows), code_rows
    assert all(row["num_failures"] == 0 for row in rows.values())   # only codes the plans expect
    ok = code_rows[f"{CHARGE} 0 RPC_S_OK"]   # the rule's reply, the response length of each completed call
    assert ok["total_content_length"] == REPLY_BYTES * ok["num_requests"], ok
    assert rows[PROPAGATION]["num_requests"] > 0   # the stand-in's journal, followed by each worker
    assert any(e["state"] == CAN and e["event"] == ENTER for e in client)

    # the stand-in dispatched each call that reached it on Charge, and logged its End
    ids = {e["call_id"] for e in client}
    server = server_entries_of(standin, ids)
    assert server and {e["side"] for e in server} == {SERVER}
    assert {e.get("method") for e in server} == {CHARGE}
    assert {e.get("rule") for e in server} == {RULE["name"]}   # --callstate-data was the request sent
    assert {kind_of_initial_move(e["move"]) for e in server if e["state"] == D and e["event"] == ENTER} == {UNARY}
    assert Counter(e["code"] for e in finals(server))[5001] > 0
    server_ids = {e["call_id"] for e in server}
    assert server_ids == {e["call_id"] for e in finals(server)}

    checked = cli("check", *map(str, logs), str(standin.log), timeout=120)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "OK: every invariant holds" in checked.stdout and "one-sided" not in checked.stdout


def test_a_streaming_method_runs_as_pipes_of_its_shape(standin: ServerProcess, tmp_path: Path) -> None:
    """Bidi `shop.v1.Shop/Chat` from .proto files: every call a `both` pipe pushing the request
    given, cancelled at message counts; rows named by the method, the check passes."""
    (tmp_path / "locustfile.py").write_text(LOCUSTFILE)
    run = subprocess.run([*LOCUST, "-f", "locustfile.py", "--headless", "-u", "4", "-r", "4", "-t", "3s",
                          "--stop-timeout", "5", "--host", standin.target, "--json-file", "run",
                          "--callstate-method", CHAT, "--callstate-proto", str(SHOP), "--callstate-proto-path",
                          str(PROTOS), "--callstate-data", '{"text": "hello"}', "--callstate-pipe-messages", "3",
                          "--callstate-cancel", "abortive=30,non-abortive=30",
                          "--callstate-pipe-cancel-at", "after-sent:1,after-received:2"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    client = read_entries(tmp_path / "callstate-client-local.jsonl")
    assert client and set(kinds(client).values()) == {PIPE_BOTH} and {e.get("method") for e in client} == {CHAT}
    rows = stats_rows(tmp_path / "run.json")
    code_rows = {name: row for name, row in rows.items() if name != PROPAGATION}
    assert {name: row["num_requests"] for name, row in code_rows.items()} == dict(named_by_code(client, CHAT))
    assert {f"{CHAT} 0 RPC_S_OK", f"{CHAT} 1818 RPC_S_CALL_CANCELLED"} <= set(code_rows), code_rows
    assert all(row["num_failures"] == 0 for row in rows.values())
    # cancelled after the 1st message sent, or after the 2nd received
    at_cancel = {(e["sent"], e["received"]) for e in client if e["state"] == CAN and e["event"] == ENTER}
    assert any(sent == 1 for sent, _ in at_cancel) and any(received == 2 for _, received in at_cancel), at_cancel

    server = server_entries_of(standin, {e["call_id"] for e in client})
    assert server and {e.get("method") for e in server} == {CHAT}
    assert set(kinds(server).values()) == {PIPE_BOTH}
    logs = [str(tmp_path / "callstate-client-local.jsonl"), str(standin.log)]
    checked = cli("check", *logs, timeout=120)
    assert checked.returncode == 0, checked.stdout + checked.stderr


@pytest.mark.parametrize(("options", "error"), [
    (["--callstate-method", "Charge"], "error: argument --callstate-method: 'Charge' is not a method name: "
                                       "expected pkg.Svc/Method"),
    (["--callstate-method", "shop.v1.Shop/Refund"],
     "error: --callstate-method shop.v1.Shop/Refund: unknown method 'shop.v1.Shop/Refund'; the schema has: "),
    (["--callstate-method", CHARGE, "--callstate-proto", "missing.proto"],
     "error: argument --callstate-proto: cannot read the file 'missing.proto': No such file or directory"),
    (["--callstate-method", CHARGE, "--callstate-data", "{order"], "error: argument --callstate-data: '{order' is not "
                                                                   "JSON"),
    (["--callstate-method", CHARGE, "--callstate-data", '{"order_id": 7}'],
     "error: --callstate-data: shop.v1.ChargeRequest: Failed to parse order_id field"),
    (["--callstate-data", "{}"], "error: --callstate-data needs --callstate-method"),
    (["--callstate-method", CHAT, "--callstate-pipes", "in=10"],
     "error: --callstate-pipes: the calls on shop.v1.Shop/Chat are 'both' pipes: the method's shape decides"),
    (["--callstate-method", CHARGE, "--host", "REFUSED"],   # the test's refused_target: nobody listens there
     "error: --callstate-method shop.v1.Shop/Charge: reflection from REFUSED: UNAVAILABLE"),
], ids=["syntax", "unknown", "proto", "json", "field", "no-method", "pipes", "unreachable"])
def test_bad_method_options_are_one_line_and_exit_2(standin: ServerProcess, tmp_path: Path, options: list[str],
                                                    error: str, refused_target: str) -> None:
    (tmp_path / "locustfile.py").write_text(LOCUSTFILE)
    options, error = [refused_target if o == "REFUSED" else o for o in options], error.replace("REFUSED", refused_target)
    bad = subprocess.run([*LOCUST, "-f", "locustfile.py", "--headless", "-u", "1", "-r", "1", "-t", "2s",
                          "--host", standin.target, "--callstate-log-file", "", *options],
                         cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2, bad.stdout + bad.stderr
    last = bad.stderr.strip().splitlines()[-1]
    assert error in last, bad.stderr
    assert "Traceback" not in bad.stderr
    assert "Ramping to" not in bad.stderr   # no user started


def test_a_worker_that_cannot_read_the_schema_ends_the_run_with_its_line(standin: ServerProcess,
                                                                         tmp_path: Path) -> None:
    """The master has the .proto at the path typed, its worker does not: the worker's users stop
    before any call, and the master quits with the worker's one line and exit status 2."""
    master_dir, worker_dir = tmp_path / "master", tmp_path / "worker"
    shutil.copytree(PROTOS, master_dir / "protos")
    worker_dir.mkdir()
    for d in (master_dir, worker_dir):
        (d / "locustfile.py").write_text(LOCUSTFILE)
    rc, workers = run_master_and_workers(master_dir, standin.target, [
        "--callstate-method", CHARGE, "--callstate-proto", "protos/shop/v1/shop.proto",
        "--callstate-proto-path", "protos"], workers=1, worker_dir=worker_dir)
    master_out, worker_out = (master_dir / "master.out").read_text(), (master_dir / "worker0.out").read_text()
    assert rc == 2 and workers == [2], master_out[-3000:] + worker_out[-3000:]
    assert re.search(r"ERROR/callstate.locust: callstate: worker \S+: CallstateUser: --callstate-method "
                     r"shop.v1.Shop/Charge: protos/shop/v1/shop.proto: no such .proto file$", master_out, re.M), \
        master_out[-3000:]
    assert "Traceback" not in master_out + worker_out
    assert not list(worker_dir.glob("callstate-client-*.jsonl")) or not any(
        read_entries(p) for p in worker_dir.glob("callstate-client-*.jsonl"))   # no call made


def test_a_real_service_is_driven_one_sided(tmp_path: Path) -> None:
    """Against a plain grpc server of shop.v1 (code grpcio-tools generated; not callstate), as
    docs/locust.md says, its schema a descriptor set: the requests of --callstate-data-file reach it with the script header it ignores, the
    plans of `mix complete=100` expect what it answers, cancels end calls 1818, only the client
    side is logged and `check --allow-one-side` judges it; no cancel propagation is measured."""
    from callstate.script_header import SCRIPT_HEADER
    from tests.test_drive import ShopServer

    (tmp_path / "gen").mkdir()
    shop = ShopServer(tmp_path / "gen")
    try:
        (tmp_path / "locustfile.py").write_text(LOCUSTFILE)
        (tmp_path / "charges.jsonl").write_text('{"order_id": "o-2"}\n\n{"order_id": "o-3"}\n')
        subprocess.run([sys.executable, "-m", "grpc_tools.protoc", f"-I{PROTOS}", "--include_imports",
                        f"--descriptor_set_out={tmp_path / 'shop.desc'}", str(SHOP)], check=True, timeout=60)
        run = subprocess.run([*LOCUST, "-f", "locustfile.py", "--headless", "-u", "3", "-r", "3", "-t", "3s",
                              "--stop-timeout", "5", "--host", shop.target, "--json-file", "run",
                              "--callstate-method", CHARGE, "--callstate-data-file", "charges.jsonl",
                              "--callstate-descriptor-set", "shop.desc",
                              "--callstate-mix", "complete=100", "--callstate-cancel", "abortive=30,non-abortive=20",
                              "--callstate-cancel-at", "before-start,after-start,random:0.005"],
                             cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
        client = read_entries(tmp_path / "callstate-client-local.jsonl")
        rows = stats_rows(tmp_path / "run.json")
        code_rows = {name: row for name, row in rows.items() if name != PROPAGATION}
        assert {name: row["num_requests"] for name, row in code_rows.items()} == dict(named_by_code(client, CHARGE))
        assert {f"{CHARGE} 0 RPC_S_OK", f"{CHARGE} 1818 RPC_S_CALL_CANCELLED"} <= set(code_rows), code_rows
        assert all(row["num_failures"] == 0 for row in rows.values())
        assert rows.get(PROPAGATION, {"num_requests": 0})["num_requests"] == 0
        ids = {e["call_id"] for e in client}
        reached = {call_id: md for call_id, md in shop.headers.items() if call_id in ids}
        assert len(reached) > 10 and all(SCRIPT_HEADER in md for md in reached.values())
        assert set(shop.orders) == {"o-2", "o-3"}   # the file's requests, in turn
    finally:
        shop.stop()
    checked = cli("check", "--allow-one-side", str(tmp_path / "callstate-client-local.jsonl"), timeout=120)
    assert checked.returncode == 0 and "one-sided" in checked.stdout, checked.stdout + checked.stderr


READ_TWICE = """
import sys
import callstate.locust.method as any_method
import callstate.schema.drive as drive

reads = []
real = drive.from_reflection
drive.from_reflection = lambda target, **kw: reads.append(target) or real(target, **kw)
settings = dict(method=sys.argv[2], data='{"order_id": "o-1"}', data_file="", proto=(), proto_path=(),
                descriptor_set=sys.argv[3])
runs = [any_method.resolve(any_method.options_of(settings), sys.argv[1], str) for _ in range(3)]
assert runs[0] is runs[1] is runs[2], runs
print(len(reads), runs[0].method.name, [type(runs[0].next_request()).__name__ for _ in range(2)])
"""


def test_the_schema_is_read_from_reflection_once_per_process(standin: ServerProcess, tmp_path: Path) -> None:
    """Every user of a process shares one method run: the stand-in's reflection is read once,
    and not at all with a descriptor set. (A process of its own: importing callstate.locust
    patches the standard library for gevent.)"""
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", f"-I{PROTOS}", "--include_imports",
                    f"--descriptor_set_out={tmp_path / 'shop.desc'}", str(SHOP)], check=True, timeout=60)
    for descriptor_set, reads in (("", "1"), ("shop.desc", "0")):
        done = subprocess.run([sys.executable, "-c", READ_TWICE, standin.target, CHARGE, descriptor_set],
                              cwd=tmp_path, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr[-2000:]
        assert done.stdout.split(None, 2)[:2] == [reads, CHARGE] and "ChargeRequest" in done.stdout, done.stdout
