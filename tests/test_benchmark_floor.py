"""The benchmarks' floor (benchmarks/bare.py `floor_emulator`, run.py `_FloorCaller`) does what the
contract asks of any emulator and nothing else: its lines and a caller's pass `callstate check`, a
caller that sent no id gets the made one with the reply. The run's verdicts rest on it both
ways: a floor doing more than the contract asks would mark a target out of reach that is not;
one skipping what it asks (a line, the id's metadata) would make a target look reachable."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

import grpc

from callstate.client import AsyncClient
from callstate.script import Script
from callstate.v1 import callstate_pb2 as pb
from callstate.v1 import callstate_pb2_grpc as pb_grpc
from callstate.wire import CALL_ID_KEY
from tests.conftest import ROOT, cli, read_entries

sys.path.insert(0, str(ROOT / "benchmarks"))

import run  # noqa: E402


def _floor_server(tmp: Path) -> tuple[subprocess.Popen[bytes], str, Path]:
    port_file, log = tmp / "floor.port", tmp / "floor.jsonl"
    proc = subprocess.Popen([sys.executable, str(ROOT / "benchmarks" / "bare.py"), "serve", "--port-file",
                             str(port_file), "--floor", str(log)], stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while not (port_file.exists() and port_file.read_text().strip()):
        assert proc.poll() is None and time.monotonic() < deadline, "the floor server did not start"
        time.sleep(0.02)
    return proc, f"127.0.0.1:{port_file.read_text().strip()}", log


def test_the_floor_logs_what_the_contract_asks_and_check_accepts_it(tmp_path: Path) -> None:
    proc, target, server_log = _floor_server(tmp_path)
    client_log, held_log = tmp_path / "client.jsonl", tmp_path / "held-client.jsonl"
    try:
        async def go() -> tuple[str, list[str]]:
            async with AsyncClient(target, log=client_log) as client:   # completed calls, the id in the request
                for _ in range(3):
                    await client.start(Script("complete"))
            async with grpc.aio.insecure_channel(target) as channel:    # no id at all: the server makes one
                call = pb_grpc.EmulatorStub(channel).Call(pb.CallRequest(script=pb.Script(outcome=pb.OUTCOME_COMPLETE)))
                reply, trailers = await call, await call.trailing_metadata()
            made = dict(trailers)[CALL_ID_KEY]   # answered at once: with the reply, as callstate serve does
            assert reply.call_id == made
            ids, calls, cancel, wait_all = await run._hold_calls("floor", target, 4, held_log)
            for c in calls:
                cancel(c)
            await wait_all()   # each cancelled, awaited, its four lines written, the log closed
            return made, ids
        made, ids = asyncio.run(go())
    finally:
        proc.terminate()
        proc.wait(10)
    lines = read_entries(server_log)
    assert [e["state"] for e in lines if e["call_id"] == made] == ["D", "Comp", "End"]
    cancelled = [e for e in lines if e.get("code") == 1818]
    assert len(cancelled) == 4 and all(e["state"] == "End" for e in cancelled)
    held = read_entries(held_log)
    assert {e["call_id"] for e in held} == set(ids)
    # each held call's lines, as the callstate client logs a call it cancels abortively
    assert [(e["state"], e["move"]) for e in held if e["call_id"] == ids[0]] == [
        ("C", "call"), ("WComp", "started"), ("Can", "cancel"), ("WComp", "cancel_issued"), ("Comp", "complete"),
        ("End", "completed")]
    # the made id's call has no caller's log: one side only is allowed for it
    checked = cli("check", "--allow-one-side", str(client_log), str(held_log), str(server_log))
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_the_floors_caller_sends_the_id_as_metadata_as_the_contract_asks(tmp_path: Path) -> None:
    """SPEC 7 (Scale): clients send `callstate-call-id` metadata on Call, as callstate's client
    does; the floor's caller left it out, which made the floor cheaper than any client can be."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import bare

    seen: list[str | None] = []
    emulator = bare.floor_emulator(str(tmp_path / "floor.jsonl"))
    floor_call = emulator.Call

    async def call(request: pb.CallRequest, context: grpc.aio.ServicerContext) -> pb.CallReply:
        seen.append(dict(context.invocation_metadata() or ()).get(CALL_ID_KEY))
        return await floor_call(request, context)
    emulator.Call = call  # type: ignore[method-assign]

    async def go() -> list[str]:
        server = grpc.aio.server()
        pb_grpc.add_EmulatorServicer_to_server(emulator, server)
        pb_grpc.add_JournalServicer_to_server(bare.BareJournal(emulator), server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            ids, calls, cancel, wait_all = await run._hold_calls("floor", f"127.0.0.1:{port}", 3, None)
            for c in calls:
                cancel(c)
            await wait_all()
            return ids
        finally:
            await server.stop(None)
    ids = asyncio.run(go())
    assert sorted(seen, key=str) == sorted(ids), seen
