"""Each feature the README documents, against a real `callstate serve` process: every test
here fails when its feature is removed (that is what it is for)."""

from __future__ import annotations

import queue
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest

from callstate import codes
from callstate.client import CallError, Client, Script
from callstate.lifecycle import ABORTIVE, CANCEL_SEEN, NON_ABORTIVE
from callstate.v1 import callstate_pb2 as pb
from callstate.v1 import callstate_pb2_grpc as pb_grpc
from callstate.wire import CALL_ID_KEY, CANCEL_KEY_KEY, new_call_id
from tests.conftest import ROOT, ServerProcess, cli, final, start_server, states
from tests.documentation import blocks, section

pytestmark = pytest.mark.timeout(90)


def counters(target: str) -> pb.Counters:
    with grpc.insecure_channel(target) as channel:
        return pb_grpc.JournalStub(channel).GetCounters(pb.CountersRequest(), timeout=5)


def wait_in_flight(target: str, want: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while counters(target).in_flight != want:
        assert time.monotonic() < deadline, f"the server never had {want} calls in flight"
        time.sleep(0.02)


def test_max_in_flight_answers_1723(tmp_path: Path) -> None:
    srv = start_server(tmp_path, "--max-in-flight", "1")
    try:
        with Client(srv.target) as client:
            held = client.start(Script("hold"))
            wait_in_flight(srv.target, 1)
            with pytest.raises(CallError) as info:
                client.start(Script("complete")).result(10)
            assert info.value.code == codes.RPC_S_SERVER_TOO_BUSY and info.value.grpc_status == "RESOURCE_EXHAUSTED"
            held.cancel()
            with pytest.raises(CallError):
                held.result(10)
    finally:
        srv.stop()


def test_max_hold_ends_a_held_call_with_1460(tmp_path: Path) -> None:
    srv = start_server(tmp_path, "--max-hold", "0.3")
    try:
        with Client(srv.target) as client:
            call = client.start(Script("hold"))
            with pytest.raises(CallError) as info:
                call.result(10)
        assert info.value.code == codes.RPC_S_TIMEOUT
        entries = srv.wait_entries(call.call_id)
        assert states(entries) == ["D", "A", "End"] and final(entries)["code"] == codes.RPC_S_TIMEOUT
    finally:
        srv.stop()


def test_echo_returns_the_request_payload(shared_server: ServerProcess) -> None:
    with Client(shared_server.target) as client:
        reply = client.start(Script("complete", echo=True, reply_bytes=3), payload=b"ping \x00\xff").result(10)
    assert reply.payload == b"ping \x00\xff"


def test_journal_evicts_ended_calls_beyond_its_bound(tmp_path: Path) -> None:
    srv = start_server(tmp_path, "--journal-size", "2")
    try:
        with Client(srv.target) as client:
            ids = []
            for _ in range(3):
                call = client.start(Script("complete"))
                call.result(10)
                ids.append(call.call_id)
        with grpc.insecure_channel(srv.target) as channel:
            journal = pb_grpc.JournalStub(channel)
            kept = [i for i in ids if _in_journal(journal, i)]
            assert kept == ids[-2:]
            assert journal.GetCounters(pb.CountersRequest(), timeout=5).journal_calls == 2
    finally:
        srv.stop()


def _in_journal(journal: pb_grpc.JournalStub, call_id: str) -> bool:
    try:
        journal.GetCall(pb.GetCallRequest(call_id=call_id), timeout=5)
        return True
    except grpc.RpcError as err:
        assert err.code() == grpc.StatusCode.NOT_FOUND
        return False


@pytest.mark.parametrize("mix,code", [("abort=1", 5001), ("fatal=1", codes.RPC_S_CALL_FAILED), ("complete=1", 0)])
def test_the_server_mix_decides_calls_without_a_script(tmp_path: Path, mix: str, code: int) -> None:
    srv = start_server(tmp_path, "--mix", mix, "--abort-code", "5001")
    try:
        with grpc.insecure_channel(srv.target) as channel:
            call = pb_grpc.EmulatorStub(channel).Call.with_call
            try:
                _, rpc = call(pb.CallRequest(), timeout=10)
                got, trailing = codes.RPC_S_OK, rpc.trailing_metadata()
            except grpc.RpcError as err:
                got, trailing = codes.from_grpc(err.code(), err.trailing_metadata()), err.trailing_metadata()
        assert got == code, trailing
    finally:
        srv.stop()


def test_a_client_deadline_is_1818_and_the_server_sees_the_cancel(shared_server: ServerProcess) -> None:
    # The deadline must outlast the call's way to the server: 0.3 s did not at load 20, where the
    # server never saw the call. The dispatch is waited for, so the deadline ends a dispatched call;
    # a 2 s deadline that ran out first (a starved server) is tried again with a longer one.
    for deadline in (2.0, 8.0):
        with Client(shared_server.target, timeout=deadline) as client:
            began = time.monotonic()
            call = client.start(Script("hold"))
            seen = shared_server.wait_entries(call.call_id, until=lambda es: "D" in states(es), timeout=deadline)
            dispatched_in_time = "D" in states(seen) and time.monotonic() - began < deadline
            with pytest.raises(CallError) as info:
                call.result(deadline + 10)
        if dispatched_in_time:
            break
    assert info.value.code == codes.RPC_S_CALL_CANCELLED and info.value.grpc_status == "DEADLINE_EXCEEDED"
    entries = shared_server.wait_entries(call.call_id)
    assert [e.get("cancel") for e in entries if e["event"] == CANCEL_SEEN] == [ABORTIVE]
    assert final(entries)["code"] == codes.RPC_S_CALL_CANCELLED


def test_a_duplicate_live_call_id_is_already_exists(shared_server: ServerProcess) -> None:
    call_id = new_call_id()
    with Client(shared_server.target) as client:
        first = client.start(Script("hold"), call_id=call_id)
        shared_server.wait_entries(call_id, until=lambda es: states(es) == ["D"])
        with pytest.raises(CallError) as info:
            client.start(Script("complete"), call_id=call_id).result(10)
        assert info.value.code == codes.RPC_S_INVALID_ARG and info.value.grpc_status == "ALREADY_EXISTS"
        first.cancel()
        with pytest.raises(CallError) as first_info:
            first.result(10)
        assert first_info.value.code == codes.RPC_S_CALL_CANCELLED   # the first call is untouched


def test_a_notice_sent_before_its_call_is_applied_at_dispatch(shared_server: ServerProcess) -> None:
    """Deterministic: the notice goes first, then the call with the same id."""
    call_id = new_call_id()
    with grpc.insecure_channel(shared_server.target) as channel:
        stub = pb_grpc.EmulatorStub(channel)
        notice = stub.Cancel(pb.CancelRequest(call_id=call_id), timeout=5)
        assert notice.delivered and notice.state == ""     # kept for the dispatch
        with pytest.raises(grpc.RpcError) as info:
            stub.Call(pb.CallRequest(call_id=call_id, script=pb.Script(outcome=pb.OUTCOME_HOLD)), timeout=10)
    assert codes.from_grpc(info.value.code(), info.value.trailing_metadata()) == codes.RPC_S_CALL_CANCELLED
    entries = shared_server.wait_entries(call_id)
    first_two = [(e["state"], e["event"], e.get("cancel")) for e in entries[:2]]
    assert first_two == [("D", "enter", None), ("D", CANCEL_SEEN, NON_ABORTIVE)]   # logged at dispatch
    assert states(entries) == ["D", "A", "End"]


def test_a_keyed_notice_before_a_call_made_by_name_is_applied_at_dispatch(shared_server: ServerProcess) -> None:
    """A call made by name (`load --method callstate.v1.Emulator/Call`, grpcurl) sends its id and
    cancel key as metadata: a notice kept under that key must find the call at its dispatch
    (Emulator/Call read only the request's key, and such notices were kept for nothing)."""
    call_id, key = new_call_id(), "k-" + new_call_id()
    with grpc.insecure_channel(shared_server.target) as channel:
        stub = pb_grpc.EmulatorStub(channel)
        notice = stub.Cancel(pb.CancelRequest(call_id=call_id, cancel_key=key), timeout=5)
        assert notice.delivered and notice.state == ""     # kept for the dispatch
        with pytest.raises(grpc.RpcError) as info:
            stub.Call(pb.CallRequest(script=pb.Script(outcome=pb.OUTCOME_HOLD)), timeout=10,
                      metadata=((CALL_ID_KEY, call_id), (CANCEL_KEY_KEY, key)))
    assert codes.from_grpc(info.value.code(), info.value.trailing_metadata()) == codes.RPC_S_CALL_CANCELLED
    entries = shared_server.wait_entries(call_id)
    assert [(e["state"], e["event"], e.get("cancel")) for e in entries[:2]] == [
        ("D", "enter", None), ("D", CANCEL_SEEN, NON_ABORTIVE)]


def test_health_says_serving_and_fails_on_a_dead_port(shared_server: ServerProcess, refused_target: str) -> None:
    ok = cli("health", "--target", shared_server.target)
    assert ok.returncode == 0 and ok.stdout.strip() == "SERVING"
    dead = cli("health", "--target", refused_target, "--timeout", "2")
    assert dead.returncode == 1 and "UNAVAILABLE" in dead.stderr and "Traceback" not in dead.stderr


def test_watch_counters_prints_the_journal_counters(tmp_path: Path) -> None:
    import json
    srv = start_server(tmp_path)
    try:
        assert cli("call", "--target", srv.target, "--outcome", "abort", "--code", "77").returncode == 1
        assert cli("call", "--target", srv.target).returncode == 0
        out = cli("watch", "--target", srv.target, "--counters")
        assert out.returncode == 0, out.stderr
        got = json.loads(out.stdout)
        assert (got["dispatched"], got["ended"], got["in_flight"]) == (2, 2, 0)
        assert got["by_code"] == {"0": 1, "77": 1} and got["by_state"]["D"] == 2 and got["watch_dropped"] == 0
    finally:
        srv.stop()


def test_watchers_are_closed_at_shutdown(tmp_path: Path) -> None:
    srv = start_server(tmp_path, "--grace", "30")
    watch = subprocess.Popen([sys.executable, "-m", "callstate", "watch", "--target", srv.target, "--json"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines = lines_of(watch)
    try:
        deadline = time.monotonic() + 20
        line = ""
        while not line:   # a call until the watcher prints it: its stream is open
            assert time.monotonic() < deadline, "the watcher never printed an entry"
            assert cli("call", "--target", srv.target).returncode == 0
            try:
                line = lines.get(timeout=0.5)
            except queue.Empty:
                pass
        assert '"side":"server"' in line
        t0 = time.monotonic()
        assert srv.stop(timeout=20) == 0
        assert watch.wait(10) == 0       # its stream was ended by the server, not left to the grace period
        assert time.monotonic() - t0 < 25   # under the 30 s grace (slack for a loaded machine)
    finally:
        watch.kill()


def lines_of(proc: subprocess.Popen[str]) -> "queue.Queue[str]":
    """A process's stdout lines, readable with a timeout."""
    out: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            out.put(line)
    threading.Thread(target=pump, daemon=True).start()
    return out


def test_watch_dropped_counts_entries_a_slow_watcher_lost() -> None:
    import asyncio

    from callstate.lifecycle import DISPATCH, ENTER, SERVER
    from callstate.server.journal import CallRecord, Journal
    from callstate.statelog import Entry

    async def go() -> None:
        journal = Journal(capacity=10, watch_queue=2)
        watcher = journal.subscribe()
        rec = journal.keep(CallRecord("x"))
        for _ in range(5):
            journal.add(rec, Entry(1.0, SERVER, "x", "D", None, ENTER, DISPATCH))
        assert (watcher.dropped, journal.watch_dropped, watcher.queue.qsize()) == (3, 3, 2)
    asyncio.run(go())


README_CALL = re.compile(r"^callstate call (?P<args>.*?)\s*(?:#\s*(?:.*?:\s*)?(?P<code>\d+)\b.*)?$")


def readme_call_examples() -> list[tuple[str, int]]:
    """Every `callstate call` line of the README's CLI block, with the final code its comment names."""
    block = blocks(section("CLI"), "sh")[0]
    joined = re.sub(r"\\\n\s*", "", block)
    out = []
    for line in joined.splitlines():
        m = README_CALL.match(line.strip())
        if m and "[" not in line:   # a synopsis ("[--token TOKEN]") is no example to run
            assert m.group("code") is not None, f"README example without its final code: {line}"
            out.append((m.group("args"), int(m.group("code"))))
    return out


def test_the_readme_lists_call_examples() -> None:
    assert len(readme_call_examples()) >= 9


@pytest.mark.parametrize("args,code", readme_call_examples())
def test_every_readme_call_example(shared_server: ServerProcess, args: str, code: int) -> None:
    result = cli("call", "--target", shared_server.target, *args.split())
    assert result.returncode == (0 if code == 0 else 1), result.stdout + result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(f"final: {codes.describe(code)}"), result.stderr


def test_the_demo_tour_exits_0() -> None:
    env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin"}
    result = subprocess.run(["bash", str(ROOT / "tools" / "demo.sh")], capture_output=True, text=True, timeout=80,
                            env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "OK: every invariant holds" in result.stdout
    for final_line in ("final: 0 RPC_S_OK", "final: 5001 APPLICATION_ERROR_5001", "final: 1726 RPC_S_CALL_FAILED",
                       "final: 87 RPC_S_INVALID_ARG"):
        assert final_line in result.stderr + result.stdout


def test_call_id_metadata_is_used_for_an_empty_request(shared_server: ServerProcess) -> None:
    call_id = new_call_id()
    with grpc.insecure_channel(shared_server.target) as channel:
        reply = pb_grpc.EmulatorStub(channel).Call(pb.CallRequest(script=pb.Script(outcome=pb.OUTCOME_COMPLETE)),
                                                   metadata=((CALL_ID_KEY, call_id),), timeout=10)
    assert reply.call_id == call_id and states(shared_server.wait_entries(call_id)) == ["D", "Comp", "End"]
